//! Registration of built images: AWS AMIs through the EBS direct APIs ([`ebs_upload`]) or S3 +
//! ImportSnapshot ([`import`]), and Eucalyptus EMIs through bundles ([`bundle`], [`emi`]).
//! [`ami`] builds the RegisterImage call for either cloud.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use imgforge::{register_manifest, AmiSettings, Destination, RegisterOptions};
//! let reporter = imgforge::events::Reporter::new(false);
//! let opts = RegisterOptions::new(Destination::Ami(AmiSettings::default()));
//! let image = register_manifest("output/x/manifest.json".as_ref(), &opts, &reporter).await?;
//! println!("{} (reused: {})", image.image_id, image.reused);
//! # Ok(()) }
//! ```

pub mod ami;
pub mod bundle;
pub mod ebs_upload;
pub mod emi;
pub mod import;
pub mod launch_template;
mod progress;
mod source;
mod unbundle;

pub(crate) use progress::delete_snapshot;
pub use progress::Progress;
use source::{RawImage, SourceImage};
pub use unbundle::unbundle;

#[cfg(test)]
mod bundle_tests;
#[cfg(test)]
mod request_tests;

use crate::cloud::registration::{Statement, ARTIFACT_TAG};
use crate::cloud::{self, CloudOptions};
use crate::definition::Firmware;
use crate::events::{payload, Reporter};
use crate::manifest::{DocumentKind, Manifest};
use crate::signature::Signer;
use ami::{BootMode, Flavor, ImageSpec, Root};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where an image is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// An AWS AMI.
    Ami,
    /// A Eucalyptus EMI.
    Emi,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ami" => Ok(Target::Ami),
            "emi" => Ok(Target::Emi),
            _ => Err(format!("`{s}`: use ami or emi")),
        }
    }
}

pub use crate::definition::UploadPath;

/// The Eucalyptus bundle's keys and owner.
#[derive(Debug, Clone)]
pub struct EucaKeys {
    /// The cloud's certificate.
    pub cloud_cert: PathBuf,
    /// The user's certificate.
    pub cert: PathBuf,
    /// The user's private key.
    pub private_key: PathBuf,
    /// The account id written in the manifest.
    pub user: String,
}

/// How a snapshot is made from the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotUpload {
    /// Block by block with the EBS direct APIs (zero blocks skipped).
    Direct,
    /// Uploaded to the S3 bucket `bucket`, then ImportSnapshot.
    Import {
        /// Where the image is uploaded first.
        bucket: String,
    },
}

/// An AMI's own settings.
#[derive(Debug, Clone)]
pub struct AmiSettings {
    /// How the root snapshot is made.
    pub snapshot: SnapshotUpload,
    /// Regions to copy the AMI to.
    pub copy_to: Vec<String>,
    /// Require IMDSv2.
    pub imds_v2: bool,
    /// Attach a TPM 2.0.
    pub tpm: bool,
    /// A launch template (id or name) whose new default version launches the image.
    pub launch_template: Option<String>,
}

impl Default for AmiSettings {
    /// Direct upload, IMDSv2, no TPM, no copies, no launch template.
    fn default() -> AmiSettings {
        AmiSettings {
            snapshot: SnapshotUpload::Direct,
            copy_to: Vec::new(),
            imds_v2: true,
            tpm: false,
            launch_template: None,
        }
    }
}

/// Where an image is registered, with the settings only that cloud and route have.
#[derive(Debug, Clone)]
pub enum Destination {
    /// An AWS AMI.
    Ami(AmiSettings),
    /// A Eucalyptus EMI registered from a signed, encrypted bundle uploaded to `bucket`.
    EmiBundle {
        /// The bundle's keys and owner.
        keys: EucaKeys,
        /// Where the bundle's parts and manifest go.
        bucket: String,
    },
    /// An EBS-backed Eucalyptus EMI registered from a snapshot.
    EmiSnapshot(SnapshotUpload),
}

impl Destination {
    /// AMI or EMI.
    pub fn target(&self) -> Target {
        match self {
            Destination::Ami(_) => Target::Ami,
            Destination::EmiBundle { .. } | Destination::EmiSnapshot(_) => Target::Emi,
        }
    }

    /// The AMI's settings, for an AMI.
    fn ami(&self) -> Option<&AmiSettings> {
        match self {
            Destination::Ami(ami) => Some(ami),
            _ => None,
        }
    }
}

