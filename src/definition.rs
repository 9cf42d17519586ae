//! Image definitions: the TOML files in `images/` that decide everything about an image.
//!
//! [`Definition::load`] reads a file and rejects anything it does not understand, naming the
//! file, the line and column, and the field. Values that need checking (sha256 digests, password
//! hashes, durations, sizes) are newtypes whose deserializers validate, so their errors carry the
//! position of the offending value too.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod rules;

/// An error in an image definition, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read.
    #[error("{path}: cannot read the image definition: {source}")]
    Read {
        /// The definition file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid definition.
    #[error("{path}:{line}:{column}: field `{field}`: {message}")]
    Invalid {
        /// The definition file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// Dotted path of the offending field (`system.users[0].password_hash`).
        field: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The answer file cannot be rendered from the definition; the message names the template
    /// and its line, or the definition's field.
    #[error("{path}: the answer file cannot be rendered: {message}")]
    Render {
        /// The definition file.
        path: PathBuf,
        /// What went wrong, located in the template or the definition.
        message: String,
    },
    /// The definition names a source that is not what it says (a ref or a file missing from
    /// a local repository); the message names the file and the field.
    #[error("{message}")]
    Source {
        /// What is wrong, with the definition's path and field.
        message: String,
    },
    /// Several problems in one definition, each with its own location.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Problems(Vec<DefinitionError>),
    /// Some of several definitions were invalid (each was reported as it was read).
    #[error("{invalid} of {total} definitions are invalid")]
    Several {
        /// How many were invalid.
        invalid: usize,
        /// How many were read.
        total: usize,
    },
}

/// A whole image definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Name and version of the image.
    pub image: ImageInfo,
    /// Operating system family and release.
    pub os: Os,
    /// How the base layer is made.
    pub builder: Builder,
    /// Installer media and boot command (builder `installer`).
    #[serde(default)]
    pub installer: Option<Installer>,
    /// The virtual machine used for building.
    #[serde(default)]
    pub machine: Machine,
    /// Settings of the installed system.
    pub system: System,
    /// The service layer baked on top of the base.
    #[serde(default)]
    pub service: Option<Service>,
    /// The data snapshot baked on top of the base.
    #[serde(default)]
    pub data: Option<DataSnapshot>,
    /// Extra steps run during the bake, in order.
    #[serde(default)]
    pub provisioners: Vec<Provisioner>,
    /// Checks that prove a built image works.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Export formats.
    #[serde(default)]
    pub output: Output,
    /// Where `--register` publishes the image.
    #[serde(default)]
    pub publish: Publish,
    /// `[cloud]`: how an instance takes its keys, hostname and user data where it runs.
    #[serde(default)]
    pub cloud: Cloud,
    /// `[cache]`: the layer cache shared by runners.
    #[serde(default)]
    pub cache: CacheSettings,
    /// Directory of the definition file; relative paths in it are resolved against this.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The definition file itself.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[image]`: what the image is called.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// Image name: lowercase letters, digits and dashes.
    pub name: ImageName,
    /// Free-form version, recorded in the manifest and on cloud tags.
    pub version: String,
    /// Optional description, used when registering.
    #[serde(default)]
    pub description: Option<String>,
}

/// `[os]`: family and release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Os {
    /// `debian` or `rhel`.
    pub family: OsFamily,
    /// Release codename or number (`bookworm`, `9`).
    pub release: String,
    /// CPU architecture; only `x86_64` is built today.
    #[serde(default = "default_arch")]
    pub arch: Arch,
}

/// Operating system families imgforge renders answer files for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    /// Debian and derivatives: preseed.
    Debian,
    /// Red Hat family (Rocky, Alma): kickstart.
    Rhel,
}

/// CPU architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
}

fn default_arch() -> Arch {
    Arch::X86_64
}

/// `[builder]`: how the base layer is made.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    /// `installer` or `rootfs`.
    pub kind: BuilderKind,
    /// mmdebstrap variant for `rootfs` (default `minbase`).
    #[serde(default)]
    pub variant: Option<String>,
}

/// The two ways of making a base layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    /// Boot the OS installer with a rendered answer file.
    Installer,
    /// Build the OS tree with mmdebstrap and assemble a disk; no installer.
    Rootfs,
}

/// `[installer]`: media and boot command of the installer builder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installer {
    /// Installer kernel for direct kernel boot.
    #[serde(default)]
    pub kernel: Option<Artifact>,
    /// Installer initrd for direct kernel boot.
    #[serde(default)]
    pub initrd: Option<Artifact>,
    /// Installer ISO, booted with `boot_command` typed at its prompt.
    #[serde(default)]
    pub iso: Option<Artifact>,
    /// Kernel command line for direct kernel boot; handlebars placeholders `{{http_url}}`,
    /// `{{http_ip}}`, `{{http_port}}` and `{{answer_url}}` are filled in.
    #[serde(default)]
    pub append: Option<String>,
    /// Keys typed at the ISO's boot prompt, VeeWee/Packer syntax.
    #[serde(default)]
    pub boot_command: Vec<String>,
    /// How long to wait after power-on before typing the boot command.
    #[serde(default = "default_boot_wait")]
    pub boot_wait: HumanDuration,
    /// Answer-file template overriding the shipped one, relative to the definition.
    #[serde(default)]
    pub template: Option<PathBuf>,
}

fn default_boot_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// A file pinned by its sha256: a local path or a URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Local path, relative to the definition.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `http://` or `https://` URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Expected sha256 of the file.
    pub sha256: Sha256Hex,
}

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
    /// The drivers in the initramfs (rootfs builder): `generic` (any hardware, bare metal
    /// included) or `virtual` (virtual machines and clouds only: a quarter of the size, and a
    /// shorter boot).
    #[serde(default)]
    pub initramfs: Initramfs,
}

/// The drivers in an image's initramfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initramfs {
    /// initramfs-tools' `MODULES=most`: the storage drivers of most hardware.
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

