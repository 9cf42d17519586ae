//! `imgforge register --to ami` against a real moto_server through the real SDK: the snapshot's
//! blocks read back with GetSnapshotBlock, tags, idempotency, and clear errors.

mod common;

use common::{
    assert_names_digests, flip_byte, imgforge, run, write_build_record, CountingEndpoint, Moto,
};
use serde_json::{json, Value};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const BLOCK: u64 = 512 * 1024;

/// Writes a sparse raw image and a manifest.json naming it; returns the manifest path.
fn fixture(dir: &Path, build_id: &str, extents: &[(u64, Vec<u8>)], len: u64) -> PathBuf {
    let raw = dir.join("disk.raw");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&raw)
        .unwrap();
    f.set_len(len).unwrap();
    for (offset, bytes) in extents {
        f.write_all_at(bytes, *offset).unwrap();
    }
    f.sync_all().unwrap();
    let manifest = json!({
        "imgforge_version": "0.1.0",
        "name": "regtest",
        "version": "1.2.3",
        "description": "register test image",
        "definition": "images/regtest.toml",
        "ids": { "base": "a".repeat(64), "bake": "b".repeat(64), "build": build_id },
        "firmware": "bios",
        "arch": "x86_64",
        "disk_size": len,
        "artifacts": [{ "format": "raw", "file": "disk.raw" }],
        "built_at": "2026-11-25T10:00:00Z",
    });
    write_build_record(dir, manifest)
}

fn register(moto: &Moto, manifest: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = imgforge();
    cmd.arg("--json")
        .arg("register")
        .arg(manifest)
        .args(["--to", "ami"])
        .args(extra)
        .envs(moto.env());
    run(&mut cmd)
}

/// The final JSON result line of a `--json` run.
fn result_line(stdout: &str) -> Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "registered")
        .unwrap_or_else(|| panic!("no result line in:\n{stdout}"))
}

async fn snapshot_count(ec2: &aws_sdk_ec2::Client) -> usize {
    ec2.describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots
        .unwrap_or_default()
        .len()
}

