//! `manifest.json`: the record of one build, written next to its artifacts and read by
//! `verify`, `register` and `rotate`.

use crate::definition::{Arch, Check, DiskFormat, Firmware, Machine, Publish};
use crate::layers::LayerIds;
use crate::spec::Specs;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the manifest inside a build's output directory.
pub const FILE_NAME: &str = "manifest.json";

/// File name of the digest list beside the manifest (`sha256sum -c` reads it).
pub const SUMS_FILE_NAME: &str = "SHA256SUMS";

/// An artifact on disk that is not what its build recorded.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The manifest names a file outside the build directory, or a link.
    #[error(
        "{manifest}: it names `{file}`, which is not a plain file of the build's directory \
         ({reason}); a manifest that points elsewhere is refused"
    )]
    OutsideBuild {
        /// The manifest.
        manifest: PathBuf,
        /// The name it records.
        file: String,
        /// What makes it unsafe.
        reason: &'static str,
    },
    /// The file is gone.
    #[error("{path}: the artifact is missing; {remedy}")]
    Missing {
        /// The artifact's path.
        path: PathBuf,
        /// What to do about it.
        remedy: String,
    },
    /// The file's length differs from the recorded size.
    #[error(
        "{path}: the artifact has {actual} bytes, but {manifest} records {expected}; {remedy}"
    )]
    Size {
        /// The artifact's path.
        path: PathBuf,
        /// The manifest.
        manifest: PathBuf,
        /// Recorded size.
        expected: u64,
        /// Size on disk.
        actual: u64,
        /// What to do about it.
        remedy: String,
    },
    /// The file's sha256 differs from the recorded one.
    #[error(
        "{path}: the artifact's sha256 is {actual}, but {recorded_in} records {expected}: \
         it changed after the build; {remedy}"
    )]
    Digest {
        /// The artifact's path.
        path: PathBuf,
        /// The file that recorded the expected digest (manifest.json or SHA256SUMS).
        recorded_in: PathBuf,
        /// Recorded digest.
        expected: String,
        /// Digest of the bytes on disk.
        actual: String,
        /// What to do about it.
        remedy: String,
    },
    /// `SHA256SUMS` is missing, unreadable or does not list the artifact.
    #[error("{sums}: {problem}; {remedy}")]
    Sums {
        /// The SHA256SUMS file.
        sums: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What to do about it.
        remedy: String,
    },
}

/// Where a build came from. Computed once per build, then written into the image
/// (`/etc/imgforge/build.json`, [`Provenance::image_record`]), into the manifest, and onto the
/// registered image as tags (by `register`), so the three always agree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    /// imgforge version that built it.
    pub imgforge_version: String,
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// Layer ids; `ids.build` names the output directory.
    pub ids: LayerIds,
    /// Service repository and commit, if a service was baked.
    #[serde(default)]
    pub service: Option<ServiceRecord>,
    /// Digest of the data snapshot (tarball sha256 or git commit), if one was baked.
    #[serde(default)]
    pub data_digest: Option<String>,
    /// RFC 3339 time the build started its steps (after its ids were known); kept out of the
    /// image, which carries [`Self::source_date_epoch`] instead.
    pub built_at: String,
    /// The time every timestamp in the image is clamped to (`SOURCE_DATE_EPOCH`).
    #[serde(default)]
    pub source_date_epoch: Option<u32>,
    /// The package sources and the exact package set of the base (Debian family): what
    /// `plan` compares the archive with, and what `imgforge outdated` checks.
    #[serde(default)]
    pub packages: Option<crate::lock::ResolvedPackages>,
}

impl Provenance {
    /// The provenance of building `specs` (whose ids are `ids`), stamped now.
    pub fn new(specs: &Specs, ids: &LayerIds) -> Provenance {
        let bake = &specs.bake;
        Provenance {
            imgforge_version: env!("CARGO_PKG_VERSION").to_string(),
            name: bake.image.name.clone(),
            version: bake.image.version.clone(),
            ids: ids.clone(),
            service: bake.service.as_ref().map(|s| ServiceRecord {
                repo: s.repo.clone(),
                commit: s.commit.clone(),
            }),
            data_digest: bake.data.as_ref().map(|d| d.digest.clone()),
            built_at: now_rfc3339(),
            source_date_epoch: Some(bake.source_date_epoch),
            packages: specs.base.packages.clone(),
        }
    }

