//! `imgforge diff A/manifest.json B/manifest.json`: why two builds differ. Packages first (name,
//! old and new version), then files (added, removed, changed in content, mode, owner or size),
//! from the package and file lists the builds recorded, each checked against its digests
//! before it is read.

use crate::contents::{self, FileEntry, FileList, PackageList};
use crate::events::{payload, Reporter};
use crate::manifest::{DocumentKind, Manifest};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// How many lines of each kind the human-readable report prints (`--json` has them all).
const SHOWN: usize = 40;

/// What differs between two builds.
#[derive(Debug, Default, Serialize)]
pub struct Difference {
    /// Artifacts present in both builds, by file name, and whether their sha256 is the same.
    pub artifacts: BTreeMap<String, bool>,
    /// Packages in both with another version: name → [old, new].
    pub packages_changed: BTreeMap<String, [String; 2]>,
    /// Packages only in B.
    pub packages_added: BTreeMap<String, String>,
    /// Packages only in A.
    pub packages_removed: BTreeMap<String, String>,
    /// Paths in both whose entry differs: path → what differs (`content`, `mode`, …).
    pub files_changed: BTreeMap<String, Vec<&'static str>>,
    /// Paths only in B.
    pub files_added: Vec<String>,
    /// Paths only in A.
    pub files_removed: Vec<String>,
}

impl Difference {
    /// Whether anything differs: a package, a file, or an artifact's bytes.
    pub fn any(&self) -> bool {
        self.artifacts.values().any(|same| !same)
            || !self.packages_changed.is_empty()
            || !self.packages_added.is_empty()
            || !self.packages_removed.is_empty()
            || !self.files_changed.is_empty()
            || !self.files_added.is_empty()
            || !self.files_removed.is_empty()
    }
}

/// Compares the builds of two manifests and reports the difference; returns it.
pub fn diff(a_path: &Path, b_path: &Path, reporter: &Reporter) -> Result<Difference> {
    let (a, b) = (Manifest::load(a_path)?, Manifest::load(b_path)?);
    let mut d = Difference::default();
    for x in &a.artifacts {
        if let Some(y) = b.artifacts.iter().find(|y| y.format == x.format) {
            d.artifacts.insert(x.file.clone(), x.sha256 == y.sha256);
        }
    }
    let packages = |m: &Manifest, p: &Path| -> Result<PackageList> {
        let text = document(m, p, DocumentKind::Packages)?;
        contents::parse_packages(&text, p)
    };
    let (pa, pb) = (packages(&a, a_path)?, packages(&b, b_path)?);
    for (name, old) in &pa {
        match pb.get(name) {
            Some(new) if new != old => {
                d.packages_changed
                    .insert(name.clone(), [old.clone(), new.clone()]);
            }
            Some(_) => {}
            None => {
                d.packages_removed.insert(name.clone(), old.clone());
            }
        }
    }
    for (name, new) in &pb {
        if !pa.contains_key(name) {
            d.packages_added.insert(name.clone(), new.clone());
        }
    }
    let files = |m: &Manifest, p: &Path| -> Result<FileList> {
        let text = document(m, p, DocumentKind::Files)?;
        contents::parse_files(&text, p)
    };
    let (fa, fb) = (files(&a, a_path)?, files(&b, b_path)?);
    for (path, old) in &fa {
        match fb.get(path) {
            Some(new) if new != old => {
                d.files_changed.insert(path.clone(), what_differs(old, new));
            }
            Some(_) => {}
            None => d.files_removed.push(path.clone()),
        }
    }
    d.files_added = fb
        .keys()
        .filter(|p| !fa.contains_key(*p))
        .cloned()
        .collect();
    report(&d, reporter);
    Ok(d)
}

/// The text of `m`'s document of `kind`, after its size and digests are checked.
fn document(m: &Manifest, manifest_path: &Path, kind: DocumentKind) -> Result<String> {
    let record = m.document(kind).ok_or_else(|| {
        anyhow!(
            "{}: the build records no {kind:?} list (built before imgforge recorded them); {}",
            manifest_path.display(),
            m.rebuild_hint()
        )
    })?;
    let pinned = m.checked_artifact(manifest_path, record)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::BufReader::new(pinned.file()), &mut text)?;
    // Every image holds files and packages: an empty list would make any two builds look equal.
    if text.trim().is_empty() {
        bail!(
            "{}: the {kind:?} list is empty; {}",
            pinned.path().display(),
            m.rebuild_hint()
        );
    }
    Ok(text)
}

fn what_differs(old: &FileEntry, new: &FileEntry) -> Vec<&'static str> {
    [
        ("content", old.content != new.content),
        ("mode", old.mode != new.mode),
        ("owner", old.owner != new.owner),
        ("size", old.size != new.size),
    ]
    .into_iter()
    .filter_map(|(what, differs)| differs.then_some(what))
    .collect()
}

/// Prints the difference: packages, then files, a section each, at most [`SHOWN`] lines of
/// each kind; `--json` gets one `diff` line with everything.
fn report(d: &Difference, reporter: &Reporter) {
    let mut lines = Vec::new();
    for (file, same) in &d.artifacts {
        lines.push(format!(
            "artifact {file}: {}",
            if *same { "identical" } else { "differs" }
        ));
    }
    let section = |lines: &mut Vec<String>, title: &str, items: Vec<String>| {
        if items.is_empty() {
            return;
        }
        lines.push(format!("{title} ({}):", items.len()));
        let more = items.len().saturating_sub(SHOWN);
        lines.extend(items.into_iter().take(SHOWN).map(|i| format!("  {i}")));
        if more > 0 {
            lines.push(format!("  … and {more} more (--json lists all)"));
        }
    };
    let changed = d.packages_changed.iter();
    section(
        &mut lines,
        "packages changed",
        changed
            .map(|(n, [o, v])| format!("{n} {o} -> {v}"))
            .collect(),
    );
    let listed = |m: &BTreeMap<String, String>| m.iter().map(|(n, v)| format!("{n} {v}")).collect();
    section(&mut lines, "packages added", listed(&d.packages_added));
    section(&mut lines, "packages removed", listed(&d.packages_removed));
    let changed = d.files_changed.iter();
    section(
        &mut lines,
        "files changed",
        changed
            .map(|(p, w)| format!("{p} ({})", w.join(", ")))
            .collect(),
    );
    section(&mut lines, "files added", d.files_added.clone());
    section(&mut lines, "files removed", d.files_removed.clone());
    if d.artifacts.values().any(|same| !same) && lines.len() == d.artifacts.len() {
        lines.push(
            "no package or file differs: the artifacts differ in filesystem metadata \
             (timestamps, layout); compare the raw images with diffoscope"
                .into(),
        );
    }
    if !d.any() {
        lines.push("the builds are identical".into());
    }
    let difference = serde_json::to_value(d).expect("a difference serialises");
    reporter.emit(&lines.join("\n"), &payload::Diff { difference });
}
