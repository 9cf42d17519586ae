//! The bake layer: the service, the data snapshot and the provisioners applied on a qcow2
//! overlay of the cached base (never a copy of it), then image hygiene and provenance.
//!
//! Like Netflix's Aminator, the bake does not wait for a full boot where it needs no running
//! system: the base's own kernel boots with `init=/usr/lib/imgforge/bake-init`, which unpacks a
//! bundle (a tar on a second virtio disk), runs the generated `bake.sh` and powers off. Scripts
//! marked `needs_running_system = true` run afterwards over SSH in the fully booted image, with
//! the build key of the base; the final hygiene pass removes that key again.

mod ansible;
mod chef;
mod chroot;
mod cloud_init;

use crate::bake_protocol::{self, Step, TOOLS_FILE};
use crate::base::{BaseLayer, DirectBoot, BUILD_KEY_COMMENT};
use crate::definition::{AnsibleRunner, BakeIn, Definition, Firmware, OsFamily, Provisioner};
use crate::events::Reporter;
use crate::manifest::Provenance;
use crate::process::Command;
use crate::qemu::{append_console_section, create_overlay, free_port, Drive, Vm, VmConfig};
use crate::sources::ResolvedData;
use crate::spec::{BakeSpec, CloudSpec, ProvisionerSpec};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything the bake needs.
pub struct BakeInput<'a> {
    /// What it puts on the base, and how.
    pub spec: &'a BakeSpec,
    /// The cached base layer.
    pub base: &'a BaseLayer,
    /// The build's provenance, written into the image.
    pub provenance: &'a Provenance,
    /// Work directory of this build (removed by the caller).
    pub work: &'a Path,
    /// Console log of the whole build.
    pub console_log: &'a Path,
}

/// A bundle to run in the image: a directory with the files, and its `bake.sh`.
struct Bundle {
    dir: PathBuf,
    script: String,
    what: &'static str,
}

