//! The Debian family's package sources and the exact package set a base installs.
//!
//! A definition names its sources (the mirror with its updates and security suites, extra
//! repositories, their keys: [`Source`]). apt itself, run on this host in a private directory
//! per set of sources ([`Archive`]), fetches their signed indexes (`InRelease` first, every
//! signature checked), resolves what the base asks for into an exact [`PackageSet`] with apt's
//! own solver (the same request mmdebstrap makes), and downloads that set, each file checked
//! against the sha256 the signed index gives. The set, not the index dates or signatures, is
//! an input of the base id: the nightly build rebuilds exactly when upstream changed.

use crate::definition::{Definition, OsFamily};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod archive;
mod installed;

pub use archive::{newer, Archive};
pub use installed::*;

/// Packages every Debian base gets on top of its variant: a kernel, systemd, networking, SSH,
/// and what the offline bake and the checks need. `zstd`, which initramfs-tools recommends,
/// compresses the initramfs (without it, gzip: 2.6 MB more for GRUB to read and 1.4 s more to
/// make it).
pub const BASE_PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "zstd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "kmod",
    "iproute2",
    "openssh-server",
    "ca-certificates",
    "locales",
    "sudo",
    "tzdata",
];

/// The keyring Debian's archive is signed with, from this host's `debian-archive-keyring`.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Debian suite name for a release written as a number or a codename.
pub fn suite(release: &str) -> String {
    match release {
        "11" => "bullseye",
        "12" => "bookworm",
        "13" => "trixie",
        other => other,
    }
    .to_string()
}

/// One apt source of a base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Short name, used for its keyring and sources file in the image: `debian`,
    /// `debian-security`, `repo1`…
    pub name: String,
    /// Its URL.
    pub uri: String,
    /// Its suites.
    pub suites: Vec<String>,
    /// Its components.
    pub components: Vec<String>,
    /// The keyring on this host that checks it; `None` for a repository trusted unsigned.
    pub keyring: Option<PathBuf>,
    /// sha256 of that keyring: a new key is a new base.
    pub key_sha256: Option<String>,
    /// Whether it is the security archive (its packages are security updates).
    #[serde(default)]
    pub security: bool,
    /// Packages installed from this source's first suite.
    #[serde(default)]
    pub packages: Vec<String>,
}

impl Source {
    /// The part of a source that decides what a base gets: everything but where the keyring
    /// lies on this host.
    fn identity(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "uri": self.uri, "suites": self.suites,
            "components": self.components, "key_sha256": self.key_sha256,
            "security": self.security, "packages": self.packages,
        })
    }

    /// apt's `[options]` for it on this host.
    fn options(&self) -> String {
        match &self.keyring {
            Some(k) => format!("[signed-by={}]", k.display()),
            None => "[trusted=yes]".into(),
        }
    }

    /// One-line `deb` entries, one per suite, as mmdebstrap takes them.
    pub fn one_line_entries(&self) -> Vec<String> {
        self.suites
            .iter()
            .map(|suite| {
                format!(
                    "deb {} {} {suite} {}",
                    self.options(),
                    self.uri,
                    self.components.join(" ")
                )
            })
            .collect()
    }

    /// The source as a deb822 stanza, with its keyring at `keyring_path`.
    pub fn deb822(&self, keyring_path: Option<&str>) -> String {
        let mut s = format!(
            "Types: deb\nURIs: {}\nSuites: {}\nComponents: {}\n",
            self.uri,
            self.suites.join(" "),
            self.components.join(" ")
        );
        match keyring_path {
            Some(k) => s += &format!("Signed-By: {k}\n"),
            None => s += "Trusted: yes\n",
        }
        s
    }

    /// The keyring file name the image keeps it under (`.asc` for an armored key).
    pub fn image_keyring_name(&self) -> Option<String> {
        let keyring = self.keyring.as_ref()?;
        let armored = std::fs::read(keyring)
            .map(|b| b.starts_with(b"-----BEGIN PGP"))
            .unwrap_or(false);
        Some(format!(
            "imgforge-{}.{}",
            self.name,
            if armored { "asc" } else { "gpg" }
        ))
    }
}

