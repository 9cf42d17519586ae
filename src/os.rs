//! One seam per OS family: what the pipeline asks of a family (its answer file, whether a
//! tree is one of its roots, what a tree has installed, how its package set is resolved, how
//! its bases can be made) is asked here, and the stages never name a family's tools.
//!
//! Debian's knowledge sits behind [`Debian`]: `apt/` (sources and keys, resolving the package
//! set, dpkg's record of a tree), the package set's lock (`lock.rs`) and `imgforge outdated`,
//! and its rootfs builder (`base/rootfs.rs`, `base/packages.rs`, `base/patch.rs`). The rhel
//! family ([`Rhel`]) has its answer file (kickstart) and its hygiene; what it lacks is said
//! here, once: no rootfs builder, no resolved package set, no package reader.

use crate::definition::{BuilderKind, Definition, OsFamily};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;

pub use crate::apt::InstalledPackage;

/// What imgforge knows of one OS family.
pub trait Family: Sync {
    /// The shipped answer-file template (under the data directory) and the file name the
    /// installer fetches it by.
    fn answer_file(&self) -> (&'static str, &'static str);
    /// The answer-file template's values that only this family has.
    fn answer_values(&self, def: &Definition) -> Result<Value>;
    /// (field, what is wrong) for the files on this machine its package sources need.
    fn source_problems(&self, def: &Definition) -> Vec<(String, String)>;
    /// Whether `tree` is the root filesystem of a system of this family.
    fn is_root(&self, tree: &Path) -> bool;
    /// The packages installed in the tree at `root` (for the package list and the SBOM);
    /// `None` where imgforge does not read this family's package database.
    fn installed_packages(&self, root: &Path) -> Result<Option<Vec<InstalledPackage>>>;
    /// Whether its base's package set is resolved before the build (an input of the base id).
    fn resolves_packages(&self) -> bool;
    /// Why it has no rootfs builder, if it has none.
    fn lacks_rootfs_builder(&self) -> Option<&'static str>;
    /// The programs (and the Debian packages that hold them) this host needs to build the
    /// family's bases.
    fn host_programs(&self) -> &'static [(&'static str, &'static str)];
    /// The values the bake's hygiene (`templates/bake-hygiene.sh.hbs`) chooses its package
    /// tools by.
    fn hygiene_values(&self) -> Value;
}

/// (field, what is wrong) for what `def` asks of its family that the family cannot do, and
/// for the files on this machine the family's package sources need (Debian's keys).
pub fn problems(def: &Definition) -> Vec<(String, String)> {
    let family = family(def.os.family);
    let mut problems = family.source_problems(def);
    let lacks = family.lacks_rootfs_builder();
    if let (BuilderKind::Rootfs, Some(why)) = (def.builder.kind(), lacks) {
        problems.push(("builder.kind".to_string(), why.to_string()));
    }
    problems
}

/// Every family imgforge knows.
pub const FAMILIES: [OsFamily; 2] = [OsFamily::Debian, OsFamily::Rhel];

/// The seam of `family`.
pub fn family(family: OsFamily) -> &'static dyn Family {
    match family {
        OsFamily::Debian => &Debian,
        OsFamily::Rhel => &Rhel,
    }
}

/// Debian and its derivatives: preseed, apt and dpkg, mmdebstrap.
pub struct Debian;

impl Family for Debian {
    fn answer_file(&self) -> (&'static str, &'static str) {
        ("preseed/debian.cfg.hbs", "preseed.cfg")
    }

    fn answer_values(&self, def: &Definition) -> Result<Value> {
        let security = url::Url::parse(&crate::apt::security_mirror(def)).with_context(|| {
            format!(
                "{}: field `system.security_mirror`: not a URL",
                def.path.display()
            )
        })?;
        Ok(json!({
            "suite": crate::apt::suite(&def.os.release),
            "security": {
                "host": &security[url::Position::BeforeHost..url::Position::AfterPort],
                "directory": security.path().trim_end_matches('/'),
            },
        }))
    }

