//! `imgforge build`: the whole pipeline for one definition, as a list of steps.
//!
//! definition → render → ids (service and data resolved and verified before any VM starts) →
//! cached result? → base layer (cached by id) → bake on an overlay → export → verify → manifest.
//! The output directory `output/<name>/<build-id>/` is assembled beside its final place and
//! renamed into it only when everything passed, so a failed or interrupted build leaves no
//! artifact, and a build whose output exists (and is intact) is a no-op unless forced.

use crate::bake::Baked;
use crate::base::BaseLayer;
use crate::definition::Definition;
use crate::events::{payload, Reporter};
use crate::layer_store::{LayerStore, Origin};
use crate::layers::{short, LayerIds};
use crate::manifest::{ArtifactRecord, Manifest, Provenance, FILE_NAME};
use crate::remote_cache::RemoteCache;
use crate::spec::Specs;
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `imgforge build` is asked to do.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The image definition.
    pub file: PathBuf,
    /// Rebuild even if this build id is already in the output directory.
    pub force: bool,
    /// Root of the output tree.
    pub output_dir: PathBuf,
    /// Do not boot the exported image to run its checks.
    pub no_verify: bool,
    /// Build (or find) the base layer only.
    pub base_only: bool,
    /// Remote layer cache (`s3://bucket/prefix`), over the definition's `[cache] url`.
    pub cache_url: Option<String>,
    /// Sign the finished build with this key (OpenSSH or minisign) as the last step.
    pub sign: Option<PathBuf>,
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
        base: Box<BaseLayer>,
        /// Whether it was already cached.
        cached: bool,
    },
}

/// Runs the pipeline, then signs the build when asked (a build found intact in the output
/// directory too).
pub fn build(opts: &BuildOptions, reporter: &Reporter) -> Result<BuildResult> {
    let result = build_image(opts, reporter)?;
    if let (Some(key), BuildResult::Image(outcome)) = (&opts.sign, &result) {
        reporter.phase("sign");
        crate::signature::sign_build(&outcome.manifest_path, key, reporter)?;
    }
    Ok(result)
}

fn build_image(opts: &BuildOptions, reporter: &Reporter) -> Result<BuildResult> {
    let started = Instant::now();
    let def = crate::load::definition(&opts.file)?;
    let specs = Specs::derive(&def)?;
    let ids = LayerIds::of(&specs);
    if opts.base_only {
        let remote = RemoteCache::chosen(opts.cache_url.as_deref(), def.cache.url.as_deref())?;
        let store = LayerStore::new(remote.as_ref(), reporter);
        let (base, origin) = store.base(&ids.base, |staging| {
            crate::base::build(&specs.base, staging, reporter)
        })?;
        return Ok(BuildResult::Base {
            base: Box::new(base),
            cached: origin == Origin::Local,
        });
    }
    report_ids(&def, &ids, reporter);
    let out = OutputDir::new(&opts.output_dir, &def, &ids);
    if !opts.force {
        if let Some(cached) = out.intact_build(reporter)? {
            return Ok(BuildResult::Image(Box::new(cached)));
        }
    }

    let remote = RemoteCache::chosen(opts.cache_url.as_deref(), def.cache.url.as_deref())?;
    let store = LayerStore::new(remote.as_ref(), reporter);
    let mut ctx = BuildContext::new(opts, def, specs, ids, &out, reporter)?;
    let (base, base_origin) = ctx.step("base", |c| {
        store.base(&c.ids.base, |staging| {
            crate::base::build(&c.specs.base, staging, reporter)
        })
    })?;
    let (baked, bake_origin) = ctx.step("bake", |c| {
        store.bake(&c.ids.bake, &base, c.work.path(), || {
            crate::bake::bake(&c.bake_input(&base), reporter)
        })
    })?;
    let mut sealed = ctx.step("seal", |c| c.seal(&base, &baked))?;
    let exported = ctx.step("export", |c| {
        let target = crate::export::ExportTarget {
            out_dir: c.staging.path(),
            final_dir: &out.final_dir,
            work: c.work.path(),
            built_at: &c.provenance.built_at,
        };
        crate::export::export(&c.specs.output, &sealed, &target, reporter)
    })?;
    sealed.documents.extend(exported.documents);
    let artifacts = exported.artifacts;
    if !opts.no_verify {
        ctx.step("verify", |c| c.verify(&artifacts, &sealed.disk))?;
    }
    // Shared only once its image has passed the checks: never from a build without them.
    if bake_origin == Origin::Built && !opts.no_verify {
        store.publish_bake(&ctx.ids.bake, &baked, ctx.work.path())?;
    }
    crate::cancel::check()?;
    ctx.timings
        .insert("total".into(), started.elapsed().as_secs_f64());
    let manifest = ctx.manifest(&base, &baked, artifacts, sealed);
    ctx.publish(manifest, base_origin == Origin::Local, &out)
}