/// `[system]`: settings of the installed system.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// Host name.
    pub hostname: String,
    /// DNS domain.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// IANA time zone (`Etc/UTC`, `Europe/Berlin`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Locale (`en_US.UTF-8`).
    #[serde(default = "default_locale")]
    pub locale: String,
    /// Keyboard layout (`us`).
    #[serde(default = "default_keyboard")]
    pub keyboard: String,
    /// Package mirror URL.
    pub mirror: String,
    /// HTTP proxy for the installer and apt, if any.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Also install from the release's updates and security suites, and give the image them as
    /// sources (default true); `false` only where a definition says so.
    #[serde(default = "default_true")]
    pub updates: bool,
    /// The security archive (Debian: default `debian-security` on the mirror's host; rhel:
    /// the repository of updates that kickstart adds, none by default).
    #[serde(default)]
    pub security_mirror: Option<String>,
    /// OpenPGP key file (binary or armored) that signs the mirror and the security archive,
    /// for an internal mirror with its own key (default: this host's Debian archive keyring).
    #[serde(default)]
    pub mirror_key: Option<PathBuf>,
    /// `[[system.repositories]]`: extra apt repositories.
    #[serde(default)]
    pub repositories: Vec<Repository>,
    /// Users to create.
    #[serde(default)]
    pub users: Vec<User>,
    /// Extra packages to install.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Debconf selections, `owner question type value` lines, applied by both builders.
    #[serde(default)]
    pub debconf: Vec<String>,
}

fn default_domain() -> String {
    "localdomain".into()
}
fn default_timezone() -> String {
    "Etc/UTC".into()
}
fn default_locale() -> String {
    "en_US.UTF-8".into()
}
fn default_keyboard() -> String {
    "us".into()
}

/// `[[system.repositories]]`: an extra apt repository, such as a team's own packages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// Its URL.
    pub uri: String,
    /// Its suites (`bookworm`, `stable`).
    pub suites: Vec<String>,
    /// Its components.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// OpenPGP key file (binary or armored) its `InRelease` is signed with.
    #[serde(default)]
    pub signed_by: Option<PathBuf>,
    /// Install from it unsigned (`[trusted=yes]`): refused unless said here, and warned about.
    #[serde(default)]
    pub trusted: bool,
    /// Packages installed from this repository's first suite, whatever other sources offer.
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

/// `[[system.users]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// crypt(3) hash of the password; plain text is refused.
    #[serde(default)]
    pub password_hash: Option<PasswordHash>,
    /// SSH public keys for `~/.ssh/authorized_keys`.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Whether the user may use sudo.
    #[serde(default)]
    pub sudo: bool,
}

/// `[service]`: the service layer, a git repository at a pinned commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Repository URL or local path (relative to the definition).
    pub repo: String,
    /// Branch, tag or commit; resolved to a commit at build time.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Sub-directory of the repository to install (default: all of it).
    #[serde(default)]
    pub subdir: Option<String>,
    /// Where the service is installed in the image.
    pub dest: GuestPath,
    /// Command run in the image after the files are in place (cwd = `dest`).
    #[serde(default)]
    pub install: Option<String>,
    /// Path, inside the service tree, of a systemd unit to install and enable.
    #[serde(default)]
    pub unit: Option<String>,
}

/// `[data]`: the data snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSnapshot {
    /// A tarball pinned by sha256.
    #[serde(default)]
    pub tarball: Option<Artifact>,
    /// A git repository (`repo`, `ref`).
    #[serde(default)]
    pub git: Option<GitSource>,
    /// Where the data is unpacked in the image.
    pub dest: GuestPath,
}

/// A git repository and ref.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Repository URL or local path.
    pub repo: String,
    /// Branch, tag or commit.
    #[serde(rename = "ref")]
    pub git_ref: String,
}

/// `[[provisioners]]`: extra bake steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Provisioner {
    /// A shell script run as root in the image.
    Shell {
        /// Script path, relative to the definition.
        script: PathBuf,
        /// Run it over SSH in the booted image instead of offline.
        #[serde(default)]
        needs_running_system: bool,
    },
    /// A file copied into the image.
    File {
        /// Source path, relative to the definition.
        source: PathBuf,
        /// Absolute destination path in the image.
        dest: GuestPath,
        /// Octal mode (`"0644"`).
        #[serde(default)]
        mode: Option<String>,
    },
    /// An Ansible playbook applied to the image.
    Ansible(AnsibleProvisioner),
    /// A Chef run list converged in the image by `chef-solo` or `cinc-client`.
    Chef(ChefProvisioner),
}

impl Provisioner {
    /// Whether it runs over SSH in the booted image instead of offline.
    pub fn needs_running_system(&self) -> bool {
        match self {
            Provisioner::Shell {
                needs_running_system,
                ..
            } => *needs_running_system,
            Provisioner::File { .. } => false,
            Provisioner::Ansible(a) => a.needs_running_system,
            Provisioner::Chef(c) => c.needs_running_system,
        }
    }
}

/// `type = "ansible"`: a playbook, with the project directory around it (roles, templates,
/// group vars) staged into the image. Nothing is downloaded: roles and collections named in
/// `requirements` must be vendored next to the playbook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnsibleProvisioner {
    /// The playbook, relative to the definition (its directory is staged whole), or to the
    /// service tree with `in_service = true`.
    pub playbook: PathBuf,
    /// The playbook is in the service repository, already unpacked at `service.dest`.
    #[serde(default)]
    pub in_service: bool,
    /// Extra variables (`--extra-vars`), as a table.
    #[serde(default)]
    pub extra_vars: BTreeMap<String, toml::Value>,
    /// Only tasks with these tags (`--tags`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Role directories, relative to the playbook's directory (besides its own `roles/`).
    #[serde(default)]
    pub roles_path: Vec<PathBuf>,
    /// A requirements file (relative to the playbook's directory) whose roles and collections
    /// must all be vendored: in the roles path, or under `collections/ansible_collections/`.
    #[serde(default)]
    pub requirements: Option<PathBuf>,
    /// Which Ansible runs the playbook.
    #[serde(default)]
    pub runner: AnsibleRunner,
    /// Run it in the booted image (over SSH) instead of offline.
    #[serde(default)]
    pub needs_running_system: bool,
}

