//! Ansible playbooks in the bake. With `runner = "image"` the image's own `ansible-playbook`
//! (Debian's `ansible-core`) runs the playbook with a local connection: offline under the bake
//! init, or in the booted image over SSH. With `runner = "host"` the host's `ansible-playbook`
//! connects to the booted build VM over SSH. Either way Ansible's home and temporary files stay
//! in the bundle's directory (a tmpfs), so nothing of Ansible is left in the image.

use crate::bake_protocol::{Step, BUNDLE_DIR};
use crate::definition::{AnsibleProvisioner, Definition};
use crate::process::Command;
use crate::spec::BakeSpec;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};

/// How a provisioner's steps and failures are named: `provisioners[0] (ansible site.yml)`.
pub fn label(index: usize, a: &AnsibleProvisioner) -> String {
    format!("provisioners[{index}] (ansible {})", a.playbook.display())
}

/// Stages playbook `a` into `staged` (its directory in the bundle), its project checked
/// against the digest the bake id covers, and returns the bake step that runs it in the image.
pub fn stage_in_image(
    spec: &BakeSpec,
    index: usize,
    a: &AnsibleProvisioner,
    staged: &Path,
) -> Result<String> {
    fs::create_dir_all(staged)?;
    fs::write(staged.join("vars.json"), serde_json::to_vec(&a.extra_vars)?)?;
    let guest_dir = format!("{BUNDLE_DIR}/provisioners/{index}");
    let project = match (a.in_service, &spec.service) {
        (true, Some(service)) => {
            let parent = a.playbook.parent().unwrap_or(Path::new(""));
            format!(
                "{}/{}",
                service.dest.trim_end_matches('/'),
                parent.display()
            )
        }
        (true, None) => bail!(
            "{}: field `provisioners[{index}].in_service`: there is no [service]",
            spec.file.display()
        ),
        (false, _) => {
            stage_project(spec, index, a, &staged.join("project"))?;
            format!("{guest_dir}/project")
        }
    };
    let mut args = vec![format!("@{guest_dir}/vars.json")];
    args.extend(playbook_args(a));
    let env: Vec<_> = environment(a, "$P", "$D")
        .into_iter()
        .chain([("ANSIBLE_REMOTE_TEMP", "$D/tmp".to_string())])
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    Step::Ansible.script(json!({
        "label": label(index, a),
        "tool": format!("provisioners[{index}]"),
        "guest_dir": guest_dir,
        "project": project,
        "env": env,
        "args": args,
    }))
}

/// Copies playbook `a`'s project to `to` and checks the copy against the digest the bake id
/// covers: the playbook runs from that copy, never from files changed since.
fn stage_project(spec: &BakeSpec, index: usize, a: &AnsibleProvisioner, to: &Path) -> Result<()> {
    crate::sources::copy_tree(&spec.file.ansible_project(a), to).with_context(|| {
        format!(
            "{}: field `provisioners[{index}].playbook`",
            spec.file.display()
        )
    })?;
    spec.check_staged(index, "project", to)
}

/// The arguments that pick what `ansible-playbook` runs: `--tags` when the definition names
/// tags, then the playbook (its file name: the run is in its directory).
fn playbook_args(a: &AnsibleProvisioner) -> Vec<String> {
    let mut args = Vec::new();
    if !a.tags.is_empty() {
        args.extend(["--tags".to_string(), a.tags.join(",")]);
    }
    args.push(
        a.playbook
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    );
    args
}

/// Ansible's settings for a run in `project` whose own files stay under `scratch`: no colour,
/// no retry files, a UTF-8 locale (Ansible refuses others), roles and collections from the
/// project.
fn environment(
    a: &AnsibleProvisioner,
    project: &str,
    scratch: &str,
) -> Vec<(&'static str, String)> {
    let roles: Vec<String> = std::iter::once(format!("{project}/roles"))
        .chain(
            a.roles_path
                .iter()
                .map(|r| format!("{project}/{}", r.display())),
        )
        .collect();
    vec![
        ("LC_ALL", "C.UTF-8".to_string()),
        ("ANSIBLE_HOME", format!("{scratch}/home")),
        ("ANSIBLE_LOCAL_TEMP", format!("{scratch}/tmp")),
        ("ANSIBLE_NOCOLOR", "1".to_string()),
        ("ANSIBLE_RETRY_FILES_ENABLED", "0".to_string()),
        ("ANSIBLE_ROLES_PATH", roles.join(":")),
        ("ANSIBLE_COLLECTIONS_PATH", format!("{project}/collections")),
    ]
}

