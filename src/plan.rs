//! `imgforge plan`: for each definition, its layer ids and which layers already exist (a
//! finished build in the output directory, a base layer in the local or remote cache), so
//! that a CI system can emit a job matrix of only what must be built.

use crate::base::BaseLayer;
use crate::build::OutputDir;
use crate::definition::Definition;
use crate::layers::{short, LayerIds};
use crate::manifest::{Manifest, FILE_NAME};
use crate::remote_cache::{Layer, RemoteCache};
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
    let def = Definition::load(file)?;
    let answer = crate::render::render(&def)?;
    let (ids, _) = crate::layers::resolve_and_compute(&def, &answer)?;
    let out = OutputDir::new(output_dir, &def, &ids);
    let build = match Manifest::load(&out.manifest_path) {
        Err(_) => LayerState::Missing,
        Ok(m) if m.quick_check(&out.manifest_path).is_ok() => LayerState::Built,
        Ok(_) => LayerState::Damaged,
    };
    let bake = match build {
        LayerState::Built => LayerState::Built,
        _ if bake_in_output(&out.name_dir, &ids.bake) => LayerState::Built,
        _ => LayerState::Missing,
    };
    let remote = || -> Result<bool> {
        match RemoteCache::for_definition(cache_url, &def)? {
            Some(r) => r.has(Layer::Base, &ids.base),
            None => Ok(false),
        }
    };
    let base = match BaseLayer::open(&ids.base) {
        Some(_) => LayerState::Cached,
        None if remote()? => LayerState::Remote,
        None => LayerState::Missing,
    };
    Ok(PlanItem {
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
            .is_ok_and(|m| m.provenance.ids.bake == bake && m.quick_check(&path).is_ok())
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
    crate::events::table(["image", "build", "bake", "base"], &rows)
}
