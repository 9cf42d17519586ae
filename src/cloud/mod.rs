//! AWS SDK configuration shared by `register`, `rotate` and `prune`: the standard credential and
//! region chain, `AWS_ENDPOINT_URL*` variables, an optional `--endpoint-url`, standard retries
//! and timeouts so that nothing hangs.

use anyhow::{anyhow, bail, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::ProvideCredentials;
use aws_smithy_types::error::display::DisplayErrorContext;
use std::time::Duration;

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

/// Loads the SDK configuration for `args`, and fails early, naming what to set, when it has
/// no region or no credentials.
pub async fn load(args: &CloudArgs) -> Result<SdkConfig> {
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

async fn load_unchecked(args: &CloudArgs) -> SdkConfig {
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
    /// On a replacement instance: the instance it replaces.
    pub const REPLACES: &str = "imgforge:replaces";
    /// `never` on an instance exempts it from rotation.
    pub const ROTATE: &str = "imgforge:rotate";
}