/// What to register and how (the command line and `build --register` both make one).
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    /// AMI or EMI, with that target's settings.
    pub destination: Destination,
    /// S3 endpoint override.
    pub s3_endpoint_url: Option<String>,
    /// Accounts given launch permission.
    pub share_with: Vec<String>,
    /// Boot mode override.
    pub boot_mode: Option<BootMode>,
    /// Parallel uploads.
    pub concurrency: usize,
    /// Keep partial uploads on failure.
    pub keep_partial: bool,
    /// How long to wait for the image to become available.
    pub wait: Duration,
    /// Refuse a build not signed by a key of this allowed-signers file; tag the image with
    /// the signer's fingerprint; reuse an image of the build only if its signed registration
    /// checks out against this file.
    pub require_signature: Option<PathBuf>,
    /// Sign the registration (image id, build id, artifact sha256) with this key, in the
    /// image's tags: what `rotate --require-signature` checks.
    pub sign: Option<PathBuf>,
    /// Cloud connection.
    pub cloud: CloudOptions,
}

impl RegisterOptions {
    /// Defaults for `destination`: 64 blocks in flight, an hour's wait.
    pub fn new(destination: Destination) -> RegisterOptions {
        RegisterOptions {
            destination,
            s3_endpoint_url: None,
            share_with: Vec::new(),
            boot_mode: None,
            concurrency: 64,
            keep_partial: false,
            wait: Duration::from_secs(3600),
            require_signature: None,
            sign: None,
            cloud: CloudOptions::default(),
        }
    }

    /// The targets of a manifest's `[publish]` table (for `build --register`); relative key and
    /// certificate paths are resolved against the definition's directory.
    pub fn from_publish(manifest: &Manifest) -> Result<Vec<RegisterOptions>> {
        let base = manifest.definition.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        if let Some(aws) = &manifest.publish.aws {
            let snapshot = match (aws.upload, &aws.bucket) {
                (UploadPath::Direct, _) => SnapshotUpload::Direct,
                (UploadPath::Import, Some(bucket)) => SnapshotUpload::Import {
                    bucket: bucket.clone(),
                },
                (UploadPath::Import, None) => bail!(
                    "{}: [publish.aws] upload = \"import\" needs a `bucket`: the image is uploaded there first",
                    manifest.definition.display()
                ),
            };
            let mut o = RegisterOptions::new(Destination::Ami(AmiSettings {
                snapshot,
                copy_to: aws.copy_to.clone(),
                imds_v2: aws.imds_v2,
                tpm: aws.tpm,
                launch_template: None,
            }));
            o.cloud.region = Some(aws.region.clone());
            o.share_with = aws.share_with.clone();
            out.push(o);
        }
        if let Some(e) = &manifest.publish.eucalyptus {
            let mut o = RegisterOptions::new(Destination::EmiBundle {
                keys: EucaKeys {
                    cloud_cert: base.join(&e.cloud_cert),
                    cert: base.join(&e.cert),
                    private_key: base.join(&e.private_key),
                    user: e.user.clone(),
                },
                bucket: e.bucket.clone(),
            });
            o.cloud.endpoint_url = Some(e.endpoint.clone());
            o.s3_endpoint_url = e.s3_endpoint.clone();
            out.push(o);
        }
        Ok(out)
    }
}

/// (field, what is wrong) for each key or certificate of `[publish.eucalyptus]` that is not on
/// this machine: `build --register` bundles with them.
pub fn file_problems(def: &crate::definition::Definition) -> Vec<(String, String)> {
    let Some(e) = &def.publish.eucalyptus else {
        return Vec::new();
    };
    [
        ("cloud_cert", &e.cloud_cert),
        ("cert", &e.cert),
        ("private_key", &e.private_key),
    ]
    .into_iter()
    .filter_map(|(key, path)| def.missing_file(format!("publish.eucalyptus.{key}"), path))
    .collect()
}

/// How the bytes got to the cloud.
#[derive(Debug, Clone, Serialize)]
pub struct UploadStats {
    /// `direct`, `import` or `bundle`.
    pub route: String,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Seconds spent sending them.
    pub seconds: f64,
    /// CPU seconds spent hashing (all threads).
    pub hash_seconds: f64,
}

