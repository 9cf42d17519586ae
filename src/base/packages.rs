//! The package cache shared by the rootfs builder's bases: the `.deb` files of their package
//! sets, kept per release and mirror in `<cache>/packages/`, so that a base differing from a
//! cached one by a package or two downloads only those.
//!
//! Before mmdebstrap runs, every package of the base's set is made present in the cache
//! ([`PackageCache::fetch`]: downloaded by apt, checked against the set's sha256); mmdebstrap
//! finds the set's files in the new tree's archive directory before its download step, and the
//! packages it used are taken back after installing. apt trusts a file already in its archive
//! directory when only its size matches, so imgforge keeps the sha256 of each package
//! (`NAME.deb.sha256`, written before the package is renamed in) and removes any package that
//! no longer matches before it is copied in: a damaged file is downloaded again, never
//! installed. The cache is trimmed to its size limit
//! after each base, least recently used first; `imgforge cache gc` trims it too.

use crate::apt::{Archive, PackageSet};
use crate::bake_protocol::sh_quote;
use crate::render::{render_script, ROOTFS_DEBS_IN, ROOTFS_DEBS_OUT};
use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Size limit of the package cache when `IMGFORGE_PACKAGE_CACHE_SIZE` does not set one.
pub const DEFAULT_LIMIT: u64 = 2 << 30;

/// The package cache's size limit: `IMGFORGE_PACKAGE_CACHE_SIZE` (`2G`, `500M`; `0` turns the
/// cache off), else `DEFAULT_LIMIT` (2 GiB).
pub fn limit() -> Result<u64> {
    match std::env::var("IMGFORGE_PACKAGE_CACHE_SIZE") {
        Ok(v) => crate::definition::ByteSize::parse(&v)
            .map(|b| b.0)
            .with_context(|| {
                format!("IMGFORGE_PACKAGE_CACHE_SIZE=`{v}` is not a size; write it like 2G or 500M")
            }),
        Err(_) => Ok(DEFAULT_LIMIT),
    }
}

/// Directory of all package caches.
pub fn cache_root() -> PathBuf {
    crate::store::Store::current().packages()
}

/// How a base used the package cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackageUse {
    /// Packages taken from the cache.
    pub reused: usize,
    /// Packages downloaded from the mirror (and now cached).
    pub downloaded: usize,
    /// Cached packages that no longer matched their recorded sha256: removed before the build.
    #[serde(default)]
    pub damaged: usize,
}

/// The cached packages of one release and mirror.
pub struct PackageCache {
    dir: PathBuf,
    before: BTreeSet<String>,
    damaged: usize,
    /// Packages [`Self::fetch`] downloaded.
    fetched: BTreeSet<String>,
}

/// Suffix of the file holding a cached package's sha256.
const DIGEST_SUFFIX: &str = ".sha256";

impl PackageCache {
    /// The cache the rootfs base `spec` fetches its packages into: the shared one, or
    /// `private` (a directory of that build's own) when `limit` is 0 and the cache is off.
    pub fn for_base(
        spec: &crate::spec::BaseSpec,
        limit: u64,
        private: &Path,
    ) -> Result<PackageCache> {
        let root = match limit {
            0 => private.to_path_buf(),
            _ => cache_root(),
        };
        let suite = crate::apt::suite(&spec.os.release);
        PackageCache::open(&root, &suite, &spec.system.mirror)
    }

    /// The cache for `suite` from `mirror` under `root` ([`cache_root`]), created if missing,
    /// with every package checked against its recorded sha256 and removed if it does not match
    /// (or has none).
    pub fn open(root: &Path, suite: &str, mirror: &str) -> Result<PackageCache> {
        let mirror_digest = hex::encode(Sha256::digest(mirror.trim_end_matches('/').as_bytes()));
        let dir = root.join(format!("{suite}-{}", &mirror_digest[..12]));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut before = BTreeSet::new();
        let mut damaged = 0;
        for name in debs(&dir)? {
            let path = dir.join(&name);
            let recorded = fs::read_to_string(digest_path(&path)).unwrap_or_default();
            if recorded.trim() == crate::sources::sha256_file(&path)? {
                before.insert(name);
            } else {
                remove_package(&path)?;
                damaged += 1;
            }
        }
        Ok(PackageCache {
            dir,
            before,
            damaged,
            fetched: BTreeSet::new(),
        })
    }

