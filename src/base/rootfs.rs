//! The `rootfs` builder: the OS tree made by mmdebstrap (no installer), assembled into a
//! bootable disk without loop devices or mounts: `sfdisk` writes the partition table,
//! `mkfs.ext4 -d` fills the root filesystem at its offset, GRUB's core image goes into the MBR
//! gap (BIOS) or onto a FAT EFI system partition written with mtools (UEFI).

use super::packages::{self, PackageCache, PackageUse};
use super::{BaseInfo, BaseStaging, DirectBoot};
use crate::apt::{Archive, Source};
use crate::bake_protocol;
use crate::definition::{Definition, Firmware, Initramfs, VIRTUAL_DRIVERS};
use crate::events::Reporter;
use crate::lock::ResolvedPackages;
use crate::process::Command;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

/// Offset of the first partition: 1 MiB, leaving the MBR gap for GRUB's core image.
const FIRST_PARTITION_BYTES: u64 = 1 << 20;
/// Size of the EFI system partition under UEFI.
const ESP_BYTES: u64 = 200 << 20;

/// The kernel command line of every image imgforge assembles.
fn kernel_cmdline(uuid: &str) -> String {
    format!("root=UUID={uuid} ro console=tty0 console=ttyS0,115200n8")
}

/// Builds the base layer into `staging` and returns its facts.
pub fn build(
    def: &Definition,
    packages: &ResolvedPackages,
    staging: &BaseStaging,
    reporter: &Reporter,
) -> Result<BaseInfo> {
    let started = Instant::now();
    let uuid = root_uuid(staging);
    let tree = staging.path("tree");
    reporter.phase("mmdebstrap");
    let package_use = make_tree(def, packages, staging, &uuid, &tree, reporter)?;
    let made = MadeTree {
        tree: &tree,
        started,
        package_use,
        tools: BTreeMap::from([(
            "mmdebstrap".to_string(),
            tool_version("mmdebstrap", "--version"),
        )]),
    };
    let info = finish(def, packages, staging, made, reporter)?;
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
    derived_uuid(&staging.id, "root filesystem")
}

/// Assembles the disk of a made tree into `staging` (with the kernel and initrd for direct
/// boot) and returns the base's facts.
pub(super) fn finish(
    def: &Definition,
    packages: &ResolvedPackages,
    staging: &BaseStaging,
    made: MadeTree,
    reporter: &Reporter,
) -> Result<BaseInfo> {
    reporter.phase("assemble disk");
    let uuid = root_uuid(staging);
    copy_boot_files(made.tree, staging)?;
    let raw = staging.path("disk.raw");
    assemble_disk(def, made.tree, &raw, &uuid)?;
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
        package_set: Some(packages.set.clone()),
        lineage: None,
        patched_from: None,
    })
}

