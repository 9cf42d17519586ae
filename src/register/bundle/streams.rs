//! The streams a bundle is written and read through: AES-128-CBC with PKCS#7 padding, running
//! digests, progress counts, and 10 MiB parts.

use super::{Part, AES_BLOCK, PART_SIZE};
use aes::Aes128;
use cbc::cipher::generic_array::GenericArray;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Counts bytes read for a progress callback.
pub(super) struct ProgressReader<'a, R> {
    pub(super) inner: R,
    pub(super) done: u64,
    pub(super) progress: &'a (dyn Fn(u64) + Sync),
    /// SHA-256 of what was read.
    pub(super) sha256: Sha256,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        self.done += n as u64;
        (self.progress)(self.done);
        Ok(n)
    }
}

/// Passes bytes through while hashing them with SHA-1.
pub(super) struct HashWriter<W> {
    pub(super) inner: W,
    pub(super) hasher: Sha1,
}

impl<W> HashWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha1::new(),
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything read through it with SHA-1.
pub(super) struct HashReader<R> {
    pub(super) inner: R,
    pub(super) hasher: Sha1,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// AES-128-CBC encryption with PKCS#7 padding added by [`CbcWriter::finish`].
pub(super) struct CbcWriter<W> {
    pub(super) inner: W,
    pub(super) enc: cbc::Encryptor<Aes128>,
    pub(super) pending: Vec<u8>,
}

impl<W: Write> CbcWriter<W> {
    pub(super) fn new(inner: W, key: &[u8; 16], iv: &[u8; 16]) -> Self {
        CbcWriter {
            inner,
            enc: cbc::Encryptor::<Aes128>::new(key.into(), iv.into()),
            pending: Vec::with_capacity(1 << 16),
        }
    }

    fn encrypt_whole_blocks(&mut self) -> io::Result<()> {
        let whole = self.pending.len() / AES_BLOCK * AES_BLOCK;
        for block in self.pending[..whole].chunks_exact_mut(AES_BLOCK) {
            self.enc
                .encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        self.inner.write_all(&self.pending[..whole])?;
        self.pending.drain(..whole);
        Ok(())
    }

    pub(super) fn finish(mut self) -> io::Result<W> {
        let pad = AES_BLOCK - self.pending.len() % AES_BLOCK;
        self.pending.extend(std::iter::repeat_n(pad as u8, pad));
        self.encrypt_whole_blocks()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for CbcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= 1 << 16 {
            self.encrypt_whole_blocks()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// AES-128-CBC decryption that strips the PKCS#7 padding at the end of the stream.
pub(super) struct CbcReader<R> {
    pub(super) inner: R,
    pub(super) dec: cbc::Decryptor<Aes128>,
    pub(super) raw: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) pos: usize,
    pub(super) held: Option<[u8; AES_BLOCK]>,
    pub(super) eof: bool,
}

impl<R: Read> CbcReader<R> {
    pub(super) fn new(inner: R, key: &[u8; 16], iv: &[u8; 16]) -> Self {
        CbcReader {
            inner,
            dec: cbc::Decryptor::<Aes128>::new(key.into(), iv.into()),
            raw: Vec::new(),
            out: Vec::new(),
            pos: 0,
            held: None,
            eof: false,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.pos = 0;
        while self.out.is_empty() && !self.eof {
            let mut buf = vec![0u8; 1 << 16];
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                self.eof = true;
                let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad AES padding");
                if !self.raw.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the encrypted stream is not a whole number of AES blocks",
                    ));
                }
                let last = self.held.take().ok_or_else(bad)?;
                let pad = last[AES_BLOCK - 1] as usize;
                if pad == 0
                    || pad > AES_BLOCK
                    || last[AES_BLOCK - pad..].iter().any(|&b| b as usize != pad)
                {
                    return Err(bad());
                }
                self.out.extend_from_slice(&last[..AES_BLOCK - pad]);
                break;
            }
            self.raw.extend_from_slice(&buf[..n]);
            let whole = self.raw.len() / AES_BLOCK * AES_BLOCK;
            for block in self.raw[..whole].chunks_exact_mut(AES_BLOCK) {
                self.dec
                    .decrypt_block_mut(GenericArray::from_mut_slice(block));
                let mut b = [0u8; AES_BLOCK];
                b.copy_from_slice(block);
                if let Some(prev) = self.held.replace(b) {
                    self.out.extend_from_slice(&prev);
                }
            }
            self.raw.drain(..whole);
        }
        Ok(())
    }
}

impl<R: Read> Read for CbcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.out.len() {
            if self.eof {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Splits the encrypted stream into part files, hashing each.
pub(super) struct PartWriter {
    pub(super) dir: PathBuf,
    pub(super) prefix: String,
    pub(super) current: Option<(BufWriter<File>, Sha1, u64)>,
    pub(super) parts: Vec<Part>,
    pub(super) total: u64,
}

impl PartWriter {
    pub(super) fn new(dir: &Path, prefix: &str) -> Self {
        PartWriter {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            current: None,
            parts: Vec::new(),
            total: 0,
        }
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some((mut w, h, _)) = self.current.take() {
            w.flush()?;
            let last = self.parts.last_mut().expect("a part is open");
            last.sha1 = hex::encode(h.finalize());
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> io::Result<Self> {
        self.close_current()?;
        Ok(self)
    }
}

impl Write for PartWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, _, n)| *n >= PART_SIZE)
        {
            self.close_current()?;
        }
        if self.current.is_none() {
            let filename = format!("{}.part.{:02}", self.prefix, self.parts.len());
            let f = File::create(self.dir.join(&filename))?;
            self.parts.push(Part {
                filename,
                sha1: String::new(),
            });
            self.current = Some((BufWriter::with_capacity(1 << 20, f), Sha1::new(), 0));
        }
        let (w, h, n) = self.current.as_mut().expect("a part is open");
        let take = buf.len().min((PART_SIZE - *n) as usize);
        w.write_all(&buf[..take])?;
        h.update(&buf[..take]);
        *n += take as u64;
        self.total += take as u64;
        Ok(take)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((w, _, _)) => w.flush(),
            None => Ok(()),
        }
    }
}

