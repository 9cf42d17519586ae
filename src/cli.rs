//! The command line's argument structs (clap), each turned into the library's options: the
//! library itself knows nothing of clap.

use anyhow::{anyhow, bail, Result};
use aws_sdk_ec2::types::Filter;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use imgforge::definition::{Accelerator, UploadPath};
use imgforge::{
    parse_age, parse_filter, AddressKind, AmiSettings, BootMode, CloudOptions, Destination,
    EucaKeys, PruneOptions, RegisterOptions, RotateOptions, SnapshotUpload, Target,
};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A parser taking one of `names` (listed in `--help`) into `T`.
fn choice<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Debug,
{
    PossibleValuesParser::new(names).map(|name| name.parse().expect("every listed name parses"))
}

/// Options of `imgforge build`.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// The image definitions; several are built at once with `--jobs`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// How many builds run at once (capped by the memory their build VMs need).
    #[arg(long, short = 'j', default_value_t = 1)]
    pub jobs: usize,
    /// Rebuild even if this build id is already in the output directory.
    #[arg(long)]
    pub force: bool,
    /// Root of the output tree.
    #[arg(long, default_value = "output")]
    pub output_dir: PathBuf,
    /// Do not boot the exported image to run its checks.
    #[arg(long)]
    pub no_verify: bool,
    /// Build (or find) the base layer only, and report where it is.
    #[arg(long)]
    pub base_only: bool,
    /// Remote layer cache shared by runners, `s3://BUCKET/PREFIX` (over the definition's
    /// `[cache] url`); endpoints and credentials from the standard AWS chain.
    #[arg(long, env = "IMGFORGE_CACHE_URL")]
    pub cache_url: Option<String>,
    /// After the build, register the image with the definition's `[publish]` targets.
    #[arg(long, conflicts_with = "base_only")]
    pub register: bool,
    /// Sign the build (manifest and SHA256SUMS) with this private key as the last step: an
    /// OpenSSH key (`ssh-keygen -Y sign` format) or a minisign key, unencrypted.
    #[arg(long, value_name = "KEY", conflicts_with = "base_only")]
    pub sign: Option<PathBuf>,
}

impl BuildArgs {
    /// The library's options for building `file` with these arguments.
    pub fn options(&self, file: &std::path::Path) -> imgforge::BuildOptions {
        imgforge::BuildOptions {
            file: file.to_path_buf(),
            force: self.force,
            output_dir: self.output_dir.clone(),
            no_verify: self.no_verify,
            base_only: self.base_only,
            cache_url: self.cache_url.clone(),
            sign: self.sign.clone(),
        }
    }
}

/// Options of `imgforge verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The build's manifest.json.
    pub manifest: PathBuf,
    /// Accelerator (default: the one the manifest records).
    #[arg(long, value_parser = choice::<Accelerator>(&["auto", "kvm", "tcg"]))]
    pub accelerator: Option<Accelerator>,
    /// Virtual CPUs (default: the build's).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default: the build's).
    #[arg(long)]
    pub memory_mib: Option<u32>,
    /// How long the checks may take to pass, like 90s or 5m (default: the build's boot timeout).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub boot_timeout: Option<Duration>,
    /// Require the build to be signed by a key in this file (an OpenSSH allowed_signers file,
    /// or a minisign public key) before anything else is checked.
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// Check the signature and every digest, but do not boot the image.
    #[arg(long)]
    pub no_boot: bool,
}

impl VerifyArgs {
    /// The settings given here over those the manifest records.
    pub fn overrides(&self) -> imgforge::VerifyOverrides {
        imgforge::VerifyOverrides {
            accelerator: self.accelerator,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            boot_timeout: self.boot_timeout,
            allowed_signers: self.allowed_signers.clone(),
            no_boot: self.no_boot,
        }
    }
}

