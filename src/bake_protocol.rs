//! The bake protocol: what the image runs and prints during a bake, in one place, shared by
//! the builder that installs the bake init into a base (`base::rootfs`) and the bake that boots
//! it and reads its console (`bake`).
//!
//! Offline, the base's kernel boots with `init=`[`INIT_PATH`]; the init unpacks the bundle (a
//! tar on the second virtio disk, [`BUNDLE_DEVICE`]) into [`BUNDLE_DIR`], runs its `bake.sh`,
//! prints [`STATUS_MARKER`] with the exit status and powers off. Over SSH the same bundle is
//! unpacked and run by [`ssh_run_bundle`]. Every `bake.sh` starts with [`prelude`], whose `step`
//! and `fail` print the markers that [`failed_step`] and [`step_output`] read back.

/// Where the bake init lives in every base the rootfs builder makes.
pub const INIT_PATH: &str = "/usr/lib/imgforge/bake-init";
/// Where the bundle is unpacked in the guest.
pub const BUNDLE_DIR: &str = "/run/bake";
/// The disk holding the bundle in an offline bake (the second virtio disk).
pub const BUNDLE_DEVICE: &str = "/dev/vdb";
/// Printed by the bake init with the bundle's exit status.
pub const STATUS_MARKER: &str = "imgforge-bake: exit status ";
/// Printed when a step starts (`step NAME`).
const STEP_MARKER: &str = "imgforge-bake: step ";
/// Printed when a step fails (`fail NAME STATUS`).
const FAILED_MARKER: &str = "imgforge-bake: FAILED: ";

/// Printed when a step records the version of a tool it ran (`tool NAME VERSION`).
const TOOL_MARKER: &str = "imgforge-bake: tool ";
/// Where a bake's steps record their tools for `/etc/imgforge/build.json`, until the hygiene
/// step moves them there.
pub const TOOLS_FILE: &str = "/var/lib/imgforge-bake/tools";

/// The kinds of bake step `templates/bake-steps.sh.hbs` renders, each a section of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The service repository unpacked, its install command, its unit enabled.
    Service,
    /// The data snapshot unpacked.
    Data,
    /// A shell provisioner.
    Shell,
    /// A file provisioner.
    File,
    /// An Ansible playbook run by the image's own Ansible.
    Ansible,
    /// A Chef run list converged by the image's Chef client.
    Chef,
    /// The version of a tool that ran from the host, recorded as the image's would be.
    Tool,
}

impl Step {
    const ALL: [Step; 7] = [
        Step::Service,
        Step::Data,
        Step::Shell,
        Step::File,
        Step::Ansible,
        Step::Chef,
        Step::Tool,
    ];

    /// The template's section for this kind.
    fn section(self) -> &'static str {
        match self {
            Step::Service => "service",
            Step::Data => "data",
            Step::Shell => "shell",
            Step::File => "file",
            Step::Ansible => "ansible",
            Step::Chef => "chef",
            Step::Tool => "tool",
        }
    }

    /// This step rendered from `templates/bake-steps.sh.hbs` with `values`, its section's
    /// values (shell-quoted where the template writes them). Ansible, Chef and tool steps
    /// record a tool's version on the console for the manifest ([`tools`]) and in
    /// [`TOOLS_FILE`] for the image's own record.
    pub fn script(self, values: serde_json::Value) -> anyhow::Result<String> {
        let mut ctx = serde_json::json!({ "tool_marker": TOOL_MARKER, "tools_file": TOOLS_FILE });
        for step in Step::ALL {
            ctx[step.section()] = serde_json::Value::Null;
        }
        ctx[self.section()] = values;
        crate::render::render_script(crate::render::BAKE_STEPS, &ctx)
    }
}

/// The tools a bake's output recorded with [`record_tool`], as (name, version).
pub fn tools(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(TOOL_MARKER))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, version)| (name.to_string(), version.trim().to_string()))
        .collect()
}

/// The remote command that unpacks a bundle from standard input and runs it over SSH,
/// rendered from `templates/bake-ssh.sh.hbs`.
pub fn ssh_run_bundle() -> anyhow::Result<String> {
    crate::render::render_script(
        crate::render::BAKE_SSH,
        &serde_json::json!({ "bundle_dir": BUNDLE_DIR }),
    )
}

/// PID 1 of an offline bake, rendered from `templates/bake-init.sh.hbs`: applies the bundle on
/// the second disk and powers off.
pub fn init_script() -> anyhow::Result<String> {
    crate::render::render_script(
        crate::render::BAKE_INIT,
        &serde_json::json!({
            "bundle_dir": BUNDLE_DIR,
            "bundle_device": BUNDLE_DEVICE,
            "status_marker": STATUS_MARKER,
        }),
    )
}

/// Shell functions every bake script starts with: step markers, failures naming the step,
/// `SOURCE_DATE_EPOCH` for the tools that honour it (useradd's password dates, Python's
/// bytecode), and, offline, the network of QEMU's user mode (10.0.2.0/24) without DHCP;
/// rendered from `templates/bake-prelude.sh.hbs`.
pub fn prelude(source_date_epoch: u32) -> anyhow::Result<String> {
    crate::render::render_script(
        crate::render::BAKE_PRELUDE,
        &serde_json::json!({
            "bundle_dir": BUNDLE_DIR,
            "source_date_epoch": source_date_epoch.to_string(),
            "step_marker": STEP_MARKER,
            "failed_marker": FAILED_MARKER,
        }),
    )
}

