//! `imgforge unbundle`: a Eucalyptus bundle written back as the image it holds.

use super::bundle;
use crate::events::{payload, Reporter};
use anyhow::Result;
use std::path::Path;

/// Runs `imgforge unbundle`: the bundle whose manifest is `manifest`, decrypted with
/// `private_key`, written to `output` after the signature and every digest were checked.
pub fn unbundle(
    manifest: &Path,
    private_key: &Path,
    output: &Path,
    reporter: &Reporter,
) -> Result<()> {
    let key = bundle::load_private_key(private_key)?;
    reporter.phase("unbundle");
    let done = bundle::unbundle(manifest, &key, output)?;
    reporter.result(
        &format!(
            "{}: {} bytes from {} parts, digests and signature verified",
            output.display(),
            done.size,
            done.parts
        ),
        &payload::Unbundled {
            output: output.to_path_buf(),
            name: done.name,
            size: done.size,
            parts: done.parts,
        },
    );
    Ok(())
}
