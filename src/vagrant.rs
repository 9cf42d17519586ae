//! The `vagrant-libvirt` output: a Vagrant box for the libvirt provider, and a box catalogue
//! entry a team can serve. The box is the sealed image plus what Vagrant expects of a base
//! box (the `vagrant` user with Vagrant's well-known insecure key, passwordless sudo, sshd
//! without DNS lookups). Only the box gets them: the other formats never carry that key.

use crate::disk::loopmount::{Access, RootMount};
use crate::manifest::{DocumentKind, DocumentRecord};
use crate::process::Command;
use crate::seal::Sealed;
use crate::spec::{BoxMachine, OutputSpec};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Vagrant's insecure public key, published by HashiCorp in every Vagrant release
/// (`keys/vagrant.pub`). `vagrant up` replaces it with a key of its own at the first boot.
pub const INSECURE_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key";

/// The box's raw disk in `work`, made from the sealed image: written again from its tree when
/// the seal wrote the image from its tree ([`Sealed::root_uuid`]), else a copy of the disk.
pub fn box_disk(spec: &OutputSpec, sealed: &Sealed, work: &Path) -> Result<PathBuf> {
    let Some(uuid) = &sealed.root_uuid else {
        return disk_from_disk(spec, &sealed.disk, work);
    };
    let root = RootMount::find(&sealed.disk, work, Access::ReadOnly, &|tree| {
        crate::os::family(spec.family).is_root(tree)
    })?
    .with_context(|| {
        format!(
            "{}: the sealed disk has no root filesystem to make the Vagrant box from",
            sealed.disk.display()
        )
    })?;
    disk_from_tree(spec, root.path(), work, uuid)
}

/// The box's raw disk written from `tree` (the sealed image's root, mounted read-only) the way
/// the seal writes the image: the vagrant user is added on an overlay of the tree, and the
/// disk gets the image's derived identifiers and clamped times, so the same inputs give the
/// same box.
fn disk_from_tree(spec: &OutputSpec, tree: &Path, work: &Path, uuid: &str) -> Result<PathBuf> {
    let overlay = Overlay::mount(tree, work)?;
    add_vagrant_user(&overlay.merged(), spec.disk.epoch)?;
    let raw = work.join("vagrant.raw");
    crate::disk::assemble(&spec.disk, &overlay.merged(), &raw, uuid)
        .context("cannot write the Vagrant box's disk from the image's tree")?;
    Ok(raw)
}

/// The box's raw disk for an image the seal does not write again (installer builder): a copy
/// of `disk` with the vagrant user added in place.
fn disk_from_disk(spec: &OutputSpec, disk: &Path, work: &Path) -> Result<PathBuf> {
    let raw = work.join("vagrant.raw");
    Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(disk)
        .arg(&raw)
        .run()?;
    let is_root = |tree: &Path| crate::os::family(spec.family).is_root(tree);
    let Some(root) = RootMount::find(&raw, work, Access::ReadWrite, &is_root)? else {
        bail!(
            "{}: no partition holds a root filesystem to add the vagrant user to",
            raw.display()
        );
    };
    add_vagrant_user(root.path(), spec.disk.epoch)?;
    root.unmount()?;
    Ok(raw)
}

/// Writes the box `out_dir/file` from its raw disk (made by [`disk_from_tree`] or
/// [`disk_from_disk`]), converting it to qcow2 in `work`.
pub fn write_box(
    spec: &OutputSpec,
    raw: &Path,
    work: &Path,
    out_dir: &Path,
    file: &str,
) -> Result<()> {
    let machine = spec
        .box_machine
        .context("a Vagrant box is written for a definition with the vagrant-libvirt format")?;
    let image = work.join("box.img");
    let mut convert = Command::new("qemu-img").args(["convert", "-O", "qcow2"]);
    if spec.compress {
        convert = convert.arg("-c");
    }
    convert.arg(raw).arg(&image).run()?;
    let entries = [
        ("metadata.json", metadata(spec.disk.size).into_bytes()),
        (
            "Vagrantfile",
            vagrantfile(&spec.image.name, machine).into_bytes(),
        ),
    ];
    let packed = pack(&out_dir.join(file), &entries, &image, spec.disk.epoch);
    std::fs::remove_file(&image).ok();
    packed.with_context(|| format!("cannot write the Vagrant box {file}"))
}

/// Adds the `vagrant` user, its key, its sudo rule and sshd's `UseDNS no` to the image's root
/// at `root`, with `SOURCE_DATE_EPOCH` for the dates useradd records.
fn add_vagrant_user(root: &Path, epoch: u32) -> Result<()> {
    if !root.join("usr/bin/sudo").exists() {
        bail!(
            "a vagrant-libvirt box needs sudo in the image (Vagrant runs its setup with it): \
             add \"sudo\" to system.packages"
        );
    }
    Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c"])
        .arg(crate::render::render_script(
            crate::render::VAGRANT_USER,
            &json!({ "insecure_key": INSECURE_KEY }),
        )?)
        .env("SOURCE_DATE_EPOCH", &epoch.to_string())
        .run()
        .context("cannot add the vagrant user to the box")?;
    Ok(())
}

