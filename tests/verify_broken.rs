//! `verify`, and the build's own verify step, refuse images that cannot prove themselves: a
//! disk of zeros, a kernel that panics, a service that never listens; each for a TCP-only and
//! an HTTP check, each failing with a message naming what was missing. A TCP-only check still
//! passes on a booted image, on the guest's own bytes.

mod common;

use common::web::{base_lock, build_dir, last_manifest, raw_disk, WebFixture};
use common::{imgforge, run, write_build_record};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// `imgforge verify MANIFEST EXTRA…`: (exit code, stderr).
fn verify(manifest: &Path, extra: &[&str]) -> (i32, String) {
    let (code, _out, err) = run(imgforge().arg("verify").arg(manifest).args(extra));
    (code, err)
}

/// Rewrites the manifest's checks (what `verify` runs) as `checks`.
fn set_checks(manifest: &Path, checks: Value) {
    let mut m: Value = serde_json::from_slice(&fs::read(manifest).unwrap()).unwrap();
    m["checks"] = checks;
    fs::write(manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

const TCP_22: &str = "[[checks]]\ntype = \"tcp\"\nport = 22\n";

fn http_check(port: u16) -> Value {
    json!([{ "type": "http", "port": port, "path": "/", "expect": "imgforge" }])
}

fn tcp_check(port: u16) -> Value {
    json!([{ "type": "tcp", "port": port }])
}

#[test]
fn a_disk_of_zeros_fails_verify_naming_the_missing_boot_loader() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("zeros.raw");
    fs::File::create(&raw).unwrap().set_len(64 << 20).unwrap();
    let manifest = write_build_record(
        dir.path(),
        json!({
            "imgforge_version": "0.1.0",
            "name": "zeros",
            "version": "1",
            "definition": "zeros.toml",
            "ids": { "base": "a".repeat(64), "bake": "b".repeat(64), "build": "c".repeat(64) },
            "firmware": "bios",
            "arch": "x86_64",
            "disk_size": 64 << 20,
            "artifacts": [{ "format": "raw", "file": "zeros.raw" }],
            "built_at": "2026-11-26T10:00:00Z",
            "machine": { "cpus": 1, "memory_mib": 256, "accelerator": "tcg",
                         "timeouts": { "boot": "3m" } },
        }),
    );
    for (checks, named) in [
        (tcp_check(22), "tcp port 22"),
        (http_check(80), "http://:80/ contains \"imgforge\""),
        // No checks at all: the boot still has to be proven (by sshd on port 22).
        (json!([]), "tcp port 22"),
    ] {
        set_checks(&manifest, checks);
        let (code, err) = verify(&manifest, &[]);
        assert_eq!(code, 1, "a disk of zeros passed verify: {err}");
        assert!(
            err.contains("the firmware found no bootable disk"),
            "says what was seen: {err}"
        );
        assert!(
            err.contains(&format!("checks not passed: {named}")),
            "{err}"
        );
    }
}

/// Checks a manifest carries are held to the definition's rules before anything boots: a path
/// that would send the request to another host, and an `expect` that matches any page.
#[test]
fn a_manifest_whose_checks_prove_nothing_is_refused_before_booting() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("zeros.raw");
    fs::File::create(&raw).unwrap().set_len(1 << 20).unwrap();
    let manifest = write_build_record(
        dir.path(),
        json!({
            "imgforge_version": "0.1.0", "name": "zeros", "version": "1",
            "definition": "zeros.toml",
            "ids": { "base": "a".repeat(64), "bake": "b".repeat(64), "build": "c".repeat(64) },
            "firmware": "bios", "arch": "x86_64", "disk_size": 1 << 20,
            "artifacts": [{ "format": "raw", "file": "zeros.raw" }],
            "built_at": "2026-11-26T10:00:00Z",
        }),
    );
    for (check, key) in [
        (
            json!({ "type": "http", "port": 80, "path": "@example.org/", "expect": "x" }),
            "`path`",
        ),
        (
            json!({ "type": "http", "port": 80, "path": "/", "expect": "" }),
            "`expect`",
        ),
        (json!({ "type": "tcp", "port": 0 }), "`port`"),
    ] {
        set_checks(&manifest, json!([check]));
        let (code, err) = verify(&manifest, &[]);
        assert_eq!(code, 1, "{check} was run: {err}");
        assert!(
            err.contains("cannot prove the image") && err.contains(key),
            "{err}"
        );
        assert!(!err.contains("firmware"), "refused before booting: {err}");
    }
}

#[test]
fn a_build_whose_boot_loader_lost_its_configuration_fails_its_own_verify() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let web = WebFixture::new("no grub.cfg test", "");
    // The seal writes the boot loader again, but not its configuration, which is in the tree.
    web.add_shell_provisioner("wipe.sh", "rm -f /boot/grub/grub.cfg\n");
    web.replace_checks(TCP_22);
    let (code, events, err) = web.build(&[]);
    assert_eq!(
        code, 1,
        "an image whose boot loader has nothing to boot passed: {err}"
    );
    assert!(events.iter().any(|e| e["phase"] == "verify"), "{events:?}");
    assert!(
        err.contains("the boot loader stopped at its prompt")
            && err.contains("checks not passed: tcp port 22"),
        "{err}"
    );
    assert!(web.outputs().is_empty(), "{:?}", web.outputs());
}

/// Builds `web` without verifying it and returns its manifest.
fn build_unverified(web: &WebFixture) -> PathBuf {
    let (code, events, err) = web.build(&["--no-verify"]);
    assert_eq!(code, 0, "build failed:\n{err}");
    build_dir(last_manifest(&events)).join("manifest.json")
}

