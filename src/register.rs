//! Registration of built images: AWS AMIs through the EBS direct APIs (or S3 + ImportSnapshot)
//! and Eucalyptus EMIs through bundles.

use crate::cloud::CloudArgs;
use crate::events::Reporter;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// `imgforge register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The build's manifest.json.
    pub manifest: PathBuf,
    /// `ami` or `emi`.
    #[arg(long)]
    pub to: String,
    /// Cloud connection.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

/// `imgforge unbundle`.
#[derive(Debug, clap::Args)]
pub struct UnbundleArgs {
    /// The bundle's manifest XML.
    #[arg(long)]
    pub manifest: PathBuf,
    /// The user's private key (PEM).
    #[arg(long)]
    pub private_key: PathBuf,
    /// Where to write the image.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Runs `imgforge register`.
pub async fn run(_args: RegisterArgs, _reporter: &Reporter) -> Result<()> {
    bail!("`imgforge register` is not built yet (issue: register images)")
}

/// Runs `imgforge unbundle`.
pub fn unbundle(_args: UnbundleArgs, _reporter: &Reporter) -> Result<()> {
    bail!("`imgforge unbundle` is not built yet (issue: register images)")
}