    /// Makes sure the cache holds every package of `set`, each matching the set's sha256: a
    /// cached file that does not is removed, and the missing ones are downloaded from
    /// `archive` (into a directory beside the cache, checked, then renamed in).
    pub fn fetch(&mut self, set: &PackageSet, archive: &Archive) -> Result<()> {
        let mut missing = Vec::new();
        for p in &set.packages {
            let name = p.file_name();
            let path = self.dir.join(&name);
            if self.before.contains(&name) {
                let recorded = fs::read_to_string(digest_path(&path)).unwrap_or_default();
                if recorded.trim() == p.sha256 {
                    continue;
                }
                remove_package(&path)?;
                self.before.remove(&name);
            }
            missing.push(p);
        }
        if missing.is_empty() {
            return Ok(());
        }
        let incoming = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempdir_in(&self.dir)?;
        archive.download(&missing, incoming.path())?;
        for p in missing {
            let name = p.file_name();
            let cached = self.dir.join(&name);
            crate::atomic::write(&digest_path(&cached), format!("{}\n", p.sha256).as_bytes())?;
            fs::rename(incoming.path().join(&name), &cached)
                .with_context(|| format!("cannot move {name} into {}", self.dir.display()))?;
            self.before.insert(name.clone());
            self.fetched.insert(name);
        }
        Ok(())
    }

    /// mmdebstrap options that put the cached packages of `set` into the tree's archive
    /// directory before the download and the packages found there into `out` after the
    /// installation: hooks rendered from `templates/rootfs-debs-{in,out}.sh.hbs` into `hooks`.
    /// Both are hard links where the file system allows (nothing writes a package in place:
    /// dpkg reads it, `apt-get clean` unlinks it), copies elsewhere; mmdebstrap's own
    /// `sync-in`/`sync-out` copy through tar, which cost more here than the download saved.
    /// The options must come before any customize hook that cleans the archive directory.
    pub fn mmdebstrap_args(
        &self,
        set: &PackageSet,
        out: &Path,
        hooks: &Path,
    ) -> Result<Vec<String>> {
        let debs_in = hooks.join("debs-in.sh");
        let names: Vec<String> = set.packages.iter().map(|p| p.file_name()).collect();
        fs::write(
            &debs_in,
            render_script(ROOTFS_DEBS_IN, &json!({ "cache": self.dir, "debs": names }))?,
        )?;
        let debs_out = hooks.join("debs-out.sh");
        fs::write(
            &debs_out,
            render_script(ROOTFS_DEBS_OUT, &json!({ "out": out }))?,
        )?;
        let hook = |path: &Path| format!("sh {} \"$1\"", sh_quote(&path.display().to_string()));
        Ok(vec![
            "--skip=essential/unlink".into(),
            format!("--setup-hook={}", hook(&debs_in)),
            format!("--customize-hook={}", hook(&debs_out)),
        ])
    }

