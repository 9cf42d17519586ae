//! apt on this host: the signed indexes of one set of sources, resolution with apt's own
//! solver, and downloads checked against the index.

use super::{sources_identity, Package, PackageSet, Source};
use crate::definition::System;
use crate::process::Command;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// apt on this host, in a private directory holding the indexes of one set of sources:
/// `<cache>/apt/<digest of the sources>/`.
pub struct Archive {
    dir: PathBuf,
    sources: Vec<Source>,
}

impl Archive {
    /// The archive of `sources` (with `proxy` for apt, and the Valid-Until check off for a
    /// dated snapshot mirror), its directory and configuration made if missing.
    pub fn open(sources: &[Source], proxy: Option<&str>, snapshot: bool) -> Result<Archive> {
        let digest = crate::canonical::digest(&sources_identity(sources));
        let dir = crate::store::Store::current().apt(&digest[..16]);
        for sub in ["etc/apt.conf.d", "etc/preferences.d", "etc/trusted.gpg.d"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        for sub in ["state/lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let d = dir.display();
        let mut conf = format!(
            "Dir \"{d}/\";\nDir::State \"{d}/state/\";\nDir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache/\";\nDir::Etc \"{d}/etc/\";\n\
             Dir::Etc::SourceList \"{d}/etc/sources.list\";\nDir::Etc::SourceParts \"{d}/etc/none.d\";\n\
             Dir::Etc::Trusted \"{d}/etc/trusted.gpg\";\nDir::Etc::TrustedParts \"{d}/etc/trusted.gpg.d\";\n\
             Dir::Etc::Preferences \"{d}/etc/preferences\";\nDir::Etc::PreferencesParts \"{d}/etc/preferences.d\";\n\
             Dir::Etc::Parts \"{d}/etc/apt.conf.d\";\nDir::Log \"{d}/log\";\n\
             APT::Architecture \"amd64\";\nAPT::Architectures \"amd64\";\n\
             APT::Install-Recommends \"false\";\nAcquire::Languages \"none\";\n\
             Debug::NoLocking \"true\";\nAPT::Sandbox::User \"root\";\n"
        );
        if let Some(proxy) = proxy {
            conf += &format!("Acquire::http::Proxy \"{proxy}\";\n");
        }
        if snapshot {
            conf += "Acquire::Check-Valid-Until \"false\";\n";
        }
        let list: String = sources
            .iter()
            .flat_map(Source::one_line_entries)
            .map(|l| l + "\n")
            .collect();
        write_if_changed(&dir.join("apt.conf"), &conf)?;
        write_if_changed(&dir.join("etc/sources.list"), &list)?;
        write_if_changed(&dir.join("status"), "")?;
        Ok(Archive {
            dir,
            sources: sources.to_vec(),
        })
    }

    /// The archive of `sources`, fetched through the system's proxy.
    pub fn for_system(system: &System, sources: &[Source]) -> Result<Archive> {
        Archive::open(
            sources,
            system.proxy.as_deref(),
            crate::definition::snapshot_time(&system.mirror).is_some(),
        )
    }

    fn apt(&self, program: &str) -> Command {
        Command::new(program).env(
            "APT_CONFIG",
            &self.dir.join("apt.conf").display().to_string(),
        )
    }

    /// Fetches the sources' indexes (apt checks each `InRelease` first and refuses any that is
    /// unsigned or signed by another key), once per process and set of sources; an exclusive
    /// lock keeps other processes out of the directory meanwhile. Fails naming the source.
    pub fn update(&self) -> Result<ArchiveLock> {
        let lock = ArchiveLock::take(&self.dir)?;
        static UPDATED: std::sync::Mutex<BTreeSet<PathBuf>> =
            std::sync::Mutex::new(BTreeSet::new());
        if UPDATED.lock().expect("update record").contains(&self.dir) {
            return Ok(lock);
        }
        let (code, out) = self
            .apt("apt-get")
            .args(["update", "-q", "--error-on=any"])
            .run_unchecked()?;
        if code != 0 {
            return Err(self.explain_update_failure(&said(&out)));
        }
        UPDATED
            .lock()
            .expect("update record")
            .insert(self.dir.clone());
        Ok(lock)
    }

    /// apt's complaint about `update`, blamed on the source it names.
    fn explain_update_failure(&self, apt_says: &str) -> anyhow::Error {
        let lines: Vec<&str> = apt_says
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("W:") || l.starts_with("Err:"))
            .collect();
        let culprit = self
            .sources
            .iter()
            .find(|s| lines.iter().any(|l| l.contains(&s.uri)));
        let signature = apt_says.contains("NO_PUBKEY")
            || apt_says.contains("not signed")
            || apt_says.contains("BADSIG")
            || apt_says.contains("signatures couldn't be verified")
            || apt_says.contains("signatures were invalid");
        let what = match culprit {
            Some(s) => format!("the package source `{}` ({})", s.name, s.uri),
            None => "a package source".to_string(),
        };
        let next = if signature {
            "its signature does not check out against the key the definition gives \
             (`system.mirror_key`, or the repository's `signed_by`): give the key it is signed \
             with; nothing was built"
        } else {
            "it cannot be reached or read: check the URL and the network (or write a lock with \
             `imgforge lock` to build from a reviewed set); nothing was built"
        };
        anyhow!("{what} failed: {next}\napt said:\n{}", lines.join("\n"))
    }

    /// Resolves `request` (patterns and package names, as [`request`] makes them) into the
    /// exact set apt would install on an empty system. Call [`Self::update`] first.
    ///
    /// apt's answer depends only on the request, the configuration and the indexes, and the
    /// indexes only on the signed `InRelease` files they were checked against; so a
    /// resolution is kept under the digest of those and used again while none of them changed
    /// (every `plan`, `id` and `build` of a definition otherwise pays apt's solver).
    pub fn resolve(&self, request: &[String]) -> Result<PackageSet> {
        let memo = crate::store::Store::resolutions(&self.dir)
            .join(format!("{}.json", self.resolution_key(request)?));
        if let Some(set) = std::fs::read(&memo)
            .ok()
            .and_then(|b| serde_json::from_slice::<PackageSet>(&b).ok())
        {
            return Ok(set);
        }
        let set = self.resolve_with_apt(request)?;
        std::fs::create_dir_all(memo.parent().expect("a directory"))?;
        crate::atomic::write(&memo, &serde_json::to_vec(&set)?)?;
        Ok(set)
    }

    /// The digest of what a resolution of `request` depends on: the request, apt's
    /// configuration and sources, and every signed release file of the indexes.
    fn resolution_key(&self, request: &[String]) -> Result<String> {
        let lists = self.dir.join("state/lists");
        let mut releases = BTreeMap::new();
        for entry in
            std::fs::read_dir(&lists).with_context(|| format!("cannot read {}", lists.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with("Release") || name.ends_with("Release.gpg") {
                releases.insert(name, crate::sources::sha256_file(&path)?);
            }
        }
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        Ok(crate::canonical::digest(&serde_json::json!({
            "request": request,
            "apt.conf": read("apt.conf"),
            "sources.list": read("etc/sources.list"),
            "releases": releases,
        })))
    }

    /// [`Self::resolve`] by asking apt: `apt-get install --print-uris`, then each package's
    /// sha256 from the indexes.
    fn resolve_with_apt(&self, request: &[String]) -> Result<PackageSet> {
        let (code, out) = self
            .apt("apt-get")
            .args(["install", "--print-uris", "-q", "-y"])
            .args(request)
            .run_unchecked()?;
        if code != 0 {
            bail!(
                "apt cannot resolve the base's packages from its sources: {}",
                crate::process::tail_lines(&said(&out), 12)
            );
        }
        let wanted: Vec<(String, String, String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse_print_uris)
            .collect();
        let versions: Vec<String> = wanted
            .iter()
            .map(|(_, name, version, _)| format!("{name}={version}"))
            .collect();
        let digests = self.index_digests(&versions)?;
        let mut packages = Vec::new();
        for (uri, name, version, arch) in wanted {
            let sha256 = digests
                .get(&(name.clone(), version.clone()))
                .cloned()
                .ok_or_else(|| anyhow!("apt's index gives no sha256 for {name} {version}"))?;
            packages.push(Package {
                source: self.source_of(&uri),
                name,
                version,
                arch,
                sha256,
            });
        }
        Ok(PackageSet::new(packages))
    }

    /// The source whose URL is the longest prefix of `uri`.
    fn source_of(&self, uri: &str) -> String {
        self.sources
            .iter()
            .filter(|s| uri.starts_with(&format!("{}/", s.uri)))
            .max_by_key(|s| s.uri.len())
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// The candidate version of each of `names` (the one apt would install now) and the
    /// source offering it, from `apt-cache policy`; names apt does not know are left out.
    pub fn candidates(&self, names: &[String]) -> Result<BTreeMap<String, (String, String)>> {
        let out = self.apt("apt-cache").arg("policy").args(names).run()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut found = BTreeMap::new();
        let (mut name, mut candidate, mut in_candidate) = (None, None, false);
        for line in text.lines() {
            let indent = line.len() - line.trim_start().len();
            let words: Vec<&str> = line.split_whitespace().collect();
            match (indent, words.as_slice()) {
                (0, [n]) if n.ends_with(':') => {
                    name = Some(n.trim_end_matches(':').to_string());
                    candidate = None;
                }
                (2, ["Candidate:", v]) => candidate = Some(v.to_string()),
                (5, ["***", v, ..]) | (5, [v, ..]) => {
                    in_candidate = candidate.as_deref() == Some(*v)
                }
                (8, [_priority, uri, ..]) if in_candidate => {
                    if let (Some(n), Some(v)) = (&name, &candidate) {
                        let source = self.source_of(&format!("{uri}/"));
                        found.entry(n.clone()).or_insert((v.clone(), source));
                    }
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// sha256 by (name, version) of each `name=version` in the indexes.
    fn index_digests(&self, versions: &[String]) -> Result<BTreeMap<(String, String), String>> {
        if versions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let (code, out) = self
            .apt("apt-cache")
            .args(["show", "--no-all-versions"])
            .args(versions)
            .run_unchecked()?;
        let mut digests = BTreeMap::new();
        for stanza in String::from_utf8_lossy(&out.stdout).split("\n\n") {
            let field = |key| stanza_field(stanza, key);
            if let (Some(name), Some(version), Some(sha256)) =
                (field("Package"), field("Version"), field("SHA256"))
            {
                digests.insert((name, version), sha256);
            }
        }
        if code != 0 && digests.is_empty() {
            bail!(
                "apt-cache show failed: {}",
                crate::process::tail_lines(&said(&out), 6)
            );
        }
        Ok(digests)
    }

    /// Checks that the sources still serve every package of a locked `set` with the same
    /// sha256; fails naming the first missing or changed package and how to go on.
    pub fn check_available(&self, set: &PackageSet) -> Result<()> {
        let versions: Vec<String> = set.packages.iter().map(Package::pinned).collect();
        let digests = self.index_digests(&versions)?;
        for p in &set.packages {
            match digests.get(&(p.name.clone(), p.version.clone())) {
                None => bail!(
                    "the lock pins {} {}, which the sources no longer serve: build from a \
                     snapshot mirror of the lock's date (`system.mirror`), or take the \
                     archive's current versions with `imgforge lock --update`",
                    p.name,
                    p.version
                ),
                Some(d) if *d != p.sha256 => bail!(
                    "the lock pins {} {} with sha256 {}, but the signed index now gives {d}: \
                     the package was rebuilt under the same version; review it and run \
                     `imgforge lock --update`",
                    p.name,
                    p.version,
                    p.sha256
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Downloads `packages` into `dir` with apt (which checks each file against its signed
    /// index), then checks each against the sha256 of the set; fails naming the package.
    pub fn download(&self, packages: &[&Package], dir: &Path) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        let (code, out) = self
            .apt("apt-get")
            .args(["download", "-q"])
            .args(packages.iter().map(|p| p.pinned()))
            .current_dir(dir)
            .run_unchecked()?;
        if code != 0 {
            let text = said(&out);
            let mismatch = text.contains("Hash Sum mismatch");
            // apt names the file it failed on by its URL: `…/pool/…/NAME_VERSION_ARCH.deb`.
            let culprit = packages.iter().find(|p| {
                let version = p.version.split_once(':').map_or(&*p.version, |(_, v)| v);
                let encoded = version.replace('+', "%2b").replace('~', "%7e");
                [version, encoded.as_str()]
                    .iter()
                    .any(|v| text.contains(&format!("/{}_{v}_", p.name)))
            });
            let apt_said = crate::process::tail_lines(&text, 8);
            return Err(match culprit {
                Some(p) if mismatch => anyhow!(
                    "{} {} from `{}`: the file served does not match the sha256 its signed \
                     index gives ({}); nothing was installed\napt said: {apt_said}",
                    p.name,
                    p.version,
                    p.source,
                    p.sha256
                ),
                Some(p) => anyhow!(
                    "{} {} from `{}` could not be downloaded; nothing was installed\napt said: \
                     {apt_said}",
                    p.name,
                    p.version,
                    p.source
                ),
                None => anyhow!(
                    "apt could not download the base's packages; nothing was installed\napt \
                     said: {apt_said}"
                ),
            });
        }
        for p in packages {
            let path = dir.join(p.file_name());
            let got = crate::sources::sha256_file(&path)
                .with_context(|| format!("apt did not download {} {}", p.name, p.version))?;
            if got != p.sha256 {
                std::fs::remove_file(&path).ok();
                bail!(
                    "{} {} from `{}`: the downloaded file has sha256 {got}, not the {} of the \
                     package set; nothing was installed",
                    p.name,
                    p.version,
                    p.source,
                    p.sha256
                );
            }
        }
        Ok(())
    }
}

/// An exclusive lock on an archive directory, held while its indexes are read or written.
pub struct ArchiveLock {
    _file: std::fs::File,
}

impl ArchiveLock {
    fn take(dir: &Path) -> Result<ArchiveLock> {
        let path = dir.join("lock");
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(ArchiveLock { _file: file })
    }
}

/// What apt printed, on both streams.
fn said(out: &crate::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether Debian version `a` is newer than `b` (`dpkg --compare-versions`).
pub fn newer(a: &str, b: &str) -> Result<bool> {
    let (code, _) = Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .run_unchecked()?;
    Ok(code == 0)
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        crate::atomic::write(path, text.as_bytes())?;
    }
    Ok(())
}

/// (uri, name, version, arch) of one line of `apt-get --print-uris`:
/// `'URI' name_version_arch.deb SIZE HASH`, the version's `:` written `%3a`.
fn parse_print_uris(line: &str) -> Option<(String, String, String, String)> {
    let rest = line.strip_prefix('\'')?;
    let (uri, rest) = rest.split_once('\'')?;
    let file = rest.split_whitespace().next()?;
    let stem = file.strip_suffix(".deb")?;
    let mut parts = stem.splitn(3, '_');
    let (name, version, arch) = (parts.next()?, parts.next()?, parts.next()?);
    let version = percent_decode(version);
    Some((uri.into(), name.into(), version, arch.into()))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of field `key` in one stanza of a Debian control file (dpkg's status, apt's
/// indexes): single-line fields only.
fn stanza_field(stanza: &str, key: &str) -> Option<String> {
    stanza
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_give_name_version_with_epoch_and_arch() {
        let line = "'http://deb.debian.org/debian/pool/main/s/shadow/passwd_4.13%2bdfsg1-1%2bdeb12u2_amd64.deb' passwd_1%3a4.13+dfsg1-1+deb12u2_amd64.deb 972180 MD5Sum:dd";
        let (uri, name, version, arch) = parse_print_uris(line).unwrap();
        assert!(uri.ends_with("passwd_4.13%2bdfsg1-1%2bdeb12u2_amd64.deb"));
        assert_eq!(
            (name.as_str(), version.as_str(), arch.as_str()),
            ("passwd", "1:4.13+dfsg1-1+deb12u2", "amd64")
        );
        assert!(parse_print_uris("Reading package lists...").is_none());
        let p = Package {
            name,
            version,
            arch,
            sha256: String::new(),
            source: String::new(),
        };
        assert_eq!(p.file_name(), "passwd_1%3a4.13+dfsg1-1+deb12u2_amd64.deb");
    }
}