    /// `/etc/imgforge/build.json` as the image carries it: only what the bake id covers (no
    /// build time, no build id: one bake layer serves builds of several output settings);
    /// `packages` and `tools` (the versions of what the provisioners ran) are placeholders
    /// filled in inside the image.
    pub fn image_record(&self, packages: &str, tools: &str) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "version": self.version,
            "base_id": self.ids.base,
            "bake_id": self.ids.bake,
            "service": self.service,
            "data_sha256": self.data_digest,
            "imgforge_version": self.imgforge_version,
            "source_date_epoch": self.source_date_epoch,
            "packages": packages,
            "tools": tools,
        })
    }
}

/// Everything known about one build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Where the build came from (its fields sit at the top level of the JSON).
    #[serde(flatten)]
    pub provenance: Provenance,
    /// Image description.
    #[serde(default)]
    pub description: Option<String>,
    /// The definition file it was built from.
    pub definition: PathBuf,
    /// Boot firmware the image expects.
    pub firmware: Firmware,
    /// CPU architecture.
    pub arch: Arch,
    /// Disk size in bytes (virtual size of every artifact).
    pub disk_size: u64,
    /// The exported disk images.
    pub artifacts: Vec<ArtifactRecord>,
    /// What the image holds: package list, file list and SPDX SBOM (absent before 0.1.0's
    /// seal step).
    #[serde(default)]
    pub documents: Vec<DocumentRecord>,
    /// Whether the disk was written reproducibly (same inputs, same bytes; rootfs builder).
    #[serde(default)]
    pub reproducible: bool,
    /// Seconds spent in each phase.
    #[serde(default)]
    pub timings: BTreeMap<String, f64>,
    /// Versions of the external tools used.
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    /// The definition's checks, for `imgforge verify`.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// The definition's publish targets, for `build --register`.
    #[serde(default)]
    pub publish: Publish,
    /// The machine the checks ran on (CPUs, memory, accelerator choice, boot timeout), which
    /// `imgforge verify` boots again; absent in manifests of imgforge before 0.1.0's verify.
    #[serde(default)]
    pub machine: Option<Machine>,
}

/// The baked service's origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Repository location.
    pub repo: String,
    /// Full commit id.
    pub commit: String,
}

/// One exported disk image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Disk format.
    pub format: DiskFormat,
    /// File name, relative to the manifest's directory.
    pub file: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// sha256 of the file.
    pub sha256: String,
}

/// What a document beside the artifacts records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentKind {
    /// The installed packages (`name version architecture`).
    Packages,
    /// Every path with its mode, owner, size and digest.
    Files,
    /// SPDX 2.3 JSON software bill of materials.
    Sbom,
    /// A Vagrant box catalogue listing the build's `vagrant-libvirt` box.
    #[serde(rename = "vagrant-catalogue")]
    VagrantCatalogue,
}

/// One document written beside the artifacts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentRecord {
    /// What it records.
    pub kind: DocumentKind,
    /// File name, relative to the manifest's directory.
    pub file: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// sha256 of the file.
    pub sha256: String,
}