    /// Links (else copies) the cached packages of `set` into `dir`; [`Self::fetch`] first.
    pub fn link_into(&self, set: &PackageSet, dir: &Path) -> Result<()> {
        for p in &set.packages {
            let (from, to) = (self.dir.join(p.file_name()), dir.join(p.file_name()));
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).with_context(|| {
                    format!("cannot copy {} to {}", from.display(), to.display())
                })?;
            }
            crate::sources::mark_used(&from)?;
        }
        Ok(())
    }

    /// Moves the packages mmdebstrap wrote to `out` into the cache (each by an atomic rename
    /// after its sha256 is recorded, so a concurrent build never reads half a file or a file
    /// without its digest) and marks them used now.
    pub fn absorb(&self, out: &Path) -> Result<PackageUse> {
        let mut used = PackageUse {
            damaged: self.damaged,
            downloaded: self.fetched.len(),
            ..PackageUse::default()
        };
        for name in debs(out)? {
            let cached = self.dir.join(&name);
            if self.before.contains(&name) {
                if !self.fetched.contains(&name) {
                    used.reused += 1;
                }
                crate::sources::mark_used(&cached)?;
            } else {
                used.downloaded += 1;
                let digest = crate::sources::sha256_file(&out.join(&name))?;
                crate::atomic::write(&digest_path(&cached), format!("{digest}\n").as_bytes())?;
                fs::rename(out.join(&name), &cached)
                    .with_context(|| format!("cannot move {name} into {}", self.dir.display()))?;
            }
        }
        Ok(used)
    }
}

/// Where the sha256 of the cached package `path` is kept.
fn digest_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(DIGEST_SUFFIX);
    PathBuf::from(name)
}

/// Removes a cached package and its recorded digest.
fn remove_package(path: &Path) -> Result<()> {
    fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    fs::remove_file(digest_path(path)).ok();
    Ok(())
}

/// Names of the `.deb` files in `dir`.
fn debs(dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".deb") {
            names.insert(name);
        }
    }
    Ok(names)
}

/// What a trim removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Trimmed {
    /// Files removed.
    pub files: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// Removes the least recently used packages under `root` (every release and mirror) until
