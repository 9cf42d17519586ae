//! Chef run lists in the bake: imgforge stages the cookbooks (with roles and environments),
//! writes the client's configuration (`solo.rb`) and the node file (`node.json`: run list and
//! attributes), runs the Chef client the image has (`chef-solo`, or `cinc-client
//! --local-mode`), and removes what it wrote. A failed converge names the failing resource.

use crate::bake_protocol::{Step, BUNDLE_DIR};
use crate::definition::{ChefProvisioner, ChefRunItem, Definition};
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
pub fn stage(def: &Definition, index: usize, c: &ChefProvisioner, staged: &Path) -> Result<String> {
    fs::create_dir_all(staged)?;
    let trees = [
        ("cookbooks", Some(&c.cookbooks)),
        ("roles", c.roles.as_ref()),
        ("environments", c.environments.as_ref()),
    ];
    for (name, dir) in trees {
        if let Some(dir) = dir {
            crate::sources::copy_tree(&def.resolve(dir), &staged.join(name)).with_context(
                || {
                    format!(
                        "{}: field `provisioners[{index}].{name}`",
                        def.path.display()
                    )
                },
            )?;
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