/// One boot of the image during the bake.
enum Pass<'a> {
    /// The base's own kernel with the bake init as PID 1 runs a bundle and powers off: no full
    /// boot, no network wait, no SSH.
    Offline(&'a DirectBoot, Bundle),
    /// The fully booted image runs these over SSH, then powers off.
    Ssh(Vec<SshStep<'a>>),
}

/// What a [`Pass::Ssh`] runs, in order.
enum SshStep<'a> {
    Bundle(Bundle),
    Provisioners(Vec<(usize, &'a ProvisionerSpec)>),
}

/// What the bake made.
pub struct Baked {
    /// The overlay disk holding the finished image. After a chroot bake it is written only
    /// when the layer is saved for the remote cache ([`Baked::save`]), from `raw`.
    pub disk: PathBuf,
    /// The finished disk as raw, when the bake wrote one anyway (the chroot bake).
    pub raw: Option<RawBake>,
    /// Versions of the tools provisioners ran in or against the image (`provisioners[N]` →
    /// Ansible's or Chef's version line).
    pub tools: BTreeMap<String, String>,
}

/// The files of a bake layer in the remote cache.
const LAYER_DISK: &str = "image.qcow2";
const LAYER_RECORD: &str = "bake.json";

/// A chroot bake's finished disk, written as raw.
pub struct RawBake {
    /// The raw disk, which the seal reads.
    pub disk: PathBuf,
    /// The base disk the layer's overlay is written on top of.
    base: PathBuf,
}

impl Baked {
    /// Writes the bake layer into `dir` for the remote cache: the overlay (only what the bake
    /// changed, on top of the base) and `bake.json` with the tools that ran.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)?;
        if let Some(raw) = &self.raw {
            chroot::write_overlay(&raw.base, &raw.disk, &self.disk)?;
        }
        fs::hard_link(&self.disk, dir.join(LAYER_DISK))
            .or_else(|_| fs::copy(&self.disk, dir.join(LAYER_DISK)).map(|_| ()))
            .with_context(|| {
                format!("cannot stage {} for the remote cache", self.disk.display())
            })?;
        fs::write(
            dir.join(LAYER_RECORD),
            serde_json::to_vec_pretty(&self.tools)?,
        )?;
        Ok(())
    }

    /// A bake layer unpacked into `dir`, its overlay pointed at `base_disk`: the same base
    /// (the bake id covers the base id), at this machine's path.
    pub fn open(dir: &Path, base_disk: &Path) -> Result<Baked> {
        let disk = dir.join(LAYER_DISK);
        crate::qemu::rebase_overlay(&disk, base_disk)?;
        let record = fs::read(dir.join(LAYER_RECORD)).with_context(|| {
            format!("the bake layer in {} has no {LAYER_RECORD}", dir.display())
        })?;
        Ok(Baked {
            disk,
            raw: None,
            tools: serde_json::from_slice(&record).context("the bake layer's bake.json")?,
        })
    }
}

/// Bakes the image on an overlay of the base: in a chroot when the whole bake is one offline
/// pass and the host allows it (see `chroot`), else in VMs.
pub fn bake(input: &BakeInput, reporter: &Reporter) -> Result<Baked> {
    let overlay = input.work.join("image.qcow2");
    let mut passes = passes(input)?;
    if let ([Pass::Offline(..)], true) = (passes.as_slice(), in_chroot(input.spec)?) {
        let Some(Pass::Offline(_, bundle)) = passes.pop() else {
            unreachable!("matched one offline pass")
        };
        let (output, raw) = chroot::run(input, bundle, reporter)?;
        return Ok(Baked {
            disk: overlay,
            raw: Some(RawBake {
                disk: raw,
                base: input.base.disk(),
            }),
            tools: bake_protocol::tools(&output).into_iter().collect(),
        });
    }
    create_overlay(&input.base.disk(), &overlay)?;
    let mut output = String::new();
    for pass in passes {
        match pass {
            Pass::Offline(boot, bundle) => append_output(
                &mut output,
                &run_offline(input, boot, &overlay, bundle, reporter)?,
            ),
            Pass::Ssh(steps) => {
                let session = SshSession::boot(input, &overlay, reporter)?;
                for step in steps {
                    let text = match step {
                        SshStep::Bundle(b) => session.run_bundle(&b.dir, b.script, b.what)?,
                        SshStep::Provisioners(list) => session.run_provisioners(&list, reporter)?,
                    };
                    append_output(&mut output, &text);
                }
                session.poweroff()?;
            }
        }
    }
    Ok(Baked {
        disk: overlay,
        raw: None,
        tools: bake_protocol::tools(&output).into_iter().collect(),
    })
}

/// (field, what is wrong) for the files the bake will read on this machine: each shell
/// provisioner's script, each file provisioner's source, and what Ansible and Chef
/// provisioners need (see `ansible::file_problems`, `chef::file_problems`).
pub fn file_problems(def: &Definition) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (index, p) in def.provisioners.iter().enumerate() {
        let field = |key: &str| format!("provisioners[{index}].{key}");
        let keyed = |found: Vec<(&str, String)>| {
            found
                .into_iter()
                .map(|(key, message)| (field(key), message))
                .collect::<Vec<_>>()
        };
        match p {
            Provisioner::Shell { script, .. } => {
                problems.extend(def.missing_file(field("script"), script))
            }
            Provisioner::File { source, .. } => {
                problems.extend(def.missing_file(field("source"), source))
            }
            Provisioner::Ansible(a) => problems.extend(keyed(ansible::file_problems(def, a))),
            Provisioner::Chef(c) => problems.extend(keyed(chef::file_problems(def, c))),
        }
    }
    problems
}

/// Appends one step's output to the bake's, on a line of its own: a console cut off mid-line
/// (a VM powering off) must not hide the next step's first marker, which the protocol reads
/// at the start of a line.
fn append_output(output: &mut String, text: &str) {
    if !output.is_empty() && !output.ends_with('\n') {
        output.push('\n');
    }
    output.push_str(text);
}

/// Whether an offline bake runs in a chroot (`machine.bake`): `auto` where the host allows
/// it, `chroot` only where it does.
fn in_chroot(spec: &BakeSpec) -> Result<bool> {
    match spec.vm.bake {
        BakeIn::Vm => Ok(false),
        BakeIn::Auto => Ok(chroot::available()),
        BakeIn::Chroot if chroot::available() => Ok(true),
        BakeIn::Chroot => bail!(
            "{}: field `machine.bake` is \"chroot\", but a chroot bake needs root and `unshare`: \
             run imgforge as root, or set machine.bake = \"vm\"",
            spec.file.display()
        ),
    }
}

