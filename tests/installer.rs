//! The installer builder with real QEMU: a small installer made from Debian packages
//! (`scripts/make-mini-installer`) that honours the installer contract, driven through direct
//! kernel boot and through an ISO with a typed boot command; then the installed disk is booted
//! and checked. Also: timeout and interruption leave nothing behind, and the real
//! debian-installer fetches the rendered preseed and reaches the mirror step unattended.

mod common;

use common::web::qemu_processes_using;
use common::{imgforge, repo_root, run};
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const OPS_HASH: &str = "$6$imgforge$QS9G0tJtk0cFdg.JOL8FPYOLEyA9HEfiX6ZkHHeAWjFzZBuF4e7LEKL5MS6m3rOvicUEfFGW4KGydFrY3hieY1";
const OPS_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMyTvBOnMqYukmFa9MuF1DQG2xL0FOJ53NmH5xlaMYJs ops@example";

/// The small installer, built once per test run.
fn mini_installer() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("target/mini-installer");
        let status = Command::new(repo_root().join("scripts/make-mini-installer"))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/make-mini-installer failed");
        dir
    })
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

fn pinned(path: &Path) -> String {
    format!(
        "{{ path = \"{}\", sha256 = \"{}\" }}",
        path.display(),
        sha256(path)
    )
}

/// A definition for the small installer; `boot` is the `[installer]` media and boot lines.
fn definition(dir: &Path, hostname: &str, boot: &str, install_timeout: &str) -> PathBuf {
    let text = format!(
        r#"[image]
name = "mini"
version = "1"

[os]
family = "debian"
release = "bookworm"

[builder]
kind = "installer"

[installer]
{boot}

[machine]
cpus = 1
memory_mib = 512
disk_size = "1G"
accelerator = "auto"

[machine.timeouts]
install = "{install_timeout}"

[system]
hostname = "{hostname}"
mirror = "http://deb.debian.org/debian"

[[system.users]]
name = "ops"
password_hash = "{OPS_HASH}"
sudo = true
ssh_keys = ["{OPS_KEY}"]
"#
    );
    let path = dir.join("mini.toml");
    fs::write(&path, text).unwrap();
    path
}

fn kernel_boot(hostname_dir: &Path) -> String {
    let m = mini_installer();
    let _ = hostname_dir;
    format!(
        "kernel = {}\ninitrd = {}\nappend = \"url={{{{answer_url}}}} console=ttyS0,115200\"",
        pinned(&m.join("vmlinuz")),
        pinned(&m.join("initrd.gz"))
    )
}

fn iso_boot() -> String {
    format!(
        "iso = {}\nboot_wait = \"1s\"\nboot_command = [\"<waitFor \\\"boot:\\\">\", \"install url={{{{answer_url}}}} console=ttyS0,115200<enter>\"]",
        pinned(&mini_installer().join("installer.iso"))
    )
}

/// Runs `imgforge build --base-only --json` and returns (exit code, JSON events, stderr).
fn build_base(def: &Path, cache: &Path) -> (i32, Vec<Value>, String) {
    let (code, out, err) = run(imgforge()
        .args(["build", "--base-only", "--json"])
        .arg(def)
        .env("IMGFORGE_CACHE", cache));
    let events = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (code, events, err)
}

/// Boots the installed disk with the small installer's kernel in check mode and returns what
/// it printed.
fn inspect_installed_disk(disk: &Path) -> String {
    let m = mini_installer();
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let status = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-no-reboot",
            "-nodefaults",
        ])
        .arg("-kernel")
        .arg(m.join("vmlinuz"))
        .arg("-initrd")
        .arg(m.join("initrd.gz"))
        .args(["-append", "imgforge.check=1 console=ttyS0,115200"])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2,snapshot=on",
            disk.display()
        ))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .status()
        .unwrap();
    assert!(status.success());
    fs::read_to_string(&serial).unwrap_or_default()
}

