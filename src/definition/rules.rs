//! The rules a definition's values must keep beyond their types: what the build VM needs,
//! the names the OS and the network have rules for, the values the OS knows the list of
//! (checked against this host's lists), and the checks' ports and paths. Each refusal says
//! the rule and, where there is one, the nearest valid value; `validate` (and so `id`, `plan`
//! and `build`) reports them all at once. The files the definition names are checked by the
//! stages that read them (`crate::load`).

use super::{BuilderKind, Check, Definition, Firmware, OsFamily};
use std::path::Path;

/// Accounts Debian's base system has already (base-passwd, systemd, sshd): a user of the
/// definition with one of these names would clash.
const SYSTEM_ACCOUNTS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "_apt",
    "messagebus",
    "sshd",
    "systemd-network",
    "systemd-resolve",
    "systemd-timesync",
];

/// This host's time zone database.
const ZONEINFO: &str = "/usr/share/zoneinfo";
/// This host's list of locales glibc can generate (Debian's `locales`).
const SUPPORTED_LOCALES: &str = "/usr/share/i18n/SUPPORTED";
/// This host's keyboard layouts (Debian's `xkb-data`).
const XKB_RULES: &str = "/usr/share/X11/xkb/rules/base.lst";

/// (field, what is wrong) for each value rule `def` breaks.
pub(super) fn problems(def: &Definition) -> Vec<(String, String)> {
    let mut out = Vec::new();
    machine(def, &mut out);
    names(def, &mut out);
    host_lists(def, &mut out);
    checks(def, &mut out);
    out
}

fn machine(def: &Definition, out: &mut Vec<(String, String)>) {
    let m = &def.machine;
    if !(1..=64).contains(&m.cpus) {
        out.push((
            "machine.cpus".into(),
            format!("{}: a build VM has 1 to 64 virtual CPUs", m.cpus),
        ));
    }
    let (min_memory, what) = match (def.builder.kind(), def.os.family) {
        (BuilderKind::Installer, OsFamily::Rhel) => (1536, "Anaconda, the rhel installer,"),
        _ => (256, "a Debian system"),
    };
    if m.memory_mib < min_memory {
        out.push((
            "machine.memory_mib".into(),
            format!(
                "{} MiB: {what} needs at least {min_memory} MiB to boot",
                m.memory_mib
            ),
        ));
    }
    let gib = 1u64 << 30;
    let (min_disk, why) = match (def.builder.kind(), def.os.family) {
        (BuilderKind::Rootfs, _) => (
            2 * gib,
            "the rootfs builder's tree (a minbase Debian with a kernel) takes about 1 GB, and \
             the bake and the first boot need room",
        ),
        (BuilderKind::Installer, OsFamily::Rhel) => (4 * gib, "a minimal rhel install needs it"),
        (BuilderKind::Installer, OsFamily::Debian) => (gib, "the Debian installer needs it"),
    };
    if m.disk_size.0 < min_disk && !(m.firmware == Firmware::Uefi && m.disk_size.mib() < 1024) {
        out.push((
            "machine.disk_size".into(),
            format!("at least {}G: {why}", min_disk / gib),
        ));
    }
    if m.firmware == Firmware::Bios && m.disk_size.0 > 2 << 40 {
        out.push((
            "machine.disk_size".into(),
            "at most 2T with `firmware = \"bios\"`: its MBR partition table addresses no more \
             (use firmware = \"uefi\", which writes GPT)"
                .into(),
        ));
    }
    for (key, t) in [
        ("install", m.timeouts.install.0),
        ("boot", m.timeouts.boot.0),
        ("bake", m.timeouts.bake.0),
    ] {
        if t.is_zero() {
            out.push((
                format!("machine.timeouts.{key}"),
                "a timeout of 0 stops the step before it starts: give a duration like \"5m\""
                    .into(),
            ));
        }
    }
}

