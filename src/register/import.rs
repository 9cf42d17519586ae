//! The S3 route to a snapshot, for accounts that prefer it: a multipart upload of the raw image,
//! ImportSnapshot (which needs the `vmimport` service role), polling of
//! DescribeImportSnapshotTasks until the snapshot exists, then removal of the uploaded object.

use super::emi::check_bucket;
use super::{Progress, UploadStats};
use crate::cloud::sdk_error;
use crate::events::{payload, Reporter};
use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::import_snapshot::builders::ImportSnapshotFluentBuilder;
use aws_sdk_ec2::types::{ResourceType, SnapshotDiskContainer, TagSpecification, UserBucket};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of one multipart upload part.
pub const PART_SIZE: u64 = 32 * 1024 * 1024;
const POLL: Duration = Duration::from_secs(10);
const GIB: u64 = 1 << 30;
const VMIMPORT_HELP: &str = "ImportSnapshot needs the `vmimport` service role with read access \
    to the bucket: see https://docs.aws.amazon.com/vm-import/latest/userguide/required-permissions.html, \
    or use the default `--upload direct` route, which needs no role";

/// One import to run.
pub struct Import<'a> {
    /// S3 client.
    pub s3: &'a aws_sdk_s3::Client,
    /// EC2 client.
    pub ec2: &'a aws_sdk_ec2::Client,
    /// The raw image.
    pub image: &'a Path,
    /// Bucket to upload to.
    pub bucket: &'a str,
    /// Object key.
    pub key: &'a str,
    /// Snapshot description.
    pub description: &'a str,
    /// Tags for the import task (and, later, the snapshot).
    pub tags: &'a [(String, String)],
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Keep the uploaded object or parts on failure.
    pub keep_partial: bool,
    /// The volume's size in bytes.
    pub disk_size: u64,
}

/// Uploads and imports; returns the snapshot id, its size in GiB and the upload measurements.
pub async fn import(i: &Import<'_>, reporter: &Reporter) -> Result<(String, i32, UploadStats)> {
    check_bucket(i.s3, i.bucket).await?;
    reporter.phase("register: multipart upload to S3");
    let stats = upload(i, reporter).await?;
    reporter.emit(
        &format!(
            "uploaded {} bytes to s3://{}/{} in {:.1} s",
            stats.bytes_sent, i.bucket, i.key, stats.seconds
        ),
        &payload::Uploaded {
            bucket: Some(i.bucket.to_string()),
            key: Some(i.key.to_string()),
            stats: serde_json::to_value(&stats)?,
            ..Default::default()
        },
    );
    reporter.phase("register: ImportSnapshot");
    let outcome = import_and_wait(i).await;
    if !i.keep_partial || outcome.is_ok() {
        if let Err(e) =
            i.s3.delete_object()
                .bucket(i.bucket)
                .key(i.key)
                .send()
                .await
        {
            reporter.println(&format!(
                "warning: could not delete s3://{}/{}: {}",
                i.bucket,
                i.key,
                aws_smithy_types::error::display::DisplayErrorContext(e)
            ));
        }
    }
    let snapshot_id = outcome?;
    let gib = i
        .disk_size
        .max(std::fs::metadata(i.image)?.len())
        .div_ceil(GIB)
        .max(1) as i32;
    Ok((snapshot_id, gib, stats))
}

/// The ImportSnapshot request for `bucket/key`, unsent.
pub fn import_request(
    ec2: &aws_sdk_ec2::Client,
    bucket: &str,
    key: &str,
    description: &str,
    tags: &[(String, String)],
) -> ImportSnapshotFluentBuilder {
    ec2.import_snapshot()
        .description(description)
        .client_token(hex::encode(rand::random::<[u8; 16]>()))
        .disk_container(
            SnapshotDiskContainer::builder()
                .format("RAW")
                .description(description)
                .user_bucket(UserBucket::builder().s3_bucket(bucket).s3_key(key).build())
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::ImportSnapshotTask)
                .set_tags(Some(super::ami::ec2_tags(tags)))
                .build(),
        )
}

