//! Keeping the local cache in bounds (`imgforge cache gc`): base layers, downloads, kept package
//! resolutions and left-over work directories not used for a while are removed, and the
//! package cache is trimmed to its size limit.
//!
//! "Used" is a file's modification time: a build touches the base's `base.json`, a download and
//! each cached package it takes. A base that a build holds (its lock is taken) is never removed.

use crate::base::packages::{self, Trimmed};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What to keep.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Remove base layers, downloads and work directories not used for this long.
    pub max_age: Duration,
    /// Trim the package cache to this many bytes.
    pub packages_max_size: u64,
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
}

/// What a collection removed (or, with `dry_run`, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Base layer ids.
    pub bases: Vec<String>,
    /// Other entries (downloads, work directories, staging left by killed builds), as paths.
    pub other: Vec<PathBuf>,
    /// Packages trimmed from the package cache.
    pub packages: Trimmed,
    /// Disk space freed, in bytes (allocated blocks, so sparse disks count what they hold).
    pub freed_bytes: u64,
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
}

/// Collects the cache under `root` (the directory of `IMGFORGE_CACHE`).
pub fn gc(root: &Path, opts: &GcOptions) -> Result<GcReport> {
    let now = SystemTime::now();
    let stale = |path: &Path| -> Result<bool> {
        let modified = fs::symlink_metadata(path)?.modified()?;
        Ok(now.duration_since(modified).unwrap_or_default() > opts.max_age)
    };
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let store = crate::store::Store::at(root);
    for dir in entries(&store.bases())? {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let staging = name.starts_with(crate::store::STAGING_PREFIX);
        let last_used = if staging {
            dir.clone()
        } else {
            dir.join("base.json")
        };
        if !stale(if last_used.exists() { &last_used } else { &dir })? {
            continue;
        }
        // Held while removing, so no build opens the base meanwhile; a held lock means in use.
        let lock = (!staging).then(|| store.base_lock(&name)).transpose()?;
        if lock.as_ref().is_some_and(|l| l.try_lock().is_err()) {
            continue;
        }
        report.freed_bytes += remove(&dir, opts.dry_run)?;
        match staging {
            true => report.other.push(dir),
            false => report.bases.push(name),
        }
    }
    let mut dirs = vec![store.downloads(), store.work(), store.logs()];
    for state in entries(&store.apt_states())? {
        dirs.push(crate::store::Store::resolutions(&state));
    }
    for dir in dirs {
        for entry in entries(&dir)? {
            if stale(&entry)? {
                report.freed_bytes += remove(&entry, opts.dry_run)?;
                report.other.push(entry);
            }
        }
    }
    report.packages = packages::trim(&store.packages(), opts.packages_max_size, opts.dry_run)?;
    report.freed_bytes += report.packages.bytes;
    Ok(report)
}

/// The entries of `dir`, or none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        paths.push(entry?.path());
    }
    paths.sort();
    Ok(paths)
}

/// Removes `path` (file or directory) unless `dry_run`; returns the bytes it held on disk.
fn remove(path: &Path, dry_run: bool) -> Result<u64> {
    let bytes = disk_usage(path)?;
    if !dry_run {
        let removed = match fs::symlink_metadata(path)?.is_dir() {
            true => fs::remove_dir_all(path),
            false => fs::remove_file(path),
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(bytes)
}

/// Bytes allocated to `path` and everything under it.
fn disk_usage(path: &Path) -> Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            bytes += disk_usage(&entry?.path())?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aged(path: &Path, age: Duration) {
        fs::File::open(path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
    }

    fn base(root: &Path, id: &str, age: Duration) -> PathBuf {
        let dir = root.join("base").join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("disk.qcow2"), vec![1u8; 8192]).unwrap();
        fs::write(dir.join("base.json"), "{}").unwrap();
        aged(&dir.join("base.json"), age);
        dir
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn gc_removes_what_was_not_used_within_max_age_and_keeps_held_and_recent_layers() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let old = base(r, "old", 40 * DAY);
        let recent = base(r, "recent", DAY);
        let held = base(r, "held", 40 * DAY);
        let lock = crate::store::Store::at(r).base_lock("held").unwrap();
        lock.lock().unwrap();
        fs::create_dir_all(r.join("downloads")).unwrap();
        let stale_download = r.join("downloads/aaaa");
        let fresh_download = r.join("downloads/bbbb");
        fs::write(&stale_download, vec![2u8; 4096]).unwrap();
        fs::write(&fresh_download, vec![2u8; 4096]).unwrap();
        aged(&stale_download, 31 * DAY);
        let resolved = crate::store::Store::resolutions(&crate::store::Store::at(r).apt("0123"));
        fs::create_dir_all(&resolved).unwrap();
        let (stale_resolution, fresh_resolution) =
            (resolved.join("a.json"), resolved.join("b.json"));
        fs::write(&stale_resolution, "{}").unwrap();
        fs::write(&fresh_resolution, "{}").unwrap();
        aged(&stale_resolution, 31 * DAY);
        let opts = GcOptions {
            max_age: 30 * DAY,
            packages_max_size: 1 << 30,
            dry_run: true,
        };

        let dry = gc(r, &opts).unwrap();
        assert_eq!(dry.bases, ["old"]);
        assert_eq!(
            dry.other,
            [stale_download.clone(), stale_resolution.clone()]
        );
        assert!(dry.freed_bytes >= 8192 + 4096, "{dry:?}");
        assert!(
            old.exists() && stale_download.exists(),
            "a dry run removes nothing"
        );

        let done = gc(
            r,
            &GcOptions {
                dry_run: false,
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(done.bases, ["old"]);
        assert!(!old.exists() && !stale_download.exists() && !stale_resolution.exists());
        assert!(recent.exists() && held.exists() && fresh_download.exists());
        assert!(fresh_resolution.exists());

        // Released, it goes too. A child that another test forks in this process shares the
        // lock's descriptor until it execs, so the release may show a moment later.
        drop(lock);
        let opts = GcOptions {
            dry_run: false,
            ..opts
        };
        let mut removed = Vec::new();
        for _ in 0..100 {
            removed = gc(r, &opts).unwrap().bases;
            if !removed.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(removed, ["held"], "released, it goes too");
    }
}
