//! Uploads a raw disk image straight into an EBS snapshot with the EBS direct APIs, the
//! algorithm of awslabs/coldsnap: StartSnapshot, PutSnapshotBlock for every 512 KiB block that
//! is not all zeros (SHA-256 per block, bounded concurrency, retries that ride out the snapshot
//! not being visible yet), CompleteSnapshot with the LINEAR aggregate checksum, then wait until
//! the snapshot is `completed`. The bytes read for the blocks are hashed in order as the whole
//! image (holes as zeros) and compared with the digest checked before the upload, so a file
//! changed in place meanwhile never completes a snapshot. A failed upload deletes its snapshot
//! unless asked to keep it.

use super::Progress;
use crate::cloud::sdk_error;
use crate::events::payload;
use anyhow::{anyhow, Context, Result};
use aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockError;
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use aws_sdk_ec2::client::Waiters;
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The EBS direct APIs' block size.
pub const BLOCK_SIZE: usize = 512 * 1024;
const GIB: u64 = 1 << 30;

/// Tunables of an upload.
#[derive(Debug, Clone)]
pub struct UploadParams {
    /// Blocks in flight at once.
    pub concurrency: usize,
    /// Attempts per block before the upload fails.
    pub block_attempts: u32,
    /// First retry delay; doubles per attempt, capped at 10 s.
    pub retry_base: Duration,
    /// How long to wait for the snapshot to reach `completed`.
    pub completion_timeout: Duration,
    /// Keep the snapshot when the upload fails (for debugging).
    pub keep_partial: bool,
}

impl Default for UploadParams {
    fn default() -> Self {
        UploadParams {
            concurrency: 64,
            block_attempts: 8,
            retry_base: Duration::from_millis(250),
            completion_timeout: Duration::from_secs(3600),
            keep_partial: false,
        }
    }
}

/// One snapshot to make.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// The raw image.
    pub image: PathBuf,
    /// Volume size in bytes (rounded up to whole GiB; at least the image's length).
    pub volume_size: u64,
    /// Snapshot description.
    pub description: String,
    /// Tags for the snapshot.
    pub tags: Vec<(String, String)>,
    /// The sha256 the image was checked to have: what is sent must hash to it.
    pub expected_sha256: Option<String>,
}

/// A finished upload.
#[derive(Debug, Clone)]
pub struct UploadedSnapshot {
    /// The snapshot id.
    pub snapshot_id: String,
    /// Volume size in GiB.
    pub volume_size_gib: i64,
    /// Blocks of the volume.
    pub blocks_total: u64,
    /// Blocks sent (the non-zero ones).
    pub blocks_sent: u64,
    /// Seconds spent reading and uploading blocks (StartSnapshot to CompleteSnapshot).
    pub upload_seconds: f64,
    /// CPU seconds spent hashing blocks, summed over threads.
    pub hash_seconds: f64,
}

/// Makes snapshots through the EBS direct APIs; the caller chooses the clients (and with them
/// the endpoint).
pub struct SnapshotUploader {
    ebs: aws_sdk_ebs::Client,
    ec2: aws_sdk_ec2::Client,
}

impl SnapshotUploader {
    /// An uploader using `ebs` for the blocks and `ec2` to wait for and clean up snapshots.
    pub fn new(ebs: aws_sdk_ebs::Client, ec2: aws_sdk_ec2::Client) -> SnapshotUploader {
        SnapshotUploader { ebs, ec2 }
    }

    /// Uploads `req.image` into a new snapshot and waits until it is `completed`.
    pub async fn upload(
        &self,
        req: &SnapshotRequest,
        params: &UploadParams,
        progress: &Progress<'_>,
    ) -> Result<UploadedSnapshot> {
        let file = File::open(&req.image)
            .with_context(|| format!("{}: cannot open the raw image", req.image.display()))?;
        let len = file.metadata()?.len();
        let volume_size_gib = volume_size_gib(req.volume_size.max(len));
        let started = Instant::now();
        let mut start = self
            .ebs
            .start_snapshot()
            .volume_size(volume_size_gib)
            .description(&req.description)
            .client_token(hex::encode(rand::random::<[u8; 16]>()))
            .timeout(60);
        for (k, v) in &req.tags {
            start = start.tags(Tag::builder().key(k).value(v).build());
        }
        let snapshot_id = start
            .send()
            .await
            .map_err(|e| sdk_error(e, "EBS StartSnapshot"))?
            .snapshot_id
            .ok_or_else(|| anyhow!("EBS StartSnapshot returned no snapshot id"))?;
        progress.emit(
            &format!("started snapshot {snapshot_id} ({volume_size_gib} GiB)"),
            &payload::SnapshotStarted {
                snapshot_id: snapshot_id.clone(),
                volume_size_gib,
            },
        );
        match self
            .send_blocks(&snapshot_id, req, file, params, progress, started)
            .await
        {
            Ok(mut done) => {
                done.volume_size_gib = volume_size_gib;
                Ok(done)
            }
            Err(e) => {
                if params.keep_partial {
                    progress.println(&format!("kept the incomplete snapshot {snapshot_id}"));
                } else {
                    super::delete_snapshot(&self.ec2, &snapshot_id, progress).await;
                }
                Err(e)
            }
        }
    }