/// A registered image.
#[derive(Debug, Clone, Serialize)]
pub struct RegisteredImage {
    /// AMI or EMI.
    pub target: Target,
    /// The image id.
    pub image_id: String,
    /// Region registered in, when known.
    pub region: Option<String>,
    /// The root snapshot, for snapshot-backed images made by this run.
    pub snapshot_id: Option<String>,
    /// `bucket/prefix.manifest.xml`, for bundled EMIs made by this run.
    pub image_location: Option<String>,
    /// True when an image of this build already existed and was reused.
    pub reused: bool,
    /// Copies in other regions: (region, image id).
    pub copies: Vec<(String, String)>,
    /// Upload measurements, when this run uploaded.
    pub upload: Option<UploadStats>,
    /// The launch template pointed at the image (`--launch-template`).
    pub launch_template: Option<launch_template::TemplateUpdate>,
}

/// Registers the build at `manifest_path` as `opts` says; reuses an image tagged with the same
/// build id if one exists. This is what `build --register` calls (with
/// [`RegisterOptions::from_publish`]).
pub async fn register_manifest(
    manifest_path: &Path,
    opts: &RegisterOptions,
    reporter: &Reporter,
) -> Result<RegisteredImage> {
    let (run, source) = Registration::open(manifest_path, opts, reporter).await?;
    let artifact_sha256 = source.sha256.clone();
    let mut out = RegisteredImage {
        target: opts.destination.target(),
        image_id: String::new(),
        region: run.config.region().map(|r| r.to_string()),
        snapshot_id: None,
        image_location: None,
        reused: false,
        copies: Vec::new(),
        upload: None,
        launch_template: None,
    };
    reporter.phase("register: look for an image of this build");
    if let Some(image_id) = run.existing_image(&artifact_sha256).await? {
        reporter.emit(
            &format!(
                "{image_id} already holds build {}; reusing it, nothing uploaded",
                run.build_id
            ),
            &payload::ImageReused {
                image_id: image_id.clone(),
                build_id: run.build_id.clone(),
            },
        );
        out.image_id = image_id;
        out.reused = true;
    } else {
        run.upload_and_register(source, &mut out).await?;
        reporter.emit(
            &format!("registered {} as {}", run.spec.name, out.image_id),
            &payload::ImageRegistered {
                image_id: out.image_id.clone(),
                build_id: run.build_id.clone(),
                name: run.spec.name.clone(),
            },
        );
    }
    if let Some(key) = &opts.sign {
        run.sign_registration(&run.ec2, &out.image_id, &artifact_sha256, key)
            .await?;
    }
    out.copies = share_and_copy(
        &run.config,
        &run.ec2,
        &out.image_id,
        &run.spec,
        &run.build_id,
        opts,
        reporter,
    )
    .await?;
    if let Some(key) = &opts.sign {
        run.sign_copies(&out.copies, &artifact_sha256, key).await?;
    }
    if let Some(template) = opts
        .destination
        .ami()
        .and_then(|ami| ami.launch_template.as_ref())
    {
        let update = launch_template::point_at_image(
            &run.ec2,
            template,
            &out.image_id,
            &run.build_id,
            reporter,
        );
        out.launch_template = Some(update.await?);
    }
    Ok(out)
}

/// One registration under way: the build, the clients and what RegisterImage will be told.
struct Registration<'a> {
    manifest: Manifest,
    build_id: String,
    config: aws_config::SdkConfig,
    ec2: aws_sdk_ec2::Client,
    spec: ImageSpec,
    opts: &'a RegisterOptions,
    reporter: &'a Reporter,
}

/// A snapshot made from the image: its id, size in GiB, and how the bytes got there.
type Uploaded = (String, i32, UploadStats);

impl<'a> Registration<'a> {
    /// The registration of the build at `manifest_path`, and its artifact. Before any cloud
    /// call: the build is signed by an allowed key (when `opts` asks), and the bytes to upload
    /// are the bytes that were built and verified.
    async fn open(
        manifest_path: &Path,
        opts: &'a RegisterOptions,
        reporter: &'a Reporter,
    ) -> Result<(Registration<'a>, SourceImage)> {
        let signer = match &opts.require_signature {
            Some(allowed) => Some(crate::signature::check_build(
                manifest_path,
                allowed,
                reporter,
            )?),
            None => None,
        };
        let manifest = Manifest::load(manifest_path)?;
        let source = SourceImage::checked(manifest_path, &manifest, reporter)?;
        let mut spec = image_spec(&manifest, opts, signer.as_ref());
        spec.tags
            .push((ARTIFACT_TAG.to_string(), source.sha256.clone()));
        if opts.destination.ami().is_some() {
            spec.validate()?;
        }
        let config = cloud::load(&opts.cloud).await?;
        let run = Registration {
            ec2: aws_sdk_ec2::Client::new(&config),
            spec,
            build_id: manifest.provenance.ids.build.clone(),
            manifest,
            config,
            opts,
            reporter,
        };
        Ok((run, source))
    }