/// Reports the build's layer ids.
fn report_ids(def: &Definition, ids: &LayerIds, reporter: &Reporter) {
    reporter.emit(
        &format!(
            "{} {}: base {} bake {} build {}",
            def.image.name,
            def.image.version,
            short(&ids.base),
            short(&ids.bake),
            short(&ids.build)
        ),
        &payload::Ids {
            name: def.image.name.0.clone(),
            ids: ids.clone(),
        },
    );
}

/// Where a build's output goes: `<output>/<name>/<build-id>/`.
pub(crate) struct OutputDir {
    pub(crate) name_dir: PathBuf,
    final_dir: PathBuf,
    pub(crate) manifest_path: PathBuf,
    build_id: String,
}

impl OutputDir {
    pub(crate) fn new(root: &Path, def: &Definition, ids: &LayerIds) -> OutputDir {
        let name_dir = root.join(&def.image.name.0);
        let final_dir = name_dir.join(&ids.build);
        OutputDir {
            manifest_path: final_dir.join(FILE_NAME),
            name_dir,
            final_dir,
            build_id: ids.build.clone(),
        }
    }

    /// The finished build already here, if its artifacts are intact; a damaged one is
    /// reported and built again.
    fn intact_build(&self, reporter: &Reporter) -> Result<Option<BuildOutcome>> {
        if !self.manifest_path.is_file() {
            return Ok(None);
        }
        let manifest = Manifest::load(&self.manifest_path)?;
        let short_id = short(&self.build_id);
        match manifest.check_all(&self.manifest_path) {
            Ok(()) => {
                reporter.emit(
                    &format!(
                        "build {short_id} is up to date: {}",
                        self.manifest_path.display()
                    ),
                    &payload::Cached {
                        manifest: self.manifest_path.clone(),
                        cached: true,
                    },
                );
                Ok(Some(BuildOutcome {
                    manifest_path: self.manifest_path.clone(),
                    manifest,
                    cached: true,
                }))
            }
            Err(damage) => {
                reporter.emit(
                    &format!("build {short_id} is not intact, building it again: {damage}"),
                    &payload::OutputDamaged {
                        manifest: self.manifest_path.clone(),
                        problem: damage.to_string(),
                    },
                );
                Ok(None)
            }
        }
    }
}

/// What the steps of one build share; its temporary directories go when it is dropped.
struct BuildContext<'a> {
    opts: &'a BuildOptions,
    def: Definition,
    specs: Specs,
    ids: LayerIds,
    provenance: Provenance,
    /// The output directory being assembled beside its final place.
    staging: tempfile::TempDir,
    /// QEMU's overlays and run directories.
    work: tempfile::TempDir,
    console_log: PathBuf,
    timings: BTreeMap<String, f64>,
    reporter: &'a Reporter,
}