fn assert_installed_as_asked(def: &Path, events: &[Value], hostname: &str) {
    let position = |kind: &str| {
        events
            .iter()
            .position(|e| e["event"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {events:?}"))
    };
    // The fetch is reported while the install runs, before the power-off.
    assert!(position("answer_file_fetched") < position("installed"));
    let fetched = &events[position("answer_file_fetched")];
    let installed = &events[position("installed")];
    let requests = installed["requests"].as_array().unwrap();
    let first_fetch = requests
        .iter()
        .find(|r| r["path"] == "preseed.cfg" && r["status"] == 200)
        .expect("the server logged the answer file's fetch");
    assert_eq!(fetched["after_s"], first_fetch["at_s"]);
    assert!(requests
        .iter()
        .any(|r| r["path"] == "preseed.cfg" && r["status"] == 200));
    assert!(
        requests
            .iter()
            .any(|r| r["path"] == "build-key.pub" && r["status"] == 200),
        "late command fetched the key"
    );
    let base = events.last().unwrap();
    assert_eq!(base["event"], "base");
    assert_eq!(
        base["info"]["answer_file_fetched_after_s"],
        fetched["after_s"]
    );
    assert!(
        fetched["after_s"].as_f64().unwrap() < base["info"]["build_seconds"].as_f64().unwrap(),
        "fetched during the install: {fetched}"
    );
    let seen = inspect_installed_disk(Path::new(base["disk"].as_str().unwrap()));
    assert!(
        seen.contains(&format!("CHECK hostname={hostname}")),
        "{seen}"
    );
    assert!(seen.contains("CHECK user=ops:/home/ops"), "{seen}");
    assert!(seen.contains(&format!("CHECK shadow={OPS_HASH}")), "{seen}");
    assert!(
        seen.contains("imgforge-build-key"),
        "the build key is installed for the bake: {seen}"
    );
    assert!(seen.contains(OPS_KEY), "{seen}");
    assert!(seen.contains("CHECK sudo=sudo:x:27:ops"), "{seen}");
    assert!(seen.contains("CHECK enabled=ssh.service"), "{seen}");
    // The partition the preseed's partman recipe asks for: its size (MB) and boot flag.
    let answer = render(def);
    let recipe = answer
        .lines()
        .find_map(|l| l.strip_prefix("d-i partman-auto/expert_recipe string "))
        .expect("the preseed has a partman recipe");
    let fields: Vec<&str> = recipe
        .split("::")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    let size_mb: u64 = fields[2].parse().unwrap();
    let bootable = recipe.contains("$bootable{ }");
    let partition = seen
        .lines()
        .find_map(|l| l.split("CHECK partition=").nth(1))
        .unwrap_or_else(|| panic!("no partition line: {seen}"));
    // busybox fdisk -l: DEVICE [*] START-CHS END-CHS START END SECTORS SIZE ID TYPE
    let columns: Vec<&str> = partition.split_whitespace().collect();
    assert_eq!(columns[0], "/dev/vda1", "{partition}");
    assert_eq!(
        columns[1] == "*",
        bootable,
        "boot flag as the recipe says: {partition}"
    );
    let from_end = |i: usize| columns[columns.len() - i];
    assert_eq!(from_end(6), "2048", "{partition}");
    assert_eq!(
        from_end(4).parse::<u64>().unwrap(),
        size_mb * 2048,
        "{size_mb} MB as the recipe says: {partition}"
    );
}

/// `imgforge render DEF`: the answer file the installer was served.
fn render(def: &Path) -> String {
    let (code, out, err) = run(imgforge().arg("render").arg(def));
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn small_installer_through_direct_kernel_boot() {
    let dir = tempfile::tempdir().unwrap();
    let def = definition(
        dir.path(),
        "kernel-boot-host",
        &kernel_boot(dir.path()),
        "10m",
    );
    let (code, events, err) = build_base(&def, &dir.path().join("cache"));
    assert_eq!(code, 0, "{err}");
    assert_installed_as_asked(&def, &events, "kernel-boot-host");
    // Built once: the second run finds the base in the cache.
    let (code, events, err) = build_base(&def, &dir.path().join("cache"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(events.last().unwrap()["cached"], true);
}

#[test]
fn small_installer_through_an_iso_and_a_typed_boot_command() {
    let dir = tempfile::tempdir().unwrap();
    let def = definition(dir.path(), "iso-boot-host", &iso_boot(), "10m");
    let (code, events, err) = build_base(&def, &dir.path().join("cache"));
    assert_eq!(code, 0, "{err}");
    assert_installed_as_asked(&def, &events, "iso-boot-host");
}

fn leftovers(cache: &Path) -> Vec<PathBuf> {
    let base = cache.join("base");
    fs::read_dir(&base)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn install_timeout_kills_qemu_keeps_the_log_and_removes_the_partial_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // The ISO waits at its boot prompt forever when nothing types: only the timeout ends it.
    let boot = format!(
        "iso = {}\nboot_wait = \"1s\"\nboot_command = [\"<wait>\"]",
        pinned(&mini_installer().join("installer.iso"))
    );
    let def = definition(dir.path(), "never", &boot, "8s");
    let (code, _, err) = build_base(&def, &cache);
    assert_ne!(code, 0);
    assert!(err.contains("timed out after 8s"), "{err}");
    assert!(
        err.contains("boot:"),
        "quotes the last console lines: {err}"
    );
    let log = err
        .split("console log is kept at ")
        .nth(1)
        .expect("names the kept log")
        .trim();
    assert!(fs::read_to_string(log).unwrap().contains("boot:"));
    assert!(
        leftovers(&cache).is_empty(),
        "partial base removed: {:?}",
        leftovers(&cache)
    );
    assert!(qemu_processes_using(&cache).is_empty());
}

#[test]
fn sigint_and_sigterm_stop_the_build_and_clean_up() {
    for signal in ["INT", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let boot = format!(
            "iso = {}\nboot_wait = \"1s\"\nboot_command = [\"<wait>\"]",
            pinned(&mini_installer().join("installer.iso"))
        );
        let def = definition(dir.path(), "interrupted", &boot, "10m");
        let mut child = imgforge()
            .args(["build", "--base-only", "--json"])
            .arg(&def)
            .env("IMGFORGE_CACHE", &cache)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (seen, installing) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if line.contains("\"phase\":\"install\"") {
                    let _ = seen.send(());
                }
            }
        });
        installing
            .recv_timeout(Duration::from_secs(60))
            .expect("the install phase starts");
        // Let QEMU come up, then interrupt imgforge alone (as CI or systemd would).
        let deadline = Instant::now() + Duration::from_secs(20);
        while qemu_processes_using(&cache).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            qemu_processes_using(&cache).len(),
            1,
            "QEMU runs before the signal"
        );
        assert!(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success());
        let out = child.wait_with_output().unwrap();
        reader.join().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "SIG{signal}: {err}");
        assert!(err.contains("interrupted"), "SIG{signal}: {err}");
        assert!(
            qemu_processes_using(&cache).is_empty(),
            "SIG{signal}: no QEMU left"
        );
        assert!(
            leftovers(&cache).is_empty(),
            "SIG{signal}: {:?}",
            leftovers(&cache)
        );
    }
}

