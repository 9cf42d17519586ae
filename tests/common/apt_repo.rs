//! A real signed apt repository on 127.0.0.1 for the freshness tests: packages made with
//! `dpkg-deb`, indexes with `apt-ftparchive`, `InRelease` signed by a throwaway `gpg` key,
//! served by Python's HTTP server; and an apt of the test's own (not imgforge's) that reads
//! Debian's archive to check what a built image holds against it.

use super::free_port;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway OpenPGP signing key in its own gpg home.
pub struct GpgKey {
    home: tempfile::TempDir,
}

impl GpgKey {
    /// A new ed25519 signing key without a passphrase.
    pub fn new(name: &str) -> GpgKey {
        let home = tempfile::tempdir().unwrap();
        sh(Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .arg(format!("{name} <{name}@imgforge.test>"))
            .args(["ed25519", "sign", "never"]));
        GpgKey { home }
    }

    /// Writes the public key (binary, as apt's `signed-by` takes it) to `path`.
    pub fn export(&self, path: &Path) {
        let key = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .arg("--export")
            .output()
            .unwrap();
        assert!(key.status.success() && !key.stdout.is_empty());
        fs::write(path, key.stdout).unwrap();
    }

    fn clearsign(&self, input: &Path, output: &Path) {
        sh(Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--yes", "--clearsign", "-o"])
            .arg(output)
            .arg(input));
    }
}

/// A signed repository (suite `stable`, component `main`) served on 127.0.0.1.
pub struct AptRepo {
    dir: tempfile::TempDir,
    key: GpgKey,
    server: Child,
    /// `http://127.0.0.1:PORT/repo`.
    pub uri: String,
}

impl AptRepo {
    /// An empty repository signed by a new key, served at once.
    pub fn start() -> AptRepo {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("repo/pool")).unwrap();
        let port = free_port();
        let server = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the repository's server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        AptRepo {
            dir,
            key: GpgKey::new("repo"),
            server,
            uri: format!("http://127.0.0.1:{port}/repo"),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Writes the repository's signing key to `path`.
    pub fn export_key(&self, path: &Path) {
        self.key.export(path);
    }

    /// The pool file of `name` at `version`.
    pub fn pool_file(&self, name: &str, version: &str) -> PathBuf {
        self.root().join(format!("pool/{name}_{version}_all.deb"))
    }

    /// Adds a tiny package `name` at `version` (a script printing its version) to the pool;
    /// [`Self::publish`] makes it visible.
    pub fn add_package(&self, name: &str, version: &str) {
        self.add_package_with(name, version, None, &[]);
    }

    /// [`Self::add_package`] with a `postinst` maintainer script and more files (absolute
    /// path, text).
    pub fn add_package_with(
        &self,
        name: &str,
        version: &str,
        postinst: Option<&str>,
        files: &[(&str, &str)],
    ) {
        let build = tempfile::tempdir().unwrap();
        let root = build.path().join("pkg");
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(
            root.join("DEBIAN/control"),
            format!(
                "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: imgforge \
                 tests <tests@imgforge.test>\nSection: misc\nPriority: optional\nDescription: \
                 imgforge test package\n a script that prints its version\n"
            ),
        )
        .unwrap();
        let tool = root.join(format!("usr/bin/{name}"));
        fs::write(&tool, format!("#!/bin/sh\necho {name} {version}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        for (path, text) in files {
            let file = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, text).unwrap();
        }
        if let Some(script) = postinst {
            let path = root.join("DEBIAN/postinst");
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        sh(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&root)
            .arg(self.pool_file(name, version)));
    }

    /// Removes a package version from the pool; [`Self::publish`] drops it from the index.
    pub fn remove_package(&self, name: &str, version: &str) {
        fs::remove_file(self.pool_file(name, version)).unwrap();
    }

    /// Writes the indexes of the pool and signs them (`InRelease`, dated now): run again with
    /// the same pool, it re-signs the same packages.
    pub fn publish(&self) {
        let dists = self.root().join("dists/stable");
        let binary = dists.join("main/binary-amd64");
        fs::create_dir_all(&binary).unwrap();
        let packages = sh(Command::new("apt-ftparchive")
            .args(["packages", "pool"])
            .current_dir(self.root()));
        fs::write(binary.join("Packages"), packages).unwrap();
        let release = sh(Command::new("apt-ftparchive")
            .args([
                "-o",
                "APT::FTPArchive::Release::Suite=stable",
                "-o",
                "APT::FTPArchive::Release::Codename=stable",
                "-o",
                "APT::FTPArchive::Release::Origin=imgforge-tests",
                "-o",
                "APT::FTPArchive::Release::Architectures=amd64",
                "-o",
                "APT::FTPArchive::Release::Components=main",
                "release",
                ".",
            ])
            .current_dir(&dists));
        fs::write(dists.join("Release"), release).unwrap();
        self.key
            .clearsign(&dists.join("Release"), &dists.join("InRelease"));
    }

