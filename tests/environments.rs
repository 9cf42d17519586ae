//! One build of the web image for every place the service runs: `[cloud] init = "cloud-init"`
//! and a `vagrant-libvirt` box. Its instances boot in QEMU with a NoCloud seed, with an EC2
//! instance-metadata emulator asking for IMDSv2 tokens (the AWS identity in the guest's DMI),
//! and with the same emulator as a private cloud that has no tokens (Eucalyptus): each takes a
//! key given only by the metadata, its hostname and its user data, and grows its root to a disk
//! enlarged before boot. The cloud image carries no instance state and no Vagrant key; in the
//! extended suite, the box is added from the build's catalogue and brought up with Debian's
//! vagrant-libvirt, on a libvirtd the test starts in a network namespace of its own.

mod common;

use common::web::{build_dir, in_image_chroot, last_manifest, read_from_image, WebFixture};
use common::{imgforge, run, sha256_of, ssh_key};
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The part of Vagrant's insecure key that no other key has.
const VAGRANT_KEY_PART: &str = "AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22";
/// The page the fixture's data snapshot serves.
const PAGE: &str = "imgforge data for every place";
/// The disk the image is built with, and the one its instances get.
const BUILT_GIB: u64 = 3;
const INSTANCE_GIB: u64 = 5;

/// The one build every test here reads.
struct Built {
    fixture: WebFixture,
    dir: PathBuf,
    manifest: Value,
}

impl Built {
    fn artifact(&self, format: &str) -> PathBuf {
        let artifacts = self.manifest["artifacts"].as_array().unwrap();
        let a = artifacts.iter().find(|a| a["format"] == format).unwrap();
        self.dir.join(a["file"].as_str().unwrap())
    }

    fn document(&self, kind: &str) -> PathBuf {
        let documents = self.manifest["documents"].as_array().unwrap();
        let d = documents.iter().find(|d| d["kind"] == kind).unwrap();
        self.dir.join(d["file"].as_str().unwrap())
    }
}

static BUILT: OnceLock<Built> = OnceLock::new();

/// How many of this file's tests have ended; the last one removes the shared build (a static
/// is never dropped), so that a CI runner's disk does not fill up with it.
static ENDED: AtomicUsize = AtomicUsize::new(0);

/// How many of this file's tests run: the Vagrant test only in the extended suite, which
/// `scripts/test --extended` says with `IMGFORGE_EXTENDED_TESTS=1`.
fn tests_run() -> usize {
    match std::env::var("IMGFORGE_EXTENDED_TESTS").as_deref() {
        Ok("1") => 5,
        _ => 4,
    }
}

/// Counts a test as ended when dropped, whether it passed or panicked.
struct Ends;

impl Drop for Ends {
    fn drop(&mut self) {
        if ENDED.fetch_add(1, Ordering::SeqCst) + 1 == tests_run() {
            if let Some(built) = BUILT.get() {
                let _ = fs::remove_dir_all(built.fixture.dir.path());
            }
        }
    }
}

fn built() -> &'static Built {
    BUILT.get_or_init(|| {
        let fixture = WebFixture::new(
            PAGE,
            "\n[cloud]\ninit = \"cloud-init\"\nprivate_ec2 = true\n",
        );
        // A baked user with a baked key, which must keep working beside cloud-init's user.
        let (_, baked_key) = ssh_key(fixture.dir.path(), "baked");
        let def = fs::read_to_string(fixture.definition())
            .unwrap()
            .replace(
                "formats = [\"qcow2\", \"raw\"]",
                "formats = [\"qcow2\", \"vagrant-libvirt\"]",
            )
            .replace("ssh_keys = []", &format!("ssh_keys = [\"{baked_key}\"]"));
        fs::write(fixture.definition(), def).unwrap();
        // Not verified by the build: every test here boots it and fetches its page, as each
        // place would run it.
        let (code, events, err) = fixture.build(&["--no-verify"]);
        assert_eq!(code, 0, "{err}");
        let dir = build_dir(last_manifest(&events));
        let manifest = fs::read_to_string(dir.join("manifest.json")).unwrap();
        let manifest = serde_json::from_str(&manifest).unwrap();
        Built {
            fixture,
            dir,
            manifest,
        }
    })
}

