//! The QEMU driver: starts `qemu-system-x86_64`, talks QMP on its unix socket, writes the
//! serial console to a log file, and waits for text, power-off or a timeout.
//!
//! A [`Vm`] kills its QEMU process when dropped, so no guest outlives a failed or interrupted
//! step. [`choose_accelerator`] probes KVM with a tiny guest (SeaBIOS getting through POST, as
//! its debug console shows) under a short timeout, and falls back to TCG.

use crate::cancel;
use crate::definition::{Accelerator, Firmware, Machine};
use crate::process::{tail_lines, Command};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The QEMU system emulator imgforge runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// Machine type of every guest.
const MACHINE: &str = "q35";

/// How long the KVM probe waits for the firmware banner.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(6);

/// OVMF firmware for UEFI guests (Debian package `ovmf`).
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The accelerator QEMU will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    fn arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The CPU model guests get. Under KVM, everything the host's CPU has. Under TCG, the
    /// baseline x86-64 CPU: `max` makes the emulator offer every feature it can emulate (AVX2,
    /// x2APIC, PCID, 5-level paging…), and two-vCPU `max` guests under TCG are known to hang
    /// bringing up their second CPU (seen here about once in 40 boots, both vCPUs spinning
    /// with interrupts off; `qemu64` is the documented way out). An image that boots on the
    /// baseline boots on every x86-64 machine, so the check proves at least as much.
    fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "max",
            Accel::Tcg => "qemu64",
        }
    }
}

/// Resolves the definition's accelerator choice; `auto` probes KVM once per process.
pub fn choose_accelerator(choice: Accelerator) -> Accel {
    static PROBED: OnceLock<Accel> = OnceLock::new();
    match choice {
        Accelerator::Kvm => Accel::Kvm,
        Accelerator::Tcg => Accel::Tcg,
        Accelerator::Auto => *PROBED.get_or_init(|| match probe_kvm() {
            Ok(()) => Accel::Kvm,
            Err(reason) => {
                tracing::warn!(
                    "KVM is not usable ({reason:#}); using TCG software emulation, which is slower"
                );
                Accel::Tcg
            }
        }),
    }
}

