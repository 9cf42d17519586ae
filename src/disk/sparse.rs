//! Data extents of sparse files such as disk images: where their bytes are, so that holes are
//! neither read nor sent. Reading a hole is not free: the kernel fills the page cache with zero
//! pages, which for a fresh 3 GiB image takes longer than hashing its data.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The data extents among the first `len` bytes of `file`, as ordered `(start, end)` byte
/// ranges, from `SEEK_DATA`/`SEEK_HOLE`; the whole range where the file system cannot tell.
/// Callers add what the file is to the error.
pub fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let whole = || if len == 0 { vec![] } else { vec![(0, len)] };
    let mut extents = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(extents),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(whole()),
                _ => Err(err),
            };
        }
        let data = data as u64;
        if data >= len {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Ok(whole());
        }
        let hole = (hole as u64).min(len);
        if hole <= data {
            return Err(io::Error::other(format!(
                "the file system reported an empty data extent at {data}"
            )));
        }
        extents.push((data, hole));
        pos = hole;
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn extents_cover_every_written_byte_and_skip_a_large_hole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let f = File::create(&path).unwrap();
        let len = 64 << 20;
        f.set_len(len).unwrap();
        f.write_all_at(b"head", 10).unwrap();
        f.write_all_at(b"tail", len - 4).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        let extents = data_extents(&f, len).unwrap();
        let covered = |at: u64| extents.iter().any(|&(s, e)| s <= at && at < e);
        assert!(covered(10) && covered(13) && covered(len - 4) && covered(len - 1));
        assert!(
            extents.windows(2).all(|w| w[0].1 <= w[1].0),
            "ordered: {extents:?}"
        );
        let data: u64 = extents.iter().map(|(s, e)| e - s).sum();
        assert!(
            data < len / 2,
            "the hole in the middle is skipped: {extents:?}"
        );
        assert!(data_extents(&f, 0).unwrap().is_empty());
    }
}