/// Which Ansible runs a playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnsibleRunner {
    /// Debian's `ansible-core`, installed in the base for the bake (and purged after it unless
    /// `system.packages` names it), runs the playbook in the image with a local connection.
    #[default]
    Image,
    /// The host's `ansible-playbook` connects over SSH (needs `needs_running_system = true` and
    /// python3 in the image).
    Host,
}

/// `type = "chef"`: a run list converged from vendored cookbooks with the Chef client found in
/// the image (`chef-solo`, or `cinc-client --local-mode`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChefProvisioner {
    /// Directory of cookbooks, relative to the definition.
    pub cookbooks: PathBuf,
    /// The run list: `recipe[cookbook::recipe]`, `cookbook::recipe`, `cookbook` or `role[name]`.
    pub run_list: Vec<String>,
    /// Node attributes (the JSON attributes file), as a table.
    #[serde(default)]
    pub attributes: BTreeMap<String, toml::Value>,
    /// Directory of roles (`NAME.json` or `NAME.rb`), relative to the definition.
    #[serde(default)]
    pub roles: Option<PathBuf>,
    /// The Chef environment to converge in; needs `environments`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Directory of environments (`NAME.json` or `NAME.rb`), relative to the definition.
    #[serde(default)]
    pub environments: Option<PathBuf>,
    /// Run it in the booted image (over SSH) instead of offline.
    #[serde(default)]
    pub needs_running_system: bool,
}

/// `[cache]`: where layers are shared between runners.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Remote layer cache, `s3://bucket/prefix` (`--cache-url` and `IMGFORGE_CACHE_URL` win).
    #[serde(default)]
    pub url: Option<String>,
}

/// `[[checks]]`: what proves a built image works.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Check {
    /// A TCP port accepts connections (and sends the banner `expect`, when given).
    Tcp {
        /// Guest port.
        port: u16,
        /// Text the guest's first bytes must contain (a banner such as `SSH-2.0-`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
    },
    /// An HTTP GET answers 200 with a body containing `expect`.
    Http {
        /// Guest port.
        port: u16,
        /// Request path.
        path: String,
        /// Text the body must contain.
        expect: String,
    },
}

/// The time in a snapshot mirror URL: a path segment `YYYYMMDDTHHMMSSZ`, as
/// snapshot.debian.org names its dated archives.
pub fn snapshot_time(mirror: &str) -> Option<u32> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    mirror.split('/').find_map(|segment| {
        time::PrimitiveDateTime::parse(segment, &format)
            .ok()
            .and_then(|t| u32::try_from(t.assume_utc().unix_timestamp()).ok())
    })
}

/// The release date of a Debian release (its first point release), the default
/// `SOURCE_DATE_EPOCH` when nothing newer is pinned.
fn release_date(release: &str) -> u32 {
    match release {
        "bullseye" | "11" => 1_628_899_200, // 2021-08-14
        "trixie" | "13" => 1_754_697_600,   // 2025-08-09
        _ => 1_686_355_200,                 // bookworm, 2023-06-10
    }
}

/// `[output]`: export formats.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Formats to write.
    #[serde(default = "default_formats")]
    pub formats: Vec<DiskFormat>,
    /// Compress qcow2 output.
    #[serde(default)]
    pub compress: bool,
    /// The time every timestamp in the image is clamped to (seconds since 1970); unset, it
    /// is derived from the inputs ([`Definition::source_date_epoch`]).
    #[serde(default)]
    pub source_date_epoch: Option<u32>,
    /// Where the team serves its Vagrant boxes (`https://boxes.example.com/web`): the box
    /// catalogue's URL is this plus the box's file name. Unset, the catalogue points at the
    /// finished build's directory with a `file://` URL.
    #[serde(default)]
    pub box_url: Option<String>,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            formats: default_formats(),
            compress: false,
            source_date_epoch: None,
            box_url: None,
        }
    }
}

fn default_formats() -> Vec<DiskFormat> {
    vec![DiskFormat::Qcow2]
}

/// Disk image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// QEMU copy-on-write v2.
    Qcow2,
    /// Raw disk.
    Raw,
    /// VMware, streamOptimized.
    Vmdk,
    /// Hyper-V / Azure VHD (qemu-img `vpc`).
    Vhd,
    /// A Vagrant box for the libvirt provider: the image plus the `vagrant` user, as a
    /// `.box` (tar of `box.img`, `metadata.json` and a `Vagrantfile`).
    #[serde(rename = "vagrant-libvirt")]
    VagrantLibvirt,
}

impl DiskFormat {
    /// File extension of the format.
    pub fn extension(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vhd => "vhd",
            DiskFormat::VagrantLibvirt => "box",
        }
    }
}

/// `[cloud]`: the image's integration with the place an instance runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    /// `cloud-init` or `none`; unset, `cloud-init` for a Debian image with a `[publish]`
    /// target, else `none`.
    #[serde(default)]
    pub init: Option<CloudInit>,
    /// The user the instance metadata's SSH keys go to (default `admin`, as on Debian's own
    /// AMIs), made at an instance's first boot with passwordless sudo.
    #[serde(default)]
    pub user: Option<String>,
    /// Also take the EC2 metadata service of a cloud that does not identify itself as AWS
    /// (Eucalyptus): cloud-init then asks 169.254.169.254 wherever no NoCloud seed is found,
    /// which makes every boot of a machine with neither (bare metal) wait for the service.
    /// Unset, true when the definition has a `[publish.eucalyptus]` target.
    #[serde(default)]
    pub private_ec2: Option<bool>,
}

/// What configures an instance at its first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloudInit {
    /// Debian's `cloud-init`: NoCloud seed disks and the EC2 metadata service.
    #[serde(rename = "cloud-init")]
    CloudInit,
    /// Nothing: the image keeps what was baked.
    #[serde(rename = "none")]
    None,
}

/// The user `[cloud]` gives the metadata's keys to when `user` is unset.
pub const DEFAULT_CLOUD_USER: &str = "admin";

/// `[publish]`: registration targets used by `build --register`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// AWS target.
    #[serde(default)]
    pub aws: Option<AwsTarget>,
    /// Eucalyptus target.
    #[serde(default)]
    pub eucalyptus: Option<EucalyptusTarget>,
}