/// Boots SeaBIOS under KVM and waits for its banner on the debug console.
pub fn probe_kvm() -> Result<()> {
    if !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm does not exist");
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("/dev/kvm cannot be opened")?;
    // KVM on x86 needs the CPU's virtualisation extensions; a nested VM whose host hides them
    // can still have /dev/kvm, but its guests hang.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        bail!("the CPU shows no vmx or svm flag in /proc/cpuinfo (no nested virtualisation)");
    }
    let dir = tempfile::tempdir()?;
    let debug_log = dir.path().join("debugcon.log");
    let handle = Command::new(QEMU)
        .args([
            "-accel",
            "kvm",
            "-display",
            "none",
            "-m",
            "64",
            "-no-reboot",
            "-nodefaults",
        ])
        .arg("-chardev")
        .arg(format!("file,id=dbg,path={}", debug_log.display()))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"])
        .spawn_logged(&dir.path().join("qemu.log"))?;
    let deadline = Instant::now() + KVM_PROBE_TIMEOUT;
    let outcome = loop {
        let text = std::fs::read_to_string(&debug_log).unwrap_or_default();
        // The banner shows the CPU runs; reaching the boot attempt shows it gets through POST.
        if text.contains("SeaBIOS") && text.contains("Booting from") {
            break Ok(());
        }
        if let Ok(Some(out)) = handle.try_wait() {
            let log = std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
            break Err(anyhow!(
                "a KVM guest exited at once ({}): {}",
                out.status,
                tail_lines(&log, 3)
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow!(
                "a KVM guest printed nothing in {}s (no nested virtualisation?)",
                KVM_PROBE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = handle.kill();
    outcome
}

/// A disk attached to the VM.
#[derive(Debug, Clone)]
pub struct Drive {
    /// Image file.
    pub path: PathBuf,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// Attach read-only.
    pub read_only: bool,
}

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Accelerator.
    pub accel: Accel,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Firmware.
    pub firmware: Firmware,
    /// Disks, attached as virtio in order (`vda`, `vdb`, …).
    pub drives: Vec<Drive>,
    /// Direct kernel boot: kernel, initrd, command line.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    /// ISO attached as a CD-ROM and booted first.
    pub cdrom: Option<PathBuf>,
    /// Host ports on 127.0.0.1 forwarded to guest ports.
    pub forwards: Vec<(u16, u16)>,
    /// Attach a VGA device (boot menus and installers draw on it); a guest that only uses its
    /// serial console boots faster without one.
    pub vga: bool,
}

impl VmConfig {
    /// A VM sized by the definition's machine settings with one qcow2 disk, and nothing else
    /// attached: no kernel, no CD-ROM, no port forwards.
    pub fn for_machine(machine: &Machine, disk: &Path) -> VmConfig {
        VmConfig {
            accel: choose_accelerator(machine.accelerator),
            cpus: machine.cpus,
            memory_mib: machine.memory_mib,
            firmware: machine.firmware,
            drives: vec![Drive {
                path: disk.to_path_buf(),
                format: "qcow2",
                read_only: false,
            }],
            kernel: None,
            cdrom: None,
            forwards: vec![],
            vga: true,
        }
    }
}

/// OVMF's code and a copy of its variable store at `vars` as pflash drives.
fn uefi_args(vars: &Path) -> Result<Vec<String>> {
    std::fs::copy(OVMF_VARS, vars)
        .with_context(|| format!("{OVMF_VARS} is missing: install the Debian package ovmf"))?;
    Ok(vec![
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ])
}

impl VmConfig {
    /// The disks, CD-ROM, direct kernel boot and user network this VM gets.
    fn device_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |a: &str, b: String| {
            args.push(a.into());
            args.push(b.into());
        };
        for (i, d) in self.drives.iter().enumerate() {
            push(
                "-drive",
                format!(
                    "file={},format={},if=virtio,index={i},cache=unsafe,discard=unmap{}",
                    d.path.display(),
                    d.format,
                    if d.read_only { ",readonly=on" } else { "" }
                ),
            );
        }
        if let Some(iso) = &self.cdrom {
            push(
                "-drive",
                format!(
                    "file={},media=cdrom,readonly=on,if=ide,index=2",
                    iso.display()
                ),
            );
            push("-boot", "order=dc".into());
        }
        let mut netdev = "user,id=net0".to_string();
        for (host, guest) in &self.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        push("-netdev", netdev);
        // No network boot ROM: a disk that cannot boot fails at once instead of trying PXE.
        push("-device", "virtio-net-pci,netdev=net0,romfile=".into());
        if let Some((kernel, initrd, append)) = &self.kernel {
            for (flag, value) in [
                ("-kernel", kernel.as_os_str()),
                ("-initrd", initrd.as_os_str()),
            ] {
                args.push(flag.into());
                args.push(value.to_os_string());
            }
            args.push("-append".into());
            args.push(append.into());
        }
        args
    }
}

/// A running QEMU guest; killed when dropped.
pub struct Vm {
    handle: Option<duct::Handle>,
    qmp_socket: PathBuf,
    serial_log: PathBuf,
    firmware_log: PathBuf,
    qemu_log: PathBuf,
    _vars: Option<tempfile::NamedTempFile>,
}

impl Vm {
    /// Starts a VM; its serial console goes to `serial_log`, its QMP socket and QEMU's own
    /// output into `run_dir`.
    pub fn start(cfg: &VmConfig, run_dir: &Path, serial_log: &Path) -> Result<Vm> {
        let qmp_socket = run_dir.join("qmp.sock");
        let qemu_log = run_dir.join("qemu.log");
        let firmware_log = run_dir.join("firmware.log");
        let _ = std::fs::remove_file(&qmp_socket);
        let mut cmd = Command::new(QEMU)
            .args(["-accel", cfg.accel.arg(), "-machine", MACHINE])
            .args(["-cpu", cfg.accel.cpu_model()])
            .args([
                "-smp",
                &cfg.cpus.to_string(),
                "-m",
                &cfg.memory_mib.to_string(),
            ])
            // Only the devices asked for below: no default CD-ROM, floppy or parallel port.
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-vga", if cfg.vga { "std" } else { "none" }])
            .arg("-chardev")
            .arg(format!("file,id=serial0,path={}", serial_log.display()))
            .args(["-serial", "chardev:serial0"])
            // SeaBIOS's messages (such as "No bootable device") on its debug port.
            .arg("-chardev")
            .arg(format!("file,id=firmware,path={}", firmware_log.display()))
            .args(["-device", "isa-debugcon,iobase=0x402,chardev=firmware"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
            .args(["-device", "virtio-rng-pci"]);
        let vars = match cfg.firmware {
            Firmware::Uefi => Some(tempfile::NamedTempFile::new_in(run_dir)?),
            Firmware::Bios => None,
        };
        if let Some(vars) = &vars {
            cmd = cmd.args(uefi_args(vars.path())?);
        }
        cmd = cmd.args(cfg.device_args());
        let handle = cmd.spawn_logged(&qemu_log)?;
        Ok(Vm {
            handle: Some(handle),
            qmp_socket,
            serial_log: serial_log.to_path_buf(),
            firmware_log,
            qemu_log,
            _vars: vars,
        })
    }

    /// The serial console text so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial_log).unwrap_or_default()).into_owned()
    }

    /// The last `n` non-empty console lines.
    pub fn console_tail(&self, n: usize) -> String {
        tail_lines(&strip_ansi_escapes::strip_str(self.console()), n)
    }

    /// The last console line, for progress displays.
    pub fn console_last_line(&self) -> String {
        self.console_tail(1)
    }

    /// What the firmware printed on its debug port so far (SeaBIOS; empty under OVMF).
    pub fn firmware_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.firmware_log).unwrap_or_default()).into_owned()
    }

    /// Whether QEMU has exited (the guest powered off or rebooted); an error if QEMU failed.
    pub fn has_exited(&mut self) -> Result<bool> {
        let exited = self.exited()?.is_some();
        if exited {
            self.handle = None;
        }
        Ok(exited)
    }

    fn exited(&self) -> Result<Option<String>> {
        let Some(h) = &self.handle else {
            return Ok(Some("killed".into()));
        };
        match h.try_wait()? {
            Some(out) if out.status.success() => Ok(Some(String::new())),
            Some(out) => {
                let log = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
                bail!("QEMU failed ({}): {}", out.status, tail_lines(&log, 10))
            }
            None => Ok(None),
        }
    }

    fn check_deadline(&mut self, deadline: Instant, what: &str, timeout: Duration) -> Result<()> {
        if cancel::requested() {
            self.kill();
            bail!("interrupted while waiting for {what}; the VM was stopped");
        }
        if Instant::now() > deadline {
            self.kill();
            bail!(
                "timed out after {} waiting for {what}; last console lines:\n{}",
                humantime::format_duration(timeout),
                self.console_tail(15)
            );
        }
        Ok(())
    }

    /// Waits until the guest powers itself off (QEMU exits), calling `tick` about every second
    /// with the console's last line.
    pub fn wait_poweroff(&mut self, timeout: Duration, tick: &dyn Fn(&str)) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_tick = Instant::now();
        loop {
            if self.exited()?.is_some() {
                self.handle = None;
                return Ok(());
            }
            self.check_deadline(deadline, "the guest to power off", timeout)?;
            if last_tick.elapsed() >= Duration::from_secs(1) {
                tick(&self.console_last_line());
                last_tick = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `text` appears on the serial console.
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(text) {
                return Ok(());
            }
            if self.exited()?.is_some() {
                bail!(
                    "the guest stopped before printing \"{text}\"; last console lines:\n{}",
                    self.console_tail(15)
                );
            }
            self.check_deadline(deadline, &format!("\"{text}\" on the console"), timeout)?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Connects to QMP (retrying while QEMU starts).
    pub fn qmp(&self) -> Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Qmp::connect(&self.qmp_socket) {
                Ok(q) => return Ok(q),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Stops QEMU at once.
    pub fn kill(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.kill();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates `overlay`, a qcow2 that records changes over `backing` (which is never written);
/// the backing format is taken from its extension (`.qcow2`, else raw).
pub fn create_overlay(backing: &Path, overlay: &Path) -> Result<()> {
    let (format, backing) = backing_file(backing)?;
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(backing)
        .arg(overlay)
        .run()?;
    Ok(())
}

/// Points an overlay made on another machine at `backing`, the same disk at this machine's
/// path (`qemu-img rebase -u`: only the reference changes, no data is read).
pub fn rebase_overlay(overlay: &Path, backing: &Path) -> Result<()> {
    let (format, backing) = backing_file(backing)?;
    Command::new("qemu-img")
        .args(["rebase", "-u", "-F", format, "-b"])
        .arg(backing)
        .arg(overlay)
        .run()?;
    Ok(())
}

/// Refuses a disk from elsewhere (the remote cache) that is not a qcow2 image or reaches
/// outside itself: an external data file, or a backing file unless `backing_allowed` (an
/// overlay whose backing file is set to this runner's base next).
pub fn check_self_contained(disk: &Path, backing_allowed: bool) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .run()?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: qemu-img info said no JSON", disk.display()))?;
    let name = disk.display();
    if info["format"] != "qcow2" {
        bail!("{name} is not a qcow2 image (it is {})", info["format"]);
    }
    if let Some(data) = info["format-specific"]["data"]["data-file"].as_str() {
        bail!("{name} keeps its data in another file, {data}");
    }
    if let (Some(backing), false) = (info["backing-filename"].as_str(), backing_allowed) {
        bail!("{name} names a backing file, {backing}");
    }
    Ok(())
}

/// The format (from the extension) and absolute path of a backing disk.
fn backing_file(backing: &Path) -> Result<(&'static str, PathBuf)> {
    let format = match backing.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => "qcow2",
        _ => "raw",
    };
    let path = std::fs::canonicalize(backing)
        .with_context(|| format!("{} is missing", backing.display()))?;
    Ok((format, path))
}

/// A free TCP port on 127.0.0.1, for a port forward.
pub fn free_port() -> Result<u16> {
    // Builds running at once in this process never get the same port: each port handed out
    // is remembered, and one the kernel offers again is skipped.
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return Ok(port);
        }
    }
}

/// Appends a section `===== title =====` holding `console` (control sequences removed) to a
/// build's console log.
pub fn append_console_section(log: &Path, title: &str, console: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot write {}", log.display()))?;
    writeln!(
        f,
        "===== {title} =====\n{}",
        strip_ansi_escapes::strip_str(console)
    )?;
    Ok(())
}

/// A QMP connection.
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub fn connect(socket: &Path) -> Result<Qmp> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("cannot connect to QMP at {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut qmp = Qmp {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QMP connection closed");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs a command and returns its `return` value; events that arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}")?;
        loop {
            let reply = self.read_message()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                bail!("QMP {command} failed: {e}");
            }
        }
    }

    /// QEMU's user-network connection table (`info usernet`): one line per socket with its TCP
    /// state, host address and port, guest address and port.
    pub fn usernet(&mut self) -> Result<String> {
        let table = self.execute(
            "human-monitor-command",
            json!({ "command-line": "info usernet" }),
        )?;
        table
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("QMP info usernet returned {table}"))
    }

    /// Presses keys together (QMP `send-key` with qcodes, e.g. `["shift", "a"]`).
    pub fn send_key(&mut self, qcodes: &[&str]) -> Result<()> {
        let keys: Vec<Value> = qcodes
            .iter()
            .map(|k| json!({ "type": "qcode", "data": k }))
            .collect();
        self.execute("send-key", json!({ "keys": keys, "hold-time": 20 }))?;
        Ok(())
    }
}

