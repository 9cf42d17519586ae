//! Clamps the timestamps of an ext4 filesystem image, so that two `mkfs.ext4 -d` runs over
//! identical trees give identical bytes although the trees' files were made at different times.

use anyhow::{ensure, Context, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Incompatible features handled: filetype, extents, 64bit, flex_bg, csum_seed, largedir,
/// inline_data, encrypt, casefold. Refused among others: needs_recovery (a journal replay
/// would undo the clamp), meta_bg, mmp and ea_inode (whose inodes keep data in time fields).
const INCOMPAT_OK: u32 = 0x2 | 0x40 | 0x80 | 0x200 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;
/// Read-only compatible features handled: sparse_super, large_file, huge_file, gdt_csum,
/// dir_nlink, extra_isize, quota, metadata_csum, readonly, project, verity, orphan_present.
const RO_COMPAT_OK: u32 =
    0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x400 | 0x1000 | 0x2000 | 0x8000 | 0x10000;
const RO_METADATA_CSUM: u32 = 0x400;
/// Superblock times: offset of the low 32 bits and of the high byte (mtime, wtime, lastcheck,
/// mkfs_time, first_error_time, last_error_time).
const SB_TIMES: [(usize, usize); 6] = [
    (0x2C, 0x275),
    (0x30, 0x274),
    (0x40, 0x277),
    (0x108, 0x276),
    (0x198, 0x278),
    (0x1CC, 0x279),
];
/// Inode times: offset of the seconds and of the `_extra` word (atime, ctime, mtime, crtime).
const INODE_TIMES: [(usize, usize); 4] = [(0x08, 0x8C), (0x0C, 0x84), (0x10, 0x88), (0x90, 0x94)];

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// The kernel's `crc32c_le`: no pre- or post-inversion, unlike the crate's convention.
fn crc(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// Clamps every timestamp of every in-use inode of the ext4 filesystem that starts `offset`
/// bytes into `image` to at most `epoch` (seconds since 1970, below 2^31): ctime, mtime and
/// crtime, with their nanosecond `_extra` parts zeroed when clamped; atime becomes `epoch`; and
/// recomputes each changed inode's metadata_csum checksum. Also any superblock times above epoch, in the primary
/// superblock and every backup. Returns how many inodes changed.
pub fn clamp_times(image: &Path, offset: u64, epoch: u32) -> Result<u64> {
    let file = OpenOptions::new().read(true).write(true).open(image);
    let clamped = file
        .map_err(Into::into)
        .and_then(|f| clamp_file(&f, offset, epoch));
    clamped.with_context(|| format!("cannot clamp the ext4 times of {}", image.display()))
}

/// An ext4 filesystem `offset` bytes into an open image file.
struct Fs<'a> {
    file: &'a File,
    offset: u64,
}

impl Fs<'_> {
    fn read(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        let pos = self.offset + pos;
        self.file
            .read_exact_at(buf, pos)
            .with_context(|| format!("cannot read at {pos}"))
    }

    fn write(&self, buf: &[u8], pos: u64) -> Result<()> {
        let pos = self.offset + pos;
        self.file
            .write_all_at(buf, pos)
            .with_context(|| format!("cannot write at {pos}"))
    }
}

/// What the primary superblock says about the layout, checked to be one this module handles.
struct Geometry {
    /// Block size in bytes.
    bs: u64,
    /// First data block, blocks and inodes per group, group count.
    first: u64,
    bpg: u64,
    ipg: u32,
    groups: u64,
    /// Inode and group descriptor sizes.
    isz: usize,
    dsz: usize,
    /// ro_compat features.
    ro: u32,
    /// metadata_csum is on, and the checksum seed.
    csum: bool,
    seed: u32,
    /// sparse_super2's two backup groups.
    sparse2: Option<[u64; 2]>,
}

