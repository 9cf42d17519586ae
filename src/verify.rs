//! Verification: boot a built image (on a throwaway overlay, so the artifact is never changed)
//! through its firmware and boot loader, and wait for the definition's checks to pass through
//! port forwards on 127.0.0.1.
//!
//! A check passes only on evidence that came from the guest. QEMU's user network accepts the
//! host side of a port forward whether or not the guest answers, so a TCP check counts bytes
//! the guest sent (a banner such as sshd's), or else asks QEMU (`info usernet`) whether the
//! guest completed the TCP handshake; an HTTP check needs a response whose body holds the
//! expected text. The boot is watched as well: a kernel panic, firmware that finds no bootable
//! disk, or a guest that stops fails verification at once, naming what was seen.

use crate::definition::{Accelerator, Check, Machine};
use crate::events::{payload, Reporter};
use crate::manifest::{Manifest, PinnedFile, RecordedFile};
use crate::qemu::{append_console_section, create_overlay, free_port, Qmp, Vm, VmConfig};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often pending checks are tried again: a refused connection costs the guest nothing, and
/// every interval is time a passing check may wait.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a TCP check waits for the guest's first bytes before asking QEMU (a loaded host may
/// take seconds to send a banner such as sshd's, the better evidence).
const TCP_READ_WAIT: Duration = Duration::from_secs(3);
/// How long a fresh connection may wait for the guest's side of the handshake before it is
/// dropped and tried again (see [`guest_accepts`]).
const HANDSHAKE_WAIT: Duration = Duration::from_millis(600);
/// How long an HTTP check waits for the guest's response.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Console text that means the kernel died.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";
/// SeaBIOS's words, on its debug console, when no disk holds a boot loader.
const NO_BOOTABLE_DEVICE: &str = "No bootable device";

/// Boots `disk` and waits until every check passes; the console goes to `console_log`.
/// `stop` is asked between tries: an error from it (work running beside the boot that failed)
/// ends the boot with that error.
pub fn verify(
    disk: &Path,
    machine: &Machine,
    checks: &[Check],
    work: &Path,
    console_log: &Path,
    reporter: &Reporter,
    stop: &dyn Fn() -> Result<()>,
) -> Result<()> {
    let proof_of_boot = [Check::Tcp {
        port: 22,
        expect: Some("SSH-2.0-".into()),
    }];
    let checks = match checks {
        [] => {
            reporter.println(
                "    no [[checks]]: the boot is proven by sshd answering on port 22 (add checks \
                 to prove the service)",
            );
            &proof_of_boot[..]
        }
        some => some,
    };
    for c in checks {
        if let Some((key, problem)) = c.problems().into_iter().next() {
            bail!(
                "the check {} cannot prove the image: `{key}`: {problem}",
                describe(c)
            );
        }
    }
    let overlay = work.join("verify.qcow2");
    create_overlay(disk, &overlay)?;
    let mut ports = BTreeMap::new();
    for c in checks {
        if let std::collections::btree_map::Entry::Vacant(e) = ports.entry(guest_port(c)) {
            e.insert(free_port()?);
        }
    }
    let cfg = VmConfig {
        forwards: ports.iter().map(|(g, h)| (*h, *g)).collect(),
        ..VmConfig::for_machine(machine, &overlay)
    };
    let run_dir = work.join("vm-verify");
    std::fs::create_dir_all(&run_dir)?;
    let mut vm = Vm::start(&cfg, &run_dir, &run_dir.join("console.log"))?;
    let outcome = wait_for_checks(
        &mut vm,
        checks,
        &ports,
        machine.timeouts.boot.0,
        reporter,
        stop,
    );
    vm.kill();
    append_console_section(console_log, "verify", &vm.console())?;
    std::fs::remove_file(&overlay).ok();
    outcome
}