async fn import_and_wait(i: &Import<'_>) -> Result<String> {
    let task = import_request(i.ec2, i.bucket, i.key, i.description, i.tags)
        .send()
        .await
        .map_err(|e| {
            let code = e.code().unwrap_or_default().to_string();
            let message = e.message().unwrap_or_default().to_string();
            if refused(&code, &message) {
                anyhow!("EC2 ImportSnapshot was refused ({code}: {message}): {VMIMPORT_HELP}")
            } else {
                sdk_error(e, "EC2 ImportSnapshot")
            }
        })?
        .import_task_id
        .ok_or_else(|| anyhow!("ImportSnapshot returned no task id"))?;
    loop {
        let out = i
            .ec2
            .describe_import_snapshot_tasks()
            .import_task_ids(&task)
            .send()
            .await
            .map_err(|e| sdk_error(e, &format!("EC2 DescribeImportSnapshotTasks {task}")))?;
        let detail = out
            .import_snapshot_tasks
            .unwrap_or_default()
            .into_iter()
            .find_map(|t| t.snapshot_task_detail)
            .ok_or_else(|| anyhow!("import task {task} disappeared"))?;
        let status = detail.status.clone().unwrap_or_default();
        match status.as_str() {
            "completed" => {
                return detail
                    .snapshot_id
                    .ok_or_else(|| anyhow!("import task {task} completed without a snapshot id"))
            }
            "deleting" | "deleted" | "error" => bail!(
                "import task {task} ended as `{status}`: {}",
                detail.status_message.unwrap_or_default()
            ),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// Whether an ImportSnapshot error means "not allowed" (no point retrying): access denied, or
/// the `vmimport` role missing or lacking permissions.
fn refused(code: &str, message: &str) -> bool {
    code.contains("AccessDenied") || code == "UnauthorizedOperation" || message.contains("vmimport")
}

/// Sends part `n` (from byte `n * PART_SIZE`) of the image's multipart upload.
async fn upload_part(
    i: &Import<'_>,
    upload_id: &str,
    file: Arc<std::fs::File>,
    len: u64,
    n: u64,
    progress: &Progress<'_>,
) -> Result<CompletedPart> {
    let offset = n * PART_SIZE;
    let size = (len - offset).min(PART_SIZE) as usize;
    let data = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; size];
        file.read_exact_at(&mut buf, offset).map(|_| buf)
    })
    .await
    .context("part reader panicked")??;
    let out =
        i.s3.upload_part()
            .bucket(i.bucket)
            .key(i.key)
            .upload_id(upload_id)
            .part_number(n as i32 + 1)
            .content_length(size as i64)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    e,
                    &format!("S3 UploadPart {} of s3://{}/{}", n + 1, i.bucket, i.key),
                )
            })?;
    progress.inc(size as u64);
    Ok(CompletedPart::builder()
        .part_number(n as i32 + 1)
        .set_e_tag(out.e_tag)
        .build())
}

/// Uploads the image to S3 in parts, `concurrency` at a time; a failure aborts the upload
/// (its parts are removed) unless `keep_partial`.
async fn upload(i: &Import<'_>, reporter: &Reporter) -> Result<UploadStats> {
    let file = Arc::new(
        std::fs::File::open(i.image)
            .with_context(|| format!("{}: cannot open the raw image", i.image.display()))?,
    );
    let len = file.metadata()?.len();
    let started = Instant::now();
    let upload_id =
        i.s3.create_multipart_upload()
            .bucket(i.bucket)
            .key(i.key)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    e,
                    &format!("S3 CreateMultipartUpload s3://{}/{}", i.bucket, i.key),
                )
            })?
            .upload_id
            .ok_or_else(|| anyhow!("CreateMultipartUpload returned no upload id"))?;
    let progress = Progress::new(reporter, "upload", len);
    let parts = len.div_ceil(PART_SIZE).max(1);
    let sent: Result<Vec<CompletedPart>> = futures::stream::iter(0..parts)
        .map(|n| upload_part(i, &upload_id, Arc::clone(&file), len, n, &progress))
        .buffered(i.concurrency.max(1))
        .try_collect()
        .await;
    progress.finish();
    let completed = match sent {
        Ok(parts) => {
            i.s3.complete_multipart_upload()
                .bucket(i.bucket)
                .key(i.key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_error(e, "S3 CompleteMultipartUpload"))
        }
        Err(e) => Err(e),
    };
    if let Err(e) = completed {
        if !i.keep_partial {
            let _ =
                i.s3.abort_multipart_upload()
                    .bucket(i.bucket)
                    .key(i.key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
            reporter.println("aborted the multipart upload; its parts are removed");
        }
        return Err(e);
    }
    Ok(UploadStats {
        route: "import".into(),
        bytes_sent: len,
        seconds: started.elapsed().as_secs_f64(),
        hash_seconds: 0.0,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn access_denied_and_a_missing_vmimport_role_are_refusals() {
        assert!(super::refused(
            "UnauthorizedOperation",
            "You are not authorized"
        ));
        assert!(super::refused(
            "InvalidParameter",
            "The service role vmimport provided does not exist or does not have sufficient permissions"
        ));
        assert!(!super::refused("InternalError", "try again"));
    }
}
