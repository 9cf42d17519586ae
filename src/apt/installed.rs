//! What dpkg records as installed in a tree, read from its status file.

use super::PackageSet;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

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