impl Geometry {
    fn of(sb: &[u8], offset: u64) -> Result<Geometry> {
        ensure!(
            le16(sb, 0x38) == 0xEF53,
            "no ext4 filesystem at offset {offset}"
        );
        let (incompat, ro) = (le32(sb, 0x60), le32(sb, 0x64));
        let (bad_in, bad_ro) = (incompat & !INCOMPAT_OK, ro & !RO_COMPAT_OK);
        let why = format!("incompat {bad_in:#x}, ro_compat {bad_ro:#x}");
        ensure!(bad_in | bad_ro == 0, "ext4 features not handled ({why})");
        let csum = ro & RO_METADATA_CSUM != 0;
        ensure!(
            !csum || sb[0x175] == 1,
            "unknown checksum type {}",
            sb[0x175]
        );
        let log_bs = le32(sb, 0x18);
        let (first, bpg) = (le32(sb, 0x14) as u64, le32(sb, 0x20) as u64);
        let ipg = le32(sb, 0x28);
        let rev0 = le32(sb, 0x4C) == 0;
        let isz = if rev0 { 128 } else { le16(sb, 0x58) as usize };
        let wide = incompat & 0x80 != 0; // 64bit
        let dsz = if wide { le16(sb, 0xFE) as usize } else { 32 };
        let bs = 1024u64 << log_bs.min(6);
        let blocks = le32(sb, 0x04) as u64 | (u64::from(wide) * le32(sb, 0x150) as u64) << 32;
        let groups = blocks.saturating_sub(first).div_ceil(bpg.max(1));
        ensure!(
            log_bs <= 6
                && isz.is_power_of_two()
                && (128..=bs).contains(&(isz as u64))
                && (1..=bs * 8).contains(&(ipg as u64))
                && (dsz == 32 || wide && dsz >= 64 && dsz.is_power_of_two())
                && groups * ipg as u64 == le32(sb, 0x00) as u64,
            "ext4 geometry not handled (block size {bs}, inode size {isz}, desc size {dsz})"
        );
        let seed = match incompat & 0x2000 {
            0 => crc(!0, &sb[0x68..0x78]), // from the UUID
            _ => le32(sb, 0x270),          // csum_seed
        };
        let sparse2 = le32(sb, 0x5C) & 0x200 != 0;
        let sparse2 = sparse2.then(|| [0x24C, 0x250].map(|o| le32(sb, o) as u64));
        Ok(Geometry {
            bs,
            first,
            bpg,
            ipg,
            groups,
            isz,
            dsz,
            ro,
            csum,
            seed,
            sparse2,
        })
    }
}

/// `clamp_times` on an open image.
fn clamp_file(file: &File, offset: u64, epoch: u32) -> Result<u64> {
    ensure!(epoch < 1 << 31, "epoch {epoch} is not below 2^31");
    let fs = Fs { file, offset };
    let mut sb = [0u8; 1024];
    fs.read(&mut sb, 1024)?;
    let geo = Geometry::of(&sb, offset)?;
    clamp_superblocks(&fs, &geo, epoch)?;
    let mut gdt = vec![0u8; geo.groups as usize * geo.dsz];
    fs.read(&mut gdt, (geo.first + 1) * geo.bs)?;
    let mut changed = 0;
    for (g, d) in gdt.chunks(geo.dsz).enumerate() {
        changed += clamp_group(&fs, &geo, g as u32, d, epoch)?;
    }
    Ok(changed)
}

/// Clamps the times of the primary superblock and of every backup.
fn clamp_superblocks(fs: &Fs, geo: &Geometry, epoch: u32) -> Result<()> {
    let mut sb = [0u8; 1024];
    let groups = (0..geo.groups).filter(|&g| has_super(g, geo.ro & 1 != 0, geo.sparse2));
    for g in groups {
        let pos = if g == 0 {
            1024
        } else {
            (g * geo.bpg + geo.first) * geo.bs
        };
        fs.read(&mut sb, pos)?;
        let sum_ok = !geo.csum || le32(&sb, 0x3FC) == crc(!0, &sb[..0x3FC]);
        ensure!(
            le16(&sb, 0x38) == 0xEF53 && sum_ok,
            "bad superblock in group {g}"
        );
        if clamp_super(&mut sb, epoch) {
            if geo.csum {
                let sum = crc(!0, &sb[..0x3FC]);
                put32(&mut sb, 0x3FC, sum);
            }
            fs.write(&sb, pos)?;
        }
    }
    Ok(())
}

