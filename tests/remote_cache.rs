//! The remote layer cache against moto's S3 through the real SDK: two runners racing to upload
//! the same base end with one intact object; a runner with an empty local cache downloads the
//! base instead of running mmdebstrap, and its image passes its checks; the next one downloads
//! the bake too and bakes nothing; a remote object with one byte changed is refused by its
//! digest, deleted and baked again, and a `--no-verify` build stores nothing. Every runner
//! signs what it stores and trusts only that key (`IMGFORGE_CACHE_KEY`/`IMGFORGE_CACHE_TRUST`);
//! a runner given the cache URL without a key to trust is refused.

mod common;

use common::web::{base_lock, cache_dir, WebFixture};
use common::{imgforge, run, Moto};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BUCKET: &str = "layers";
const URL: &str = "s3://layers/ci";

/// `imgforge build --json` of `def` with `local` as the local cache and the remote cache at
/// [`URL`] on `moto`: (exit code, events, stderr).
fn build(moto: &Moto, def: &Path, local: &Path, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let (code, out, err) = run(&mut build_command(moto, def, local, extra));
    (code, events(&out), err)
}

fn build_command(moto: &Moto, def: &Path, local: &Path, extra: &[&str]) -> Command {
    let mut cmd = imgforge();
    cmd.args(["build", "--json", "--cache-url", URL])
        .args(extra)
        .arg(def)
        .env("IMGFORGE_CACHE", local)
        .envs(moto.env())
        .envs(signing_env());
    cmd
}

/// The runners' signing key and the allowed-signers file that trusts it, as the environment
/// of a runner that stores and reads signed layers.
fn signing_env() -> [(&'static str, PathBuf); 2] {
    static KEYS: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    let (_, key, allowed) = KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = common::ssh_key(dir.path(), "ci");
        let allowed = common::allowed_signers(dir.path(), "ci@example.com", &public);
        (dir, key, allowed)
    });
    [
        ("IMGFORGE_CACHE_KEY", key.clone()),
        ("IMGFORGE_CACHE_TRUST", allowed.clone()),
    ]
}

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The last event: a build's manifest.
fn last(events: &[Value]) -> &Value {
    let last = events.last().expect("events");
    assert_eq!(last["event"], "manifest", "{last}");
    last
}

fn has_phase(events: &[Value], phase: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == "phase" && e["phase"] == phase)
}

fn uploads(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["event"] == "base_uploaded")
        .collect()
}