    /// The signed `InRelease` as served.
    pub fn in_release(&self) -> String {
        fs::read_to_string(self.root().join("dists/stable/InRelease")).unwrap()
    }
}

impl Drop for AptRepo {
    fn drop(&mut self) {
        self.server.kill().ok();
        self.server.wait().ok();
    }
}

/// The test's own apt over Debian's archive (`bookworm`, `-updates`, `-security` at
/// deb.debian.org), in a private directory: the oracle a built image is compared with.
pub struct DebianIndexes {
    dir: tempfile::TempDir,
}

impl DebianIndexes {
    /// Fetches the indexes now.
    pub fn fetch() -> DebianIndexes {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        for sub in ["etc/apt.conf.d", "etc/preferences.d", "state/lists/partial"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        fs::write(
            dir.path().join("etc/sources.list"),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main\n",
        )
        .unwrap();
        fs::write(dir.path().join("status"), "").unwrap();
        fs::write(
            dir.path().join("apt.conf"),
            format!(
                "Dir \"{d}/\";\nDir::State \"{d}/state/\";\nDir::State::status \"{d}/status\";\n\
                 Dir::Etc \"{d}/etc/\";\nDir::Cache \"{d}/cache/\";\nAPT::Architecture \"amd64\";\n\
                 APT::Architectures \"amd64\";\nAcquire::Languages \"none\";\nDebug::NoLocking \"true\";\n"
            ),
        )
        .unwrap();
        let indexes = DebianIndexes { dir };
        sh(indexes.apt("apt-get").args(["update", "-q"]));
        indexes
    }

    fn apt(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.dir.path().join("apt.conf"));
        cmd
    }

    /// The candidate (newest) version of each of `names` in the three suites.
    pub fn candidates(&self, names: &[&str]) -> BTreeMap<String, String> {
        let text = sh(self.apt("apt-cache").arg("policy").args(names));
        let mut out = BTreeMap::new();
        let mut name = None;
        for line in text.lines() {
            if !line.starts_with(' ') && line.ends_with(':') {
                name = Some(line.trim_end_matches(':').to_string());
            } else if let Some(v) = line.trim().strip_prefix("Candidate: ") {
                out.insert(name.clone().unwrap(), v.to_string());
            }
        }
        out
    }
}

/// Writes the definition `path`: a Debian 12 rootfs image `name` (its hostname too) that
/// installs `package` from `repo`, signed by the key in `repo-key.gpg` beside it; `system` is
/// added to `[system]` and `more` (checks, output) after it.
pub fn repo_definition(
    path: &Path,
    name: &str,
    repo: &AptRepo,
    package: &str,
    system: &str,
    more: &str,
) {
    fs::write(
        path,
        format!(
            r#"[image]
name = "{name}"
version = "1.0.0"

[os]
family = "debian"
release = "bookworm"

[builder]
kind = "rootfs"

[machine]
cpus = 2
memory_mib = 1024
disk_size = "2G"

[system]
hostname = "{name}"
mirror = "http://deb.debian.org/debian"
{system}
[[system.repositories]]
uri = "{uri}"
suites = ["stable"]
signed_by = "repo-key.gpg"
packages = ["{package}"]

{more}"#,
            uri = repo.uri
        ),
    )
    .unwrap();
}

/// A layer cache of its own at `cache` that shares the suite's package cache, so that Debian's
/// packages are not downloaded again.
pub fn private_cache(cache: &Path) -> PathBuf {
    fs::create_dir_all(cache).unwrap();
    let shared = super::web::cache_dir().join("packages");
    fs::create_dir_all(&shared).unwrap();
    std::os::unix::fs::symlink(&shared, cache.join("packages")).ok();
    cache.to_path_buf()
}

/// `name version arch` lines of a build's `<name>.packages` record.
pub fn image_packages(build_dir: &Path) -> BTreeMap<String, String> {
    let list = fs::read_dir(build_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "packages"))
        .expect("the build records its packages");
    fs::read_to_string(list)
        .unwrap()
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_string(), w.next().unwrap().to_string())
        })
        .collect()
}

/// Checks that every package of the build at `build_dir` from Debian's archive is at the
/// newest version bookworm, -updates and -security offer now (packages Debian does not have
/// are left to the caller).
pub fn assert_newest_from_debian(build_dir: &Path) {
    let installed = image_packages(build_dir);
    let names: Vec<&str> = installed.keys().map(String::as_str).collect();
    let candidates = DebianIndexes::fetch().candidates(&names);
    let stale: Vec<String> = installed
        .iter()
        .filter_map(|(name, version)| {
            let newest = candidates.get(name)?;
            (newest != "(none)" && newest != version)
                .then(|| format!("{name} {version} (archive: {newest})"))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "packages older than the archive offers: {stale:?}"
    );
    assert!(
        candidates.len() > 100,
        "the oracle found only {} of the image's packages",
        candidates.len()
    );
}