/// Clamps the in-use inodes of group `g` (descriptor `d`); returns how many changed.
fn clamp_group(fs: &Fs, geo: &Geometry, g: u32, d: &[u8], epoch: u32) -> Result<u64> {
    let (bs, isz, ipg) = (geo.bs, geo.isz, geo.ipg);
    let desc_csum = geo.ro & (RO_METADATA_CSUM | 0x10) != 0; // or gdt_csum: flags and itable_unused hold
                                                             // A 16-bit field of the descriptor's 64bit half, or 0 in a 32-byte descriptor.
    let hi16 = |o: usize| if geo.dsz >= 64 { le16(d, o) as u64 } else { 0 };
    if desc_csum && le16(d, 0x12) & 1 != 0 {
        return Ok(0); // INODE_UNINIT
    }
    let unused = u64::from(desc_csum) * (le16(d, 0x1C) as u64 | hi16(0x32) << 16);
    let used = (ipg as u64).saturating_sub(unused) as usize;
    let mut bitmap = vec![0u8; used.div_ceil(8)];
    let bitmap_at = le32(d, 0x04) as u64 | (hi16(0x24) | hi16(0x26) << 16) << 32;
    fs.read(&mut bitmap, bitmap_at * bs)?;
    let in_use = |i: usize| bitmap[i / 8] & (1 << (i % 8)) != 0;
    let Some(last) = (0..used).rev().find(|&i| in_use(i)) else {
        return Ok(0);
    };
    let table = (le32(d, 0x08) as u64 | (hi16(0x28) | hi16(0x2A) << 16) << 32) * bs;
    let mut inodes = vec![0u8; (last + 1) * isz];
    fs.read(&mut inodes, table)?;
    let mut changed = 0;
    for (i, ino) in inodes.chunks_mut(isz).enumerate() {
        let inum = g * ipg + i as u32 + 1;
        let sum_ok = !geo.csum || inode_csum(geo.seed, inum, ino) == stored_csum(ino);
        if !in_use(i) || !clamp_inode(ino, epoch) {
            continue;
        }
        ensure!(sum_ok, "inode {inum} has a bad checksum: run e2fsck");
        if geo.csum {
            let sum = inode_csum(geo.seed, inum, ino);
            for (k, &f) in csum_fields(ino).iter().enumerate() {
                ino[f..f + 2].copy_from_slice(&((sum >> (16 * k)) as u16).to_le_bytes());
            }
        }
        fs.write(ino, table + (i * isz) as u64)?;
        changed += 1;
    }
    Ok(changed)
}

/// Whether group `g` holds a superblock copy, as e2fsprogs' `ext2fs_bg_has_super`.
fn has_super(g: u64, sparse: bool, sparse2: Option<[u64; 2]>) -> bool {
    let power = |b: u64| {
        let powers = std::iter::successors(Some(b), |p| p.checked_mul(b));
        powers.take_while(|&p| p <= g).any(|p| p == g)
    };
    match sparse2 {
        _ if g == 0 => true,
        Some(backups) => backups.contains(&g),
        None => !sparse || g == 1 || g % 2 == 1 && [3, 5, 7].into_iter().any(power),
    }
}

/// Clamps the superblock times above `epoch`; true if any changed.
fn clamp_super(sb: &mut [u8], epoch: u32) -> bool {
    let mut changed = false;
    for (lo, hi) in SB_TIMES {
        if (le32(sb, lo) as u64 | (sb[hi] as u64) << 32) > epoch as u64 {
            put32(sb, lo, epoch);
            sb[hi] = 0;
            changed = true;
        }
    }
    changed
}

/// `i_extra_isize`: how many bytes past the first 128 of the inode are in use.
fn extra_isize(ino: &[u8]) -> usize {
    ino.get(0x80..0x82).map_or(0, |b| le16(b, 0) as usize)
}

/// Clamps the inode times after `epoch` (seconds, then nanoseconds), and sets the access time
/// to `epoch` whatever it was: reading a file moves it, so it says when the tree was last read,
/// not what it holds. True if any changed.
fn clamp_inode(ino: &mut [u8], epoch: u32) -> bool {
    let end = ino.len().min(128 + extra_isize(ino));
    let mut changed = false;
    for (sec, extra) in INODE_TIMES.into_iter().filter(|&(sec, _)| sec + 4 <= end) {
        let extra = (extra + 4 <= end).then_some(extra);
        let x = extra.map_or(0, |o| le32(ino, o));
        // Signed seconds plus the two epoch bits of `_extra`; the nanoseconds are above them.
        let t = le32(ino, sec) as i32 as i64 + ((x as i64 & 3) << 32);
        let access_time = sec == INODE_TIMES[0].0;
        if t > epoch as i64
            || (t == epoch as i64 && x >> 2 != 0)
            || (access_time && t != epoch as i64)
        {
            put32(ino, sec, epoch);
            if let Some(o) = extra {
                put32(ino, o, 0);
            }
            changed = true;
        }
    }
    changed
}

/// Where the inode keeps its checksum: low half at 0x7C, high half at 0x82 if there is room.
fn csum_fields(ino: &[u8]) -> &'static [usize] {
    if extra_isize(ino) >= 4 {
        &[0x7C, 0x82]
    } else {
        &[0x7C]
    }
}