/// Tries the pending checks until all passed, the boot failed, or `timeout` ran out.
fn wait_for_checks(
    vm: &mut Vm,
    checks: &[Check],
    ports: &BTreeMap<u16, u16>,
    timeout: Duration,
    reporter: &Reporter,
    stop: &dyn Fn() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    // What each pending check saw last time it was tried.
    let mut pending: Vec<(&Check, String)> = checks
        .iter()
        .map(|c| (c, "not tried yet".to_string()))
        .collect();
    let mut qmp = None;
    loop {
        if let Some(failure) = boot_failure(vm)? {
            let unproven: Vec<String> = pending.iter().map(|(c, _)| describe(c)).collect();
            bail!(
                "{failure}; checks not passed: {}; last console lines:\n{}",
                unproven.join(", "),
                vm.console_tail(15)
            );
        }
        if qmp.is_none() {
            qmp = vm.qmp().ok();
        }
        pending.retain_mut(
            |(check, seen)| match run_check(check, ports, deadline, qmp.as_mut()) {
                Ok(evidence) => {
                    reporter.emit(
                        &format!("    check passed: {} ({evidence})", describe(check)),
                        &payload::CheckPassed {
                            check: Some(check.clone()),
                            evidence: evidence.clone(),
                        },
                    );
                    false
                }
                Err(e) => {
                    *seen = format!("{e:#}");
                    true
                }
            },
        );
        if pending.is_empty() {
            return Ok(());
        }
        crate::cancel::check().context("verification stopped")?;
        stop()?;
        if Instant::now() > deadline {
            let missing: Vec<String> = pending
                .iter()
                .map(|(c, seen)| format!("{}: {seen}", describe(c)))
                .collect();
            let console = vm.console_tail(15);
            bail!(
                "the image did not pass its checks within {}:\n  {}\n{}",
                humantime::format_duration(timeout),
                missing.join("\n  "),
                if console.trim().is_empty() {
                    "the serial console stayed empty: no boot loader or kernel wrote to it".into()
                } else {
                    format!("last console lines:\n{console}")
                }
            );
        }
        reporter.detail(&vm.console_last_line());
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A reason the boot can no longer succeed, from what the guest and its firmware printed.
/// GRUB's prompts: it could not go on by itself and waits for a person.
const GRUB_PROMPTS: [&str; 2] = ["grub rescue>", "grub>"];

fn boot_failure(vm: &mut Vm) -> Result<Option<String>> {
    if vm.has_exited()? {
        return Ok(Some(
            "the guest stopped (powered off or rebooted) before its checks passed".into(),
        ));
    }
    let console = strip_ansi_escapes::strip_str(vm.console());
    if let Some(at) = console.find(KERNEL_PANIC) {
        let reason = console[at..].lines().next().unwrap_or_default();
        return Ok(Some(format!("the kernel panicked: {}", reason.trim())));
    }
    if let Some(prompt) = GRUB_PROMPTS.iter().find(|p| console.contains(*p)) {
        return Ok(Some(format!(
            "the boot loader stopped at its prompt (`{prompt}`): it found no configuration or \
             nothing to boot"
        )));
    }
    if vm.firmware_log().contains(NO_BOOTABLE_DEVICE) {
        return Ok(Some(
            "the firmware found no bootable disk (SeaBIOS: \"No bootable device\"): \
             the image has no boot loader"
                .into(),
        ));
    }
    Ok(None)
}

/// The guest port a check connects to.
fn guest_port(c: &Check) -> u16 {
    match c {
        Check::Tcp { port, .. } | Check::Http { port, .. } => *port,
    }
}

/// One line naming a check.
pub fn describe(c: &Check) -> String {
    match c {
        Check::Tcp { port, expect: None } => format!("tcp port {port}"),
        Check::Tcp {
            port,
            expect: Some(expect),
        } => format!("tcp port {port} sends \"{expect}\""),
        Check::Http { port, path, expect } => format!("http://:{port}{path} contains \"{expect}\""),
    }
}

/// Runs one check; on success returns the evidence the guest gave.
fn run_check(
    c: &Check,
    ports: &BTreeMap<u16, u16>,
    deadline: Instant,
    qmp: Option<&mut Qmp>,
) -> Result<String> {
    let host_port = ports[&guest_port(c)];
    match c {
        Check::Tcp { port, expect } => {
            tcp_check(*port, host_port, expect.as_deref(), deadline, qmp)
        }
        Check::Http {
            port, path, expect, ..
        } => {
            guest_accepts(*port, host_port, qmp)?;
            // The path was checked (one leading `/`, no `@`): the request stays on the forward.
            let url = format!("http://127.0.0.1:{host_port}{path}");
            // No redirects: a page elsewhere proves nothing about this image.
            let agent = ureq::AgentBuilder::new()
                .redirects(0)
                .timeout(HTTP_TIMEOUT)
                .build();
            let resp = match agent.get(&url).call() {
                Ok(r) if !(200..300).contains(&r.status()) => bail!(
                    "the guest answered HTTP {} (redirects are not followed: the page must be \
                     the image's own)",
                    r.status()
                ),
                Ok(r) => r,
                Err(ureq::Error::Status(code, _)) => bail!("the guest answered HTTP {code}"),
                Err(e) => bail!("no HTTP response from the guest ({e})"),
            };
            let status = resp.status();
            let body = resp.into_string()?;
            if body.contains(expect.as_str()) {
                Ok(format!(
                    "HTTP {status}, the page contains the expected text"
                ))
            } else {
                bail!(
                    "the page does not contain \"{expect}\"; it says: {}",
                    body.chars().take(200).collect::<String>()
                )
            }
        }
    }
}

/// Connects through the forward and reads what the guest sends. Without `expect`, passes on
/// the guest's first bytes, or, for protocols where the client speaks first, on QEMU's word
/// that the guest completed the handshake and then kept the connection open for a further
/// read window. With `expect`, keeps reading until those bytes arrive or `deadline` passes.
fn tcp_check(
    guest: u16,
    host: u16,
    expect: Option<&str>,
    deadline: Instant,
    mut qmp: Option<&mut Qmp>,
) -> Result<String> {
    let mut stream = connect_forward(host)?;
    stream.set_read_timeout(Some(TCP_READ_WAIT))?;
    let until = match expect {
        Some(_) => deadline.max(Instant::now() + TCP_READ_WAIT),
        None => Instant::now() + 2 * TCP_READ_WAIT,
    };
    let (mut got, mut established, mut closed) = (Vec::new(), false, false);
    let sent = |got: &[u8]| format!("{:?}", String::from_utf8_lossy(got).trim_end().to_string());
    while !closed && Instant::now() < until {
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => closed = true,
            Ok(n) if got.len() < 4096 => got.extend_from_slice(&buf[..n]),
            Ok(_) => closed = true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                bail!("the guest reset the connection: nothing listens on port {guest}")
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if got.is_empty() && !established {
                    established = handshake_completed(qmp.as_deref_mut(), host, guest)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => bail!("cannot read from the forwarded connection: {e}"),
        }
        let text = String::from_utf8_lossy(&got);
        match expect {
            Some(e) if text.contains(e) => return Ok(format!("the guest sent {}", sent(&got))),
            None if !got.is_empty() => return Ok(format!("the guest sent {}", sent(&got))),
            _ => {}
        }
    }
    match expect {
        None if established && !closed => Ok(
            "the guest completed the TCP handshake and kept the connection open (QEMU user \
             network: ESTABLISHED)"
                .into(),
        ),
        _ if got.is_empty() && closed => bail!(
            "the guest closed the connection at once: nothing listens on port {guest}, or it \
             hung up without a byte"
        ),
        None => bail!("the guest closed the connection without sending a byte"),
        Some(e) if got.is_empty() => bail!("the guest sent nothing, not \"{e}\""),
        Some(e) => bail!("the guest sent {}, not \"{e}\"", sent(&got)),
    }
}

/// A connection to QEMU's forward on host port `host`.
fn connect_forward(host: u16) -> Result<TcpStream> {
    TcpStream::connect(("127.0.0.1", host))
        .with_context(|| format!("QEMU's forward on 127.0.0.1:{host} refused the connection"))
}

/// Waits up to [`HANDSHAKE_WAIT`] for the guest to answer a fresh connection through the
/// forward, before a request is sent. QEMU's user network accepts the host side at once and
/// sends the guest a SYN; one sent before the guest's network was up is repeated only seconds
/// later, and a request waiting on it held verify about 4 s past the moment the guest served
/// the page. A connection still unanswered after the wait is dropped, and the next try sends a
/// new SYN. An answer (the handshake, or a reset that closes the connection) lets the request
/// go ahead and report what it gets; so does a missing monitor.
fn guest_accepts(guest: u16, host: u16, qmp: Option<&mut Qmp>) -> Result<()> {
    let Some(qmp) = qmp else {
        return Ok(());
    };
    let _probe = connect_forward(host)?;
    let until = Instant::now() + HANDSHAKE_WAIT;
    let mut seen = Vec::new();
    while Instant::now() < until {
        let states = forward_states(&qmp.usernet()?, host, guest);
        // Gone after it was seen: the guest reset it.
        if states.iter().any(|s| s == "ESTABLISHED") || (states.is_empty() && !seen.is_empty()) {
            return Ok(());
        }
        seen = states;
        std::thread::sleep(POLL_INTERVAL / 4);
    }
    if seen.is_empty() {
        return Ok(());
    }
    bail!(
        "the guest has not answered the connection (QEMU user network: {}): it has not \
         booted, or its network is not up yet",
        seen.join(", ")
    )
}

/// Whether QEMU's user network shows the forwarded connection as established with the guest;
/// an error says why the guest cannot be proven to have answered.
fn handshake_completed(qmp: Option<&mut Qmp>, host: u16, guest: u16) -> Result<bool> {
    let qmp =
        qmp.ok_or_else(|| anyhow!("the guest sent nothing, and QEMU's monitor cannot say more"))?;
    let table = qmp.usernet()?;
    let states = forward_states(&table, host, guest);
    if states.iter().any(|s| s == "ESTABLISHED") {
        return Ok(true);
    }
    bail!(
        "the guest never answered the connection (QEMU user network: {}): it has not booted, \
         or its network is down",
        if states.is_empty() {
            "no such connection".to_string()
        } else {
            states.join(", ")
        }
    )
}

/// The TCP states QEMU's `info usernet` lists for connections from host port `host` to guest
/// port `guest` (the listening forward itself is left out).
fn forward_states(table: &str, host: u16, guest: u16) -> Vec<String> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Protocol[State] FD SourceAddress Port DestAddress Port RecvQ SendQ
            let state = fields.first()?.strip_prefix("TCP[")?.strip_suffix(']')?;
            let (src_port, dst_port) = (fields.get(3)?, fields.get(5)?);
            // A connection through the forward runs from the host's 127.0.0.1 to the guest's
            // address; one the guest opened outwards runs from the guest and is not proof.
            let (src, dst) = (fields.get(2)?, fields.get(4)?);
            (state != "HOST_FORWARD"
                && *src == "127.0.0.1"
                && dst.starts_with("10.0.2.")
                && src_port.parse() == Ok(host)
                && dst_port.parse() == Ok(guest))
            .then(|| state.to_string())
        })
        .collect()
}

