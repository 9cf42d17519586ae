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
use crate::process::Command;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Packages every Debian base gets on top of its variant: a kernel, systemd, networking, SSH,
/// and what the offline bake and the checks need.
pub const BASE_PACKAGES: &[&str] = &[
    "linux-image-amd64",
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
    let variant = def.builder.variant.as_deref().unwrap_or("minbase");
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

    /// The archive of a Debian definition's sources.
    pub fn for_definition(def: &Definition, sources: &[Source]) -> Result<Archive> {
        Archive::open(
            sources,
            def.system.proxy.as_deref(),
            crate::definition::snapshot_time(&def.system.mirror).is_some(),
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

/// dpkg's record of what is installed, relative to a tree's root.
const DPKG_STATUS: &str = "var/lib/dpkg/status";

/// Whether `root` is the root filesystem of a Debian-family system (it has dpkg's status).
pub fn is_debian_root(root: &Path) -> bool {
    root.join(DPKG_STATUS).is_file()
}

/// One installed dpkg package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InstalledPackage {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
    /// Architecture (`amd64`, `all`).
    pub architecture: String,
    /// Source package name (the Source field, default the package name).
    pub source: String,
    /// Source package version (from "Source: name (version)", default the package version).
    pub source_version: String,
    /// The Maintainer field, e.g. "Debian GCC Maintainers <debian-gcc@lists.debian.org>".
    pub maintainer: Option<String>,
}

/// The tree's installed packages (dpkg Status "<want> ok installed"), sorted.
pub fn installed_packages(root: &Path) -> Result<Vec<InstalledPackage>> {
    let path = root.join(DPKG_STATUS);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for p in control_paragraphs(&text) {
        let status = control_field(&p, "status").unwrap_or("");
        if !status.ends_with(" ok installed") {
            continue;
        }
        let get = |k| control_field(&p, k).unwrap_or("").to_string();
        let name = control_field(&p, "package")
            .context("paragraph without Package")?
            .to_string();
        let version = get("version");
        // "Source: gcc-12 (12.2.0-14)"
        let source = control_field(&p, "source").unwrap_or(&name).to_string();
        let (source, source_version) = match source.split_once(' ') {
            Some((s, v)) => (s.to_string(), v.trim_matches(['(', ')', ' ']).to_string()),
            None => (source, version.clone()),
        };
        let (architecture, maintainer) = (get("architecture"), control_field(&p, "maintainer"));
        let maintainer = maintainer.map(str::to_string);
        out.push(InstalledPackage {
            name,
            version,
            architecture,
            source,
            source_version,
            maintainer,
        });
    }
    out.sort();
    Ok(out)
}

/// The paragraphs of a Debian control file (dpkg's status, deb822, DEP-5 copyright files) as (lowercased field, value); continuation lines are appended after '\n'
/// (trimmed, " ." standing for an empty line); '#' comment lines are skipped.
pub fn control_paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut paras = vec![Vec::new()];
    for line in text.lines() {
        let cur: &mut Vec<(String, String)> = paras.last_mut().expect("never empty");
        if line.trim().is_empty() {
            if !cur.is_empty() {
                paras.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                let l = line.trim();
                *v += &format!("\n{}", if l == "." { "" } else { l });
            }
        } else if let Some((k, v)) = line.split_once(':').filter(|_| !line.starts_with('#')) {
            cur.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    paras.retain(|p| !p.is_empty());
    paras
}

/// The value of field `name` (lowercase) in a paragraph of [`control_paragraphs`].
pub fn control_field<'p>(para: &'p [(String, String)], name: &str) -> Option<&'p str> {
    para.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The installed packages of a Debian tree as `name arch → version`.
pub fn installed(tree: &Path) -> Result<BTreeMap<(String, String), String>> {
    Ok(installed_packages(tree)?
        .into_iter()
        .map(|p| ((p.name, p.architecture), p.version))
        .collect())
}

/// Checks that `tree` holds exactly `set`: the packages dpkg installed are the set's, at its
/// versions; fails listing what differs.
pub fn check_installed(tree: &Path, set: &PackageSet) -> Result<()> {
    let installed = installed(tree)?;
    let expected: BTreeMap<(String, String), String> = set
        .packages
        .iter()
        .map(|p| ((p.name.clone(), p.arch.clone()), p.version.clone()))
        .collect();
    let mut differences = Vec::new();
    for (key, version) in &expected {
        match installed.get(key) {
            None => differences.push(format!("{} {version} was not installed", key.0)),
            Some(v) if v != version => differences.push(format!("{} is {v}, not {version}", key.0)),
            Some(_) => {}
        }
    }
    for (key, version) in &installed {
        if !expected.contains_key(key) {
            differences.push(format!("{} {version} is not in the set", key.0));
        }
    }
    if !differences.is_empty() {
        bail!(
            "the OS tree is not the resolved package set ({}): the archive probably changed \
             during the build; run it again",
            differences.join("; ")
        );
    }
    Ok(())
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
