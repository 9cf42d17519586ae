//! `imgforge plan`: for each definition, its layer ids and which layers already exist (a
//! finished build in the output directory, a base layer in the local or remote cache), so
//! that a CI system can emit a job matrix of only what must be built.

use crate::build::OutputDir;
use crate::layer_store::{LayerStore, Presence};
use crate::layers::{short, LayerIds};
use crate::lock::ResolvedPackages;
use crate::manifest::{Manifest, FILE_NAME};
use crate::remote_cache::RemoteCache;
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where a layer of a planned build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerState {
    /// A finished build in the output directory carries it, with its artifacts intact.
    Built,
    /// In the local layer cache.
    Cached,
    /// In the remote layer cache (`--cache-url`): downloaded, not built.
    Remote,
    /// In the output directory, but an artifact is missing or changed: it will be rebuilt.
    Damaged,
    /// Nowhere: building it is part of the build.
    Missing,
}

/// The plan for one definition.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    /// The definition file.
    pub file: PathBuf,
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// Its layer ids.
    pub ids: LayerIds,
    /// The finished build (`output/<name>/<build-id>/`).
    pub build: LayerState,
    /// The bake: built when some finished build in the output directory has this bake id.
    pub bake: LayerState,
    /// The base layer.
    pub base: LayerState,
    /// Whether `imgforge build` of this definition would build anything.
    pub needs_build: bool,
    /// Where its package set came from: `archive` (resolved now) or the lock file's path.
    pub packages_from: Option<String>,
    /// What changed in the archive since the newest build of this image in the output
    /// directory (Debian family; `None` where there is no such build).
    pub upstream: Option<Upstream>,
    /// The cached base a missing rootfs base would be patched from (`None`: built cold).
    pub patch_from: Option<crate::base::PatchPlan>,
}

/// What changed upstream since an earlier build.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    /// The earlier build's id.
    pub since_build: String,
    /// When it was built.
    pub built_at: String,
    /// Packages added, removed and upgraded since.
    #[serde(flatten)]
    pub changes: crate::lock::Changes,
}

/// Plans every definition in `files` against the output directory `output_dir`, the local
/// cache and the remote cache (`cache_url`, or each definition's `[cache] url`); fails on the
/// first definition that does not load or resolve.
pub fn plan(
    files: &[PathBuf],
    output_dir: &Path,
    cache_url: Option<&str>,
) -> Result<Vec<PlanItem>> {
    files
        .iter()
        .map(|f| plan_one(f, output_dir, cache_url))
        .collect()
}

fn plan_one(file: &Path, output_dir: &Path, cache_url: Option<&str>) -> Result<PlanItem> {
    let def = crate::load::definition(file)?;
    let specs = crate::spec::Specs::derive(&def)?;
    let ids = LayerIds::of(&specs);
    let packages = specs.base.packages.as_ref();
    let out = OutputDir::new(output_dir, &def, &ids);
    let build = match Manifest::load(&out.manifest_path) {
        Err(_) => LayerState::Missing,
        Ok(m) if m.check_all(&out.manifest_path).is_ok() => LayerState::Built,
        Ok(_) => LayerState::Damaged,
    };
    let bake = match build {
        LayerState::Built => LayerState::Built,
        _ if bake_in_output(&out.name_dir, &ids.bake) => LayerState::Built,
        _ => LayerState::Missing,
    };
    let remote = || RemoteCache::chosen(cache_url, def.cache.url.as_deref());
    let base = match LayerStore::base_presence(&ids.base, remote)? {
        Presence::Local => LayerState::Cached,
        Presence::Remote => LayerState::Remote,
        Presence::Missing => LayerState::Missing,
    };
    let upstream = packages.and_then(|now| upstream_since_last_build(&out.name_dir, now));
    let patch_from = match (base, packages) {
        (LayerState::Missing, Some(_)) => crate::base::patch_candidate(&specs.base)?,
        _ => None,
    };
    Ok(PlanItem {
        packages_from: packages.map(|p| match &p.lock {
            Some(lock) => lock.display().to_string(),
            None => "archive".to_string(),
        }),
        upstream,
        patch_from,
        file: file.to_path_buf(),
        name: def.image.name.0.clone(),
        version: def.image.version.clone(),
        needs_build: build != LayerState::Built,
        ids,
        build,
        bake,
        base,
    })
}

/// Whether an intact finished build under `name_dir` has bake id `bake` (another output
/// format of the same image).
fn bake_in_output(name_dir: &Path, bake: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(name_dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path().join(FILE_NAME);
        Manifest::load(&path)
            .is_ok_and(|m| m.provenance.ids.bake == bake && m.check_all(&path).is_ok())
    })
}

/// The changes from the package set of the newest build under `name_dir` to `now`.
fn upstream_since_last_build(name_dir: &Path, now: &ResolvedPackages) -> Option<Upstream> {
    let newest = std::fs::read_dir(name_dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            // Only the recorded package set is read: the artifacts are not hashed again here.
            Manifest::load(&e.path().join(FILE_NAME))
                .ok()
                .map(|m| m.provenance)
        })
        .filter(|p| p.packages.is_some())
        .max_by(|a, b| a.built_at.cmp(&b.built_at))?;
    let before = &newest.packages.as_ref()?.set;
    Some(Upstream {
        since_build: newest.ids.build,
        built_at: newest.built_at,
        changes: now.changes_since(before),
    })
}

/// The plan as a table for people.
pub fn table(items: &[PlanItem]) -> String {
    let state = |s: LayerState| format!("{s:?}").to_lowercase();
    let rows: Vec<[String; 4]> = items
        .iter()
        .map(|i| {
            [
                format!("{} {}", i.name, i.version),
                format!("{} {}", state(i.build), short(&i.ids.build)),
                format!("{} {}", state(i.bake), short(&i.ids.bake)),
                format!("{} {}", state(i.base), short(&i.ids.base)),
            ]
        })
        .collect();
    let mut text = crate::events::table(["image", "build", "bake", "base"], &rows);
    for i in items {
        if let Some(up) = i.upstream.as_ref().filter(|u| !u.changes.is_empty()) {
            text += &format!(
                "\n{}: upstream since build {}: {}",
                i.name,
                short(&up.since_build),
                up.changes.summary()
            );
        }
        if let Some(patch) = &i.patch_from {
            text += &format!(
                "\n{}: base to be patched from {} ({} package(s) to install, {} to remove)",
                i.name,
                short(&patch.from),
                patch.install,
                patch.remove
            );
        }
    }
    text
}
