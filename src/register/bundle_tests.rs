//! Bundles made by imgforge round-trip bit for bit, tampering is detected, and keys that do not
//! match are named. Keys and certificates are made by the test with openssl.

use super::bundle::{self, BundleKeys, BundleSpec};
use std::path::{Path, PathBuf};

#[path = "../../tests/support/bundle_fixtures.rs"]
mod bundle_fixtures;
use bundle_fixtures::{image, keypair};

struct Keys {
    cloud_key: PathBuf,
    cloud_cert: PathBuf,
    user_key: PathBuf,
    user_cert: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    let (cloud_key, cloud_cert) = keypair(dir, "cloud");
    let (user_key, user_cert) = keypair(dir, "user");
    Keys {
        cloud_key,
        cloud_cert,
        user_key,
        user_cert,
    }
}

/// The spec of the test bundle `regtest`, for an image checked to hold `checked`.
fn spec(checked: &[u8]) -> BundleSpec {
    BundleSpec {
        name: "regtest-1.0".into(),
        user: "123456789012".into(),
        arch: "x86_64".into(),
        prefix: "regtest".into(),
        image_sha256: Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(checked))),
    }
}

#[test]
fn a_bundle_round_trips_and_any_flipped_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let img = dir.path().join("disk.raw");
    let data = image(&img, 26 * 1024 * 1024 + 123);
    let out_dir = dir.path().join("bundle");
    std::fs::create_dir(&out_dir).unwrap();
    let keys = BundleKeys::load(&k.cloud_cert, &k.user_cert, &k.user_key).unwrap();
    let spec = spec(&data);
    let made = bundle::create(&img, &out_dir, &spec, &keys, &|_| {}).unwrap();
    assert_eq!(
        made.parts.len(),
        3,
        "about 21.7 MiB of incompressible data is three 10 MiB parts"
    );
    let names: Vec<String> = made
        .parts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["regtest.part.00", "regtest.part.01", "regtest.part.02"]
    );
    let manifest_text = std::fs::read_to_string(&made.manifest).unwrap();
    assert!(manifest_text.contains("<version>2007-10-10</version>"));
    assert!(manifest_text.contains("<architecture>x86_64</architecture>"));

    // Round trip with the user's key, and with the cloud's key (ec2_encrypted_key).
    let restored = dir.path().join("restored.raw");
    let user_key = bundle::load_private_key(&k.user_key).unwrap();
    let done = bundle::unbundle(&made.manifest, &user_key, &restored).unwrap();
    assert_eq!(done.size, data.len() as u64);
    assert!(std::fs::read(&restored).unwrap() == data, "bit for bit");
    let cloud_key = bundle::load_private_key(&k.cloud_key).unwrap();
    // The signature is the user's, so the cloud's key alone cannot verify it.
    let e = bundle::unbundle(&made.manifest, &cloud_key, &dir.path().join("x.raw"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("signature"), "{e}");

    // A flipped byte in any part is detected, and nothing is written.
    for part in &made.parts {
        let original = std::fs::read(part).unwrap();
        let mut bad = original.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        std::fs::write(part, &bad).unwrap();
        let out = dir.path().join("tampered.raw");
        let e = format!(
            "{:#}",
            bundle::unbundle(&made.manifest, &user_key, &out).unwrap_err()
        );
        let name = part.file_name().unwrap().to_string_lossy();
        assert!(e.contains(&*name) && e.contains("corrupt"), "{e}");
        assert!(!out.exists(), "no output after a failed unbundle");
        std::fs::write(part, &original).unwrap();
    }

    // An altered manifest fails the signature check.
    let altered = manifest_text.replace("<name>regtest-1.0</name>", "<name>regtest-6.6</name>");
    std::fs::write(&made.manifest, altered).unwrap();
    let e = format!(
        "{:#}",
        bundle::unbundle(&made.manifest, &user_key, &dir.path().join("y.raw")).unwrap_err()
    );
    assert!(e.contains("signature does not verify"), "{e}");
}

#[test]
fn mismatched_or_malformed_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let e = BundleKeys::load(&k.cloud_cert, &k.user_cert, &k.cloud_key)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not belong to the certificate"), "{e}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = BundleKeys::load(&junk, &k.user_cert, &k.user_key)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("junk.pem") && e.contains("not a PEM X.509 certificate"),
        "{e}"
    );
    let e = BundleKeys::load(&k.cloud_cert, &k.user_cert, &junk)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("junk.pem") && e.contains("RSA private key"),
        "{e}"
    );
}

#[test]
fn an_image_changed_in_place_after_its_check_is_not_bundled() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let img = dir.path().join("disk.raw");
    let data = image(&img, 1024 * 1024);
    // Same file, same size, one byte changed after the digest was taken.
    let mut changed = data.clone();
    changed[4096] ^= 1;
    std::fs::write(&img, &changed).unwrap();
    let keys = BundleKeys::load(&k.cloud_cert, &k.user_cert, &k.user_key).unwrap();
    let spec = spec(&data);
    let out_dir = dir.path().join("bundle");
    std::fs::create_dir(&out_dir).unwrap();
    let e = bundle::create(&img, &out_dir, &spec, &keys, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("changed while it was being bundled"), "{e}");
}
