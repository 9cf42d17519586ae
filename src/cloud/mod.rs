//! AWS SDK configuration shared by `register`, `rotate` and `prune`: the standard credential and
//! region chain, `AWS_ENDPOINT_URL*` variables, an optional `--endpoint-url`, standard retries
//! and timeouts so that nothing hangs.

mod calls;
pub mod registration;

pub use calls::{ApiCalls, Clients};

use crate::events::{payload, Reporter};
use anyhow::{anyhow, bail, Context, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::ProvideCredentials;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, Instance, InstanceStatus, Tag};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;

use std::time::Duration;

/// Where and as whom every cloud command connects.
#[derive(Debug, Clone, Default)]
pub struct CloudOptions {
    /// AWS region (default: the standard chain: AWS_REGION, profile).
    pub region: Option<String>,
    /// Endpoint URL for every service (moto, Eucalyptus, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// Named profile from ~/.aws/config.
    pub profile: Option<String>,
}

/// Loads the SDK configuration for `args`, and fails early, naming what to set, when it has
/// no region or no credentials.
pub async fn load(args: &CloudOptions) -> Result<SdkConfig> {
    let config = load_unchecked(args).await;
    if config.region().is_none() {
        bail!("no AWS region: pass --region or set AWS_REGION (or a region in the profile)");
    }
    let provider = config
        .credentials_provider()
        .ok_or_else(|| anyhow!("no AWS credentials provider is configured"))?;
    provider.provide_credentials().await.map_err(|e| {
        tracing::info!("the credential chain said: {}", DisplayErrorContext(e));
        anyhow!(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
             AWS_PROFILE / --profile, or run with an instance role (-v shows what was tried)"
        )
    })?;
    Ok(config)
}

async fn load_unchecked(args: &CloudOptions) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(8))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .operation_timeout(Duration::from_secs(300))
                .build(),
        );
    if let Some(r) = &args.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &args.endpoint_url {
        loader = loader.endpoint_url(e.clone());
    }
    if let Some(p) = &args.profile {
        loader = loader.profile_name(p);
    }
    loader.load().await
}

/// The value of tag `key`.
pub fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Every instance matching `filters` (all pages).
pub async fn describe_instances(clients: &Clients, filters: Vec<Filter>) -> Result<Vec<Instance>> {
    let reservations = clients
        .ec2
        .describe_instances()
        .set_filters(Some(filters))
        .max_results(clients.page_size)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .context("DescribeInstances failed")?;
    Ok(reservations
        .into_iter()
        .flat_map(|r| r.instances.unwrap_or_default())
        .collect())
}

/// The status checks of `ids`, 100 ids per request (all pages); `include_stopped` also
/// reports instances that are not running.
pub async fn describe_instance_status(
    clients: &Clients,
    ids: &[String],
    include_stopped: bool,
) -> Result<Vec<InstanceStatus>> {
    const MAX_IDS: usize = 100; // the API's maximum
    in_chunks(ids, MAX_IDS, |chunk| async move {
        clients
            .ec2
            .describe_instance_status()
            .set_instance_ids(Some(chunk))
            .include_all_instances(include_stopped)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context("DescribeInstanceStatus failed")
    })
    .await
}

/// Turns an SDK error into one that says what failed and what to do about it.
/// The tags of image `image_id`, as DescribeImages gives them.
pub async fn image_tags(ec2: &aws_sdk_ec2::Client, image_id: &str) -> Result<Vec<Tag>> {
    let out = ec2
        .describe_images()
        .image_ids(image_id)
        .send()
        .await
        .map_err(|e| sdk_error(e, &format!("DescribeImages {image_id}")))?;
    Ok(out
        .images()
        .first()
        .map(|i| i.tags().to_vec())
        .unwrap_or_default())
}

pub fn sdk_error<E, R>(err: SdkError<E, R>, what: &str) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default().to_string();
    let hint = match code.as_str() {
        "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
            ": the credentials in use are not allowed to do this; check the IAM policy of the user or role"
        }
        "NoSuchBucket" => ": the bucket does not exist; create it or pass another --bucket",
        "AuthFailure" | "InvalidClientTokenId" | "SignatureDoesNotMatch" | "InvalidAccessKeyId" => {
            ": the cloud rejected the credentials; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile"
        }
        c if c.contains("Throttl") || c == "RequestLimitExceeded" || c == "SlowDown" => {
            ": still throttled after retries with backoff; lower --concurrency or try again later"
        }
        _ => match &err {
            SdkError::DispatchFailure(_) => {
                ": cannot reach the endpoint; check --endpoint-url / AWS_ENDPOINT_URL* and the network"
            }
            SdkError::TimeoutError(_) => ": the request timed out",
            _ => "",
        },
    };
    anyhow!("{what} failed: {}{hint}", DisplayErrorContext(&err))
}