    /// CompleteSnapshot with the linear aggregate of the block digests.
    async fn complete(&self, snapshot_id: &str, digests: &[(u64, [u8; 32])]) -> Result<()> {
        let mut aggregate = Sha256::new();
        for (_, d) in digests {
            aggregate.update(d);
        }
        let aggregate = base64::engine::general_purpose::STANDARD.encode(aggregate.finalize());
        self.ebs
            .complete_snapshot()
            .snapshot_id(snapshot_id)
            .changed_blocks_count(digests.len() as i32)
            .checksum(aggregate)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
            .send()
            .await
            .map_err(|e| sdk_error(e, &format!("EBS CompleteSnapshot {snapshot_id}")))?;
        Ok(())
    }

    /// Waits for the snapshot to be `completed`.
    async fn wait_completed(&self, snapshot_id: &str, params: &UploadParams) -> Result<()> {
        self.ec2
            .wait_until_snapshot_completed()
            .snapshot_ids(snapshot_id)
            .wait(params.completion_timeout)
            .await
            .map_err(|e| {
                anyhow!(
                    "snapshot {snapshot_id} did not reach `completed` within {:?}: {}",
                    params.completion_timeout,
                    aws_smithy_types::error::display::DisplayErrorContext(e)
                )
            })?;
        Ok(())
    }

    async fn send_blocks(
        &self,
        snapshot_id: &str,
        req: &SnapshotRequest,
        file: File,
        params: &UploadParams,
        progress: &Progress<'_>,
        started: Instant,
    ) -> Result<UploadedSnapshot> {
        let len = file.metadata()?.len();
        let file = Arc::new(file);
        let candidates = data_blocks(&file, len)?;
        let blocks_total = len.div_ceil(BLOCK_SIZE as u64);
        let hash_nanos = Arc::new(AtomicU64::new(0));
        let image = Arc::new(req.image.clone());
        // Bytes the progress bar covers: holes are skipped at once.
        progress.inc(len.saturating_sub(candidates.len() as u64 * BLOCK_SIZE as u64));
        let mut sent = SentDigest::new(len);
        let concurrency = params.concurrency.max(1);
        // Blocks are read in order (several at once) so that the whole image can be hashed as
        // it is sent, then sent in any order.
        let mut digests: Vec<(u64, [u8; 32])> = futures::stream::iter(candidates)
            .map(|index| {
                let file = Arc::clone(&file);
                let hash_nanos = Arc::clone(&hash_nanos);
                let image = Arc::clone(&image);
                async move {
                    let block = tokio::task::spawn_blocking(move || {
                        read_block(&file, index, len, &hash_nanos)
                    })
                    .await
                    .context("block reader panicked")?
                    .with_context(|| format!("cannot read block {index} of {}", image.display()))?;
                    anyhow::Ok((index, block))
                }
            })
            .buffered(concurrency)
            .map_ok(|(index, block)| {
                sent.block(index, block.as_ref().map(|(data, _)| data.as_slice()));
                async move {
                    let Some((data, digest)) = block else {
                        progress.inc(BLOCK_SIZE as u64);
                        return Ok(None);
                    };
                    self.put_block(snapshot_id, index, data, &digest, params)
                        .await?;
                    progress.inc(BLOCK_SIZE as u64);
                    Ok::<_, anyhow::Error>(Some((index, digest)))
                }
            })
            .try_buffer_unordered(concurrency)
            .try_filter_map(|x| async move { Ok(x) })
            .try_collect()
            .await?;
        if let Some(expected) = &req.expected_sha256 {
            let actual = sent.finish();
            if actual != *expected {
                return Err(anyhow!(
                    "{}: the bytes sent have sha256 {actual}, not {expected} as checked before \
                     the upload: the image changed while it was being uploaded; snapshot \
                     {snapshot_id} not completed",
                    req.image.display()
                ));
            }
        }
        digests.sort_by_key(|(i, _)| *i);
        self.complete(snapshot_id, &digests).await?;
        let upload_seconds = started.elapsed().as_secs_f64();
        self.wait_completed(snapshot_id, params).await?;
        Ok(UploadedSnapshot {
            snapshot_id: snapshot_id.to_string(),
            volume_size_gib: 0,
            blocks_total,
            blocks_sent: digests.len() as u64,
            upload_seconds,
            hash_seconds: hash_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        })
    }

