//! The artifact a registration uploads, checked against the build's digests, and its raw
//! form.

use crate::definition::DiskFormat;
use crate::events::{payload, Reporter};
use crate::manifest::Manifest;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

/// The artifact a registration uploads: the raw one, else the qcow2 one, checked against the
/// build's digests.
pub(super) struct SourceImage {
    format: DiskFormat,
    /// The checked artifact, open: what is uploaded or converted, whatever its path holds now.
    pinned: crate::manifest::PinnedFile,
    /// Its sha256, as checked.
    pub(super) sha256: String,
}

impl SourceImage {
    /// The manifest's raw (else qcow2) artifact, opened and checked against its sha256.
    pub(super) fn checked(
        manifest_path: &Path,
        manifest: &Manifest,
        reporter: &Reporter,
    ) -> Result<SourceImage> {
        let record = manifest
            .artifact(DiskFormat::Raw)
            .or_else(|| manifest.artifact(DiskFormat::Qcow2))
            .ok_or_else(|| {
                anyhow!(
                    "{}: the build has neither a raw nor a qcow2 artifact; add `raw` to [output] formats",
                    manifest_path.display()
                )
            })?;
        reporter.phase("register: check the artifact against the build's digests");
        let pinned = manifest.checked_artifact(manifest_path, record)?;
        reporter.emit(
            &format!("    {}: sha256 {} as recorded", record.file, record.sha256),
            &payload::ArtifactChecked {
                file: record.file.clone(),
                sha256: record.sha256.clone(),
            },
        );
        Ok(SourceImage {
            format: record.format,
            pinned,
            sha256: record.sha256.clone(),
        })
    }
}

/// The build's raw image: the raw artifact, or the qcow2 one converted into a temporary file.
pub(super) struct RawImage {
    /// Where the raw bytes are read from.
    pub(super) path: PathBuf,
    /// The sha256 checked before: the raw artifact's (a converted qcow2 is private to us).
    pub(super) sha256: Option<String>,
    _tmp: Option<tempfile::TempDir>,
    /// Keeps the checked artifact open while `path` names it through `/proc`.
    _source: crate::manifest::PinnedFile,
}

impl RawImage {
    /// The raw bytes of `source`: the raw artifact itself, or the qcow2 one converted.
    pub(super) async fn prepare(source: SourceImage, reporter: &Reporter) -> Result<RawImage> {
        let dir = source.pinned.path().parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".imgforge-register-")
            .tempdir_in(dir)
            .with_context(|| format!("cannot make a temporary directory in {}", dir.display()))?;
        if source.format == DiskFormat::Raw {
            // A link, under its own name in a directory of ours, to the very file checked (not
            // to whatever its path holds by now).
            let path = source
                .pinned
                .link_into(tmp.path())
                .unwrap_or_else(|_| source.pinned.pinned_path());
            return Ok(RawImage {
                path,
                sha256: Some(source.sha256),
                _tmp: Some(tmp),
                _source: source.pinned,
            });
        }
        let qcow2 = source.pinned.pinned_path();
        reporter.phase("register: convert qcow2 to raw");
        let raw = tmp.path().join("disk.raw");
        let cmd = crate::process::Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&qcow2)
            .arg(&raw);
        tokio::task::spawn_blocking(move || cmd.run())
            .await
            .context("qemu-img runner panicked")??;
        Ok(RawImage {
            path: raw,
            sha256: None,
            _tmp: Some(tmp),
            _source: source.pinned,
        })
    }
}
