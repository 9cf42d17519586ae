//! `[machine]`: the build VM, its firmware, accelerator, timeouts and initramfs.

use super::values::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[machine]`: the build VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Virtual CPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Disk size (`4G`, `8GiB`, `2048M`).
    #[serde(default = "default_disk")]
    pub disk_size: ByteSize,
    /// `bios` or `uefi`.
    #[serde(default)]
    pub firmware: Firmware,
    /// `auto` (probe KVM, fall back to TCG), `kvm` or `tcg`.
    #[serde(default)]
    pub accelerator: Accelerator,
    /// Limits on each phase.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Where a bake that needs no running system runs: `auto` (a chroot where the host allows
    /// it, else a VM), `chroot` or `vm`. Not part of any id: both give the same image.
    #[serde(default)]
    pub bake: BakeIn,
    /// The drivers in the initramfs (rootfs builder): `generic` (the local disks of any
    /// hardware, bare metal included) or `virtual` (virtual machines and clouds only: a third
    /// of the size, and a shorter boot).
    #[serde(default)]
    pub initramfs: Initramfs,
}

/// The drivers in an image's initramfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initramfs {
    /// initramfs-tools' `MODULES=most` without what only a root elsewhere needs (network
    /// cards, NFS, iSCSI, Fibre Channel, network block devices) and without root filesystems
    /// other than ext4 (an image's root is an ext4 file system on a local disk): every local
    /// disk controller, USB storage and keyboard of most hardware, and [`VIRTUAL_DRIVERS`].
    #[default]
    Generic,
    /// Only [`VIRTUAL_DRIVERS`]: virtio, NVMe, Xen, Hyper-V, VMware, ENA, AHCI and IDE.
    Virtual,
}

/// The modules of a `virtual` initramfs: the disks of QEMU/KVM, EC2 (Xen and Nitro NVMe, ENA),
/// Hyper-V, VMware, VirtualBox and libvirt, and the root filesystem.
pub const VIRTUAL_DRIVERS: [&str; 16] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "sr_mod",
    "nvme",
    "xen_blkfront",
    "hv_vmbus",
    "hv_storvsc",
    "vmw_pvscsi",
    "mptspi",
    "ahci",
    "ata_piix",
    "ena",
    "ext4",
    "crc32c_generic",
];

/// Where a bake that needs no running system runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BakeIn {
    /// A chroot when imgforge runs as root with `unshare`, else a VM.
    #[default]
    Auto,
    /// A chroot of the base's tree on the host, in its own namespaces.
    Chroot,
    /// The base's kernel in QEMU with the bake init as PID 1.
    Vm,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            cpus: default_cpus(),
            memory_mib: default_memory(),
            disk_size: default_disk(),
            firmware: Firmware::default(),
            accelerator: Accelerator::default(),
            timeouts: Timeouts::default(),
            bake: BakeIn::default(),
            initramfs: Initramfs::default(),
        }
    }
}

fn default_cpus() -> u32 {
    2
}
fn default_memory() -> u32 {
    1024
}
fn default_disk() -> ByteSize {
    ByteSize(4 << 30)
}

/// Boot firmware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS), GRUB in the MBR.
    #[default]
    Bios,
    /// UEFI (OVMF), GRUB on an EFI system partition.
    Uefi,
}

/// QEMU accelerator choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Probe KVM with a tiny guest; use TCG if it does not answer.
    #[default]
    Auto,
    /// Force KVM.
    Kvm,
    /// Force TCG (software emulation).
    Tcg,
}

impl std::str::FromStr for Accelerator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accelerator::Auto),
            "kvm" => Ok(Accelerator::Kvm),
            "tcg" => Ok(Accelerator::Tcg),
            _ => Err(format!("`{s}`: use auto, kvm or tcg")),
        }
    }
}

/// `[machine.timeouts]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// The whole unattended install.
    #[serde(default = "default_install_timeout")]
    pub install: HumanDuration,
    /// Booting a built image until its checks pass.
    #[serde(default = "default_boot_timeout")]
    pub boot: HumanDuration,
    /// The whole bake.
    #[serde(default = "default_bake_timeout")]
    pub bake: HumanDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            install: default_install_timeout(),
            boot: default_boot_timeout(),
            bake: default_bake_timeout(),
        }
    }
}

fn default_install_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_boot_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_bake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1200))
}