    /// The image already registered for this build, if one is tagged with its id and holds
    /// its artifact; an image tagged so that is not reusable stops the registration.
    async fn existing_image(&self, artifact_sha256: &str) -> Result<Option<String>> {
        let mut refused = None;
        for id in ami::find_existing(&self.ec2, &self.build_id).await? {
            match self.check_reusable(&id, artifact_sha256).await {
                Ok(()) => return Ok(Some(id)),
                Err(e) => refused = refused.or(Some((id, e))),
            }
        }
        if let Some((id, e)) = refused {
            bail!(
                "{id} is tagged with build {} but is not reused: {e:#}. Nothing was registered, \
                 shared, copied or made a default; find out who made {id}, deregister it (or \
                 remove its {} tag), and register again",
                self.build_id,
                cloud::tags::BUILD_ID
            );
        }
        Ok(None)
    }

    /// Uploads the image by the destination's route and registers it, into `out`.
    async fn upload_and_register(
        &self,
        source: SourceImage,
        out: &mut RegisteredImage,
    ) -> Result<()> {
        let raw = RawImage::prepare(source, self.reporter).await?;
        match &self.opts.destination {
            Destination::EmiBundle { keys, bucket } => {
                let published = self.publish_bundle(&raw, keys, bucket).await?;
                out.image_id = published.image_id;
                out.image_location = Some(published.location);
                out.upload = Some(published.stats);
            }
            Destination::Ami(AmiSettings { snapshot, .. }) | Destination::EmiSnapshot(snapshot) => {
                let (snapshot_id, volume_size_gib, stats) = match snapshot {
                    SnapshotUpload::Direct => self.upload_direct(&raw).await?,
                    SnapshotUpload::Import { bucket } => {
                        self.upload_import(&raw.path, bucket).await?
                    }
                };
                out.image_id = self
                    .register_snapshot(&snapshot_id, volume_size_gib)
                    .await?;
                out.snapshot_id = Some(snapshot_id);
                out.upload = Some(stats);
            }
        }
        Ok(())
    }

    /// Signs a registration of each copy: a copy is another image, signed in its region.
    async fn sign_copies(
        &self,
        copies: &[(String, String)],
        artifact_sha256: &str,
        key: &Path,
    ) -> Result<()> {
        for (region, copy_id) in copies {
            let regional = self
                .config
                .to_builder()
                .region(aws_config::Region::new(region.clone()))
                .build();
            let ec2 = aws_sdk_ec2::Client::new(&regional);
            self.sign_registration(&ec2, copy_id, artifact_sha256, key)
                .await?;
        }
        Ok(())
    }

    /// Checks that the image of this build found in the account holds the artifact in hand:
    /// its `imgforge:artifact-sha256` tag matches, and with `--require-signature` its signed
    /// registration checks out against the allowed signers and names this build and artifact
    /// (a tag alone proves nothing then).
    async fn check_reusable(&self, image_id: &str, artifact_sha256: &str) -> Result<()> {
        let image_tags = cloud::image_tags(&self.ec2, image_id).await?;
        let tagged = image_tags
            .iter()
            .find(|t| t.key() == Some(ARTIFACT_TAG))
            .and_then(|t| t.value());
        if tagged != Some(artifact_sha256) {
            bail!(
                "its {ARTIFACT_TAG} tag is {}, not the sha256 of the artifact in hand ({artifact_sha256})",
                tagged.unwrap_or("missing")
            );
        }
        if let Some(allowed) = &self.opts.require_signature {
            let (statement, _) = Statement::verify(image_id, &image_tags, allowed)?;
            if statement.build_id != self.build_id || statement.artifact_sha256 != artifact_sha256 {
                bail!("its signed registration names another build or artifact");
            }
        }
        Ok(())
    }

    /// Signs the registration of `image_id` with `key` and tags the image with it through
    /// `ec2` (the client of the image's region).
    async fn sign_registration(
        &self,
        ec2: &aws_sdk_ec2::Client,
        image_id: &str,
        artifact_sha256: &str,
        key: &Path,
    ) -> Result<()> {
        let statement = Statement {
            image_id: image_id.to_string(),
            build_id: self.build_id.clone(),
            artifact_sha256: artifact_sha256.to_string(),
        };
        let (pairs, fingerprint) = statement.sign(key)?;
        ec2.create_tags()
            .resources(image_id)
            .set_tags(Some(ami::ec2_tags(&pairs)))
            .send()
            .await
            .map_err(|e| cloud::sdk_error(e, &format!("CreateTags {image_id}")))?;
        self.reporter.println(&format!(
            "    registration of {image_id} signed by {fingerprint}"
        ));
        Ok(())
    }

