//! Answer-file rendering: a definition plus a handlebars template give the Debian preseed or the
//! kickstart an installer reads.
//!
//! Rendering is strict: a variable the template names but the context lacks is an error, never an
//! empty string. The answer file carries nothing specific to one build run (the build key is
//! fetched next to the answer file by its late command), so it can be part of the base layer id.

use crate::definition::Definition;
use anyhow::{anyhow, Context, Result};
use handlebars::Handlebars;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A rendered answer file with the template it came from.
#[derive(Debug, Clone)]
pub struct AnswerFile {
    /// File name the installer fetches (`preseed.cfg` or `ks.cfg`).
    pub file_name: &'static str,
    /// Rendered text.
    pub text: String,
    /// Template path used.
    pub template_path: PathBuf,
    /// Template text used (part of the base layer id).
    pub template_text: String,
}

/// Directory holding the shipped templates (`preseed/`, `templates/`): `IMGFORGE_HOME` if set,
/// else the directory of the crate at build time when it still exists, else the current one.
pub fn data_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("IMGFORGE_HOME") {
        return PathBuf::from(home);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"));
    if built.join("preseed").is_dir() {
        built.to_path_buf()
    } else {
        PathBuf::from(".")
    }
}

/// The template a definition uses: its own override or the shipped one for its OS family.
pub fn template_path(def: &Definition) -> PathBuf {
    if let Some(t) = def.builder.installer().and_then(|i| i.template.as_ref()) {
        return def.resolve(t);
    }
    data_dir().join(crate::os::family(def.os.family).answer_file().0)
}

/// Renders the definition's answer file.
pub fn render(def: &Definition) -> Result<AnswerFile> {
    let template_path = template_path(def);
    let template_text = std::fs::read_to_string(&template_path).with_context(|| {
        format!(
            "{}: cannot read the answer-file template",
            template_path.display()
        )
    })?;
    let text = render_template(&template_text, &context(def)?)
        .map_err(|e| anyhow!("{}: {e}", template_path.display()))?;
    let file_name = crate::os::family(def.os.family).answer_file().1;
    Ok(AnswerFile {
        file_name,
        text,
        template_path,
        template_text,
    })
}

/// (field, what is wrong) when the answer-file template the definition names
/// (`installer.template`) is not on this machine.
pub fn file_problems(def: &Definition) -> Vec<(String, String)> {
    def.builder
        .installer()
        .and_then(|i| i.template.as_ref())
        .and_then(|t| def.missing_file("installer.template".to_string(), t))
        .into_iter()
        .collect()
}

/// Renders `template` strictly against `ctx`, without HTML escaping.
pub fn render_template(template: &str, ctx: &Value) -> Result<String> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.render_template(template, ctx).map_err(|e| {
        let reason = e.reason().to_string();
        match (e.line_no, e.column_no) {
            (Some(l), Some(c)) => anyhow!("line {l}, column {c}: {reason}"),
            _ => anyhow!("{reason}"),
        }
    })
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// The guest script template of the rootfs builder's mmdebstrap customize hook.
pub const ROOTFS_CUSTOMIZE: &str = "rootfs-customize.sh.hbs";
/// mmdebstrap's essential hook: the initramfs's drivers, set before the kernel is installed.
pub const ROOTFS_INITRAMFS: &str = "rootfs-initramfs.sh.hbs";
/// mmdebstrap's setup hook: the package set's `.deb`s from the package cache into the tree.
pub const ROOTFS_DEBS_IN: &str = "rootfs-debs-in.sh.hbs";
/// mmdebstrap's customize hook: the tree's `.deb`s out to the package cache's side.
pub const ROOTFS_DEBS_OUT: &str = "rootfs-debs-out.sh.hbs";
/// The host script template that patches a cached base's tree into a new package set.
pub const ROOTFS_PATCH: &str = "rootfs-patch.sh.hbs";
/// The guest script template of the bake's last pass (hygiene and the image's record).
pub const BAKE_HYGIENE: &str = "bake-hygiene.sh.hbs";
/// The guest script template of the offline bake's init (installed into rootfs bases).
pub const BAKE_INIT: &str = "bake-init.sh.hbs";
/// The guest script template of the bake's steps: service, data and each provisioner.
pub const BAKE_STEPS: &str = "bake-steps.sh.hbs";
/// The host script template of a chroot bake: the chroot's file systems, then the bundle.
pub const BAKE_CHROOT: &str = "bake-chroot.sh.hbs";
/// The script template that makes an image a Vagrant base box, run in a chroot of its root.
pub const VAGRANT_USER: &str = "vagrant-user.sh.hbs";
/// The remote command of a bake over SSH: the bundle unpacked from standard input and run.
pub const BAKE_SSH: &str = "bake-ssh.sh.hbs";
/// The guest script template every bake script starts with.
pub const BAKE_PRELUDE: &str = "bake-prelude.sh.hbs";

/// The text of the guest script template `templates/NAME` (part of the ids of the layers it
/// shapes).
pub fn script_template(name: &str) -> Result<String> {
    let path = data_dir().join("templates").join(name);
    std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read the guest script template", path.display()))
}