/// (field, what is wrong) for the key files the sources name (`system.mirror_key`, each
/// repository's `signed_by`) that are not on this machine.
pub fn file_problems(def: &Definition) -> Vec<(String, String)> {
    let keys = def
        .system
        .mirror_key
        .iter()
        .map(|k| ("system.mirror_key".to_string(), k));
    let repositories = def
        .system
        .repositories
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.signed_by
                .as_ref()
                .map(|k| (format!("system.repositories[{i}].signed_by"), k))
        });
    keys.chain(repositories)
        .filter(|(_, key)| !def.resolve(key).is_file())
        .map(|(field, key)| {
            let message = format!("the key file {} does not exist", def.resolve(key).display());
            (field, message)
        })
        .collect()
}

/// The sources of a Debian definition: the mirror (with `-updates`), the security archive,
/// then each `[[system.repositories]]`; empty for other families.
pub fn sources(def: &Definition) -> Result<Vec<Source>> {
    if def.os.family != OsFamily::Debian {
        return Ok(Vec::new());
    }
    let sys = &def.system;
    let suite = suite(&def.os.release);
    let keyring = match &sys.mirror_key {
        Some(k) => def.resolve(k),
        None => PathBuf::from(DEBIAN_KEYRING),
    };
    let key_sha256 = Some(key_digest(&keyring, "system.mirror_key")?);
    let mirror = sys.mirror.trim_end_matches('/').to_string();
    let mut debian = Source {
        name: "debian".into(),
        uri: mirror.clone(),
        suites: vec![suite.clone()],
        components: vec!["main".into()],
        keyring: Some(keyring.clone()),
        key_sha256: key_sha256.clone(),
        security: false,
        packages: Vec::new(),
    };
    let mut all = Vec::new();
    if sys.updates {
        debian.suites.push(format!("{suite}-updates"));
        all.push(debian);
        all.push(Source {
            name: "debian-security".into(),
            uri: security_mirror(def),
            suites: vec![format!("{suite}-security")],
            components: vec!["main".into()],
            keyring: Some(keyring),
            key_sha256,
            security: true,
            packages: Vec::new(),
        });
    } else {
        all.push(debian);
    }
    for (i, r) in sys.repositories.iter().enumerate() {
        let keyring = r.signed_by.as_ref().map(|k| def.resolve(k));
        let key_sha256 = keyring
            .as_ref()
            .map(|k| key_digest(k, &format!("system.repositories[{i}].signed_by")))
            .transpose()?;
        all.push(Source {
            name: format!("repo{}", i + 1),
            uri: r.uri.trim_end_matches('/').to_string(),
            suites: r.suites.clone(),
            components: r.components.clone(),
            keyring,
            key_sha256,
            security: false,
            packages: r.packages.clone(),
        });
    }
    Ok(all)
}

fn key_digest(path: &Path, field: &str) -> Result<String> {
    crate::sources::sha256_file(path).with_context(|| {
        format!(
            "field `{field}`: cannot read the key {} (for Debian's own archive, install the \
             package debian-archive-keyring)",
            path.display()
        )
    })
}

/// The security archive of a Debian definition: `system.security_mirror`, else the one beside
/// its mirror.
pub fn security_mirror(def: &Definition) -> String {
    match &def.system.security_mirror {
        Some(m) => m.trim_end_matches('/').to_string(),
        None => default_security_mirror(def.system.mirror.trim_end_matches('/')),
    }
}