async fn image_count(ec2: &aws_sdk_ec2::Client) -> usize {
    ec2.describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images
        .unwrap_or_default()
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_upload_sends_only_nonzero_blocks_and_registering_again_reuses_the_image() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let build_id = "c0ffee".repeat(10) + "abcd";
    let len = 8 * BLOCK + 1000; // nine blocks, the last one partial
    let full_block: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8 + 1).collect();
    let manifest = fixture(
        dir.path(),
        &build_id,
        &[
            (17, b"boot sector bytes".to_vec()),
            (2 * BLOCK, vec![0u8; BLOCK as usize]), // written, but all zeros
            (3 * BLOCK, full_block.clone()),
            (8 * BLOCK + 10, vec![0x5a; 500]), // in the partial last block
        ],
        len,
    );
    let image = std::fs::read(dir.path().join("disk.raw")).unwrap();

    let config = moto.sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let ebs = aws_sdk_ebs::Client::new(&config);

    let (code, stdout, stderr) = register(&moto, &manifest, &["--concurrency", "3"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let result = result_line(&stdout);
    assert_eq!(result["reused"], false);
    let image_id = result["image_id"].as_str().unwrap().to_string();
    let snapshot_id = result["snapshot_id"].as_str().unwrap().to_string();
    assert!(snapshot_id.starts_with("snap-"), "{result}");

    // The snapshot holds exactly the non-zero blocks, with the image's bytes (last one padded).
    let listed = ebs
        .list_snapshot_blocks()
        .snapshot_id(&snapshot_id)
        .send()
        .await
        .unwrap();
    let mut indexes: Vec<i32> = listed
        .blocks
        .unwrap_or_default()
        .iter()
        .map(|b| b.block_index.unwrap())
        .collect();
    indexes.sort();
    assert_eq!(
        indexes,
        [0, 3, 8],
        "blocks 1, 2 and 4-7 are zeros and must not be sent"
    );
    for (index, token) in ebs
        .list_snapshot_blocks()
        .snapshot_id(&snapshot_id)
        .send()
        .await
        .unwrap()
        .blocks
        .unwrap()
        .into_iter()
        .map(|b| (b.block_index.unwrap(), b.block_token.unwrap()))
    {
        let got = ebs
            .get_snapshot_block()
            .snapshot_id(&snapshot_id)
            .block_index(index)
            .block_token(token)
            .send()
            .await
            .unwrap()
            .block_data
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let start = index as usize * BLOCK as usize;
        let mut want = image[start..image.len().min(start + BLOCK as usize)].to_vec();
        want.resize(BLOCK as usize, 0);
        assert_eq!(got.len(), want.len(), "block {index} length");
        assert!(got == want, "block {index} differs from the image");
    }

    // The image carries its provenance.
    let described = ec2
        .describe_images()
        .image_ids(&image_id)
        .send()
        .await
        .unwrap();
    let img = &described.images.unwrap()[0];
    let tags: Vec<(String, String)> = img
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    assert!(
        tags.contains(&("imgforge:build-id".into(), build_id.clone())),
        "{tags:?}"
    );
    assert!(
        tags.contains(&("imgforge:version".into(), "1.2.3".into())),
        "{tags:?}"
    );
    assert_eq!(
        img.name(),
        Some(&*format!("regtest-1.2.3-{}", &build_id[..12]))
    );

    // The snapshot is tagged too.
    let snap = ec2
        .describe_snapshots()
        .snapshot_ids(&snapshot_id)
        .send()
        .await
        .unwrap()
        .snapshots
        .unwrap();
    assert_eq!(snap[0].state().map(|s| s.as_str()), Some("completed"));
    assert!(snap[0]
        .tags()
        .iter()
        .any(|t| t.key() == Some("imgforge:build-id") && t.value() == Some(&*build_id)));

    // Registering the same manifest again creates nothing new.
    let (snaps, images) = (snapshot_count(&ec2).await, image_count(&ec2).await);
    let (code, stdout, stderr) = register(&moto, &manifest, &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let again = result_line(&stdout);
    assert_eq!(again["reused"], true, "{again}");
    assert_eq!(again["image_id"], image_id.as_str());
    assert!(stdout.contains("\"event\":\"image_reused\""), "{stdout}");
    assert_eq!(snapshot_count(&ec2).await, snaps, "no new snapshot");
    assert_eq!(image_count(&ec2).await, images, "no new image");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qcow2_only_build_is_converted_and_its_data_uploaded() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let len = 4 * BLOCK;
    let manifest = fixture(
        dir.path(),
        &"d".repeat(64),
        &[(BLOCK + 3, vec![7u8; 4000])],
        len,
    );
    // Replace the raw artifact by a qcow2 one.
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .expect("qemu-img is installed");
    assert!(status.success());
    std::fs::remove_file(&raw).unwrap();
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["artifacts"] = json!([{ "format": "qcow2", "file": "disk.qcow2" }]);
    let manifest = write_build_record(dir.path(), m);

    let (code, stdout, stderr) = register(&moto, &manifest, &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let snapshot_id = result_line(&stdout)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ebs = aws_sdk_ebs::Client::new(&moto.sdk_config().await);
    let blocks = ebs
        .list_snapshot_blocks()
        .snapshot_id(&snapshot_id)
        .send()
        .await
        .unwrap()
        .blocks
        .unwrap_or_default();
    let indexes: Vec<i32> = blocks.iter().map(|b| b.block_index.unwrap()).collect();
    assert_eq!(indexes, [1]);
    // The temporary raw file is gone.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".imgforge"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn missing_credentials_are_named_with_what_to_set() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture(dir.path(), &"e".repeat(64), &[(0, vec![1])], BLOCK);
    let mut cmd = imgforge();
    cmd.arg("register")
        .arg(&manifest)
        .args([
            "--to",
            "ami",
            "--region",
            "us-east-1",
            "--endpoint-url",
            &moto.endpoint,
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", dir.path())
        .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("no-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let (code, _out, stderr) = run(&mut cmd);
    assert_ne!(code, 0);
    assert!(stderr.contains("no AWS credentials found"), "{stderr}");
    assert!(stderr.contains("AWS_ACCESS_KEY_ID"), "{stderr}");
}

#[test]
fn tpm_with_legacy_bios_is_refused_before_anything_is_uploaded() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture(dir.path(), &"f".repeat(64), &[(0, vec![1])], BLOCK);
    let (code, _out, stderr) = register(&moto, &manifest, &["--tpm"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("TPM 2.0 needs UEFI"), "{stderr}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&rt.block_on(moto.sdk_config()));
    assert_eq!(rt.block_on(snapshot_count(&ec2)), 0, "nothing was uploaded");
}

#[test]
fn a_missing_raw_artifact_is_named() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture(dir.path(), &"9".repeat(64), &[(0, vec![1])], BLOCK);
    std::fs::remove_file(dir.path().join("disk.raw")).unwrap();
    let (code, _out, stderr) = register(&moto, &manifest, &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("disk.raw") && stderr.contains("missing"),
        "{stderr}"
    );
}

#[test]
fn the_import_route_needs_an_existing_bucket() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture(dir.path(), &"8".repeat(64), &[(0, vec![1])], BLOCK);
    let (code, _out, stderr) = register(&moto, &manifest, &["--upload", "import"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--upload import needs --bucket"),
        "{stderr}"
    );
    let (code, _out, stderr) = register(
        &moto,
        &manifest,
        &["--upload", "import", "--bucket", "nope"],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("bucket `nope` does not exist"), "{stderr}");
}

/// Runs `register MANIFEST --to ami EXTRA…` with `env`.
fn register_with(
    env: Vec<(&'static str, String)>,
    manifest: &Path,
    extra: &[&str],
) -> (i32, String, String) {
    run(imgforge()
        .arg("register")
        .arg(manifest)
        .args(["--to", "ami"])
        .args(extra)
        .envs(env))
}

#[test]
fn a_tampered_artifact_is_refused_before_any_request_on_both_ami_routes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture(
        dir.path(),
        &"7".repeat(64),
        &[(0, b"boot code".to_vec())],
        BLOCK,
    );
    let raw = dir.path().join("disk.raw");
    let built = common::sha256_of(&raw);
    // One byte of the MBR's boot code changed after the build; the size stays the same.
    let tampered = flip_byte(&raw, 3);
    let endpoint = CountingEndpoint::start();
    for route in [
        &["--upload", "direct"][..],
        &["--upload", "import", "--bucket", "images"][..],
    ] {
        let (code, _out, stderr) = register_with(endpoint.env(), &manifest, route);
        assert_ne!(code, 0, "{route:?} registered a tampered artifact");
        assert_names_digests(&stderr, &raw, &built, &tampered);
    }
    assert_eq!(
        endpoint.connections(),
        0,
        "no request may reach the endpoint"
    );

    // The same against moto: nothing is created there.
    let moto = Moto::start();
    let (code, _out, stderr) = register(&moto, &manifest, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("changed after the build"), "{stderr}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&rt.block_on(moto.sdk_config()));
    assert_eq!(rt.block_on(snapshot_count(&ec2)), 0);
    assert_eq!(rt.block_on(image_count(&ec2)), 0);
}

#[test]
fn an_artifact_that_disagrees_with_sha256sums_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture(dir.path(), &"6".repeat(64), &[(0, vec![1])], BLOCK);
    let sums = dir.path().join("SHA256SUMS");
    let listed = std::fs::read_to_string(&sums).unwrap();
    std::fs::write(&sums, format!("{}  disk.raw\n", "e".repeat(64))).unwrap();
    let endpoint = CountingEndpoint::start();
    let (code, _out, stderr) = register_with(endpoint.env(), &manifest, &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("SHA256SUMS") && stderr.contains(&"e".repeat(64)),
        "{stderr}"
    );
    std::fs::remove_file(&sums).unwrap();
    let (code, _out, stderr) = register_with(endpoint.env(), &manifest, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("SHA256SUMS"), "{stderr}");
    assert_eq!(endpoint.connections(), 0);
    assert!(!listed.is_empty());
}

/// An EC2 client of moto for `region`.
async fn regional_ec2(moto: &Moto, region: &str) -> aws_sdk_ec2::Client {
    let config = moto
        .sdk_config()
        .await
        .to_builder()
        .region(aws_config::Region::new(region.to_string()))
        .build();
    aws_sdk_ec2::Client::new(&config)
}

/// The signed registration on image `id` in `region`, rebuilt from its tags and that id, is
/// accepted by `ssh-keygen -Y verify` against `allowed`.
async fn assert_registration_verifies(
    moto: &Moto,
    region: &str,
    id: &str,
    build_id: &str,
    allowed: &Path,
) {
    let images = regional_ec2(moto, region)
        .await
        .describe_images()
        .image_ids(id)
        .send()
        .await
        .unwrap();
    let mut tags: Vec<(String, String)> = images.images()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    tags.sort_by_key(|(k, _)| {
        k.strip_prefix("imgforge:registration-")
            .and_then(|n| n.parse::<u32>().ok())
    });
    let value = |key: &str| tags.iter().find(|(k, _)| k == key).unwrap().1.clone();
    let encoded: String = tags
        .iter()
        .filter(|(k, _)| k.starts_with("imgforge:registration-"))
        .map(|(_, v)| v.as_str())
        .collect();
    let signature = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
        .unwrap_or_else(|e| panic!("{region} {id}: no registration ({e}): {tags:?}"));
    let dir = tempfile::tempdir().unwrap();
    let sig = dir.path().join("registration.sig");
    std::fs::write(&sig, signature).unwrap();
    let text = format!(
        "imgforge registration v1\nimage {id}\nbuild {build_id}\nsha256 {}\n",
        value("imgforge:artifact-sha256")
    );
    let mut child = std::process::Command::new("ssh-keygen")
        .args([
            "-Y",
            "verify",
            "-n",
            "imgforge",
            "-I",
            "ci@example.com",
            "-f",
        ])
        .arg(allowed)
        .arg("-s")
        .arg(&sig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{region} {id}: {out:?}");
}

/// Ids of the images tagged with `build_id` in `region`.
async fn images_of_build(moto: &Moto, region: &str, build_id: &str) -> Vec<String> {
    regional_ec2(moto, region)
        .await
        .describe_images()
        .owners("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:imgforge:build-id")
                .values(build_id)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .images
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.image_id.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_reach_each_region_once_and_a_rerun_reuses_them() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let build_id = "5eed".repeat(16);
    let manifest = fixture(dir.path(), &build_id, &[(0, b"boot".to_vec())], 2 * BLOCK);
    let regions = ["us-west-2", "eu-west-1"];
    let (key, public) = common::ssh_key(dir.path(), "ci");
    let allowed = common::allowed_signers(dir.path(), "ci@example.com", &public);
    let sign = ["--sign", key.to_str().unwrap()];

    let copy_to = ["--copy-to", &regions.join(",")];
    let (code, stdout, stderr) = register(&moto, &manifest, &[&copy_to[..], &sign].concat());
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let first = result_line(&stdout);
    let copies: Vec<(String, String)> = serde_json::from_value(first["copies"].clone()).unwrap();
    assert_eq!(
        copies.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        regions
    );
    // Each region holds exactly one image of the build, tagged so the next run can find it,
    // with a registration signed for that copy (ssh-keygen checks it, not imgforge).
    for (region, id) in &copies {
        assert_eq!(
            images_of_build(&moto, region, &build_id).await,
            [id.as_str()],
            "{region}"
        );
        assert_registration_verifies(&moto, region, id, &build_id, &allowed).await;
    }

    // A second run (the build was registered and copied before) copies nothing again.
    let (code, stdout, stderr) = register(&moto, &manifest, &[&copy_to[..], &sign].concat());
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let again = result_line(&stdout);
    assert_eq!(again["reused"], true, "{again}");
    assert_eq!(again["copies"], first["copies"], "{stdout}");
    assert!(!stdout.contains("\"event\":\"image_copied\""), "{stdout}");
    for (region, id) in &copies {
        assert_eq!(
            images_of_build(&moto, region, &build_id).await,
            [id.as_str()],
            "{region}"
        );
    }
    assert_eq!(
        images_of_build(&moto, "us-east-1", &build_id).await,
        [first["image_id"].as_str().unwrap().to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_launch_template_gets_one_new_default_version_per_build() {
    use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let build_id = "facade".repeat(10) + "0123";
    let manifest = fixture(dir.path(), &build_id, &[(0, b"boot".to_vec())], 4 * BLOCK);
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config().await);
    let created = ec2
        .create_launch_template()
        .launch_template_name("web")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-00000000000000001")
                .instance_type(InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let template_id = created
        .launch_template()
        .unwrap()
        .launch_template_id()
        .unwrap()
        .to_string();

    let versions = || async {
        ec2.describe_launch_template_versions()
            .launch_template_id(&template_id)
            .send()
            .await
            .unwrap()
            .launch_template_versions()
            .to_vec()
    };
    for run in 0..2 {
        let (code, stdout, stderr) = register(&moto, &manifest, &["--launch-template", "web"]);
        assert_eq!(code, 0, "run {run}: {stderr}");
        let result = result_line(&stdout);
        let image_id = result["image_id"].as_str().unwrap();
        let update = &result["launch_template"];
        assert_eq!(update["launch_template_id"], template_id.as_str());
        assert_eq!(update["version"], 2, "run {run}: {result}");
        assert_eq!(update["reused"], run == 1, "run {run}: {result}");
        let event = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "launch_template_version")
            .expect("a launch_template_version event");
        assert_eq!(event["image_id"], image_id);

        let all = versions().await;
        assert_eq!(
            all.len(),
            2,
            "run {run}: one version added, whatever the runs"
        );
        let default: Vec<_> = all
            .iter()
            .filter(|v| v.default_version() == Some(true))
            .collect();
        assert_eq!(default.len(), 1);
        assert_eq!(default[0].version_number(), Some(2));
        assert_eq!(
            default[0].launch_template_data().and_then(|d| d.image_id()),
            Some(image_id)
        );
        assert!(default[0]
            .version_description()
            .is_some_and(|d| d.contains(&build_id[..12])));
    }
    let tags = ec2
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("resource-id")
                .values(&template_id)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .tags()
        .to_vec();
    assert!(
        tags.iter()
            .any(|t| t.key() == Some("imgforge:build-id") && t.value() == Some(build_id.as_str())),
        "{tags:?}"
    );

    // A template that does not exist is named, after the image was registered.
    let (code, _, stderr) = register(&moto, &manifest, &["--launch-template", "nope"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("launch template nope does not exist"),
        "{stderr}"
    );
}
