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
/// `SHA256SUMS` there, listing the artifacts and the seal's documents.
pub fn export(
    def: &Definition,
    sealed: &Sealed,
    out_dir: &Path,
    reporter: &Reporter,
) -> Result<Vec<ArtifactRecord>> {
    let disk = &sealed.disk;
    let mut records = Vec::new();
    for &format in &def.output.formats {
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
            .arg(disk)
            .arg(&path)
            .run()?;
        let size = std::fs::metadata(&path)?.len();
        let sha256 = sha256_file(&path)?;
        reporter.event(
            Event::Artifact,
            &format!("    {file}  {size} bytes  sha256 {sha256}"),
            serde_json::json!({ "file": file, "format": format, "size": size, "sha256": sha256 }),
        );
        records.push(ArtifactRecord {
            format,
            file,
            size,
            sha256,
        });
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
