//! Verification: boot a built image (on a throwaway overlay, so the artifact is never changed)
//! through its firmware and boot loader, and wait for the definition's checks to pass through
//! port forwards on 127.0.0.1.

use crate::definition::{Accelerator, Check, Machine};
use crate::events::Reporter;
use crate::manifest::Manifest;
use crate::process::Command;
use crate::qemu::{Vm, VmConfig};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Boots `disk` and waits until every check passes; the console goes to `console_log`.
pub fn verify(
    disk: &Path,
    machine: &Machine,
    checks: &[Check],
    work: &Path,
    console_log: &Path,
    reporter: &Reporter,
) -> Result<()> {
    reporter.phase("verify");
    if checks.is_empty() {
        reporter.println("    no checks defined: the image is not booted");
        return Ok(());
    }
    let format = match disk.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => "qcow2",
        _ => "raw",
    };
    let overlay = work.join("verify.qcow2");
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(
            std::fs::canonicalize(disk)
                .with_context(|| format!("{} is missing", disk.display()))?,
        )
        .arg(&overlay)
        .run()?;
    let mut ports = BTreeMap::new();
    for c in checks {
        let guest = match c {
            Check::Tcp { port } | Check::Http { port, .. } => *port,
        };
        if let std::collections::btree_map::Entry::Vacant(e) = ports.entry(guest) {
            e.insert(free_port()?);
        }
    }
    let cfg = VmConfig {
        forwards: ports.iter().map(|(g, h)| (*h, *g)).collect(),
        ..VmConfig::for_machine(machine, &overlay)
    };
    let run_dir = work.join("vm-verify");
    std::fs::create_dir_all(&run_dir)?;
    let mut vm = Vm::start(&cfg, &run_dir, &run_dir.join("console.log"))?;
    let timeout = machine.timeouts.boot.0;
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&Check> = checks.iter().collect();
    let mut last_error = String::new();
    let outcome = loop {
        pending.retain(|c| match run_check(c, &ports) {
            Ok(()) => {
                reporter.event(
                    "check_passed",
                    &format!("    check passed: {}", describe(c)),
                    serde_json::json!({ "check": c }),
                );
                false
            }
            Err(e) => {
                last_error = format!("{}: {e:#}", describe(c));
                true
            }
        });
        if pending.is_empty() {
            break Ok(());
        }
        if crate::cancel::requested() {
            break Err(anyhow::anyhow!("interrupted during verification"));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the image did not pass its checks within {}: {last_error}; last console lines:\n{}",
                humantime::format_duration(timeout),
                vm.console_tail(15)
            ));
        }
        reporter.detail(&vm.console_last_line());
        std::thread::sleep(Duration::from_secs(1));
    };
    vm.kill();
    crate::bake::append_log(
        console_log,
        &format!(
            "===== verify =====\n{}",
            crate::qemu::strip_control(&vm.console())
        ),
    )?;
    std::fs::remove_file(&overlay).ok();
    outcome
}

/// One line naming a check.
pub fn describe(c: &Check) -> String {
    match c {
        Check::Tcp { port } => format!("tcp port {port}"),
        Check::Http { port, path, expect } => format!("http://:{port}{path} contains \"{expect}\""),
    }
}

fn run_check(c: &Check, ports: &BTreeMap<u16, u16>) -> Result<()> {
    match c {
        Check::Tcp { port } => {
            // QEMU's user network accepts on the host side whatever the guest does; a closed
            // guest port shows as an immediate end of stream.
            let mut s = TcpStream::connect(("127.0.0.1", ports[port]))?;
            s.set_read_timeout(Some(Duration::from_millis(1500)))?;
            let mut byte = [0u8; 1];
            match s.read(&mut byte) {
                Ok(0) => bail!("connection closed: nothing listens yet"),
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Check::Http { port, path, expect } => {
            let url = format!("http://127.0.0.1:{}{}", ports[port], path);
            let resp = ureq::get(&url).timeout(Duration::from_secs(5)).call()?;
            let body = resp.into_string()?;
            if body.contains(expect.as_str()) {
                Ok(())
            } else {
                bail!(
                    "the page does not contain \"{expect}\"; it says: {}",
                    body.chars().take(200).collect::<String>()
                )
            }
        }
    }
}

/// `imgforge verify`: runs a manifest's checks again on its built image.
pub fn verify_manifest(
    manifest_path: &Path,
    accelerator: Accelerator,
    reporter: &Reporter,
) -> Result<()> {
    let manifest = Manifest::load(manifest_path)?;
    let disk = [
        crate::definition::DiskFormat::Qcow2,
        crate::definition::DiskFormat::Raw,
    ]
    .into_iter()
    .find_map(|f| manifest.artifact_path(manifest_path, f))
    .with_context(|| {
        format!(
            "{}: no qcow2 or raw artifact to boot",
            manifest_path.display()
        )
    })?;
    let work = tempfile::tempdir()?;
    let machine = Machine {
        accelerator,
        firmware: manifest.firmware,
        ..Machine::default()
    };
    verify(
        &disk,
        &machine,
        &manifest.checks,
        work.path(),
        &work.path().join("console.log"),
        reporter,
    )?;
    reporter.result(
        &format!("{}: all {} checks passed", manifest_path.display(), manifest.checks.len()),
        &serde_json::json!({ "event": "verified", "manifest": manifest_path, "checks": manifest.checks.len() }),
    );
    Ok(())
}
