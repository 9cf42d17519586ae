//! The rules that span several fields of a definition: every problem reported, each at
//! its own line.

use super::locate::locate_field;
use super::{
    rules, AnsibleRunner, Builder, BuilderKind, CloudInit, Definition, DefinitionError, DiskFormat,
    Firmware, Initramfs, OsFamily, Provisioner, UploadPath,
};

impl Definition {
    /// Refuses the definition for `problems` (field, what is wrong), each located at its
    /// table or key in `text`, the definition's text; nothing to refuse is `Ok`.
    pub(super) fn refuse(
        &self,
        text: &str,
        problems: Vec<(String, String)>,
    ) -> Result<(), DefinitionError> {
        let problems: Vec<DefinitionError> = problems
            .into_iter()
            .map(|(field, message)| {
                let (line, column) = locate_field(text, &field);
                DefinitionError::Invalid {
                    path: self.path.clone(),
                    line,
                    column,
                    field,
                    message,
                }
            })
            .collect();
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.into_iter().next().expect("one problem")),
            _ => Err(DefinitionError::Problems(problems)),
        }
    }

    /// (field, what is wrong) for each rule the definition breaks.
    pub(super) fn consistency_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut fail =
            |field: &str, message: &str| problems.push((field.to_string(), message.to_string()));
        if let Builder::Installer(i) = &self.builder {
            let kernel_boot = i.kernel.is_some() && i.initrd.is_some();
            if !kernel_boot && i.iso.is_none() {
                fail(
                    "installer",
                    "give both `kernel` and `initrd` (direct kernel boot) or `iso`",
                );
            }
            if i.iso.is_some() && !kernel_boot && i.boot_command.is_empty() {
                fail(
                    "installer.boot_command",
                    "ISO boot needs a boot_command, like [\"<esc><wait>\", \"auto url={{http_url}}/answer<enter>\"]",
                );
            }
        }
        if self.builder.kind() == BuilderKind::Installer
            && self.machine.initramfs == Initramfs::Virtual
        {
            fail(
                "machine.initramfs",
                "a `virtual` initramfs is made by the rootfs builder only; the installer builder \
                 keeps the installer's own (use \"generic\")",
            );
        }
        if self.output.formats.is_empty() {
            fail(
                "output.formats",
                "name at least one of qcow2, raw, vmdk, vhd, vagrant-libvirt",
            );
        }
        if self.builder.kind() == BuilderKind::Rootfs
            && self.machine.firmware == Firmware::Uefi
            && self.machine.disk_size.mib() < 1024
        {
            fail("machine.disk_size", "a UEFI disk needs at least 1G");
        }
        if let Some(aws) = &self.publish.aws {
            if aws.upload == UploadPath::Import && aws.bucket.is_none() {
                fail(
                    "publish.aws.upload",
                    "`import` uploads through S3: name the bucket with `bucket = \"…\"`",
                );
            }
        }
        problems.extend(self.environment_problems());
        problems.extend(self.source_problems());
        problems.extend(rules::problems(self));
        for (index, p) in self.provisioners.iter().enumerate() {
            let field = |key: &str| format!("provisioners[{index}].{key}");
            for (key, message) in self.provisioner_problems(p) {
                problems.push((field(key), message));
            }
        }
        problems
    }

    /// (field, what is wrong) for the package sources: a repository that is neither signed nor
    /// trusted (or both), a source the builder cannot take. (That its key file is there is
    /// the Debian seam's check, `apt::file_problems`.)
    fn source_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut fail = |field: String, message: &str| problems.push((field, message.to_string()));
        for (i, r) in self.system.repositories.iter().enumerate() {
            let field = |key: &str| format!("system.repositories[{i}].{key}");
            match (&r.signed_by, r.trusted) {
                (None, false) => fail(
                    field("signed_by"),
                    "an unsigned repository is refused: give the key its InRelease is signed \
                     with (`signed_by = \"key.gpg\"`), or say `trusted = true` to install from \
                     it unchecked",
                ),
                (Some(_), true) => fail(
                    field("trusted"),
                    "`trusted = true` turns signature checks off: drop it, the repository has \
                     a `signed_by` key",
                ),
                _ => {}
            }
            if url::Url::parse(&r.uri).is_err() {
                fail(
                    field("uri"),
                    "not a URL (like http://apt.example.com/debian)",
                );
            }
            if r.suites.is_empty() {
                fail(field("suites"), "name at least one suite");
            }
        }
        let apt_settings = self.system.mirror_key.is_some() || !self.system.repositories.is_empty();
        if apt_settings && self.os.family != OsFamily::Debian {
            fail(
                "system.repositories".into(),
                "`mirror_key` and `repositories` are apt settings, for the Debian family only",
            );
        } else if apt_settings && self.builder.kind() == BuilderKind::Installer {
            fail(
                "system.repositories".into(),
                "the installer builder trusts the installer's own keyring: `mirror_key` and \
                 `repositories` are for the rootfs builder",
            );
        }
        if let Some(url) = &self.system.security_mirror {
            if url::Url::parse(url).is_err() {
                fail(
                    "system.security_mirror".into(),
                    "not a URL (like http://deb.debian.org/debian-security)",
                );
            }
        }
        problems
    }

    /// (field, what is wrong) for the outputs and cloud integration of the places an image
    /// runs: a Vagrant box it cannot be, cloud-init where it is not made yet, a bad cloud user.
    fn environment_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut fail =
            |field: &str, message: &str| problems.push((field.to_string(), message.to_string()));
        if self.output.formats.contains(&DiskFormat::VagrantLibvirt)
            && self.machine.firmware == Firmware::Uefi
        {
            fail(
                "output.formats",
                "a vagrant-libvirt box boots with BIOS (the box format has no firmware setting, \
                 so vagrant-libvirt starts it with SeaBIOS): drop it or set machine.firmware = \"bios\"",
            );
        }
        if self.output.formats.contains(&DiskFormat::VagrantLibvirt)
            && self.os.family != OsFamily::Debian
        {
            fail(
                "output.formats",
                "a vagrant-libvirt box is made for Debian images only so far (the vagrant user \
                 is added to a Debian root filesystem)",
            );
        }
        if self.cloud.init == Some(CloudInit::CloudInit) && self.os.family != OsFamily::Debian {
            fail(
                "cloud.init",
                "cloud-init integration is made for Debian images only so far; set \
                 init = \"none\" and install and configure cloud-init with a provisioner",
            );
        }
        if let Some(user) = &self.cloud.user {
            let valid = !user.is_empty()
                && user.len() <= 32
                && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && user
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !valid || user == "root" || self.system.users.iter().any(|u| &u.name == user) {
                fail(
                    "cloud.user",
                    "name a new user (lowercase letters, digits, `_` and `-`; not root nor one \
                     of system.users): cloud-init makes it at an instance's first boot",
                );
            }
        }
        problems
    }

    /// (key, what is wrong) for one provisioner, from its settings alone (the files it names
    /// are the bake's check, `bake::file_problems`).
    fn provisioner_problems(&self, p: &Provisioner) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        match p {
            Provisioner::Ansible(a) => {
                if a.runner == AnsibleRunner::Host && !a.needs_running_system {
                    problems.push((
                        "runner",
                        "the host's Ansible reaches the image over SSH: set needs_running_system \
                         = true, or use runner = \"image\""
                            .to_string(),
                    ));
                }
                if a.in_service && a.runner == AnsibleRunner::Host {
                    problems.push((
                        "in_service",
                        "the host's Ansible reads the playbook on the host: a playbook in the \
                         service runs with runner = \"image\""
                            .to_string(),
                    ));
                }
                if a.in_service && self.service.is_none() {
                    problems.push((
                        "in_service",
                        "the playbook is said to be in the service repository, but there is no \
                         [service]"
                            .to_string(),
                    ));
                }
            }
            Provisioner::Chef(c) if c.run_list.is_empty() => {
                problems.push(("run_list", "name at least one recipe".to_string()))
            }
            _ => {}
        }
        problems
    }
}