/// Makes the OS tree at `tree` with mmdebstrap from exactly the resolved package set: every
/// package is fetched first (checked against the set's sha256) into the package cache, from
/// which mmdebstrap takes it, and the tree's installed packages are checked against the set
/// after; returns how the package cache was used.
fn make_tree(
    def: &Definition,
    resolved: &ResolvedPackages,
    staging: &BaseStaging,
    uuid: &str,
    tree: &Path,
    reporter: &Reporter,
) -> Result<Option<PackageUse>> {
    let archive = Archive::for_definition(def, &resolved.sources)?;
    let _indexes = archive.update()?;
    if resolved.lock.is_some() {
        archive.check_available(&resolved.set)?;
    }
    for s in resolved.sources.iter().filter(|s| s.keyring.is_none()) {
        reporter.event(
            crate::events::Event::Warning,
            &format!(
                "the repository `{}` ({}) is trusted unsigned (`trusted = true`): nothing \
                 checks what it serves",
                s.name, s.uri
            ),
            serde_json::json!({ "repository": s.uri, "trusted": true }),
        );
    }
    let hook = staging.path("customize.sh");
    fs::write(
        &hook,
        customize_script(def, &resolved.sources, uuid, &staging.public_key()?)?,
    )?;
    let selections = staging.path("debconf.txt");
    fs::write(&selections, debconf_selections(def))?;
    let suite = crate::apt::suite(&def.os.release);
    let package_limit = packages::limit()?;
    // With the cache off, the packages are fetched into the staging directory instead.
    let mut package_cache =
        PackageCache::for_definition(def, package_limit, &staging.path("fetched"))?;
    package_cache.fetch(&resolved.set, &archive)?;
    let synced = staging.path("packages");
    fs::create_dir_all(&synced)?;
    let pinned: Vec<String> = resolved.set.packages.iter().map(|p| p.pinned()).collect();
    let mut cmd = Command::new("mmdebstrap")
        .arg(format!(
            "--variant={}",
            def.builder.variant.as_deref().unwrap_or("minbase")
        ))
        .arg(format!("--include={}", pinned.join(",")))
        .arg(format!(
            "--essential-hook=chroot \"$1\" debconf-set-selections < {}",
            selections.display()
        ));
    // The package cache's hooks first: the customize hook below cleans the archive directory.
    for arg in package_cache.mmdebstrap_args(&resolved.set, &synced) {
        cmd = cmd.arg(arg);
    }
    cmd = cmd
        .arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
        .arg(suite)
        .arg(tree)
        .args(resolved.sources.iter().flat_map(Source::one_line_entries));
    if crate::definition::snapshot_time(&def.system.mirror).is_some() {
        // A dated snapshot's Release file has long expired; its date is the point.
        cmd = cmd.arg("--aptopt=Acquire::Check-Valid-Until \"false\"");
    }
    if let Some(proxy) = &def.system.proxy {
        cmd = cmd.env("http_proxy", proxy).env("https_proxy", proxy);
    }
    cmd.env("SOURCE_DATE_EPOCH", &def.source_date_epoch().to_string())
        .run()
        .context("mmdebstrap could not build the OS tree")?;
    crate::apt::check_installed(tree, &resolved.set)?;
    let used = package_cache.absorb(&synced)?;
    let damaged = match used.damaged {
        0 => String::new(),
        n => format!(" ({n} damaged in the cache: removed, downloaded again)"),
    };
    reporter.println(&format!(
        "    packages: {} of the set, {} reused from the package cache, {} downloaded{damaged}",
        resolved.set.packages.len(),
        used.reused,
        used.downloaded
    ));
    fs::remove_dir_all(&synced).ok();
    if package_limit > 0 {
        packages::trim(&packages::cache_root(), package_limit, false)?;
    }
    Ok((package_limit > 0).then_some(used))
}