/// Whether `label` is a DNS label by RFC 1123: 1 to 63 letters, digits and hyphens, not
/// starting or ending with a hyphen.
fn dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn names(def: &Definition, out: &mut Vec<(String, String)>) {
    let sys = &def.system;
    if !dns_label(&sys.hostname) {
        out.push((
            "system.hostname".into(),
            format!(
                "`{}` is not a host name: 1 to 63 letters, digits and hyphens, not starting or \
                 ending with a hyphen (RFC 1123); put the domain in `domain`",
                sys.hostname
            ),
        ));
    }
    if sys.domain.len() > 253 || !sys.domain.split('.').all(dns_label) {
        out.push((
            "system.domain".into(),
            format!(
                "`{}` is not a DNS domain: dot-separated labels of 1 to 63 letters, digits and \
                 hyphens, 253 characters at most",
                sys.domain
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, u) in sys.users.iter().enumerate() {
        let field = format!("system.users[{i}].name");
        let valid = (1..=32).contains(&u.name.len())
            && u.name
                .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && u.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            out.push((
                field,
                format!(
                    "`{}` is not a user name: a lowercase letter or `_`, then lowercase letters, \
                     digits, `_` and `-`, 32 characters at most (Debian's useradd)",
                    u.name
                ),
            ));
        } else if SYSTEM_ACCOUNTS.contains(&u.name.as_str()) {
            out.push((
                field,
                format!(
                    "`{}` is an account the base system has already: choose another name",
                    u.name
                ),
            ));
        } else if !seen.insert(&u.name) {
            out.push((field, format!("`{}` is named twice", u.name)));
        }
    }
    let lists = std::iter::once(("system.packages".to_string(), &sys.packages)).chain(
        sys.repositories
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("system.repositories[{i}].packages"), &r.packages)),
    );
    for (field, packages) in lists {
        for p in packages {
            if let Some(rule) = package_name_problem(def.os.family, p) {
                out.push((
                    field.clone(),
                    format!("`{p}` is not a package name: {rule}"),
                ));
            }
        }
    }
}

/// What is wrong with package name `p` of `family`, if anything.
fn package_name_problem(family: OsFamily, p: &str) -> Option<&'static str> {
    match family {
        OsFamily::Debian => {
            let ok = p.len() >= 2
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
            (!ok).then_some(
                "Debian names are 2 or more lowercase letters, digits, `+`, `-` and `.`, \
                 starting with a letter or digit (Debian policy 5.6.1); write versions and \
                 suites nowhere here",
            )
        }
        OsFamily::Rhel => {
            let name = p.strip_prefix('@').unwrap_or(p);
            let ok = !name.is_empty()
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b));
            (!ok).then_some(
                "rpm names are letters, digits, `+`, `-`, `.` and `_` (`@group` for a comps \
                 group)",
            )
        }
    }
}

fn host_lists(def: &Definition, out: &mut Vec<(String, String)>) {
    let sys = &def.system;
    if let Some(zones) = time_zones() {
        if !zones.contains(&sys.timezone) {
            out.push((
                "system.timezone".into(),
                unknown(&sys.timezone, "time zone", &zones, ZONEINFO),
            ));
        }
    }
    if let Some(locales) = list_file(SUPPORTED_LOCALES, |line| {
        line.split_whitespace().next().map(str::to_string)
    }) {
        let mut locales = locales;
        locales.extend(["C.UTF-8", "C", "POSIX"].map(String::from));
        if !locales.contains(&sys.locale) {
            out.push((
                "system.locale".into(),
                unknown(&sys.locale, "locale", &locales, SUPPORTED_LOCALES),
            ));
        }
    }
    if let Some(layouts) = keyboard_layouts() {
        if !layouts.contains(&sys.keyboard) {
            out.push((
                "system.keyboard".into(),
                unknown(&sys.keyboard, "keyboard layout", &layouts, XKB_RULES),
            ));
        }
    }
}

/// The refusal of `value`, not in `known` (read from `list`), with the nearest known value.
fn unknown(value: &str, what: &str, known: &[String], list: &str) -> String {
    let nearest = known
        .iter()
        .map(|k| {
            (
                strsim::levenshtein(&k.to_lowercase(), &value.to_lowercase()),
                k,
            )
        })
        .min();
    let hint = match nearest {
        Some((d, k)) if d <= 3.max(value.len() / 3) => format!("; did you mean `{k}`?"),
        _ => String::new(),
    };
    format!("`{value}` is not a known {what} (checked against this host's {list}){hint}")
}

