//! Package locks: `<definition>.lock` beside a definition holds the exact package set its base
//! installs, for teams that review updates as commits. With a lock, `id`, `plan` and `build`
//! take the set from it instead of resolving it against the archive (and `build` checks the
//! archive still serves every locked package); `imgforge lock --update` writes it anew.
//!
//! The format is text, sorted, one package a line (`name version arch sha256 source`), so a
//! security update shows in review as a one-line change; an `inputs` line records the digest
//! of the sources and the request it was resolved for, so a lock that no longer fits its
//! definition is refused rather than silently used.

use crate::apt::{self, Archive, Package, Source};
pub use crate::apt::{Changes, PackageSet, Upgrade};
use crate::definition::Definition;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A definition's package set and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedPackages {
    /// The sources it was resolved from.
    pub sources: Vec<Source>,
    /// The exact set.
    pub set: PackageSet,
    /// The lock file it was read from, if any.
    pub lock: Option<PathBuf>,
}

impl ResolvedPackages {
    /// What the base id covers of it: the sources with their keys, and every package of the
    /// set by name, version, architecture and sha256 (not the packages asked of each source,
    /// which only chose the set, nor where or when it was resolved).
    pub fn identity(&self) -> serde_json::Value {
        let mut sources = self.sources.clone();
        for source in &mut sources {
            source.packages.clear();
        }
        serde_json::json!({
            "sources": apt::sources_identity(&sources),
            "set": self.set.identity(),
        })
    }

    /// The same sources with no set: what bases of one lineage share (see
    /// `spec::BaseSpec::lineage`).
    pub fn without_set(&self) -> ResolvedPackages {
        ResolvedPackages {
            set: PackageSet::new(Vec::new()),
            ..self.clone()
        }
    }

    /// What changed from the set `before` to this one, each upgrade marked when its version
    /// comes from a security source.
    pub fn changes_since(&self, before: &PackageSet) -> Changes {
        apt::changes(before, &self.set, &apt::security_sources(&self.sources))
    }
}

/// The lock file of the definition at `definition`: its name with `.lock` for `.toml`.
pub fn path_for(definition: &Path) -> PathBuf {
    definition.with_extension("lock")
}

/// Digest of what a set was resolved for: the sources and the request.
fn inputs_digest(sources: &[Source], request: &[String]) -> String {
    crate::canonical::digest(&serde_json::json!({
        "sources": apt::sources_identity(sources),
        "request": request,
    }))
}

/// The package set of `def` (Debian family; `None` for others): from its lock file when
/// there is one and `use_lock`, else resolved against the archive now.
pub fn packages(def: &Definition, use_lock: bool) -> Result<Option<ResolvedPackages>> {
    if !crate::os::family(def.os.family).resolves_packages() {
        return Ok(None);
    }
    let sources = apt::sources(def)?;
    let request = apt::request(def, &sources);
    let inputs = inputs_digest(&sources, &request);
    let lock_path = path_for(&def.path);
    if use_lock && lock_path.is_file() {
        let (recorded, set) = read(&lock_path)?;
        if recorded != inputs {
            bail!(
                "{}: this lock was written for other package sources or packages than {} now \
                 names: review the change and run `imgforge lock --update {}`",
                lock_path.display(),
                def.path.display(),
                def.path.display()
            );
        }
        return Ok(Some(ResolvedPackages {
            sources,
            set,
            lock: Some(lock_path),
        }));
    }
    let archive = Archive::for_system(&def.system, &sources)?;
    let _lock = archive.update().with_context(|| {
        format!(
            "{}: cannot resolve the base's package set, so its id cannot be known",
            def.path.display()
        )
    })?;
    let set = archive.resolve(&request)?;
    Ok(Some(ResolvedPackages {
        sources,
        set,
        lock: None,
    }))
}

/// Writes the lock of `def` (resolved now), atomically; returns its path and the packages
/// that changed from the lock it replaces.
pub fn write_lock(def: &Definition) -> Result<(PathBuf, Option<Changes>)> {
    let resolved = packages(def, false)?.with_context(|| {
        format!(
            "{}: only Debian-family definitions have a package set to lock",
            def.path.display()
        )
    })?;
    let path = path_for(&def.path);
    let before = read(&path)
        .ok()
        .map(|(_, old)| resolved.changes_since(&old));
    let request = apt::request(def, &resolved.sources);
    let mut text = format!(
        "# imgforge lock of {}: the exact packages its base installs.\n\
         # Written by `imgforge lock`; `imgforge lock --update` refreshes it.\n\
         # name version architecture sha256 source\n\
         inputs {}\n",
        def.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        inputs_digest(&resolved.sources, &request)
    );
    for p in &resolved.set.packages {
        text += &format!(
            "{} {} {} {} {}\n",
            p.name, p.version, p.arch, p.sha256, p.source
        );
    }
    crate::atomic::write(&path, text.as_bytes())?;
    Ok((path, before))
}

/// Reads a lock file: its inputs digest and its set; fails naming the line that is wrong.
fn read(path: &Path) -> Result<(String, PackageSet)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut inputs = None;
    let mut packages = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["inputs", digest] => inputs = Some(digest.to_string()),
            [name, version, arch, sha256, source]
                if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                packages.push(Package {
                    name: name.to_string(),
                    version: version.to_string(),
                    arch: arch.to_string(),
                    sha256: sha256.to_string(),
                    source: source.to_string(),
                })
            }
            _ => bail!(
                "{}:{}: not a lock line (`name version arch sha256 source`): {line}; write the \
                 lock again with `imgforge lock --update`",
                path.display(),
                n + 1
            ),
        }
    }
    let Some(inputs) = inputs else {
        bail!(
            "{}: no `inputs` line: write the lock again with `imgforge lock --update`",
            path.display()
        );
    };
    Ok((inputs, PackageSet::new(packages)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_names_the_line_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let sha = "a".repeat(64);
        std::fs::write(
            &path,
            format!("# c\ninputs abc\nzlib1g 1:1.2 amd64 {sha} debian\n"),
        )
        .unwrap();
        let (inputs, set) = read(&path).unwrap();
        assert_eq!(inputs, "abc");
        assert_eq!(set.packages[0].version, "1:1.2");
        std::fs::write(&path, format!("inputs abc\nzlib1g 1:1.2 amd64 {sha}\n")).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("x.lock:2"), "{e}");
        std::fs::write(&path, format!("zlib1g 1:1.2 amd64 {sha} debian\n")).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("inputs"));
    }

    #[test]
    fn the_lock_sits_beside_its_definition() {
        assert_eq!(
            path_for(Path::new("images/web.toml")),
            PathBuf::from("images/web.lock")
        );
    }
}
