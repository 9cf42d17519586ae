//! The `rootfs` builder: the OS tree made by mmdebstrap (no installer), assembled into a
//! bootable disk by [`crate::disk`] without loop devices or mounts.

use super::packages::{self, PackageCache, PackageUse};
use super::{BaseInfo, BaseStaging, DirectBoot};
use crate::apt::{Archive, Source};
use crate::bake_protocol;
use crate::definition::{Firmware, Initramfs, VIRTUAL_DRIVERS};
use crate::events::Reporter;
use crate::process::Command;
use crate::spec::BaseSpec;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

/// The kernel command line of every image imgforge assembles.
fn kernel_cmdline(uuid: &str) -> String {
    format!("root=UUID={uuid} ro console=tty0 console=ttyS0,115200n8")
}

/// Builds the base layer into `staging` and returns its facts.
pub fn build(spec: &BaseSpec, staging: &BaseStaging, reporter: &Reporter) -> Result<BaseInfo> {
    let started = Instant::now();
    let uuid = root_uuid(staging);
    let tree = staging.path("tree");
    reporter.phase("mmdebstrap");
    let package_use = make_tree(spec, staging, &uuid, &tree, reporter)?;
    let made = MadeTree {
        tree: &tree,
        started,
        package_use,
        tools: BTreeMap::from([(
            "mmdebstrap".to_string(),
            tool_version("mmdebstrap", "--version"),
        )]),
    };
    let info = finish(spec, staging, made, reporter)?;
    fs::remove_dir_all(&tree).ok();
    Ok(info)
}

/// A base's OS tree, made, and how.
pub(super) struct MadeTree<'a> {
    /// The tree.
    pub tree: &'a Path,
    /// When its build started.
    pub started: Instant,
    /// How the package cache was used.
    pub package_use: Option<PackageUse>,
    /// The tools that made it, with their versions.
    pub tools: BTreeMap<String, String>,
}

/// The root filesystem UUID of the base being built in `staging`, derived from its id.
pub(super) fn root_uuid(staging: &BaseStaging) -> String {
    crate::disk::derived_uuid(&staging.id, "root filesystem")
}

/// Assembles the disk of a made tree into `staging` (with the kernel and initrd for direct
/// boot) and returns the base's facts.
pub(super) fn finish(
    spec: &BaseSpec,
    staging: &BaseStaging,
    made: MadeTree,
    reporter: &Reporter,
) -> Result<BaseInfo> {
    reporter.phase("assemble disk");
    let uuid = root_uuid(staging);
    copy_boot_files(made.tree, staging)?;
    let raw = staging.path("disk.raw");
    crate::disk::assemble(&spec.layout(), made.tree, &raw, &uuid)?;
    Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(staging.path("disk.qcow2"))
        .run()?;
    fs::remove_file(&raw).ok();
    let mut tools = made.tools;
    tools.insert("mke2fs".to_string(), tool_version("mke2fs", "-V"));
    Ok(BaseInfo {
        id: staging.id.clone(),
        builder: crate::definition::BuilderKind::Rootfs,
        direct_boot: Some(DirectBoot {
            kernel_cmdline: kernel_cmdline(&uuid),
            root_uuid: uuid,
        }),
        build_seconds: made.started.elapsed().as_secs_f64(),
        tools,
        answer_file_fetched_after_s: None,
        packages: made.package_use,
        package_set: Some(spec.package_set()?.set.clone()),
        lineage: None,
        patched_from: None,
    })
}

