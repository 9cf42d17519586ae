//! Patch day without a cold build. A base is built from the release's kernel and OpenSSL;
//! then the security suite's versions (a newer kernel ABI, its initramfs made again) make a new
//! base id, and the build patches the cached base instead of running mmdebstrap. The image is
//! byte for byte the one a cold build of the same set gives (sha256, and diffoscope finds
//! nothing). Then a package whose maintainer script leaves, on upgrade, a file no package owns
//! is refused: the build says why and builds the base cold.

mod common;

use common::apt_repo::{image_packages, private_cache, repo_definition, AptRepo};
use common::web::{build_dir, last_manifest};
use common::{imgforge, run, sha256_of};
use serde_json::Value;
use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAME: &str = "patchbase";
const TOOL: &str = "imgforge-patch-tool";

/// The definition `name`: Debian 12 with (or without) its updates and security suites, and the
/// tool from the local repository.
fn definition(dir: &Path, repo: &AptRepo, name: &str, updates: bool) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let system = format!("updates = {updates}\n");
    repo_definition(
        &path,
        NAME,
        repo,
        TOOL,
        &system,
        "[output]\nformats = [\"raw\"]\n",
    );
    path
}

/// Where `scripts/bench patch` wants this test's timings, when it runs it.
fn bench_record() -> Option<PathBuf> {
    std::env::var_os("IMGFORGE_BENCH_RECORD").map(PathBuf::from)
}

