//! Chef run lists in the bake: imgforge stages the cookbooks (with roles and environments),
//! writes the client's configuration (`solo.rb`) and the node file (`node.json`: run list and
//! attributes), runs the Chef client the image has (`chef-solo`, or `cinc-client
//! --local-mode`), and removes what it wrote. A failed converge names the failing resource.

use crate::bake_protocol::{self, sh_quote, BUNDLE_DIR};
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
    let label = sh_quote(&label(index, c));
    let environment = c
        .environment
        .as_ref()
        .map(|e| format!(" --environment {}", sh_quote(e)))
        .unwrap_or_default();
    Ok(format!(
        r#"step {label}
D={guest_dir}
if command -v chef-solo >/dev/null 2>&1; then client=chef-solo
elif command -v cinc-client >/dev/null 2>&1; then client="cinc-client --local-mode"
else fail {label}': no Chef client in the image: neither chef-solo nor cinc-client is on PATH (install one in an earlier provisioner or in the base)' 127
fi
{record}{run}[ "$rc" = 0 ] || fail {label}": resource $(sed -n "s/.*on resource '\(.*\)'.*/\1/p" "$D/log" | head -n1)" "$rc"
rm -rf "$D"
"#,
        record = bake_protocol::record_tool(&format!("provisioners[{index}]"), "$client --version"),
        run = bake_protocol::run_logged(&format!(
            "env CHEF_LICENSE=accept-no-persist $client --config \"$D/solo.rb\" --json-attributes \"$D/node.json\"{environment} --no-color --force-formatter"
        )),
    ))
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
