//! Export: the finished disk converted into the requested formats with `qemu-img convert`,
//! each with its size and sha256, plus a `SHA256SUMS` file; a Vagrant box ([`crate::vagrant`])
//! with its catalogue.

use crate::definition::DiskFormat;
use crate::events::{payload, Reporter};
use crate::manifest::{ArtifactRecord, DocumentRecord, SUMS_FILE_NAME};
use crate::process::Command;
use crate::seal::Sealed;
use crate::sources::sha256_file;
use crate::spec::OutputSpec;
use anyhow::Result;
use std::path::Path;

/// `qemu-img convert` options for each format.
fn convert_args(format: DiskFormat, compress: bool) -> Vec<&'static str> {
    match format {
        DiskFormat::Qcow2 if compress => vec!["-O", "qcow2", "-c"],
        DiskFormat::Qcow2 => vec!["-O", "qcow2"],
        DiskFormat::Raw => vec!["-O", "raw"],
        DiskFormat::Vmdk => vec!["-O", "vmdk", "-o", "subformat=streamOptimized"],
        DiskFormat::Vhd => vec!["-O", "vpc", "-o", "subformat=dynamic"],
        DiskFormat::VagrantLibvirt => unreachable!("a Vagrant box is not a qemu-img conversion"),
    }
}

/// Where export writes and where the build will finally be.
pub struct ExportTarget<'a> {
    /// The build's output directory being assembled.
    pub out_dir: &'a Path,
    /// The directory the finished build is moved to (for the Vagrant catalogue's URL).
    pub final_dir: &'a Path,
    /// Scratch space, removed with the build.
    pub work: &'a Path,
    /// The build's time (RFC 3339), which versions the Vagrant catalogue.
    pub built_at: &'a str,
}

/// What export wrote: the artifacts, and the documents it added (the Vagrant catalogue).
pub struct Exported {
    /// One record per format, in the definition's order.
    pub artifacts: Vec<ArtifactRecord>,
    /// Documents written beside them, listed in `SHA256SUMS` with the seal's.
    pub documents: Vec<DocumentRecord>,
}

/// Converts the sealed disk into every format of `spec` inside `target.out_dir`, and
/// writes `SHA256SUMS` there, listing the artifacts, the seal's documents and the Vagrant
/// catalogue when there is a box. The formats are converted and hashed at the same time, each
/// on its own thread; the records keep the definition's order.
pub fn export(
    spec: &OutputSpec,
    sealed: &Sealed,
    target: &ExportTarget,
    reporter: &Reporter,
) -> Result<Exported> {
    let records = std::thread::scope(|scope| {
        let writers: Vec<_> = spec
            .formats
            .iter()
            .map(|&format| scope.spawn(move || write_artifact(spec, sealed, format, target)))
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("an export thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    for r in &records {
        reporter.emit(
            &format!("    {}  {} bytes  sha256 {}", r.file, r.size, r.sha256),
            &payload::Artifact {
                file: r.file.clone(),
                format: Some(r.format),
                size: r.size,
                sha256: r.sha256.clone(),
            },
        );
    }
    let documents = records
        .iter()
        .filter(|r| r.format == DiskFormat::VagrantLibvirt)
        .map(|r| {
            crate::vagrant::write_catalogue(
                spec,
                &r.file,
                &r.sha256,
                target.final_dir,
                target.built_at,
                target.out_dir,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let sums: String = records
        .iter()
        .map(|r| (&r.sha256, &r.file))
        .chain(
            sealed
                .documents
                .iter()
                .chain(&documents)
                .map(|d| (&d.sha256, &d.file)),
        )
        .map(|(sha256, file)| format!("{sha256}  {file}\n"))
        .collect();
    crate::atomic::write(&target.out_dir.join(SUMS_FILE_NAME), sums.as_bytes())?;
    Ok(Exported {
        artifacts: records,
        documents,
    })
}

/// Writes the sealed disk as one `format` into `out_dir` and hashes it.
fn write_artifact(
    spec: &OutputSpec,
    sealed: &Sealed,
    format: DiskFormat,
    target: &ExportTarget,
) -> Result<ArtifactRecord> {
    let file = format!(
        "{}-{}.{}",
        spec.image.name,
        spec.image.version,
        format.extension()
    );
    let path = target.out_dir.join(&file);
    if format == DiskFormat::VagrantLibvirt {
        let box_disk = crate::vagrant::box_disk(spec, sealed, target.work)?;
        crate::vagrant::write_box(spec, &box_disk, target.work, target.out_dir, &file)?;
        std::fs::remove_file(&box_disk).ok();
    } else if format != DiskFormat::Raw || std::fs::hard_link(&sealed.disk, &path).is_err() {
        // The sealed disk is raw and nothing writes it again: the raw artifact is the same
        // file, linked, where the output directory is on the same file system.
        Command::new("qemu-img")
            .arg("convert")
            .args(convert_args(format, spec.compress))
            .arg(&sealed.disk)
            .arg(&path)
            .run()?;
    }
    Ok(ArtifactRecord {
        format,
        size: std::fs::metadata(&path)?.len(),
        sha256: sha256_file(&path)?,
        file,
    })
}