/// The locale's own selections (so `locales` configures cleanly), then the definition's.
fn debconf_selections(def: &Definition) -> String {
    let locale = &def.system.locale;
    let mut lines = vec![
        format!("locales locales/locales_to_be_generated multiselect {locale} UTF-8"),
        format!("locales locales/default_environment_locale select {locale}"),
    ];
    lines.extend(def.system.debconf.iter().cloned());
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

/// A UUID (version 4 layout) derived from `seed` and `purpose`: the same base gets the same
/// filesystem and partition identifiers, so its disk is the same bytes.
fn derived_uuid(seed: &str, purpose: &str) -> String {
    use sha2::Digest;
    let mut b: [u8; 16] = sha2::Sha256::digest(format!("{purpose}:{seed}"))[..16]
        .try_into()
        .expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The mmdebstrap customize hook, rendered from `templates/rootfs-customize.sh.hbs`: system settings, the
/// apt sources the base was built from, users, the build key, first-boot SSH host keys, the
/// offline bake init, and GRUB's configuration.
fn customize_script(
    def: &Definition,
    sources: &[Source],
    uuid: &str,
    build_key: &str,
) -> Result<String> {
    let sys = &def.system;
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
    let virtual_drivers: &[&str] = match def.machine.initramfs {
        Initramfs::Virtual => &VIRTUAL_DRIVERS,
        _ => &[],
    };
    let ctx = json!({
        "hostname": sys.hostname,
        "domain": sys.domain,
        "timezone": sys.timezone,
        "locale": sys.locale,
        "keyboard": sys.keyboard,
        "uuid": uuid,
        "uefi": def.machine.firmware == Firmware::Uefi,
        "keyrings": keyrings,
        "source_files": source_files,
        "proxy": sys.proxy,
        "users": crate::render::users(def),
        "build_key": build_key,
        "hostkeys_unit": HOSTKEYS_UNIT,
        "sshd_host_keys": SSHD_HOST_KEYS,
        "virtual_drivers": virtual_drivers,
        "init_path": bake_protocol::INIT_PATH,
        "init_script": bake_protocol::init_script()?,
        "grub_platform": match def.machine.firmware {
            Firmware::Bios => "i386-pc",
            Firmware::Uefi => "x86_64-efi",
        },
        "grub_cfg": grub_cfg(uuid),
    });
    crate::render::render_script(crate::render::ROOTFS_CUSTOMIZE, &ctx)
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

fn grub_cfg(uuid: &str) -> String {
    format!(
        "# Written by imgforge: boots /vmlinuz with the serial console on.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
search --no-floppy --fs-uuid --set=root {uuid}
menuentry 'Debian GNU/Linux' {{
  linux /vmlinuz {cmdline} quiet
  initrd /initrd.img
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

/// Makes the raw disk: partition table, ext4 root from `tree`, and the boot loader; every
/// identifier derived from `uuid` and every timestamp clamped to the source date, so the same
/// tree gives the same bytes.
pub(crate) fn assemble_disk(def: &Definition, tree: &Path, raw: &Path, uuid: &str) -> Result<()> {
    let size = def.machine.disk_size.0;
    let f = fs::File::create(raw).with_context(|| format!("cannot create {}", raw.display()))?;
    f.set_len(size)?;
    drop(f);
    let uefi = def.machine.firmware == Firmware::Uefi;
    let first = FIRST_PARTITION_BYTES / 512;
    // Identifiers derived from the root filesystem's UUID, not random: same tree, same disk.
    let id = |purpose| derived_uuid(uuid, purpose);
    let table = if uefi {
        let esp = ESP_BYTES / 512;
        format!(
            "label: gpt\nlabel-id: {}\nstart={first}, size={esp}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={}, name=ESP\nstart={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={}, name=root\n",
            id("disk"),
            id("esp partition"),
            first + esp,
            id("root partition"),
        )
    } else {
        format!(
            "label: dos\nlabel-id: 0x{}\nstart={first}, type=83, bootable\n",
            &id("disk")[..8]
        )
    };
    Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(raw)
        .stdin(table.into_bytes())
        .run()?;
    let root_offset = FIRST_PARTITION_BYTES + if uefi { ESP_BYTES } else { 0 };
    // Keep 1 MiB free at the end for the GPT backup header.
    let root_kib = (size - root_offset - (1 << 20)) / 1024;
    let epoch = def.source_date_epoch();
    Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-U", uuid])
        .arg("-E")
        .arg(format!(
            "offset={root_offset},hash_seed={}",
            id("directory hash seed")
        ))
        .arg("-d")
        .arg(tree)
        .arg(raw)
        .arg(format!("{root_kib}k"))
        .env("E2FSPROGS_FAKE_TIME", &epoch.to_string())
        .run()
        .context("mkfs.ext4 could not fill the root filesystem")?;
    crate::ext4_times::clamp_times(raw, root_offset, epoch)
        .context("cannot clamp the root filesystem's timestamps")?;
    let early = raw.with_extension("early.cfg");
    fs::write(
        &early,
        // The serial console from the first instruction on, so that a boot loader that cannot
        // go on (no grub.cfg, no kernel) says so where verify reads.
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\nsearch --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"
        ),
    )?;
    if uefi {
        install_grub_efi(raw, &early, &id("esp serial")[..8], epoch)?;
    } else {
        install_grub_bios(raw, &early)?;
    }
    fs::remove_file(&early).ok();
    Ok(())
}

/// GRUB modules built into the core image, so the boot needs nothing else to find the root.
const CORE_MODULES: &[&str] = &[
    "part_msdos",
    "part_gpt",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "linux",
    "configfile",
    "serial",
    "terminal",
    "echo",
    "test",
    "gzio",
];

/// Writes GRUB's boot.img into the MBR and core.img into the gap after it, patching the
/// sector pointers the way grub-bios-setup does.
fn install_grub_bios(raw: &Path, early: &Path) -> Result<()> {
    let dir = "/usr/lib/grub/i386-pc";
    let core = raw.with_extension("core.img");
    Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-d", dir, "-p", "/boot/grub", "-c"])
        .arg(early)
        .arg("-o")
        .arg(&core)
        .arg("biosdisk")
        .args(CORE_MODULES)
        .run()?;
    let mut core_img = fs::read(&core)?;
    fs::remove_file(&core).ok();
    let mut boot_img =
        fs::read(format!("{dir}/boot.img")).context("grub-pc-bin is not installed")?;
    let sectors = core_img.len().div_ceil(512);
    if sectors as u64 >= FIRST_PARTITION_BYTES / 512 {
        bail!(
            "GRUB's core image ({} sectors) does not fit before the first partition",
            sectors
        );
    }
    // boot.img: the LBA of core.img's first sector, and the floppy drive check turned off.
    boot_img[0x5c..0x64].copy_from_slice(&1u64.to_le_bytes());
    boot_img[0x66] = 0x90;
    boot_img[0x67] = 0x90;
    // core.img's first sector loads the rest: a blocklist (start LBA, sector count) at its end.
    let list = 512 - 12;
    core_img[list..list + 8].copy_from_slice(&2u64.to_le_bytes());
    core_img[list + 8..list + 10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    let mut disk = fs::OpenOptions::new().write(true).open(raw)?;
    disk.write_all(&boot_img[..0x1b8])?;
    disk.seek(SeekFrom::Start(512))?;
    disk.write_all(&core_img)?;
    disk.sync_all()?;
    Ok(())
}

/// Builds GRUB as `EFI/BOOT/BOOTX64.EFI` on a FAT EFI system partition written with mtools.
fn install_grub_efi(raw: &Path, early: &Path, serial: &str, epoch: u32) -> Result<()> {
    let efi = raw.with_extension("BOOTX64.EFI");
    Command::new("grub-mkimage")
        .args([
            "-O",
            "x86_64-efi",
            "-d",
            "/usr/lib/grub/x86_64-efi",
            "-p",
            "/boot/grub",
            "-c",
        ])
        .arg(early)
        .arg("-o")
        .arg(&efi)
        .args(["fat", "efi_gop", "all_video"])
        .args(CORE_MODULES)
        .run()
        .context("grub-mkimage for UEFI failed: is grub-efi-amd64-bin installed?")?;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch.into());
    fs::File::options()
        .write(true)
        .open(&efi)?
        .set_modified(when)?;
    let image = format!("{}@@{}", raw.display(), FIRST_PARTITION_BYTES);
    let sectors = (ESP_BYTES / 512).to_string();
    Command::new("mformat")
        .args([
            "-i", &image, "-F", "-v", "ESP", "-N", serial, "-T", &sectors, "-h", "64", "-s", "32",
            "::",
        ])
        .env("SOURCE_DATE_EPOCH", &epoch.to_string())
        .run()?;
    Command::new("mmd")
        .args(["-i", &image, "::/EFI", "::/EFI/BOOT"])
        .env("SOURCE_DATE_EPOCH", &epoch.to_string())
        .run()?;
    Command::new("mcopy")
        .args(["-i", &image, "-m"])
        .env("SOURCE_DATE_EPOCH", &epoch.to_string())
        .arg(&efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .run()?;
    fs::remove_file(&efi).ok();
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
        let def = Definition::parse(&text, &path).unwrap();
        let sources = crate::apt::sources(&def).unwrap();
        customize_script(
            &def,
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
        // A user whose key holds a quote and shell syntax, UEFI, the `virtual` initramfs.
        let uefi = hook("debian-12-minimal.toml", |t| {
            t.replace("firmware = \"bios\"", "firmware = \"uefi\"\ninitramfs = \"virtual\"")
                + "\n[[system.users]]\nname = \"ops\"\nsudo = true\nssh_keys = [\"ssh-ed25519 AAAA it's $(reboot)\"]\n"
        });
        crate::render::assert_valid_shell(&uefi);
        assert!(uefi.contains("echo 'ssh-ed25519 AAAA it'\\''s $(reboot)' >> \"$R/home/\"'ops'/.ssh/authorized_keys"), "{uefi}");
        assert!(
            uefi.contains("chroot \"$R\" usermod -aG sudo 'ops'"),
            "{uefi}"
        );
        assert!(uefi.contains("printf '%s\\n' 'virtio_pci'"), "{uefi}");
        assert!(uefi.contains("mkdir -p \"$R/boot/efi\""));
        assert!(
            uefi.contains("cp -r /usr/lib/grub/'x86_64-efi' \"$R/boot/grub/\""),
            "{uefi}"
        );
    }
}