    /// An EMI: the image as a signed, encrypted bundle in S3, registered by its manifest.
    async fn publish_bundle(
        &self,
        raw: &RawImage,
        keys: &EucaKeys,
        bucket: &str,
    ) -> Result<emi::Published> {
        let opts = self.opts;
        let s3 = s3_client(&self.config, opts);
        emi::publish(
            &emi::Publish {
                s3: &s3,
                ec2: &self.ec2,
                image: &raw.path,
                image_sha256: raw.sha256.as_deref(),
                keys,
                bucket,
                prefix: &bundle_prefix(&self.manifest),
                arch: arch_name(&self.manifest),
                spec: &self.spec,
                keep_partial: opts.keep_partial,
                wait: opts.wait,
            },
            self.reporter,
        )
        .await
    }

    /// A snapshot written block by block with the EBS direct APIs (zero blocks skipped).
    async fn upload_direct(&self, raw: &RawImage) -> Result<Uploaded> {
        let ebs = aws_sdk_ebs::Client::new(&self.config);
        let uploader = ebs_upload::SnapshotUploader::new(ebs, self.ec2.clone());
        self.reporter
            .phase("register: upload blocks with the EBS direct APIs");
        let len = std::fs::metadata(&raw.path)?.len();
        let progress = Progress::new(self.reporter, "upload", len);
        let params = ebs_upload::UploadParams {
            concurrency: self.opts.concurrency,
            keep_partial: self.opts.keep_partial,
            ..Default::default()
        };
        let req = ebs_upload::SnapshotRequest {
            image: raw.path.clone(),
            volume_size: self.manifest.disk_size,
            description: format!("{} (imgforge build {})", self.spec.name, self.build_id),
            tags: self.spec.tags.clone(),
            expected_sha256: raw.sha256.clone(),
        };
        let done = uploader.upload(&req, &params, &progress).await?;
        progress.finish();
        let stats = UploadStats {
            route: "direct".into(),
            bytes_sent: done.blocks_sent * ebs_upload::BLOCK_SIZE as u64,
            seconds: done.upload_seconds,
            hash_seconds: done.hash_seconds,
        };
        self.reporter.emit(
            &format!(
                "snapshot {}: {} of {} blocks sent in {:.1} s (hashing {:.2} CPU s)",
                done.snapshot_id,
                done.blocks_sent,
                done.blocks_total,
                done.upload_seconds,
                done.hash_seconds
            ),
            &payload::Uploaded {
                snapshot_id: Some(done.snapshot_id.clone()),
                blocks_sent: Some(done.blocks_sent),
                blocks_total: Some(done.blocks_total),
                stats: serde_json::to_value(&stats)?,
                ..Default::default()
            },
        );
        Ok((done.snapshot_id, done.volume_size_gib as i32, stats))
    }

    /// A snapshot made by ImportSnapshot from the image uploaded to S3.
    async fn upload_import(&self, raw: &Path, bucket: &str) -> Result<Uploaded> {
        let opts = self.opts;
        let s3 = s3_client(&self.config, opts);
        import::import(
            &import::Import {
                s3: &s3,
                ec2: &self.ec2,
                image: raw,
                bucket,
                key: &format!("imgforge/{}/{}.raw", self.build_id, self.spec.name),
                description: &self.spec.name,
                tags: &self.spec.tags,
                concurrency: opts.concurrency.clamp(1, 16),
                keep_partial: opts.keep_partial,
                disk_size: self.manifest.disk_size,
            },
            self.reporter,
        )
        .await
    }

    /// RegisterImage from the snapshot; a failure deletes the snapshot (unless kept on purpose).
    async fn register_snapshot(&self, snapshot_id: &str, volume_size_gib: i32) -> Result<String> {
        self.reporter.phase("register: RegisterImage");
        let root = Root::Snapshot {
            snapshot_id: snapshot_id.to_string(),
            volume_size_gib,
        };
        let flavor = match self.opts.destination.target() {
            Target::Ami => Flavor::Aws,
            Target::Emi => Flavor::Eucalyptus,
        };
        let progress = Progress::new(self.reporter, "register", 0);
        let registered = ami::register(
            &self.ec2,
            flavor,
            &self.spec,
            &root,
            self.opts.wait,
            &progress,
        )
        .await;
        if registered.is_err() {
            if self.opts.keep_partial {
                self.reporter
                    .println(&format!("kept snapshot {snapshot_id} (--keep-partial)"));
            } else {
                delete_snapshot(&self.ec2, snapshot_id, &progress).await;
            }
        }
        registered
    }
}

