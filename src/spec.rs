//! The stages' inputs, derived once from a definition and what was resolved for it: a
//! [`BaseSpec`] for the base stage, a [`BakeSpec`] for the bake and the seal, an
//! [`OutputSpec`] for export. Each stage receives its spec, never the definition.
//!
//! A layer's id is the digest of its spec's canonical JSON, so a field a stage reads is an
//! input of its id by construction. What a stage needs that does not shape its layer's bytes
//! (the build VM's size and timeouts, where the definition file lives) is `#[serde(skip)]`,
//! each with its reason.

use crate::canonical::digest;
use crate::definition::{
    Builder, BuilderKind, Definition, DefinitionFile, DiskFormat, Firmware, GuestPath, Initramfs,
    Machine, Os, OsFamily, Provisioner, System,
};
use crate::disk::Layout;
use crate::lock::ResolvedPackages;
use crate::render::AnswerFile;
use crate::sources::{sha256_file, tree_digest, ResolvedData};
use anyhow::{bail, Context, Result};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::Path;

/// What a cached base records and holds: bases of another layout are not reused.
const BASE_LAYOUT: u32 = 8;
/// What the bake runs and writes: bake layers of another layout are not reused.
const BAKE_LAYOUT: u32 = 4;

/// The image's name and version: baked into `/etc/imgforge/build.json`, and in the names of
/// its artifacts.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSpec {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
}

/// The disk a base is assembled on.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiskSpec {
    /// Size in bytes.
    pub size: u64,
    /// Boot firmware (partition table and boot loader).
    pub firmware: Firmware,
    /// Which initramfs the base's kernel gets.
    pub initramfs: Initramfs,
}

/// The base stage's input: the OS, its settings, its package set and how it is made.
#[derive(Debug, Clone, Serialize)]
pub struct BaseSpec {
    imgforge: &'static str,
    layout: u32,
    /// Every timestamp in the image is clamped to this.
    pub source_date_epoch: u32,
    /// How the base is made (the installer builder with its media, pinned by sha256).
    pub builder: Builder,
    /// The OS family and release.
    pub os: Os,
    /// The disk.
    pub disk: DiskSpec,
    /// The installed system's settings; where the package set is resolved, without the
    /// packages asked for (`system.packages`, a repository's `packages`): the set they
    /// resolve to is the input, so two requests for the same set share a base.
    pub system: System,
    /// The answer file (installer builder).
    pub answer: Option<AnswerSpec>,
    /// The templates of the scripts run in the tree while it is made (rootfs builder).
    guest_scripts: Vec<String>,
    /// The package sources and the exact package set (Debian family): name, version,
    /// architecture and sha256 of every package, so a new version is a new base and a
    /// re-signed index with the same packages is not.
    #[serde(serialize_with = "package_identity")]
    pub packages: Option<ResolvedPackages>,
    /// The build VM (the installer runs in it): its size and timeouts do not shape the base.
    #[serde(skip)]
    pub vm: Machine,
    /// Where the definition is.
    #[serde(skip)]
    pub file: DefinitionFile,
}

/// The answer file the installer fetches, and its template.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerSpec {
    /// File name the installer asks for.
    pub file_name: &'static str,
    /// The rendered text.
    pub text: String,
    /// The template's text.
    pub template: String,
}

fn package_identity<S: Serializer>(
    packages: &Option<ResolvedPackages>,
    s: S,
) -> Result<S::Ok, S::Error> {
    packages
        .as_ref()
        .map(ResolvedPackages::identity)
        .serialize(s)
}

impl BaseSpec {
    /// Its layer id.
    pub fn id(&self) -> String {
        id_of(self)
    }

    /// The resolved package set: the rootfs builder installs exactly it.
    pub fn package_set(&self) -> Result<&ResolvedPackages> {
        self.packages
            .as_ref()
            .context("the rootfs builder needs the resolved package set")
    }

    /// The base's lineage: its id without the package set. Two rootfs bases of one lineage
    /// differ only in the packages installed, so one can be patched into the other (see
    /// `base::patch`).
    pub fn lineage(&self) -> String {
        let mut spec = self.clone();
        spec.packages = spec.packages.as_ref().map(ResolvedPackages::without_set);
        spec.id()
    }

