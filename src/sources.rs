//! Inputs from outside the definition: pinned files (local or downloaded), the service
//! repository resolved to a commit, and the data snapshot resolved to a digest or a commit.
//!
//! Everything here runs before any VM starts, so a wrong checksum or a missing ref fails fast.

use crate::definition::{
    Artifact, ArtifactLocation, DataSnapshot, DataSource, Definition, Provisioner, Service,
};
use crate::process::Command;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The sha256 of a file, in lowercase hex. Holes of sparse files (disk images) are hashed as the
/// zeros they read as, without reading them.
pub fn sha256_file(path: &Path) -> Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    sha256_open(&file, path)
}

/// [`sha256_file`] of a file already open (`path` names it in errors): the bytes hashed are
/// those of this open file, whatever is at its path by now.
pub fn sha256_open(file: &std::fs::File, path: &Path) -> Result<String> {
    let read_error = || format!("{}: cannot read", path.display());
    let len = file.metadata().with_context(read_error)?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    for (start, end) in crate::disk::sparse::data_extents(file, len).with_context(read_error)? {
        hash_zeros(&mut h, start - pos);
        let mut at = start;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .with_context(read_error)?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        pos = end;
    }
    hash_zeros(&mut h, len - pos);
    Ok(hex::encode(h.finalize()))
}

/// Feeds `count` zero bytes to `h`.
fn hash_zeros(h: &mut Sha256, mut count: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while count > 0 {
        let n = count.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        count -= n as u64;
    }
}

/// Sets a cached file's modification time to now: its "last used", which `imgforge cache gc`
/// goes by.
pub fn mark_used(path: &Path) -> Result<()> {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .with_context(|| format!("cannot mark {} as used", path.display()))
}

/// (field, what is wrong) for each pinned file the definition names by a local path that is
/// not on this machine (installer media, the data tarball).
pub fn file_problems(def: &Definition) -> Vec<(String, String)> {
    def.artifacts()
        .into_iter()
        .filter_map(|(field, artifact)| match &artifact.location {
            ArtifactLocation::Path(path) => def.missing_file(format!("{field}.path"), path),
            ArtifactLocation::Url(_) => None,
        })
        .collect()
}

/// Makes a pinned file available locally and checks its sha256; `field` names it in errors.
///
/// A URL is downloaded once into the cache, under its digest, through a temporary file that is
/// renamed only after the digest matched.
pub fn fetch_artifact(
    def: &crate::definition::DefinitionFile,
    field: &str,
    artifact: &Artifact,
) -> Result<PathBuf> {
    let expected = &artifact.sha256.0;
    let url = match &artifact.location {
        ArtifactLocation::Url(url) => url,
        ArtifactLocation::Path(p) => {
            let path = def.resolve(p);
            if !path.is_file() {
                bail!(
                    "{}: field `{field}.path`: {} does not exist",
                    def.path.display(),
                    path.display()
                );
            }
            let actual = sha256_file(&path)?;
            if &actual != expected {
                bail!(
                "{}: field `{field}.sha256`: {} has sha256 {actual}, but the definition pins {expected}; \
                 if the new file is intended, put its digest in the definition",
                def.path.display(),
                path.display()
            );
            }
            return Ok(path);
        }
    };
    let dir = crate::store::Store::current().downloads();
    let cached = dir.join(expected);
    if cached.is_file() && &sha256_file(&cached)? == expected {
        // Last used now: `imgforge cache gc` keeps it.
        mark_used(&cached)?;
        return Ok(cached);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    let resp = ureq::get(url).call().with_context(|| {
        format!(
            "{}: field `{field}.url`: cannot download {url}",
            def.path.display()
        )
    })?;
    std::io::copy(&mut resp.into_reader(), &mut tmp).with_context(|| {
        format!(
            "{}: field `{field}.url`: download of {url} broke off",
            def.path.display()
        )
    })?;
    let actual = sha256_file(tmp.path())?;
    if &actual != expected {
        bail!(
            "{}: field `{field}.sha256`: {url} has sha256 {actual}, but the definition pins {expected}",
            def.path.display()
        );
    }
    tmp.persist(&cached)?;
    Ok(cached)
}

/// The repository location as git understands it: a URL as written, a local path resolved
/// against the definition.
fn repo_location(def: &Definition, repo: &str) -> String {
    if repo.contains("://") || repo.contains('@') {
        repo.to_string()
    } else {
        def.resolve(Path::new(repo)).display().to_string()
    }
}

/// Checks what can be checked of the service without the network: where its repository is on
/// this machine, that the ref exists and the unit file is in its tree.
pub fn check_local_service(def: &Definition) -> Result<()> {
    match &def.service {
        Some(s) if Path::new(&repo_location(def, &s.repo)).exists() => {
            resolve_service(def, s).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// Resolves `git_ref` in `repo` to a full commit id; `field` names it in errors.
pub fn resolve_commit(def: &Definition, field: &str, repo: &str, git_ref: &str) -> Result<String> {
    let location = repo_location(def, repo);
    let is_local = Path::new(&location).exists();
    let found = if is_local {
        Command::new("git")
            .args(["-C", &location, "rev-parse", "--verify", "--quiet"])
            .arg(format!("{git_ref}^{{commit}}"))
            .run()
            .map(|o| o.text())
            .ok()
    } else if git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(git_ref.to_string())
    } else {
        let out = Command::new("git")
            .args(["ls-remote", &location, git_ref])
            .run()
            .with_context(|| {
                format!(
                    "{}: field `{field}.repo`: cannot reach {location}",
                    def.path.display()
                )
            })?;
        out.text()
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
    };
    match found {
        Some(c) if !c.is_empty() => Ok(c),
        _ => bail!(
            "{}: field `{field}.ref`: `{git_ref}` is not a branch, tag or commit of {location}",
            def.path.display()
        ),
    }
}

/// The digest of a directory tree: every entry's path relative to `dir`, kind, executable bit
/// and contents (a symlink by its target), in sorted order. Timestamps and owners do not count.
pub fn tree_digest(dir: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.with_context(|| format!("{}: cannot read", dir.display()))?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let meta = entry.metadata()?;
        let content = if entry.path_is_symlink() {
            format!("link {}", std::fs::read_link(entry.path())?.display())
        } else if meta.is_dir() {
            "dir".to_string()
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            format!("file {exec} {}", sha256_file(entry.path())?)
        };
        h.update(format!("{}\0{content}\n", rel.display()));
    }
    Ok(hex::encode(h.finalize()))
}

/// Copies the directory tree `from` to `to` (created), keeping modes and symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.with_context(|| format!("{}: cannot read", from.display()))?;
        let dest = to.join(entry.path().strip_prefix(from).unwrap_or(entry.path()));
        let copied = if entry.path_is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)
        } else if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest)
        } else {
            std::fs::copy(entry.path(), &dest).map(|_| ())
        };
        copied.with_context(|| {
            format!(
                "cannot copy {} to {}",
                entry.path().display(),
                dest.display()
            )
        })?;
    }
    Ok(())
}

