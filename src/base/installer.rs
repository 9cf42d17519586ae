//! The `installer` builder: boots the OS installer in QEMU, serves it the rendered answer file
//! (and the build key its late command fetches) from the build's HTTP server, and waits for
//! the unattended install to power the machine off, under the definition's timeout.
//!
//! Two boot modes: direct kernel boot (installer kernel + initrd + an append line carrying
//! `url=` or `inst.ks=`), or an ISO whose boot prompt gets a typed boot command.

use super::{BaseInfo, BaseStaging};
use crate::definition::{BuilderKind, Installer};
use crate::events::{payload, Reporter};
use crate::httpserve::{FileServer, GUEST_HOST_IP};
use crate::process::Command;
use crate::qemu::{Vm, VmConfig};
use crate::spec::{AnswerSpec, BaseSpec};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Pause between typed keys, like Packer's `boot_key_interval`.
const KEY_INTERVAL: Duration = Duration::from_millis(60);

/// Builds the base layer by running the installer.
pub fn build(spec: &BaseSpec, staging: &BaseStaging, reporter: &Reporter) -> Result<BaseInfo> {
    let started = Instant::now();
    let installer = spec
        .builder
        .installer()
        .context("builder `installer` needs an [installer] table")?;
    let answer = spec
        .answer
        .as_ref()
        .context("builder `installer` needs its answer file")?;
    let server = serve_answer_file(answer, staging, reporter)?;
    let ctx = json!({
        "http_ip": GUEST_HOST_IP,
        "http_port": server.port(),
        "http_url": server.guest_url(),
        "answer_url": format!("{}/{}", server.guest_url(), answer.file_name),
    });
    let disk = staging.path("disk.qcow2");
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg(spec.disk.size.to_string())
        .run()?;
    let cfg = installer_vm(spec, installer, &ctx, &disk)?;
    reporter.phase("install");
    let install = Install {
        spec,
        installer,
        ctx,
        server: &server,
        answer,
        staging,
        reporter,
    };
    let fetched_after_s = install.run(&cfg)?;
    reporter.emit(
        "    the installer powered off",
        &payload::Installed {
            requests: server.requests(),
        },
    );
    let mut tools = BTreeMap::new();
    tools.insert(
        "qemu".to_string(),
        crate::qemu::version().unwrap_or_default(),
    );
    Ok(BaseInfo {
        id: staging.id.clone(),
        builder: BuilderKind::Installer,
        direct_boot: None,
        build_seconds: started.elapsed().as_secs_f64(),
        tools,
        answer_file_fetched_after_s: Some(fetched_after_s),
        packages: None,
        package_set: None,
        lineage: None,
        patched_from: None,
    })
}

/// Starts the build's HTTP server with the answer file and the build key the late command
/// fetches.
fn serve_answer_file(
    answer: &AnswerSpec,
    staging: &BaseStaging,
    reporter: &Reporter,
) -> Result<FileServer> {
    let mut files = BTreeMap::new();
    files.insert(
        answer.file_name.to_string(),
        answer.text.clone().into_bytes(),
    );
    files.insert(
        "build-key.pub".to_string(),
        format!("{}\n", staging.public_key()?).into_bytes(),
    );
    let server = FileServer::start(files)?;
    reporter.emit(
        &format!(
            "    serving the answer file at {}/{}",
            server.guest_url(),
            answer.file_name
        ),
        &payload::HttpServer {
            url: server.guest_url(),
        },
    );
    Ok(server)
}