/// Makes the OS tree at `tree` with mmdebstrap from exactly the resolved package set: every
/// package is fetched first (checked against the set's sha256) into the package cache, from
/// which mmdebstrap takes it, and the tree's installed packages are checked against the set
/// after; returns how the package cache was used.
fn make_tree(
    spec: &BaseSpec,
    staging: &BaseStaging,
    uuid: &str,
    tree: &Path,
    reporter: &Reporter,
) -> Result<Option<PackageUse>> {
    let resolved = spec.package_set()?;
    let archive = Archive::for_system(&spec.system, &resolved.sources)?;
    let _indexes = archive.update()?;
    if resolved.lock.is_some() {
        archive.check_available(&resolved.set)?;
    }
    warn_unsigned(&resolved.sources, reporter);
    let hook = staging.path("customize.sh");
    fs::write(
        &hook,
        customize_script(spec, &resolved.sources, uuid, &staging.public_key()?)?,
    )?;
    let selections = staging.path("debconf.txt");
    fs::write(&selections, debconf_selections(&spec.system))?;
    let initramfs = staging.path("initramfs.sh");
    fs::write(&initramfs, initramfs_script(spec.disk.initramfs)?)?;
    let suite = crate::apt::suite(&spec.os.release);
    let package_limit = packages::limit()?;
    // With the cache off, the packages are fetched into the staging directory instead.
    let mut package_cache = PackageCache::for_base(spec, package_limit, &staging.path("fetched"))?;
    package_cache.fetch(&resolved.set, &archive)?;
    let synced = staging.path("packages");
    fs::create_dir_all(&synced)?;
    let package_hooks = staging.path("package-hooks");
    fs::create_dir_all(&package_hooks)?;
    let pinned: Vec<String> = resolved.set.packages.iter().map(|p| p.pinned()).collect();
    let mut cmd = Command::new("mmdebstrap")
        .arg(format!("--variant={}", spec.builder.variant()))
        .arg(format!("--include={}", pinned.join(",")))
        .arg(format!(
            "--essential-hook=chroot \"$1\" debconf-set-selections < {}",
            crate::render::sh_quote(&selections.display().to_string())
        ))
        .arg(format!(
            "--essential-hook=sh {} \"$1\"",
            crate::render::sh_quote(&initramfs.display().to_string())
        ));
    // The package cache's hooks first: the customize hook below cleans the archive directory.
    for arg in package_cache.mmdebstrap_args(&resolved.set, &synced, &package_hooks)? {
        cmd = cmd.arg(arg);
    }
    cmd = cmd
        .arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
        .arg(suite)
        .arg(tree)
        .args(resolved.sources.iter().flat_map(Source::one_line_entries));
    if crate::definition::snapshot_time(&spec.system.mirror).is_some() {
        // A dated snapshot's Release file has long expired; its date is the point.
        cmd = cmd.arg("--aptopt=Acquire::Check-Valid-Until \"false\"");
    }
    if let Some(proxy) = &spec.system.proxy {
        cmd = cmd.env("http_proxy", proxy).env("https_proxy", proxy);
    }
    cmd.env("SOURCE_DATE_EPOCH", &spec.source_date_epoch.to_string())
        .run()
        .context("mmdebstrap could not build the OS tree")?;
    crate::apt::check_installed(tree, &resolved.set)?;
    let used = package_cache.absorb(&synced)?;
    report_package_use(resolved.set.packages.len(), &used, reporter);
    fs::remove_dir_all(&synced).ok();
    fs::remove_dir_all(&package_hooks).ok();
    if package_limit > 0 {
        packages::trim(&packages::cache_root(), package_limit, false)?;
    }
    Ok((package_limit > 0).then_some(used))
}

/// Warns of each source trusted without a signature (`trusted = true`).
fn warn_unsigned(sources: &[Source], reporter: &Reporter) {
    for s in sources.iter().filter(|s| s.keyring.is_none()) {
        reporter.emit(
            &format!(
                "the repository `{}` ({}) is trusted unsigned (`trusted = true`): nothing \
                 checks what it serves",
                s.name, s.uri
            ),
            &crate::events::payload::Warning {
                repository: Some(s.uri.clone()),
                trusted: Some(true),
                ..Default::default()
            },
        );
    }
}

/// Says how many of the set's `total` packages came from the package cache.
fn report_package_use(total: usize, used: &PackageUse, reporter: &Reporter) {
    let damaged = match used.damaged {
        0 => String::new(),
        n => format!(" ({n} damaged in the cache: removed, downloaded again)"),
    };
    reporter.println(&format!(
        "    packages: {total} of the set, {} reused from the package cache, {} downloaded{damaged}",
        used.reused, used.downloaded
    ));
}

/// The locale's own selections (so `locales` configures cleanly), then the definition's.
fn debconf_selections(system: &crate::definition::System) -> String {
    let locale = &system.locale;
    let mut lines = vec![
        format!("locales locales/locales_to_be_generated multiselect {locale} UTF-8"),
        format!("locales locales/default_environment_locale select {locale}"),
    ];
    lines.extend(system.debconf.iter().cloned());
    lines.join("\n") + "\n"
}