/// A QEMU guest on an overlay of the built image, enlarged to [`INSTANCE_GIB`], killed when
/// dropped.
struct Guest {
    child: Child,
    dir: tempfile::TempDir,
    ssh_port: u16,
}

impl Guest {
    /// Boots the built qcow2 with `extra` QEMU arguments and `netdev_extra` appended to the
    /// user network's options.
    fn boot(extra: &[String], netdev_extra: &str) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("instance.qcow2");
        let created = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(built().artifact("qcow2"))
            .arg(&overlay)
            .arg(format!("{INSTANCE_GIB}G"))
            .status()
            .unwrap();
        assert!(created.success());
        let ssh_port = common::free_port();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel", "tcg", "-m", "1024", "-smp", "2", "-display", "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", dir.path().join("console.log").display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22{netdev_extra}"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0", "-no-reboot"])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Guest {
            child,
            dir,
            ssh_port,
        }
    }

    /// `cmd` as `user` over SSH with `key`: its stdout, or what it printed if SSH or `cmd`
    /// failed.
    fn ssh(&self, key: &Path, user: &str, cmd: &str) -> Result<String, String> {
        let out = Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(key)
            .args(["-p", &self.ssh_port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.success() {
            true => Ok(stdout),
            false => Err(format!(
                "{}{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// Waits until `cmd` succeeds with non-empty output; panics with the console's tail after
    /// ten minutes (TCG, with another guest beside it).
    fn wait_for(&self, key: &Path, user: &str, cmd: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            match self.ssh(key, user, cmd) {
                Ok(out) if !out.trim().is_empty() => return out,
                _ => std::thread::sleep(Duration::from_secs(3)),
            }
        }
        let console = self.console();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        panic!(
            "`{cmd}` as {user} never succeeded; the console's end:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

impl Guest {
    fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an instance configured from metadata shows: the key logged in as the cloud user, and
/// the hostname, the user data's effect, the grown root, sudo and the baked service.
fn assert_configured(guest: &Guest, key: &Path, hostname: &str, marker: &str) {
    let user = "admin";
    let seen = guest.wait_for(key, user, "cat /var/tmp/user-data-ran");
    assert_eq!(seen.trim(), marker, "the user data's script ran");
    assert_eq!(
        guest.ssh(key, user, "hostname").unwrap().trim(),
        hostname,
        "the hostname comes from the metadata"
    );
    let size: u64 = guest
        .ssh(key, user, "df -B1 --output=size / | tail -1")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        size > (INSTANCE_GIB - 1) << 30,
        "the root filesystem grew from {BUILT_GIB} GiB to the {INSTANCE_GIB} GiB disk: {size} bytes"
    );
    // The image has no curl; cloud-init brings Python.
    let page = "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1/\").read().decode())'";
    let sudo = guest.ssh(
        key,
        user,
        &format!("sudo -n id -un && id -un ops && {page}"),
    );
    let sudo = sudo.unwrap_or_else(|e| panic!("sudo, the baked user and the page: {e}"));
    assert!(sudo.starts_with("root\nops\n"), "{sudo}");
    assert!(
        sudo.contains(PAGE),
        "the baked service serves its data: {sudo}"
    );
}

#[test]
fn a_nocloud_seed_gives_the_instance_its_key_hostname_and_user_data() {
    let _ends = Ends;
    let seed_dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(seed_dir.path(), "nocloud");
    fs::write(
        seed_dir.path().join("meta-data"),
        format!(
            "instance-id: iid-imgforge-nocloud\nlocal-hostname: web-nocloud\npublic-keys:\n  - {public}\n"
        ),
    )
    .unwrap();
    fs::write(
        seed_dir.path().join("user-data"),
        "#!/bin/sh\necho from-nocloud > /var/tmp/user-data-ran\n",
    )
    .unwrap();
    let seed = seed_dir.path().join("seed.iso");
    let made = Command::new("xorriso")
        .args(["-as", "genisoimage", "-quiet", "-output"])
        .arg(&seed)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(seed_dir.path().join("user-data"))
        .arg(seed_dir.path().join("meta-data"))
        .status()
        .unwrap();
    assert!(made.success());
    let guest = Guest::boot(
        &[
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", seed.display()),
        ],
        "",
    );
    assert_configured(&guest, &key, "web-nocloud", "from-nocloud");
    let baked_key = built().fixture.dir.path().join("baked");
    let baked = guest.ssh(&baked_key, "ops", "id -un; hostname");
    assert_eq!(
        baked.as_deref(),
        Ok("ops\nweb-nocloud\n"),
        "the baked user logs in with its baked key"
    );
    assert!(
        guest.ssh(&key, "ops", "true").is_err(),
        "the metadata's key is the cloud user's only"
    );
}

/// One request the metadata emulator answered.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    token: bool,
}

/// An EC2 instance-metadata service on 127.0.0.1, which the guest reaches as
/// 169.254.169.254 through QEMU's `guestfwd`. With `tokens`, it is IMDSv2 as on AWS: a PUT to
/// `/latest/api/token` gives a token, and a GET without it gets 401.
struct Metadata {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

const TOKEN: &str = "imgforge-test-token-5f1e";

impl Metadata {
    fn start(public_key: &str, hostname: &str, user_data: &str, tokens: bool) -> Metadata {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = MetadataAnswers {
            public_key: public_key.to_string(),
            hostname: hostname.to_string(),
            user_data: user_data.to_string(),
            tokens,
        };
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(request) = answers.answer(stream) {
                    log.lock().unwrap().push(request);
                }
            }
        });
        Metadata { port, seen }
    }

    /// QEMU's user network with the metadata address inside it, forwarded here.
    fn netdev(&self) -> String {
        format!(
            ",net=169.254.0.0/16,guestfwd=tcp:169.254.169.254:80-cmd:nc 127.0.0.1 {}",
            self.port
        )
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct MetadataAnswers {
    public_key: String,
    hostname: String,
    user_data: String,
    tokens: bool,
}

impl MetadataAnswers {
    /// Reads one request from `stream` and answers it; the request, if one was read.
    fn answer(&self, mut stream: TcpStream) -> Option<Seen> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
        let (mut token, mut ttl, mut length) = (false, false, 0usize);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
                break;
            }
            let (name, value) = header.split_once(':')?;
            match name.trim().to_ascii_lowercase().as_str() {
                "x-aws-ec2-metadata-token" => token = value.trim() == TOKEN,
                "x-aws-ec2-metadata-token-ttl-seconds" => ttl = true,
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        let (status, text) = self.respond(&method, &path, token, ttl);
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            _ => "Not Found",
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        Some(Seen {
            method,
            path,
            token,
        })
    }

    fn respond(&self, method: &str, path: &str, token: bool, ttl: bool) -> (u16, String) {
        if method == "PUT" {
            return match (self.tokens, path == "/latest/api/token" && ttl) {
                (true, true) => (200, TOKEN.to_string()),
                _ => (403, String::new()),
            };
        }
        if self.tokens && !token {
            return (401, String::new());
        }
        let Some((_version, rest)) = path.trim_start_matches('/').split_once('/') else {
            return (404, String::new());
        };
        let text = match rest {
            "user-data" => self.user_data.clone(),
            "meta-data/" => {
                "instance-id\nlocal-hostname\nhostname\npublic-keys/\nplacement/".into()
            }
            "meta-data/instance-id" => "i-0123456789abcdef0".into(),
            "meta-data/local-hostname" | "meta-data/hostname" => self.hostname.clone(),
            "meta-data/public-keys/" => "0=imgforge-test".into(),
            "meta-data/public-keys/0/" => "openssh-key".into(),
            "meta-data/public-keys/0/openssh-key" => self.public_key.clone(),
            "meta-data/placement/" => "availability-zone".into(),
            "meta-data/placement/availability-zone" => "us-east-1a".into(),
            "dynamic/instance-identity" | "dynamic/instance-identity/" => "document".into(),
            "dynamic/instance-identity/document" => serde_json::json!({
                "instanceId": "i-0123456789abcdef0",
                "region": "us-east-1",
                "availabilityZone": "us-east-1a",
            })
            .to_string(),
            _ => return (404, String::new()),
        };
        (200, text)
    }
}

/// Boots an instance whose metadata comes from the emulator; `aws` puts AWS's identity in the
/// guest's DMI (product UUID starting `ec2`, equal to the serial), as EC2 does.
fn boot_with_metadata(tokens: bool, aws: bool, hostname: &str, marker: &str) -> Vec<Seen> {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(dir.path(), hostname);
    let user_data = format!("#!/bin/sh\necho {marker} > /var/tmp/user-data-ran\n");
    let metadata = Metadata::start(&public, hostname, &user_data, tokens);
    let uuid = "ec2e1c5a-7f2b-4d1e-9a3c-0123456789ab";
    let dmi: Vec<String> = match aws {
        true => ["-uuid", uuid, "-smbios", &format!("type=1,serial={uuid}")]
            .map(String::from)
            .to_vec(),
        false => Vec::new(),
    };
    let guest = Guest::boot(&dmi, &metadata.netdev());
    assert_configured(&guest, &key, hostname, marker);
    metadata.seen()
}

#[test]
fn the_ec2_metadata_service_with_imdsv2_tokens_configures_the_instance() {
    let _ends = Ends;
    let seen = boot_with_metadata(true, true, "web-imds", "from-imdsv2");
    assert!(
        seen.iter()
            .any(|s| s.method == "PUT" && s.path == "/latest/api/token"),
        "cloud-init asked for a token: {seen:?}"
    );
    let gets: Vec<&Seen> = seen.iter().filter(|s| s.method == "GET").collect();
    assert!(
        gets.iter()
            .any(|s| s.path.ends_with("/meta-data/public-keys/0/openssh-key")),
        "{seen:?}"
    );
    assert!(
        gets.iter().all(|s| s.token),
        "every metadata read carried the token: {seen:?}"
    );
}

#[test]
fn a_private_cloud_without_tokens_or_aws_identity_configures_the_instance() {
    let _ends = Ends;
    let seen = boot_with_metadata(false, false, "web-euca", "from-private-cloud");
    assert!(
        seen.iter().all(|s| s.method == "GET" && !s.token),
        "a cloud that is not AWS is read without tokens: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.path == "/2009-04-04/meta-data/instance-id"),
        "cloud-init found the service with the oldest API version, as Eucalyptus serves: {seen:?}"
    );
}

/// The paths of a build's file list.
fn listed_paths(files: &Path) -> Vec<String> {
    fs::read_to_string(files)
        .unwrap()
        .lines()
        .map(|l| {
            format!(
                "/{}",
                l.rsplit('\t').next().unwrap().trim_start_matches('/')
            )
        })
        .collect()
}

/// Whether `needle` occurs anywhere in the file's bytes.
fn bytes_contain(file: &Path, needle: &str) -> bool {
    let status = Command::new("grep")
        .args(["-q", "-a", "-F", needle])
        .arg(file)
        .status()
        .unwrap();
    status.success()
}

#[test]
fn the_cloud_image_has_no_instance_state_and_only_the_box_has_the_vagrant_key() {
    let _ends = Ends;
    let built = built();
    let paths = listed_paths(&built.document("files"));
    assert!(paths
        .iter()
        .any(|p| p == "/etc/cloud/cloud.cfg.d/90_imgforge.cfg"));
    let state: Vec<&String> = paths
        .iter()
        .filter(|p| {
            p.starts_with("/var/lib/cloud/")
                || p.starts_with("/var/log/cloud-init")
                || p.starts_with("/etc/systemd/network/10-cloud-init")
                || p.starts_with("/etc/network/interfaces.d/50-cloud-init")
                || p.starts_with("/home/vagrant")
        })
        .collect();
    assert!(state.is_empty(), "instance state in the image: {state:?}");

    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("cloud.raw");
    convert_to_raw(&built.artifact("qcow2"), &raw);
    assert!(
        !bytes_contain(&raw, VAGRANT_KEY_PART),
        "the Vagrant key is in the cloud image"
    );
    assert!(!read_from_image(&raw, "/etc/passwd")
        .unwrap()
        .contains("vagrant:"));
    // What an EC2 instance needs to find its disk and network (Nitro: NVMe, ENA).
    let drivers = in_image_chroot(
        &raw,
        &[
            "sh",
            "-c",
            "lsinitramfs /boot/initrd.img-* | grep -E '/(ena|nvme)\\.ko'",
        ],
    );
    assert!(
        drivers.contains("/ena.ko") && drivers.contains("/nvme.ko"),
        "{drivers}"
    );
    fs::remove_file(&raw).unwrap();

    // The box: Vagrant's key, user, sudo rule and sshd setting, in its own copy only.
    let box_file = built.artifact("vagrant-libvirt");
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&box_file)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "metadata.json\nVagrantfile\nbox.img\n"
    );
    let unpacked = Command::new("tar")
        .arg("-xf")
        .arg(&box_file)
        .arg("-C")
        .arg(work.path())
        .status()
        .unwrap();
    assert!(unpacked.success());
    let metadata: Value =
        serde_json::from_str(&fs::read_to_string(work.path().join("metadata.json")).unwrap())
            .unwrap();
    assert_eq!(
        metadata,
        serde_json::json!({"provider": "libvirt", "format": "qcow2", "virtual_size": BUILT_GIB})
    );
    let box_raw = work.path().join("box.raw");
    convert_to_raw(&work.path().join("box.img"), &box_raw);
    let keys = read_from_image(&box_raw, "/home/vagrant/.ssh/authorized_keys").unwrap();
    assert!(keys.contains(VAGRANT_KEY_PART), "{keys}");
    let sudoers = read_from_image(&box_raw, "/etc/sudoers.d/vagrant").unwrap();
    assert_eq!(sudoers, "vagrant ALL=(ALL) NOPASSWD: ALL\n");
    assert_eq!(
        read_from_image(&box_raw, "/etc/ssh/sshd_config.d/vagrant.conf").unwrap(),
        "UseDNS no\n"
    );

    // The catalogue names the box by its digest, and every consumer checks both.
    let catalogue: Value =
        serde_json::from_str(&fs::read_to_string(built.document("vagrant-catalogue")).unwrap())
            .unwrap();
    let provider = &catalogue["versions"][0]["providers"][0];
    assert_eq!(provider["name"], "libvirt");
    assert_eq!(provider["checksum"], sha256_of(&box_file).as_str());
    assert_eq!(
        provider["url"],
        format!("file://{}", box_file.display()).as_str()
    );
    let sums = fs::read_to_string(built.dir.join("SHA256SUMS")).unwrap();
    assert!(
        sums.contains(".box\n") && sums.contains("debian-12-web.json\n"),
        "{sums}"
    );
    let (code, _, err) = run(imgforge()
        .args(["verify", "--no-boot"])
        .arg(built.dir.join("manifest.json")));
    assert_eq!(code, 0, "{err}");
}

fn convert_to_raw(image: &Path, raw: &Path) {
    let converted = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(raw)
        .status()
        .unwrap();
    assert!(converted.success());
}

/// libvirtd and virtlogd started in a network namespace of their own (vagrant-libvirt's NAT
/// network uses a private range, which stays inside it); stopped, and the namespace removed,
/// when dropped.
struct Libvirt {
    namespace: String,
}

impl Libvirt {
    fn start() -> Libvirt {
        for tool in ["libvirtd", "virtlogd", "virsh", "vagrant", "ip"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool} >/dev/null"))
                .status()
                .unwrap()
                .success();
            assert!(found, "{tool} is missing: run `scripts/setup --test`");
        }
        let namespace = format!("imgforge-vagrant-{}", std::process::id());
        let libvirt = Libvirt { namespace };
        libvirt.host(&["ip", "netns", "add", &libvirt.namespace]);
        libvirt.inside(&["ip", "link", "set", "lo", "up"]);
        libvirt.inside(&["virtlogd", "-d"]);
        libvirt.inside(&["libvirtd", "-d"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, _, err) = run(Command::new("virsh").args(["-c", "qemu:///system", "uri"]));
            if code == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd started in the namespace does not answer: {err}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        libvirt.remove_leftovers();
        libvirt
    }

    /// Removes the domains and box volumes an earlier run of this test left (one killed before
    /// `vagrant destroy`): libvirt keeps them defined across daemon restarts.
    fn remove_leftovers(&self) {
        let virsh = |args: &[&str]| {
            let (_, out, _) = run(Command::new("virsh")
                .args(["-q", "-c", "qemu:///system"])
                .args(args));
            out
        };
        for domain in virsh(&["list", "--all", "--name"]).lines() {
            if domain.starts_with(".tmp") && domain.ends_with("_default") {
                virsh(&["destroy", domain]);
                virsh(&["undefine", domain, "--remove-all-storage"]);
            }
        }
        for volume in virsh(&["vol-list", "default"]).lines() {
            let name = volume.split_whitespace().next().unwrap_or_default();
            if name.contains("_vagrant_box_image_") || name.starts_with(".tmp") {
                virsh(&["vol-delete", "--pool", "default", name]);
            }
        }
    }

    fn host(&self, command: &[&str]) -> String {
        let (code, out, err) = run(Command::new(command[0]).args(&command[1..]));
        assert_eq!(code, 0, "{command:?}: {err}");
        out
    }

    /// Runs `command` in the namespace; its stdout, after asserting it succeeded.
    fn inside(&self, command: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.namespace];
        full.extend_from_slice(command);
        self.host(&full)
    }

    fn virsh(&self, args: &[&str]) -> String {
        let mut full = vec!["virsh", "-q", "-c", "qemu:///system"];
        full.extend_from_slice(args);
        self.host(&full)
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        self.remove_leftovers();
        for pidfile in ["/run/libvirtd.pid", "/run/virtlogd.pid"] {
            if let Ok(pid) = fs::read_to_string(pidfile) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        // What libvirtd started in the namespace and left running (the NAT network's dnsmasq,
        // when a failed test never reached `vagrant destroy`).
        let (_, pids, _) = run(Command::new("ip").args(["netns", "pids", &self.namespace]));
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").arg(pid).status();
        }
        std::thread::sleep(Duration::from_secs(1));
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

#[test]
#[ignore = "extended suite (scripts/test --extended): a libvirt guest through Vagrant"]
fn the_vagrant_box_comes_up_with_vagrant_libvirt_and_destroy_leaves_nothing() {
    let _ends = Ends;
    let built = built();
    let libvirt = Libvirt::start();
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    let vagrant = |args: &[&str]| -> String {
        let mut command = vec!["env"];
        let vagrant_home = format!("VAGRANT_HOME={}", home.path().display());
        command.extend([
            vagrant_home.as_str(),
            "VAGRANT_CHECKPOINT_DISABLE=1",
            "VAGRANT_DEFAULT_PROVIDER=libvirt",
            "sh",
            "-c",
        ]);
        let line = format!(
            "cd '{}' && vagrant {}",
            project.path().display(),
            args.join(" ")
        );
        command.push(&line);
        libvirt.inside(&command)
    };
    let catalogue = built.document("vagrant-catalogue");
    vagrant(&["box", "add", &catalogue.display().to_string()]);
    // TCG here: libvirt's plain QEMU driver and a CPU model it can emulate.
    fs::write(
        project.path().join("Vagrantfile"),
        r#"Vagrant.configure("2") do |config|
  config.vm.box = "debian-12-web"
  config.vm.box_check_update = false
  config.vm.boot_timeout = 600
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
    libvirt.cpu_mode = "custom"
    libvirt.cpu_model = "qemu64"
  end
end
"#,
    )
    .unwrap();
    vagrant(&["up", "--provider=libvirt"]);
    let record: Value =
        serde_json::from_str(&vagrant(&["ssh", "-c", "'cat /etc/imgforge/build.json'"])).unwrap();
    assert_eq!(record["name"], "debian-12-web");
    assert_eq!(record["bake_id"], built.manifest["ids"]["bake"]);
    let keys = vagrant(&["ssh", "-c", "'cat ~/.ssh/authorized_keys'"]);
    assert!(
        !keys.contains(VAGRANT_KEY_PART),
        "vagrant up replaces the insecure key: {keys}"
    );
    let config = vagrant(&["ssh-config"]);
    let address = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("HostName "))
        .unwrap()
        .to_string();
    let page = libvirt.inside(&["curl", "-sf", &format!("http://{address}/")]);
    assert!(page.contains(PAGE), "{page}");

    vagrant(&["destroy", "-f"]);
    assert_eq!(libvirt.virsh(&["list", "--all", "--name"]).trim(), "");
    // What stays is the box itself: in Vagrant's box store and as libvirt's base volume.
    let volumes = libvirt.virsh(&["vol-list", "default"]);
    let volumes: Vec<&str> = volumes
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        volumes.iter().all(|v| v.contains("_vagrant_box_image_")),
        "destroy left the instance's disk: {volumes:?}"
    );
    vagrant(&["box", "remove", "--all", "debian-12-web"]);
    for volume in volumes {
        libvirt.virsh(&["vol-delete", "--pool", "default", volume]);
    }
    assert_eq!(libvirt.virsh(&["vol-list", "default"]).trim(), "");
}