/// Reads the part files in order, checking each part's SHA-1 before handing out its bytes.
pub(super) struct PartReader {
    pub(super) dir: PathBuf,
    pub(super) parts: Vec<Part>,
    pub(super) next: usize,
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
}

impl Read for PartReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            let Some(part) = self.parts.get(self.next) else {
                return Ok(0);
            };
            let path = self.dir.join(&part.filename);
            self.buf = std::fs::read(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{}: cannot read the part: {e}", path.display()),
                )
            })?;
            let digest = hex::encode(Sha1::digest(&self.buf));
            if !digest.eq_ignore_ascii_case(&part.sha1) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: SHA-1 is {digest}, the manifest says {}: the part is corrupt",
                        path.display(),
                        part.sha1
                    ),
                ));
            }
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbc_round_trips_every_padding_length() {
        let key = [7u8; 16];
        let iv = [9u8; 16];
        for len in [0usize, 1, 15, 16, 17, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut w = CbcWriter::new(Vec::new(), &key, &iv);
            w.write_all(&data).unwrap();
            let ct = w.finish().unwrap();
            assert_eq!(ct.len(), (len / 16 + 1) * 16, "padding always adds a block");
            let mut back = Vec::new();
            CbcReader::new(ct.as_slice(), &key, &iv)
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "length {len}");
        }
    }

    #[test]
    fn cbc_matches_the_aes_128_cbc_test_vector() {
        // NIST SP 800-38A F.2.1, first block (no padding block compared).
        let key: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
            .unwrap()
            .try_into()
            .unwrap();
        let iv: [u8; 16] = hex::decode("000102030405060708090a0b0c0d0e0f")
            .unwrap()
            .try_into()
            .unwrap();
        let plain = hex::decode("6bc1bee22e409f96e93d7e117393172a").unwrap();
        let mut w = CbcWriter::new(Vec::new(), &key, &iv);
        w.write_all(&plain).unwrap();
        let ct = w.finish().unwrap();
        assert_eq!(hex::encode(&ct[..16]), "7649abac8119b246cee98e9b12e9197d");
    }

    #[test]
    fn part_writer_splits_at_part_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartWriter::new(dir.path(), "img");
        let chunk = vec![1u8; 3 * 1024 * 1024];
        for _ in 0..8 {
            w.write_all(&chunk).unwrap();
        }
        let w = w.finish().unwrap();
        let names: Vec<_> = w.parts.iter().map(|p| p.filename.as_str()).collect();
        assert_eq!(names, ["img.part.00", "img.part.01", "img.part.02"]);
        assert_eq!(w.total, 24 * 1024 * 1024);
        let first = std::fs::read(dir.path().join("img.part.00")).unwrap();
        assert_eq!(first.len() as u64, PART_SIZE);
        assert_eq!(w.parts[0].sha1, hex::encode(Sha1::digest(&first)));
    }
}