/// `qemu-system-x86_64 --version`, first line.
pub fn version() -> Result<String> {
    let out = Command::new(QEMU).arg("--version").run()?;
    Ok(out.text().lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(dir: &Path, name: &str, options: &[&str]) -> PathBuf {
        let path = dir.join(name);
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .args(options)
            .arg(&path)
            .arg("1M")
            .run()
            .unwrap();
        path
    }

    #[test]
    fn a_disk_reaching_outside_itself_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let plain = qcow2(dir.path(), "plain.qcow2", &[]);
        check_self_contained(&plain, false).unwrap();
        let backed = qcow2(
            dir.path(),
            "backed.qcow2",
            &["-F", "raw", "-b", "/etc/passwd", "-u"],
        );
        let e = check_self_contained(&backed, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("backing file, /etc/passwd"), "{e}");
        check_self_contained(&backed, true).unwrap();
        let external = qcow2(
            dir.path(),
            "external.qcow2",
            &[
                "-o",
                &format!("data_file={}", dir.path().join("data").display()),
            ],
        );
        let e = check_self_contained(&external, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("keeps its data in another file"), "{e}");
        let raw = dir.path().join("raw.qcow2");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let e = check_self_contained(&raw, true).unwrap_err().to_string();
        assert!(e.contains("not a qcow2 image"), "{e}");
    }
}