pub(super) fn tool_version(program: &str, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .run()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                &o.stderr
            } else {
                &o.stdout
            };
            String::from_utf8_lossy(text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// The mmdebstrap customize hook, rendered from `templates/rootfs-customize.sh.hbs`: system settings, the
/// apt sources the base was built from, users, the build key, first-boot SSH host keys, the
/// offline bake init, and GRUB's configuration.
fn customize_script(
    spec: &BaseSpec,
    sources: &[Source],
    uuid: &str,
    build_key: &str,
) -> Result<String> {
    let sys = &spec.system;
    let mut keyrings = Vec::new();
    let (mut debian, mut extra) = (String::new(), String::new());
    for source in sources {
        let keyring = source.image_keyring_name().map(|name| {
            let host = source
                .keyring
                .as_ref()
                .expect("a keyring name has a keyring");
            keyrings.push(json!({ "host": host.display().to_string(), "name": name }));
            format!("/etc/apt/keyrings/{name}")
        });
        let file = if source.name.starts_with("debian") {
            &mut debian
        } else {
            &mut extra
        };
        if !file.is_empty() {
            file.push('\n');
        }
        file.push_str(&source.deb822(keyring.as_deref()));
    }
    let source_files: Vec<Value> = [("debian", debian), ("imgforge", extra)]
        .into_iter()
        .filter(|(_, text)| !text.is_empty())
        .map(|(name, text)| json!({ "name": name, "text": text }))
        .collect();
    let ctx = json!({
        "hostname": sys.hostname,
        "domain": sys.domain,
        "timezone": sys.timezone,
        "locale": sys.locale,
        "keyboard": sys.keyboard,
        "uuid": uuid,
        "uefi": spec.disk.firmware == Firmware::Uefi,
        "keyrings": keyrings,
        "source_files": source_files,
        "proxy": sys.proxy,
        "users": crate::render::users(sys),
        "build_key": build_key,
        "hostkeys_unit": HOSTKEYS_UNIT,
        "sshd_host_keys": SSHD_HOST_KEYS,
        "init_path": bake_protocol::INIT_PATH,
        "init_script": bake_protocol::init_script()?,
        "grub_platform": match spec.disk.firmware {
            Firmware::Bios => "i386-pc",
            Firmware::Uefi => "x86_64-efi",
        },
        "grub_cfg": grub_cfg(uuid, spec.disk.firmware),
    });
    crate::render::render_script(crate::render::ROOTFS_CUSTOMIZE, &ctx)
}

/// mmdebstrap's essential hook, rendered from `templates/rootfs-initramfs.sh.hbs`: the drivers
/// of the initramfs `kind`, set before the kernel's package makes it, so it is made once.
fn initramfs_script(kind: Initramfs) -> Result<String> {
    let ctx = json!({
        "generic": kind == Initramfs::Generic,
        "drivers": VIRTUAL_DRIVERS,
    });
    crate::render::render_script(crate::render::ROOTFS_INITRAMFS, &ctx)
}

/// First boot: SSH host keys are removed from images, so make new ones before sshd starts.
/// Ed25519 and ECDSA only: an RSA key takes seconds of a first boot under emulation, and every
/// instance `rotate` launches pays its first boot. [`SSHD_HOST_KEYS`] tells sshd so. With
/// cloud-init, its keys come first: cloud-init.service runs before `sysinit.target`, which
/// this unit follows (ordering it before cloud-init would be a cycle systemd breaks by
/// dropping cloud-init).
const HOSTKEYS_UNIT: &str = "[Unit]
Description=imgforge: generate SSH host keys on first boot
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -N \"\" -t ed25519 -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -N \"\" -t ecdsa -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=multi-user.target
";

/// sshd's host keys, so that it does not look for the RSA key the first boot does not make.
const SSHD_HOST_KEYS: &str = "HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
";

/// GRUB's configuration: boots /vmlinuz with the serial console on. On BIOS through the
/// kernel's 16-bit entry (`linux16`, as Red Hat's BIOS configurations do): GRUB's 32-bit `linux`
/// loader moves the kernel into place with a byte-at-a-time copy (`rep movsb`), which under TCG
/// held the boot about 2.4 s before the kernel's decompressor started (the instruction pointer
/// sampled through QEMU's monitor); `linux16` leaves the kernel where it loaded it.
fn grub_cfg(uuid: &str, firmware: Firmware) -> String {
    let (linux, initrd) = match firmware {
        Firmware::Bios => ("linux16", "initrd16"),
        Firmware::Uefi => ("linux", "initrd"),
    };
    format!(
        "# Written by imgforge: boots /vmlinuz with the serial console on.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
search --no-floppy --fs-uuid --set=root {uuid}
menuentry 'Debian GNU/Linux' {{
  {linux} /vmlinuz {cmdline} quiet
  {initrd} /initrd.img
}}
",
        cmdline = kernel_cmdline(uuid)
    )
}

/// Copies the kernel and initrd out of the tree for direct kernel boot.
fn copy_boot_files(tree: &Path, staging: &BaseStaging) -> Result<()> {
    for (link, name) in [("vmlinuz", "vmlinuz"), ("initrd.img", "initrd.img")] {
        let target = fs::read_link(tree.join(link))
            .with_context(|| format!("the OS tree has no /{link}: was a kernel installed?"))?;
        let target = tree.join(target.strip_prefix("/").unwrap_or(&target));
        super::copy_file(&target, &staging.path(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The customize hook of `images/NAME` with `edit` applied to the definition's text.
    fn hook(name: &str, edit: impl Fn(String) -> String) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("images").join(name);
        let text = edit(fs::read_to_string(&path).unwrap());
        let def = crate::definition::Definition::parse(&text, &path).unwrap();
        let sources = crate::apt::sources(&def).unwrap();
        let answer = crate::render::render(&def).unwrap();
        let specs = crate::spec::Specs::from_resolved(&def, &answer, None).unwrap();
        customize_script(
            &specs.base,
            &sources,
            "0f0e0d0c-0b0a-4908-8706-050403020100",
            "ssh-ed25519 AAAA build",
        )
        .unwrap()
    }

    #[test]
    fn the_customize_hook_template_renders_valid_shell_with_every_value_quoted() {
        let web = hook("debian-12-web.toml", |t| t);
        crate::render::assert_valid_shell(&web);
        assert!(web.contains("echo 'web' > \"$R/etc/hostname\""), "{web}");
        assert!(web.contains("echo 'ssh-ed25519 AAAA build' >> \"$R/root/.ssh/authorized_keys\""));
        assert!(
            web.contains(
                "cat > \"$R/etc/apt/sources.list.d/\"'debian'.sources <<'EOF'\nTypes: deb\n"
            ),
            "{web}"
        );
        assert!(web.contains(&format!(
            "<<'EOF'\n{}EOF\n",
            bake_protocol::init_script().unwrap()
        )));
        assert!(!web.contains("/boot/efi"), "BIOS: no ESP");
        // A user whose key holds a quote and shell syntax, UEFI.
        let uefi = hook("debian-12-minimal.toml", |t| {
            t.replace("firmware = \"bios\"", "firmware = \"uefi\"")
                + "\n[[system.users]]\nname = \"ops\"\nsudo = true\nssh_keys = [\"ssh-ed25519 AAAA it's $(reboot)\"]\n"
        });
        crate::render::assert_valid_shell(&uefi);
        assert!(uefi.contains("echo 'ssh-ed25519 AAAA it'\\''s $(reboot)' >> \"$R/home/\"'ops'/.ssh/authorized_keys"), "{uefi}");
        assert!(
            uefi.contains("chroot \"$R\" usermod -aG sudo 'ops'"),
            "{uefi}"
        );
        assert!(uefi.contains("mkdir -p \"$R/boot/efi\""));
        assert!(
            uefi.contains("cp -r /usr/lib/grub/'x86_64-efi' \"$R/boot/grub/\""),
            "{uefi}"
        );
    }

    #[test]
    fn the_initramfs_hook_lists_every_local_disk_class_for_generic_and_the_vm_drivers_for_both() {
        let generic = initramfs_script(Initramfs::Generic).unwrap();
        let virtual_ = initramfs_script(Initramfs::Virtual).unwrap();
        for script in [&generic, &virtual_] {
            crate::render::assert_valid_shell(script);
            assert!(script.contains("echo MODULES=list >"), "{script}");
            assert!(
                script.contains("echo 'manual_add_modules' 'virtio_pci' 'virtio_blk'"),
                "{script}"
            );
        }
        for line in [
            "auto_add_modules ide ata mmc usb_storage firewire",
            "manual_add_modules ext4 atkbd",
            "copy_modules_dir kernel/drivers/scsi lpfc qla2xxx",
            "copy_modules_dir kernel/drivers/block rbd.ko drbd",
        ] {
            assert!(generic.contains(line), "{line}: {generic}");
        }
        assert!(!generic.contains("auto_add_modules base"), "{generic}");
        assert!(!virtual_.contains("auto_add_modules"), "{virtual_}");
    }
}
