//! `[output]`, `[cloud]` and `[publish]`: what a build writes and where it is registered.

use super::default_true;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// is derived from the inputs ([`super::Definition::source_date_epoch`]).
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
