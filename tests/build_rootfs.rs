//! The rootfs builder with real mmdebstrap and QEMU: a cold build verified by its HTTP check,
//! a cached no-op, a re-bake on the cached base serving new data, failures that leave nothing
//! behind, and a UEFI image booted through OVMF.
//!
//! The base layer is cached in `target/imgforge-test-cache`, shared by the tests here; the
//! first test to need it builds it while the others wait.

mod common;

use common::{imgforge, repo_root, run};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

fn cache_dir() -> PathBuf {
    repo_root().join("target/imgforge-test-cache")
}

/// A copy of `images/debian-12-web.toml` in a temporary directory, with its own data tarball
/// and output directory, baking the demo service from this repository.
struct WebFixture {
    dir: tempfile::TempDir,
}

impl WebFixture {
    fn new(page_text: &str, extra: &str) -> WebFixture {
        let dir = tempfile::tempdir().unwrap();
        let fixture = WebFixture { dir };
        fixture.set_data(page_text, extra);
        fixture
    }

    fn definition(&self) -> PathBuf {
        self.dir.path().join("web.toml")
    }

    fn output(&self) -> PathBuf {
        self.dir.path().join("output")
    }

    /// Makes the data tarball showing `page_text` and writes the definition pinning it.
    fn set_data(&self, page_text: &str, extra: &str) {
        let tar = self.dir.path().join("web-data.tar");
        let out = Command::new(repo_root().join("scripts/make-demo-data"))
            .arg(&tar)
            .arg(page_text)
            .output()
            .unwrap();
        assert!(out.status.success());
        let sha = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let shipped = fs::read_to_string(repo_root().join("images/debian-12-web.toml")).unwrap();
        // The service at the commit checked out when the fixture is made, so that a commit made
        // while the tests run does not change the bake.
        let head = Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        let head = String::from_utf8(head.stdout).unwrap().trim().to_string();
        let def = shipped
            .replace(
                "repo = \"..\"",
                &format!("repo = \"{}\"", repo_root().display()),
            )
            .replace("ref = \"HEAD\"", &format!("ref = \"{head}\""))
            .replace("path = \"data/web-data.tar\"", "path = \"web-data.tar\"")
            .replace(
                "c4fcf6c433c107c25eb609c247248f47dc2cd67d3e1d508cb197a310d1cb4845",
                &sha,
            )
            .replace(
                "expect = \"imgforge demo data v1\"",
                &format!("expect = \"{page_text}\""),
            );
        fs::write(self.definition(), def + extra).unwrap();
    }

    /// Adds `toml` (provisioners, checks) to the definition, before its first check.
    fn insert_before_checks(&self, toml: &str) {
        let def = fs::read_to_string(self.definition()).unwrap();
        let def = def.replacen("[[checks]]", &format!("{toml}\n[[checks]]"), 1);
        fs::write(self.definition(), def).unwrap();
    }

    fn build(&self, extra_args: &[&str]) -> (i32, Vec<Value>, String) {
        let (code, out, err) = run(imgforge()
            .args(["build", "--json", "--output-dir"])
            .arg(self.output())
            .args(extra_args)
            .arg(self.definition())
            .env("IMGFORGE_CACHE", cache_dir()));
        let events = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (code, events, err)
    }
}

fn last_manifest(events: &[Value]) -> &Value {
    let last = events.last().expect("no JSON output");
    assert_eq!(
        last["event"], "manifest",
        "the last JSON line is the manifest: {last}"
    );
    last
}

/// Serialises the tests that need the base layer, and builds it once.
fn base_lock() -> &'static Mutex<()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
}