impl<'a> BuildContext<'a> {
    fn new(
        opts: &'a BuildOptions,
        def: Definition,
        specs: Specs,
        ids: LayerIds,
        out: &OutputDir,
        reporter: &'a Reporter,
    ) -> Result<BuildContext<'a>> {
        std::fs::create_dir_all(&out.name_dir)
            .with_context(|| format!("cannot create {}", out.name_dir.display()))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".partial-{}-", short(&ids.build)))
            .tempdir_in(&out.name_dir)?;
        let work_root = crate::store::Store::current().work();
        std::fs::create_dir_all(&work_root)?;
        // Named after the build, so that what a build leaves (or a test looks for) is its own.
        let work = tempfile::Builder::new()
            .prefix(&format!("build-{}-", short(&ids.build)))
            .tempdir_in(&work_root)?;
        Ok(BuildContext {
            console_log: staging.path().join("console.log"),
            provenance: Provenance::new(&specs, &ids),
            opts,
            def,
            specs,
            ids,
            staging,
            work,
            timings: BTreeMap::new(),
            reporter,
        })
    }

    /// Runs one step of the pipeline: stops first if the build was interrupted, reports the
    /// phase, and records how long the step took.
    fn step<T>(&mut self, name: &str, run: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        crate::cancel::check()?;
        self.reporter.phase(name);
        let started = Instant::now();
        let out = run(self)?;
        self.timings
            .insert(name.to_string(), started.elapsed().as_secs_f64());
        Ok(out)
    }

    /// Records what the baked image holds and, where the builder allows, writes it again
    /// reproducibly (see `seal`).
    fn seal(&self, base: &BaseLayer, baked: &Baked) -> Result<crate::seal::Sealed> {
        crate::seal::seal(
            &crate::seal::SealInput {
                spec: &self.specs.bake,
                layout: self.specs.base.layout(),
                base: &base.info,
                provenance: &self.provenance,
                baked_disk: &baked.disk,
                baked_raw: baked.raw.as_ref().map(|raw| raw.disk.as_path()),
                work: self.work.path(),
                out_dir: self.staging.path(),
            },
            self.reporter,
        )
    }

    fn bake_input<'b>(&'b self, base: &'b BaseLayer) -> crate::bake::BakeInput<'b> {
        crate::bake::BakeInput {
            spec: &self.specs.bake,
            base,
            provenance: &self.provenance,
            work: self.work.path(),
            console_log: &self.console_log,
        }
    }

    /// Boots the exported image (or, with neither qcow2 nor raw, the sealed disk they were
    /// converted from) and runs the definition's checks.
    fn verify(&self, artifacts: &[ArtifactRecord], disk: &Path) -> Result<()> {
        let bootable = crate::manifest::bootable(artifacts)
            .map(|a| self.staging.path().join(&a.file))
            .unwrap_or_else(|| disk.to_path_buf());
        crate::verify::verify(
            &bootable,
            &self.def.machine,
            &self.def.checks,
            self.work.path(),
            &self.console_log,
            self.reporter,
            &|| Ok(()),
        )
    }

    fn manifest(
        &self,
        base: &BaseLayer,
        baked: &Baked,
        artifacts: Vec<ArtifactRecord>,
        sealed: crate::seal::Sealed,
    ) -> Manifest {
        let mut tools = base.info.tools.clone();
        tools.extend(baked.tools.clone());
        tools.insert(
            "qemu".to_string(),
            crate::qemu::version().unwrap_or_default(),
        );
        tools.insert(
            "accelerator".to_string(),
            format!(
                "{:?}",
                crate::qemu::choose_accelerator(self.def.machine.accelerator)
            )
            .to_lowercase(),
        );
        Manifest {
            provenance: self.provenance.clone(),
            description: self.def.image.description.clone(),
            definition: self.opts.file.clone(),
            firmware: self.def.machine.firmware,
            arch: self.def.os.arch,
            disk_size: self.def.machine.disk_size.0,
            artifacts,
            documents: sealed.documents,
            reproducible: sealed.reproducible,
            timings: self.timings.clone(),
            tools,
            checks: self.def.checks.clone(),
            publish: self.def.publish.clone(),
            machine: Some(self.def.machine.clone()),
        }
    }

    /// Writes the manifest last and moves the finished directory to its final name, replacing
    /// an older one (`--force`).
    fn publish(
        self,
        manifest: Manifest,
        base_cached: bool,
        out: &OutputDir,
    ) -> Result<BuildResult> {
        let mut value = serde_json::to_value(&manifest)?;
        value["base_cached"] = json!(base_cached);
        crate::atomic::write(
            &self.staging.path().join(FILE_NAME),
            serde_json::to_string_pretty(&value)?.as_bytes(),
        )?;
        if out.final_dir.exists() {
            std::fs::remove_dir_all(&out.final_dir)
                .with_context(|| format!("cannot replace {}", out.final_dir.display()))?;
        }
        let path = self.staging.keep();
        std::fs::rename(&path, &out.final_dir)
            .with_context(|| format!("cannot move the build to {}", out.final_dir.display()))?;
        Ok(BuildResult::Image(Box::new(BuildOutcome {
            manifest_path: out.manifest_path.clone(),
            manifest,
            cached: false,
        })))
    }
}