/// `[publish.aws]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsTarget {
    /// Region to register in.
    pub region: String,
    /// More regions to copy the AMI to.
    #[serde(default)]
    pub copy_to: Vec<String>,
    /// Accounts given launch permission.
    #[serde(default)]
    pub share_with: Vec<String>,
    /// Ask for IMDSv2 only (default true).
    #[serde(default = "default_true")]
    pub imds_v2: bool,
    /// Attach a TPM 2.0.
    #[serde(default)]
    pub tpm: bool,
    /// `direct` (EBS direct APIs, the default) or `import` (S3 + ImportSnapshot).
    #[serde(default)]
    pub upload: UploadPath,
    /// Bucket for the `import` path.
    #[serde(default)]
    pub bucket: Option<String>,
}

fn default_true() -> bool {
    true
}

/// `[publish.eucalyptus]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EucalyptusTarget {
    /// EC2-compatible endpoint URL.
    pub endpoint: String,
    /// S3 endpoint, when it differs from `endpoint`.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// Bucket receiving the bundle.
    pub bucket: String,
    /// The cloud's certificate (PEM), relative to the definition.
    pub cloud_cert: PathBuf,
    /// The user's certificate (PEM).
    pub cert: PathBuf,
    /// The user's private key (PEM).
    pub private_key: PathBuf,
    /// The user's account id recorded in the bundle manifest.
    pub user: String,
}

/// How an AMI's snapshot is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadPath {
    /// The EBS direct APIs: only non-zero blocks are sent.
    #[default]
    Direct,
    /// S3 multipart upload, then ImportSnapshot (needs the `vmimport` role and a bucket).
    Import,
}

impl std::str::FromStr for UploadPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(UploadPath::Direct),
            "import" => Ok(UploadPath::Import),
            _ => Err(format!("`{s}`: use direct or import")),
        }
    }
}

/// A lowercase sha256 digest in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sha256Hex(pub String);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256Hex(s.to_ascii_lowercase()))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not a sha256 digest: expected 64 hex digits, as printed by `sha256sum FILE`"
            )))
        }
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A crypt(3) password hash (`$6$…`, `$y$…`, `$5$…`, `$2b$…`), or `!` for a locked password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PasswordHash(pub String);

impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let is_hash = ["$6$", "$5$", "$y$", "$2b$", "$2y$", "$gy$"]
            .iter()
            .any(|p| s.starts_with(p) && s.len() > 20)
            || s == "!"
            || s == "*";
        if is_hash {
            Ok(PasswordHash(s))
        } else {
            Err(serde::de::Error::custom(
                "this looks like a plain-text password; only crypt(3) hashes are accepted. \
                 Make one with `mkpasswd -m sha-512` (Debian package whois) or \
                 `openssl passwd -6`, and paste the `$6$...` string here",
            ))
        }
    }
}

/// An absolute path inside the image, without `..`: a destination that cannot land outside
/// the place it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GuestPath(String);

impl<'de> Deserialize<'de> for GuestPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let path = Path::new(&s);
        if !path.is_absolute() {
            return Err(serde::de::Error::custom(format!(
                "`{s}` is a relative path; a destination in the image must be absolute, like \"/srv/{s}\""
            )));
        }
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(serde::de::Error::custom(format!(
                "`{s}` contains `..`; name the destination directly, without parent-directory steps"
            )));
        }
        Ok(GuestPath(s))
    }
}

impl std::ops::Deref for GuestPath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GuestPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration written the humantime way (`90s`, `5m`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration ({e}); write it like \"90s\", \"5m\" or \"1h\""
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in bytes written with a unit (`4G`, `4GiB`, `512M`); units are powers of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `4G`, `4GiB`, `512M`, `1T` or a plain number of bytes.
    pub fn parse(s: &str) -> Option<ByteSize> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
            "" => 0,
            "K" | "k" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return None,
        };
        n.checked_mul(1u64 << shift).map(ByteSize)
    }

    /// Size in MiB, rounded down.
    pub fn mib(self) -> u64 {
        self.0 >> 20
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ByteSize::parse(&s).filter(|b| b.0 > 0).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not a size; write it like \"4G\", \"4GiB\" or \"2048M\""
            ))
        })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}M", self.mib()))
    }
}

/// An image name: lowercase letters, digits and dashes, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageName(pub String);