/// Where the host's Ansible reaches the build VM.
pub struct SshTarget<'a> {
    /// The forwarded SSH port on 127.0.0.1.
    pub port: u16,
    /// The base's build key.
    pub key: &'a Path,
}

/// What a playbook run from the host printed, and the version of Ansible that ran it.
pub struct HostRun {
    /// Everything `ansible-playbook` printed.
    pub output: String,
    /// `ansible-playbook --version`, first line.
    pub version: String,
}

/// Runs playbook `a` with the host's `ansible-playbook` against the build VM; `scratch` is a
/// directory of the build for Ansible's own files. A failure names the task that failed.
pub fn run_from_host(
    spec: &BakeSpec,
    index: usize,
    a: &AnsibleProvisioner,
    vm: &SshTarget,
    scratch: &Path,
) -> Result<HostRun> {
    let version = Command::new("ansible-playbook")
        .arg("--version")
        .run()
        .context("runner = \"host\" needs ansible-playbook on this machine (Debian: apt install ansible-core)")?
        .text()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    fs::create_dir_all(scratch)?;
    let vars = scratch.join("vars.json");
    fs::write(&vars, serde_json::to_vec(&a.extra_vars)?)?;
    let project = scratch.join("project");
    stage_project(spec, index, a, &project)?;
    let mut cmd = Command::new("ansible-playbook")
        .current_dir(&project)
        .args(["-i", "127.0.0.1,", "-u", "root", "-e"])
        .arg(format!("ansible_port={}", vm.port))
        .arg("--private-key")
        .arg(vm.key)
        .arg("-e")
        .arg(format!("@{}", vars.display()))
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_REMOTE_TEMP", "/run/imgforge-ansible")
        .env(
            "ANSIBLE_SSH_ARGS",
            "-o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
        );
    for (key, value) in environment(a, &project.to_string_lossy(), &scratch.to_string_lossy()) {
        cmd = cmd.env(key, &value);
    }
    let (code, out) = cmd.args(playbook_args(a)).run_unchecked()?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if code != 0 {
        bail!(
            "{}: {} failed at task {} (exit status {code}); its output:\n{}",
            spec.file.display(),
            label(index, a),
            failed_task(&output).unwrap_or("(none started)"),
            crate::process::tail_lines(&output, 30)
        );
    }
    Ok(HostRun { output, version })
}

/// (key, what is wrong) for the files playbook `a` needs on this machine: the playbook, its
/// roles directories, and vendored in its project what its requirements file names. (A
/// playbook in the service repository comes with the service.)
pub fn file_problems(def: &Definition, a: &AnsibleProvisioner) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if a.in_service {
        return problems;
    }
    let playbook = def.resolve(&a.playbook);
    if !playbook.is_file() {
        problems.push(("playbook", format!("{} does not exist", playbook.display())));
        return problems;
    }
    let project = &def.file().ansible_project(a);
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

/// The last task Ansible started, from its `TASK [name] ****` lines.
fn failed_task(output: &str) -> Option<&str> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TASK ["))
        .filter_map(|l| l.rsplit_once(']').map(|(name, _)| name))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_task_is_the_last_one_ansible_started() {
        let output = "PLAY [web] ****\n\nTASK [webpage : install] ****\nok: [x]\n\nTASK [webpage : break on purpose] ********\nfatal: [x]: FAILED! => {}\n";
        assert_eq!(failed_task(output), Some("webpage : break on purpose"));
        assert_eq!(failed_task("ERROR! the playbook could not be found"), None);
    }
}
