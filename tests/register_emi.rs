//! Eucalyptus EMIs: `register --to emi` uploads and registers a bundle on a real moto_server
//! (S3 + EC2) through the real SDK, and the uploaded bundle round-trips through
//! `imgforge unbundle`. Keys and certificates are made by the test. (The bundle format's own
//! round trip and tamper checks are unit tests in `src/register/bundle_tests.rs`.)

#[path = "support/bundle_fixtures.rs"]
mod bundle_fixtures;
mod common;

use bundle_fixtures::{image, keypair};
use common::{
    assert_names_digests, flip_byte, imgforge, run, write_build_record, CountingEndpoint, Moto,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

struct Keys {
    cloud_cert: PathBuf,
    user_key: PathBuf,
    user_cert: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    let (_, cloud_cert) = keypair(dir, "cloud");
    let (user_key, user_cert) = keypair(dir, "user");
    Keys {
        cloud_cert,
        user_key,
        user_cert,
    }
}

fn unbundle_cli(manifest: &Path, key: &Path, out: &Path) -> (i32, String, String) {
    let mut cmd = imgforge();
    cmd.arg("unbundle")
        .arg("--manifest")
        .arg(manifest)
        .arg("--private-key")
        .arg(key)
        .arg("-o")
        .arg(out);
    run(&mut cmd)
}

fn manifest_json(dir: &Path, build_id: &str, len: u64) -> PathBuf {
    let m = json!({
        "imgforge_version": "0.1.0",
        "name": "emitest",
        "version": "2.0.0",
        "definition": "images/emitest.toml",
        "ids": { "base": "a".repeat(64), "bake": "b".repeat(64), "build": build_id },
        "firmware": "bios",
        "arch": "x86_64",
        "disk_size": len,
        "artifacts": [{ "format": "raw", "file": "disk.raw" }],
        "built_at": "2026-11-25T10:00:00Z",
    });
    write_build_record(dir, m)
}

fn register_emi(moto: &Moto, manifest: &Path, k: &Keys, bucket: &str) -> (i32, String, String) {
    register_emi_with(moto.env(), manifest, k, bucket, &[])
}

/// `imgforge --json register MANIFEST --to emi …` with `env` and `extra` arguments.
fn register_emi_with(
    env: Vec<(&'static str, String)>,
    manifest: &Path,
    k: &Keys,
    bucket: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let mut cmd = imgforge();
    cmd.arg("--json")
        .arg("register")
        .arg(manifest)
        .args(["--to", "emi", "--bucket", bucket, "--user", "123456789012"])
        .args(extra)
        .arg("--cloud-cert")
        .arg(&k.cloud_cert)
        .arg("--cert")
        .arg(&k.user_cert)
        .arg("--private-key")
        .arg(&k.user_key)
        .envs(env);
    run(&mut cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn register_to_emi_uploads_a_bundle_that_unbundles_and_registers_it_once() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let data = image(&dir.path().join("disk.raw"), 12 * 1024 * 1024 + 7);
    let build_id = "e".repeat(64);
    let manifest = manifest_json(dir.path(), &build_id, data.len() as u64);
    let config = moto.sdk_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let ec2 = aws_sdk_ec2::Client::new(&config);

    // No bucket yet: a clear error, nothing registered.
    let (code, _o, e) = register_emi(&moto, &manifest, &k, "images");
    assert_ne!(code, 0);
    assert!(e.contains("bucket `images` does not exist"), "{e}");

    s3.create_bucket().bucket("images").send().await.unwrap();
    let (code, stdout, stderr) = register_emi(&moto, &manifest, &k, "images");
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let result: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "registered")
        .unwrap();
    let prefix = format!("emitest-2.0.0-{}", &build_id[..12]);
    assert_eq!(
        result["image_location"],
        format!("images/{prefix}.manifest.xml").as_str()
    );
    let image_id = result["image_id"].as_str().unwrap();

    // Registered, and tagged afterwards with CreateTags.
    let img = ec2
        .describe_images()
        .image_ids(image_id)
        .send()
        .await
        .unwrap()
        .images
        .unwrap()
        .remove(0);
    assert!(img
        .tags()
        .iter()
        .any(|t| t.key() == Some("imgforge:build-id") && t.value() == Some(&*build_id)));

    // The manifest and parts are in the bucket; fetched back, they unbundle bit for bit.
    let listed = s3.list_objects_v2().bucket("images").send().await.unwrap();
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{prefix}.manifest.xml"),
            format!("{prefix}.part.00"),
            format!("{prefix}.part.01"),
        ]
    );
    let fetched = dir.path().join("fetched");
    std::fs::create_dir(&fetched).unwrap();
    for key in &keys {
        let body = s3
            .get_object()
            .bucket("images")
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        std::fs::write(fetched.join(key), body).unwrap();
    }
    let restored = dir.path().join("restored.raw");
    let (code, _o, e) = unbundle_cli(
        &fetched.join(format!("{prefix}.manifest.xml")),
        &k.user_key,
        &restored,
    );
    assert_eq!(code, 0, "{e}");
    assert!(std::fs::read(&restored).unwrap() == data);

    // Again: the image of this build is reused, nothing new is uploaded or registered.
    let images_before = ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images
        .unwrap_or_default()
        .len();
    let (code, stdout, _e) = register_emi(&moto, &manifest, &k, "images");
    assert_eq!(code, 0);
    assert!(stdout.contains("\"reused\":true"), "{stdout}");
    let images_after = ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images
        .unwrap_or_default()
        .len();
    assert_eq!(images_before, images_after);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ebs_backed_emi_goes_through_the_snapshot_route() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = image(&dir.path().join("disk.raw"), 3 * 512 * 1024);
    let build_id = "7".repeat(64);
    let manifest = manifest_json(dir.path(), &build_id, data.len() as u64);
    let mut cmd = imgforge();
    cmd.arg("--json")
        .arg("register")
        .arg(&manifest)
        .args(["--to", "emi", "--ebs"])
        .envs(moto.env());
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let result: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "registered")
        .unwrap();
    assert_eq!(result["target"], "emi");
    let snapshot_id = result["snapshot_id"].as_str().unwrap();
    let ebs = aws_sdk_ebs::Client::new(&moto.sdk_config().await);
    let blocks = ebs
        .list_snapshot_blocks()
        .snapshot_id(snapshot_id)
        .send()
        .await
        .unwrap()
        .blocks
        .unwrap_or_default();
    // The zeroed middle third covers half of block 1 only: all three blocks hold data.
    assert_eq!(blocks.len(), 3);
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config().await);
    let img = ec2
        .describe_images()
        .image_ids(result["image_id"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .images
        .unwrap()
        .remove(0);
    assert!(img
        .tags()
        .iter()
        .any(|t| t.key() == Some("imgforge:build-id") && t.value() == Some(&*build_id)));
}

#[test]
fn a_tampered_artifact_is_refused_before_any_bundle_is_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let raw = dir.path().join("disk.raw");
    let data = image(&raw, 3 * 512 * 1024);
    let manifest = manifest_json(dir.path(), &"d".repeat(64), data.len() as u64);
    let built = common::sha256_of(&raw);
    let tampered = flip_byte(&raw, 510);
    for ebs in [false, true] {
        let endpoint = CountingEndpoint::start();
        let extra = if ebs { &["--ebs"][..] } else { &[][..] };
        let (code, _out, stderr) =
            register_emi_with(endpoint.env(), &manifest, &k, "images", extra);
        assert_ne!(code, 0, "--ebs {ebs}: a tampered artifact was registered");
        assert_names_digests(&stderr, &raw, &built, &tampered);
        assert_eq!(endpoint.connections(), 0, "--ebs {ebs}: a request was sent");
    }
}

#[test]
fn an_ami_only_setting_for_an_emi_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(&dir.path().join("disk.raw"), 512 * 1024);
    let manifest = manifest_json(dir.path(), &"e".repeat(64), data.len() as u64);
    for flag in [
        &["--tpm"][..],
        &["--no-imds-v2"][..],
        &["--copy-to", "eu-west-1"][..],
        &["--launch-template", "web"][..],
    ] {
        let endpoint = CountingEndpoint::start();
        let (code, _out, stderr) = run(imgforge()
            .arg("register")
            .arg(&manifest)
            .args(["--to", "emi", "--ebs"])
            .args(flag)
            .envs(endpoint.env()));
        assert_ne!(code, 0, "{flag:?} was taken for an EMI");
        assert!(
            stderr.contains(&format!("{} is for AMIs", flag[0])),
            "{flag:?}: {stderr}"
        );
        assert_eq!(endpoint.connections(), 0, "{flag:?}: a request was sent");
    }
}
