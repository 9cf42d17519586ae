//! Freshness, end to end: a local signed apt repository on 127.0.0.1 publishes a package the
//! image installs; a new version of it makes a new base id that `plan` explains, a re-signed
//! index with the same packages does not; the patched image is built (its base patched from
//! the first one's), registered with moto and rolled out by `rotate --superseded` while
//! capacity holds. And the refusals: a repository signed by another key, a locked version that
//! vanished, a `.deb` whose bytes do not match its signed index, each with nothing left behind.

mod common;

use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use common::apt_repo::{
    assert_newest_from_debian, image_packages, private_cache, repo_definition, AptRepo, GpgKey,
};
use common::web::{build_dir, cache_dir, in_image_chroot, last_manifest, raw_disk};
use common::{imgforge, run, Moto};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "patchday";
const TOOL: &str = "imgforge-demo-tool";
/// A file of the tool's 1.1 that the initramfs holds a copy of, and its text.
const MODPROBE_CONF: &str = "/etc/modprobe.d/imgforge-demo-tool.conf";
const MODPROBE_OPTIONS: &str = "options loop max_loop=8\n";

/// The definition: Debian 12 from the mirror with its updates and security suites, plus the
/// demo tool from the local repository, signed by the key in `repo-key.gpg`.
fn definition(dir: &Path, repo: &AptRepo) -> PathBuf {
    let path = dir.join(format!("{NAME}.toml"));
    let checks = "[[checks]]\ntype = \"tcp\"\nport = 22\n\n[output]\nformats = [\"raw\"]\n";
    repo_definition(&path, NAME, repo, TOOL, "", checks);
    path
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `imgforge build --json` with the cache `cache`: (code, events, stderr).
fn build(def: &Path, output: &Path, cache: &Path, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let (code, out, err) = run(imgforge()
        .args(["build", "--json", "--output-dir"])
        .arg(output)
        .args(extra)
        .arg(def)
        .env("IMGFORGE_CACHE", cache));
    (code, json_lines(&out), err)
}

/// `imgforge plan --json`'s one item.
fn plan(def: &Path, output: &Path) -> Value {
    let (code, out, err) = run(imgforge()
        .args(["plan", "--json", "--output-dir"])
        .arg(output)
        .arg(def)
        .env("IMGFORGE_CACHE", cache_dir()));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(out.trim()).unwrap()["definitions"][0].clone()
}

/// Nothing of a failed build is left: no base (finished or half-made), no output, no download
/// in progress.
fn assert_nothing_left(cache: &Path, output: &Path) {
    let bases: Vec<_> = fs::read_dir(cache.join("base"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(bases.is_empty(), "base layers left behind: {bases:?}");
    let outputs: Vec<_> = fs::read_dir(output.join(NAME))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(outputs.is_empty(), "outputs left behind: {outputs:?}");
    for cache in fs::read_dir(cache.join("packages")).unwrap() {
        for entry in fs::read_dir(cache.unwrap().path()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".incoming"), "a download left {name}");
        }
    }
}

/// The text of `file` in the initramfs of the raw disk in `build_dir` (`None` when it lacks
/// it), unpacked by the host's `unmkinitramfs`.
fn initramfs_file(build_dir: &Path, file: &str) -> Option<String> {
    use base64::Engine;
    let raw = raw_disk(build_dir);
    let encoded = in_image_chroot(&raw, &["sh", "-c", "base64 -w0 /boot/initrd.img-*"]);
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    fs::write(
        &initrd,
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .unwrap(),
    )
    .unwrap();
    let unpacked = dir.path().join("unpacked");
    let (code, _, err) = run(std::process::Command::new("unmkinitramfs")
        .arg(&initrd)
        .arg(&unpacked));
    assert_eq!(code, 0, "unmkinitramfs: {err}");
    // With early microcode the main archive is in `main/`.
    [unpacked.join("main"), unpacked]
        .iter()
        .find_map(|root| fs::read_to_string(root.join(&file[1..])).ok())
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// Registers the build of `manifest` with moto; returns the image id.
fn register(moto: &Moto, manifest: &Path) -> String {
    let (code, out, err) = run(imgforge()
        .args(["--json", "register"])
        .arg(manifest)
        .args(["--to", "ami"])
        .envs(moto.env()));
    assert_eq!(code, 0, "register failed: {err}");
    json_lines(&out)
        .into_iter()
        .find_map(|v| v["image_id"].as_str().map(str::to_string))
        .expect("register prints the image id")
}

async fn running_fleet(ec2: &Client) -> Vec<(String, String)> {
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:imgforge:image")
                .values(NAME)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.image_id().unwrap().to_string(),
            )
        })
        .collect()
}