/// Renders the guest script template `templates/NAME` strictly against `ctx`: `{{value}}` is
/// shell-quoted, `{{{text}}}` (heredoc bodies) is written as it is.
pub fn render_script(name: &str, ctx: &Value) -> Result<String> {
    let template = script_template(name)?;
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(sh_quote);
    hb.render_template(&template, ctx).map_err(|e| {
        let path = data_dir().join("templates").join(name);
        match (e.line_no, e.column_no) {
            (Some(l), Some(c)) => {
                anyhow!("{}: line {l}, column {c}: {}", path.display(), e.reason())
            }
            _ => anyhow!("{}: {}", path.display(), e.reason()),
        }
    })
}

/// `sh -n`, `bash -n` and shellcheck (warnings and errors) accept `script`: the check every
/// rendered guest script passes in the tests.
#[cfg(test)]
pub fn assert_valid_shell(script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.sh");
    std::fs::write(&file, script).unwrap();
    let checks: [(&str, &[&str]); 3] = [
        ("sh", &["-n"]),
        ("bash", &["-n"]),
        ("shellcheck", &["-s", "sh", "-S", "warning"]),
    ];
    for (shell, args) in checks {
        match std::process::Command::new(shell)
            .args(args)
            .arg(&file)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "{shell}: {}{}\n{script}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("{shell}: {e} (scripts/setup --test installs it)"),
        }
    }
}

/// The definition's users as templates see them: `name`, `password_hash` (or null),
/// `ssh_keys`, `sudo`.
pub fn users(system: &crate::definition::System) -> Vec<Value> {
    system
        .users
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "password_hash": u.password_hash.as_ref().map(|h| h.0.clone()),
                "ssh_keys": u.ssh_keys,
                "sudo": u.sudo,
            })
        })
        .collect()
}

/// The variables an answer-file template sees: only what shapes the base (no image name or
/// version), so definitions with the same OS settings render the same answer file and share
/// one base layer.
pub fn context(def: &Definition) -> Result<Value> {
    let sys = &def.system;
    let mirror = url::Url::parse(&sys.mirror).with_context(|| {
        format!(
            "{}: field `system.mirror`: `{}` is not a URL",
            def.path.display(),
            sys.mirror
        )
    })?;
    let users = users(&def.system);
    let first_user = users.first().cloned().unwrap_or_else(
        || json!({ "name": "imgforge", "password_hash": "!", "ssh_keys": [], "sudo": false }),
    );
    // Debian's installer wants an explicit "!" for a locked password.
    let mut first_user = first_user;
    if first_user["password_hash"].is_null() {
        first_user["password_hash"] = json!("!");
    }
    let mut packages = vec!["openssh-server".to_string()];
    packages.extend(
        def.base_packages()
            .into_iter()
            .filter(|p| p != "openssh-server"),
    );
    let disk_mib = def.machine.disk_size.mib();
    let uefi = def.machine.firmware == crate::definition::Firmware::Uefi;
    // Room for the partition table (and the ESP under UEFI).
    let root_mib = disk_mib.saturating_sub(if uefi { 202 } else { 2 });
    let mut values = json!({
        "release": def.os.release,
        "hostname": sys.hostname,
        "domain": sys.domain,
        "timezone": sys.timezone,
        "locale": sys.locale,
        "language": locale_part(&sys.locale, 0),
        "country": locale_part(&sys.locale, 1),
        "keyboard": sys.keyboard,
        "mirror": {
            "url": sys.mirror,
            "protocol": mirror.scheme(),
            "host": &mirror[url::Position::BeforeHost..url::Position::AfterPort],
            "directory": mirror.path().trim_end_matches('/'),
        },
        "updates": sys.updates,
        "proxy": sys.proxy.clone().unwrap_or_default(),
        "users": users,
        "first_user": first_user,
        "packages": packages,
        "packages_line": packages.join(" "),
        "debconf": sys.debconf,
        "disk_mib": disk_mib,
        "root_mib": root_mib,
        "uefi": uefi,
    });
    let family = crate::os::family(def.os.family).answer_values(def)?;
    if let (Value::Object(values), Value::Object(family)) = (&mut values, family) {
        values.extend(family);
    }
    Ok(values)
}

/// The language (`index` 0) or country (1) of a locale like `en_US.UTF-8`; `en` and `US` when the
/// locale has no such part (`C.UTF-8`).
fn locale_part(locale: &str, index: usize) -> String {
    let name = locale.split(['.', '@']).next().unwrap_or_default();
    let mut parts = name.split('_');
    let part = if index == 0 {
        parts.next()
    } else {
        parts.nth(1)
    };
    match part {
        Some(p) if p.len() >= 2 && p.chars().all(|c| c.is_ascii_alphabetic()) => p.to_string(),
        _ if index == 0 => "en".into(),
        _ => "US".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_variable_is_an_error_not_an_empty_string() {
        let e = render_template("host {{hostname}} {{nope}}", &json!({"hostname": "a"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn values_are_not_html_escaped() {
        let out = render_template("{{h}}", &json!({"h": "$6$a&b<c>"})).unwrap();
        assert_eq!(out, "$6$a&b<c>");
    }

    #[test]
    fn locales_split_into_language_and_country() {
        assert_eq!(locale_part("de_AT.UTF-8", 0), "de");
        assert_eq!(locale_part("de_AT.UTF-8", 1), "AT");
        assert_eq!(locale_part("C.UTF-8", 1), "US");
    }
}