/// The checksum as stored, 16 or 32 bits.
fn stored_csum(ino: &[u8]) -> u32 {
    let fields = csum_fields(ino).iter().enumerate();
    fields
        .map(|(k, &f)| (le16(ino, f) as u32) << (16 * k))
        .sum()
}

/// The kernel's `ext4_inode_csum`: crc32c over the inode number, the generation and the
/// whole inode with its checksum fields zeroed, cut to the bits `stored_csum` reads.
fn inode_csum(seed: u32, inum: u32, ino: &[u8]) -> u32 {
    let mut zeroed = ino.to_vec();
    for &f in csum_fields(ino) {
        zeroed[f..f + 2].fill(0);
    }
    let sum = crc(
        crc(crc(seed, &inum.to_le_bytes()), &ino[0x64..0x68]),
        &zeroed,
    );
    sum & u32::MAX >> (32 - 16 * csum_fields(ino).len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;
    use std::{fs, thread, time::Duration};

    const MIB: u64 = 1 << 20;
    const EPOCH: u32 = 1_686_355_200;
    const UUID: &str = "0b3c6a52-8d1e-4f7a-9c2b-5e6f7a8b9c0d";
    const HASH_SEED: &str = "7d9e1f20-3a4b-4c5d-8e6f-708192a3b4c5";

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("cannot start command");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?} failed: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Dirs, files, a symlink, a hard link, a setuid file, a file from 2001 and, where
    /// setfattr exists, a file with an xattr.
    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("etc/sub")).unwrap();
        fs::create_dir_all(dir.join("usr/bin")).unwrap();
        fs::write(dir.join("etc/hostname"), "forge\n").unwrap();
        fs::write(dir.join("etc/sub/big"), "x".repeat(50_000)).unwrap();
        fs::write(dir.join("usr/bin/tool"), b"\x7fELF").unwrap();
        fs::set_permissions(dir.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        symlink("../etc/hostname", dir.join("usr/host")).unwrap();
        fs::hard_link(dir.join("etc/hostname"), dir.join("etc/hostname.link")).unwrap();
        fs::write(dir.join("etc/old"), "old").unwrap();
        // mtime and atime of 2001: the mtime is kept, the atime (moved by any read) is not.
        run(Command::new("touch")
            .args(["-d", "@1000000000"])
            .arg(dir.join("etc/old")));
        let setfattr = Command::new("setfattr")
            .args(["-n", "user.x", "-v", "1"])
            .arg(dir.join("etc/hostname"))
            .status();
        assert!(setfattr.map_or(true, |s| s.success()), "setfattr failed");
    }

    /// A fresh 64 MiB `img` with `tree` put at `offset` by mkfs.ext4, fake time if `fake`.
    fn mkfs(tree: &Path, img: &Path, offset: u64, fake: bool, args: &[&str]) {
        fs::File::create(img).unwrap().set_len(64 * MIB).unwrap();
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-L", "root", "-U", UUID, "-E"])
            .arg(format!("hash_seed={HASH_SEED},offset={offset}"))
            .args(args)
            .arg("-d")
            .arg(tree)
            .arg(img)
            .arg(format!("{}k", (64 * MIB - offset) / 1024));
        if fake {
            cmd.env("E2FSPROGS_FAKE_TIME", EPOCH.to_string());
        }
        run(&mut cmd);
    }

    fn spec(img: &Path, offset: u64) -> String {
        format!("{}?offset={offset}", img.display())
    }

    fn fsck_ok(img: &Path, offset: u64) -> bool {
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(spec(img, offset))
            .output();
        out.unwrap().status.success()
    }

    fn debugfs(img: &Path, offset: u64, request: &str) -> String {
        run(Command::new("debugfs")
            .args(["-R", request])
            .arg(spec(img, offset)))
    }

    fn same(a: &Path, b: &Path) -> bool {
        fs::read(a).unwrap() == fs::read(b).unwrap()
    }

    /// Clamps both images and checks they become identical and stay valid for e2fsck.
    fn clamp_pair(a: &Path, b: &Path) {
        assert!(
            !same(a, b),
            "images already identical: the test proves nothing"
        );
        assert!(clamp_times(a, MIB, EPOCH).unwrap() > 0);
        assert!(clamp_times(b, MIB, EPOCH).unwrap() > 0);
        assert!(same(a, b), "images differ after clamp_times");
        assert!(fsck_ok(a, MIB), "e2fsck rejects the clamped image");
        assert_eq!(
            clamp_times(a, MIB, EPOCH).unwrap(),
            0,
            "second clamp changed inodes"
        );
    }

    #[test]
    fn trees_made_apart_give_identical_images() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        tree(&a);
        thread::sleep(Duration::from_secs(2));
        tree(&b);
        let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
        mkfs(&a, &ia, MIB, true, &[]);
        mkfs(&b, &ib, MIB, true, &[]);
        clamp_pair(&ia, &ib);
    }

    #[test]
    fn superblock_times_clamped_without_fake_time() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("t"));
        let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
        // 4 KiB blocks, 4 groups: the backup superblocks in groups 1 and 3 carry times too.
        let args = ["-b", "4096", "-g", "4096"];
        mkfs(&dir.path().join("t"), &ia, MIB, false, &args);
        thread::sleep(Duration::from_secs(2));
        mkfs(&dir.path().join("t"), &ib, MIB, false, &args);
        clamp_pair(&ia, &ib);
    }

    #[test]
    fn time_changed_without_checksum_fails_fsck() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("t"));
        let img = dir.path().join("x.img");
        mkfs(&dir.path().join("t"), &img, 0, true, &["-b", "4096"]);
        assert!(fsck_ok(&img, 0));
        let imap = debugfs(&img, 0, "imap /etc/hostname");
        let at = imap.split("located at block ").nth(1).unwrap();
        let (block, off) = at.split_once(", offset 0x").unwrap();
        let pos =
            block.parse::<u64>().unwrap() * 4096 + u64::from_str_radix(off.trim(), 16).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut mtime_low = [0u8];
        file.read_exact_at(&mut mtime_low, pos + 0x10).unwrap();
        file.write_all_at(&[mtime_low[0] ^ 1], pos + 0x10).unwrap();
        assert!(!fsck_ok(&img, 0), "e2fsck accepts a stale inode checksum");
        let err = format!("{:#}", clamp_times(&img, 0, EPOCH).unwrap_err());
        assert!(err.contains("bad checksum"), "{err}");
    }

    #[test]
    fn older_times_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("t"));
        let img = dir.path().join("x.img");
        // 32-byte group descriptors, as without 64bit.
        mkfs(&dir.path().join("t"), &img, MIB, true, &["-O", "^64bit"]);
        // Nanoseconds on a time equal to epoch: after epoch, so clamped.
        let sif = "sif /etc/hostname crtime_extra 0x40";
        run(Command::new("debugfs")
            .args(["-w", "-R", sif])
            .arg(spec(&img, MIB)));
        let before = debugfs(&img, MIB, "stat /etc/hostname");
        assert!(!before.contains(" ctime: 0x6483bd00:00000000"), "{before}");
        assert!(before.contains("crtime: 0x6483bd00:00000040"), "{before}");
        clamp_times(&img, MIB, EPOCH).unwrap();
        let old = debugfs(&img, MIB, "stat /etc/old");
        assert!(old.contains("mtime: 0x3b9aca00:00000000"), "{old}");
        assert!(old.contains(" atime: 0x6483bd00:00000000"), "{old}");
        let new = debugfs(&img, MIB, "stat /etc/hostname");
        for t in [" ctime", " mtime", " atime", "crtime"] {
            assert!(new.contains(&format!("{t}: 0x6483bd00:00000000")), "{new}");
        }
        assert!(fsck_ok(&img, MIB));
    }

    #[test]
    fn refuses_what_is_not_handled_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.img");
        fs::write(&junk, vec![0x5a; 8192]).unwrap();
        let err = format!("{:#}", clamp_times(&junk, 0, EPOCH).unwrap_err());
        assert!(err.contains("junk.img: no ext4 filesystem"), "{err}");
        let short = dir.path().join("short.img");
        fs::write(&short, b"tiny").unwrap();
        let err = format!("{:#}", clamp_times(&short, 0, EPOCH).unwrap_err());
        assert!(err.contains("short.img"), "{err}");
        tree(&dir.path().join("t"));
        let big = dir.path().join("bigalloc.img");
        mkfs(&dir.path().join("t"), &big, 0, true, &["-O", "bigalloc"]);
        let err = format!("{:#}", clamp_times(&big, 0, EPOCH).unwrap_err());
        assert!(
            err.contains("bigalloc.img: ext4 features not handled"),
            "{err}"
        );
    }
}