    /// The disk the base's tree is assembled on.
    pub fn layout(&self) -> Layout {
        Layout {
            size: self.disk.size,
            firmware: self.disk.firmware,
            epoch: self.source_date_epoch,
        }
    }
}

/// The bake stage's input: what it puts on the base, and how.
#[derive(Debug, Clone, Serialize)]
pub struct BakeSpec {
    layout: u32,
    guest_scripts: Vec<String>,
    /// The base layer's id.
    pub base: String,
    /// The image's name and version, written into `/etc/imgforge/build.json`.
    pub image: ImageSpec,
    /// The OS family (the image's hygiene).
    pub family: OsFamily,
    /// Every timestamp in the image is clamped to this.
    pub source_date_epoch: u32,
    /// The service at its commit.
    pub service: Option<ServiceSpec>,
    /// The data snapshot.
    pub data: Option<DataSpec>,
    /// The provisioners, in order, with the digests of what they stage.
    pub provisioners: Vec<ProvisionerSpec>,
    /// How an instance takes its keys, hostname and user data.
    pub cloud: CloudSpec,
    /// Packages the base holds only for the bake, purged after it.
    pub purge: Vec<&'static str>,
    /// The build VM (and whether the offline bake may run in a chroot): how the bake runs,
    /// not what it writes.
    #[serde(skip)]
    pub vm: Machine,
    /// Where the definition is.
    #[serde(skip)]
    pub file: DefinitionFile,
}

/// The service at its commit.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSpec {
    /// The full commit id.
    pub commit: String,
    /// The sub-directory installed.
    pub subdir: Option<String>,
    /// Where it goes in the image.
    pub dest: GuestPath,
    /// Its install command.
    pub install: Option<String>,
    /// Its systemd unit, inside its tree.
    pub unit: Option<String>,
    /// The repository as written, for the provenance: a mirror of the same commit bakes the
    /// same layer.
    #[serde(skip)]
    pub repo: String,
    /// Where git finds it on this machine.
    #[serde(skip)]
    pub location: String,
}

/// The data snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct DataSpec {
    /// The tarball's sha256 or the git commit.
    pub digest: String,
    /// Where it is unpacked in the image.
    pub dest: GuestPath,
    /// The verified snapshot on this machine.
    #[serde(skip)]
    pub resolved: ResolvedData,
}

/// A provisioner and the digests of what it stages, by field (`script`, `source`,
/// `project`, `cookbooks`, `roles`, `environments`): the bake checks each staged copy
/// against them, so a file changed after the id was computed is refused, never baked.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisionerSpec {
    /// Its settings as written.
    pub settings: Provisioner,
    /// Digest of each file or tree it stages.
    pub contents: BTreeMap<&'static str, String>,
}

/// How an instance takes its keys, hostname and user data where it runs.
#[derive(Debug, Clone, Serialize)]
pub struct CloudSpec {
    /// cloud-init is set up in the image.
    pub init: bool,
    /// The user the metadata's SSH keys go to.
    pub user: String,
    /// Its EC2 datasource also asks a private EC2-compatible cloud (Eucalyptus).
    pub private_ec2: bool,
}

impl CloudSpec {
    /// The cloud settings of `def`, with their defaults.
    pub fn of(def: &Definition) -> CloudSpec {
        CloudSpec {
            init: def.cloud_init(),
            user: def.cloud_user().to_string(),
            private_ec2: def.cloud_private_ec2(),
        }
    }
}

impl BakeSpec {
    /// Its layer id.
    pub fn id(&self) -> String {
        id_of(self)
    }

    /// The digest the bake id covers for the `field` of provisioner `index`.
    fn staged_digest(&self, index: usize, field: &str) -> Option<&str> {
        self.provisioners
            .get(index)?
            .contents
            .get(field)
            .map(String::as_str)
    }

    /// Checks that `staged` (a file or a tree the bake copied for provisioner `index`'s
    /// `field`) is what the id covers: a file changed after the id was computed is refused.
    pub fn check_staged(&self, index: usize, field: &str, staged: &Path) -> Result<()> {
        let found = match staged.is_dir() {
            true => tree_digest(staged)?,
            false => sha256_file(staged)?,
        };
        self.check_digest(index, field, &found)
    }