/// The shipped debian-installer definition with a shorter install timeout.
fn debian_installer_definition(dir: &Path, install_timeout: &str) -> PathBuf {
    let shipped = fs::read_to_string(repo_root().join("images/debian-12-installer.toml")).unwrap();
    let text = shipped.replace(
        "install = \"90m\"",
        &format!("install = \"{install_timeout}\""),
    );
    let path = dir.join("debian-12-installer.toml");
    fs::write(&path, text).unwrap();
    path
}

/// The install console logs under `cache` (the work directory of a running install).
fn install_consoles(cache: &Path) -> Vec<PathBuf> {
    let out = Command::new("find")
        .arg(cache)
        .args(["-name", "install-console.log"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// What marks the installer's mirror step on its console.
const MIRROR_STEPS: [&str; 3] = [
    "Download installer components",
    "Checking the Debian archive mirror",
    "Retrieving",
];

/// The real debian-installer (netboot kernel and initrd from the Debian package) with the
/// rendered preseed: it fetches the preseed and gets to the mirror without asking anything.
/// These machines' mirror serves no installer components (.udeb), so the install would stop
/// at "Download installer components" until its timeout: the test stops the build (SIGTERM)
/// once the console shows the mirror step, and reads the console log the build keeps.
#[test]
fn debian_installer_fetches_the_preseed_and_reaches_the_mirror_unattended() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let def = debian_installer_definition(dir.path(), "6m");
    let mut child = imgforge()
        .args(["-v", "build", "--base-only", "--json"])
        .arg(&def)
        .env("IMGFORGE_CACHE", &cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waiting = Instant::now();
    let reached_mirror = loop {
        let seen = install_consoles(&cache).iter().any(|log| {
            let console = fs::read_to_string(log).unwrap_or_default();
            MIRROR_STEPS.iter().any(|m| console.contains(m))
        });
        if seen || child.try_wait().unwrap().is_some() {
            break seen;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(330),
            "neither the mirror step nor the end of the build"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    if reached_mirror {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }
    let out = child.wait_with_output().unwrap();
    let completed = out.status.success();
    let (out, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let served = out.lines().any(|l| l.contains("\"event\":\"http_server\""));
    assert!(served, "{out}");
    assert!(
        err.contains("http request file=preseed.cfg status=200"),
        "the installer fetched the preseed: {err}"
    );
    if completed {
        // A mirror with installer components: the install completed.
        return;
    }
    let log = err
        .split("console log is kept at ")
        .nth(1)
        .expect("names the kept log")
        .trim();
    let console = strip_ansi_escapes::strip_str(fs::read_to_string(log).unwrap());
    assert!(
        console.contains("url=http://10.0.2.2:"),
        "booted with the answer-file URL"
    );
    let mirror_step = MIRROR_STEPS.iter().filter_map(|m| console.find(m)).min();
    let reached = mirror_step.expect("the installer reached the mirror step");
    assert!(
        !console[..reached].contains("Prompt: '?' for help"),
        "no question was asked before the mirror step:\n{}",
        &console[..reached]
    );
}

/// The whole install, where a normal Debian mirror is reachable: `IMGFORGE_FULL_INSTALL=1`.
#[test]
fn debian_installer_full_install_then_bake_over_ssh() {
    if std::env::var("IMGFORGE_FULL_INSTALL").as_deref() != Ok("1") {
        eprintln!("skipped: set IMGFORGE_FULL_INSTALL=1 where a full Debian mirror (with .udeb files) is reachable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let def = debian_installer_definition(dir.path(), "90m");
    let (code, out, err) = run(imgforge()
        .args(["build", "--json", "--output-dir"])
        .arg(dir.path().join("output"))
        .arg(&def)
        .env("IMGFORGE_CACHE", dir.path().join("cache")));
    assert_eq!(code, 0, "{err}");
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "manifest");
}