/// The bake's passes, from what the base records: with the bake init (`direct_boot`) every
/// step runs offline and only the scripts that need a running system go over SSH; without it
/// everything runs over SSH. Image hygiene always comes last.
fn passes<'a>(input: &'a BakeInput<'a>) -> Result<Vec<Pass<'a>>> {
    let (online, offline): (Vec<_>, Vec<_>) = input
        .spec
        .provisioners
        .iter()
        .enumerate()
        .partition(|(_, p)| p.settings.needs_running_system());
    let dir = input.work.join("bundle");
    fs::create_dir_all(&dir)?;
    let epoch = input.spec.source_date_epoch;
    let mut script = bake_protocol::prelude(epoch)?;
    script += &stage_service(input, &dir)?;
    script += &stage_data(input, &dir)?;
    for (index, p) in &offline {
        script += &stage_provisioner(input.spec, *index, &p.settings, &dir)?;
    }
    let hygiene_dir = input.work.join("bundle-final");
    fs::create_dir_all(&hygiene_dir)?;
    let hygiene_pass = |what| -> Result<Bundle> {
        Ok(Bundle {
            script: bake_protocol::prelude(epoch)? + &hygiene(input, &hygiene_dir)?,
            dir: hygiene_dir.clone(),
            what,
        })
    };
    Ok(match &input.base.info.direct_boot {
        None => vec![Pass::Ssh(vec![
            SshStep::Bundle(Bundle {
                dir,
                script,
                what: "bake",
            }),
            SshStep::Provisioners(online),
            SshStep::Bundle(hygiene_pass("image hygiene")?),
        ])],
        Some(boot) if online.is_empty() => {
            script += &hygiene(input, &dir)?;
            let what = "bake (offline)";
            vec![Pass::Offline(boot, Bundle { dir, script, what })]
        }
        Some(boot) => {
            script += "echo 'imgforge-bake: offline steps done'\n";
            let what = "bake (offline steps)";
            vec![
                Pass::Offline(boot, Bundle { dir, script, what }),
                Pass::Ssh(vec![SshStep::Provisioners(online)]),
                Pass::Offline(boot, hygiene_pass("image hygiene")?),
            ]
        }
    })
}

fn stage_service(input: &BakeInput, bundle: &Path) -> Result<String> {
    let Some(service) = &input.spec.service else {
        return Ok(String::new());
    };
    crate::sources::git_archive(
        &service.location,
        &service.commit,
        service.subdir.as_deref(),
        &bundle.join("service.tar"),
    )
    .context("cannot export the service repository")?;
    let unit_name = match &service.unit {
        Some(unit) => Some(
            Path::new(unit)
                .file_name()
                .context("service.unit has no file name")?
                .to_string_lossy()
                .into_owned(),
        ),
        None => None,
    };
    Step::Service.script(json!({
        "dest": service.dest.to_string(),
        "install": service.install,
        "unit": service.unit,
        "unit_name": unit_name,
    }))
}

fn stage_data(input: &BakeInput, bundle: &Path) -> Result<String> {
    let Some(data) = &input.spec.data else {
        return Ok(String::new());
    };
    let tar = bundle.join("data.tar");
    match &data.resolved {
        ResolvedData::Tarball { path, .. } => crate::base::copy_file(path, &tar)?,
        ResolvedData::Git { location, commit } => {
            crate::sources::git_archive(location, commit, None, &tar)?
        }
    }
    Step::Data.script(json!({ "dest": data.dest.to_string() }))
}

/// Stages provisioner `index` into `bundle`, each file or tree checked against the digest its
/// bake id covers, and returns its bake step.
fn stage_provisioner(
    spec: &BakeSpec,
    index: usize,
    p: &Provisioner,
    bundle: &Path,
) -> Result<String> {
    let dir = bundle.join("provisioners");
    fs::create_dir_all(&dir)?;
    let staged = dir.join(index.to_string());
    match p {
        Provisioner::Shell { script, .. } => {
            let src = spec.file.resolve(script);
            crate::base::copy_file(&src, &staged).with_context(|| {
                format!(
                    "{}: field `provisioners[{index}].script`",
                    spec.file.display()
                )
            })?;
            spec.check_staged(index, "script", &staged)?;
            let label = format!("provisioners[{index}] ({})", script.display());
            Step::Shell.script(json!({ "label": label, "index": index.to_string() }))
        }
        Provisioner::File { source, dest, mode } => {
            let src = spec.file.resolve(source);
            crate::base::copy_file(&src, &staged).with_context(|| {
                format!(
                    "{}: field `provisioners[{index}].source`",
                    spec.file.display()
                )
            })?;
            spec.check_staged(index, "source", &staged)?;
            Step::File.script(json!({
                "label": format!("provisioners[{index}] (file {dest})"),
                "index": index.to_string(),
                "dest": dest.to_string(),
                "mode": mode.as_deref().unwrap_or("0644"),
            }))
        }
        Provisioner::Ansible(a) => ansible::stage_in_image(spec, index, a, &staged),
        Provisioner::Chef(c) => chef::stage(spec, index, c, &staged),
    }
}