/// `imgforge rotate --superseded` with JSON events, while a poller records the fewest running
/// instances seen: (code, events, stderr, fewest running).
async fn rotate(moto: &Moto, ec2: &Client) -> (i32, Vec<Value>, String, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let poller = {
        let (ec2, stop, fewest) = (ec2.clone(), stop.clone(), fewest.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                fewest.fetch_min(running_fleet(&ec2).await.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut cmd = imgforge();
    cmd.args([
        "--json",
        "rotate",
        "--superseded",
        "--image-name",
        NAME,
        "--health-timeout",
        "2m",
    ])
    .envs(moto.env())
    .env("IMGFORGE_POLL_INTERVAL", "100ms");
    let (code, out, err) = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    poller.await.unwrap();
    (code, json_lines(&out), err, fewest.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_day_a_new_package_version_rebuilds_the_base_and_reaches_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    let repo = AptRepo::start();
    repo.export_key(&dir.path().join("repo-key.gpg"));
    repo.add_package(TOOL, "1.0");
    repo.publish();
    let def = definition(dir.path(), &repo);

    // A repository signed by another key: refused before anything is built, naming it.
    let impostor = dir.path().join("impostor");
    fs::create_dir_all(&impostor).unwrap();
    GpgKey::new("impostor").export(&impostor.join("repo-key.gpg"));
    let wrong_key = definition(&impostor, &repo);
    let cache = private_cache(&impostor.join("private-cache"));
    let (code, _, err) = build(&wrong_key, &impostor.join("output"), &cache, &[]);
    assert_ne!(code, 0, "a repository with the wrong key was built from");
    assert!(
        err.contains("repo1") && err.contains(&repo.uri) && err.contains("signature"),
        "the refusal names the repository and its signature: {err}"
    );
    assert_nothing_left(&cache, &impostor.join("output"));

    // The first image, with 1.0 from the repository and every Debian package at the newest
    // version the archive offers.
    let (code, events, err) = build(&def, &output, &cache_dir(), &["--no-verify"]);
    assert_eq!(code, 0, "the first build failed: {err}");
    let v1 = last_manifest(&events).clone();
    let v1_dir = build_dir(&v1);
    assert_eq!(image_packages(&v1_dir)[TOOL], "1.0");
    assert_newest_from_debian(&v1_dir);
    let manifest_v1 = PathBuf::from(v1["manifest_path"].as_str().unwrap());
    let recorded: Value = serde_json::from_str(&fs::read_to_string(&manifest_v1).unwrap()).unwrap();
    let set = recorded["packages"]["set"]["packages"].as_array().unwrap();
    assert!(set
        .iter()
        .any(|p| p["name"] == TOOL && p["version"] == "1.0" && p["source"] == "repo1"));
    let first_plan = plan(&def, &output);
    assert_eq!(first_plan["needs_build"], false, "{first_plan}");

    // A fleet of two on the first image.
    let moto = Moto::start();
    let ec2 = Client::new(&moto.sdk_config().await);
    let ami_v1 = register(&moto, &manifest_v1);
    for n in 0..2 {
        ec2.run_instances()
            .image_id(&ami_v1)
            .min_count(1)
            .max_count(1)
            .instance_type(InstanceType::T3Small)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(tag("Name", &format!("{NAME}-{n}")))
                    .tags(tag("imgforge:image", NAME))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let fleet_v1 = running_fleet(&ec2).await;
    assert_eq!(fleet_v1.len(), 2);

    // The index signed again with the same packages: the same ids, nothing to build.
    let signed_before = repo.in_release();
    std::thread::sleep(Duration::from_millis(1100));
    repo.publish();
    assert_ne!(
        repo.in_release(),
        signed_before,
        "the index was signed anew"
    );
    let resigned = plan(&def, &output);
    assert_eq!(resigned["ids"], first_plan["ids"], "{resigned}");
    assert_eq!(resigned["needs_build"], false);

    // A lock pins 1.0; once 1.0 leaves the repository, a build from the lock stops before
    // anything is built, naming the package, and leaves nothing.
    let (code, _, err) = run(imgforge()
        .arg("lock")
        .arg(&def)
        .env("IMGFORGE_CACHE", cache_dir()));
    assert_eq!(code, 0, "{err}");
    let lock = dir.path().join(format!("{NAME}.lock"));
    assert!(fs::read_to_string(&lock)
        .unwrap()
        .lines()
        .any(|l| l.starts_with(&format!("{TOOL} 1.0 all "))));

    // Patch day: 1.1 is published (and 1.0 withdrawn).
    let published = Instant::now();
    // 1.1 also ships a modprobe.d file, which the initramfs holds a copy of and no trigger of
    // initramfs-tools' makes it again for: the patched base must make it again.
    repo.add_package_with(TOOL, "1.1", None, &[(MODPROBE_CONF, MODPROBE_OPTIONS)]);
    repo.remove_package(TOOL, "1.0");
    repo.publish();

    let locked_output = dir.path().join("locked-output");
    let locked_cache = private_cache(&dir.path().join("locked/private-cache"));
    let (code, _, err) = build(&def, &locked_output, &locked_cache, &[]);
    assert_ne!(code, 0, "a lock pinning a withdrawn version was built");
    assert!(
        err.contains(&format!("{TOOL} 1.0")) && err.contains("lock --update"),
        "the refusal names the package, its version and the way on: {err}"
    );
    assert_nothing_left(&locked_cache, &locked_output);
    fs::remove_file(&lock).unwrap();

    // plan names the upgrade and needs a build.
    let patched = plan(&def, &output);
    assert_eq!(patched["needs_build"], true, "{patched}");
    assert_ne!(patched["ids"]["base"], first_plan["ids"]["base"]);
    let upgraded = patched["upstream"]["upgraded"].as_array().unwrap();
    assert!(
        upgraded
            .iter()
            .any(|u| u["name"] == TOOL && u["from"] == "1.0" && u["to"] == "1.1"),
        "plan explains the new base: {patched}"
    );

    // The first image is outdated now, and says so with an exit status a job can act on.
    let (code, out, err) = run(imgforge()
        .args(["--json", "outdated"])
        .arg(&manifest_v1)
        .env("IMGFORGE_CACHE", cache_dir()));
    assert_eq!(code, 3, "outdated, no security update: exit 3: {err}");
    let report = json_lines(&out)
        .into_iter()
        .find(|e| e["event"] == "outdated")
        .expect("an outdated event");
    assert_eq!(
        report["packages"],
        serde_json::json!([{ "name": TOOL, "installed": "1.0", "available": "1.1",
                             "security": false, "source": "repo1" }]),
        "only the tool is outdated: {report}"
    );

    // A 1.1 whose bytes were changed after the index was signed: refused, naming it.
    let pool = repo.pool_file(TOOL, "1.1");
    let good = fs::read(&pool).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    fs::write(&pool, &bad).unwrap();
    let tampered_output = dir.path().join("tampered-output");
    let tampered_cache = private_cache(&dir.path().join("tampered/private-cache"));
    let (code, _, err) = build(&def, &tampered_output, &tampered_cache, &[]);
    assert_ne!(
        code, 0,
        "a .deb that does not match its index was installed"
    );
    assert!(
        err.contains(&format!("{TOOL} 1.1")) && err.contains("sha256"),
        "the refusal names the package and the digest: {err}"
    );
    assert_nothing_left(&tampered_cache, &tampered_output);
    fs::write(&pool, &good).unwrap();

    // The patched image: built, booted by its checks, registered, rolled out.
    let (code, events, err) = build(&def, &output, &cache_dir(), &[]);
    assert_eq!(code, 0, "the patched build failed: {err}");
    let v2 = last_manifest(&events).clone();
    assert_eq!(image_packages(&build_dir(&v2))[TOOL], "1.1");
    // One package changed: the new base is the first one patched (tests/patch_base.rs proves
    // a patched base is the cold one), and the checks boot it.
    let patch = events
        .iter()
        .find(|e| e["event"] == "base_patch")
        .expect("a base_patch event");
    assert_eq!(patch["outcome"], "patched", "{patch}");
    assert_eq!(patch["install"], serde_json::json!([format!("{TOOL}=1.1")]));
    assert_eq!(
        initramfs_file(&build_dir(&v2), MODPROBE_CONF).as_deref(),
        Some(MODPROBE_OPTIONS),
        "the patched base's initramfs was made again from the patched tree"
    );
    let ami_v2 = register(&moto, Path::new(v2["manifest_path"].as_str().unwrap()));
    assert_ne!(ami_v2, ami_v1);
    let (code, events, err, fewest) = rotate(&moto, &ec2).await;
    assert_eq!(code, 0, "rotate failed: {err}");
    let fleet_v2 = running_fleet(&ec2).await;
    assert_eq!(fleet_v2.len(), 2, "{fleet_v2:?}");
    assert!(
        fleet_v2.iter().all(|(_, image)| *image == ami_v2),
        "every instance runs the patched image: {fleet_v2:?}"
    );
    assert!(
        fleet_v2
            .iter()
            .all(|(id, _)| fleet_v1.iter().all(|(old, _)| old != id)),
        "every instance was replaced"
    );
    assert!(
        fewest >= 2,
        "capacity dropped to {fewest} during the rotation"
    );
    assert_eq!(
        events.iter().filter(|e| e["event"] == "replaced").count(),
        2,
        "{events:?}"
    );
    let patch_latency = published.elapsed();

    // Then there is nothing left to do.
    assert_eq!(plan(&def, &output)["needs_build"], false);
    let (code, _, err) = run(imgforge()
        .arg("outdated")
        .arg(v2["manifest_path"].as_str().unwrap())
        .env("IMGFORGE_CACHE", cache_dir()));
    assert_eq!(code, 0, "the patched image is current: {err}");
    let (code, events, err, _) = rotate(&moto, &ec2).await;
    assert_eq!(code, 0, "{err}");
    assert!(events.iter().any(|e| e["event"] == "noop"), "{events:?}");

    println!(
        "patch latency: {:.1} s from publishing {TOOL} 1.1 to the last instance replaced",
        patch_latency.as_secs_f64()
    );
}