/// Options every cloud command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CloudArgs {
    /// AWS region (default: the standard chain: AWS_REGION, profile).
    #[arg(long)]
    pub region: Option<String>,
    /// Endpoint URL for every service (moto, Eucalyptus, a VPC endpoint).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Named profile from ~/.aws/config.
    #[arg(long)]
    pub profile: Option<String>,
}

impl CloudArgs {
    /// The library's options for these arguments.
    pub fn options(&self) -> CloudOptions {
        CloudOptions {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            profile: self.profile.clone(),
        }
    }
}

/// `imgforge register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The build's manifest.json.
    pub manifest: PathBuf,
    /// `ami` or `emi`.
    #[arg(long, value_parser = choice::<Target>(&["ami", "emi"]))]
    pub to: Target,
    /// AMI snapshot route: `direct` (EBS direct APIs) or `import` (S3 + ImportSnapshot).
    #[arg(long, default_value = "direct", value_parser = choice::<UploadPath>(&["direct", "import"]))]
    pub upload: UploadPath,
    /// Bucket for the EMI bundle or the `import` route.
    #[arg(long)]
    pub bucket: Option<String>,
    /// S3 endpoint when it differs from --endpoint-url (Eucalyptus' object storage).
    #[arg(long)]
    pub s3_endpoint_url: Option<String>,
    /// EMI: the cloud's certificate (PEM).
    #[arg(long)]
    pub cloud_cert: Option<PathBuf>,
    /// EMI: the user's certificate (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// EMI: the user's private key (PEM).
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// EMI: the account id recorded in the bundle manifest.
    #[arg(long, env = "EC2_USER_ID")]
    pub user: Option<String>,
    /// EMI: register an EBS-backed EMI from a snapshot made with the EBS direct APIs.
    #[arg(long)]
    pub ebs: bool,
    /// AMI: copy the image to these regions too.
    #[arg(long, value_delimiter = ',')]
    pub copy_to: Vec<String>,
    /// AMI: give these account ids launch permission.
    #[arg(long, value_delimiter = ',')]
    pub share_with: Vec<String>,
    /// Boot mode (default: from the build's firmware: bios → legacy-bios, uefi → uefi).
    #[arg(long, value_parser = choice::<BootMode>(&["legacy-bios", "uefi", "uefi-preferred"]))]
    pub boot_mode: Option<BootMode>,
    /// Do not require IMDSv2 on instances of the image.
    #[arg(long)]
    pub no_imds_v2: bool,
    /// Attach a TPM 2.0 (UEFI only).
    #[arg(long)]
    pub tpm: bool,
    /// Blocks (or parts) in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// On failure keep the incomplete snapshot / uploaded objects (for debugging).
    #[arg(long)]
    pub keep_partial: bool,
    /// AMI: make a new default version of this launch template (id or name) that launches the
    /// image, copied from the current default.
    #[arg(long, value_name = "NAME_OR_ID")]
    pub launch_template: Option<String>,
    /// Refuse a build not signed by a key in this file (OpenSSH allowed_signers, or a minisign
    /// public key), before any cloud call; the image is tagged with the signer's fingerprint,
    /// and an existing image of the build is reused only if its signed registration checks out.
    #[arg(long, value_name = "FILE")]
    pub require_signature: Option<PathBuf>,
    /// Sign the registration (image id, build id, artifact sha256) with this private key
    /// (OpenSSH or minisign, unencrypted) into the image's tags: what `rotate
    /// --require-signature` checks.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Cloud connection.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