/// Reads a file from the ext4 root partition of a raw image with debugfs.
fn read_from_image(raw: &Path, file: &str) -> String {
    let part = raw.with_extension("root.img");
    let dd = Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=1M", "skip=1", "conv=sparse", "status=none"])
        .status()
        .unwrap();
    assert!(dd.success());
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(&part)
        .output()
        .unwrap();
    fs::remove_file(&part).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn no_qemu_running_for(path: &Path) -> bool {
    let out = Command::new("pgrep")
        .arg("-af")
        .arg("qemu-system")
        .output()
        .unwrap();
    !String::from_utf8_lossy(&out.stdout).contains(&path.display().to_string())
}

#[test]
fn cold_build_verifies_then_cached_then_rebake_serves_new_data() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let web = WebFixture::new("imgforge test data v1", "");

    let (code, events, err) = web.build(&[]);
    assert_eq!(code, 0, "cold build failed:\n{err}");
    let m1 = last_manifest(&events);
    assert_eq!(m1["cached"], false);
    let passed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "check_passed")
        .collect();
    assert_eq!(passed.len(), 2, "both HTTP checks passed: {events:?}");
    let dir1 = PathBuf::from(m1["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    assert_eq!(
        dir1.file_name().unwrap().to_str().unwrap(),
        m1["ids"]["build"].as_str().unwrap()
    );

    // SHA256SUMS matches the artifacts.
    let sums = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&dir1)
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );

    // Provenance and hygiene inside the image.
    let raw = dir1.join("debian-12-web-1.0.0.raw");
    let provenance: Value =
        serde_json::from_str(&read_from_image(&raw, "/etc/imgforge/build.json"))
            .expect("/etc/imgforge/build.json is JSON");
    assert_eq!(provenance["build_id"], m1["ids"]["build"]);
    assert_eq!(provenance["base_id"], m1["ids"]["base"]);
    assert_eq!(provenance["data_sha256"], m1["data_digest"]);
    assert_eq!(provenance["service"]["commit"], m1["service"]["commit"]);
    let packages = provenance["packages"].as_array().expect("package list");
    assert!(packages
        .iter()
        .any(|p| p.as_str().unwrap().starts_with("nginx-light=")));
    assert_eq!(read_from_image(&raw, "/etc/machine-id"), "");
    assert!(!read_from_image(&raw, "/root/.ssh/authorized_keys").contains("imgforge-build-key"));
    assert!(read_from_image(&raw, "/etc/ssh/ssh_host_ed25519_key.pub").is_empty());
    assert!(read_from_image(&raw, "/srv/web/index.html").contains("imgforge test data v1"));

    // Same inputs: nothing is rebuilt.
    let (code, events, err) = web.build(&[]);
    assert_eq!(code, 0, "{err}");
    let m2 = last_manifest(&events);
    assert_eq!(m2["cached"], true);
    assert_eq!(m2["ids"], m1["ids"]);
    assert!(
        !events.iter().any(|e| e["event"] == "phase"),
        "a cached build runs no phase"
    );

    // New data: the base is reused, the bake is new, and the image serves the new page.
    web.set_data("imgforge test data v2", "");
    let (code, events, err) = web.build(&[]);
    assert_eq!(code, 0, "re-bake failed:\n{err}");
    let m3 = last_manifest(&events);
    assert_eq!(m3["ids"]["base"], m1["ids"]["base"]);
    assert_ne!(m3["ids"]["bake"], m1["ids"]["bake"]);
    assert!(
        events.iter().any(|e| e["event"] == "base_cached"),
        "the OS was not rebuilt"
    );
    assert!(!events.iter().any(|e| e["phase"] == "mmdebstrap"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "check_passed" && e["check"]["expect"] == "imgforge test data v2"));

    // verify runs the checks again on the built image.
    let (code, _, err) = run(imgforge()
        .arg("verify")
        .arg(m3["manifest_path"].as_str().unwrap())
        .env("IMGFORGE_CACHE", cache_dir()));
    assert_eq!(code, 0, "{err}");

    // A script that needs a running system runs over SSH in the booted image, after the
    // offline steps; the build key is gone from the result all the same.
    fs::write(
        web.dir.path().join("running.sh"),
        "state=$(systemctl is-system-running --wait || true)\n\
         echo \"baked while systemd was $state\" > /srv/web/running.txt\n",
    )
    .unwrap();
    web.insert_before_checks(
        "[[provisioners]]\ntype = \"shell\"\nscript = \"running.sh\"\nneeds_running_system = true\n\n\
         [[checks]]\ntype = \"http\"\nport = 80\npath = \"/running.txt\"\nexpect = \"baked while systemd was running\"\n",
    );
    let (code, events, err) = web.build(&[]);
    assert_eq!(code, 0, "bake with an SSH provisioner failed:\n{err}");
    let m4 = last_manifest(&events);
    assert_eq!(m4["ids"]["base"], m1["ids"]["base"]);
    assert!(events
        .iter()
        .any(|e| e["phase"] == "bake (running system, SSH)"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "check_passed" && e["check"]["path"] == "/running.txt"));
    let dir4 = PathBuf::from(m4["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let raw = dir4.join("debian-12-web-1.0.0.raw");
    assert!(!read_from_image(&raw, "/root/.ssh/authorized_keys").contains("imgforge-build-key"));
    assert_eq!(read_from_image(&raw, "/etc/machine-id"), "");
}

#[test]
fn wrong_data_checksum_fails_before_any_vm_starts() {
    let web = WebFixture::new("checksum test", "");
    let def = fs::read_to_string(web.definition()).unwrap();
    let tar_sha = def.split("sha256 = \"").nth(1).unwrap()[..64].to_string();
    let wrong = "0".repeat(64);
    fs::write(web.definition(), def.replace(&tar_sha, &wrong)).unwrap();
    let (code, events, err) = web.build(&[]);
    assert_ne!(code, 0);
    assert!(err.contains("web-data.tar"), "{err}");
    assert!(
        err.contains(&tar_sha) && err.contains(&wrong),
        "names both digests: {err}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "phase"),
        "no phase started: {events:?}"
    );
    assert!(
        !web.output().join("debian-12-web").exists()
            || fs::read_dir(web.output().join("debian-12-web"))
                .unwrap()
                .count()
                == 0
    );
}

#[test]
fn failing_provisioner_fails_the_build_with_its_output_and_leaves_no_artifact() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let web = WebFixture::new("provisioner test", "");
    fs::write(
        web.dir.path().join("fail.sh"),
        "echo 'provisioner was here'\necho 'disk is full, giving up' >&2\nexit 7\n",
    )
    .unwrap();
    web.insert_before_checks("[[provisioners]]\ntype = \"shell\"\nscript = \"fail.sh\"\n");
    let (code, _, err) = web.build(&[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("provisioners[0] (fail.sh)"),
        "names the script: {err}"
    );
    assert!(err.contains("exit status 7"), "{err}");
    assert!(
        err.contains("disk is full, giving up"),
        "quotes its output: {err}"
    );
    let name_dir = web.output().join("debian-12-web");
    let left: Vec<_> = fs::read_dir(&name_dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "no artifact or partial directory is left: {left:?}"
    );
    assert!(no_qemu_running_for(web.dir.path()));
    let work = cache_dir().join("work");
    assert_eq!(
        fs::read_dir(&work).map(|d| d.count()).unwrap_or(0),
        0,
        "work directories removed"
    );
}

#[test]
fn uefi_image_boots_through_ovmf_from_its_efi_system_partition() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let shipped = fs::read_to_string(repo_root().join("images/debian-12-minimal.toml")).unwrap();
    let def = dir.path().join("uefi.toml");
    fs::write(
        &def,
        shipped
            .replace("firmware = \"bios\"", "firmware = \"uefi\"")
            .replace("formats = [\"qcow2\"]", "formats = [\"raw\"]"),
    )
    .unwrap();
    let (code, out, err) = run(imgforge()
        .args(["build", "--json", "--output-dir"])
        .arg(dir.path().join("output"))
        .arg(&def)
        .env("IMGFORGE_CACHE", cache_dir()));
    assert_eq!(code, 0, "UEFI build failed:\n{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The check (sshd answering on port 22) passed in a boot under OVMF.
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "check_passed" && e["check"]["port"] == 22),
        "{events:?}"
    );
    let m = last_manifest(&events);
    let raw = PathBuf::from(m["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("debian-12-minimal-1.0.0.raw");

    // A GPT disk: an EFI system partition holding GRUB as the removable-media boot loader, and
    // no BIOS boot code in the protective MBR, so only the UEFI path can have booted it.
    let table = Command::new("sfdisk")
        .arg("--json")
        .arg(&raw)
        .output()
        .unwrap();
    let table: Value = serde_json::from_slice(&table.stdout).unwrap();
    assert_eq!(table["partitiontable"]["label"], "gpt", "{table}");
    let esp = &table["partitiontable"]["partitions"][0];
    assert_eq!(
        esp["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "{table}"
    );
    let offset = esp["start"].as_u64().unwrap() * 512;
    let listing = Command::new("mdir")
        .arg("-i")
        .arg(format!("{}@@{offset}", raw.display()))
        .arg("::/EFI/BOOT")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("BOOTX64"), "{listing}");
    let mut mbr = [0u8; 440];
    std::io::Read::read_exact(&mut fs::File::open(&raw).unwrap(), &mut mbr).unwrap();
    assert!(mbr.iter().all(|&b| b == 0), "BIOS boot code in the MBR");
}
