//! Signed builds: `imgforge sign` writes signatures that plain `ssh-keygen -Y verify` and
//! `minisign -V` accept; `verify --allowed-signers` and `register --require-signature` refuse a
//! changed manifest, `SHA256SUMS` or artifact, a signer not allowed and a missing signature,
//! each before any cloud request, and a signed registration tags the image with its signer.

mod common;

use common::{flip_byte, imgforge, run, write_build_record, CountingEndpoint, Moto};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Changes a signed build in place, given its manifest's path.
type Spoil<'a> = dyn Fn(&Path) + 'a;

/// A small build record: a 2 MiB raw disk with a few bytes in it and an SBOM document.
fn build(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let raw = dir.join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(2 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"boot sector bytes", 0).unwrap();
    std::fs::write(dir.join("img.spdx.json"), br#"{"spdxVersion": "SPDX-2.3"}"#).unwrap();
    write_build_record(
        dir,
        json!({
            "imgforge_version": "0.1.0", "name": "signed", "version": "1.0.0",
            "definition": "images/signed.toml",
            "ids": { "base": "a".repeat(64), "bake": "b".repeat(64), "build": "5".repeat(64) },
            "firmware": "bios", "arch": "x86_64", "disk_size": 2 << 20,
            "artifacts": [{ "format": "raw", "file": "disk.raw" }],
            "documents": [{ "kind": "sbom", "file": "img.spdx.json" }],
            "built_at": "2026-11-26T10:00:00Z",
        }),
    )
}

fn sign(manifest: &Path, key: &Path) -> Vec<Value> {
    let (code, out, err) = run(imgforge()
        .arg("--json")
        .arg("sign")
        .arg(manifest)
        .arg("--key")
        .arg(key));
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `ssh-keygen -Y verify` of `file` against `allowed` as `principal`: its exit status.
fn ssh_keygen_verifies(file: &Path, allowed: &Path, principal: &str) -> bool {
    let mut child = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "imgforge", "-I", principal, "-f"])
        .arg(allowed)
        .arg("-s")
        .arg(format!("{}.sig", file.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        &std::fs::read(file).unwrap(),
    )
    .unwrap();
    child.wait().unwrap().success()
}

/// `imgforge verify --no-boot --allowed-signers`: (exit code, stderr).
fn verify(manifest: &Path, allowed: &Path) -> (i32, String) {
    let (code, _, err) = run(imgforge()
        .args(["verify", "--no-boot", "--allowed-signers"])
        .arg(allowed)
        .arg(manifest));
    (code, err)
}

/// `imgforge register --require-signature` against an endpoint that only counts connections:
/// (exit code, stderr, connections made).
fn register_counting(manifest: &Path, allowed: &Path) -> (i32, String, usize) {
    let endpoint = CountingEndpoint::start();
    let (code, _, err) = run(imgforge()
        .arg("register")
        .arg(manifest)
        .args(["--to", "ami", "--require-signature"])
        .arg(allowed)
        .envs(endpoint.env()));
    (code, err, endpoint.connections())
}

#[test]
fn a_signed_build_verifies_with_ssh_keygen_and_every_tampering_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let (ci, ci_pub) = common::ssh_key(dir.path(), "ci");
    let (intruder, _) = common::ssh_key(dir.path(), "intruder");
    let trusted = common::allowed_signers(dir.path(), "ci@example.com", &ci_pub);

    let good = build(&dir.path().join("good"));
    let events = sign(&good, &ci);
    let signed = events.iter().find(|e| e["event"] == "signed").unwrap();
    assert_eq!(signed["fingerprint"], common::ssh_fingerprint(&ci));
    let sums = good.with_file_name("SHA256SUMS");
    for file in [&good, &sums] {
        assert!(
            ssh_keygen_verifies(file, &trusted, "ci@example.com"),
            "ssh-keygen -Y verify rejects {}",
            file.display()
        );
    }
    let (code, _, err) = run(imgforge()
        .args(["--json", "verify", "--no-boot", "--allowed-signers"])
        .arg(&trusted)
        .arg(&good));
    assert_eq!(code, 0, "{err}");

    // Each bad case on its own copy of the signed build: what it names, and no request.
    // The first two leave every digest consistent, so only a signature can catch them.
    let cases: [(&str, &Spoil<'_>, &str); 7] = [
        (
            "manifest edited",
            &|m| {
                let text = std::fs::read_to_string(m).unwrap();
                assert!(text.contains("\"1.0.0\""));
                std::fs::write(m, text.replace("\"1.0.0\"", "\"9.9.9\"")).unwrap();
            },
            "manifest.json",
        ),
        (
            "artifact and its digests",
            &|m| {
                let raw = m.with_file_name("disk.raw");
                let before = common::sha256_of(&raw);
                flip_byte(&raw, 5);
                let after = common::sha256_of(&raw);
                for file in [m.to_path_buf(), m.with_file_name("SHA256SUMS")] {
                    let text = std::fs::read_to_string(&file).unwrap();
                    assert!(text.contains(&before));
                    std::fs::write(&file, text.replace(&before, &after)).unwrap();
                }
            },
            "manifest.json",
        ),
        ("manifest", &|m| drop(flip_byte(m, 10)), "manifest.json"),
        (
            "sums",
            &|m| drop(flip_byte(&m.with_file_name("SHA256SUMS"), 3)),
            "SHA256SUMS",
        ),
        (
            "artifact",
            &|m| drop(flip_byte(&m.with_file_name("disk.raw"), 5)),
            "disk.raw",
        ),
        (
            "intruder",
            &|m| drop(sign(m, &intruder)),
            &common::ssh_fingerprint(&intruder),
        ),
        (
            "unsigned",
            &|m| std::fs::remove_file(m.with_file_name("manifest.json.sig")).unwrap(),
            "manifest.json.sig",
        ),
    ];
    for (name, spoil, named) in cases {
        let manifest = build(&dir.path().join(format!("case-{name}")));
        sign(&manifest, &ci);
        spoil(&manifest);
        let (code, err) = verify(&manifest, &trusted);
        assert_ne!(code, 0, "{name}: verify accepted it");
        assert!(err.contains(named), "{name}: verify names {named}: {err}");
        let (code, err, requests) = register_counting(&manifest, &trusted);
        assert_ne!(code, 0, "{name}: register accepted it");
        assert!(err.contains(named), "{name}: register names {named}: {err}");
        assert_eq!(requests, 0, "{name}: register made a request");
    }
    // The same build and signature, a different list of allowed signers: refused.
    let intruder_pub = std::fs::read_to_string(intruder.with_extension("pub")).unwrap();
    let only_intruder =
        common::allowed_signers(dir.path(), "someone@example.com", intruder_pub.trim());
    let (code, err) = verify(&good, &only_intruder);
    assert_ne!(code, 0);
    assert!(
        err.contains(&common::ssh_fingerprint(&ci)),
        "names the signer's key: {err}"
    );
}

#[test]
fn a_minisign_signature_verifies_with_minisign_and_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<(PathBuf, PathBuf)> = ["one", "two"]
        .iter()
        .map(|n| {
            let (public, secret) = (
                dir.path().join(format!("{n}.pub")),
                dir.path().join(format!("{n}.key")),
            );
            let status = Command::new("minisign")
                .args(["-G", "-W", "-p"])
                .arg(&public)
                .arg("-s")
                .arg(&secret)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            (public, secret)
        })
        .collect();
    let manifest = build(&dir.path().join("b"));
    sign(&manifest, &keys[0].1);
    for file in [manifest.clone(), manifest.with_file_name("SHA256SUMS")] {
        let status = Command::new("minisign")
            .arg("-Vq")
            .arg("-p")
            .arg(&keys[0].0)
            .arg("-m")
            .arg(&file)
            .arg("-x")
            .arg(format!("{}.sig", file.display()))
            .status()
            .unwrap();
        assert!(status.success(), "minisign -V rejects {}", file.display());
    }
    assert_eq!(verify(&manifest, &keys[0].0).0, 0);
    let (code, err) = verify(&manifest, &keys[1].0);
    assert_ne!(code, 0);
    assert!(err.contains("manifest.json"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_registration_is_bound_to_its_image_and_a_copied_one_is_not_reused() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (ci, ci_pub) = common::ssh_key(dir.path(), "ci");
    let trusted = common::allowed_signers(dir.path(), "ci@example.com", &ci_pub);
    let manifest = build(&dir.path().join("b"));
    sign(&manifest, &ci);
    // `register --require-signature --sign` of the build: (code, stdout, stderr).
    let attempt = || {
        let mut cmd = imgforge();
        cmd.args(["--json", "register"])
            .arg(&manifest)
            .args(["--to", "ami", "--require-signature"])
            .arg(&trusted)
            .arg("--sign")
            .arg(&ci)
            .envs(moto.env());
        run(&mut cmd)
    };
    let register = || {
        let (code, out, err) = attempt();
        assert_eq!(code, 0, "{err}");
        let result: Value = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "registered")
            .unwrap();
        (result, out)
    };
    let (first, out) = register();
    assert!(out.contains("\"signature_checked\""), "{out}");
    let image_id = first["image_id"].as_str().unwrap().to_string();
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config().await);
    let tags_of = |id: String| {
        let ec2 = ec2.clone();
        async move {
            let images = ec2.describe_images().image_ids(id).send().await.unwrap();
            images.images()[0].tags().to_vec()
        }
    };
    let tags = tags_of(image_id.clone()).await;
    let tag = |key: &str| {
        tags.iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag("imgforge:signer"), Some(common::ssh_fingerprint(&ci)));
    let sbom = common::sha256_of(&manifest.with_file_name("img.spdx.json"));
    assert_eq!(tag("imgforge:sbom-sha256"), Some(sbom));
    // The signed registration is the documented statement about this image, and plain
    // ssh-keygen accepts its signature.
    let raw_sha = common::sha256_of(&manifest.with_file_name("disk.raw"));
    assert_eq!(tag("imgforge:artifact-sha256"), Some(raw_sha.clone()));
    let encoded: String = (0..)
        .map_while(|i| tag(&format!("imgforge:registration-{i}")))
        .collect();
    use base64::Engine;
    let statement = dir.path().join("statement");
    std::fs::write(
        &statement,
        format!(
            "imgforge registration v1\nimage {image_id}\nbuild {}\nsha256 {raw_sha}\n",
            "5".repeat(64)
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("statement.sig"),
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    assert!(ssh_keygen_verifies(&statement, &trusted, "ci@example.com"));

    // Someone who may tag images deregisters it and tags another image, registered from
    // other bytes, with its build id and its signed registration: register does not reuse
    // that image, it registers the checked artifact anew.
    ec2.deregister_image()
        .image_id(&image_id)
        .send()
        .await
        .unwrap();
    let impostor = ec2
        .register_image()
        .name("impostor")
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    let mut copy = ec2.create_tags().resources(&impostor);
    for t in &tags {
        copy = copy.tags(t.clone());
    }
    copy.send().await.unwrap();
    let images_before = ec2.describe_images().owners("self").send().await.unwrap();
    let (code, _, err) = attempt();
    assert_ne!(code, 0, "the impostor was reused");
    assert!(
        err.contains(&impostor)
            && err.contains("is not reused")
            && err.contains("does not check out"),
        "the refusal names the impostor: {err}"
    );
    let images_after = ec2.describe_images().owners("self").send().await.unwrap();
    assert_eq!(
        images_before.images().len(),
        images_after.images().len(),
        "nothing registered"
    );
    // Once the impostor is gone, the build is registered anew, and that image is reused next.
    ec2.deregister_image()
        .image_id(&impostor)
        .send()
        .await
        .unwrap();
    let (second, _) = register();
    assert_eq!(second["reused"], false, "{second}");
    let (third, _) = register();
    assert_eq!(third["reused"], true, "{third}");
    assert_eq!(third["image_id"], second["image_id"]);
}
