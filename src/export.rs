//! Export: the finished disk converted into the requested formats with `qemu-img convert`,
//! each with its size and sha256, plus a `SHA256SUMS` file.

use crate::definition::{Definition, DiskFormat};
use crate::events::{Event, Reporter};
use crate::manifest::{ArtifactRecord, SUMS_FILE_NAME};
use crate::process::Command;
use crate::seal::Sealed;
use crate::sources::sha256_file;
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
    }
}

/// Converts the sealed disk into every format of the definition inside `out_dir`, and writes
/// `SHA256SUMS` there, listing the artifacts and the seal's documents. The formats are
/// converted and hashed at the same time, each on its own thread; the records keep the
/// definition's order.
pub fn export(
    def: &Definition,
    sealed: &Sealed,
    out_dir: &Path,
    reporter: &Reporter,
) -> Result<Vec<ArtifactRecord>> {
    let records = std::thread::scope(|scope| {
        let writers: Vec<_> = def
            .output
            .formats
            .iter()
            .map(|&format| scope.spawn(move || write_artifact(def, sealed, format, out_dir)))
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("an export thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    for r in &records {
        reporter.event(
            Event::Artifact,
            &format!("    {}  {} bytes  sha256 {}", r.file, r.size, r.sha256),
            serde_json::json!({ "file": r.file, "format": r.format, "size": r.size, "sha256": r.sha256 }),
        );
    }
    let sums: String = records
        .iter()
        .map(|r| (&r.sha256, &r.file))
        .chain(sealed.documents.iter().map(|d| (&d.sha256, &d.file)))
        .map(|(sha256, file)| format!("{sha256}  {file}\n"))
        .collect();
    crate::atomic::write(&out_dir.join(SUMS_FILE_NAME), sums.as_bytes())?;
    Ok(records)
}

/// Writes the sealed disk as one `format` into `out_dir` and hashes it.
fn write_artifact(
    def: &Definition,
    sealed: &Sealed,
    format: DiskFormat,
    out_dir: &Path,
) -> Result<ArtifactRecord> {
    let file = format!(
        "{}-{}.{}",
        def.image.name,
        def.image.version,
        format.extension()
    );
    let path = out_dir.join(&file);
    Command::new("qemu-img")
        .arg("convert")
        .args(convert_args(format, def.output.compress))
        .arg(&sealed.disk)
        .arg(&path)
        .run()?;
    Ok(ArtifactRecord {
        format,
        size: std::fs::metadata(&path)?.len(),
        sha256: sha256_file(&path)?,
        file,
    })
}
