//! Eucalyptus EMIs from bundles: bundle the raw image ([`super::bundle`]), upload the parts and
//! the manifest to the bucket (canned ACL `aws-exec-read`), register
//! `ImageLocation=bucket/prefix.manifest.xml` without the parameters Eucalyptus rejects, then
//! tag with CreateTags. A failure removes what was uploaded unless asked to keep it.

use super::ami::{self, Flavor, ImageSpec, Root};
use super::bundle::{self, Bundle, BundleKeys, BundleSpec};
use super::{EucaKeys, Progress, UploadStats};
use crate::cloud::sdk_error;
use crate::events::{payload, Reporter};
use anyhow::{anyhow, Context, Result};
use aws_sdk_s3::operation::head_bucket::HeadBucketError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectCannedAcl;
use futures::{StreamExt, TryStreamExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Parallel part uploads.
const PART_UPLOADS: usize = 4;

/// One bundle to publish.
pub struct Publish<'a> {
    /// S3 client for the bucket.
    pub s3: &'a aws_sdk_s3::Client,
    /// EC2 client for RegisterImage and CreateTags.
    pub ec2: &'a aws_sdk_ec2::Client,
    /// The raw image.
    pub image: &'a Path,
    /// The sha256 it was checked to have (none for an image converted here).
    pub image_sha256: Option<&'a str>,
    /// Certificates and key.
    pub keys: &'a EucaKeys,
    /// Bucket receiving the bundle.
    pub bucket: &'a str,
    /// File name prefix of the manifest and parts.
    pub prefix: &'a str,
    /// Architecture for the manifest.
    pub arch: &'a str,
    /// Name, description and tags of the image.
    pub spec: &'a ImageSpec,
    /// Keep uploaded objects when registration fails.
    pub keep_partial: bool,
    /// How long to wait for the image to become available.
    pub wait: Duration,
}

/// A published EMI.
#[derive(Debug, Clone)]
pub struct Published {
    /// The image id.
    pub image_id: String,
    /// `bucket/prefix.manifest.xml`.
    pub location: String,
    /// Upload measurements.
    pub stats: UploadStats,
}

/// Bundles, uploads and registers.
pub async fn publish(p: &Publish<'_>, reporter: &Reporter) -> Result<Published> {
    check_bucket(p.s3, p.bucket).await?;
    let dir = tempfile::Builder::new()
        .prefix("imgforge-bundle-")
        .tempdir()
        .context("cannot make a temporary directory for the bundle")?;
    let made = make_bundle(p, dir.path(), reporter).await?;
    let (keys_in_bucket, stats) = upload_bundle(p, &made, reporter).await?;
    let location = format!("{}/{}.manifest.xml", p.bucket, p.prefix);
    reporter.emit(
        &format!(
            "uploaded {} parts ({} bytes) and the manifest to s3://{location} in {:.1} s",
            made.parts.len(),
            made.bundled_size,
            stats.seconds
        ),
        &payload::Uploaded {
            location: Some(location.clone()),
            parts: Some(made.parts.len()),
            stats: serde_json::to_value(&stats)?,
            ..Default::default()
        },
    );

    reporter.phase("register: RegisterImage (Eucalyptus)");
    let root = Root::Bundle {
        location: location.clone(),
    };
    let progress = Progress::new(reporter, "register", 0);
    match ami::register(p.ec2, Flavor::Eucalyptus, p.spec, &root, p.wait, &progress).await {
        Ok(image_id) => Ok(Published {
            image_id,
            location,
            stats,
        }),
        Err(e) => {
            cleanup(p, &keys_in_bucket, reporter).await;
            Err(e)
        }
    }
}

