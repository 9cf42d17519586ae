//! A disk image's root filesystem mounted through a loop device, for the steps that work on
//! an image's file tree on the host (the chroot bake, the seal); unmounted and detached when
//! dropped, whatever happened in between.

use crate::process::Command;
use anyhow::{Context, Result};
use std::path::Path;

/// How the root filesystem is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `mount -o ro`.
    ReadOnly,
    /// Read-write, for a bake.
    ReadWrite,
}

/// The root filesystem of a raw disk, mounted through a loop device.
pub struct RootMount {
    dir: tempfile::TempDir,
    device: String,
}

impl RootMount {
    /// Mounts each partition of `raw` in turn and keeps the first whose tree `is_root` accepts
    /// (its OS family's test, `os::Family::is_root`); `None` if none does. The mount
    /// point is a new directory in `work`.
    pub fn find(
        raw: &Path,
        work: &Path,
        access: Access,
        is_root: &dyn Fn(&Path) -> bool,
    ) -> Result<Option<RootMount>> {
        for (start, size) in candidates(raw)? {
            let device = Command::new("losetup")
                .args(["--find", "--show", "--offset", &start.to_string()])
                .args(["--sizelimit", &size.to_string()])
                .arg(raw)
                .run()
                .context(
                    "cannot attach the baked disk to a loop device (sealing an image needs root)",
                )?
                .text();
            let mount = RootMount {
                dir: tempfile::Builder::new().prefix("root-").tempdir_in(work)?,
                device,
            };
            let options = match access {
                Access::ReadOnly => "ro",
                Access::ReadWrite => "rw",
            };
            let mounted = Command::new("mount")
                .args(["-o", options, &mount.device])
                .arg(mount.dir.path())
                .run();
            if mounted.is_ok() && is_root(mount.path()) {
                return Ok(Some(mount));
            }
        }
        Ok(None)
    }

    /// Unmounts, reporting a failure (a bake's writes reach the disk only when this succeeds);
    /// the loop device is detached when the value is dropped.
    pub fn unmount(self) -> Result<()> {
        Command::new("umount")
            .arg(self.dir.path())
            .run()
            .with_context(|| format!("cannot unmount {}", self.dir.path().display()))?;
        Ok(())
    }

    /// The mount point: the image's `/`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        // Already unmounted by `unmount`, or never mounted: umount says so, harmlessly.
        let _ = Command::new("umount").arg(self.dir.path()).run_unchecked();
        if let Err(e) = Command::new("losetup").args(["-d", &self.device]).run() {
            tracing::warn!("cannot detach {}: {e:#}", self.device);
        }
    }
}

/// The partitions of a disk image as (offset, size) in bytes, from `sfdisk --json`.
fn partitions(raw: &Path) -> Result<Vec<(u64, u64)>> {
    let out = Command::new("sfdisk").arg("--json").arg(raw).run()?;
    let table: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: sfdisk printed no partition table", raw.display()))?;
    let table = &table["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    Ok(table["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["start"].as_u64()? * sector, p["size"].as_u64()? * sector)))
        .collect())
}

/// Where a root filesystem may be: each partition, or the whole disk when it has no
/// partition table.
fn candidates(raw: &Path) -> Result<Vec<(u64, u64)>> {
    match partitions(raw) {
        Ok(found) if !found.is_empty() => Ok(found),
        _ => Ok(vec![(0, std::fs::metadata(raw)?.len())]),
    }
}