impl<'de> Deserialize<'de> for ImageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if ok {
            Ok(ImageName(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not an image name: use lowercase letters, digits, dots and dashes, \
                 starting with a letter (at most 64), like \"debian-12-web\""
            )))
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Definition {
    /// Reads and validates the definition at `path`.
    pub fn load(path: &Path) -> Result<Definition, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Definition::parse(&text, path)
    }

    /// Parses and validates definition text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Definition, DefinitionError> {
        let de = toml::Deserializer::new(text);
        let mut def: Definition = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((1, 1));
            DefinitionError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message: inner.message().trim().to_string(),
            }
        })?;
        def.path = path.to_path_buf();
        def.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        def.check_consistency(text)?;
        Ok(def)
    }

    /// Checks rules that span several fields, locating the error at the named table or key.
    /// Checks what no single field can: every problem is reported, each at its own line.
    fn check_consistency(&self, text: &str) -> Result<(), DefinitionError> {
        let problems: Vec<DefinitionError> = self
            .consistency_problems()
            .into_iter()
            .map(|(field, message)| {
                let (line, column) = locate_field(text, &field);
                DefinitionError::Invalid {
                    path: self.path.clone(),
                    line,
                    column,
                    field,
                    message,
                }
            })
            .collect();
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.into_iter().next().expect("one problem")),
            _ => Err(DefinitionError::Problems(problems)),
        }
    }

    /// (field, what is wrong) for each rule the definition breaks.
    fn consistency_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut fail =
            |field: &str, message: &str| problems.push((field.to_string(), message.to_string()));
        match (self.builder.kind, &self.installer) {
            (BuilderKind::Installer, None) => fail(
                "builder.kind",
                "builder `installer` needs an [installer] table with `kernel` and `initrd`, or `iso`",
            ),
            (BuilderKind::Installer, Some(i)) => {
                let kernel_boot = i.kernel.is_some() && i.initrd.is_some();
                if !kernel_boot && i.iso.is_none() {
                    fail(
                        "installer",
                        "give both `kernel` and `initrd` (direct kernel boot) or `iso`",
                    );
                }
                if i.iso.is_some() && !kernel_boot && i.boot_command.is_empty() {
                    fail(
                        "installer.boot_command",
                        "ISO boot needs a boot_command, like [\"<esc><wait>\", \"auto url={{http_url}}/answer<enter>\"]",
                    );
                }
            }
            (BuilderKind::Rootfs, _) if self.os.family != OsFamily::Debian => fail(
                "builder.kind",
                "the rootfs builder uses mmdebstrap and builds Debian only; use kind = \"installer\" for rhel",
            ),
            _ => {}
        }
        if self.builder.kind == BuilderKind::Installer
            && self.machine.initramfs == Initramfs::Virtual
        {
            fail(
                "machine.initramfs",
                "a `virtual` initramfs is made by the rootfs builder only; the installer builder \
                 keeps the installer's own (use \"generic\")",
            );
        }
        for (field, artifact) in self.artifacts() {
            if artifact.path.is_some() == artifact.url.is_some() {
                fail(&field, "give exactly one of `path` or `url`");
            }
        }
        if let Some(data) = &self.data {
            if data.tarball.is_some() == data.git.is_some() {
                fail("data", "give exactly one of `tarball` or `git`");
            }
        }
        if self.output.formats.is_empty() {
            fail(
                "output.formats",
                "name at least one of qcow2, raw, vmdk, vhd, vagrant-libvirt",
            );
        }
        if self.builder.kind == BuilderKind::Rootfs
            && self.machine.firmware == Firmware::Uefi
            && self.machine.disk_size.mib() < 1024
        {
            fail("machine.disk_size", "a UEFI disk needs at least 1G");
        }
        if let Some(aws) = &self.publish.aws {
            if aws.upload == UploadPath::Import && aws.bucket.is_none() {
                fail(
                    "publish.aws.upload",
                    "`import` uploads through S3: name the bucket with `bucket = \"…\"`",
                );
            }
        }
        problems.extend(self.environment_problems());
        problems.extend(self.source_problems());
        problems.extend(rules::problems(self));
        for (index, p) in self.provisioners.iter().enumerate() {
            let field = |key: &str| format!("provisioners[{index}].{key}");
            for (key, message) in self.provisioner_problems(p) {
                problems.push((field(key), message));
            }
        }
        problems
    }

    /// (field, what is wrong) for the package sources: a repository that is neither signed nor
    /// trusted (or both), a key file that is not there, a source the builder cannot take.
    fn source_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut key_file = |field: String, path: &Path| {
            if !self.resolve(path).is_file() {
                problems.push((
                    field,
                    format!(
                        "the key file {} does not exist",
                        self.resolve(path).display()
                    ),
                ));
            }
        };
        if let Some(key) = &self.system.mirror_key {
            key_file("system.mirror_key".into(), key);
        }
        for (i, r) in self.system.repositories.iter().enumerate() {
            if let Some(key) = &r.signed_by {
                key_file(format!("system.repositories[{i}].signed_by"), key);
            }
        }
        let mut fail = |field: String, message: &str| problems.push((field, message.to_string()));
        for (i, r) in self.system.repositories.iter().enumerate() {
            let field = |key: &str| format!("system.repositories[{i}].{key}");
            match (&r.signed_by, r.trusted) {
                (None, false) => fail(
                    field("signed_by"),
                    "an unsigned repository is refused: give the key its InRelease is signed \
                     with (`signed_by = \"key.gpg\"`), or say `trusted = true` to install from \
                     it unchecked",
                ),
                (Some(_), true) => fail(
                    field("trusted"),
                    "`trusted = true` turns signature checks off: drop it, the repository has \
                     a `signed_by` key",
                ),
                _ => {}
            }
            if url::Url::parse(&r.uri).is_err() {
                fail(
                    field("uri"),
                    "not a URL (like http://apt.example.com/debian)",
                );
            }
            if r.suites.is_empty() {
                fail(field("suites"), "name at least one suite");
            }
        }
        let apt_settings = self.system.mirror_key.is_some() || !self.system.repositories.is_empty();
        if apt_settings && self.os.family != OsFamily::Debian {
            fail(
                "system.repositories".into(),
                "`mirror_key` and `repositories` are apt settings, for the Debian family only",
            );
        } else if apt_settings && self.builder.kind == BuilderKind::Installer {
            fail(
                "system.repositories".into(),
                "the installer builder trusts the installer's own keyring: `mirror_key` and \
                 `repositories` are for the rootfs builder",
            );
        }
        if let Some(url) = &self.system.security_mirror {
            if url::Url::parse(url).is_err() {
                fail(
                    "system.security_mirror".into(),
                    "not a URL (like http://deb.debian.org/debian-security)",
                );
            }
        }
        problems
    }

    /// (field, what is wrong) for the outputs and cloud integration of the places an image
    /// runs: a Vagrant box it cannot be, cloud-init where it is not made yet, a bad cloud user.
    fn environment_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut fail =
            |field: &str, message: &str| problems.push((field.to_string(), message.to_string()));
        if self.output.formats.contains(&DiskFormat::VagrantLibvirt)
            && self.machine.firmware == Firmware::Uefi
        {
            fail(
                "output.formats",
                "a vagrant-libvirt box boots with BIOS (the box format has no firmware setting, \
                 so vagrant-libvirt starts it with SeaBIOS): drop it or set machine.firmware = \"bios\"",
            );
        }
        if self.output.formats.contains(&DiskFormat::VagrantLibvirt)
            && self.os.family != OsFamily::Debian
        {
            fail(
                "output.formats",
                "a vagrant-libvirt box is made for Debian images only so far (the vagrant user \
                 is added to a Debian root filesystem)",
            );
        }
        if self.cloud.init == Some(CloudInit::CloudInit) && self.os.family != OsFamily::Debian {
            fail(
                "cloud.init",
                "cloud-init integration is made for Debian images only so far; set \
                 init = \"none\" and install and configure cloud-init with a provisioner",
            );
        }
        if let Some(user) = &self.cloud.user {
            let valid = !user.is_empty()
                && user.len() <= 32
                && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && user
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !valid || user == "root" || self.system.users.iter().any(|u| &u.name == user) {
                fail(
                    "cloud.user",
                    "name a new user (lowercase letters, digits, `_` and `-`; not root nor one \
                     of system.users): cloud-init makes it at an instance's first boot",
                );
            }
        }
        problems
    }

    /// (key, what is wrong) for one provisioner: files it names that are missing, and for
    /// Ansible and Chef what their run would need but cannot find.
    fn provisioner_problems(&self, p: &Provisioner) -> Vec<(&'static str, String)> {
        let missing = |path: &Path| format!("{} does not exist", self.resolve(path).display());
        let mut problems = Vec::new();
        match p {
            Provisioner::Shell { script, .. } if !self.resolve(script).is_file() => {
                problems.push(("script", missing(script)))
            }
            Provisioner::File { source, .. } if !self.resolve(source).is_file() => {
                problems.push(("source", missing(source)))
            }
            Provisioner::Ansible(a) => problems = self.ansible_problems(a),
            Provisioner::Chef(c) => problems = self.chef_problems(c),
            _ => {}
        }
        problems
    }

    fn ansible_problems(&self, a: &AnsibleProvisioner) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if a.runner == AnsibleRunner::Host && !a.needs_running_system {
            problems.push((
                "runner",
                "the host's Ansible reaches the image over SSH: set needs_running_system = true, \
                 or use runner = \"image\""
                    .to_string(),
            ));
        }
        if a.in_service {
            if a.runner == AnsibleRunner::Host {
                problems.push((
                    "in_service",
                    "the host's Ansible reads the playbook on the host: a playbook in the service \
                     runs with runner = \"image\""
                        .to_string(),
                ));
            }
            if self.service.is_none() {
                problems.push((
                    "in_service",
                    "the playbook is said to be in the service repository, but there is no [service]"
                        .to_string(),
                ));
            }
            return problems;
        }
        let playbook = self.resolve(&a.playbook);
        if !playbook.is_file() {
            problems.push(("playbook", format!("{} does not exist", playbook.display())));
            return problems;
        }
        let project = &self.ansible_project(a);
        let mut role_dirs = vec![project.join("roles")];
        for dir in &a.roles_path {
            let dir = project.join(dir);
            if !dir.is_dir() {
                problems.push((
                    "roles_path",
                    format!("{} is not a directory", dir.display()),
                ));
            }
            role_dirs.push(dir);
        }
        if let Some(req) = &a.requirements {
            if let Err(message) = requirements_vendored(&project.join(req), project, &role_dirs) {
                problems.push(("requirements", message));
            }
        }
        problems
    }

    fn chef_problems(&self, c: &ChefProvisioner) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let cookbooks = self.resolve(&c.cookbooks);
        if !cookbooks.is_dir() {
            problems.push((
                "cookbooks",
                format!("{} is not a directory", cookbooks.display()),
            ));
            return problems;
        }
        if c.run_list.is_empty() {
            problems.push(("run_list", "name at least one recipe".to_string()));
        }
        let roles = c.roles.as_ref().map(|r| self.resolve(r));
        for entry in &c.run_list {
            let found = match ChefRunItem::parse(entry) {
                Some(ChefRunItem::Recipe { cookbook, recipe }) => {
                    let file = cookbooks.join(&cookbook).join("recipes").join(format!("{recipe}.rb"));
                    file.is_file().then_some(()).ok_or(format!(
                        "`{entry}`: {} does not exist (cookbook `{cookbook}`, recipe `{recipe}`)",
                        file.display()
                    ))
                }
                Some(ChefRunItem::Role(name)) => match &roles {
                    Some(dir) if chef_named_file(dir, &name) => Ok(()),
                    Some(dir) => Err(format!("`{entry}`: no {name}.json or {name}.rb in {}", dir.display())),
                    None => Err(format!("`{entry}`: a role needs `roles`, the directory it is in")),
                },
                None => Err(format!(
                    "`{entry}` is not `recipe[cookbook::recipe]`, `cookbook::recipe`, `cookbook` or `role[name]`"
                )),
            };
            if let Err(message) = found {
                problems.push(("run_list", message));
            }
        }
        match (&c.environment, &c.environments) {
            (Some(env), Some(dir)) if !chef_named_file(&self.resolve(dir), env) => problems.push((
                "environment",
                format!(
                    "no {env}.json or {env}.rb in {}",
                    self.resolve(dir).display()
                ),
            )),
            (Some(_), None) => problems.push((
                "environment",
                "an environment needs `environments`, the directory it is in".to_string(),
            )),
            _ => {}
        }
        problems
    }

    /// The time the image's timestamps are clamped to (`SOURCE_DATE_EPOCH`):
    /// `output.source_date_epoch`, else the time of a dated snapshot mirror
    /// (`system.mirror` such as `http://snapshot.debian.org/archive/debian/20261120T000000Z/`),
    /// else the release date of the OS release, so the same inputs give the same bytes.
    pub fn source_date_epoch(&self) -> u32 {
        self.output
            .source_date_epoch
            .or_else(|| snapshot_time(&self.system.mirror))
            .unwrap_or_else(|| release_date(&self.os.release))
    }

    /// The packages the base installs: `system.packages`, then [`Self::bake_only_packages`].
    pub fn base_packages(&self) -> Vec<String> {
        let mut packages = self.system.packages.clone();
        if self.cloud_init() {
            packages.extend(CLOUD_INIT_PACKAGES.iter().map(|p| p.to_string()));
        }
        packages.extend(self.bake_only_packages().iter().map(|p| p.to_string()));
        packages
    }

    /// Whether instances configure themselves with cloud-init (`cloud.init`, or its default:
    /// on for a Debian image with a `[publish]` target).
    pub fn cloud_init(&self) -> bool {
        match self.cloud.init {
            Some(init) => init == CloudInit::CloudInit,
            None => {
                self.os.family == OsFamily::Debian
                    && (self.publish.aws.is_some() || self.publish.eucalyptus.is_some())
            }
        }
    }

    /// Whether cloud-init also takes the metadata service of a cloud that does not identify
    /// itself as AWS (`cloud.private_ec2`, default: a `[publish.eucalyptus]` target).
    pub fn cloud_private_ec2(&self) -> bool {
        self.cloud
            .private_ec2
            .unwrap_or(self.publish.eucalyptus.is_some())
    }

    /// The user the metadata's SSH keys go to.
    pub fn cloud_user(&self) -> &str {
        self.cloud.user.as_deref().unwrap_or(DEFAULT_CLOUD_USER)
    }

    /// What the base installs only for the bake, and the bake purges again: Debian's Ansible
    /// (and the apt bindings its `apt` module needs) when a playbook runs in the image, less
    /// what `system.packages` names.
    pub fn bake_only_packages(&self) -> Vec<&'static str> {
        let runs_in_image = self
            .provisioners
            .iter()
            .any(|p| matches!(p, Provisioner::Ansible(a) if a.runner == AnsibleRunner::Image));
        match runs_in_image {
            true => ANSIBLE_PACKAGES
                .into_iter()
                .filter(|p| !self.system.packages.iter().any(|named| named == p))
                .collect(),
            false => Vec::new(),
        }
    }

    /// The directory staged for a playbook outside the service: the playbook's own directory,
    /// with its roles, templates and variables.
    pub fn ansible_project(&self, a: &AnsibleProvisioner) -> PathBuf {
        let playbook = self.resolve(&a.playbook);
        playbook.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    /// Every pinned file of the definition with the dotted name of its field.
    pub fn artifacts(&self) -> Vec<(String, &Artifact)> {
        let mut all = Vec::new();
        if let Some(i) = &self.installer {
            for (name, a) in [
                ("kernel", &i.kernel),
                ("initrd", &i.initrd),
                ("iso", &i.iso),
            ] {
                if let Some(a) = a {
                    all.push((format!("installer.{name}"), a));
                }
            }
        }
        if let Some(t) = self.data.as_ref().and_then(|d| d.tarball.as_ref()) {
            all.push(("data.tarball".to_string(), t));
        }
        all
    }

    /// Resolves a path written in the definition against the definition's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// 1-based line and column of byte offset `pos` in `text`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Best-effort position of a dotted field (`builder.kind`, `installer`) in the TOML text.
fn locate_field(text: &str, field: &str) -> (usize, usize) {
    // `system.repositories[1].signed_by`: table `system.repositories` (its second), key
    // `signed_by`; `provisioners[2]`: the third `[[provisioners]]` itself.
    let (table, key) = match field.rsplit_once('.') {
        Some((table, key)) if !key.contains('[') => (table, Some(key)),
        _ => (field, None),
    };
    let found = locate_in_table(text, table, key);
    match (found, table.rsplit_once('.')) {
        // A key of an inline table (`data.tarball.path`): the line of that table's key.
        (None, Some((parent, inline))) if !inline.contains('[') => {
            locate_in_table(text, parent, Some(inline))
        }
        _ => found,
    }
    .unwrap_or((1, 1))
}

/// The line and column of `key` in the table `table` (`name` or `name[n]` for the n-th of an
/// array of tables), or of the table's header without a key.
fn locate_in_table(text: &str, table: &str, key: Option<&str>) -> Option<(usize, usize)> {
    let (table, nth) = match table.split_once('[') {
        Some((name, n)) => (name, n.trim_end_matches(']').parse().unwrap_or(0)),
        None => (table, 0),
    };
    let mut seen = 0;
    let mut in_table = false;
    for (idx, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table && seen == nth;
            if name == table {
                seen += 1;
            }
            if in_table && key.is_none() {
                return Some((idx + 1, line.find('[').unwrap_or(0) + 1));
            }
            continue;
        }
        if let Some(key) = key {
            if in_table && t.split('=').next().map(str::trim) == Some(key) {
                return Some((idx + 1, line.find(key).unwrap_or(0) + 1));
            }
        }
    }
    None
}

