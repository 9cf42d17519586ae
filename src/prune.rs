//! `imgforge prune`: retires all but the newest images of a name, never one still in use.

use crate::cloud::CloudArgs;
use crate::events::Reporter;
use anyhow::{bail, Result};

/// `imgforge prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Image name to prune.
    #[arg(long)]
    pub image_name: String,
    /// How many of the newest images to keep.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// List what would go and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Cloud connection.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

/// Runs `imgforge prune`.
pub async fn run(_args: PruneArgs, _reporter: &Reporter) -> Result<()> {
    bail!("`imgforge prune` is not built yet (issue: rotate)")
}
