//! `imgforge doctor`: what this host has for building images, and what to install if not.

use crate::events::{payload, Reporter};
use crate::process::{on_path, Command};
use anyhow::{bail, Result};

/// One finding.
struct Finding {
    name: &'static str,
    ok: bool,
    detail: String,
    required: bool,
}

fn program(name: &'static str, package: &str, required: bool) -> Finding {
    match on_path(name) {
        Some(p) => Finding {
            name,
            ok: true,
            detail: p.display().to_string(),
            required,
        },
        None => Finding {
            name,
            ok: false,
            detail: format!("not found: install the Debian package {package} (scripts/setup does)"),
            required,
        },
    }
}

/// Free bytes on the file system holding `path` (via `df`).
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .run()
        .ok()?;
    out.text().lines().nth(1)?.trim().parse().ok()
}

/// Whether this process runs as root, which the seal step's loop mounts need.
fn root() -> Finding {
    let root = crate::process::running_as_root();
    Finding {
        name: "root",
        ok: root,
        detail: match root {
            true => "yes: the seal step can mount the baked disk through a loop device".into(),
            false => "no: the seal step mounts the baked disk through a loop device; run imgforge as root (sudo)".into(),
        },
        required: true,
    }
}

/// The host programs imgforge runs, and each OS family's for its bases.
fn programs() -> Vec<Finding> {
    let mut findings = vec![
        program("qemu-system-x86_64", "qemu-system-x86", true),
        program("qemu-img", "qemu-utils", true),
        program("mkfs.ext4", "e2fsprogs", true),
        program("sfdisk", "fdisk", true),
        program("grub-mkimage", "grub-common", true),
        program("mformat", "mtools", false),
        program("ssh", "openssh-client", true),
        program("ssh-keygen", "openssh-client", true),
        program("git", "git", true),
        program("xorriso", "xorriso", false),
        program("losetup", "mount", true),
    ];
    for family in crate::os::FAMILIES {
        for (name, package) in crate::os::family(family).host_programs() {
            findings.push(program(name, package, true));
        }
    }
    findings
}

/// Checks the host and reports; fails if something required is missing.
pub fn run(reporter: &Reporter) -> Result<()> {
    let mut findings = programs();
    findings.push(root());
    let accel = match crate::qemu::probe_kvm() {
        Ok(()) => Finding {
            name: "accelerator",
            ok: true,
            detail: "kvm".into(),
            required: false,
        },
        Err(e) => Finding {
            name: "accelerator",
            ok: true,
            detail: format!("tcg (software emulation; KVM: {e:#})"),
            required: false,
        },
    };
    findings.push(accel);
    let cache = crate::store::cache_dir();
    let probe_dir = if cache.exists() {
        cache.clone()
    } else {
        std::path::PathBuf::from(".")
    };
    let free = free_bytes(&probe_dir);
    findings.push(Finding {
        name: "free disk",
        ok: free.is_some_and(|b| b > 10 << 30),
        detail: match free {
            Some(b) => format!(
                "{:.1} GiB free for {} (a build wants about 10 GiB)",
                b as f64 / (1u64 << 30) as f64,
                cache.display()
            ),
            None => "unknown".into(),
        },
        required: false,
    });
    for f in &findings {
        reporter.emit(
            &format!(
                "{} {:<20} {}",
                if f.ok { "ok  " } else { "MISS" },
                f.name,
                f.detail
            ),
            &payload::Doctor {
                check: f.name.to_string(),
                ok: f.ok,
                detail: f.detail.clone(),
                required: f.required,
            },
        );
    }
    let missing: Vec<&str> = findings
        .iter()
        .filter(|f| f.required && !f.ok)
        .map(|f| f.name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "this host cannot build images yet: missing {}; run scripts/setup",
            missing.join(", ")
        );
    }
    Ok(())
}