/// Every zone of this host's time zone database (`Europe/Berlin`), or `None` without one.
fn time_zones() -> Option<Vec<String>> {
    let root = Path::new(ZONEINFO);
    if !root.join("Etc/UTC").exists() {
        return None;
    }
    let mut zones = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            let name = path.strip_prefix(root).ok()?.to_string_lossy().into_owned();
            if ["posix", "right"].contains(&name.as_str()) {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if name.starts_with(|c: char| c.is_ascii_uppercase()) || name == "UTC" {
                zones.push(name);
            }
        }
    }
    zones.sort();
    Some(zones)
}

/// The layouts of this host's XKB rules (`us`, `de`), or `None` without them.
fn keyboard_layouts() -> Option<Vec<String>> {
    let text = std::fs::read_to_string(XKB_RULES).ok()?;
    let section = text.split("! layout").nth(1)?.split("\n!").next()?;
    Some(
        section
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect(),
    )
}

/// The entries `entry` takes from each line of the file at `path`, `None` without the file.
fn list_file(path: &str, entry: impl Fn(&str) -> Option<String>) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(entry)
            .collect(),
    )
}

fn checks(def: &Definition, out: &mut Vec<(String, String)>) {
    for (i, check) in def.checks.iter().enumerate() {
        for (key, problem) in check.problems() {
            out.push((format!("checks[{i}].{key}"), problem));
        }
    }
}

impl Check {
    /// (key, what is wrong) for each way this check could not prove anything, or could be
    /// pointed elsewhere: `verify` refuses such a check from a manifest too.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let port = match self {
            Check::Tcp { port, .. } | Check::Http { port, .. } => *port,
        };
        if let Check::Tcp {
            expect: Some(expect),
            ..
        } = self
        {
            if expect.trim().is_empty() {
                out.push((
                    "expect",
                    "an empty `expect` matches any banner: leave it out, or give text the \
                     service sends first"
                        .to_string(),
                ));
            }
        }
        if port == 0 {
            out.push(("port", "a guest port is 1 to 65535".to_string()));
        }
        if let Check::Http { path, expect, .. } = self {
            let bad_path = !path.starts_with('/')
                || path.starts_with("//")
                || path.contains(|c: char| c.is_whitespace() || c.is_control())
                || path.contains(['@', '#', '\\']);
            if bad_path {
                out.push((
                    "path",
                    format!(
                        "`{path}` is not a request path: it starts with a single `/` and has no \
                         spaces, `@`, `#` or `\\` (the check asks the image itself, never \
                         another host)"
                    ),
                ));
            }
            if expect.trim().is_empty() {
                out.push((
                    "expect",
                    "an empty `expect` matches every page: give text only the working service \
                     serves"
                        .to_string(),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_follow_rfc_1123() {
        for ok in ["web", "web-1", "a", "0web"] {
            assert!(dns_label(ok), "{ok}");
        }
        for bad in ["", "-web", "web-", "web_1", "web.example", &"a".repeat(64)] {
            assert!(!dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn package_names_follow_each_familys_rules() {
        assert!(package_name_problem(OsFamily::Debian, "nginx-light").is_none());
        assert!(package_name_problem(OsFamily::Debian, "libstdc++6").is_none());
        for bad in ["Nginx", "n", "curl=7.88", "curl/bookworm", "-x"] {
            assert!(
                package_name_problem(OsFamily::Debian, bad).is_some(),
                "{bad}"
            );
        }
        assert!(package_name_problem(OsFamily::Rhel, "@core").is_none());
        assert!(package_name_problem(OsFamily::Rhel, "NetworkManager").is_none());
        assert!(package_name_problem(OsFamily::Rhel, "a b").is_some());
    }

    #[test]
    fn an_unknown_value_is_refused_with_the_nearest_known_one() {
        let known = ["Europe/Berlin".to_string(), "Europe/Paris".to_string()];
        let text = unknown("Europe/Berln", "time zone", &known, ZONEINFO);
        assert!(text.contains("did you mean `Europe/Berlin`"), "{text}");
        let text = unknown("Mars/Olympus", "time zone", &known, ZONEINFO);
        assert!(!text.contains("did you mean"), "{text}");
    }
}
