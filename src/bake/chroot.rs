//! The chroot bake: where a bake needs no running system and imgforge runs as root, the bundle
//! is applied to the base's file tree on the host (the way mkosi, Aminator and
//! diskimage-builder bake) instead of booting the base in a VM. The tree is the base disk
//! converted to raw and mounted through a loop device; the script runs in a chroot in its own
//! mount and PID namespaces (`unshare`), so its mounts and any process it leaves behind go
//! with it, and with a `policy-rc.d` that keeps package scripts from starting services on the
//! host. The result is written back as an overlay of the base, as the VM bake leaves it.

use super::{pack_bundle, BakeInput, Bundle};
use crate::bake_protocol::{self, BUNDLE_DIR, STATUS_MARKER};
use crate::disk::loopmount::{Access, RootMount};
use crate::events::Reporter;
use crate::process::Command;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `timeout`'s exit statuses when the time ran out: the bake ended on SIGTERM, or on the
/// SIGKILL that follows.
const TIMED_OUT: [i32; 2] = [124, 137];

/// Whether this host can bake in a chroot: root, and `unshare` to make the namespaces.
pub fn available() -> bool {
    crate::process::running_as_root() && crate::process::on_path("unshare").is_some()
}

/// Runs `bundle` in a chroot of the base's tree; returns the script's output and the baked
/// disk as raw, which the seal step reads. The layer's overlay is written from it only when
/// the layer is saved for the remote cache ([`write_overlay`]): a build without one pays no
/// conversion.
pub fn run(input: &BakeInput, bundle: Bundle, reporter: &Reporter) -> Result<(String, PathBuf)> {
    reporter.phase(&format!("{} (chroot)", bundle.what));
    let what = bundle.what;
    let bundle_tar = pack_bundle(&bundle.dir, bundle.script)?;
    let raw = input.work.join("bake.raw");
    let base = input.base.disk();
    Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&base)
        .arg(&raw)
        .run()?;
    let root = RootMount::find(&raw, input.work, Access::ReadWrite, &|tree| {
        crate::os::family(input.spec.family).is_root(tree)
    })?
    .context("the base disk has no root filesystem to bake in")?;
    let wrapper = input.work.join("chroot-bake.sh");
    std::fs::write(&wrapper, wrapper_script()?)?;
    // `timeout` ends `unshare`, and with it every process of the bake (`--kill-child`).
    let limit = input.spec.vm.timeouts.bake.0;
    let (code, out) = Command::new("timeout")
        .args(["--kill-after=10", &format!("{}s", limit.as_secs().max(1))])
        .args([
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "sh",
        ])
        .arg(&wrapper)
        .arg(root.path())
        .arg(&bundle_tar)
        .run_unchecked()
        .context("cannot start the chroot bake (unshare)")?;
    let output = strip_ansi_escapes::strip_str(
        String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr),
    );
    for line in output.lines() {
        reporter.detail(line);
    }
    crate::qemu::append_console_section(input.console_log, what, &output)?;
    root.unmount()?;
    if TIMED_OUT.contains(&code) {
        bail!(
            "{}: the bake took longer than machine.timeouts.bake ({}) and was stopped; its last \
             lines:\n{}",
            input.spec.file.display(),
            humantime::format_duration(limit),
            crate::process::tail_lines(&output, 20)
        );
    }
    match bake_protocol::exit_status(&output) {
        Some(0) => {}
        Some(code) => bail!(
            "{}: {} failed (exit status {code}); its output:\n{}",
            input.spec.file.display(),
            bake_protocol::failed_step(&output).unwrap_or("the bake script"),
            bake_protocol::step_output(&output)
        ),
        None => bail!(
            "the chroot bake ended without reporting a result; its last lines:\n{}",
            crate::process::tail_lines(&output, 20)
        ),
    }
    Ok((output, raw))
}

/// Writes the baked `raw` disk as `overlay`, a qcow2 on top of the `base` disk holding only
/// what the bake changed.
pub fn write_overlay(base: &Path, raw: &Path, overlay: &Path) -> Result<()> {
    Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", "-F", "qcow2", "-B"])
        .arg(base)
        .arg(raw)
        .arg(overlay)
        .run()?;
    Ok(())
}

/// The host side of a chroot bake, rendered from `templates/bake-chroot.sh.hbs`: run in the
/// new namespaces with the tree (`$1`) and the bundle tar (`$2`).
fn wrapper_script() -> Result<String> {
    crate::render::render_script(
        crate::render::BAKE_CHROOT,
        &serde_json::json!({ "bundle_dir": BUNDLE_DIR, "status_marker": STATUS_MARKER }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chroot_wrapper_renders_valid_shell_and_reports_the_bakes_status() {
        let script = wrapper_script().unwrap();
        crate::render::assert_valid_shell(&script);
        let dir = crate::render::sh_quote(BUNDLE_DIR);
        assert!(
            script.contains(&format!("tar -xf \"$2\" -C \"$R\"{dir}\n")),
            "{script}"
        );
        assert!(script.contains(&format!("/bin/sh -c 'cd {dir} && sh ./bake.sh'")));
        assert!(script.ends_with(&format!(
            "echo {}\"$rc\"\n",
            crate::render::sh_quote(STATUS_MARKER)
        )));
    }
}
