//! `imgforge rotate`: replaces instances older than a maximum age with instances of the newest
//! image, never dropping below the capacity floor.

use crate::cloud::CloudArgs;
use crate::events::Reporter;
use anyhow::{bail, Result};

/// `imgforge rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Replace instances older than this (`30d`, `12h`, `2w`).
    #[arg(long)]
    pub max_age: String,
    /// Image name whose instances are managed.
    #[arg(long)]
    pub image_name: Option<String>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Cloud connection.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

/// Runs `imgforge rotate`.
pub async fn run(_args: RotateArgs, _reporter: &Reporter) -> Result<()> {
    bail!("`imgforge rotate` is not built yet (issue: rotate)")
}