/// The remote object of `layer` (base or bake) `id`: its bytes and its metadata.
async fn remote_object(
    s3: &aws_sdk_s3::Client,
    layer: &str,
    id: &str,
) -> (Vec<u8>, std::collections::HashMap<String, String>) {
    let got = s3
        .get_object()
        .bucket(BUCKET)
        .key(format!("ci/{layer}/{id}.tar.zst"))
        .send()
        .await
        .unwrap();
    let metadata = got.metadata().unwrap().clone();
    (got.body.collect().await.unwrap().to_vec(), metadata)
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn runners_share_base_layers_through_s3() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let moto = Moto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&rt.block_on(moto.sdk_config()))
            .force_path_style(true)
            .build(),
    );
    rt.block_on(s3.create_bucket().bucket(BUCKET).send())
        .unwrap();
    let web = WebFixture::new("remote cache test", "");
    let def = web.definition();

    // Two runners whose local caches both hold the base, racing to upload it.
    let (code, _, err) = run(imgforge()
        .args(["build", "--base-only"])
        .arg(&def)
        .env("IMGFORGE_CACHE", cache_dir()));
    assert_eq!(code, 0, "{err}");
    let (_, ids, _) = run(imgforge().args(["id", "--json"]).arg(&def));
    let base_id = serde_json::from_str::<Value>(ids.trim()).unwrap()["base"]
        .as_str()
        .unwrap()
        .to_string();
    let second = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(second.path().join("base")).unwrap();
    // Hard links: the racers only read the base, and the suite's disk stays small.
    let copied = Command::new("cp")
        .arg("-al")
        .arg(cache_dir().join("base").join(&base_id))
        .arg(second.path().join("base"))
        .status()
        .unwrap();
    assert!(copied.success());
    let racers: Vec<_> = [cache_dir(), second.path().to_path_buf()]
        .iter()
        .map(|local| {
            build_command(&moto, &def, local, &["--base-only"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut all_uploads = Vec::new();
    for racer in racers {
        let out = racer.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let events = events(&String::from_utf8_lossy(&out.stdout));
        all_uploads.extend(uploads(&events).into_iter().cloned());
    }
    drop(second);
    // The uploads are conditional (If-None-Match: *), so S3 takes one and refuses the other;
    // moto checks the condition when a request starts, so two PUTs in flight at once may both
    // be taken there. Either way the bucket ends with one whole object, and it is the same
    // object whoever won: the two runners packed the same layer into the same bytes.
    let written: Vec<_> = all_uploads
        .iter()
        .filter(|u| u["already_there"] == false)
        .collect();
    assert!(!written.is_empty(), "the base was stored: {all_uploads:?}");
    let (bytes, metadata) = rt.block_on(remote_object(&s3, "base", &base_id));
    let digest = metadata["sha256"].clone();
    assert_eq!(sha256(&bytes), digest, "the object is whole");
    assert!(
        metadata.contains_key("imgforge-signature"),
        "signed: {metadata:?}"
    );
    for upload in &written {
        assert_eq!(
            upload["sha256"],
            digest.as_str(),
            "the same bytes: {all_uploads:?}"
        );
        assert_eq!(upload["bytes"], bytes.len() as u64);
    }

    // A runner with an empty local cache: plan says remote; the build downloads the base,
    // runs no mmdebstrap, and the image passes its checks.
    let fresh = tempfile::tempdir().unwrap();
    let plan = |signing: &[(&str, PathBuf)]| {
        run(imgforge()
            .args(["plan", "--json", "--cache-url", URL, "--output-dir"])
            .arg(web.output())
            .arg(&def)
            .env("IMGFORGE_CACHE", fresh.path())
            .env_remove("IMGFORGE_CACHE_TRUST")
            .envs(moto.env())
            .envs(signing.iter().cloned()))
    };
    let (code, _, err) = plan(&[]);
    assert_eq!(code, 1, "a cache URL without a key to trust: {err}");
    assert!(err.contains("set IMGFORGE_CACHE_TRUST"), "{err}");
    let (code, out, err) = plan(&signing_env());
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(plan["definitions"][0]["base"], "remote", "{plan}");
    let (code, events, err) = build(
        &moto,
        &def,
        fresh.path(),
        &["--output-dir", web.output().to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        events.iter().any(|e| e["event"] == "base_downloaded"),
        "{events:?}"
    );
    assert!(
        !has_phase(&events, "mmdebstrap"),
        "the base was not rebuilt"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "check_passed")
            .count(),
        2,
        "the image made on the downloaded base passes its checks"
    );
    let stored = events
        .iter()
        .find(|e| e["event"] == "bake_uploaded")
        .unwrap_or_else(|| panic!("the bake layer was not stored: {events:?}"));
    assert_eq!(stored["already_there"], false);
    let build_id = last(&events)["ids"]["build"].clone();
    drop(fresh);

    // Another fresh runner: base and bake both come from the remote cache, nothing is baked,
    // and the image (the baked overlay rebased onto this runner's base) passes its checks.
    let fresh2 = tempfile::tempdir().unwrap();
    let out2 = fresh2.path().join("output");
    let (code, events, err) = build(
        &moto,
        &def,
        fresh2.path(),
        &["--output-dir", out2.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    for downloaded in ["base_downloaded", "bake_downloaded"] {
        assert!(
            events.iter().any(|e| e["event"] == downloaded),
            "{downloaded}: {events:?}"
        );
    }
    let baked_here = events.iter().any(|e| {
        e["event"] == "phase"
            && e["phase"]
                .as_str()
                .unwrap_or_default()
                .starts_with("bake (")
    });
    assert!(!baked_here, "nothing was baked here: {events:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "check_passed")
            .count(),
        2,
        "the image from the downloaded bake passes its checks"
    );
    assert_eq!(last(&events)["ids"]["build"], build_id, "the same build");
    assert!(
        !events.iter().any(|e| e["event"] == "bake_uploaded"),
        "nothing to store"
    );

    drop(fresh2);

    // One byte changed in the remote bake object, its signed metadata kept: refused by its
    // digest, deleted and baked again; with --no-verify that bake is not stored.
    let bake_id = build_id_bake(&events);
    let key = format!("ci/bake/{bake_id}.tar.zst");
    let (mut bytes, metadata) = rt.block_on(remote_object(&s3, "bake", &bake_id));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    rt.block_on(
        s3.put_object()
            .bucket(BUCKET)
            .key(&key)
            .set_metadata(Some(metadata.clone()))
            .body(bytes.into())
            .send(),
    )
    .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let (code, events, err) = build(
        &moto,
        &def,
        empty.path(),
        &[
            "--no-verify",
            "--output-dir",
            empty.path().join("output").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let warning = events
        .iter()
        .find(|e| e["event"] == "warning" && e["object"].is_string())
        .unwrap_or_else(|| panic!("no warning about the corrupt object: {events:?}"));
    assert_eq!(warning["expected"], metadata["sha256"].as_str());
    assert_ne!(warning["actual"], metadata["sha256"].as_str());
    assert!(warning["message"].as_str().unwrap().contains("is corrupt"));
    assert!(
        events.iter().any(|e| e["event"] == "base_downloaded"),
        "the intact base is used: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "bake_downloaded"),
        "never used"
    );
    assert!(!has_phase(&events, "mmdebstrap"));
    assert!(
        !events.iter().any(|e| e["event"] == "bake_uploaded"),
        "a --no-verify build stores nothing: {events:?}"
    );
    let gone = rt.block_on(s3.head_object().bucket(BUCKET).key(&key).send());
    assert!(gone.is_err(), "the corrupt object is deleted");
}

/// The bake id of a build's events.
fn build_id_bake(events: &[Value]) -> String {
    last(events)["ids"]["bake"].as_str().unwrap().to_string()
}