/// The security archive beside `mirror`: `debian-security` on the same host, or the
/// security archive of the same date on a snapshot mirror.
fn default_security_mirror(mirror: &str) -> String {
    if mirror.contains("/archive/debian/") {
        return mirror.replacen("/archive/debian/", "/archive/debian-security/", 1);
    }
    match url::Url::parse(mirror) {
        Ok(mut u) => {
            u.set_path("/debian-security");
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => format!("{mirror}-security"),
    }
}

/// What a base asks apt for: the variant's package set (mmdebstrap's own patterns: the
/// essential set, then priorities of the release's own suite, plus apt), the base packages,
/// the definition's packages, and each repository's packages from its first suite.
pub fn request(def: &Definition, sources: &[Source]) -> Vec<String> {
    let suite = suite(&def.os.release);
    let narrow = |what: &str| {
        format!(
            "?narrow(?or(?archive(^{suite}$),?codename(^{suite}$)),?architecture(amd64),{what})"
        )
    };
    let variant = def.builder.variant();
    let mut asked = vec![narrow("?essential"), "apt".to_string()];
    let priorities: &[&str] = match variant {
        "required" | "minbase" | "buildd" => &["required"],
        "important" | "debootstrap" | "-" => &["required", "important"],
        "standard" => &["required", "important", "standard"],
        _ => &[],
    };
    for p in priorities {
        asked.push(narrow(&format!("?priority({p})")));
    }
    if variant == "buildd" {
        asked.push("build-essential".into());
    }
    asked.extend(BASE_PACKAGES.iter().map(|p| p.to_string()));
    asked.extend(def.base_packages());
    for s in sources {
        for p in &s.packages {
            asked.push(format!("{p}/{}", s.suites[0]));
        }
    }
    asked
}

/// One package of a base, exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version, with its epoch.
    pub version: String,
    /// Architecture (`amd64`, `all`).
    pub arch: String,
    /// sha256 of the `.deb`, from the signed index.
    pub sha256: String,
    /// Name of the [`Source`] it comes from.
    pub source: String,
}

impl Package {
    /// The file name apt gives it in an archive directory.
    pub fn file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }

    /// `name=version`, as apt takes it.
    pub fn pinned(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

/// The exact package set of a base, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSet {
    /// The packages.
    pub packages: Vec<Package>,
}

impl PackageSet {
    /// A set of these packages, sorted.
    pub fn new(mut packages: Vec<Package>) -> PackageSet {
        packages.sort();
        packages.dedup();
        PackageSet { packages }
    }

    /// What a base id covers: name, version, architecture and sha256 of every package (not
    /// which source served it).
    pub fn identity(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.packages
                .iter()
                .map(|p| serde_json::json!([p.name, p.version, p.arch, p.sha256]))
                .collect(),
        )
    }

    fn by_name(&self) -> BTreeMap<(&str, &str), &Package> {
        self.packages
            .iter()
            .map(|p| ((p.name.as_str(), p.arch.as_str()), p))
            .collect()
    }
}

/// The identity of a set of sources, for ids and for the directory apt keeps their indexes in.
pub fn sources_identity(sources: &[Source]) -> serde_json::Value {
    serde_json::Value::Array(sources.iter().map(Source::identity).collect())
}

/// How one package changed between two sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    /// Package name.
    pub name: String,
    /// Version before.
    pub from: String,
    /// Version now.
    pub to: String,
    /// Whether the new version comes from the security archive.
    pub security: bool,
}

/// What changed from one package set to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// `name version` of packages only the new set has.
    pub added: Vec<String>,
    /// `name version` of packages only the old set has.
    pub removed: Vec<String>,
    /// Packages in both at other versions (or other bytes at the same version).
    pub upgraded: Vec<Upgrade>,
}

impl Changes {
    /// Whether the sets are the same.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.upgraded.is_empty()
    }

    /// One line for people: `2 upgraded (1 security: libssl3 3.0.20 → 3.0.22), 1 added`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.upgraded.is_empty() {
            let shown: Vec<String> = self
                .upgraded
                .iter()
                .take(4)
                .map(|u| format!("{} {} → {}", u.name, u.from, u.to))
                .collect();
            let security = self.upgraded.iter().filter(|u| u.security).count();
            parts.push(format!(
                "{} upgraded ({security} security; {}{})",
                self.upgraded.len(),
                shown.join(", "),
                if self.upgraded.len() > 4 { ", …" } else { "" }
            ));
        }
        if !self.added.is_empty() {
            parts.push(format!("{} added", self.added.len()));
        }
        if !self.removed.is_empty() {
            parts.push(format!("{} removed", self.removed.len()));
        }
        parts.join(", ")
    }
}

