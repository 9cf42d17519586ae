//! `imgforge build`: the whole pipeline for one definition.
//!
//! definition → render → ids (service and data resolved and verified before any VM starts) →
//! cached result? → base layer (cached by id) → bake on an overlay → export → verify → manifest.
//! The output directory `output/<name>/<build-id>/` is assembled beside its final place and
//! renamed into it only when everything passed, so a failed or interrupted build leaves no
//! artifact, and a build whose output exists is a no-op unless forced.

use crate::definition::Definition;
use crate::events::Reporter;
use crate::manifest::{Manifest, ServiceRecord, FILE_NAME};
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `imgforge build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The image definition.
    pub file: PathBuf,
    /// Rebuild even if this build id is already in the output directory.
    #[arg(long)]
    pub force: bool,
    /// Root of the output tree.
    #[arg(long, default_value = "output")]
    pub output_dir: PathBuf,
    /// Do not boot the exported image to run its checks.
    #[arg(long)]
    pub no_verify: bool,
    /// Build (or find) the base layer only, and report where it is.
    #[arg(long)]
    pub base_only: bool,
    /// After the build, register the image with the definition's `[publish]` targets.
    #[arg(long, conflicts_with = "base_only")]
    pub register: bool,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// Path of the manifest.
    pub manifest_path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Whether the result was already there.
    pub cached: bool,
}

/// What `imgforge build` produced.
#[derive(Debug, Clone)]
pub enum BuildResult {
    /// A whole image.
    Image(Box<BuildOutcome>),
    /// Only the base layer (`--base-only`).
    Base {
        /// The cached base layer.
        base: crate::base::BaseLayer,
        /// Whether it was already cached.
        cached: bool,
    },
}

/// Runs the pipeline.
pub fn build(args: &BuildArgs, reporter: &Reporter) -> Result<BuildResult> {
    let started = Instant::now();
    let mut timings = BTreeMap::new();
    let def = Definition::load(&args.file)?;
    let answer = crate::render::render(&def)?;
    let (ids, resolved) = crate::layers::resolve_and_compute(&def, &answer)?;
    if args.base_only {
        let (base, cached) = crate::base::ensure(&def, &answer, &ids, reporter)?;
        return Ok(BuildResult::Base { base, cached });
    }
    let name_dir = args.output_dir.join(&def.image.name.0);
    let final_dir = name_dir.join(&ids.build);
    let manifest_path = final_dir.join(FILE_NAME);
    reporter.event(
        "ids",
        &format!(
            "{} {}: base {} bake {} build {}",
            def.image.name,
            def.image.version,
            crate::layers::short(&ids.base),
            crate::layers::short(&ids.bake),
            crate::layers::short(&ids.build)
        ),
        json!({ "name": def.image.name.0, "ids": ids }),
    );
    if manifest_path.is_file() && !args.force {
        let manifest = Manifest::load(&manifest_path)?;
        match manifest.quick_check(&manifest_path) {
            Ok(()) => {
                reporter.event(
                    "cached",
                    &format!(
                        "build {} is up to date: {}",
                        crate::layers::short(&ids.build),
                        manifest_path.display()
                    ),
                    json!({ "manifest": manifest_path, "cached": true }),
                );
                return Ok(BuildResult::Image(Box::new(BuildOutcome {
                    manifest_path,
                    manifest,
                    cached: true,
                })));
            }
            Err(damage) => reporter.event(
                "output_damaged",
                &format!(
                    "build {} is not intact, building it again: {damage}",
                    crate::layers::short(&ids.build)
                ),
                json!({ "manifest": manifest_path, "problem": damage.to_string() }),
            ),
        }
    }

    std::fs::create_dir_all(&name_dir)
        .with_context(|| format!("cannot create {}", name_dir.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".partial-{}-", crate::layers::short(&ids.build)))
        .tempdir_in(&name_dir)?;
    let work_root = crate::sources::cache_dir().join("work");
    std::fs::create_dir_all(&work_root)?;
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&work_root)?;
    let console_log = staging.path().join("console.log");

    let t = Instant::now();
    let (base, base_cached) = crate::base::ensure(&def, &answer, &ids, reporter)?;
    timings.insert("base".to_string(), t.elapsed().as_secs_f64());

    crate::cancel::check()?;
    let t = Instant::now();
    let disk = crate::bake::bake(
        &crate::bake::BakeInput {
            def: &def,
            base: &base,
            resolved: &resolved,
            ids: &ids,
            work: work.path(),
            console_log: &console_log,
        },
        reporter,
    )?;
    timings.insert("bake".to_string(), t.elapsed().as_secs_f64());

    crate::cancel::check()?;
    let t = Instant::now();
    let artifacts = crate::export::export(&def, &disk, staging.path(), reporter)?;
    timings.insert("export".to_string(), t.elapsed().as_secs_f64());

    crate::cancel::check()?;
    if !args.no_verify {
        let t = Instant::now();
        let bootable = crate::manifest::bootable(&artifacts)
            .map(|a| staging.path().join(&a.file))
            .unwrap_or_else(|| disk.clone());
        crate::verify::verify(
            &bootable,
            &def.machine,
            &def.checks,
            work.path(),
            &console_log,
            reporter,
        )?;
        timings.insert("verify".to_string(), t.elapsed().as_secs_f64());
    }
    crate::cancel::check()?;
    timings.insert("total".to_string(), started.elapsed().as_secs_f64());

    let mut tools = base.info.tools.clone();
    tools.insert(
        "qemu".to_string(),
        crate::qemu::version().unwrap_or_default(),
    );
    tools.insert(
        "accelerator".to_string(),
        format!(
            "{:?}",
            crate::qemu::choose_accelerator(def.machine.accelerator)
        )
        .to_lowercase(),
    );
    let manifest = Manifest {
        imgforge_version: env!("CARGO_PKG_VERSION").to_string(),
        name: def.image.name.0.clone(),
        version: def.image.version.clone(),
        description: def.image.description.clone(),
        definition: args.file.clone(),
        ids: ids.clone(),
        service: resolved.service.as_ref().map(|s| ServiceRecord {
            repo: def
                .service
                .as_ref()
                .map(|d| d.repo.clone())
                .unwrap_or_default(),
            commit: s.commit.clone(),
        }),
        data_digest: resolved.data.as_ref().map(|d| d.digest().to_string()),
        firmware: def.machine.firmware,
        arch: def.os.arch,
        disk_size: def.machine.disk_size.0,
        artifacts,
        built_at: crate::export::now_rfc3339(),
        timings,
        tools,
        checks: def.checks.clone(),
        publish: def.publish.clone(),
        machine: Some(def.machine.clone()),
    };
    let mut value = serde_json::to_value(&manifest)?;
    value["base_cached"] = json!(base_cached);
    crate::atomic::write(
        &staging.path().join(FILE_NAME),
        serde_json::to_string_pretty(&value)?.as_bytes(),
    )?;
    publish_dir(staging, &final_dir)?;
    Ok(BuildResult::Image(Box::new(BuildOutcome {
        manifest_path,
        manifest,
        cached: false,
    })))
}

/// Moves the finished staging directory to its final name, replacing an older one (`--force`).
fn publish_dir(staging: tempfile::TempDir, final_dir: &Path) -> Result<()> {
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir)
            .with_context(|| format!("cannot replace {}", final_dir.display()))?;
    }
    let path = staging.keep();
    std::fs::rename(&path, final_dir)
        .with_context(|| format!("cannot move the build to {}", final_dir.display()))?;
    Ok(())
}
