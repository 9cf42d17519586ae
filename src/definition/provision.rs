//! What the bake puts in the image: the service, the data snapshot and the provisioners.

use super::values::GuestPath;
use super::Artifact;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[service]`: the service layer, a git repository at a pinned commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Repository URL or local path (relative to the definition).
    pub repo: String,
    /// Branch, tag or commit; resolved to a commit at build time.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Sub-directory of the repository to install (default: all of it).
    #[serde(default)]
    pub subdir: Option<String>,
    /// Where the service is installed in the image.
    pub dest: GuestPath,
    /// Command run in the image after the files are in place (cwd = `dest`).
    #[serde(default)]
    pub install: Option<String>,
    /// Path, inside the service tree, of a systemd unit to install and enable.
    #[serde(default)]
    pub unit: Option<String>,
}

/// `[data]`: the data snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "DataSnapshotFields", into = "DataSnapshotFields")]
pub struct DataSnapshot {
    /// Where the data comes from.
    pub source: DataSource,
    /// Where the data is unpacked in the image.
    pub dest: GuestPath,
}

/// Where a data snapshot comes from (in TOML, exactly one of `tarball` and `git`).
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A tarball pinned by sha256.
    Tarball(Artifact),
    /// A git repository (`repo`, `ref`).
    Git(GitSource),
}

/// A [`DataSnapshot`] as the TOML writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSnapshotFields {
    #[serde(default)]
    tarball: Option<Artifact>,
    #[serde(default)]
    git: Option<GitSource>,
    dest: GuestPath,
}

impl TryFrom<DataSnapshotFields> for DataSnapshot {
    type Error = &'static str;
    fn try_from(f: DataSnapshotFields) -> Result<DataSnapshot, Self::Error> {
        let source = match (f.tarball, f.git) {
            (Some(tarball), None) => DataSource::Tarball(tarball),
            (None, Some(git)) => DataSource::Git(git),
            _ => return Err("give exactly one of `tarball` or `git`"),
        };
        Ok(DataSnapshot {
            source,
            dest: f.dest,
        })
    }
}

impl From<DataSnapshot> for DataSnapshotFields {
    fn from(d: DataSnapshot) -> DataSnapshotFields {
        let (tarball, git) = match d.source {
            DataSource::Tarball(t) => (Some(t), None),
            DataSource::Git(g) => (None, Some(g)),
        };
        DataSnapshotFields {
            tarball,
            git,
            dest: d.dest,
        }
    }
}

/// A git repository and ref.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Repository URL or local path.
    pub repo: String,
    /// Branch, tag or commit.
    #[serde(rename = "ref")]
    pub git_ref: String,
}

/// `[[provisioners]]`: extra bake steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Provisioner {
    /// A shell script run as root in the image.
    Shell {
        /// Script path, relative to the definition.
        script: PathBuf,
        /// Run it over SSH in the booted image instead of offline.
        #[serde(default)]
        needs_running_system: bool,
    },
    /// A file copied into the image.
    File {
        /// Source path, relative to the definition.
        source: PathBuf,
        /// Absolute destination path in the image.
        dest: GuestPath,
        /// Octal mode (`"0644"`).
        #[serde(default)]
        mode: Option<String>,
    },
    /// An Ansible playbook applied to the image.
    Ansible(AnsibleProvisioner),
    /// A Chef run list converged in the image by `chef-solo` or `cinc-client`.
    Chef(ChefProvisioner),
}

impl Provisioner {
    /// Whether it runs over SSH in the booted image instead of offline.
    pub fn needs_running_system(&self) -> bool {
        match self {
            Provisioner::Shell {
                needs_running_system,
                ..
            } => *needs_running_system,
            Provisioner::File { .. } => false,
            Provisioner::Ansible(a) => a.needs_running_system,
            Provisioner::Chef(c) => c.needs_running_system,
        }
    }
}

/// `type = "ansible"`: a playbook, with the project directory around it (roles, templates,
/// group vars) staged into the image. Nothing is downloaded: roles and collections named in
/// `requirements` must be vendored next to the playbook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnsibleProvisioner {
    /// The playbook, relative to the definition (its directory is staged whole), or to the
    /// service tree with `in_service = true`.
    pub playbook: PathBuf,
    /// The playbook is in the service repository, already unpacked at `service.dest`.
    #[serde(default)]
    pub in_service: bool,
    /// Extra variables (`--extra-vars`), as a table.
    #[serde(default)]
    pub extra_vars: BTreeMap<String, toml::Value>,
    /// Only tasks with these tags (`--tags`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Role directories, relative to the playbook's directory (besides its own `roles/`).
    #[serde(default)]
    pub roles_path: Vec<PathBuf>,
    /// A requirements file (relative to the playbook's directory) whose roles and collections
    /// must all be vendored: in the roles path, or under `collections/ansible_collections/`.
    #[serde(default)]
    pub requirements: Option<PathBuf>,
    /// Which Ansible runs the playbook.
    #[serde(default)]
    pub runner: AnsibleRunner,
    /// Run it in the booted image (over SSH) instead of offline.
    #[serde(default)]
    pub needs_running_system: bool,
}

/// Which Ansible runs a playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnsibleRunner {
    /// Debian's `ansible-core`, installed in the base for the bake (and purged after it unless
    /// `system.packages` names it), runs the playbook in the image with a local connection.
    #[default]
    Image,
    /// The host's `ansible-playbook` connects over SSH (needs `needs_running_system = true` and
    /// python3 in the image).
    Host,
}

/// `type = "chef"`: a run list converged from vendored cookbooks with the Chef client found in
/// the image (`chef-solo`, or `cinc-client --local-mode`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChefProvisioner {
    /// Directory of cookbooks, relative to the definition.
    pub cookbooks: PathBuf,
    /// The run list: `recipe[cookbook::recipe]`, `cookbook::recipe`, `cookbook` or `role[name]`.
    pub run_list: Vec<String>,
    /// Node attributes (the JSON attributes file), as a table.
    #[serde(default)]
    pub attributes: BTreeMap<String, toml::Value>,
    /// Directory of roles (`NAME.json` or `NAME.rb`), relative to the definition.
    #[serde(default)]
    pub roles: Option<PathBuf>,
    /// The Chef environment to converge in; needs `environments`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Directory of environments (`NAME.json` or `NAME.rb`), relative to the definition.
    #[serde(default)]
    pub environments: Option<PathBuf>,
    /// Run it in the booted image (over SSH) instead of offline.
    #[serde(default)]
    pub needs_running_system: bool,
}

/// One entry of a Chef run list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChefRunItem {
    /// `recipe[cookbook::recipe]`, `cookbook::recipe` or `cookbook` (its `default` recipe).
    Recipe {
        /// The cookbook's directory name.
        cookbook: String,
        /// The recipe file's name without `.rb`.
        recipe: String,
    },
    /// `role[name]`.
    Role(String),
}

impl ChefRunItem {
    /// Parses a run-list entry; `None` for anything else.
    pub fn parse(entry: &str) -> Option<ChefRunItem> {
        let plain =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || "_-".contains(c));
        if let Some(name) = entry
            .strip_prefix("role[")
            .and_then(|r| r.strip_suffix(']'))
        {
            return plain(name).then(|| ChefRunItem::Role(name.to_string()));
        }
        let name = entry
            .strip_prefix("recipe[")
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(entry);
        let (cookbook, recipe) = name.split_once("::").unwrap_or((name, "default"));
        (plain(cookbook) && plain(recipe)).then(|| ChefRunItem::Recipe {
            cookbook: cookbook.to_string(),
            recipe: recipe.to_string(),
        })
    }

    /// The entry as Chef writes it in a node's run list.
    pub fn canonical(&self) -> String {
        match self {
            ChefRunItem::Recipe { cookbook, recipe } => format!("recipe[{cookbook}::{recipe}]"),
            ChefRunItem::Role(name) => format!("role[{name}]"),
        }
    }
}
