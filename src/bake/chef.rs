//! Chef run lists in the bake: imgforge stages the cookbooks (with roles and environments),
//! writes the client's configuration (`solo.rb`) and the node file (`node.json`: run list and
//! attributes), runs the Chef client the image has (`chef-solo`, or `cinc-client
//! --local-mode`), and removes what it wrote. A failed converge names the failing resource.

use crate::bake_protocol::{Step, BUNDLE_DIR};
use crate::definition::{ChefProvisioner, ChefRunItem, Definition};
use crate::spec::BakeSpec;
use anyhow::{Context, Result};
use serde_json::json;
use std::fs;
use std::path::Path;

/// How a provisioner's steps and failures are named: `provisioners[1] (chef recipe[web::default])`.
pub fn label(index: usize, c: &ChefProvisioner) -> String {
    format!("provisioners[{index}] (chef {})", run_list(c).join(", "))
}

/// The run list as Chef writes it (`recipe[cookbook::recipe]`, `role[name]`).
fn run_list(c: &ChefProvisioner) -> Vec<String> {
    c.run_list
        .iter()
        .map(|e| ChefRunItem::parse(e).map_or(e.clone(), |i| i.canonical()))
        .collect()
}

/// Stages cookbooks, roles and environments, `solo.rb` and `node.json` into `staged` (the
/// provisioner's directory in the bundle) and returns the bake step that converges them.
/// Each tree is checked against the digest the bake id covers.
pub fn stage(spec: &BakeSpec, index: usize, c: &ChefProvisioner, staged: &Path) -> Result<String> {
    fs::create_dir_all(staged)?;
    let trees = [
        ("cookbooks", Some(&c.cookbooks)),
        ("roles", c.roles.as_ref()),
        ("environments", c.environments.as_ref()),
    ];
    for (name, dir) in trees {
        if let Some(dir) = dir {
            crate::sources::copy_tree(&spec.file.resolve(dir), &staged.join(name)).with_context(
                || {
                    format!(
                        "{}: field `provisioners[{index}].{name}`",
                        spec.file.display()
                    )
                },
            )?;
            spec.check_staged(index, name, &staged.join(name))?;
        }
    }
    let guest_dir = format!("{BUNDLE_DIR}/provisioners/{index}");
    fs::write(staged.join("solo.rb"), solo_rb(&guest_dir))?;
    let mut node = json!({ "run_list": run_list(c) });
    for (key, value) in &c.attributes {
        node[key] = serde_json::to_value(value)?;
    }
    fs::write(staged.join("node.json"), serde_json::to_vec_pretty(&node)?)?;
    Step::Chef.script(json!({
        "label": label(index, c),
        "tool": format!("provisioners[{index}]"),
        "guest_dir": guest_dir,
        "environment": c.environment,
    }))
}

/// (key, what is wrong) for the files Chef run list `c` needs on this machine: the cookbooks,
/// each run-list entry's recipe or role, and the environment.
pub fn file_problems(def: &Definition, c: &ChefProvisioner) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let cookbooks = def.resolve(&c.cookbooks);
    if !cookbooks.is_dir() {
        problems.push((
            "cookbooks",
            format!("{} is not a directory", cookbooks.display()),
        ));
        return problems;
    }
    let roles = c.roles.as_ref().map(|r| def.resolve(r));
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
        (Some(env), Some(dir)) if !chef_named_file(&def.resolve(dir), env) => problems.push((
            "environment",
            format!(
                "no {env}.json or {env}.rb in {}",
                def.resolve(dir).display()
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

/// Whether `dir` holds `NAME.json` or `NAME.rb`, as Chef roles and environments are stored.
fn chef_named_file(dir: &Path, name: &str) -> bool {
    ["json", "rb"]
        .iter()
        .any(|ext| dir.join(format!("{name}.{ext}")).is_file())
}

/// The client's configuration: everything it reads and writes stays under `dir`.
fn solo_rb(dir: &str) -> String {
    format!(
        r#"chef_repo_path "{dir}"
cookbook_path ["{dir}/cookbooks"]
role_path "{dir}/roles"
environment_path "{dir}/environments"
node_path "{dir}/nodes"
file_cache_path "{dir}/cache"
file_backup_path "{dir}/backup"
log_location STDOUT
"#
    )
}