/// The last step of every bake: build key, machine id, host keys, random seeds, caches, logs
/// and the bake's own Ansible removed (each would differ between two builds of the same
/// inputs, or between instances), provenance written to `/etc/imgforge/build.json`.
fn hygiene(input: &BakeInput, bundle: &Path) -> Result<String> {
    fs::write(
        bundle.join("build.json"),
        serde_json::to_string_pretty(&input.provenance.image_record("@PACKAGES@", "@TOOLS@"))?,
    )?;
    let spec = input.spec;
    hygiene_script(spec.family, &spec.purge, &spec.cloud)
}

/// The hygiene and provenance steps, rendered from `templates/bake-hygiene.sh.hbs` for the
/// OS family. What the base holds only for the bake (`purge`: Debian's Ansible for the
/// playbooks) is purged with what it pulled in.
fn hygiene_script(family: OsFamily, purge: &[&str], cloud: &CloudSpec) -> Result<String> {
    crate::render::render_script(
        crate::render::BAKE_HYGIENE,
        &serde_json::json!({
            "build_key_comment": BUILD_KEY_COMMENT,
            "family": crate::os::family(family).hygiene_values(),
            "purge": purge,
            "cloud": cloud_init::hygiene_values(cloud),
            "tools_file": TOOLS_FILE,
        }),
    )
}

/// Writes `script` as the bundle's `bake.sh` and packs the bundle into a tar beside it.
fn pack_bundle(bundle_dir: &Path, script: String) -> Result<PathBuf> {
    fs::write(bundle_dir.join("bake.sh"), script)?;
    let bundle_tar = bundle_dir.with_extension("tar");
    let file = fs::File::create(&bundle_tar)?;
    let mut builder = tar::Builder::new(file);
    builder.append_dir_all(".", bundle_dir)?;
    builder.into_inner()?.sync_all()?;
    Ok(bundle_tar)
}

/// Packs `bundle_dir` with `script` as `bake.sh` and boots the base kernel with the bake init;
/// returns the console.
fn run_offline(
    input: &BakeInput,
    boot: &DirectBoot,
    overlay: &Path,
    bundle: Bundle,
    reporter: &Reporter,
) -> Result<String> {
    let what = bundle.what;
    reporter.phase(what);
    let bundle_tar = pack_bundle(&bundle.dir, bundle.script)?;
    let spec = input.spec;
    let mut cfg = VmConfig {
        // Direct kernel boot: the firmware does not matter.
        firmware: Firmware::Bios,
        kernel: Some((
            input.base.kernel(),
            input.base.initrd(),
            // The image's own arguments but read-write, with only the serial console and only
            // the kernel's warnings: under TCG every line the kernel prints costs boot time.
            // The bake's own output is still shown.
            format!(
                "{} rw init={} net.ifnames=0 panic=-1 loglevel=4",
                boot.kernel_cmdline
                    .split_whitespace()
                    .filter(|arg| !matches!(*arg, "ro" | "console=tty0"))
                    .collect::<Vec<_>>()
                    .join(" "),
                bake_protocol::INIT_PATH
            ),
        )),
        vga: false,
        ..VmConfig::for_machine(&spec.vm, overlay)
    };
    cfg.drives.push(Drive {
        path: bundle_tar.clone(),
        format: "raw",
        read_only: true,
    });
    let run_dir = input.work.join(format!("vm-{}", what.replace(' ', "-")));
    fs::create_dir_all(&run_dir)?;
    let serial = run_dir.join("console.log");
    let mut vm = Vm::start(&cfg, &run_dir, &serial)?;
    let waited = vm.wait_poweroff(spec.vm.timeouts.bake.0, &|line| reporter.detail(line));
    let console = strip_ansi_escapes::strip_str(vm.console());
    append_console_section(input.console_log, what, &console)?;
    waited?;
    match bake_protocol::exit_status(&console) {
        Some(0) => Ok(console),
        Some(code) => {
            let failed = bake_protocol::failed_step(&console).unwrap_or("the bake script");
            bail!(
                "{}: {failed} failed (exit status {code}); its output:\n{}",
                spec.file.display(),
                bake_protocol::step_output(&console)
            )
        }
        None => bail!(
            "the {what} VM powered off without reporting a result; last console lines:\n{}",
            crate::process::tail_lines(&console, 20)
        ),
    }
}