    fn source_problems(&self, def: &Definition) -> Vec<(String, String)> {
        crate::apt::file_problems(def)
    }

    fn is_root(&self, tree: &Path) -> bool {
        crate::apt::is_debian_root(tree)
    }

    fn installed_packages(&self, root: &Path) -> Result<Option<Vec<InstalledPackage>>> {
        crate::apt::installed_packages(root).map(Some)
    }

    fn resolves_packages(&self) -> bool {
        true
    }

    fn lacks_rootfs_builder(&self) -> Option<&'static str> {
        None
    }

    fn host_programs(&self) -> &'static [(&'static str, &'static str)] {
        &[("mmdebstrap", "mmdebstrap")]
    }

    fn hygiene_values(&self) -> Value {
        json!({ "debian": true })
    }
}

/// The Red Hat family (Rocky, Alma): kickstart, dnf and rpm.
pub struct Rhel;

impl Family for Rhel {
    fn answer_file(&self) -> (&'static str, &'static str) {
        ("templates/kickstart.ks.hbs", "ks.cfg")
    }

    fn answer_values(&self, def: &Definition) -> Result<Value> {
        // The repository of updates kickstart adds, where the definition gives one.
        let updates_url = match (def.system.updates, &def.system.security_mirror) {
            (true, Some(url)) => url.clone(),
            _ => String::new(),
        };
        Ok(json!({ "updates_url": updates_url }))
    }

    fn source_problems(&self, _def: &Definition) -> Vec<(String, String)> {
        Vec::new()
    }

    fn is_root(&self, tree: &Path) -> bool {
        ["var/lib/rpm", "usr/lib/sysimage/rpm"]
            .iter()
            .any(|db| tree.join(db).is_dir())
    }

    fn installed_packages(&self, _root: &Path) -> Result<Option<Vec<InstalledPackage>>> {
        Ok(None)
    }

    fn resolves_packages(&self) -> bool {
        false
    }

    fn lacks_rootfs_builder(&self) -> Option<&'static str> {
        Some(
            "the rootfs builder uses mmdebstrap and builds Debian only; use kind = \"installer\" \
             for rhel",
        )
    }

    fn host_programs(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    fn hygiene_values(&self) -> Value {
        json!({ "debian": false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_knows_its_roots_and_says_what_it_lacks() {
        let tree = tempfile::tempdir().unwrap();
        let (debian, rhel) = (family(OsFamily::Debian), family(OsFamily::Rhel));
        assert!(!debian.is_root(tree.path()) && !rhel.is_root(tree.path()));
        std::fs::create_dir_all(tree.path().join("var/lib/rpm")).unwrap();
        assert!(rhel.is_root(tree.path()) && !debian.is_root(tree.path()));
        std::fs::create_dir_all(tree.path().join("var/lib/dpkg")).unwrap();
        std::fs::write(tree.path().join("var/lib/dpkg/status"), "").unwrap();
        assert!(debian.is_root(tree.path()));
        assert_eq!(
            debian.installed_packages(tree.path()).unwrap(),
            Some(vec![])
        );
        assert_eq!(rhel.installed_packages(tree.path()).unwrap(), None);
        assert!(debian.lacks_rootfs_builder().is_none());
        assert!(rhel.lacks_rootfs_builder().unwrap().contains("installer"));
    }

    #[test]
    fn a_rootfs_definition_of_a_family_without_that_builder_is_refused_at_builder_kind() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian-12-minimal.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let minimal = Definition::parse(&text, &path).unwrap();
        assert!(problems(&minimal).is_empty(), "{:?}", problems(&minimal));
        let text = text
            .replace("family = \"debian\"", "family = \"rhel\"")
            .replace("release = \"bookworm\"", "release = \"9\"");
        let rhel = Definition::parse(&text, &path).unwrap();
        let found = problems(&rhel);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "builder.kind");
        assert!(found[0].1.contains("builds Debian only"), "{found:?}");
    }
}
