//! The `rootfs` builder: the OS tree made by mmdebstrap (no installer), assembled into a
//! bootable disk without loop devices or mounts: `sfdisk` writes the partition table,
//! `mkfs.ext4 -d` fills the root filesystem at its offset, GRUB's core image goes into the MBR
//! gap (BIOS) or onto a FAT EFI system partition written with mtools (UEFI).

use super::packages::{self, PackageCache, PackageUse};
use super::{BaseInfo, BaseStaging, DirectBoot};
use crate::apt::{Archive, Source};
use crate::bake_protocol::{self, sh_quote};
use crate::definition::{Definition, Firmware, Initramfs, VIRTUAL_DRIVERS};
use crate::events::Reporter;
use crate::lock::ResolvedPackages;
use crate::process::Command;
use anyhow::{bail, Context, Result};
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
    let uuid = derived_uuid(&staging.id, "root filesystem");
    let tree = staging.path("tree");
    reporter.phase("mmdebstrap");
    let package_use = make_tree(def, packages, staging, &uuid, &tree, reporter)?;

    reporter.phase("assemble disk");
    copy_boot_files(&tree, staging)?;
    let raw = staging.path("disk.raw");
    assemble_disk(def, &tree, &raw, &uuid)?;
    fs::remove_dir_all(&tree).ok();
    Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(staging.path("disk.qcow2"))
        .run()?;
    fs::remove_file(&raw).ok();

    let mut tools = BTreeMap::new();
    tools.insert(
        "mmdebstrap".to_string(),
        tool_version("mmdebstrap", "--version"),
    );
    tools.insert("mke2fs".to_string(), tool_version("mke2fs", "-V"));
    Ok(BaseInfo {
        id: staging.id.clone(),
        builder: crate::definition::BuilderKind::Rootfs,
        direct_boot: Some(DirectBoot {
            kernel_cmdline: kernel_cmdline(&uuid),
            root_uuid: uuid,
        }),
        build_seconds: started.elapsed().as_secs_f64(),
        tools,
        answer_file_fetched_after_s: None,
        packages: package_use,
        package_set: Some(packages.set.clone()),
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
    let cache_root = match package_limit {
        0 => staging.path("fetched"),
        _ => packages::cache_root(),
    };
    let mut package_cache = PackageCache::open(&cache_root, &suite, &def.system.mirror)?;
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

fn tool_version(program: &str, flag: &str) -> String {
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

/// The mmdebstrap customize hook: system settings, users, the build key, first-boot SSH host
/// keys, the offline bake init, and GRUB's configuration.
fn customize_script(
    def: &Definition,
    sources: &[Source],
    uuid: &str,
    build_key: &str,
) -> Result<String> {
    let sys = &def.system;
    let mut s = String::from(
        "#!/bin/sh\n# imgforge customize hook; $1 is the new root.\nset -eu\nR=\"$1\"\n",
    );
    let q = sh_quote;
    s += &format!("echo {} > \"$R/etc/hostname\"\n", q(&sys.hostname));
    s += &format!(
        "printf '127.0.0.1 localhost\\n127.0.1.1 %s.%s %s\\n::1 localhost ip6-localhost ip6-loopback\\n' {h} {d} {h} > \"$R/etc/hosts\"\n",
        h = q(&sys.hostname),
        d = q(&sys.domain)
    );
    s += &format!(
        "[ -e \"$R/usr/share/zoneinfo/\"{tz} ] || {{ echo \"unknown time zone \"{tz} >&2; exit 1; }}\nln -sf /usr/share/zoneinfo/{tz} \"$R/etc/localtime\"\necho {tz} > \"$R/etc/timezone\"\n",
        tz = q(&sys.timezone)
    );
    s += &format!(
        "sed -i \"s/^# *\\({loc}\\)/\\1/\" \"$R/etc/locale.gen\"\ngrep -q \"^\"{loc} \"$R/etc/locale.gen\" || echo {loc}' UTF-8' >> \"$R/etc/locale.gen\"\nchroot \"$R\" locale-gen >/dev/null\necho LANG={loc} > \"$R/etc/default/locale\"\n",
        loc = q(&sys.locale)
    );
    s += &format!(
        "printf 'XKBMODEL=pc105\\nXKBLAYOUT=%s\\n' {} > \"$R/etc/default/keyboard\"\n",
        q(&sys.keyboard)
    );
    s += &format!("echo 'UUID={uuid} / ext4 errors=remount-ro 0 1' > \"$R/etc/fstab\"\n");
    if def.machine.firmware == Firmware::Uefi {
        s += "echo 'LABEL=ESP /boot/efi vfat umask=0077,nofail 0 2' >> \"$R/etc/fstab\"\nmkdir -p \"$R/boot/efi\"\n";
    }
    s += "mkdir -p \"$R/etc/systemd/network\"\nprintf '[Match]\\nName=en* eth*\\n\\n[Network]\\nDHCP=yes\\n' > \"$R/etc/systemd/network/80-dhcp.network\"\nchroot \"$R\" systemctl enable systemd-networkd systemd-resolved >/dev/null 2>&1\n";
    s += &apt_sources(sources);
    if let Some(proxy) = &sys.proxy {
        s += &format!(
            "echo 'Acquire::http::Proxy \"'{}'\";' > \"$R/etc/apt/apt.conf.d/80proxy\"\n",
            q(proxy)
        );
    }
    for u in &sys.users {
        let name = q(&u.name);
        s += &format!("chroot \"$R\" useradd -m -s /bin/bash {name}\n");
        if let Some(h) = &u.password_hash {
            s += &format!("chroot \"$R\" usermod -p {} {name}\n", q(&h.0));
        }
        if u.sudo {
            s += &format!("chroot \"$R\" usermod -aG sudo {name}\n");
        }
        s += &format!("install -d -m 700 \"$R/home/\"{name}/.ssh\n: > \"$R/home/\"{name}/.ssh/authorized_keys\n");
        for k in &u.ssh_keys {
            s += &format!("echo {} >> \"$R/home/\"{name}/.ssh/authorized_keys\n", q(k));
        }
        s += &format!(
            "chmod 600 \"$R/home/\"{name}/.ssh/authorized_keys\nchroot \"$R\" chown -R {name}: /home/{name}/.ssh\n"
        );
    }
    s += &format!(
        "install -d -m 700 \"$R/root/.ssh\"\necho {} >> \"$R/root/.ssh/authorized_keys\"\nchmod 600 \"$R/root/.ssh/authorized_keys\"\n",
        q(build_key)
    );
    s += &first_boot_settings(def);
    s += &format!(
        "install -d \"$(dirname \"$R{init}\")\"\ncat > \"$R{init}\" <<'EOF'\n{script}EOF\nchmod 755 \"$R{init}\"\n",
        init = bake_protocol::INIT_PATH,
        script = bake_protocol::init_script()
    );
    let platform = match def.machine.firmware {
        Firmware::Bios => "i386-pc",
        Firmware::Uefi => "x86_64-efi",
    };
    s += &format!(
        "install -d \"$R/boot/grub\"\ncp -r /usr/lib/grub/{platform} \"$R/boot/grub/\"\ncat > \"$R/boot/grub/grub.cfg\" <<'EOF'\n{}EOF\n",
        grub_cfg(uuid)
    );
    s += "chroot \"$R\" apt-get clean\nrm -rf \"$R\"/var/lib/apt/lists/*\n";
    Ok(s)
}

/// The customize hook's part for apt: the sources the base was built from as deb822 files
/// (`debian.sources` for Debian's archive, `imgforge.sources` for extra repositories), each
/// signed by the keyring it was built with, copied to `/etc/apt/keyrings/`.
fn apt_sources(sources: &[Source]) -> String {
    let mut s = String::from(
        "rm -f \"$R/etc/apt/sources.list\"\ninstall -d -m 755 \"$R/etc/apt/keyrings\" \"$R/etc/apt/sources.list.d\"\n",
    );
    let (mut debian, mut extra) = (String::new(), String::new());
    for source in sources {
        let keyring = source.image_keyring_name().map(|name| {
            let host = source
                .keyring
                .as_ref()
                .expect("a keyring name has a keyring");
            s += &format!(
                "install -m 644 {} \"$R/etc/apt/keyrings/{name}\"\n",
                sh_quote(&host.display().to_string())
            );
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
    for (name, text) in [("debian", debian), ("imgforge", extra)] {
        if !text.is_empty() {
            s +=
                &format!("cat > \"$R/etc/apt/sources.list.d/{name}.sources\" <<'EOF'\n{text}EOF\n");
        }
    }
    s
}

/// The customize hook's part for the first boot: SSH host keys made then, the initramfs of
/// `machine.initramfs`, no e2scrub.
fn first_boot_settings(def: &Definition) -> String {
    let mut s = String::new();
    s += &format!(
        "cat > \"$R/etc/systemd/system/imgforge-ssh-hostkeys.service\" <<'EOF'\n{HOSTKEYS_UNIT}EOF\nchroot \"$R\" systemctl enable imgforge-ssh-hostkeys.service >/dev/null 2>&1\n"
    );
    s += &format!(
        "install -d \"$R/etc/ssh/sshd_config.d\"\ncat > \"$R/etc/ssh/sshd_config.d/imgforge-host-keys.conf\" <<'EOF'\n{SSHD_HOST_KEYS}EOF\n"
    );
    if def.machine.initramfs == Initramfs::Virtual {
        s += &format!(
            "echo MODULES=list > \"$R/etc/initramfs-tools/conf.d/imgforge\"\nprintf '%s\\n' {} >> \"$R/etc/initramfs-tools/modules\"\nchroot \"$R\" update-initramfs -u -k all >/dev/null\n",
            VIRTUAL_DRIVERS.join(" ")
        );
    }
    // e2scrub looks for LVM snapshots, which these disks have none of: a unit less at boot.
    s += "chroot \"$R\" systemctl disable e2scrub_reap.service e2scrub_all.timer >/dev/null 2>&1 || true\n";
    s
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
