//! The rules that span several fields of a definition: every problem reported, each at
//! its own line.

use super::locate::locate_field;
use super::{
    rules, AnsibleProvisioner, AnsibleRunner, Builder, BuilderKind, ChefProvisioner, ChefRunItem,
    CloudInit, Definition, DefinitionError, DiskFormat, Firmware, Initramfs, OsFamily, Provisioner,
    UploadPath,
};
use std::path::{Path, PathBuf};

impl Definition {
    /// Checks rules that span several fields, locating the error at the named table or key.
    /// Checks what no single field can: every problem is reported, each at its own line.
    pub(super) fn check_consistency(&self, text: &str) -> Result<(), DefinitionError> {
        let problems: Vec<DefinitionError> = self
            .consistency_problems()
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
    fn consistency_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut fail =
            |field: &str, message: &str| problems.push((field.to_string(), message.to_string()));
        match &self.builder {
            Builder::Installer(i) => {
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
            Builder::Rootfs { .. } if self.os.family != OsFamily::Debian => fail(
                "builder.kind",
                "the rootfs builder uses mmdebstrap and builds Debian only; use kind = \"installer\" for rhel",
            ),
            _ => {}
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
    /// trusted (or both), a key file that is not there, a source the builder cannot take.
    fn source_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut key_file = |field: String, path: &Path| {
            if !self.resolve(path).is_file() {
                problems.push((
                    field,
                    format!(
                        "the key file {} does not exist",
                        self.resolve(path).display()
                    ),
                ));
            }
        };
        if let Some(key) = &self.system.mirror_key {
            key_file("system.mirror_key".into(), key);
        }
        for (i, r) in self.system.repositories.iter().enumerate() {
            if let Some(key) = &r.signed_by {
                key_file(format!("system.repositories[{i}].signed_by"), key);
            }
        }
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

    /// (key, what is wrong) for one provisioner: files it names that are missing, and for
    /// Ansible and Chef what their run would need but cannot find.
    fn provisioner_problems(&self, p: &Provisioner) -> Vec<(&'static str, String)> {
        let missing = |path: &Path| format!("{} does not exist", self.resolve(path).display());
        let mut problems = Vec::new();
        match p {
            Provisioner::Shell { script, .. } if !self.resolve(script).is_file() => {
                problems.push(("script", missing(script)))
            }
            Provisioner::File { source, .. } if !self.resolve(source).is_file() => {
                problems.push(("source", missing(source)))
            }
            Provisioner::Ansible(a) => problems = self.ansible_problems(a),
            Provisioner::Chef(c) => problems = self.chef_problems(c),
            _ => {}
        }
        problems
    }

    fn ansible_problems(&self, a: &AnsibleProvisioner) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if a.runner == AnsibleRunner::Host && !a.needs_running_system {
            problems.push((
                "runner",
                "the host's Ansible reaches the image over SSH: set needs_running_system = true, \
                 or use runner = \"image\""
                    .to_string(),
            ));
        }
        if a.in_service {
            if a.runner == AnsibleRunner::Host {
                problems.push((
                    "in_service",
                    "the host's Ansible reads the playbook on the host: a playbook in the service \
                     runs with runner = \"image\""
                        .to_string(),
                ));
            }
            if self.service.is_none() {
                problems.push((
                    "in_service",
                    "the playbook is said to be in the service repository, but there is no [service]"
                        .to_string(),
                ));
            }
            return problems;
        }
        let playbook = self.resolve(&a.playbook);
        if !playbook.is_file() {
            problems.push(("playbook", format!("{} does not exist", playbook.display())));
            return problems;
        }
        let project = &self.ansible_project(a);
        let mut role_dirs = vec![project.join("roles")];
        for dir in &a.roles_path {
            let dir = project.join(dir);
            if !dir.is_dir() {
                problems.push((
                    "roles_path",
                    format!("{} is not a directory", dir.display()),
                ));
            }
            role_dirs.push(dir);
        }
        if let Some(req) = &a.requirements {
            if let Err(message) = requirements_vendored(&project.join(req), project, &role_dirs) {
                problems.push(("requirements", message));
            }
        }
        problems
    }

    fn chef_problems(&self, c: &ChefProvisioner) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let cookbooks = self.resolve(&c.cookbooks);
        if !cookbooks.is_dir() {
            problems.push((
                "cookbooks",
                format!("{} is not a directory", cookbooks.display()),
            ));
            return problems;
        }
        if c.run_list.is_empty() {
            problems.push(("run_list", "name at least one recipe".to_string()));
        }
        let roles = c.roles.as_ref().map(|r| self.resolve(r));
        for entry in &c.run_list {
            let found = match ChefRunItem::parse(entry) {
                Some(ChefRunItem::Recipe { cookbook, recipe }) => {
                    let file = cookbooks.join(&cookbook).join("recipes").join(format!("{recipe}.rb"));
                    file.is_file().then_some(()).ok_or(format!(
                        "`{entry}`: {} does not exist (cookbook `{cookbook}`, recipe `{recipe}`)",
                        file.display()
                    ))
                }
                Some(ChefRunItem::Role(name)) => match &roles {
                    Some(dir) if chef_named_file(dir, &name) => Ok(()),
                    Some(dir) => Err(format!("`{entry}`: no {name}.json or {name}.rb in {}", dir.display())),
                    None => Err(format!("`{entry}`: a role needs `roles`, the directory it is in")),
                },
                None => Err(format!(
                    "`{entry}` is not `recipe[cookbook::recipe]`, `cookbook::recipe`, `cookbook` or `role[name]`"
                )),
            };
            if let Err(message) = found {
                problems.push(("run_list", message));
            }
        }
        match (&c.environment, &c.environments) {
            (Some(env), Some(dir)) if !chef_named_file(&self.resolve(dir), env) => problems.push((
                "environment",
                format!(
                    "no {env}.json or {env}.rb in {}",
                    self.resolve(dir).display()
                ),
            )),
            (Some(_), None) => problems.push((
                "environment",
                "an environment needs `environments`, the directory it is in".to_string(),
            )),
            _ => {}
        }
        problems
    }
}

/// Whether `dir` holds `NAME.json` or `NAME.rb`, as Chef roles and environments are stored.
fn chef_named_file(dir: &Path, name: &str) -> bool {
    ["json", "rb"]
        .iter()
        .any(|ext| dir.join(format!("{name}.{ext}")).is_file())
}

/// Checks that every role and collection an Ansible requirements file names is vendored: a
/// role in one of `role_dirs`, a collection under `project/collections/ansible_collections/`.
fn requirements_vendored(file: &Path, project: &Path, role_dirs: &[PathBuf]) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: not YAML: {e}", file.display()))?;
    let (roles, collections) = match &doc {
        serde_yaml_ng::Value::Sequence(roles) => (roles.clone(), Vec::new()),
        serde_yaml_ng::Value::Mapping(m) => {
            let list = |key: &str| match m.get(key) {
                Some(serde_yaml_ng::Value::Sequence(s)) => s.clone(),
                _ => Vec::new(),
            };
            (list("roles"), list("collections"))
        }
        _ => (Vec::new(), Vec::new()),
    };
    let name_of = |entry: &serde_yaml_ng::Value| -> Option<String> {
        let text = entry
            .as_str()
            .or_else(|| entry.get("name").and_then(|n| n.as_str()))
            .or_else(|| entry.get("src").and_then(|n| n.as_str()))?;
        // A URL or path names the role by its last component, without `.git` or a version.
        let last = text.trim_end_matches('/').rsplit(['/', ':']).next()?;
        Some(last.split(',').next()?.trim_end_matches(".git").to_string())
    };
    for entry in &roles {
        let name = name_of(entry).ok_or(format!("{}: a role without a name", file.display()))?;
        if !role_dirs.iter().any(|d| d.join(&name).is_dir()) {
            return Err(format!(
                "role `{name}` from {} is not vendored: put it in {} (nothing is downloaded at bake time)",
                file.display(),
                role_dirs[0].join(&name).display()
            ));
        }
    }
    for entry in &collections {
        let name =
            name_of(entry).ok_or(format!("{}: a collection without a name", file.display()))?;
        let dir = name.split_once('.').map(|(ns, coll)| {
            project
                .join("collections/ansible_collections")
                .join(ns)
                .join(coll)
        });
        if !dir.as_ref().is_some_and(|d| d.is_dir()) {
            return Err(format!(
                "collection `{name}` from {} is not vendored: put it in {}/collections/ansible_collections/NAMESPACE/NAME",
                file.display(),
                project.display()
            ));
        }
    }
    Ok(())
}