/// `imgforge build --json` with `cache`: the events; fails the test on failure. The image is
/// not booted (the other tests boot patched and cold images), except under the bench, which
/// times patch day to a verified image.
fn build(def: &Path, output: &Path, cache: &Path) -> Vec<Value> {
    let mut cmd = imgforge();
    cmd.args(["build", "--json", "--output-dir"])
        .arg(output)
        .arg(def)
        .env("IMGFORGE_CACHE", cache);
    if bench_record().is_none() {
        cmd.arg("--no-verify");
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "the build failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The lock lines (`name version arch sha256 source`) of `def`, resolved now.
fn lock_lines(def: &Path, cache: &Path) -> Vec<String> {
    let (code, _, err) = run(imgforge().arg("lock").arg(def).env("IMGFORGE_CACHE", cache));
    assert_eq!(code, 0, "{err}");
    fs::read_to_string(def.with_extension("lock"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether a lock line is the kernel's or OpenSSL's: the packages patch day upgrades here.
fn patched_package(line: &str) -> bool {
    let name = line.split(' ').next().unwrap_or_default();
    line.split(' ').count() == 5
        && (name.starts_with("linux-image-") || name == "openssl" || name == "libssl3")
}

/// The raw disk of the last build in `events`.
fn raw_disk(events: &[Value]) -> PathBuf {
    common::web::raw_disk(&build_dir(last_manifest(events)))
}

/// `imgforge plan` says `def` needs a build; its plan.
fn plan_needs_build(def: &Path, output: &Path, cache: &Path) -> Value {
    let (code, out, err) = run(imgforge()
        .args(["plan", "--json", "--output-dir"])
        .arg(output)
        .arg(def)
        .env("IMGFORGE_CACHE", cache));
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(plan["definitions"][0]["needs_build"], true, "{plan}");
    plan["definitions"][0].clone()
}

/// The bench's record: patch day (plan and a verified build on a patched base) against plan
/// and a verified cold build of the same definition, in the same run.
fn write_bench_record(
    dir: &Path,
    patch_day: Duration,
    cold: Duration,
    patch: &Value,
    patched_events: &[Value],
    cold_events: &[Value],
) {
    let record = serde_json::json!({
        "bench": "patch",
        "what": "a security update of the kernel and OpenSSL (a new base id) → plan → build (patched base, bake, seal, export, verify), against plan → build (cold base, bake, seal, export, verify) of the same definition",
        "seconds": {
            "patch_day": patch_day.as_secs_f64(),
            "cold": cold.as_secs_f64(),
            "base_patch": patch["seconds"],
        },
        "ratios": { "patch_day_over_cold": patch_day.as_secs_f64() / cold.as_secs_f64() },
        "target": "patch_day_over_cold <= 0.35",
        "install": patch["install"],
        "remove": patch["remove"],
        "patched_timings": last_manifest(patched_events)["timings"],
        "cold_timings": last_manifest(cold_events)["timings"],
        "same_image": sha256_of(&raw_disk(patched_events)) == sha256_of(&raw_disk(cold_events)),
    });
    fs::write(
        dir.join("patch-base.json"),
        serde_json::to_string_pretty(&record).unwrap(),
    )
    .unwrap();
}

fn base_patch(events: &[Value]) -> Option<&Value> {
    events.iter().find(|e| e["event"] == "base_patch")
}

#[test]
fn a_patched_base_gives_the_cold_builds_image_and_a_patch_that_could_differ_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = AptRepo::start();
    repo.export_key(&dir.path().join("repo-key.gpg"));
    repo.add_package(TOOL, "1.0");
    repo.publish();
    let def = definition(dir.path(), &repo, NAME, true);
    let release_only = definition(dir.path(), &repo, "release-only", false);
    let cache = private_cache(&dir.path().join("cache"));

    // The old set: today's, but the kernel and OpenSSL as the release shipped them.
    let released: Vec<String> = lock_lines(&release_only, &cache)
        .into_iter()
        .filter(|l| patched_package(l))
        .collect();
    let newest = lock_lines(&def, &cache);
    let mut old: Vec<String> = newest
        .iter()
        .filter(|l| !patched_package(l))
        .cloned()
        .chain(released.iter().cloned())
        .collect();
    old.sort_by_key(|l| (l.split(' ').count() == 5, l.clone()));
    let kernel = |lines: &[String]| {
        lines
            .iter()
            .find(|l| l.starts_with("linux-image-amd64 "))
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .unwrap()
    };
    let (old_kernel, new_kernel) = (kernel(&old), kernel(&newest));
    assert_ne!(
        old_kernel, new_kernel,
        "this test needs a kernel in the security suite newer than the release's"
    );
    fs::write(def.with_extension("lock"), old.join("\n") + "\n").unwrap();
    let output = dir.path().join("output");
    let v1 = build(&def, &output, &cache);
    assert!(base_patch(&v1).is_none(), "nothing to patch from: {v1:?}");
    assert_eq!(
        image_packages(&build_dir(last_manifest(&v1)))["linux-image-amd64"],
        old_kernel
    );

    // Patch day: the newest set, planned, then patched from the cached base.
    fs::remove_file(def.with_extension("lock")).unwrap();
    let patch_started = Instant::now();
    let planned = plan_needs_build(&def, &output, &cache);
    let v2 = build(&def, &output, &cache);
    let patch_day = patch_started.elapsed();
    let patch = base_patch(&v2).expect("a base_patch event");
    assert_eq!(patch["outcome"], "patched", "{patch}");
    let installed: Vec<&str> = patch["install"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        installed.contains(&format!("linux-image-amd64={new_kernel}").as_str()),
        "{patch}"
    );
    assert!(
        patch["remove"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("linux-image-6.")),
        "the old kernel ABI's package is removed: {patch}"
    );
    assert_eq!(
        planned["patch_from"]["from"],
        last_manifest(&v1)["ids"]["base"],
        "plan names the base the build patched: {planned}"
    );
    assert_eq!(planned["patch_from"]["install"], installed.len());
    let v2_dir = build_dir(last_manifest(&v2));
    assert_eq!(image_packages(&v2_dir)["linux-image-amd64"], new_kernel);

    // The same set built cold, in a cache with nothing to patch from: the same bytes.
    let cold_started = Instant::now();
    let (cold_output, cold_cache) = (
        dir.path().join("cold-output"),
        private_cache(&dir.path().join("cold")),
    );
    let cold_plan = plan_needs_build(&def, &cold_output, &cold_cache);
    assert!(cold_plan["patch_from"].is_null(), "{cold_plan}");
    let cold = build(&def, &cold_output, &cold_cache);
    let cold_build = cold_started.elapsed();
    if let Some(dir) = bench_record() {
        write_bench_record(&dir, patch_day, cold_build, patch, &v2, &cold);
    }
    assert!(
        base_patch(&cold).is_none(),
        "the cold build patched: {cold:?}"
    );
    assert_eq!(
        last_manifest(&cold)["ids"],
        last_manifest(&v2)["ids"],
        "the two paths build the same ids"
    );
    let (patched_raw, cold_raw) = (raw_disk(&v2), raw_disk(&cold));
    let (code, out, err) = run(std::process::Command::new("diffoscope")
        .arg("--no-progress")
        .arg(&patched_raw)
        .arg(&cold_raw));
    assert_eq!(
        code, 0,
        "diffoscope finds the patched image and the cold one differ:\n{out}{err}"
    );
    assert_eq!(sha256_of(&patched_raw), sha256_of(&cold_raw));

    // A tool whose maintainer script leaves a token when it upgrades: a patch could differ
    // from a cold build (which installs, not upgrades), so the build refuses it, says why, and
    // builds cold. The cold build is stopped once it has started: cold builds are proven above.
    repo.add_package_with(
        TOOL,
        "1.1",
        Some(&format!(
            "#!/bin/sh\nset -e\nif [ -n \"$2\" ]; then\n  mkdir -p /var/lib/{TOOL}\n  \
             od -An -N16 -tx1 /dev/urandom > /var/lib/{TOOL}/upgrade-token\nfi\n"
        )),
        &[],
    );
    repo.publish();
    let mut child = imgforge()
        .args(["build", "--json", "--no-verify", "--output-dir"])
        .arg(&output)
        .arg(&def)
        .env("IMGFORGE_CACHE", &cache)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events: Vec<Value> = Vec::new();
    for line in lines {
        let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let cold_started = event["event"] == "phase" && event["phase"] == "mmdebstrap";
        events.push(event);
        if cold_started {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let refused = base_patch(&events).unwrap_or_else(|| panic!("no base_patch event: {events:?}"));
    assert_eq!(refused["outcome"], "cold", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("/var/lib/{TOOL}/upgrade-token")),
        "the reason names the file: {reason}"
    );
    assert!(
        events.last().is_some_and(|e| e["phase"] == "mmdebstrap"),
        "the base is then built cold: {events:?}"
    );
    assert!(!status.success(), "the stopped build reports failure");
    let left: Vec<String> = fs::read_dir(cache.join("base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "half-made bases left: {left:?}");
}
