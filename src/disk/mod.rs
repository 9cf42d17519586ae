//! The disk room: a raw disk assembled from a tree without loop devices or mounts (`sfdisk`
//! writes the partition table, `mkfs.ext4 -d` fills the root filesystem at its offset with
//! every identifier derived and every timestamp clamped, GRUB's core image goes into the MBR
//! gap under BIOS or onto a FAT EFI system partition written with mtools under UEFI), and the
//! tools that read and write such disks: loop mounts, sparse reads, ext4 timestamp clamping.

pub mod ext4_times;
pub mod loopmount;
pub mod sparse;

use crate::definition::Firmware;
use crate::process::Command;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// What a disk is made of, besides its tree.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Layout {
    /// Size of the disk in bytes.
    pub size: u64,
    /// BIOS (MBR, GRUB in the gap) or UEFI (GPT, an EFI system partition).
    pub firmware: Firmware,
    /// Every timestamp is clamped to this (`SOURCE_DATE_EPOCH`).
    pub epoch: u32,
}

/// Offset of the first partition: 1 MiB, leaving the MBR gap for GRUB's core image.
const FIRST_PARTITION_BYTES: u64 = 1 << 20;
/// Size of the EFI system partition under UEFI.
const ESP_BYTES: u64 = 200 << 20;

/// A UUID (version 4 layout) derived from `seed` and `purpose`: the same base gets the same
/// filesystem and partition identifiers, so its disk is the same bytes.
pub(crate) fn derived_uuid(seed: &str, purpose: &str) -> String {
    use sha2::Digest;
    let mut b: [u8; 16] = sha2::Sha256::digest(format!("{purpose}:{seed}"))[..16]
        .try_into()
        .expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Makes the raw disk: partition table, ext4 root from `tree`, and the boot loader; every
/// identifier derived from `uuid` and every timestamp clamped to the source date, so the same
/// tree gives the same bytes.
pub(crate) fn assemble(layout: &Layout, tree: &Path, raw: &Path, uuid: &str) -> Result<()> {
    let size = layout.size;
    let f = fs::File::create(raw).with_context(|| format!("cannot create {}", raw.display()))?;
    f.set_len(size)?;
    drop(f);
    let uefi = layout.firmware == Firmware::Uefi;
    let first = FIRST_PARTITION_BYTES / 512;
    // Identifiers derived from the root filesystem's UUID, not random: same tree, same disk.
    let id = |purpose| derived_uuid(uuid, purpose);
    let table = if uefi {
        let esp = ESP_BYTES / 512;
        format!(
            "label: gpt\nlabel-id: {}\nstart={first}, size={esp}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={}, name=ESP\nstart={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={}, name=root\n",
            id("disk"),
            id("esp partition"),
            first + esp,
            id("root partition"),
        )
    } else {
        format!(
            "label: dos\nlabel-id: 0x{}\nstart={first}, type=83, bootable\n",
            &id("disk")[..8]
        )
    };
    Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(raw)
        .stdin(table.into_bytes())
        .run()?;
    let root_offset = FIRST_PARTITION_BYTES + if uefi { ESP_BYTES } else { 0 };
    // Keep 1 MiB free at the end for the GPT backup header.
    let root_kib = (size - root_offset - (1 << 20)) / 1024;
    let epoch = layout.epoch;
    Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-U", uuid])
        .arg("-E")
        .arg(format!(
            "offset={root_offset},hash_seed={}",
            id("directory hash seed")
        ))
        .arg("-d")
        .arg(tree)
        .arg(raw)
        .arg(format!("{root_kib}k"))
        .env("E2FSPROGS_FAKE_TIME", &epoch.to_string())
        .run()
        .context("mkfs.ext4 could not fill the root filesystem")?;
    ext4_times::clamp_times(raw, root_offset, epoch)
        .context("cannot clamp the root filesystem's timestamps")?;
    let early = raw.with_extension("early.cfg");
    fs::write(
        &early,
        // The serial console from the first instruction on, so that a boot loader that cannot
        // go on (no grub.cfg, no kernel) says so where verify reads.
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\nsearch --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"
        ),
    )?;
    if uefi {
        install_grub_efi(raw, &early, &id("esp serial")[..8], epoch)?;
    } else {
        install_grub_bios(raw, &early)?;
    }
    fs::remove_file(&early).ok();
    Ok(())
}