/// Everything `call` returns for `ids`, asked for at most `batch` ids at a time (the API's limit
/// on ids or filter values per request); `call` gets one chunk and collects all its pages.
pub async fn in_chunks<T, F, Fut>(ids: &[String], batch: usize, call: F) -> Result<Vec<T>>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut all = Vec::new();
    for chunk in ids.chunks(batch.max(1)) {
        all.extend(call(chunk.to_vec()).await?);
    }
    Ok(all)
}

/// Reports a command's final `summary` event, `outcome` with the count of cloud API calls it
/// made.
pub fn summary(reporter: &Reporter, calls: &ApiCalls, message: &str, outcome: payload::Summary) {
    let summary = payload::Summary {
        api_calls: calls.total(),
        api_calls_by_operation: calls.by_operation(),
        ..outcome
    };
    reporter.emit(
        &format!("{message} ({} API calls)", calls.total()),
        &summary,
    );
}

/// Parses an age such as `30d`, `12h` or `2w` (units s, m, h, d, w).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let refuse = || {
        format!(
            "`{text}` is not an age: write a whole number and one of the units s, m, h, d, w, \
             e.g. `30d`, `12h` or `2w`"
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(refuse)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| refuse())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(refuse()),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(refuse)
}

/// Formats an age for people: `31d`, `5h`, `12m`, `40s` (largest whole unit).
pub fn format_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Tag keys imgforge writes on images, snapshots and instances.
pub mod tags {
    /// Image name; on instances, the image family they are managed under.
    pub const IMAGE: &str = "imgforge:image";
    /// Image version.
    pub const VERSION: &str = "imgforge:version";
    /// Build id (the output directory's name).
    pub const BUILD_ID: &str = "imgforge:build-id";
    /// Base layer id.
    pub const BASE_ID: &str = "imgforge:base-id";
    /// Bake layer id.
    pub const BAKE_ID: &str = "imgforge:bake-id";
    /// Service commit.
    pub const SERVICE_COMMIT: &str = "imgforge:service-commit";
    /// Data snapshot digest.
    pub const DATA_DIGEST: &str = "imgforge:data-sha256";
    /// sha256 of the build's SPDX SBOM.
    pub const SBOM_DIGEST: &str = "imgforge:sbom-sha256";
    /// Fingerprint of the key that signed the build (set when `register --require-signature`
    /// checked it).
    pub const SIGNER: &str = "imgforge:signer";
    /// On a replacement instance: the instance it replaces.
    pub const REPLACES: &str = "imgforge:replaces";
    /// `never` on an instance exempts it from rotation.
    pub const ROTATE: &str = "imgforge:rotate";

    /// Tags that carry an image's provenance (the `imgforge:*` keys the README lists).
    pub fn provenance(p: &crate::manifest::Provenance) -> Vec<(String, String)> {
        let mut t = vec![
            ("Name".to_string(), format!("{}-{}", p.name, p.version)),
            (IMAGE.to_string(), p.name.clone()),
            (VERSION.to_string(), p.version.clone()),
            (BUILD_ID.to_string(), p.ids.build.clone()),
            (BASE_ID.to_string(), p.ids.base.clone()),
            (BAKE_ID.to_string(), p.ids.bake.clone()),
        ];
        if let Some(s) = &p.service {
            t.push((SERVICE_COMMIT.to_string(), s.commit.clone()));
        }
        if let Some(d) = &p.data_digest {
            t.push((DATA_DIGEST.to_string(), d.clone()));
        }
        t
    }
}

/// moto_server from the project's `.venv` (`scripts/setup --test`) for the unit tests that
/// talk to S3 or EBS through the real SDK; killed on drop.
#[cfg(test)]
pub struct MotoServer {
    child: std::process::Child,
    port: u16,
}

#[cfg(test)]
impl MotoServer {
    /// Starts moto_server on a free port of 127.0.0.1 and waits until it answers.
    pub fn start() -> MotoServer {
        let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        let port = crate::qemu::free_port().unwrap();
        let child = std::process::Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup --test)", server.display()));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        MotoServer { child, port }
    }

    /// An SDK configuration for this server (fixed region and credentials).
    pub fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                aws_sdk_ec2::config::Credentials::new("AKID", "SECRET", None, None, "test"),
            ))
            .endpoint_url(format!("http://127.0.0.1:{}", self.port))
            .build()
    }
}

#[cfg(test)]
impl Drop for MotoServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_the_five_units() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("45s"), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn other_ages_are_refused_with_an_example() {
        for bad in [
            "30",
            "d",
            "30 d",
            "1y",
            "1.5d",
            "30days",
            "-3d",
            "",
            "99999999999999999w",
        ] {
            let err = parse_age(bad).unwrap_err();
            assert!(err.contains("`30d`"), "{bad}: {err}");
        }
    }

    #[test]
    fn ages_are_formatted_by_their_largest_unit() {
        assert_eq!(format_age(Duration::from_secs(31 * 86_400 + 7200)), "31d");
        assert_eq!(format_age(Duration::from_secs(7300)), "2h");
        assert_eq!(format_age(Duration::from_secs(59)), "59s");
    }
}
