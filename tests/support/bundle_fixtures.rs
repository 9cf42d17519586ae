//! Fixtures for Eucalyptus bundle tests, shared by `tests/register_emi.rs` and the unit tests
//! in `src/register/bundle_tests.rs`: keys made with openssl and incompressible images.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Makes an RSA key and a self-signed certificate with openssl; returns (key, cert).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}-pk.pem"));
    let cert = dir.join(format!("{name}-cert.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={name}")])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    (key, cert)
}

/// An image of `len` bytes: pseudo-random data (incompressible, so the bundle has several
/// parts) with a zero stretch in the middle.
pub fn image(path: &Path, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    data[len / 3..len / 2].fill(0);
    std::fs::write(path, &data).unwrap();
    data
}