    /// Checks that `bytes`, read once for provisioner `index`'s `field` and used as read, are
    /// what the id covers.
    pub fn check_bytes(&self, index: usize, field: &str, bytes: &[u8]) -> Result<()> {
        use sha2::Digest;
        self.check_digest(index, field, &hex::encode(sha2::Sha256::digest(bytes)))
    }

    fn check_digest(&self, index: usize, field: &str, found: &str) -> Result<()> {
        let Some(expected) = self.staged_digest(index, field) else {
            bail!("provisioners[{index}].{field} has no digest in the bake id");
        };
        if found != expected {
            bail!(
                "{}: field `provisioners[{index}].{field}` changed after the build computed its \
                 id (sha256 {found}, not {expected}): nothing was baked from it; run the build \
                 again",
                self.file.display()
            );
        }
        Ok(())
    }
}

/// Export's input: the formats, and what the artifacts' names and the Vagrant box hold.
#[derive(Debug, Clone, Serialize)]
pub struct OutputSpec {
    /// The bake layer's id.
    pub bake: String,
    /// The image's name and version: the artifacts' names.
    pub image: ImageSpec,
    /// The formats written.
    pub formats: Vec<DiskFormat>,
    /// Compressed qcow2 and box.
    pub compress: bool,
    /// Where a Vagrant box is served from.
    pub box_url: Option<String>,
    /// The Vagrant box's machine (when a box is written).
    pub box_machine: Option<BoxMachine>,
    /// The disk a Vagrant box's disk is written on.
    pub disk: Layout,
    /// The OS family (where a Vagrant box's user is added).
    pub family: OsFamily,
    /// Describes the box in its catalogue, which is dated by each build anyway.
    #[serde(skip)]
    pub description: Option<String>,
}

/// The machine a Vagrant box's `Vagrantfile` gives a project by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BoxMachine {
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
}

impl OutputSpec {
    /// Its id: the build id.
    pub fn id(&self) -> String {
        id_of(self)
    }
}

/// The id of `spec`: the digest of its canonical JSON.
fn id_of(spec: &impl Serialize) -> String {
    digest(&serde_json::to_value(spec).expect("a spec serialises"))
}

/// The three specs of one build.
#[derive(Debug, Clone)]
pub struct Specs {
    /// The base stage's.
    pub base: BaseSpec,
    /// The bake's (and the seal's).
    pub bake: BakeSpec,
    /// Export's.
    pub output: OutputSpec,
}

impl Specs {
    /// Renders the answer file, resolves the package set (from the lock, else the archive),
    /// the service and the data of `def` (before any VM starts), and derives the specs.
    pub fn derive(def: &Definition) -> Result<Specs> {
        let answer = crate::render::render(def)?;
        let packages = crate::lock::packages(def, true)?;
        Specs::from_resolved(def, &answer, packages)
    }

    /// The specs of `def` with its answer file and package set.
    pub fn from_resolved(
        def: &Definition,
        answer: &AnswerFile,
        packages: Option<ResolvedPackages>,
    ) -> Result<Specs> {
        let base = base_spec(def, answer, packages)?;
        let bake = bake_spec(def, base.id())?;
        let output = output_spec(def, bake.id(), base.layout());
        Ok(Specs { base, bake, output })
    }
}

fn image_of(def: &Definition) -> ImageSpec {
    ImageSpec {
        name: def.image.name.0.clone(),
        version: def.image.version.clone(),
    }
}

fn base_spec(
    def: &Definition,
    answer: &AnswerFile,
    packages: Option<ResolvedPackages>,
) -> Result<BaseSpec> {
    let (answer, guest_scripts) = match def.builder.kind() {
        BuilderKind::Rootfs => (
            None,
            vec![
                crate::render::script_template(crate::render::ROOTFS_CUSTOMIZE)?,
                crate::render::script_template(crate::render::ROOTFS_INITRAMFS)?,
                crate::render::script_template(crate::render::BAKE_INIT)?,
            ],
        ),
        BuilderKind::Installer => (
            Some(AnswerSpec {
                file_name: answer.file_name,
                text: answer.text.clone(),
                template: answer.template_text.clone(),
            }),
            Vec::new(),
        ),
    };
    let mut system = def.system.clone();
    if packages.is_some() {
        system.packages.clear();
        for repository in &mut system.repositories {
            repository.packages.clear();
        }
    }
    Ok(BaseSpec {
        imgforge: env!("CARGO_PKG_VERSION"),
        layout: BASE_LAYOUT,
        source_date_epoch: def.source_date_epoch(),
        builder: def.builder.clone(),
        os: def.os.clone(),
        disk: DiskSpec {
            size: def.machine.disk_size.0,
            firmware: def.machine.firmware,
            initramfs: def.machine.initramfs,
        },
        system,
        answer,
        guest_scripts,
        packages,
        vm: def.machine.clone(),
        file: def.file(),
    })
}