/// The installer's VM: direct kernel boot with the rendered `append` line when the definition
/// gives a kernel and initrd, else the ISO as a CD-ROM.
fn installer_vm(
    spec: &BaseSpec,
    installer: &Installer,
    ctx: &serde_json::Value,
    disk: &Path,
) -> Result<VmConfig> {
    let fetch = |field: &str, a: &Option<crate::definition::Artifact>| -> Result<Option<PathBuf>> {
        a.as_ref()
            .map(|a| crate::sources::fetch_artifact(&spec.file, field, a))
            .transpose()
    };
    let kernel = fetch("installer.kernel", &installer.kernel)?;
    let initrd = fetch("installer.initrd", &installer.initrd)?;
    let iso = fetch("installer.iso", &installer.iso)?;
    let kernel_boot = match (kernel, initrd) {
        (Some(k), Some(i)) => {
            let append =
                crate::render::render_template(installer.append.as_deref().unwrap_or(""), ctx)
                    .with_context(|| {
                        format!("{}: field `installer.append`", spec.file.display())
                    })?;
            Some((k, i, append))
        }
        _ => None,
    };
    Ok(VmConfig {
        cdrom: if kernel_boot.is_none() { iso } else { None },
        kernel: kernel_boot,
        ..VmConfig::for_machine(&spec.vm, disk)
    })
}

/// One unattended install: what the installer is served and typed.
struct Install<'a> {
    spec: &'a BaseSpec,
    installer: &'a Installer,
    /// The values boot commands and `append` may name (`{{answer_url}}`, …).
    ctx: serde_json::Value,
    server: &'a FileServer,
    answer: &'a AnswerSpec,
    staging: &'a BaseStaging,
    reporter: &'a Reporter,
}

impl Install<'_> {
    /// Boots the installer, types the boot command (ISO boot), and waits for the power-off
    /// under the install timeout, reporting the answer file's fetch as it happens; returns
    /// when the server first served it.
    fn run(&self, cfg: &VmConfig) -> Result<f64> {
        let Install {
            spec,
            installer,
            ref ctx,
            server,
            answer,
            staging,
            reporter,
        } = *self;
        let run_dir = staging.path("vm");
        std::fs::create_dir_all(&run_dir)?;
        let console_log = staging.path("install-console.log");
        let mut vm = Vm::start(cfg, &run_dir, &console_log)?;
        let fetched = std::cell::Cell::new(None);
        let announce_fetch = || {
            if fetched.get().is_some() {
                return;
            }
            if let Some(request) = server.first_fetch(answer.file_name) {
                fetched.set(Some(request.at_s));
                reporter.emit(
                    &format!(
                        "    the installer fetched {} after {:.1} s",
                        answer.file_name, request.at_s
                    ),
                    &payload::AnswerFileFetched {
                        file: answer.file_name.to_string(),
                        after_s: request.at_s,
                    },
                );
            }
        };
        let outcome = (|| -> Result<()> {
            if cfg.cdrom.is_some() {
                std::thread::sleep(installer.boot_wait.0);
                let command = crate::render::render_template(&installer.boot_command.concat(), ctx)
                    .with_context(|| {
                        format!("{}: field `installer.boot_command`", spec.file.display())
                    })?;
                let actions = crate::bootcmd::parse(&command).with_context(|| {
                    format!("{}: field `installer.boot_command`", spec.file.display())
                })?;
                reporter.println("    typing the boot command");
                crate::bootcmd::type_into(&mut vm, &actions, KEY_INTERVAL)?;
            }
            vm.wait_poweroff(spec.vm.timeouts.install.0, &|line| {
                reporter.detail(line);
                announce_fetch();
            })
        })();
        announce_fetch();
        let kept_log = keep_console_log(&console_log, &staging.id);
        if let Err(e) = outcome {
            bail!(
                "{e:#}\nthe installer's console log is kept at {}",
                kept_log.display()
            );
        }
        fetched.get().with_context(|| {
            format!(
                "the installer powered off without fetching its answer file {}; console log: {}",
                answer.file_name,
                kept_log.display()
            )
        })
    }
}

/// Copies an installer console log to `<cache>/logs/`, where it outlives a failed build.
fn keep_console_log(log: &std::path::Path, base_id: &str) -> PathBuf {
    let dir = crate::store::Store::current().logs();
    let kept = dir.join(format!("install-{}.log", crate::layers::short(base_id)));
    let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::copy(log, &kept));
    kept
}