/// Names of the security archives among `sources` (what [`changes`] marks as security).
pub fn security_sources(sources: &[Source]) -> BTreeSet<String> {
    sources
        .iter()
        .filter(|s| s.security)
        .map(|s| s.name.clone())
        .collect()
}

/// What changed from `old` to `new`; `security` names the sources that are security archives.
pub fn changes(old: &PackageSet, new: &PackageSet, security: &BTreeSet<String>) -> Changes {
    let (old, new) = (old.by_name(), new.by_name());
    let mut c = Changes::default();
    for (key, p) in &new {
        match old.get(key) {
            None => c.added.push(format!("{} {}", p.name, p.version)),
            Some(o) if o.version != p.version || o.sha256 != p.sha256 => c.upgraded.push(Upgrade {
                name: p.name.clone(),
                from: o.version.clone(),
                to: p.version.clone(),
                security: security.contains(&p.source),
            }),
            Some(_) => {}
        }
    }
    for (key, o) in &old {
        if !new.contains_key(key) {
            c.removed.push(format!("{} {}", o.name, o.version));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, source: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: format!("{name}{version}"),
            source: source.into(),
        }
    }

    #[test]
    fn changes_name_added_removed_and_upgraded_packages_with_their_origin() {
        let old = PackageSet::new(vec![pkg("a", "1", "debian"), pkg("b", "1", "debian")]);
        let new = PackageSet::new(vec![
            pkg("a", "2", "debian-security"),
            pkg("c", "1", "debian"),
        ]);
        let security = BTreeSet::from(["debian-security".to_string()]);
        let c = changes(&old, &new, &security);
        assert_eq!(c.added, ["c 1"]);
        assert_eq!(c.removed, ["b 1"]);
        assert_eq!(
            c.upgraded,
            [Upgrade {
                name: "a".into(),
                from: "1".into(),
                to: "2".into(),
                security: true
            }]
        );
        assert!(changes(&new, &new, &security).is_empty());
    }

    #[test]
    fn the_installed_packages_are_read_from_dpkgs_status() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("var/lib/dpkg")).unwrap();
        std::fs::write(
            tree.path().join("var/lib/dpkg/status"),
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n\
             Version: 2.36-9\n\nPackage: gone\nStatus: deinstall ok config-files\n\
             Architecture: amd64\nVersion: 1\n",
        )
        .unwrap();
        let found = installed(tree.path()).unwrap();
        assert_eq!(
            found,
            BTreeMap::from([(("libc6".into(), "amd64".into()), "2.36-9".into())])
        );
        let set = PackageSet::new(vec![pkg("libc6", "2.36-10", "debian")]);
        let e = check_installed(tree.path(), &set).unwrap_err().to_string();
        assert!(e.contains("libc6 is 2.36-9, not 2.36-10"), "{e}");
    }

    #[test]
    fn numeric_releases_map_to_suites() {
        assert_eq!(suite("12"), "bookworm");
        assert_eq!(suite("sid"), "sid");
    }

    #[test]
    fn the_security_archive_defaults_to_the_mirrors_host() {
        assert_eq!(
            default_security_mirror("http://deb.debian.org/debian"),
            "http://deb.debian.org/debian-security"
        );
        assert_eq!(
            default_security_mirror("http://127.0.0.1:8080/mirror/debian"),
            "http://127.0.0.1:8080/debian-security"
        );
        assert_eq!(
            default_security_mirror("http://snapshot.debian.org/archive/debian/20261120T000000Z"),
            "http://snapshot.debian.org/archive/debian-security/20261120T000000Z"
        );
    }
}
