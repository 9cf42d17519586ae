//! `imgforge outdated MANIFEST`: the packages of a built image that the archive now has newer
//! versions of, security updates first, read from the package sources and set the manifest
//! records and the sources' current signed indexes.

use crate::apt::Archive;
use crate::manifest::Manifest;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

/// A package of the image with a newer version in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutdatedPackage {
    /// Package name.
    pub name: String,
    /// The version in the image.
    pub installed: String,
    /// The version the archive offers now.
    pub available: String,
    /// Whether the new version comes from the security archive.
    pub security: bool,
    /// Name of the source that offers it.
    pub source: String,
}

/// The packages of the build at `manifest_path` that its sources now have newer versions of,
/// security updates first, then by name.
pub fn outdated(manifest_path: &Path) -> Result<Vec<OutdatedPackage>> {
    let manifest = Manifest::load(manifest_path)?;
    let recorded = manifest.provenance.packages.with_context(|| {
        format!(
            "{}: this build records no package set (not a Debian image, or built before \
             imgforge recorded one): build it again",
            manifest_path.display()
        )
    })?;
    let snapshot = recorded
        .sources
        .first()
        .is_some_and(|s| crate::definition::snapshot_time(&s.uri).is_some());
    let archive = Archive::open(&recorded.sources, None, snapshot)?;
    let _indexes = archive.update()?;
    let names: Vec<String> = recorded
        .set
        .packages
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let candidates = archive.candidates(&names)?;
    let security = crate::apt::security_sources(&recorded.sources);
    let mut out = Vec::new();
    for p in &recorded.set.packages {
        let Some((version, source)) = candidates.get(&p.name) else {
            continue;
        };
        if *version != p.version && crate::apt::newer(version, &p.version)? {
            out.push(OutdatedPackage {
                name: p.name.clone(),
                installed: p.version.clone(),
                available: version.clone(),
                security: security.contains(source),
                source: source.clone(),
            });
        }
    }
    out.sort_by(|a, b| b.security.cmp(&a.security).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// The report for people: one line per package, security updates marked.
pub fn table(packages: &[OutdatedPackage]) -> String {
    if packages.is_empty() {
        return "every package is the newest the archive offers".to_string();
    }
    let security = packages.iter().filter(|p| p.security).count();
    let mut lines: Vec<String> = packages
        .iter()
        .map(|p| {
            format!(
                "{}{} {} → {}",
                if p.security { "[security] " } else { "" },
                p.name,
                p.installed,
                p.available
            )
        })
        .collect();
    lines.push(format!(
        "{} package(s) outdated, {security} of them security updates: rebuild the image",
        packages.len()
    ));
    lines.join("\n")
}