/// Settings given on `imgforge verify`'s command line, over those the manifest records.
#[derive(Debug, Clone, Default)]
pub struct VerifyOverrides {
    /// Accelerator.
    pub accelerator: Option<Accelerator>,
    /// Virtual CPUs.
    pub cpus: Option<u32>,
    /// Memory in MiB.
    pub memory_mib: Option<u32>,
    /// How long the checks may take to pass after the VM starts.
    pub boot_timeout: Option<Duration>,
    /// Require the build's signature by a key in this allowed-signers file first.
    pub allowed_signers: Option<std::path::PathBuf>,
    /// Check the signature and the digests only; do not boot.
    pub no_boot: bool,
}

/// The machine `imgforge verify` boots: the one the manifest records (the build's own), with
/// the overrides applied.
pub fn verify_machine(manifest: &Manifest, overrides: &VerifyOverrides) -> Machine {
    let mut machine = manifest.machine.clone().unwrap_or_default();
    machine.firmware = manifest.firmware;
    if let Some(a) = overrides.accelerator {
        machine.accelerator = a;
    }
    if let Some(c) = overrides.cpus {
        machine.cpus = c;
    }
    if let Some(m) = overrides.memory_mib {
        machine.memory_mib = m;
    }
    if let Some(t) = overrides.boot_timeout {
        machine.timeouts.boot.0 = t;
    }
    machine
}