    async fn put_block(
        &self,
        snapshot_id: &str,
        index: u64,
        data: Vec<u8>,
        digest: &[u8; 32],
        params: &UploadParams,
    ) -> Result<()> {
        let checksum = base64::engine::general_purpose::STANDARD.encode(digest);
        let mut attempt = 1;
        loop {
            let sent = self
                .ebs
                .put_snapshot_block()
                .snapshot_id(snapshot_id)
                .block_index(index as i32)
                .block_data(ByteStream::from(data.clone()))
                .data_length(BLOCK_SIZE as i32)
                .checksum(&checksum)
                .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .send()
                .await;
            let err = match sent {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let permanent = matches!(
                err.as_service_error(),
                Some(
                    PutSnapshotBlockError::AccessDeniedException(_)
                        | PutSnapshotBlockError::ValidationException(_)
                )
            );
            if permanent || attempt >= params.block_attempts {
                return Err(sdk_error(
                    err,
                    &format!(
                        "EBS PutSnapshotBlock {snapshot_id} block {index} (attempt {attempt})"
                    ),
                ));
            }
            let delay = params
                .retry_base
                .saturating_mul(1 << (attempt - 1).min(6))
                .min(Duration::from_secs(10));
            let jitter = Duration::from_millis(rand::random::<u64>() % 100);
            tokio::time::sleep(delay + jitter).await;
            attempt += 1;
        }
    }
}

/// The sha256 of an image fed block by block in order, holes and zero blocks as zeros: the
/// digest of the bytes an upload read.
struct SentDigest {
    hash: Sha256,
    position: u64,
    len: u64,
}

impl SentDigest {
    fn new(len: u64) -> SentDigest {
        SentDigest {
            hash: Sha256::new(),
            position: 0,
            len,
        }
    }

    fn zeros_to(&mut self, end: u64) {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        while self.position < end {
            let n = (end - self.position).min(ZEROS.len() as u64);
            self.hash.update(&ZEROS[..n as usize]);
            self.position += n;
        }
    }

    /// Block `index` as read: its bytes, or `None` for all zeros (blocks come in order).
    fn block(&mut self, index: u64, data: Option<&[u8]>) {
        let offset = index * BLOCK_SIZE as u64;
        self.zeros_to(offset);
        let want = (self.len - offset).min(BLOCK_SIZE as u64);
        match data {
            Some(data) => {
                self.hash.update(&data[..want as usize]);
                self.position += want;
            }
            None => self.zeros_to(offset + want),
        }
    }