/// GRUB modules built into the core image, so the boot needs nothing else to find the root.
const CORE_MODULES: &[&str] = &[
    "part_msdos",
    "part_gpt",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "linux",
    "configfile",
    "serial",
    "terminal",
    "echo",
    "test",
    "gzio",
];

/// Writes GRUB's boot.img into the MBR and core.img into the gap after it, patching the
/// sector pointers the way grub-bios-setup does.
fn install_grub_bios(raw: &Path, early: &Path) -> Result<()> {
    let dir = "/usr/lib/grub/i386-pc";
    let core = raw.with_extension("core.img");
    Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-d", dir, "-p", "/boot/grub", "-c"])
        .arg(early)
        .arg("-o")
        .arg(&core)
        // `linux16`: the BIOS configuration's loader (see `grub_cfg` in the rootfs builder).
        .args(["biosdisk", "linux16"])
        .args(CORE_MODULES)
        .run()?;
    let mut core_img = fs::read(&core)?;
    fs::remove_file(&core).ok();
    let mut boot_img =
        fs::read(format!("{dir}/boot.img")).context("grub-pc-bin is not installed")?;
    let sectors = core_img.len().div_ceil(512);
    if sectors as u64 >= FIRST_PARTITION_BYTES / 512 {
        bail!(
            "GRUB's core image ({} sectors) does not fit before the first partition",
            sectors
        );
    }
    // boot.img: the LBA of core.img's first sector, and the floppy drive check turned off.
    boot_img[0x5c..0x64].copy_from_slice(&1u64.to_le_bytes());
    boot_img[0x66] = 0x90;
    boot_img[0x67] = 0x90;
    // core.img's first sector loads the rest: a blocklist (start LBA, sector count) at its end.
    let list = 512 - 12;
    core_img[list..list + 8].copy_from_slice(&2u64.to_le_bytes());
    core_img[list + 8..list + 10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    let mut disk = fs::OpenOptions::new().write(true).open(raw)?;
    disk.write_all(&boot_img[..0x1b8])?;
    disk.seek(SeekFrom::Start(512))?;
    disk.write_all(&core_img)?;
    disk.sync_all()?;
    Ok(())
}

/// Builds GRUB as `EFI/BOOT/BOOTX64.EFI` on a FAT EFI system partition written with mtools.
fn install_grub_efi(raw: &Path, early: &Path, serial: &str, epoch: u32) -> Result<()> {
    let efi = raw.with_extension("BOOTX64.EFI");
    Command::new("grub-mkimage")
        .args([
            "-O",
            "x86_64-efi",
            "-d",
            "/usr/lib/grub/x86_64-efi",
            "-p",
            "/boot/grub",
            "-c",
        ])
        .arg(early)
        .arg("-o")
        .arg(&efi)
        .args(["fat", "efi_gop", "all_video"])
        .args(CORE_MODULES)
        .run()
        .context("grub-mkimage for UEFI failed: is grub-efi-amd64-bin installed?")?;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch.into());
    fs::File::options()
        .write(true)
        .open(&efi)?
        .set_modified(when)?;
    let image = format!("{}@@{}", raw.display(), FIRST_PARTITION_BYTES);
    let sectors = (ESP_BYTES / 512).to_string();
    Command::new("mformat")
        .args([
            "-i", &image, "-F", "-v", "ESP", "-N", serial, "-T", &sectors, "-h", "64", "-s", "32",
            "::",
        ])
        .env("SOURCE_DATE_EPOCH", &epoch.to_string())
        .run()?;
    Command::new("mmd")
        .args(["-i", &image, "::/EFI", "::/EFI/BOOT"])
        .env("SOURCE_DATE_EPOCH", &epoch.to_string())
        .run()?;
    Command::new("mcopy")
        .args(["-i", &image, "-m"])
        .env("SOURCE_DATE_EPOCH", &epoch.to_string())
        .arg(&efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .run()?;
    fs::remove_file(&efi).ok();
    Ok(())
}