/// `imgforge verify`: checks the build's signature (with `allowed_signers`), then the digest
/// of the bootable artifact, then boots it and runs the manifest's checks while the digests of
/// the other files the manifest records are checked beside the boot (a wrong one stops it).
/// With `no_boot`, the digests only.
pub fn verify_manifest(
    manifest_path: &Path,
    overrides: &VerifyOverrides,
    reporter: &Reporter,
) -> Result<()> {
    if let Some(allowed) = &overrides.allowed_signers {
        crate::signature::check_build(manifest_path, allowed, reporter)?;
    }
    let manifest = Manifest::load(manifest_path)?;
    let record = manifest.bootable_artifact().with_context(|| {
        format!(
            "{}: no qcow2 or raw artifact to boot",
            manifest_path.display()
        )
    })?;
    let check = |file: &dyn RecordedFile| -> Result<PinnedFile> {
        let pinned = manifest.checked_artifact(manifest_path, file)?;
        reporter.emit(
            &format!("    {}: sha256 {} as recorded", file.file(), file.sha256()),
            &payload::ArtifactChecked {
                file: file.file().to_string(),
                sha256: file.sha256().to_string(),
            },
        );
        Ok(pinned)
    };
    if overrides.no_boot {
        for file in manifest.recorded_files() {
            check(file)?;
        }
        reporter.result(
            &format!(
                "{}: every digest as recorded (not booted)",
                manifest_path.display()
            ),
            &payload::Verified {
                manifest: manifest_path.to_path_buf(),
                checks: 0,
                booted: false,
            },
        );
        return Ok(());
    }
    let bootable = manifest
        .recorded_files()
        .find(|f| f.file() == record.file)
        .context("the manifest records its bootable artifact")?;
    let pinned = check(bootable)?;
    let check_the_rest = || {
        for file in manifest
            .recorded_files()
            .filter(|f| f.file() != record.file)
        {
            crate::cancel::check()?;
            check(file)?;
        }
        Ok(())
    };
    boot_beside(
        &manifest,
        manifest_path,
        &pinned,
        overrides,
        reporter,
        &check_the_rest,
    )?;
    // Without checks of its own, the image was proven by sshd's answer (one check).
    let passed = manifest.checks.len().max(1);
    reporter.result(
        &format!("{}: all {passed} checks passed", manifest_path.display()),
        &payload::Verified {
            manifest: manifest_path.to_path_buf(),
            checks: passed,
            booted: true,
        },
    );
    Ok(())
}