/// The service layer with its ref resolved.
#[derive(Debug, Clone)]
pub struct ResolvedService {
    /// Repository location given to git.
    pub location: String,
    /// Full commit id.
    pub commit: String,
}

/// Resolves the service repository's ref to a commit.
pub fn resolve_service(def: &Definition, service: &Service) -> Result<ResolvedService> {
    let location = repo_location(def, &service.repo);
    let commit = resolve_commit(def, "service", &service.repo, &service.git_ref)?;
    // A file the definition expects in the tree (the unit, a playbook) that is not there fails
    // here, before any VM, where the repository is local (a remote one is checked when its
    // tree is unpacked in the bake).
    if Path::new(&location).exists() {
        for (field, file) in files_in_service(def, service) {
            let in_tree = match &service.subdir {
                Some(sub) => format!("{}/{file}", sub.trim_end_matches('/')),
                None => file,
            };
            let found = Command::new("git")
                .args(["-C", &location, "cat-file", "-e"])
                .arg(format!("{commit}:{in_tree}"))
                .run();
            if found.is_err() {
                bail!(
                    "{}: field `{field}`: {in_tree} is not in {location} at commit {commit}; \
                     commit the file, or name the file the service tree has",
                    def.path.display()
                );
            }
        }
    }
    Ok(ResolvedService { location, commit })
}

/// (field, path in the service tree) of every file the definition expects the service to have.
fn files_in_service(def: &Definition, service: &Service) -> Vec<(String, String)> {
    let unit = service
        .unit
        .iter()
        .map(|u| ("service.unit".to_string(), u.clone()));
    let playbooks = def
        .provisioners
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Provisioner::Ansible(a) if a.in_service => Some((
                format!("provisioners[{i}].playbook"),
                a.playbook.display().to_string(),
            )),
            _ => None,
        });
    unit.chain(playbooks).collect()
}

/// The data snapshot, verified and resolved.
#[derive(Debug, Clone)]
pub enum ResolvedData {
    /// A tarball whose sha256 matched the definition.
    Tarball {
        /// Local path of the verified tarball.
        path: PathBuf,
        /// Its sha256.
        sha256: String,
    },
    /// A git repository at a commit.
    Git {
        /// Repository location given to git.
        location: String,
        /// Full commit id.
        commit: String,
    },
}

impl ResolvedData {
    /// The digest that identifies the data: the tarball's sha256 or the commit id.
    pub fn digest(&self) -> &str {
        match self {
            ResolvedData::Tarball { sha256, .. } => sha256,
            ResolvedData::Git { commit, .. } => commit,
        }
    }
}

/// Verifies the tarball against its pinned sha256, or resolves the git ref.
pub fn resolve_data(def: &Definition, data: &DataSnapshot) -> Result<ResolvedData> {
    Ok(match &data.source {
        DataSource::Tarball(t) => ResolvedData::Tarball {
            path: fetch_artifact(&def.file(), "data.tarball", t)?,
            sha256: t.sha256.0.clone(),
        },
        DataSource::Git(g) => ResolvedData::Git {
            location: repo_location(def, &g.repo),
            commit: resolve_commit(def, "data.git", &g.repo, &g.git_ref)?,
        },
    })
}

/// Writes `git archive` of `commit` (optionally only `subdir`) from `location` as a tar file.
pub fn git_archive(
    location: &str,
    commit: &str,
    subdir: Option<&str>,
    dest_tar: &Path,
) -> Result<()> {
    let work = tempfile::tempdir()?;
    let is_local = Path::new(location).exists();
    let repo = if is_local {
        PathBuf::from(location)
    } else {
        let clone = work.path().join("repo");
        Command::new("git")
            .args([
                "clone",
                "--quiet",
                "--no-checkout",
                "--filter=blob:none",
                location,
            ])
            .arg(&clone)
            .run()?;
        clone
    };
    let mut cmd = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["archive", "--format=tar", "-o"])
        .arg(dest_tar);
    match subdir {
        Some(s) => cmd = cmd.arg(format!("{commit}:{}", s.trim_matches('/'))),
        None => cmd = cmd.arg(commit),
    }
    cmd.run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_hashes_like_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len((8 << 20) + 3).unwrap();
        f.write_all_at(&[7u8; 5000], 1 << 20).unwrap();
        f.write_all_at(b"end", 8 << 20).unwrap();
        drop(f);
        let want = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
        assert_eq!(sha256_file(&path).unwrap(), want);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            sha256_file(&empty).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