/// Makes the bundle of the image in `dir` (on a blocking thread, with a progress bar).
async fn make_bundle(p: &Publish<'_>, dir: &Path, reporter: &Reporter) -> Result<Bundle> {
    let keys = BundleKeys::load(&p.keys.cloud_cert, &p.keys.cert, &p.keys.private_key)?;
    reporter.phase("register: bundle (tar, gzip, AES-128-CBC, 10 MiB parts)");
    let len = std::fs::metadata(p.image)
        .with_context(|| format!("{}: cannot read the raw image", p.image.display()))?
        .len();
    let progress = Progress::new(reporter, "bundle", len);
    let bar = progress.bar_handle();
    let (image, out_dir) = (p.image.to_path_buf(), dir.to_path_buf());
    let spec = BundleSpec {
        name: p.spec.name.clone(),
        user: p.keys.user.clone(),
        arch: p.arch.to_string(),
        prefix: p.prefix.to_string(),
        image_sha256: p.image_sha256.map(str::to_string),
    };
    let made = tokio::task::spawn_blocking(move || {
        bundle::create(&image, &out_dir, &spec, &keys, &move |n| {
            bar.set_position(n)
        })
    })
    .await
    .context("the bundler panicked")??;
    progress.finish();
    Ok(made)
}

/// Uploads the parts, then the manifest; on failure removes what was uploaded. Returns the
/// keys written in the bucket and the upload's measurements.
async fn upload_bundle(
    p: &Publish<'_>,
    made: &Bundle,
    reporter: &Reporter,
) -> Result<(Vec<String>, UploadStats)> {
    reporter.phase("register: upload the bundle");
    let mut files: Vec<PathBuf> = made.parts.clone();
    files.push(made.manifest.clone());
    let keys_in_bucket: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .expect("bundle files have names")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let progress = Progress::new(reporter, "upload", made.bundled_size);
    let started = Instant::now();
    // Parts first, in parallel; the manifest last, so the cloud never sees a manifest whose
    // parts are still missing.
    let (manifest_key, part_keys) = keys_in_bucket.split_last().expect("a manifest");
    let parts = futures::stream::iter(made.parts.iter().zip(part_keys))
        .map(|(file, key)| put(p, file, key, &progress))
        .buffer_unordered(PART_UPLOADS)
        .try_collect::<Vec<()>>()
        .await;
    let uploaded = match parts {
        Ok(_) => put(p, &made.manifest, manifest_key, &progress).await,
        Err(e) => Err(e),
    };
    progress.finish();
    if let Err(e) = uploaded {
        cleanup(p, &keys_in_bucket, reporter).await;
        return Err(e);
    }
    let stats = UploadStats {
        route: "bundle".into(),
        bytes_sent: made.bundled_size,
        seconds: started.elapsed().as_secs_f64(),
        hash_seconds: 0.0,
    };
    Ok((keys_in_bucket, stats))
}

/// Uploads `file` as `key` with the canned ACL `aws-exec-read`.
async fn put(p: &Publish<'_>, file: &Path, key: &str, progress: &Progress<'_>) -> Result<()> {
    let size = std::fs::metadata(file)?.len();
    let body = ByteStream::from_path(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    p.s3.put_object()
        .bucket(p.bucket)
        .key(key)
        .acl(ObjectCannedAcl::AwsExecRead)
        .body(body)
        .send()
        .await
        .map_err(|e| sdk_error(e, &format!("S3 PutObject s3://{}/{key}", p.bucket)))?;
    progress.inc(size);
    Ok(())
}

/// Fails with a clear message when `bucket` does not exist or cannot be reached.
pub async fn check_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<()> {
    match s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.as_service_error(), Some(HeadBucketError::NotFound(_))) => {
            Err(anyhow!(
                "bucket `{bucket}` does not exist at this S3 endpoint: create it first \
             (`aws s3 mb s3://{bucket}`) or pass another --bucket"
            ))
        }
        Err(e) => Err(sdk_error(e, &format!("S3 HeadBucket `{bucket}`"))),
    }
}

async fn cleanup(p: &Publish<'_>, keys: &[String], reporter: &Reporter) {
    if p.keep_partial {
        reporter.println(&format!(
            "kept the uploaded bundle in s3://{}/{}.* (--keep-partial)",
            p.bucket, p.prefix
        ));
        return;
    }
    for key in keys {
        if let Err(e) = p.s3.delete_object().bucket(p.bucket).key(key).send().await {
            reporter.println(&format!(
                "warning: could not delete s3://{}/{key}: {}",
                p.bucket,
                aws_smithy_types::error::display::DisplayErrorContext(e)
            ));
        }
    }
    reporter.println(&format!(
        "removed the uploaded bundle s3://{}/{}.*",
        p.bucket, p.prefix
    ));
}