/// What `[cloud] init = "cloud-init"` adds to the base: cloud-init, and `growpart` to grow
/// the root partition to the volume's size.
pub const CLOUD_INIT_PACKAGES: [&str; 2] = ["cloud-init", "cloud-guest-utils"];

/// Debian's Ansible and the apt bindings its `apt` module needs, for playbooks that run in the
/// image.
pub const ANSIBLE_PACKAGES: [&str; 2] = ["ansible-core", "python3-apt"];

/// One entry of a Chef run list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChefRunItem {
    /// `recipe[cookbook::recipe]`, `cookbook::recipe` or `cookbook` (its `default` recipe).
    Recipe {
        /// The cookbook's directory name.
        cookbook: String,
        /// The recipe file's name without `.rb`.
        recipe: String,
    },
    /// `role[name]`.
    Role(String),
}

impl ChefRunItem {
    /// Parses a run-list entry; `None` for anything else.
    pub fn parse(entry: &str) -> Option<ChefRunItem> {
        let plain =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || "_-".contains(c));
        if let Some(name) = entry
            .strip_prefix("role[")
            .and_then(|r| r.strip_suffix(']'))
        {
            return plain(name).then(|| ChefRunItem::Role(name.to_string()));
        }
        let name = entry
            .strip_prefix("recipe[")
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(entry);
        let (cookbook, recipe) = name.split_once("::").unwrap_or((name, "default"));
        (plain(cookbook) && plain(recipe)).then(|| ChefRunItem::Recipe {
            cookbook: cookbook.to_string(),
            recipe: recipe.to_string(),
        })
    }

    /// The entry as Chef writes it in a node's run list.
    pub fn canonical(&self) -> String {
        match self {
            ChefRunItem::Recipe { cookbook, recipe } => format!("recipe[{cookbook}::{recipe}]"),
            ChefRunItem::Role(name) => format!("role[{name}]"),
        }
    }
}