    /// The hex sha256 of the whole image (the rest as zeros).
    fn finish(mut self) -> String {
        self.zeros_to(self.len);
        hex::encode(self.hash.finalize())
    }
}

/// Reads block `index`; `None` when it is all zeros, else the block (zero-padded to
/// [`BLOCK_SIZE`]) and its SHA-256.
fn read_block(
    file: &File,
    index: u64,
    len: u64,
    hash_nanos: &AtomicU64,
) -> std::io::Result<Option<(Vec<u8>, [u8; 32])>> {
    let offset = index * BLOCK_SIZE as u64;
    let want = (len - offset).min(BLOCK_SIZE as u64) as usize;
    let mut data = vec![0u8; BLOCK_SIZE];
    file.read_exact_at(&mut data[..want], offset)?;
    if data.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let t = Instant::now();
    let digest: [u8; 32] = Sha256::digest(&data).into();
    hash_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok(Some((data, digest)))
}

/// Indexes of the blocks that may hold data: blocks overlapping a data extent of the file, or
/// every block where the file system cannot say.
pub fn data_blocks(file: &File, len: u64) -> Result<Vec<u64>> {
    let bs = BLOCK_SIZE as u64;
    let mut blocks: Vec<u64> = Vec::new();
    for (data, end) in
        crate::disk::sparse::data_extents(file, len).context("cannot look for data in the image")?
    {
        let first = (data / bs).max(blocks.last().map_or(0, |l| l + 1));
        blocks.extend(first..end.div_ceil(bs));
    }
    Ok(blocks)
}

/// The image size in whole GiB, as StartSnapshot wants it.
pub fn volume_size_gib(bytes: u64) -> i64 {
    bytes.div_ceil(GIB).max(1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn data_blocks_skip_holes_and_cover_data() {
        // In the build tree, on the file system that holds the images, not a tmpfs.
        let mut f = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let len = 64 * BLOCK_SIZE as u64;
        f.set_len(len).unwrap();
        for block in [3u64, 40] {
            f.seek(SeekFrom::Start(block * BLOCK_SIZE as u64 + 100))
                .unwrap();
            f.write_all(b"data").unwrap();
        }
        f.sync_all().unwrap();
        let blocks = data_blocks(&f, len).unwrap();
        // Where the file system keeps the file sparse (as the project's machines do), exactly
        // the two written blocks hold data; elsewhere every block is read, which is still right.
        use std::os::unix::fs::MetadataExt;
        let allocated = f.metadata().unwrap().blocks() * 512;
        if allocated < len {
            assert_eq!(blocks, [3, 40]);
        } else {
            assert_eq!(blocks, (0..64).collect::<Vec<u64>>());
        }
    }

    #[test]
    fn zero_blocks_are_skipped_and_the_last_block_is_padded() {
        let mut f = tempfile::tempfile().unwrap();
        let len = 2 * BLOCK_SIZE as u64 + 10;
        f.set_len(len).unwrap();
        f.seek(SeekFrom::Start(2 * BLOCK_SIZE as u64)).unwrap();
        f.write_all(&[0xab; 10]).unwrap();
        let n = AtomicU64::new(0);
        assert!(read_block(&f, 0, len, &n).unwrap().is_none());
        let (data, digest) = read_block(&f, 2, len, &n).unwrap().unwrap();
        assert_eq!(data.len(), BLOCK_SIZE);
        assert_eq!(&data[..10], &[0xab; 10]);
        assert!(data[10..].iter().all(|&b| b == 0));
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn the_digest_of_the_blocks_read_is_the_files_sha256() {
        let mut f = tempfile::tempfile().unwrap();
        let len = 5 * BLOCK_SIZE as u64 + 77;
        f.set_len(len).unwrap();
        for (block, byte) in [(1u64, 0x11u8), (4, 0x44), (5, 0x55)] {
            f.seek(SeekFrom::Start(block * BLOCK_SIZE as u64 + 3))
                .unwrap();
            f.write_all(&[byte; 50]).unwrap();
        }
        let mut whole = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        std::io::Read::read_to_end(&mut f, &mut whole).unwrap();
        let n = AtomicU64::new(0);
        let mut sent = SentDigest::new(len);
        // Blocks 0 and 2 are holes the upload never reads; 3 is read and found all zeros.
        for index in [1, 3, 4, 5] {
            let block = read_block(&f, index, len, &n).unwrap();
            sent.block(index, block.as_ref().map(|(d, _)| d.as_slice()));
        }
        assert_eq!(sent.finish(), hex::encode(Sha256::digest(&whole)));
    }

    #[tokio::test]
    async fn an_image_changed_after_its_check_completes_no_snapshot() {
        let moto = crate::cloud::MotoServer::start();
        let config = moto.sdk_config();
        let uploader = SnapshotUploader::new(
            aws_sdk_ebs::Client::new(&config),
            aws_sdk_ec2::Client::new(&config),
        );
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let image = dir.path().join("disk.raw");
        let mut bytes = vec![0u8; 3 * BLOCK_SIZE];
        bytes[BLOCK_SIZE + 9] = 7;
        std::fs::write(&image, &bytes).unwrap();
        let checked = hex::encode(Sha256::digest(&bytes));
        let reporter = crate::events::Reporter::new(true);
        let progress = Progress::new(&reporter, "upload", bytes.len() as u64);
        let req = |expected: &str| SnapshotRequest {
            image: image.clone(),
            volume_size: bytes.len() as u64,
            description: "test".into(),
            tags: vec![],
            expected_sha256: Some(expected.to_string()),
        };
        let params = UploadParams::default();
        let done = uploader.upload(&req(&checked), &params, &progress).await;
        assert!(done.is_ok(), "the checked image uploads: {done:?}");
        // The same file changed in place (same inode, same size) after its check.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.seek(SeekFrom::Start(2 * BLOCK_SIZE as u64 + 1)).unwrap();
        f.write_all(b"x").unwrap();
        drop(f);
        let e = uploader
            .upload(&req(&checked), &params, &progress)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed while it was being uploaded"), "{e}");
        let snapshots = aws_sdk_ec2::Client::new(&config)
            .describe_snapshots()
            .owner_ids("self")
            .send()
            .await
            .unwrap();
        let ids: Vec<_> = snapshots
            .snapshots()
            .iter()
            .filter(|s| s.description() == Some("test"))
            .map(|s| s.snapshot_id().unwrap_or_default())
            .collect();
        assert_eq!(ids.len(), 1, "the refused snapshot is deleted: {ids:?}");
    }

    #[test]
    fn volume_size_rounds_up_to_whole_gib() {
        assert_eq!(volume_size_gib(1), 1);
        assert_eq!(volume_size_gib(GIB), 1);
        assert_eq!(volume_size_gib(GIB + 1), 2);
    }
}