impl RegisterArgs {
    /// The library's options for these arguments: an AMI, an EMI from a bundle (which needs
    /// its keys, owner and bucket) or an EMI from a snapshot (`--ebs`). AMI-only settings
    /// given for an EMI are refused rather than ignored.
    pub fn options(&self) -> Result<RegisterOptions> {
        let args = self;
        let snapshot = || match (args.upload, &args.bucket) {
            (UploadPath::Direct, _) => Ok(SnapshotUpload::Direct),
            (UploadPath::Import, Some(bucket)) => Ok(SnapshotUpload::Import {
                bucket: bucket.clone(),
            }),
            (UploadPath::Import, None) => Err(anyhow!(
                "--upload import needs --bucket: the image is uploaded there first"
            )),
        };
        let destination = match args.to {
            Target::Ami => Destination::Ami(AmiSettings {
                snapshot: snapshot()?,
                copy_to: args.copy_to.clone(),
                imds_v2: !args.no_imds_v2,
                tpm: args.tpm,
                launch_template: args.launch_template.clone(),
            }),
            Target::Emi => {
                let ami_only = [
                    (!args.copy_to.is_empty(), "--copy-to"),
                    (args.launch_template.is_some(), "--launch-template"),
                    (args.tpm, "--tpm"),
                    (args.no_imds_v2, "--no-imds-v2"),
                ];
                if let Some((_, flag)) = ami_only.iter().find(|(given, _)| *given) {
                    bail!("{flag} is for AMIs: Eucalyptus has no such setting (drop it, or use --to ami)");
                }
                if args.ebs {
                    Destination::EmiSnapshot(snapshot()?)
                } else {
                    self.emi_bundle()?
                }
            }
        };
        let mut opts = RegisterOptions::new(destination);
        opts.s3_endpoint_url = args.s3_endpoint_url.clone();
        opts.share_with = args.share_with.clone();
        opts.boot_mode = args.boot_mode;
        opts.concurrency = args.concurrency;
        opts.keep_partial = args.keep_partial;
        opts.require_signature = args.require_signature.clone();
        opts.sign = args.sign.clone();
        opts.cloud = args.cloud.options();
        Ok(opts)
    }

    /// An EMI from a bundle: its keys, owner and bucket, each named when missing.
    fn emi_bundle(&self) -> Result<Destination> {
        let need = |v: &Option<PathBuf>, flag: &str| {
            v.clone().ok_or_else(|| {
                anyhow!("--to emi needs {flag} (PEM) to make the bundle (or --ebs for a snapshot)")
            })
        };
        Ok(Destination::EmiBundle {
            keys: EucaKeys {
                cloud_cert: need(&self.cloud_cert, "--cloud-cert")?,
                cert: need(&self.cert, "--cert")?,
                private_key: need(&self.private_key, "--private-key")?,
                user: self.user.clone().ok_or_else(|| {
                    anyhow!(
                        "--to emi needs --user ACCOUNT_ID (or EC2_USER_ID) for the bundle manifest"
                    )
                })?,
            },
            bucket: self
                .bucket
                .clone()
                .ok_or_else(|| anyhow!("--to emi needs --bucket: the bundle is uploaded there"))?,
        })
    }
}