/// The exit status the bake init reported on the console, if it got that far.
pub fn exit_status(console: &str) -> Option<i32> {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(STATUS_MARKER))
        .map(|s| s.trim().parse().unwrap_or(-1))
}

/// The step the bake script reported as failed (`NAME (exit N)`), if any.
pub fn failed_step(output: &str) -> Option<&str> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(FAILED_MARKER))
}

/// The output of the last step that started, at most its last 40 lines.
pub fn step_output(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.contains(STEP_MARKER))
        .map_or(0, |i| i + 1);
    let end = lines
        .iter()
        .rposition(|l| l.contains(FAILED_MARKER.trim_end()))
        .unwrap_or(lines.len());
    let part = &lines[start..end.max(start)];
    part[part.len().saturating_sub(40)..].join("\n")
}

pub use crate::render::sh_quote;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_kind_renders_valid_shell_with_each_value_quoted() {
        use serde_json::json;
        let steps = [
            (
                Step::Service,
                json!({ "dest": "/srv/it's", "install": "make install",
                "unit": "deploy/web.service", "unit_name": "web.service" }),
            ),
            (
                Step::Service,
                json!({ "dest": "/srv/web", "install": null, "unit": null,
                "unit_name": null }),
            ),
            (Step::Data, json!({ "dest": "/srv/$(reboot)" })),
            (
                Step::Shell,
                json!({ "label": "provisioners[0] (a.sh)", "index": "0" }),
            ),
            (
                Step::File,
                json!({ "label": "provisioners[1] (file /etc/x)", "index": "1",
                "dest": "/etc/x", "mode": "0600" }),
            ),
            (
                Step::Ansible,
                json!({ "label": "provisioners[2] (ansible site.yml)",
                "tool": "provisioners[2]", "guest_dir": "/run/bake/provisioners/2",
                "project": "/run/bake/provisioners/2/project",
                "env": [{ "name": "ANSIBLE_ROLES_PATH", "value": "$P/roles" }],
                "args": ["@/run/bake/provisioners/2/vars.json", "--tags", "a,b", "site.yml"] }),
            ),
            (
                Step::Chef,
                json!({ "label": "provisioners[3] (chef role[base])",
                "tool": "provisioners[3]", "guest_dir": "/run/bake/provisioners/3",
                "environment": "staging" }),
            ),
            (
                Step::Tool,
                json!({ "name": "provisioners[0]", "version": "it's 2.14" }),
            ),
        ];
        let mut script = prelude(1_700_000_000).unwrap();
        for (step, values) in steps {
            script += &step.script(values).unwrap();
        }
        crate::render::assert_valid_shell(&script);
        for expected in [
            "mkdir -p '/srv/it'\\''s' && tar -xf \"$B/service.tar\" -C '/srv/it'\\''s'",
            "(cd '/srv/it'\\''s' && sh -ec 'make install')",
            "systemctl enable 'web.service'",
            "-C '/srv/$(reboot)'",
            "install -m '0600' \"$B/provisioners/\"'1' '/etc/x'",
            // Ansible's environment expands $P; its arguments are quoted words.
            "env ANSIBLE_ROLES_PATH=\"$P/roles\" ansible-playbook -c local -i localhost, -e '@/run/bake/provisioners/2/vars.json' '--tags' 'a,b' 'site.yml'",
            "env ANSIBLE_ROLES_PATH=\"$P/roles\" ansible-playbook --version 2>&1",
            "--json-attributes \"$D/node.json\" --environment 'staging' --no-color",
            "v=$(echo 'it'\\''s 2.14' 2>&1",
        ] {
            assert!(script.contains(expected), "{expected} in:\n{script}");
        }
        assert_eq!(
            script.matches("service.install").count(),
            2,
            "one service with install"
        );
        let remote = ssh_run_bundle().unwrap();
        crate::render::assert_valid_shell(&remote);
        assert!(remote.contains("tar -xf - -C '/run/bake' && sh '/run/bake'/bake.sh"));
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r#"'it'\''s'"#);
    }

    /// How every line the bake prints starts.
    const OUTPUT_PREFIX: &str = "imgforge-bake: ";

    #[test]
    fn every_marker_starts_with_the_output_prefix() {
        for marker in [STATUS_MARKER, STEP_MARKER, FAILED_MARKER] {
            assert!(marker.starts_with(OUTPUT_PREFIX), "{marker}");
        }
    }

    #[test]
    fn the_console_is_read_with_the_markers_the_scripts_print() {
        let console = format!(
            "boot noise\n{STEP_MARKER}service\nunpacking\n{STEP_MARKER}data\ntar: short read\n\
             {FAILED_MARKER}data: unpack into '/srv' (exit 2)\n{STATUS_MARKER}2\n"
        );
        assert_eq!(exit_status(&console), Some(2));
        assert_eq!(
            failed_step(&console),
            Some("data: unpack into '/srv' (exit 2)")
        );
        assert_eq!(step_output(&console), "tar: short read");
        assert_eq!(exit_status("no marker"), None);
        // The scripts print exactly the markers read back here.
        let prelude = prelude(0).unwrap();
        assert!(prelude.contains(&format!("echo {}\"$1\"", sh_quote(STEP_MARKER))));
        assert!(prelude.contains(&format!("echo {}\"$1 (exit $2)\"", sh_quote(FAILED_MARKER))));
        let init = init_script().unwrap();
        assert!(init.contains(&format!("echo {}\"$rc\"", sh_quote(STATUS_MARKER))));
        crate::render::assert_valid_shell(&prelude);
        crate::render::assert_valid_shell(&init);
    }
}