/// Boots the checked bootable artifact `pinned` and runs the manifest's checks while `beside`
/// runs (the other files' digests: the raw disk beside the qcow2 is seconds of hashing). An
/// error from `beside` ends the boot and is the outcome; nothing passes before it has finished.
fn boot_beside(
    manifest: &Manifest,
    manifest_path: &Path,
    pinned: &PinnedFile,
    overrides: &VerifyOverrides,
    reporter: &Reporter,
    beside: &(dyn Fn() -> Result<()> + Sync),
) -> Result<()> {
    let machine = verify_machine(manifest, overrides);
    // QEMU boots a link to the very file checked (in a directory of ours beside it), not
    // whatever its path holds by now; where the build's directory is read-only, the path.
    let build_dir = crate::manifest::build_dir(manifest_path);
    let pinned_dir = tempfile::Builder::new()
        .prefix(".imgforge-verify-")
        .tempdir_in(build_dir)
        .or_else(|_| tempfile::tempdir())?;
    let disk = pinned
        .link_into(pinned_dir.path())
        .unwrap_or_else(|_| pinned.path().to_path_buf());
    // The VM's sockets need a short path: its own directory, not the build's.
    let work = tempfile::tempdir()?;
    reporter.phase("verify");
    let failed_beside = std::sync::OnceLock::new();
    let booted = std::thread::scope(|scope| {
        scope.spawn(|| {
            if let Err(e) = beside() {
                let _ = failed_beside.set(e);
            }
        });
        verify(
            &disk,
            &machine,
            &manifest.checks,
            work.path(),
            &work.path().join("console.log"),
            reporter,
            &|| match failed_beside.get() {
                Some(_) => bail!("a file the manifest records is not as recorded"),
                None => Ok(()),
            },
        )
    });
    match failed_beside.into_inner() {
        Some(e) => Err(e),
        None => booted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Command;

    /// `info usernet` as QEMU 7.2 prints it: one forward, one connection the guest has not
    /// answered and one it has.
    const USERNET: &str = "Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[SYN_SENT]       9       127.0.0.1 45001       10.0.2.15    22     0     0
  TCP[ESTABLISHED]   10       127.0.0.1 45002       10.0.2.15    80     0     0
  TCP[HOST_FORWARD]   8       127.0.0.1 45001       10.0.2.15    22     0     0
  TCP[HOST_FORWARD]   7       127.0.0.1 45002       10.0.2.15    80     0     0
  TCP[ESTABLISHED]   11       10.0.2.15 45003      192.0.2.7    22     0     0
";

    #[test]
    fn usernet_states_name_only_the_forwards_connections() {
        assert_eq!(forward_states(USERNET, 45001, 22), vec!["SYN_SENT"]);
        assert_eq!(forward_states(USERNET, 45002, 80), vec!["ESTABLISHED"]);
        assert!(
            forward_states(USERNET, 45003, 22).is_empty(),
            "a connection the guest opened outwards, with the same ports, is no proof"
        );
        assert!(forward_states("", 45001, 22).is_empty());
    }

    /// A listener on 127.0.0.1 that sends `pieces` to each connection, a pause before each.
    fn banner_server(pieces: &'static [&'static str]) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                std::thread::spawn(move || {
                    for piece in pieces {
                        std::thread::sleep(Duration::from_millis(700));
                        let _ = std::io::Write::write_all(&mut conn, piece.as_bytes());
                    }
                    std::thread::sleep(Duration::from_secs(8));
                });
            }
        });
        port
    }

    /// An HTTP server on 127.0.0.1 answering every request with `response`.
    fn http_server(response: String) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut request = [0u8; 2048];
                let _ = std::io::Read::read(&mut conn, &mut request);
                let _ = std::io::Write::write_all(&mut conn, response.as_bytes());
            }
        });
        port
    }

    #[test]
    fn an_http_check_follows_no_redirect_to_a_page_that_would_pass() {
        let page = "imgforge demo page";
        let elsewhere = http_server(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        ));
        let check = Check::Http {
            port: 80,
            path: "/".into(),
            expect: "demo page".into(),
        };
        let soon = Instant::now() + Duration::from_secs(5);
        let direct = BTreeMap::from([(80, elsewhere)]);
        assert!(
            run_check(&check, &direct, soon, None).is_ok(),
            "the page itself passes"
        );
        let redirecting = http_server(format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{elsewhere}/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        let ports = BTreeMap::from([(80, redirecting)]);
        let err = run_check(&check, &ports, soon, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HTTP 302") && err.contains("redirects are not followed"),
            "{err}"
        );
    }

    #[test]
    fn a_tcp_check_naming_a_banner_reads_until_it_comes_and_refuses_another() {
        let port = banner_server(&["SS", "H-2.0-OpenSSH_9.2\r\n"]);
        let soon = || Instant::now() + Duration::from_secs(5);
        let evidence = tcp_check(22, port, Some("SSH-2.0-"), soon(), None).unwrap();
        assert!(evidence.contains("SSH-2.0-OpenSSH_9.2"), "{evidence}");
        let err = tcp_check(22, port, Some("HTTP/1.1"), soon(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SSH-2.0-OpenSSH_9.2") && err.contains("not \"HTTP/1.1\""),
            "{err}"
        );
        // Without a banner to wait for, the first bytes are the evidence.
        let evidence = tcp_check(22, port, None, soon(), None).unwrap();
        assert_eq!(evidence, "the guest sent \"SS\"");
    }

    #[test]
    fn a_silent_forward_to_a_guest_that_never_boots_fails_the_tcp_and_http_checks() {
        // A disk of zeros: the firmware finds nothing to boot, QEMU accepts on the host side
        // and the guest never answers the SYN.
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("zeros.qcow2");
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("1M")
            .run()
            .unwrap();
        let (host, http) = (free_port().unwrap(), free_port().unwrap());
        let cfg = VmConfig {
            forwards: vec![(host, 22), (http, 80)],
            accel: crate::qemu::Accel::Tcg,
            ..VmConfig::for_machine(&Machine::default(), &disk)
        };
        let mut vm = Vm::start(&cfg, dir.path(), &dir.path().join("console.log")).unwrap();
        let mut qmp = vm.qmp().unwrap();
        let soon = Instant::now() + Duration::from_secs(10);
        let err = tcp_check(22, host, None, soon, Some(&mut qmp))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("never answered") && err.contains("SYN_SENT"),
            "{err}"
        );
        let err = tcp_check(22, host, None, soon, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sent nothing"), "{err}");
        // The HTTP check drops a connection the guest leaves unanswered instead of sending its
        // request into it.
        let check = Check::Http {
            port: 80,
            path: "/".into(),
            expect: "imgforge".into(),
        };
        let ports = BTreeMap::from([(80, http)]);
        let err = run_check(&check, &ports, soon, Some(&mut qmp))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has not answered") && err.contains("SYN_SENT"),
            "{err}"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let failure = loop {
            if let Some(f) = boot_failure(&mut vm).unwrap() {
                break f;
            }
            assert!(Instant::now() < deadline, "the firmware never gave up");
            std::thread::sleep(POLL_INTERVAL);
        };
        assert!(failure.contains("no bootable disk"), "{failure}");
    }
}
