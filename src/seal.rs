//! Seal: the step between bake and export. It opens the baked disk's root filesystem through
//! a loop device, writes what the image holds beside the artifacts (package list, file list
//! and an SPDX SBOM), and, for the rootfs builder's images, writes the disk again from that
//! tree with every timestamp clamped to `SOURCE_DATE_EPOCH` and every identifier derived from
//! the build: the same inputs give the same bytes, whatever time the bake VM kept.

use crate::base::BaseInfo;
use crate::contents::{self, PackageList};
use crate::disk::loopmount::{Access, RootMount};
use crate::disk::Layout;
use crate::events::{payload, Reporter};
use crate::manifest::{DocumentKind, DocumentRecord, Provenance};
use crate::os::InstalledPackage;
use crate::process::Command;
use crate::spec::BakeSpec;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What sealing needs.
pub struct SealInput<'a> {
    /// What was baked (the image's name, version, family and data).
    pub spec: &'a BakeSpec,
    /// The disk the image is written on again (the base's).
    pub layout: Layout,
    /// The base the bake started from (its root UUID, for a disk written again).
    pub base: &'a BaseInfo,
    /// The build's provenance (name, version, ids, service, data).
    pub provenance: &'a Provenance,
    /// The baked disk.
    pub baked_disk: &'a Path,
    /// The baked disk as raw, when the bake left one: read instead of converting `baked_disk`.
    pub baked_raw: Option<&'a Path>,
    /// Scratch space, removed with the build.
    pub work: &'a Path,
    /// Where the records go (the build's output directory being assembled).
    pub out_dir: &'a Path,
}

/// A sealed image: the raw disk export converts, and the records written beside it.
pub struct Sealed {
    /// The raw disk.
    pub disk: PathBuf,
    /// Package list, file list and SBOM, in the output directory.
    pub documents: Vec<DocumentRecord>,
    /// Whether the disk was written again from its tree, reproducibly (rootfs builder).
    pub reproducible: bool,
    /// The root filesystem's UUID when the disk was written again from its tree (rootfs
    /// builder): export writes a Vagrant box's disk the same way.
    pub root_uuid: Option<String>,
}

/// Seals the baked disk (see the module documentation).
pub fn seal(input: &SealInput, reporter: &Reporter) -> Result<Sealed> {
    let raw = match input.baked_raw {
        Some(raw) => raw.to_path_buf(),
        None => {
            let raw = input.work.join("baked.raw");
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(input.baked_disk)
                .arg(&raw)
                .run()?;
            raw
        }
    };
    let family = crate::os::family(input.spec.family);
    let is_root = |tree: &Path| family.is_root(tree);
    let Some(root) = RootMount::find(&raw, input.work, Access::ReadOnly, &is_root)? else {
        bail!(
            "{}: no partition of the baked disk holds a root filesystem of the image's OS \
             family ({:?})",
            raw.display(),
            input.spec.family
        );
    };
    let Some(installed) = family.installed_packages(root.path())? else {
        reporter.emit(
            "no package list, file list or SBOM: imgforge does not read this OS family's \
             package database yet",
            &payload::Warning {
                reason: Some("package database not read".into()),
                family: Some(input.spec.family),
                ..Default::default()
            },
        );
        return Ok(Sealed {
            disk: raw,
            documents: Vec::new(),
            reproducible: false,
            root_uuid: None,
        });
    };
    let Some(boot) = &input.base.direct_boot else {
        return Ok(Sealed {
            documents: write_records(input, root.path(), &installed, reporter)?,
            disk: raw,
            reproducible: false,
            root_uuid: None,
        });
    };
    // The records and the new disk both only read the tree: they are made at the same time.
    let sealed = input.work.join("sealed.raw");
    let (documents, assembled) = std::thread::scope(|scope| {
        let records = scope.spawn(|| write_records(input, root.path(), &installed, reporter));
        let assembled = crate::disk::assemble(&input.layout, root.path(), &sealed, &boot.root_uuid);
        let documents = records.join().expect("the records' thread panicked");
        (documents, assembled)
    });
    assembled.context("cannot write the image again from its file tree")?;
    let documents = documents?;
    drop(root);
    if input.baked_raw.is_none() {
        // The seal's own conversion; a bake's raw disk may still make the layer's overlay.
        std::fs::remove_file(&raw).ok();
    }
    Ok(Sealed {
        disk: sealed,
        documents,
        reproducible: true,
        root_uuid: Some(boot.root_uuid.clone()),
    })
}

/// Writes the package list, the file list and the SBOM of the tree at `root`.
fn write_records(
    input: &SealInput,
    root: &Path,
    installed: &[InstalledPackage],
    reporter: &Reporter,
) -> Result<Vec<DocumentRecord>> {
    let spec = input.spec;
    let stem = format!("{}-{}", spec.image.name, spec.image.version);
    let mut packages = PackageList::new();
    for p in installed {
        let key = match packages.contains_key(&p.name) {
            true => format!("{}:{}", p.name, p.architecture),
            false => p.name.clone(),
        };
        packages.insert(key, format!("{} {}", p.version, p.architecture));
    }
    let files = contents::list_files(root)?;
    let prov = input.provenance;
    let service = prov
        .service
        .as_ref()
        .map(|s| (s.repo.as_str(), s.commit.as_str()));
    let data = spec.data.as_ref().map(|d| (&*d.dest, d.digest.as_str()));
    let sbom = crate::sbom::spdx_document(&crate::sbom::SbomInput {
        root,
        packages: installed,
        name: &prov.name,
        version: &prov.version,
        build_id: &prov.ids.build,
        created: &rfc3339(spec.source_date_epoch),
        tool: &format!("imgforge-{}", prov.imgforge_version),
        service,
        data,
    })?;
    let documents = [
        (
            DocumentKind::Packages,
            format!("{stem}.packages"),
            contents::packages_text(&packages).into_bytes(),
        ),
        (
            DocumentKind::Files,
            format!("{stem}.files"),
            contents::files_text(&files).into_bytes(),
        ),
        (
            DocumentKind::Sbom,
            format!("{stem}.spdx.json"),
            serde_json::to_vec_pretty(&sbom)?,
        ),
    ];
    let mut records = Vec::new();
    for (kind, file, bytes) in documents {
        crate::atomic::write(&input.out_dir.join(&file), &bytes)?;
        records.push(DocumentRecord::of(kind, file, &bytes));
    }
    reporter.println(&format!(
        "    {} packages, {} paths recorded; SBOM {stem}.spdx.json",
        packages.len(),
        files.len()
    ));
    Ok(records)
}

/// `epoch` as RFC 3339 UTC.
fn rfc3339(epoch: u32) -> String {
    time::OffsetDateTime::from_unix_timestamp(epoch.into())
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