/// SSH options for the build VM: no host key checks (the VM is new each time), key only.
fn ssh_command(key: &Path, port: u16) -> Command {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
        ])
}

/// A fully booted build VM reached over SSH with the base's build key.
struct SshSession<'a> {
    input: &'a BakeInput<'a>,
    vm: Vm,
    port: u16,
}

impl<'a> SshSession<'a> {
    /// Boots the overlay through its firmware and waits until sshd answers.
    fn boot(
        input: &'a BakeInput<'a>,
        overlay: &Path,
        reporter: &Reporter,
    ) -> Result<SshSession<'a>> {
        reporter.phase("bake (running system, SSH)");
        let spec = input.spec;
        let port = free_port()?;
        let cfg = VmConfig {
            forwards: vec![(port, 22)],
            ..VmConfig::for_machine(&spec.vm, overlay)
        };
        let run_dir = input.work.join("vm-ssh");
        fs::create_dir_all(&run_dir)?;
        let vm = Vm::start(&cfg, &run_dir, &run_dir.join("console.log"))?;
        let session = SshSession { input, vm, port };
        let deadline = Instant::now() + spec.vm.timeouts.boot.0;
        while session.ssh().arg("true").run().is_err() {
            if Instant::now() > deadline || crate::cancel::requested() {
                let tail = session.vm.console_tail(15);
                session.keep_console()?;
                bail!(
                    "sshd in the build VM did not answer on 127.0.0.1:{port} within {}; last console lines:\n{tail}",
                    humantime::format_duration(spec.vm.timeouts.boot.0),
                );
            }
            reporter.detail(&session.vm.console_last_line());
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok(session)
    }

    fn ssh(&self) -> Command {
        ssh_command(&self.input.base.build_key(), self.port)
    }

    /// Runs `remote` with `stdin`, logging and returning its output; a failure names `what` and
    /// quotes it.
    fn run(&self, what: &str, remote: &str, stdin: Vec<u8>) -> Result<String> {
        let (code, out) = self.ssh().arg(remote).stdin(stdin).run_unchecked()?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        append_output(&mut text, &String::from_utf8_lossy(&out.stderr));
        append_console_section(self.input.console_log, &format!("{what} over SSH"), &text)?;
        if code != 0 {
            let failed = bake_protocol::failed_step(&text).unwrap_or(what);
            bail!(
                "{}: {failed} failed over SSH (exit status {code}); its output:\n{}",
                self.input.spec.file.display(),
                bake_protocol::step_output(&text)
            );
        }
        Ok(text)
    }

    /// Unpacks a bundle in the running system and runs its `bake.sh`.
    fn run_bundle(&self, bundle_dir: &Path, script: String, what: &str) -> Result<String> {
        let tar = pack_bundle(bundle_dir, script)?;
        self.run(what, &bake_protocol::ssh_run_bundle()?, fs::read(&tar)?)
    }

    /// Runs the provisioners that need a running system, in order, and returns their output:
    /// scripts as they are, Ansible from the host or as a bundle, Chef as a bundle.
    fn run_provisioners(
        &self,
        list: &[(usize, &ProvisionerSpec)],
        reporter: &Reporter,
    ) -> Result<String> {
        let spec = self.input.spec;
        let mut output = String::new();
        for (index, p) in list {
            let index = *index;
            let text = match &p.settings {
                Provisioner::Shell { script, .. } => {
                    let body = fs::read(spec.file.resolve(script)).with_context(|| {
                        format!(
                            "{}: field `provisioners[{index}].script`",
                            spec.file.display()
                        )
                    })?;
                    spec.check_bytes(index, "script", &body)?;
                    let what = format!("provisioners[{index}] ({})", script.display());
                    reporter.println(&format!("    {what} over SSH"));
                    self.run(&what, "sh -es 2>&1", body)?
                }
                Provisioner::Ansible(a) if a.runner == AnsibleRunner::Host => {
                    self.ansible_from_host(index, a, reporter)?
                }
                _ => {
                    let dir = self.input.work.join(format!("bundle-{index}"));
                    fs::create_dir_all(&dir)?;
                    let script = bake_protocol::prelude(spec.source_date_epoch)?
                        + &stage_provisioner(spec, index, &p.settings, &dir)?;
                    reporter.println(&format!("    provisioners[{index}] over SSH"));
                    self.run_bundle(&dir, script, &format!("provisioners[{index}]"))?
                }
            };
            append_output(&mut output, &text);
        }
        Ok(output)
    }