fn bake_spec(def: &Definition, base: String) -> Result<BakeSpec> {
    let service = def
        .service
        .as_ref()
        .map(|s| {
            let resolved = crate::sources::resolve_service(def, s)?;
            anyhow::Ok(ServiceSpec {
                commit: resolved.commit,
                subdir: s.subdir.clone(),
                dest: s.dest.clone(),
                install: s.install.clone(),
                unit: s.unit.clone(),
                repo: s.repo.clone(),
                location: resolved.location,
            })
        })
        .transpose()?;
    let data = def
        .data
        .as_ref()
        .map(|d| {
            let resolved = crate::sources::resolve_data(def, d)?;
            anyhow::Ok(DataSpec {
                digest: resolved.digest().to_string(),
                dest: d.dest.clone(),
                resolved,
            })
        })
        .transpose()?;
    let provisioners = def
        .provisioners
        .iter()
        .map(|p| provisioner_spec(def, p))
        .collect::<Result<Vec<_>>>()?;
    Ok(BakeSpec {
        layout: BAKE_LAYOUT,
        guest_scripts: vec![
            crate::render::script_template(crate::render::BAKE_PRELUDE)?,
            crate::render::script_template(crate::render::BAKE_STEPS)?,
            crate::render::script_template(crate::render::BAKE_HYGIENE)?,
        ],
        base,
        image: image_of(def),
        family: def.os.family,
        source_date_epoch: def.source_date_epoch(),
        service,
        data,
        provisioners,
        cloud: CloudSpec::of(def),
        purge: def.bake_only_packages(),
        vm: def.machine.clone(),
        file: def.file(),
    })
}

/// A provisioner with the digest of every file and tree it stages.
fn provisioner_spec(def: &Definition, p: &Provisioner) -> Result<ProvisionerSpec> {
    let file = |path: &Path| sha256_file(&def.resolve(path));
    let tree = |path: &Path| tree_digest(&def.resolve(path));
    let mut contents = BTreeMap::new();
    match p {
        Provisioner::Shell { script, .. } => {
            contents.insert("script", file(script)?);
        }
        Provisioner::File { source, .. } => {
            contents.insert("source", file(source)?);
        }
        // A project in the service's tree is covered by the service's commit.
        Provisioner::Ansible(a) if a.in_service => {}
        Provisioner::Ansible(a) => {
            contents.insert("project", tree_digest(&def.file().ansible_project(a))?);
        }
        Provisioner::Chef(c) => {
            contents.insert("cookbooks", tree(&c.cookbooks)?);
            if let Some(roles) = &c.roles {
                contents.insert("roles", tree(roles)?);
            }
            if let Some(environments) = &c.environments {
                contents.insert("environments", tree(environments)?);
            }
        }
    }
    Ok(ProvisionerSpec {
        settings: p.clone(),
        contents,
    })
}

fn output_spec(def: &Definition, bake: String, disk: Layout) -> OutputSpec {
    let makes_box = def.output.formats.contains(&DiskFormat::VagrantLibvirt);
    OutputSpec {
        bake,
        image: image_of(def),
        formats: def.output.formats.clone(),
        compress: def.output.compress,
        box_url: def.output.box_url.clone(),
        box_machine: makes_box.then_some(BoxMachine {
            memory_mib: def.machine.memory_mib,
            cpus: def.machine.cpus,
        }),
        disk,
        family: def.os.family,
        description: def.image.description.clone(),
    }
}