/// A build with its own verify step fails with `expected` in its message and leaves nothing.
fn assert_build_verify_fails(web: &WebFixture, expected: &str) {
    let (code, events, err) = web.build(&["--force"]);
    assert_eq!(
        code, 1,
        "the build's own verify passed a broken image: {err}"
    );
    assert!(
        events.iter().any(|e| e["phase"] == "verify"),
        "it failed in verify: {events:?}"
    );
    assert!(err.contains(expected), "{expected}: {err}");
    // --force replaced nothing: the earlier unverified build is all that is there.
    assert_eq!(web.outputs().len(), 1, "{:?}", web.outputs());
}

#[test]
fn a_kernel_panic_fails_verify_and_the_builds_own_verify() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let web = WebFixture::new("panic test", "");
    // init is replaced by a program that crashes the kernel (the bake itself runs its own init).
    web.add_shell_provisioner(
        "panic.sh",
        "rm -f /usr/sbin/init\n\
         printf '#!/bin/sh\\necho 1 > /proc/sys/kernel/sysrq\\necho c > /proc/sysrq-trigger\\n' > /usr/sbin/init\n\
         chmod 755 /usr/sbin/init\n",
    );
    web.replace_checks(TCP_22);
    let manifest = build_unverified(&web);
    // A TCP-only and an HTTP check, in one boot: both are named as unproven.
    let mut checks = tcp_check(22);
    checks
        .as_array_mut()
        .unwrap()
        .push(http_check(80)[0].clone());
    set_checks(&manifest, checks);
    let (code, err) = verify(&manifest, &[]);
    assert_eq!(code, 1, "a panicking image passed verify: {err}");
    assert!(
        err.contains("the kernel panicked: Kernel panic - not syncing"),
        "{err}"
    );
    for named in ["tcp port 22", "http://:80/"] {
        assert!(err.contains(named), "names the unproven check: {err}");
    }
    assert_build_verify_fails(&web, "the kernel panicked");
}

#[test]
fn a_service_that_never_listens_fails_naming_its_port_and_sshd_still_passes() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let web = WebFixture::new("listen test", "");
    // Nothing in the image listens on 8080. The boot timeout leaves the image time to boot
    // (about 30 s under TCG, more while other tests run), so the guest itself refuses the
    // connection.
    web.replace_checks("[[checks]]\ntype = \"tcp\"\nport = 8080\n");
    let def = fs::read_to_string(web.definition()).unwrap();
    fs::write(
        web.definition(),
        def.replace("boot = \"5m\"", "boot = \"100s\""),
    )
    .unwrap();
    let manifest = build_unverified(&web);

    // One boot: both checks of the closed port fail, each naming what it saw, while a TCP
    // check naming sshd's banner passes on the guest's own bytes.
    let mut checks = tcp_check(8080);
    checks.as_array_mut().unwrap().extend([
        http_check(8080)[0].clone(),
        json!({ "type": "tcp", "port": 22, "expect": "SSH-2.0-" }),
    ]);
    set_checks(&manifest, checks);
    let (code, out, err) = run(imgforge().args(["--json", "verify"]).arg(&manifest));
    assert_eq!(code, 1, "a closed port passed verify: {err}");
    assert!(
        err.contains("did not pass its checks within 1m 40s"),
        "{err}"
    );
    assert!(
        err.contains("tcp port 8080: the guest") && err.contains("nothing listens on port 8080"),
        "the guest refused the connection: {err}"
    );
    assert!(
        err.contains("http://:8080/ contains \"imgforge\": no HTTP response from the guest"),
        "{err}"
    );
    let passed: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("\"event\":\"check_passed\""))
        .collect();
    assert_eq!(passed.len(), 1, "{out}");
    assert!(
        passed[0].contains("\"evidence\":\"the guest sent \\\"SSH-2.0-OpenSSH"),
        "{out}"
    );
    assert!(!err.contains("tcp port 22"), "sshd's check passed: {err}");
}

#[test]
fn a_changed_file_beside_the_booted_one_fails_verify_though_the_image_boots() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let web = WebFixture::new("digest beside the boot test", "");
    web.replace_checks(TCP_22);
    let manifest = build_unverified(&web);
    let dir = manifest.parent().unwrap();
    // verify boots the qcow2 and checks the raw disk's digest while the guest boots. The raw
    // disk may be a link to the cached layer's disk: a changed copy replaces it.
    let raw = raw_disk(dir);
    let changed = dir.join("changed.raw");
    let copied = std::process::Command::new("cp")
        .arg("--sparse=always")
        .args([&raw, &changed])
        .status()
        .unwrap();
    assert!(copied.success());
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = fs::OpenOptions::new().write(true).open(&changed).unwrap();
        file.seek(SeekFrom::Start(1 << 30)).unwrap();
        file.write_all(b"X").unwrap();
    }
    fs::rename(&changed, &raw).unwrap();
    let (code, out, err) = run(imgforge().args(["--json", "verify"]).arg(&manifest));
    assert_eq!(
        code, 1,
        "an image with a changed raw disk passed verify: {err}"
    );
    assert!(
        out.contains("\"event\":\"phase\"") && out.contains("\"phase\":\"verify\""),
        "the qcow2 was checked and booted: {out}"
    );
    let raw_name = raw.file_name().unwrap().to_string_lossy();
    assert!(
        err.contains(&*raw_name) && err.contains("it changed after the build"),
        "names the changed file: {err}"
    );
    assert!(!out.contains("\"event\":\"verified\""), "{out}");
}
