//! Proof that an image is exactly what was built: a build of `debian-12-web` on the suite's
//! shared layer cache (its base built cold earlier in the run by another process) and one
//! from an empty layer cache (reusing the shared downloaded packages, one of them damaged)
//! give the same bytes; `imgforge diff` names exactly the input that changed; the SBOM
//! passes SPDX validation and lists what dpkg lists inside the image.

mod common;

use common::web::{build_dir, cache_dir, last_manifest, WebFixture};
use common::{imgforge, run};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `imgforge build --force --json` of the fixture with its own cache and output directories.
fn build_in(fixture: &WebFixture, cache: &Path, output: &Path, extra: &[&str]) -> Value {
    let (code, out, err) = run(imgforge()
        .args(["build", "--json", "--force", "--output-dir"])
        .arg(output)
        .args(extra)
        .arg(fixture.definition())
        .env("IMGFORGE_CACHE", cache));
    assert_eq!(code, 0, "build failed: {err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    last_manifest(&events).clone()
}

/// Flips one byte in the middle of package `name`'s cached `.deb` in every release directory
/// under `packages`; returns one of their paths relative to `packages`.
fn damage_package(packages: &Path, name: &str) -> PathBuf {
    let mut damaged = None;
    for release in std::fs::read_dir(packages).unwrap() {
        for deb in std::fs::read_dir(release.unwrap().path()).unwrap() {
            let deb = deb.unwrap().path();
            let file = deb.file_name().unwrap().to_string_lossy().into_owned();
            if !(file.starts_with(&format!("{name}_")) && file.ends_with(".deb")) {
                continue;
            }
            let mut bytes = std::fs::read(&deb).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&deb, bytes).unwrap();
            damaged = Some(deb.strip_prefix(packages).unwrap().to_path_buf());
        }
    }
    damaged.unwrap_or_else(|| panic!("{name} is not in {}", packages.display()))
}

/// The `base.json` of `build`'s base in `cache`.
fn base_info(cache: &Path, build: &Value) -> Value {
    let base = build["ids"]["base"].as_str().unwrap();
    let info = std::fs::read_to_string(cache.join("base").join(base).join("base.json")).unwrap();
    serde_json::from_str::<Value>(&info).unwrap()
}

fn manifest_of(event: &Value) -> PathBuf {
    PathBuf::from(event["manifest_path"].as_str().unwrap())
}

