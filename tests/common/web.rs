//! The shipped web image as a test fixture: `images/debian-12-web.toml` copied into a temporary
//! directory with its own data tarball and output directory, built on a base layer cached in
//! `target/imgforge-test-cache` and shared by every test that builds it.

use super::{imgforge, repo_root, run};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The imgforge cache shared by the tests that build images.
pub fn cache_dir() -> PathBuf {
    repo_root().join("target/imgforge-test-cache")
}

/// A copy of `images/debian-12-web.toml` in a temporary directory, with its own data tarball
/// and output directory, baking the demo service from this repository.
pub struct WebFixture {
    /// The fixture's directory.
    pub dir: tempfile::TempDir,
}

impl WebFixture {
    /// A fixture whose page shows `page_text`; `extra` is appended to the definition.
    pub fn new(page_text: &str, extra: &str) -> WebFixture {
        let dir = tempfile::tempdir().unwrap();
        let fixture = WebFixture { dir };
        fixture.set_data(page_text, extra);
        fixture
    }

    /// The definition file.
    pub fn definition(&self) -> PathBuf {
        self.dir.path().join("web.toml")
    }

    /// The output directory.
    pub fn output(&self) -> PathBuf {
        self.dir.path().join("output")
    }

    /// Makes the data tarball showing `page_text` and writes the definition pinning it.
    pub fn set_data(&self, page_text: &str, extra: &str) {
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
    pub fn insert_before_checks(&self, toml: &str) {
        let def = fs::read_to_string(self.definition()).unwrap();
        let def = def.replacen("[[checks]]", &format!("{toml}\n[[checks]]"), 1);
        fs::write(self.definition(), def).unwrap();
    }

    /// Writes `script` as `name` beside the definition and runs it as a shell provisioner (an
    /// offline one), before the checks.
    pub fn add_shell_provisioner(&self, name: &str, script: &str) {
        fs::write(self.dir.path().join(name), script).unwrap();
        self.insert_before_checks(&format!(
            "[[provisioners]]\ntype = \"shell\"\nscript = \"{name}\"\n"
        ));
    }

    /// Replaces every check of the definition with `checks` (TOML `[[checks]]` tables).
    pub fn replace_checks(&self, checks: &str) {
        let def = fs::read_to_string(self.definition()).unwrap();
        let (head, rest) = def.split_once("[[checks]]").unwrap();
        let (_, tail) = rest.split_once("[output]").unwrap();
        fs::write(self.definition(), format!("{head}{checks}\n[output]{tail}")).unwrap();
    }

    /// `imgforge build --json` of the definition: (exit code, JSON events, stderr).
    pub fn build(&self, extra_args: &[&str]) -> (i32, Vec<Value>, String) {
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

    /// `imgforge plan --json` of the definition: its one planned item.
    pub fn plan(&self) -> Value {
        let (code, out, err) = run(imgforge()
            .args(["plan", "--json", "--output-dir"])
            .arg(self.output())
            .arg(self.definition())
            .env("IMGFORGE_CACHE", cache_dir()));
        assert_eq!(code, 0, "{err}");
        let plan: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(plan["event"], "build_plan");
        plan["definitions"][0].clone()
    }

    /// What is left in the output directory of this image (finished or partial builds).
    pub fn outputs(&self) -> Vec<PathBuf> {
        fs::read_dir(self.output().join("debian-12-web"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }
}

/// The manifest event, which is the last JSON line of a successful build.
pub fn last_manifest(events: &[Value]) -> &Value {
    let last = events.last().expect("no JSON output");
    assert_eq!(
        last["event"], "manifest",
        "the last JSON line is the manifest: {last}"
    );
    last
}

/// The directory of the build a manifest event names.
pub fn build_dir(manifest: &Value) -> PathBuf {
    PathBuf::from(manifest["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Serialises the tests that need the base layer, and builds it once.
pub fn base_lock() -> &'static Mutex<()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
}

/// The raw disk among a build's artifacts in `build_dir`.
pub fn raw_disk(build_dir: &Path) -> PathBuf {
    fs::read_dir(build_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "raw"))
        .unwrap_or_else(|| panic!("no raw disk in {}", build_dir.display()))
}

/// Reads a file from the ext4 root partition (at 1 MiB) of a raw image with debugfs; `None`
/// when the file does not exist (debugfs prints nothing on stdout for both).
pub fn read_from_image(raw: &Path, file: &str) -> Option<String> {
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File not found by ext2_lookup") {
        return None;
    }
    assert!(
        out.status.success() && !stderr.contains("while"),
        "debugfs cannot read {file}: {stderr}"
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Command lines of the running QEMU processes that mention `path`.
pub fn qemu_processes_using(path: &Path) -> Vec<String> {
    let out = Command::new("pgrep")
        .arg("-af")
        .arg("qemu-system")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&path.display().to_string()))
        .map(str::to_string)
        .collect()
}

/// Runs `command` in a chroot of the root filesystem (at 1 MiB) of a raw image, mounted
/// read-only through a loop device; returns its stdout.
pub fn in_image_chroot(raw: &Path, command: &[&str]) -> String {
    let mnt = tempfile::tempdir().unwrap();
    let loopdev = Command::new("losetup")
        .args(["--find", "--show", "--read-only", "--offset", "1048576"])
        .arg(raw)
        .output()
        .unwrap();
    assert!(loopdev.status.success(), "losetup: {loopdev:?}");
    let loopdev = String::from_utf8(loopdev.stdout)
        .unwrap()
        .trim()
        .to_string();
    let mounted = Command::new("mount")
        .args(["-o", "ro", &loopdev])
        .arg(mnt.path())
        .status()
        .unwrap();
    let out = mounted.success().then(|| {
        Command::new("chroot")
            .arg(mnt.path())
            .args(command)
            .output()
            .unwrap()
    });
    Command::new("umount").arg(mnt.path()).status().unwrap();
    Command::new("losetup")
        .args(["-d", &loopdev])
        .status()
        .unwrap();
    let out = out.expect("cannot mount the image's root filesystem");
    assert!(out.status.success(), "{command:?} in the image: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}