    /// Runs a playbook with the host's Ansible against this VM, and records its version in the
    /// image as the image's own Ansible would.
    fn ansible_from_host(
        &self,
        index: usize,
        a: &crate::definition::AnsibleProvisioner,
        reporter: &Reporter,
    ) -> Result<String> {
        let what = ansible::label(index, a);
        reporter.println(&format!("    {what} from the host over SSH"));
        let key = self.input.base.build_key();
        let target = ansible::SshTarget {
            port: self.port,
            key: &key,
        };
        let scratch = self.input.work.join(format!("ansible-{index}"));
        let run = ansible::run_from_host(self.input.spec, index, a, &target, &scratch);
        let run = run.inspect_err(|e| {
            let _ = append_console_section(self.input.console_log, &what, &format!("{e:#}"));
        })?;
        append_console_section(self.input.console_log, &what, &run.output)?;
        let record = Step::Tool.script(json!({
            "name": format!("provisioners[{index}]"),
            "version": run.version,
        }))?;
        self.run(
            &format!("{what}: record"),
            "sh -es 2>&1",
            record.into_bytes(),
        )
    }

    /// Powers the VM off and waits for it.
    fn poweroff(mut self) -> Result<()> {
        let _ = self.ssh().arg("systemctl poweroff").run_unchecked();
        let waited = self.vm.wait_poweroff(Duration::from_secs(120), &|_| {});
        self.keep_console()?;
        waited
    }

    fn keep_console(&self) -> Result<()> {
        append_console_section(
            self.input.console_log,
            "bake VM console",
            &self.vm.console(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_cut_off_mid_line_does_not_hide_the_next_steps_tool() {
        let mut output = "imgforge-bake: step data\n[   9.87] reboot: Power do".to_string();
        append_output(
            &mut output,
            "imgforge-bake: tool provisioners[0] ansible-playbook [core 2.14]\n",
        );
        let tool = ("provisioners[0]", "ansible-playbook [core 2.14]");
        let tools = bake_protocol::tools(&output);
        assert_eq!(tools, [(tool.0.to_string(), tool.1.to_string())]);
    }

    /// The bake's last pass for `images/NAME` with `edit` applied, after the prelude that
    /// defines what it uses.
    fn last_pass(name: &str, edit: impl Fn(String) -> String) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("images").join(name);
        let text = edit(fs::read_to_string(&path).unwrap());
        let def = Definition::parse(&text, &path).unwrap();
        let script = hygiene_script(
            def.os.family,
            &def.bake_only_packages(),
            &CloudSpec::of(&def),
        );
        bake_protocol::prelude(1_700_000_000).unwrap() + &script.unwrap()
    }

    #[test]
    fn the_hygiene_template_renders_valid_shell_for_each_family() {
        let debian = last_pass("debian-12-web.toml", |t| t);
        crate::render::assert_valid_shell(&debian);
        assert!(debian.contains("sed -i /'imgforge-build-key'/d /root/.ssh/authorized_keys"));
        assert!(debian.contains("pk=$(dpkg-query -W"), "{debian}");
        assert!(
            !debian.contains("apt-get purge"),
            "nothing to purge: {debian}"
        );
        let ansible = last_pass("debian-12-web.toml", |t| {
            t.replacen(
                "[[checks]]",
                "[[provisioners]]\ntype = \"ansible\"\nplaybook = \"../tests/fixtures/ansible/site.yml\"\n\n[[checks]]",
                1,
            )
        });
        crate::render::assert_valid_shell(&ansible);
        assert!(
            ansible.contains("apt-get purge -y --autoremove 'ansible-core'"),
            "{ansible}"
        );
        let rhel = last_pass("rocky-9-kickstart.toml", |t| t);
        crate::render::assert_valid_shell(&rhel);
        assert!(rhel.contains("pk=$(rpm -qa"), "{rhel}");
        assert!(
            !rhel.contains("apt-get") && !rhel.contains("dpkg"),
            "{rhel}"
        );
    }
}