impl DocumentRecord {
    /// The record of `bytes` written as `file`.
    pub fn of(kind: DocumentKind, file: String, bytes: &[u8]) -> DocumentRecord {
        use sha2::Digest;
        DocumentRecord {
            kind,
            file,
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }
}

/// A file a manifest records by name, size and sha256: an artifact or a document.
pub trait RecordedFile {
    /// File name, relative to the manifest's directory.
    fn file(&self) -> &str;
    /// Recorded size.
    fn size(&self) -> u64;
    /// Recorded sha256.
    fn sha256(&self) -> &str;
}

/// Both kinds of record carry the same three fields.
macro_rules! recorded_file {
    ($($record:ty),*) => {$(
        impl RecordedFile for $record {
            fn file(&self) -> &str {
                &self.file
            }
            fn size(&self) -> u64 {
                self.size
            }
            fn sha256(&self) -> &str {
                &self.sha256
            }
        }
    )*};
}
recorded_file!(ArtifactRecord, DocumentRecord);

/// The current time in RFC 3339 (UTC).
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The artifact QEMU boots to verify a build: the qcow2 if there is one, else the raw.
pub fn bootable(artifacts: &[ArtifactRecord]) -> Option<&ArtifactRecord> {
    [DiskFormat::Qcow2, DiskFormat::Raw]
        .into_iter()
        .find_map(|f| artifacts.iter().find(|a| a.format == f))
}

/// A recorded file opened once and checked: whoever swaps another file in at its path
/// afterwards changes nothing, since this process reads the open file and hands other
/// programs its `/proc/PID/fd/N` path, which opens the same file.
#[derive(Debug)]
pub struct PinnedFile {
    file: std::fs::File,
    path: PathBuf,
}

impl PinnedFile {
    /// The open file.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// A path to this very file for other programs (valid while `self` lives).
    pub fn pinned_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// The path it was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This very file under its own name in `dir` (a directory of ours), for programs that go
    /// by a file's name or extension: a hard link on the same file system, else (another file
    /// system, or the file was swapped away from its path and has no name left) a copy of the
    /// bytes read from the open file.
    pub fn link_into(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let name = self.path.file_name().unwrap_or("disk".as_ref());
        let linked = dir.join(name);
        if link_followed(&self.pinned_path(), &linked).is_err() {
            let mut from = &self.file;
            std::io::Seek::seek(&mut from, std::io::SeekFrom::Start(0))?;
            std::io::copy(&mut from, &mut std::fs::File::create(&linked)?)?;
        }
        Ok(linked)
    }
}

/// Hard-links `to` to the file `from` leads to (`linkat` with `AT_SYMLINK_FOLLOW`: for a
/// `/proc/PID/fd/N` path, the open file itself).
fn link_followed(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The directory holding a build's manifest and artifacts.
pub(crate) fn build_dir(manifest_path: &Path) -> &Path {
    match manifest_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

impl Manifest {
    /// Reads a manifest.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the build manifest", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not an imgforge manifest.json", path.display()))
    }

    /// The record of the artifact of `format`.
    pub fn artifact(&self, format: DiskFormat) -> Option<&ArtifactRecord> {
        self.artifacts.iter().find(|a| a.format == format)
    }

    /// The artifact QEMU boots to verify the build (see [`bootable`]).
    pub fn bootable_artifact(&self) -> Option<&ArtifactRecord> {
        bootable(&self.artifacts)
    }

    /// The command that makes this build's output again, for error messages.
    pub fn rebuild_hint(&self) -> String {
        format!(
            "rebuild it with `imgforge build --force {}`",
            self.definition.display()
        )
    }

    /// Opens `record`'s file once, reads it in full and compares its size and sha256 with this
    /// manifest and with `SHA256SUMS`; returns it open. Every consumer calls this before using
    /// an artifact, and uses it through what this returns, never its path again.
    pub fn checked_artifact(
        &self,
        manifest_path: &Path,
        record: &(impl RecordedFile + ?Sized),
    ) -> Result<PinnedFile, ArtifactError> {
        let path = self.checked_size(manifest_path, record)?;
        let sums = build_dir(manifest_path).join(SUMS_FILE_NAME);
        let listed = self.sums_entry(&sums, record.file())?;
        let unreadable = |e: &dyn std::fmt::Display| ArtifactError::Missing {
            path: path.clone(),
            remedy: format!("it cannot be read ({e:#}); {}", self.rebuild_hint()),
        };
        let file = std::fs::File::open(&path).map_err(|e| unreadable(&e))?;
        // The size again, of the file now open: it may have been swapped since.
        let size = file.metadata().map_err(|e| unreadable(&e))?.len();
        if size != record.size() {
            return Err(ArtifactError::Size {
                path,
                manifest: manifest_path.to_path_buf(),
                expected: record.size(),
                actual: size,
                remedy: self.rebuild_hint(),
            });
        }
        let actual = crate::sources::sha256_open(&file, &path).map_err(|e| unreadable(&e))?;
        for (expected, recorded_in) in [
            (record.sha256(), manifest_path.to_path_buf()),
            (&listed, sums),
        ] {
            if actual != expected {
                return Err(ArtifactError::Digest {
                    path,
                    recorded_in,
                    expected: expected.to_string(),
                    actual,
                    remedy: self.rebuild_hint(),
                });
            }
        }
        // Readers of the open file start from its first byte, not where hashing left off.
        let mut file = file;
        std::io::Seek::rewind(&mut file).map_err(|e| unreadable(&e))?;
        Ok(PinnedFile { file, path })
    }

    /// Every recorded file checked in full (see [`Self::checked_artifact`]): a file's times
    /// are not evidence, since whoever can change it can set them back.
    pub fn check_all(&self, manifest_path: &Path) -> Result<(), ArtifactError> {
        for record in self.recorded_files() {
            self.checked_artifact(manifest_path, record)?;
        }
        Ok(())
    }

    /// Every file the manifest records: artifacts, then documents.
    pub fn recorded_files(&self) -> impl Iterator<Item = &dyn RecordedFile> {
        let artifacts = self.artifacts.iter().map(|a| a as &dyn RecordedFile);
        artifacts.chain(self.documents.iter().map(|d| d as &dyn RecordedFile))
    }

    /// The record of the document of `kind`.
    pub fn document(&self, kind: DocumentKind) -> Option<&DocumentRecord> {
        self.documents.iter().find(|d| d.kind == kind)
    }

    fn checked_size(
        &self,
        manifest_path: &Path,
        record: &(impl RecordedFile + ?Sized),
    ) -> Result<PathBuf, ArtifactError> {
        let file = record.file();
        let mut parts = Path::new(file).components();
        let plain = matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        );
        if !plain {
            return Err(ArtifactError::OutsideBuild {
                manifest: manifest_path.to_path_buf(),
                file: file.to_string(),
                reason: "a path, not a file name",
            });
        }
        let path = build_dir(manifest_path).join(file);
        // Not followed: a link could stand for any file on this machine.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ArtifactError::OutsideBuild {
                manifest: manifest_path.to_path_buf(),
                file: file.to_string(),
                reason: "a symbolic link",
            });
        }
        let actual = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            _ => {
                return Err(ArtifactError::Missing {
                    path,
                    remedy: self.rebuild_hint(),
                })
            }
        };
        if actual != record.size() {
            return Err(ArtifactError::Size {
                path,
                manifest: manifest_path.to_path_buf(),
                expected: record.size(),
                actual,
                remedy: self.rebuild_hint(),
            });
        }
        Ok(path)
    }

    /// The digest `SHA256SUMS` lists for `file`.
    fn sums_entry(&self, sums: &Path, file: &str) -> Result<String, ArtifactError> {
        let problem = |problem: String| ArtifactError::Sums {
            sums: sums.to_path_buf(),
            problem,
            remedy: self.rebuild_hint(),
        };
        let text = std::fs::read_to_string(sums)
            .map_err(|e| problem(format!("cannot read the build's digest list ({e})")))?;
        text.lines()
            .filter_map(|l| l.split_once("  "))
            .find(|(_, name)| name.trim_start_matches('*') == file)
            .map(|(digest, _)| digest.to_string())
            .ok_or_else(|| problem(format!("{file} is not listed")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A build directory with one raw artifact, its manifest and SHA256SUMS, as a build writes
    /// them (the artifact first, then the digests).
    fn build(dir: &Path) -> (Manifest, PathBuf) {
        let file = dir.join("img.raw");
        std::fs::write(&file, b"boot sector and more").unwrap();
        let sha256 = crate::sources::sha256_file(&file).unwrap();
        std::fs::write(dir.join(SUMS_FILE_NAME), format!("{sha256}  img.raw\n")).unwrap();
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "imgforge_version": "0.1.0", "name": "t", "version": "1", "definition": "t.toml",
            "ids": { "base": "a", "bake": "b", "build": "c" },
            "firmware": "bios", "arch": "x86_64", "disk_size": 20,
            "artifacts": [{ "format": "raw", "file": "img.raw", "size": 20, "sha256": sha256 }],
            "built_at": "2026-11-26T00:00:00Z",
            "machine": { "cpus": 1, "memory_mib": 512, "timeouts": { "boot": "90s" } },
        }))
        .unwrap();
        let path = dir.join(FILE_NAME);
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        (manifest, path)
    }

    #[test]
    fn the_machine_settings_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (_, path) = build(dir.path());
        let machine = Manifest::load(&path).unwrap().machine.unwrap();
        assert_eq!((machine.cpus, machine.memory_mib), (1, 512));
        assert_eq!(machine.timeouts.boot.0, Duration::from_secs(90));
    }

    #[test]
    fn an_intact_build_passes_both_checks() {
        let dir = tempfile::tempdir().unwrap();
        let (m, path) = build(dir.path());
        m.check_all(&path).unwrap();
        assert_eq!(
            m.checked_artifact(&path, &m.artifacts[0]).unwrap().path(),
            dir.path().join("img.raw")
        );
    }

    #[test]
    fn a_missing_or_resized_artifact_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let (m, path) = build(dir.path());
        let file = dir.path().join("img.raw");
        std::fs::write(&file, b"short").unwrap();
        let e = m.check_all(&path).unwrap_err();
        assert!(
            matches!(
                e,
                ArtifactError::Size {
                    actual: 5,
                    expected: 20,
                    ..
                }
            ),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();
        let e = m.check_all(&path).unwrap_err().to_string();
        assert!(e.contains("img.raw: the artifact is missing"), "{e}");
        assert!(e.contains("imgforge build --force t.toml"), "{e}");
    }

    #[test]
    fn a_file_swapped_in_after_the_check_is_never_what_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let (m, path) = build(dir.path());
        let pinned = m.checked_artifact(&path, &m.artifacts[0]).unwrap();
        // Another file, same size, renamed over the artifact after it was checked.
        let evil = dir.path().join("evil");
        std::fs::write(&evil, b"EVIL sector and more").unwrap();
        std::fs::rename(&evil, dir.path().join("img.raw")).unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(read(&pinned.pinned_path()), b"boot sector and more");
        let mut from_open_file = Vec::new();
        std::io::Read::read_to_end(&mut pinned.file(), &mut from_open_file).unwrap();
        assert_eq!(
            from_open_file, b"boot sector and more",
            "read from its first byte"
        );
        let work = tempfile::tempdir_in(dir.path()).unwrap();
        let linked = pinned.link_into(work.path()).unwrap();
        assert_eq!(linked.file_name().unwrap(), "img.raw");
        assert_eq!(read(&linked), b"boot sector and more");
        assert!(
            m.check_all(&path).is_err(),
            "the swapped file itself is refused"
        );
    }

    #[test]
    fn a_same_size_change_with_its_old_time_put_back_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (m, path) = build(dir.path());
        let file = dir.path().join("img.raw");
        let before = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::fs::write(&file, b"Boot sector and more").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(before - Duration::from_secs(3600))
            .unwrap();
        let e = m.check_all(&path).unwrap_err();
        assert!(matches!(e, ArtifactError::Digest { .. }), "{e}");
    }

    #[test]
    fn a_manifest_naming_a_file_outside_its_build_or_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let build_dir = dir.path().join("build");
        std::fs::create_dir(&build_dir).unwrap();
        let (mut m, path) = build(&build_dir);
        let good = m.artifacts[0].file.clone();
        std::fs::copy(build_dir.join(&good), dir.path().join("img.raw")).unwrap();
        let outside = dir.path().join("img.raw").display().to_string();
        for name in ["../img.raw", outside.as_str(), "sub/img.raw"] {
            m.artifacts[0].file = name.to_string();
            let e = m.checked_artifact(&path, &m.artifacts[0]).unwrap_err();
            assert!(
                matches!(e, ArtifactError::OutsideBuild { .. }),
                "{name}: {e}"
            );
            assert!(m.check_all(&path).is_err());
        }
        // A link in the build directory to a file with the right bytes elsewhere.
        m.artifacts[0].file = good.clone();
        std::fs::remove_file(build_dir.join(&good)).unwrap();
        std::os::unix::fs::symlink(dir.path().join("img.raw"), build_dir.join(&good)).unwrap();
        let e = m.checked_artifact(&path, &m.artifacts[0]).unwrap_err();
        assert!(e.to_string().contains("a symbolic link"), "{e}");
    }

    #[test]
    fn a_changed_byte_is_found_by_its_digest_and_a_mere_touch_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (m, path) = build(dir.path());
        let file = dir.path().join("img.raw");
        let rewrite_later = |bytes: &[u8]| {
            std::fs::write(&file, bytes).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(SystemTime::now() + Duration::from_secs(5))
                .unwrap();
        };
        // Rewritten with the same bytes after the manifest: hashed, and found intact.
        rewrite_later(b"boot sector and more");
        m.check_all(&path).unwrap();
        // One byte changed, same size.
        rewrite_later(b"Boot sector and more");
        let e = m.check_all(&path).unwrap_err();
        assert!(
            matches!(&e, ArtifactError::Digest { expected, actual, .. }
                if *expected == m.artifacts[0].sha256 && actual != expected),
            "{e}"
        );
        assert!(e.to_string().contains("changed after the build"), "{e}");
        assert!(m.checked_artifact(&path, &m.artifacts[0]).is_err());
    }

    #[test]
    fn sha256sums_must_list_the_artifact_with_the_manifests_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (m, path) = build(dir.path());
        let sums = dir.path().join(SUMS_FILE_NAME);
        std::fs::write(&sums, format!("{}  img.raw\n", "f".repeat(64))).unwrap();
        let e = m.checked_artifact(&path, &m.artifacts[0]).unwrap_err();
        assert!(
            matches!(&e, ArtifactError::Digest { recorded_in, .. } if *recorded_in == sums),
            "{e}"
        );
        assert!(m.check_all(&path).is_err());
        std::fs::write(&sums, "").unwrap();
        let e = m.check_all(&path).unwrap_err().to_string();
        assert!(e.contains("img.raw is not listed"), "{e}");
        std::fs::remove_file(&sums).unwrap();
        let e = m
            .checked_artifact(&path, &m.artifacts[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SHA256SUMS: cannot read"), "{e}");
    }
}