/// Definitions and specs for the unit tests of ids.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use serde_json::json;

    /// `images/debian-12-minimal.toml` with `edit` applied to its text.
    pub fn minimal(edit: impl Fn(&str) -> String) -> Definition {
        let path = crate::render::data_dir().join("images/debian-12-minimal.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        Definition::parse(&edit(&text), &path).unwrap()
    }

    /// A resolution from one source asked for `packages`, to a set of what `def` asks for and
    /// `packages` (each at version 1).
    pub fn resolved(def: &Definition, packages: &[&str]) -> ResolvedPackages {
        let names = def.base_packages().into_iter();
        let set = names
            .chain(packages.iter().map(|p| p.to_string()))
            .map(|name| crate::apt::Package {
                sha256: format!("{:064x}", name.len()),
                name,
                version: "1".into(),
                arch: "amd64".into(),
                source: "repo1".into(),
            });
        ResolvedPackages {
            sources: vec![serde_json::from_value(json!({
                "name": "repo1", "uri": "http://repo.example/debian", "suites": ["stable"],
                "components": ["main"], "keyring": null, "key_sha256": "ab",
                "packages": packages,
            }))
            .unwrap()],
            set: crate::lock::PackageSet::new(set.collect()),
            lock: None,
        }
    }

    /// The specs of `def` resolved from one source asked for `packages` (see [`resolved`]).
    pub fn specs(def: &Definition, packages: &[&str]) -> Specs {
        let answer = crate::render::render(def).unwrap();
        Specs::from_resolved(def, &answer, Some(resolved(def, packages))).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{minimal, specs};
    use super::*;
    use crate::definition::{AnsibleRunner, Machine};
    use serde_json::json;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    /// A change to one field of a spec, by name.
    type Change<T> = (&'static str, fn(&mut T));

    /// Applies each change to a copy of `spec` and checks that it moves the id, and that the
    /// changes name every field the spec serialises (a new field without a change here fails):
    /// whatever a stage reads from its spec is an input of its id.
    fn each_field_moves_the_id<T: Clone + Serialize>(
        spec: &T,
        id: fn(&T) -> String,
        changes: &[Change<T>],
    ) {
        let fields: BTreeSet<String> = match serde_json::to_value(spec).unwrap() {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("a spec is an object: {other}"),
        };
        let changed: BTreeSet<String> = changes.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(fields, changed, "every serialised field has a change here");
        for (field, change) in changes {
            let mut other = spec.clone();
            change(&mut other);
            assert_ne!(id(&other), id(spec), "{field} moves the id");
        }
    }

    #[test]
    fn each_field_of_each_spec_moves_its_id_and_what_is_skipped_does_not() {
        let def = minimal(str::to_string);
        let specs = specs(&def, &[]);
        each_field_moves_the_id::<BaseSpec>(
            &specs.base,
            BaseSpec::id,
            &[
                ("imgforge", |s| s.imgforge = "0.0.0-other"),
                ("layout", |s| s.layout += 1),
                ("source_date_epoch", |s| s.source_date_epoch += 1),
                ("builder", |s| {
                    s.builder = Builder::Rootfs {
                        variant: Some("important".into()),
                    }
                }),
                ("os", |s| s.os.release = "trixie".into()),
                ("disk", |s| s.disk.size += 1 << 30),
                ("system", |s| s.system.hostname = "other".into()),
                ("answer", |s| {
                    s.answer = Some(AnswerSpec {
                        file_name: "preseed.cfg",
                        text: "d-i".into(),
                        template: "d-i".into(),
                    })
                }),
                ("guest_scripts", |s| s.guest_scripts.push("echo".into())),
                ("packages", |s| {
                    s.packages.as_mut().unwrap().sources[0].key_sha256 = Some("cd".into())
                }),
            ],
        );
        each_field_moves_the_id::<BakeSpec>(
            &specs.bake,
            BakeSpec::id,
            &[
                ("layout", |s| s.layout += 1),
                ("guest_scripts", |s| s.guest_scripts.push("echo".into())),
                ("base", |s| s.base = "0".repeat(64)),
                ("image", |s| s.image.version = "9".into()),
                ("family", |s| s.family = OsFamily::Rhel),
                ("source_date_epoch", |s| s.source_date_epoch += 1),
                ("service", |s| {
                    s.service = Some(ServiceSpec {
                        commit: "c".repeat(40),
                        subdir: None,
                        dest: serde_json::from_value(json!("/srv/app")).unwrap(),
                        install: None,
                        unit: None,
                        repo: String::new(),
                        location: String::new(),
                    })
                }),
                ("data", |s| {
                    s.data = Some(DataSpec {
                        digest: "d".repeat(64),
                        dest: serde_json::from_value(json!("/srv/data")).unwrap(),
                        resolved: ResolvedData::Tarball {
                            path: PathBuf::new(),
                            sha256: "d".repeat(64),
                        },
                    })
                }),
                ("provisioners", |s| {
                    s.provisioners.push(ProvisionerSpec {
                        settings: Provisioner::Shell {
                            script: "setup.sh".into(),
                            needs_running_system: false,
                        },
                        contents: BTreeMap::from([("script", "e".repeat(64))]),
                    })
                }),
                ("cloud", |s| s.cloud.user = "other".into()),
                ("purge", |s| s.purge.push("ansible-core")),
            ],
        );
        each_field_moves_the_id::<OutputSpec>(
            &specs.output,
            OutputSpec::id,
            &[
                ("bake", |s| s.bake = "0".repeat(64)),
                ("image", |s| s.image.name = "other".into()),
                ("formats", |s| s.formats.push(DiskFormat::Raw)),
                ("compress", |s| s.compress = !s.compress),
                ("box_url", |s| s.box_url = Some("https://boxes".into())),
                ("box_machine", |s| {
                    s.box_machine = Some(BoxMachine {
                        memory_mib: 512,
                        cpus: 1,
                    })
                }),
                ("disk", |s| s.disk.epoch += 1),
                ("family", |s| s.family = OsFamily::Rhel),
            ],
        );

        // What is skipped is outside the layer's bytes: the build VM, where the definition
        // is, the box's description in its catalogue.
        let elsewhere = DefinitionFile {
            path: "/elsewhere/x.toml".into(),
            dir: "/elsewhere".into(),
        };
        let other_vm = Machine {
            cpus: 1,
            memory_mib: 4096,
            ..specs.base.vm.clone()
        };
        let mut base = specs.base.clone();
        (base.vm, base.file) = (other_vm.clone(), elsewhere.clone());
        assert_eq!(base.id(), specs.base.id());
        let mut bake = specs.bake.clone();
        (bake.vm, bake.file) = (other_vm, elsewhere);
        assert_eq!(bake.id(), specs.bake.id());
        let mut output = specs.output.clone();
        output.description = Some("another description".into());
        assert_eq!(output.id(), specs.output.id());
    }

    #[test]
    fn a_staged_file_changed_after_the_id_was_computed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let playbook = dir.path().join("site.yml");
        std::fs::write(&playbook, "- hosts: all\n").unwrap();
        let script = dir.path().join("setup.sh");
        std::fs::write(&script, "echo one\n").unwrap();
        let def = minimal(|t| {
            format!(
                "{t}\n[[provisioners]]\ntype = \"shell\"\nscript = \"{}\"\n\n\
                 [[provisioners]]\ntype = \"ansible\"\nplaybook = \"{}\"\n",
                script.display(),
                playbook.display()
            )
        });
        let spec = specs(&def, &[]).bake;
        assert!(matches!(&spec.provisioners[1].settings,
            Provisioner::Ansible(a) if a.runner == AnsibleRunner::Image));
        spec.check_staged(0, "script", &script).unwrap();
        spec.check_bytes(0, "script", b"echo one\n").unwrap();
        spec.check_staged(1, "project", dir.path()).unwrap();

        // The attacker writes after the id was computed: the file, its bytes, the project.
        std::fs::write(&script, "echo two\n").unwrap();
        let refused = spec.check_staged(0, "script", &script).unwrap_err();
        assert!(
            format!("{refused}").contains("provisioners[0].script` changed after"),
            "{refused}"
        );
        assert!(spec.check_bytes(0, "script", b"echo two\n").is_err());
        assert!(spec.check_staged(1, "project", dir.path()).is_err());
        assert!(
            spec.check_staged(0, "source", &script).is_err(),
            "no such digest"
        );
    }
}