/// sha256 of a file by coreutils, not by imgforge.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn two_cold_builds_are_identical_and_diff_names_the_one_changed_input() {
    let fixture = WebFixture::new("proof data v1", "");
    // The Vagrant box is written from the tree like the image: it must be as reproducible.
    let def = std::fs::read_to_string(fixture.definition())
        .unwrap()
        .replace(
            "formats = [\"qcow2\", \"raw\"]",
            "formats = [\"qcow2\", \"raw\", \"vagrant-libvirt\"]",
        );
    std::fs::write(fixture.definition(), def).unwrap();
    let (cache_a, cache_b) = (cache_dir(), tempfile::tempdir().unwrap());
    let out_a = fixture.dir.path().join("out-a");
    let out_b = fixture.dir.path().join("out-b");
    // A is verified (booted) and signed, B neither: neither may change the artifacts.
    let (key, public) = common::ssh_key(fixture.dir.path(), "ci");
    let key_arg = key.to_str().unwrap();
    let a = build_in(&fixture, &cache_a, &out_a, &["--sign", key_arg]);
    // B's layer cache is empty, but it takes a copy of the shared package cache with one
    // package of the set damaged: the others are reused, the damaged one is downloaded again,
    // and the image is the same, so the package cache cannot change what is built.
    let copied = Command::new("cp")
        .arg("-a")
        .arg(cache_a.join("packages"))
        .arg(cache_b.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let set = base_info(&cache_a, &a)["package_set"]["packages"].clone();
    let total = set.as_array().unwrap().len() as u64;
    assert!(total > 100, "{set}");
    let name = set[0]["name"].as_str().unwrap();
    let damaged = damage_package(&cache_b.path().join("packages"), name);
    let b = build_in(&fixture, cache_b.path(), &out_b, &["--no-verify"]);
    assert_eq!(a["ids"]["build"], b["ids"]["build"]);
    let used_b = base_info(cache_b.path(), &b)["packages"].clone();
    assert_eq!(
        used_b,
        serde_json::json!({ "reused": total - 1, "downloaded": 1, "damaged": 1 }),
        "{} was damaged",
        damaged.display()
    );
    let again = cache_b.path().join("packages").join(&damaged);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(cache_a.join("packages").join(&damaged)).unwrap(),
        "the cache holds the package as the mirror serves it again"
    );
    assert_eq!(a["reproducible"], true, "{a}");
    let (dir_a, dir_b) = (build_dir(&a), build_dir(&b));
    let (_, _, explained) = run(imgforge()
        .arg("diff")
        .arg(manifest_of(&a))
        .arg(manifest_of(&b)));
    for ext in ["packages", "files", "spdx.json", "raw", "qcow2", "box"] {
        let file = format!("debian-12-web-1.0.0.{ext}");
        let (x, y) = (sha256sum(&dir_a.join(&file)), sha256sum(&dir_b.join(&file)));
        assert_eq!(
            x, y,
            "{file} differs between two builds of the same inputs; imgforge diff:\n{explained}"
        );
    }
    // Every line but the Vagrant catalogue's, which names the build's directory and time.
    let sums = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("SHA256SUMS"))
            .unwrap()
            .lines()
            .filter(|l| !l.ends_with("  debian-12-web.json"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(sums(&dir_a), sums(&dir_b));
    assert_eq!(sums(&dir_a).len(), 6, "{:?}", sums(&dir_a));
    let raw = "debian-12-web-1.0.0.raw";
    let diffoscope = Command::new("diffoscope")
        .arg(dir_a.join(raw))
        .arg(dir_b.join(raw))
        .output()
        .unwrap();
    assert!(
        diffoscope.status.success(),
        "diffoscope found differences: {}",
        String::from_utf8_lossy(&diffoscope.stdout)
    );
    let (code, _, err) = run(imgforge()
        .arg("diff")
        .arg(manifest_of(&a))
        .arg(manifest_of(&b)));
    assert_eq!(code, 0, "identical builds: {err}");

    // One input changes: the data snapshot. diff names its files and the provenance record
    // that carries its digest, and no package.
    fixture.set_data("proof data v2", "");
    let c = build_in(&fixture, cache_b.path(), &out_b, &["--no-verify"]);
    let (code, out, _) = run(imgforge()
        .args(["diff", "--json"])
        .arg(manifest_of(&a))
        .arg(manifest_of(&c)));
    assert_eq!(code, 3, "different builds exit 3");
    let d: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(d["event"], "diff");
    for empty in [
        "packages_changed",
        "packages_added",
        "packages_removed",
        "files_added",
        "files_removed",
    ] {
        assert!(d[empty]
            .as_object()
            .map_or_else(|| d[empty].as_array().unwrap().is_empty(), |o| o.is_empty()));
    }
    let changed: BTreeSet<&str> = d["files_changed"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = ["/etc/imgforge/build.json", "/srv/web/index.html"].into();
    assert_eq!(changed, expected, "{d}");
    assert_eq!(d["files_changed"]["/srv/web/index.html"][0], "content");
    assert_eq!(d["artifacts"]["debian-12-web-1.0.0.raw"], false);

    check_sbom(&dir_a);
    let allowed = common::allowed_signers(fixture.dir.path(), "ci@example.com", &public);
    let (code, _, err) = run(imgforge()
        .args(["verify", "--no-boot", "--allowed-signers"])
        .arg(&allowed)
        .arg(manifest_of(&a)));
    assert_eq!(
        code, 0,
        "build --sign made a signature verify accepts: {err}"
    );
}

/// The SBOM passes `pyspdxtools -i`, and its packages are what `dpkg-query` lists inside the
/// image (run in a chroot of the image's root filesystem).
fn check_sbom(dir: &Path) {
    let sbom = dir.join("debian-12-web-1.0.0.spdx.json");
    let tools = common::repo_root().join(".venv/bin/pyspdxtools");
    let out = Command::new(&tools).arg("-i").arg(&sbom).output().unwrap();
    assert!(
        out.status.success(),
        "pyspdxtools rejects the SBOM: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&sbom).unwrap()).unwrap();
    let in_sbom: BTreeSet<String> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["externalRefs"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["referenceType"] == "purl"))
        })
        .filter(|p| {
            p["externalRefs"][0]["referenceLocator"]
                .as_str()
                .unwrap()
                .starts_with("pkg:deb/")
        })
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["versionInfo"].as_str().unwrap()
            )
        })
        .collect();
    let in_image = common::web::in_image_chroot(
        &dir.join("debian-12-web-1.0.0.raw"),
        &["dpkg-query", "-W", "-f", "${Package} ${Version}\n"],
    );
    let in_image: BTreeSet<String> = in_image.lines().map(str::to_string).collect();
    assert!(in_image.len() > 100, "{in_image:?}");
    assert_eq!(in_sbom, in_image);
    assert!(in_image.iter().any(|p| p.starts_with("nginx-light ")));
}