/// A writable overlay of a read-only tree, unmounted and removed when dropped.
struct Overlay {
    dir: tempfile::TempDir,
}

impl Overlay {
    fn mount(lower: &Path, work: &Path) -> Result<Overlay> {
        let overlay = Overlay {
            dir: tempfile::Builder::new()
                .prefix("overlay-")
                .tempdir_in(work)?,
        };
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir(overlay.dir.path().join(sub))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            overlay.dir.path().join("upper").display(),
            overlay.dir.path().join("work").display()
        );
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(overlay.merged())
            .run()
            .context("cannot mount an overlay of the image's tree for the Vagrant box")?;
        Ok(overlay)
    }

    fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // Never mounted if mount failed: umount says so, harmlessly.
        let _ = Command::new("umount").arg(self.merged()).run_unchecked();
    }
}

/// The box's `metadata.json`: vagrant-libvirt needs the disk's format and size (whole GiB).
fn metadata(disk_size: u64) -> String {
    let gib = disk_size.div_ceil(1 << 30);
    json!({ "provider": "libvirt", "format": "qcow2", "virtual_size": gib }).to_string()
}

/// The box's `Vagrantfile`: defaults a project's own Vagrantfile overrides.
fn vagrantfile(name: &str, machine: BoxMachine) -> String {
    format!(
        "# Written by imgforge: the defaults of the {name} box; a project's Vagrantfile overrides them.
Vagrant.configure(\"2\") do |config|
  # The image has no shared-folder tools: sync with rsync or NFS in the project if needed.
  config.vm.synced_folder \".\", \"/vagrant\", disabled: true
  config.vm.provider :libvirt do |libvirt|
    libvirt.memory = {memory}
    libvirt.cpus = {cpus}
    libvirt.disk_bus = \"virtio\"
  end
end
",
        memory = machine.memory_mib,
        cpus = machine.cpus,
    )
}

/// Writes the tar `path`: `entries`, then `image` as `box.img`, owned by root and dated
/// `epoch`, so that the same files give the same box.
fn pack(path: &Path, entries: &[(&str, Vec<u8>)], image: &Path, epoch: u32) -> Result<()> {
    let header = |size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(epoch.into());
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(path)?));
    for (name, bytes) in entries {
        tar.append_data(&mut header(bytes.len() as u64), name, bytes.as_slice())?;
    }
    let disk = std::fs::File::open(image)?;
    tar.append_data(&mut header(disk.metadata()?.len()), "box.img", disk)?;
    tar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(())
}

/// Writes `<name>.json` into `out_dir`: a Vagrant box catalogue with this build as its one
/// version, the box at `url` (a `file://` URL of the finished build, or `output.box_url`).
/// The version is the image's version with the build time appended, so each nightly build is
/// newer than the last: `1.0.0.20261127032535`.
pub fn write_catalogue(
    spec: &OutputSpec,
    box_file: &str,
    box_sha256: &str,
    final_dir: &Path,
    built_at: &str,
    out_dir: &Path,
) -> Result<DocumentRecord> {
    let url = match &spec.box_url {
        Some(base) => format!("{}/{box_file}", base.trim_end_matches('/')),
        None => format!(
            "file://{}",
            std::path::absolute(final_dir)?.join(box_file).display()
        ),
    };
    let stamp: String = built_at.chars().filter(char::is_ascii_digit).collect();
    let catalogue = json!({
        "name": spec.image.name,
        "description": spec.description,
        "versions": [{
            "version": format!("{}.{stamp}", spec.image.version),
            "providers": [{
                "name": "libvirt",
                "url": url,
                "checksum_type": "sha256",
                "checksum": box_sha256,
            }],
        }],
    });
    let file = format!("{}.json", spec.image.name);
    let bytes = serde_json::to_vec_pretty(&catalogue)?;
    crate::atomic::write(&out_dir.join(&file), &bytes)?;
    Ok(DocumentRecord::of(
        DocumentKind::VagrantCatalogue,
        file,
        &bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vagrant_user_script_renders_valid_shell_with_the_insecure_key() {
        let script = crate::render::render_script(
            crate::render::VAGRANT_USER,
            &json!({ "insecure_key": INSECURE_KEY }),
        )
        .unwrap();
        crate::render::assert_valid_shell(&script);
        assert!(script.contains(&format!(
            "printf '%s\\n' {} > /home/vagrant/.ssh/authorized_keys",
            crate::render::sh_quote(INSECURE_KEY)
        )));
    }
}
