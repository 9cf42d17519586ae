//! The local cache's layout, in one place: every path imgforge keeps under `IMGFORGE_CACHE`
//! (default `~/.cache/imgforge`) is named here, and nowhere else.
//!
//! ```text
//! base/<base-id>/          a finished base layer (disk, kernel, initrd, build key, base.json)
//! base/.building-XXXX/     a base being built (renamed into place when done)
//! locks/base-<id>.lock     held while a build builds or opens base <id>
//! packages/<release-…>/    downloaded .deb files shared by every base of a release and mirror
//! apt/<sources digest>/    apt's state for one set of sources (lists, configuration)
//! apt/<…>/resolved/        package resolutions kept while the signed indexes stay the same
//! downloads/               data snapshots fetched by URL
//! work/                    per-build work directories (QEMU overlays, bake bundles)
//! logs/                    installer console logs kept after a failed install
//! ```

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where imgforge keeps downloads and cached layers: `IMGFORGE_CACHE`, else
/// `$XDG_CACHE_HOME/imgforge`, else `~/.cache/imgforge`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IMGFORGE_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("imgforge");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/imgforge")
}

/// Name prefix of a base layer under construction in [`Store::bases`].
pub const STAGING_PREFIX: &str = ".building-";

/// The local cache at one root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The cache this process uses (`IMGFORGE_CACHE`, else `$XDG_CACHE_HOME/imgforge`, else
    /// `~/.cache/imgforge`).
    pub fn current() -> Store {
        Store::at(cache_dir())
    }

    /// The cache rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The directory of base layers (finished ones and those being built).
    pub fn bases(&self) -> PathBuf {
        self.root.join("base")
    }

    /// Base layer `id`.
    pub fn base(&self, id: &str) -> PathBuf {
        self.bases().join(id)
    }

    /// Opens (creating it) the lock file of base `id`: the locks live beside the layers, not
    /// among them, so that a base directory holds only layers.
    pub fn base_lock(&self, id: &str) -> Result<std::fs::File> {
        let locks = self.root.join("locks");
        std::fs::create_dir_all(&locks)
            .with_context(|| format!("cannot create {}", locks.display()))?;
        let path = locks.join(format!("base-{id}.lock"));
        std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
    }

    /// The package cache.
    pub fn packages(&self) -> PathBuf {
        self.root.join("packages")
    }

    /// Where apt's states live, one directory per set of sources.
    pub fn apt_states(&self) -> PathBuf {
        self.root.join("apt")
    }

    /// apt's state for the sources whose digest starts with `digest`.
    pub fn apt(&self, digest: &str) -> PathBuf {
        self.apt_states().join(digest)
    }

    /// The kept package resolutions of apt's state `apt_dir` (one of [`Self::apt`]).
    pub fn resolutions(apt_dir: &Path) -> PathBuf {
        apt_dir.join("resolved")
    }

    /// Data snapshots fetched by URL.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// The builds' work directories.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// Kept installer console logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
}