/// Gives `--share-with` accounts launch permission on the image and, for an AMI, makes sure each
/// `--copy-to` region holds a copy (one already there for this build is reused); returns
/// (region, image id) per copy.
async fn share_and_copy(
    config: &aws_config::SdkConfig,
    ec2: &aws_sdk_ec2::Client,
    image_id: &str,
    spec: &ImageSpec,
    build_id: &str,
    opts: &RegisterOptions,
    reporter: &Reporter,
) -> Result<Vec<(String, String)>> {
    ami::share(ec2, image_id, &opts.share_with).await?;
    let mut copies = Vec::new();
    let Some(ami) = opts.destination.ami() else {
        return Ok(copies);
    };
    let source = config.region().map(|r| r.to_string()).unwrap_or_default();
    for region in &ami.copy_to {
        let (id, copied) = ami::copy_to(config, &source, region, image_id, spec, build_id).await?;
        let message = if copied {
            format!("copying {image_id} to {region} as {id}")
        } else {
            format!("{region} already holds build {build_id} as {id}; not copied again")
        };
        let (region_name, image_id) = (region.clone(), id.clone());
        match copied {
            true => reporter.emit(
                &message,
                &payload::ImageCopied {
                    region: region_name,
                    image_id,
                },
            ),
            false => reporter.emit(
                &message,
                &payload::ImageCopyReused {
                    region: region_name,
                    image_id,
                },
            ),
        }
        copies.push((region.clone(), id));
    }
    Ok(copies)
}

fn s3_client(config: &aws_config::SdkConfig, opts: &RegisterOptions) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(config).force_path_style(true);
    if let Some(e) = &opts.s3_endpoint_url {
        b = b.endpoint_url(e);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

fn arch_name(manifest: &Manifest) -> &'static str {
    match manifest.arch {
        crate::definition::Arch::X86_64 => "x86_64",
    }
}

/// What RegisterImage is told about this build.
pub fn image_spec(
    manifest: &Manifest,
    opts: &RegisterOptions,
    signer: Option<&Signer>,
) -> ImageSpec {
    let short = &manifest.provenance.ids.build[..manifest.provenance.ids.build.len().min(12)];
    ImageSpec {
        name: format!(
            "{}-{}-{short}",
            manifest.provenance.name, manifest.provenance.version
        ),
        description: manifest.description.clone().unwrap_or_else(|| {
            format!(
                "{} {} built by imgforge",
                manifest.provenance.name, manifest.provenance.version
            )
        }),
        arch: arch_name(manifest).into(),
        boot_mode: opts.boot_mode.unwrap_or(match manifest.firmware {
            Firmware::Bios => BootMode::LegacyBios,
            Firmware::Uefi => BootMode::Uefi,
        }),
        // Eucalyptus takes neither (ami::register_request sends them to AWS only).
        imds_v2: opts.destination.ami().is_some_and(|ami| ami.imds_v2),
        tpm: opts.destination.ami().is_some_and(|ami| ami.tpm),
        tags: image_tags(manifest, signer),
    }
}

/// The provenance tags, the SBOM's digest and, for a build whose signature was required and
/// checked, the signer's fingerprint (what `rotate --require-signature` looks for).
fn image_tags(manifest: &Manifest, signer: Option<&Signer>) -> Vec<(String, String)> {
    let mut tags = cloud::tags::provenance(&manifest.provenance);
    if let Some(sbom) = manifest.document(DocumentKind::Sbom) {
        tags.push((cloud::tags::SBOM_DIGEST.to_string(), sbom.sha256.clone()));
    }
    if let Some(signer) = signer {
        tags.push((cloud::tags::SIGNER.to_string(), signer.fingerprint.clone()));
    }
    tags
}

fn bundle_prefix(manifest: &Manifest) -> String {
    let short = &manifest.provenance.ids.build[..manifest.provenance.ids.build.len().min(12)];
    format!(
        "{}-{}-{short}",
        manifest.provenance.name, manifest.provenance.version
    )
}