/// they take at most `limit` bytes; with `dry_run`, only counts them.
pub fn trim(root: &Path, limit: u64, dry_run: bool) -> Result<Trimmed> {
    let mut files = Vec::new();
    if root.is_dir() {
        for cache in fs::read_dir(root)? {
            let cache = cache?.path();
            for name in debs(&cache)? {
                let path = cache.join(name);
                let meta = fs::metadata(&path)?;
                files.push((meta.modified()?, meta.len(), path));
            }
        }
    }
    let mut total: u64 = files.iter().map(|(_, size, _)| size).sum();
    files.sort();
    let mut trimmed = Trimmed::default();
    for (_, size, path) in files {
        if total <= limit {
            break;
        }
        if !dry_run {
            remove_package(&path)?;
        }
        total -= size;
        trimmed.files += 1;
        trimmed.bytes += size;
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn file(dir: &Path, name: &str, size: usize, age_s: u64) {
        let path = dir.join(name);
        fs::write(&path, vec![0u8; size]).unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
    }

    #[test]
    fn the_mmdebstrap_hooks_link_the_set_in_and_every_deb_out() {
        let dir = tempfile::tempdir().unwrap();
        let (cache_dir, tree, out, hooks) = (
            dir.path().join("cache dir"),
            dir.path().join("tree"),
            dir.path().join("out"),
            dir.path().join("hooks"),
        );
        for d in [&cache_dir, &tree, &out, &hooks] {
            fs::create_dir_all(d).unwrap();
        }
        let package = |name: &str, version: &str| crate::apt::Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: String::new(),
            source: String::new(),
        };
        let set = PackageSet {
            packages: vec![package("passwd", "1:4.13"), package("it's", "1.0")],
        };
        for p in &set.packages {
            fs::write(cache_dir.join(p.file_name()), p.name.as_bytes()).unwrap();
        }
        let cache = PackageCache {
            dir: cache_dir,
            before: BTreeSet::new(),
            damaged: 0,
            fetched: BTreeSet::new(),
        };
        let args = cache.mmdebstrap_args(&set, &out, &hooks).unwrap();
        for hook in ["debs-in.sh", "debs-out.sh"] {
            let script = fs::read_to_string(hooks.join(hook)).unwrap();
            crate::render::assert_valid_shell(&script);
            let arg = args.iter().find(|a| a.contains(hook)).unwrap();
            // mmdebstrap runs `sh FILE "$1"` with the tree as $1.
            let command = arg.split_once('=').unwrap().1.replace("\"$1\"", "\"$0\"");
            let status = std::process::Command::new("sh")
                .args(["-c", &command])
                .arg(&tree)
                .status()
                .unwrap();
            assert!(status.success(), "{arg}");
        }
        let archives = tree.join("var/cache/apt/archives");
        for p in &set.packages {
            assert_eq!(
                fs::read(archives.join(p.file_name())).unwrap(),
                p.name.as_bytes()
            );
            assert_eq!(
                fs::read(out.join(p.file_name())).unwrap(),
                p.name.as_bytes()
            );
        }
    }

    #[test]
    fn trim_removes_the_least_recently_used_packages_of_every_cache_first() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("bookworm-a"), root.path().join("trixie-b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        file(&a, "old_1_amd64.deb", 400, 3000);
        file(&b, "older_1_amd64.deb", 400, 4000);
        file(&a, "new_1_amd64.deb", 400, 10);
        file(&b, "Release", 400, 9000); // not a package: never counted or removed
        let trimmed = trim(root.path(), 500, false).unwrap();
        assert_eq!(
            trimmed,
            Trimmed {
                files: 2,
                bytes: 800
            }
        );
        assert!(a.join("new_1_amd64.deb").exists());
        assert!(!a.join("old_1_amd64.deb").exists());
        assert!(!b.join("older_1_amd64.deb").exists());
        assert!(b.join("Release").exists());
        assert_eq!(trim(root.path(), 500, false).unwrap(), Trimmed::default());
    }

    #[test]
    fn absorb_counts_reused_and_downloaded_packages_and_moves_only_new_ones() {
        let cache_home = tempfile::tempdir().unwrap();
        let dir = cache_home.path().join("bookworm-x");
        fs::create_dir_all(&dir).unwrap();
        file(&dir, "a_1_amd64.deb", 10, 5000);
        let cache = PackageCache {
            dir: dir.clone(),
            before: debs(&dir).unwrap(),
            damaged: 0,
            fetched: BTreeSet::new(),
        };
        let out = tempfile::tempdir().unwrap();
        file(out.path(), "a_1_amd64.deb", 10, 0);
        file(out.path(), "b_2_amd64.deb", 20, 0);
        fs::create_dir(out.path().join("partial")).unwrap();
        let used = cache.absorb(out.path()).unwrap();
        assert_eq!(
            used,
            PackageUse {
                reused: 1,
                downloaded: 1,
                damaged: 0
            }
        );
        let new = dir.join("b_2_amd64.deb");
        assert_eq!(fs::metadata(&new).unwrap().len(), 20);
        assert_eq!(
            fs::read_to_string(digest_path(&new)).unwrap().trim(),
            crate::sources::sha256_file(&new).unwrap()
        );
        let age = fs::metadata(dir.join("a_1_amd64.deb"))
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap();
        assert!(
            age < Duration::from_secs(60),
            "a reused package is marked used"
        );
    }

    #[test]
    fn a_cached_package_that_changed_or_has_no_digest_is_removed_before_use() {
        let root = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        for name in ["good_1_all.deb", "flipped_1_all.deb"] {
            fs::write(out.path().join(name), name.repeat(100)).unwrap();
        }
        let first = PackageCache::open(root.path(), "bookworm", "http://mirror/debian").unwrap();
        first.absorb(out.path()).unwrap();
        let flipped = first.dir.join("flipped_1_all.deb");
        let mut bytes = fs::read(&flipped).unwrap();
        bytes[50] ^= 0x40;
        fs::write(&flipped, bytes).unwrap();
        let stray = first.dir.join("stray_1_all.deb");
        fs::write(&stray, "no digest recorded").unwrap();

        let second = PackageCache::open(root.path(), "bookworm", "http://mirror/debian/").unwrap();
        assert_eq!(second.damaged, 2);
        assert_eq!(
            second.before,
            BTreeSet::from(["good_1_all.deb".to_string()])
        );
        assert!(!flipped.exists() && !digest_path(&flipped).exists() && !stray.exists());
    }
}
