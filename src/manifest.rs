//! `manifest.json`: the record of one build, written next to its artifacts and read by
//! `verify`, `register` and `rotate`.

use crate::definition::{Arch, Check, DiskFormat, Firmware, Publish};
use crate::layers::LayerIds;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the manifest inside a build's output directory.
pub const FILE_NAME: &str = "manifest.json";

/// Everything known about one build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// imgforge version that built it.
    pub imgforge_version: String,
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// Image description.
    #[serde(default)]
    pub description: Option<String>,
    /// The definition file it was built from.
    pub definition: PathBuf,
    /// Layer ids; `ids.build` names the output directory.
    pub ids: LayerIds,
    /// Service repository and commit, if a service was baked.
    #[serde(default)]
    pub service: Option<ServiceRecord>,
    /// Digest of the data snapshot (tarball sha256 or git commit), if one was baked.
    #[serde(default)]
    pub data_digest: Option<String>,
    /// Boot firmware the image expects.
    pub firmware: Firmware,
    /// CPU architecture.
    pub arch: Arch,
    /// Disk size in bytes (virtual size of every artifact).
    pub disk_size: u64,
    /// The exported disk images.
    pub artifacts: Vec<ArtifactRecord>,
    /// RFC 3339 time the build finished.
    pub built_at: String,
    /// Seconds spent in each phase.
    #[serde(default)]
    pub timings: BTreeMap<String, f64>,
    /// Versions of the external tools used.
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    /// The definition's checks, for `imgforge verify`.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// The definition's publish targets, for `build --register`.
    #[serde(default)]
    pub publish: Publish,
}

/// The baked service's origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Repository location.
    pub repo: String,
    /// Full commit id.
    pub commit: String,
}

/// One exported disk image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Disk format.
    pub format: DiskFormat,
    /// File name, relative to the manifest's directory.
    pub file: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// sha256 of the file.
    pub sha256: String,
}

impl Manifest {
    /// Reads a manifest.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the build manifest", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not an imgforge manifest.json", path.display()))
    }

    /// The path of the artifact of `format`, resolved against the manifest at `manifest_path`.
    pub fn artifact_path(&self, manifest_path: &Path, format: DiskFormat) -> Option<PathBuf> {
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        self.artifacts
            .iter()
            .find(|a| a.format == format)
            .map(|a| dir.join(&a.file))
    }

    /// Cloud tags that carry the image's provenance (keys in [`crate::cloud::tags`]).
    pub fn provenance_tags(&self) -> Vec<(String, String)> {
        use crate::cloud::tags;
        let mut t = vec![
            (
                "Name".to_string(),
                format!("{}-{}", self.name, self.version),
            ),
            (tags::IMAGE.to_string(), self.name.clone()),
            (tags::VERSION.to_string(), self.version.clone()),
            (tags::BUILD_ID.to_string(), self.ids.build.clone()),
            (tags::BASE_ID.to_string(), self.ids.base.clone()),
            (tags::BAKE_ID.to_string(), self.ids.bake.clone()),
        ];
        if let Some(s) = &self.service {
            t.push((tags::SERVICE_COMMIT.to_string(), s.commit.clone()));
        }
        if let Some(d) = &self.data_digest {
            t.push((tags::DATA_DIGEST.to_string(), d.clone()));
        }
        t
    }
}