/// `imgforge unbundle`.
#[derive(Debug, clap::Args)]
pub struct UnbundleArgs {
    /// The bundle's manifest XML (its parts next to it).
    #[arg(long)]
    pub manifest: PathBuf,
    /// The user's private key (PEM).
    #[arg(long)]
    pub private_key: PathBuf,
    /// Where to write the image.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// `imgforge rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Replace instances older than this (`30d`, `12h`, `2w`; units s, m, h, d, w).
    #[arg(long, value_parser = parse_age, required_unless_present = "superseded")]
    pub max_age: Option<Duration>,
    /// Replace instances whose image is not the newest image of their name, whatever their
    /// age (how a security rebuild reaches the fleet); with --max-age, both apply.
    #[arg(long)]
    pub superseded: bool,
    /// Image name whose instances are managed (instances tagged `imgforge:image=NAME`).
    #[arg(long)]
    pub image_name: Option<String>,
    /// Target image id (default: the newest available image of the instance's image name).
    #[arg(long, value_name = "AMI_ID")]
    pub image: Option<String>,
    /// EC2 filter narrowing the selection: `tag:team=web`, `instance-type=t3.micro,t3.small` or
    /// `Name=availability-zone,Values=us-east-1a`. Repeatable.
    #[arg(long = "filter", value_name = "FILTER", value_parser = parse_filter)]
    pub filters: Vec<Filter>,
    /// How many replacements run at once (launched before any old instance is terminated).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_surge: u32,
    /// Floor on healthy managed instances, as a percentage of the fleet: rotation refuses to
    /// start below it and, launching before terminating, never goes below it.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub min_healthy_percent: u32,
    /// After status checks pass, also require a TCP connection to this port on the replacement.
    #[arg(long)]
    pub health_port: Option<u16>,
    /// After status checks pass, also require HTTP 2xx for GET on this path (port
    /// `--health-port`, default 80).
    #[arg(long, value_name = "PATH")]
    pub health_url: Option<String>,
    /// Which address of the replacement the health check connects to.
    #[arg(long, default_value = "private", value_parser = choice::<AddressKind>(&["private", "public"]))]
    pub health_address: AddressKind,
    /// How long a replacement may take from launch to healthy before rotation stops.
    #[arg(long, default_value = "10m", value_parser = parse_age)]
    pub health_timeout: Duration,
    /// Hand Auto Scaling group members to StartInstanceRefresh (AWS) instead of rotating them
    /// step by step through the group.
    #[arg(long)]
    pub asg_instance_refresh: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Launch only images whose build was signed by a key in this file (OpenSSH
    /// allowed_signers, or a minisign public key): the image's `imgforge:signer` tag, set by
    /// `register --require-signature`, must be one of its keys' fingerprints.
    #[arg(long, value_name = "FILE")]
    pub require_signature: Option<PathBuf>,
    /// Interval between polls while waiting (tests use milliseconds).
    #[arg(long, hide = true, env = "IMGFORGE_POLL_INTERVAL", default_value = "15s",
          value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Instances per DescribeInstances page (moto pages by reservation: benchmarks lower it).
    #[arg(long, hide = true, env = "IMGFORGE_PAGE_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(i32).range(5..=1000))]
    pub page_size: i32,
    /// Cloud connection.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

impl RotateArgs {
    /// The library's options for these arguments.
    pub fn options(self) -> RotateOptions {
        RotateOptions {
            max_age: self.max_age,
            superseded: self.superseded,
            image_name: self.image_name,
            image: self.image,
            filters: self.filters,
            max_surge: self.max_surge,
            min_healthy_percent: self.min_healthy_percent,
            health_port: self.health_port,
            health_url: self.health_url,
            health_address: self.health_address,
            health_timeout: self.health_timeout,
            asg_instance_refresh: self.asg_instance_refresh,
            dry_run: self.dry_run,
            require_signature: self.require_signature,
            poll_interval: self.poll_interval,
            page_size: self.page_size,
            cloud: self.cloud.options(),
        }
    }
}

/// `imgforge prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Image name to prune (images tagged `imgforge:image=NAME`).
    #[arg(long)]
    pub image_name: String,
    /// How many of the newest images to keep.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Only remove images older than this (`30d`, `12h`, `2w`).
    #[arg(long, value_parser = parse_age)]
    pub min_age: Option<Duration>,
    /// List what would go and why each kept image is kept; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Disable the images (DisableImage; snapshots kept, can be enabled again) instead of
    /// deregistering them and deleting their snapshots.
    #[arg(long)]
    pub disable: bool,
    /// Instances per DescribeInstances page (moto pages by reservation: benchmarks lower it).
    #[arg(long, hide = true, env = "IMGFORGE_PAGE_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(i32).range(5..=1000))]
    pub page_size: i32,
    /// Cloud connection.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

impl PruneArgs {
    /// The library's options for these arguments.
    pub fn options(self) -> PruneOptions {
        PruneOptions {
            image_name: self.image_name,
            keep: self.keep,
            min_age: self.min_age,
            dry_run: self.dry_run,
            disable: self.disable,
            page_size: self.page_size,
            cloud: self.cloud.options(),
        }
    }
}
