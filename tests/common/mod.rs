//! Shared test support: the real imgforge binary, and a real moto_server on 127.0.0.1.
#![allow(dead_code)]

pub mod apt_repo;
pub mod web;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command running the imgforge binary built for these tests.
pub fn imgforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgforge"))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// libfaketime for multi-threaded programs (Debian package `faketime`).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A moto_server process (from the project's `.venv`, made by `scripts/setup --test`), killed on
/// drop. With `fake_time_file`, it runs under libfaketime reading its offset from that file, so
/// tests can launch "old" instances.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The faketime offset file, when running under faketime.
    pub fake_time_file: Option<PathBuf>,
    /// moto_server's own log (its stdout and stderr), shown when a test fails.
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto_server on a free port and waits until it answers.
    pub fn start() -> Moto {
        Moto::start_with(false)
    }

    /// Starts moto_server under libfaketime (offset file initially `+0`).
    pub fn start_faketime() -> Moto {
        Moto::start_with(true)
    }

    fn start_with(fake_time: bool) -> Moto {
        let server = repo_root().join(".venv/bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/setup --test",
            server.display()
        );
        let port = free_port();
        let mut cmd;
        let mut fake_time_file = None;
        if fake_time {
            assert!(
                std::path::Path::new(FAKETIME_LIB).exists(),
                "{FAKETIME_LIB} is missing: install the Debian package faketime"
            );
            let file = std::env::temp_dir().join(format!("imgforge-faketime-{port}"));
            std::fs::write(&file, "+0\n").unwrap();
            // libfaketime preloaded directly: the `faketime -f` wrapper sets FAKETIME, which
            // takes precedence over the file, so switching the file's offset would do nothing.
            // The MT variant because moto_server answers on threads.
            cmd = Command::new(&server);
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", &file)
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            fake_time_file = Some(file);
        } else {
            cmd = Command::new(&server);
        }
        let log = tempfile::NamedTempFile::new().unwrap();
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        let child = cmd.spawn().expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on {endpoint}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint,
            fake_time_file,
            log,
        }
    }

    /// Sets the fake clock offset (`-31d`, `+0`) when running under faketime.
    pub fn set_offset(&self, offset: &str) {
        let file = self
            .fake_time_file
            .as_ref()
            .expect("moto started with faketime");
        std::fs::write(file, format!("{offset}\n")).unwrap();
    }

    /// Environment for the imgforge binary and SDK clients to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        aws_env(&self.endpoint)
    }

    /// An SDK configuration pointing at this server.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failed test shows what moto said: its tracebacks explain its HTTP 500s.
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            let lines: Vec<_> = log.lines().filter(|l| !l.contains("\" 200 -")).collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "moto_server log (last lines, 200s left out):\n{}",
                tail.join("\n")
            );
        }
        if let Some(f) = &self.fake_time_file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Environment sending every AWS SDK call (imgforge's included) to `endpoint`, with test
/// credentials and region, and without the instance metadata service.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// Runs `cmd`, returning (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// sha256 of a file, as `sha256sum` prints it.
pub fn sha256_of(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Writes `manifest` as `manifest.json` in `dir` after recording, for each of its artifacts and
/// documents, the real size and sha256 of the file in `dir`, and writes the matching
/// `SHA256SUMS`, as a build does; returns the manifest's path.
pub fn write_build_record(dir: &std::path::Path, mut manifest: serde_json::Value) -> PathBuf {
    let mut sums = String::new();
    for list in ["artifacts", "documents"] {
        let Some(items) = manifest.get_mut(list).and_then(|l| l.as_array_mut()) else {
            continue;
        };
        for a in items {
            let file = dir.join(a["file"].as_str().unwrap());
            let sha = sha256_of(&file);
            sums.push_str(&format!("{sha}  {}\n", a["file"].as_str().unwrap()));
            a["size"] = std::fs::metadata(&file).unwrap().len().into();
            a["sha256"] = sha.into();
        }
    }
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    let path = dir.join("manifest.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    path
}

/// A TCP endpoint on 127.0.0.1 that only counts the connections made to it: pointed at as the
/// AWS endpoint, it shows whether a command sent any request at all.
pub struct CountingEndpoint {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingEndpoint {
    /// Starts listening on a free port.
    pub fn start() -> CountingEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&count);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        CountingEndpoint { endpoint, count }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Environment pointing the AWS SDK (and imgforge) at this endpoint, with test credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        aws_env(&self.endpoint)
    }
}

/// Flips one byte of `path` at `offset`, keeping its size and returning the new sha256.
pub fn flip_byte(path: &std::path::Path, offset: u64) -> String {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], offset).unwrap();
    drop(f);
    sha256_of(path)
}

/// Asserts that `stderr` refuses `file` naming it, the digest it was built with and the digest
/// it has now.
pub fn assert_names_digests(stderr: &str, file: &std::path::Path, built: &str, now: &str) {
    assert!(
        stderr.contains(&file.display().to_string())
            && stderr.contains(built)
            && stderr.contains(now),
        "names the file and both digests: {stderr}"
    );
}

/// An ed25519 key pair made by ssh-keygen: (private key path, public key line).
pub fn ssh_key(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// `ssh-keygen -lf`'s SHA256 fingerprint of a key.
pub fn ssh_fingerprint(key: &std::path::Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_string()
}

/// An allowed_signers file trusting `public` as `principal`.
pub fn allowed_signers(dir: &std::path::Path, principal: &str, public: &str) -> PathBuf {
    let path = dir.join(format!("allowed-{principal}"));
    std::fs::write(&path, format!("{principal} {public}\n")).unwrap();
    path
}

/// The tags of a signed registration of `image` (build `build`, artifact `sha256`), made with
/// plain `ssh-keygen -Y sign -n imgforge` from the documented statement, as (key, value)
/// pairs: what `register --sign` puts on an image.
pub fn registration_tags(
    key: &std::path::Path,
    image: &str,
    build: &str,
    sha256: &str,
) -> Vec<(String, String)> {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registration");
    std::fs::write(
        &file,
        format!("imgforge registration v1\nimage {image}\nbuild {build}\nsha256 {sha256}\n"),
    )
    .unwrap();
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "imgforge", "-f"])
        .arg(key)
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let sig = std::fs::read(dir.path().join("registration.sig")).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(sig);
    let mut tags = vec![
        ("imgforge:build-id".to_string(), build.to_string()),
        ("imgforge:artifact-sha256".to_string(), sha256.to_string()),
    ];
    for (i, chunk) in encoded.as_bytes().chunks(256).enumerate() {
        tags.push((
            format!("imgforge:registration-{i}"),
            String::from_utf8(chunk.to_vec()).unwrap(),
        ));
    }
    tags
}