/// Whether `dir` holds `NAME.json` or `NAME.rb`, as Chef roles and environments are stored.
fn chef_named_file(dir: &Path, name: &str) -> bool {
    ["json", "rb"]
        .iter()
        .any(|ext| dir.join(format!("{name}.{ext}")).is_file())
}

/// Checks that every role and collection an Ansible requirements file names is vendored: a
/// role in one of `role_dirs`, a collection under `project/collections/ansible_collections/`.
fn requirements_vendored(file: &Path, project: &Path, role_dirs: &[PathBuf]) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: not YAML: {e}", file.display()))?;
    let (roles, collections) = match &doc {
        serde_yaml_ng::Value::Sequence(roles) => (roles.clone(), Vec::new()),
        serde_yaml_ng::Value::Mapping(m) => {
            let list = |key: &str| match m.get(key) {
                Some(serde_yaml_ng::Value::Sequence(s)) => s.clone(),
                _ => Vec::new(),
            };
            (list("roles"), list("collections"))
        }
        _ => (Vec::new(), Vec::new()),
    };
    let name_of = |entry: &serde_yaml_ng::Value| -> Option<String> {
        let text = entry
            .as_str()
            .or_else(|| entry.get("name").and_then(|n| n.as_str()))
            .or_else(|| entry.get("src").and_then(|n| n.as_str()))?;
        // A URL or path names the role by its last component, without `.git` or a version.
        let last = text.trim_end_matches('/').rsplit(['/', ':']).next()?;
        Some(last.split(',').next()?.trim_end_matches(".git").to_string())
    };
    for entry in &roles {
        let name = name_of(entry).ok_or(format!("{}: a role without a name", file.display()))?;
        if !role_dirs.iter().any(|d| d.join(&name).is_dir()) {
            return Err(format!(
                "role `{name}` from {} is not vendored: put it in {} (nothing is downloaded at bake time)",
                file.display(),
                role_dirs[0].join(&name).display()
            ));
        }
    }
    for entry in &collections {
        let name =
            name_of(entry).ok_or(format!("{}: a collection without a name", file.display()))?;
        let dir = name.split_once('.').map(|(ns, coll)| {
            project
                .join("collections/ansible_collections")
                .join(ns)
                .join(coll)
        });
        if !dir.as_ref().is_some_and(|d| d.is_dir()) {
            return Err(format!(
                "collection `{name}` from {} is not vendored: put it in {}/collections/ansible_collections/NAMESPACE/NAME",
                file.display(),
                project.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chef_run_list_entries_parse_to_cookbook_and_recipe_or_role() {
        let recipe = |c: &str, r: &str| {
            Some(ChefRunItem::Recipe {
                cookbook: c.into(),
                recipe: r.into(),
            })
        };
        assert_eq!(
            ChefRunItem::parse("recipe[web::site]"),
            recipe("web", "site")
        );
        assert_eq!(ChefRunItem::parse("web::site"), recipe("web", "site"));
        assert_eq!(ChefRunItem::parse("web"), recipe("web", "default"));
        assert_eq!(
            ChefRunItem::parse("role[base]"),
            Some(ChefRunItem::Role("base".into()))
        );
        for bad in ["", "recipe[]", "role[a b]", "web::", "../x", "recipe[web"] {
            assert_eq!(ChefRunItem::parse(bad), None, "{bad}");
        }
        assert_eq!(
            ChefRunItem::parse("web").unwrap().canonical(),
            "recipe[web::default]"
        );
    }

    const MINIMAL: &str = r#"
[image]
name = "t"
version = "1"
[os]
family = "debian"
release = "bookworm"
[builder]
kind = "rootfs"
[system]
hostname = "h"
mirror = "http://deb.debian.org/debian"
"#;

    fn parse(text: &str) -> Result<Definition, DefinitionError> {
        Definition::parse(text, Path::new("images/t.toml"))
    }

    #[test]
    fn minimal_definition_gets_defaults() {
        let d = parse(MINIMAL).unwrap();
        assert_eq!(d.machine.cpus, 2);
        assert_eq!(d.machine.disk_size.mib(), 4096);
        assert_eq!(d.output.formats, vec![DiskFormat::Qcow2]);
    }

    #[test]
    fn the_source_date_comes_from_the_definition_else_a_snapshot_mirror_else_the_release() {
        assert_eq!(parse(MINIMAL).unwrap().source_date_epoch(), 1_686_355_200);
        let snapshot = MINIMAL.replace(
            "http://deb.debian.org/debian",
            "http://snapshot.debian.org/archive/debian/20261120T093000Z/",
        );
        // 2026-11-20 09:30:00 UTC.
        assert_eq!(parse(&snapshot).unwrap().source_date_epoch(), 1_795_167_000);
        let pinned = format!("{snapshot}[output]\nsource_date_epoch = 1700000000\n");
        assert_eq!(parse(&pinned).unwrap().source_date_epoch(), 1_700_000_000);
        let negative = format!("{MINIMAL}[output]\nsource_date_epoch = -1\n");
        let e = parse(&negative).unwrap_err().to_string();
        assert!(e.contains("output.source_date_epoch"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_field() {
        let text = MINIMAL.replace("hostname = \"h\"", "hostname = \"h\"\ncolour = \"red\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("images/t.toml:12:1: field `system"), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = format!("{MINIMAL}[machine]\ncpus = \"two\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("images/t.toml:14:8: field `machine.cpus`"),
            "{e}"
        );
    }

    #[test]
    fn plain_password_is_refused_with_a_hint() {
        let text =
            format!("{MINIMAL}[[system.users]]\nname = \"a\"\npassword_hash = \"hunter2\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("field `system.users[0].password_hash`"), "{e}");
        assert!(e.contains("mkpasswd"), "{e}");
        assert!(e.contains(":15:17:"), "{e}");
    }

    #[test]
    fn malformed_sha256_is_refused() {
        let text = format!(
            "{MINIMAL}[data]\ndest = \"/srv\"\ntarball = {{ path = \"d.tar\", sha256 = \"abc\" }}\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("field `data.tarball.sha256`"), "{e}");
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn installer_builder_needs_media() {
        let text = MINIMAL.replace("kind = \"rootfs\"", "kind = \"installer\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("images/t.toml:9:1: field `builder.kind`"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("4G").unwrap().0, 4 << 30);
        assert_eq!(ByteSize::parse("4GiB").unwrap().0, 4 << 30);
        assert_eq!(ByteSize::parse("512M").unwrap().mib(), 512);
        assert!(ByteSize::parse("4 potatoes").is_none());
    }
}
