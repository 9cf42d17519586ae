//! The base layer: the operating system, built once per base id and cached.
//!
//! A cached base is a directory `<cache>/base/<base-id>/` holding `disk.qcow2`, the kernel and
//! initrd that boot it directly (for the offline bake), the build key the bake uses, and
//! `base.json`. It is assembled in a temporary directory beside it and renamed into place only
//! when complete, so an interrupted build leaves no half-made base.
//!
//! Two builders make it: [`rootfs`] (mmdebstrap and an assembled disk, no installer) and
//! [`installer`] (the OS installer booted in QEMU with the rendered answer file).

mod installer;
pub mod packages;
mod patch;
mod rootfs;

use crate::definition::BuilderKind;
use crate::events::{payload, Reporter};
use crate::process::Command;
use crate::spec::BaseSpec;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Facts about a built base layer, stored as `base.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseInfo {
    /// The base layer id.
    pub id: String,
    /// Which builder made it.
    pub builder: BuilderKind,
    /// How to boot it without firmware, with the bake init as PID 1 (the rootfs builder's
    /// bases); `None` for a base that boots only through its own firmware and boot loader.
    pub direct_boot: Option<DirectBoot>,
    /// Seconds the build took.
    pub build_seconds: f64,
    /// Tool versions used.
    pub tools: std::collections::BTreeMap<String, String>,
    /// For the installer builder: when the build's HTTP server first served the answer file,
    /// in seconds after the server started (just before the installer's VM).
    #[serde(default)]
    pub answer_file_fetched_after_s: Option<f64>,
    /// For the rootfs builder: how many packages came from the package cache.
    #[serde(default)]
    pub packages: Option<packages::PackageUse>,
    /// The exact package set the base was built from (Debian family).
    #[serde(default)]
    pub package_set: Option<crate::lock::PackageSet>,
    /// Its lineage ([`BaseSpec::lineage`]): bases of one lineage differ only in
    /// their packages, so a new one can be patched from a cached one.
    #[serde(default)]
    pub lineage: Option<String>,
    /// The cached base this one was patched from, when it was not built cold.
    #[serde(default)]
    pub patched_from: Option<String>,
}

/// What a base with the bake init needs to boot from its kernel and initrd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectBoot {
    /// UUID of the root filesystem.
    pub root_uuid: String,
    /// Kernel command line that boots the disk directly (without `init=`).
    pub kernel_cmdline: String,
}

/// A base layer in the cache.
#[derive(Debug, Clone)]
pub struct BaseLayer {
    /// Its directory.
    pub dir: PathBuf,
    /// Its facts.
    pub info: BaseInfo,
}

impl BaseLayer {
    /// The disk, to be used only as a backing file.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    /// The kernel for direct boot.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    /// The initrd for direct boot.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    /// Private half of the build key authorised for root in the base.
    pub fn build_key(&self) -> PathBuf {
        self.dir.join("build-key")
    }

    /// Opens the cached base `id`, if it is complete.
    pub fn open(id: &str) -> Option<BaseLayer> {
        let dir = crate::store::Store::current().base(id);
        let text = std::fs::read_to_string(dir.join("base.json")).ok()?;
        let info: BaseInfo = serde_json::from_str(&text).ok()?;
        Some(BaseLayer { dir, info })
    }
}

/// A base layer under construction: a temporary directory beside the cache entry, removed if
/// the build does not finish.
pub struct BaseStaging {
    /// The temporary directory.
    pub dir: tempfile::TempDir,
    /// The id it will be stored under.
    pub id: String,
}

impl BaseStaging {
    /// An empty staging directory for base `id`.
    pub fn empty(id: &str) -> Result<BaseStaging> {
        let root = crate::store::Store::current().bases();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(crate::store::STAGING_PREFIX)
            .tempdir_in(&root)?;
        Ok(BaseStaging {
            dir,
            id: id.to_string(),
        })
    }

    /// Starts a staging directory for base `id` and makes its build key.
    pub fn new(id: &str) -> Result<BaseStaging> {
        let staging = BaseStaging::empty(id)?;
        let dir = &staging.dir;
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                BUILD_KEY_COMMENT,
                "-f",
            ])
            .arg(dir.path().join("build-key"))
            .run()
            .context("cannot make the build key")?;
        Ok(staging)
    }

    /// Path inside the staging directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The public build key.
    pub fn public_key(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.path("build-key.pub"))?
            .trim()
            .to_string())
    }

    /// Writes `base.json` and moves the directory into the cache.
    pub fn commit(self, info: BaseInfo) -> Result<BaseLayer> {
        crate::atomic::write(
            &self.path("base.json"),
            serde_json::to_string_pretty(&info)?.as_bytes(),
        )?;
        self.into_cache(info)
    }

    /// Moves a directory unpacked from the remote cache (`base.json` included) into the cache.
    pub fn commit_unpacked(self) -> Result<BaseLayer> {
        let text = std::fs::read_to_string(self.path("base.json"))
            .context("the remote base layer has no base.json")?;
        let info: BaseInfo =
            serde_json::from_str(&text).context("the remote base layer's base.json")?;
        if info.id != self.id {
            bail!(
                "the remote base layer says it is {}, not {}",
                info.id,
                self.id
            );
        }
        self.into_cache(info)
    }

    fn into_cache(self, info: BaseInfo) -> Result<BaseLayer> {
        let final_dir = crate::store::Store::current().base(&self.id);
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        let tmp = self.dir.keep();
        std::fs::rename(&tmp, &final_dir).with_context(|| {
            format!("cannot move the new base layer to {}", final_dir.display())
        })?;
        Ok(BaseLayer {
            dir: final_dir,
            info,
        })
    }
}

/// Comment on the build key, so hygiene can remove exactly its authorized_keys line.
pub const BUILD_KEY_COMMENT: &str = "imgforge-build-key";

/// Makes the base layer `spec` in `staging` with its builder: the rootfs builder from the
/// resolved package set (patching a cached base of its lineage when it can), the installer
/// builder from the answer file. The layer store calls it when no cache has the base.
pub fn build(spec: &BaseSpec, staging: &BaseStaging, reporter: &Reporter) -> Result<BaseInfo> {
    match spec.builder.kind() {
        BuilderKind::Rootfs => build_rootfs(spec, staging, reporter),
        BuilderKind::Installer => installer::build(spec, staging, reporter),
    }
}

/// The cached base a new base would be patched from, as `plan` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PatchPlan {
    /// The cached base's id.
    pub from: String,
    /// How many packages the patch installs (new, or at another version).
    pub install: usize,
    /// How many it removes.
    pub remove: usize,
}

/// Where the rootfs base `spec` would be patched from, if a cached base of its lineage is
/// near enough; the build still falls back to a cold base when the patch could differ from
/// one.
pub fn patch_candidate(spec: &BaseSpec) -> Result<Option<PatchPlan>> {
    if spec.builder.kind() != BuilderKind::Rootfs {
        return Ok(None);
    }
    Ok(patch_source(spec)?.1.map(|p| PatchPlan {
        from: p.from.info.id.clone(),
        install: p.install.len(),
        remove: p.remove.len(),
    }))
}

/// The lineage of the rootfs base `spec`, and the cached base of that lineage to patch it
/// from, if one is near enough.
fn patch_source(spec: &BaseSpec) -> Result<(String, Option<patch::Patch>)> {
    let lineage = spec.lineage();
    let patch = patch::find(&lineage, &spec.package_set()?.set);
    Ok((lineage, patch))
}

/// A rootfs base, with its lineage: patched from a cached base of that lineage when one is
/// near enough and the patch gives what a cold build would, else built cold.
fn build_rootfs(spec: &BaseSpec, staging: &BaseStaging, reporter: &Reporter) -> Result<BaseInfo> {
    let (lineage, patch) = patch_source(spec)?;
    let mut info = match patch {
        Some(patch) => patched_or_cold(spec, staging, &patch, reporter)?,
        None => rootfs::build(spec, staging, reporter)?,
    };
    info.lineage = Some(lineage);
    Ok(info)
}

/// Patches `patch.from` into the new base, or builds it cold when the patch is refused or
/// fails; the `base_patch` event says which, and why.
fn patched_or_cold(
    spec: &BaseSpec,
    staging: &BaseStaging,
    patch: &patch::Patch,
    reporter: &Reporter,
) -> Result<BaseInfo> {
    let started = std::time::Instant::now();
    let outcome = |outcome: &str, reason: Option<String>| payload::BasePatch {
        base: staging.id.clone(),
        from: patch.from.info.id.clone(),
        install: patch.install.iter().map(|p| p.pinned()).collect(),
        remove: patch.remove.iter().map(|p| p.name.clone()).collect(),
        outcome: outcome.to_string(),
        reason,
        seconds: started.elapsed().as_secs_f64(),
    };
    match patch::build(spec, staging, patch, reporter) {
        Ok(info) => {
            reporter.emit(
                &format!("base layer patched: {}", patch.summary()),
                &outcome("patched", None),
            );
            Ok(info)
        }
        Err(e) => {
            crate::cancel::check()?;
            let reason = format!("{e:#}");
            reporter.emit(
                &format!(
                    "base layer not patched ({}): {reason}; building it cold",
                    patch.summary()
                ),
                &outcome("cold", Some(reason.clone())),
            );
            rootfs::build(spec, staging, reporter)
        }
    }
}

/// Copies `from` to `to` keeping nothing but the bytes.
pub fn copy_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
