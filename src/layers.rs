//! Content-addressed layer ids.
//!
//! Each id is the sha256 of a canonical JSON document (keys sorted, no whitespace) holding every
//! input that decides the layer, so key order, comments and whitespace in the TOML do not
//! matter and any change to an input gives a new id:
//! - base: imgforge version, builder, OS, the disk-shaping machine settings, the rendered answer
//!   file and its template, the installer media checksums, and (Debian family) the package
//!   sources with their keys and the exact package set resolved from them (name, version,
//!   architecture and sha256 of every package: a new package version is a new base, a
//!   re-signed index with the same packages is not);
//! - bake: the base id, the service commit and settings, the data digest and destination, and the
//!   contents of every provisioner;
//! - build: the bake id and the output settings; it names the output directory.

use crate::canonical::digest;
use crate::definition::{BuilderKind, Definition, Provisioner};
use crate::lock::ResolvedPackages;
use crate::render::AnswerFile;
use crate::sources::{sha256_file, tree_digest, ResolvedData, ResolvedService};
use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};

/// The ids of one build's layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LayerIds {
    /// The OS layer, cached and shared by every bake on it.
    pub base: String,
    /// The service and data layer on top of the base.
    pub bake: String,
    /// The exported build: bake plus output settings.
    pub build: String,
}

/// Inputs resolved outside the definition.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// The service repository at its commit.
    pub service: Option<ResolvedService>,
    /// The verified data snapshot.
    pub data: Option<ResolvedData>,
    /// The base's package set (Debian family).
    pub packages: Option<ResolvedPackages>,
}

/// Computes the layer ids of `def`.
pub fn compute(def: &Definition, answer: &AnswerFile, resolved: &Resolved) -> Result<LayerIds> {
    let base = digest(&base_inputs(def, answer, resolved.packages.as_ref())?);
    let bake = digest(&bake_inputs(def, &base, resolved)?);
    let mut build = json!({
        "bake": bake,
        "formats": def.output.formats,
        "compress": def.output.compress,
        "box_url": def.output.box_url,
    });
    if let Some(machine) = box_machine(def) {
        build["box_machine"] = json!(machine);
    }
    let build = digest(&build);
    Ok(LayerIds { base, bake, build })
}

/// The machine a Vagrant box's `Vagrantfile` gives a project by default. It is in the box's
/// bytes, so it is an input of the build id of a definition that makes a box, and the box is
/// written from this value, not from the definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BoxMachine {
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
}

/// The box machine of `def`, when it makes a `vagrant-libvirt` box.
pub fn box_machine(def: &Definition) -> Option<BoxMachine> {
    let makes_box = def
        .output
        .formats
        .contains(&crate::definition::DiskFormat::VagrantLibvirt);
    makes_box.then_some(BoxMachine {
        memory_mib: def.machine.memory_mib,
        cpus: def.machine.cpus,
    })
}

/// The base's lineage: the digest of every base input except the package set and the
/// packages the definition asks for (`system.packages`, a repository's `packages`), which only
/// choose that set. Two bases of one lineage differ only in the packages installed, so one can
/// be patched into the other (see `base::patch`).
pub fn base_lineage(def: &Definition, packages: &ResolvedPackages) -> Result<String> {
    let mut unrequested = def.clone();
    unrequested.system.packages.clear();
    for repository in &mut unrequested.system.repositories {
        repository.packages.clear();
    }
    let answer = crate::render::render(&unrequested)?;
    let mut inputs = base_inputs(&unrequested, &answer, None)?;
    let mut sources = packages.sources.clone();
    for source in &mut sources {
        source.packages.clear();
    }
    inputs["sources"] = crate::apt::sources_identity(&sources);
    Ok(digest(&inputs))
}

fn base_inputs(
    def: &Definition,
    answer: &AnswerFile,
    packages: Option<&ResolvedPackages>,
) -> Result<Value> {
    // The scripts run in the tree while it is made (a rootfs base's customize hook).
    let guest_scripts = match def.builder.kind() {
        BuilderKind::Rootfs => vec![
            crate::render::script_template(crate::render::ROOTFS_CUSTOMIZE)?,
            crate::render::script_template(crate::render::BAKE_INIT)?,
        ],
        BuilderKind::Installer => Vec::new(),
    };
    let media: Vec<Value> = def
        .artifacts()
        .into_iter()
        .filter(|(field, _)| field.starts_with("installer."))
        .map(|(field, a)| json!({ "field": field, "sha256": a.sha256.0 }))
        .collect();
    let installer = def
        .builder
        .installer()
        .map(|i| json!({ "append": i.append, "boot_command": i.boot_command }));
    Ok(json!({
        "imgforge": env!("CARGO_PKG_VERSION"),
        // What a cached base records (base.json) and holds; bases of another layout are not
        // reused.
        "base_layout": 6,
        "source_date_epoch": def.source_date_epoch(),
        "builder": def.builder,
        "os": def.os,
        "machine": {
            "disk_size": def.machine.disk_size.0,
            "firmware": def.machine.firmware,
            "initramfs": def.machine.initramfs,
        },
        "answer_file": answer.text,
        "template": answer.template_text,
        "guest_scripts": guest_scripts,
        "installer": installer,
        "media": media,
        "updates": def.system.updates,
        "security_mirror": def.system.security_mirror,
        "sources": packages.map(|p| crate::apt::sources_identity(&p.sources)),
        "packages": packages.map(|p| p.set.identity()),
    }))
}

fn bake_inputs(def: &Definition, base: &str, resolved: &Resolved) -> Result<Value> {
    let service = match (&def.service, &resolved.service) {
        (Some(s), Some(r)) => json!({
            "commit": r.commit,
            "subdir": s.subdir,
            "dest": s.dest,
            "install": s.install,
            "unit": s.unit,
        }),
        _ => Value::Null,
    };
    let data = match (&def.data, &resolved.data) {
        (Some(d), Some(r)) => json!({ "digest": r.digest(), "dest": d.dest }),
        _ => Value::Null,
    };
    let mut provisioners = Vec::new();
    for p in &def.provisioners {
        provisioners.push(match p {
            Provisioner::Shell {
                script,
                needs_running_system,
            } => json!({
                "shell": sha256_file(&def.resolve(script))?,
                "needs_running_system": needs_running_system,
            }),
            Provisioner::File { source, dest, mode } => json!({
                "file": sha256_file(&def.resolve(source))?,
                "dest": dest,
                "mode": mode,
            }),
            // The settings as written, plus the contents of every tree they stage.
            Provisioner::Ansible(a) => json!({
                "ansible": a,
                "project": match a.in_service {
                    true => Value::Null,
                    false => json!(tree_digest(&def.ansible_project(a))?),
                },
            }),
            Provisioner::Chef(c) => {
                let trees = [
                    Some(&c.cookbooks),
                    c.roles.as_ref(),
                    c.environments.as_ref(),
                ]
                .into_iter()
                .map(|dir| dir.map(|d| tree_digest(&def.resolve(d))).transpose())
                .collect::<Result<Vec<_>>>()?;
                json!({ "chef": c, "trees": trees })
            }
        });
    }
    Ok(json!({
        // What the bake runs: its prelude, its steps and its hygiene.
        "bake_layout": 3,
        "guest_scripts": [
            crate::render::script_template(crate::render::BAKE_PRELUDE)?,
            crate::render::script_template(crate::render::BAKE_STEPS)?,
            crate::render::script_template(crate::render::BAKE_HYGIENE)?,
        ],
        "base": base,
        // The image's name and version are baked into /etc/imgforge/build.json.
        "image": { "name": def.image.name.0, "version": def.image.version },
        "service": service,
        "data": data,
        "provisioners": provisioners,
        "cloud": {
            "init": def.cloud_init(),
            "user": def.cloud_user(),
            "private_ec2": def.cloud_private_ec2(),
        },
    }))
}

/// Resolves the package set (from the lock, else the archive), the service and the data of
/// `def` (before any VM starts) and computes its ids.
pub fn resolve_and_compute(def: &Definition, answer: &AnswerFile) -> Result<(LayerIds, Resolved)> {
    let resolved = Resolved {
        packages: crate::lock::packages(def, true)?,
        service: def
            .service
            .as_ref()
            .map(|s| crate::sources::resolve_service(def, s))
            .transpose()?,
        data: def
            .data
            .as_ref()
            .map(|d| crate::sources::resolve_data(def, d))
            .transpose()?,
    };
    let ids = compute(def, answer, &resolved)?;
    Ok((ids, resolved))
}

/// The first 12 characters of an id, for messages.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(edit: impl Fn(&str) -> String) -> Definition {
        let path = crate::render::data_dir().join("images/debian-12-minimal.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        Definition::parse(&edit(&text), &path).unwrap()
    }

    /// A resolution from one source that installs `packages`, with an empty set.
    fn resolved(packages: &[&str]) -> ResolvedPackages {
        ResolvedPackages {
            sources: vec![serde_json::from_value(serde_json::json!({
                "name": "repo1", "uri": "http://repo.example/debian", "suites": ["stable"],
                "components": ["main"], "keyring": null, "key_sha256": "ab",
                "packages": packages,
            }))
            .unwrap()],
            set: crate::apt::PackageSet::new(Vec::new()),
            lock: None,
        }
    }

    /// Which layers a change of the definition moves: (base, bake, build).
    fn moved(edit: impl Fn(&str) -> String) -> (bool, bool, bool) {
        moved_from(str::to_string, edit)
    }

    /// Which layers `edit` moves in the definition `start` makes of `debian-12-minimal`.
    fn moved_from(
        start: impl Fn(&str) -> String,
        edit: impl Fn(&str) -> String,
    ) -> (bool, bool, bool) {
        let ids = |def: &Definition| {
            let answer = crate::render::render(def).unwrap();
            let resolved = Resolved {
                packages: Some(resolved(&[])),
                service: None,
                data: None,
            };
            compute(def, &answer, &resolved).unwrap()
        };
        let (before, after) = (ids(&minimal(&start)), ids(&minimal(|t| edit(&start(t)))));
        (
            before.base != after.base,
            before.bake != after.bake,
            before.build != after.build,
        )
    }

    #[test]
    fn each_field_moves_the_id_of_the_layer_it_shapes_and_those_above_only() {
        let replace = |from: &'static str, to: &'static str| {
            move |t: &str| {
                assert!(t.contains(from), "{from}");
                t.replace(from, to)
            }
        };
        let base = [
            (
                "hostname",
                replace("hostname = \"debian\"", "hostname = \"web\""),
            ),
            ("timezone", replace("Etc/UTC", "Europe/Berlin")),
            ("locale", replace("en_US.UTF-8", "de_DE.UTF-8")),
            (
                "keyboard",
                replace("keyboard = \"us\"", "keyboard = \"de\""),
            ),
            (
                "mirror",
                replace(
                    "http://deb.debian.org/debian",
                    "http://ftp.de.debian.org/debian",
                ),
            ),
            ("disk_size", replace("\"3G\"", "\"4G\"")),
            ("firmware", replace("\"bios\"", "\"uefi\"")),
            (
                "release",
                replace("release = \"bookworm\"", "release = \"trixie\""),
            ),
            (
                "packages",
                replace("[system]\n", "[system]\npackages = [\"less\"]\n"),
            ),
            (
                "updates",
                replace("[system]\n", "[system]\nupdates = false\n"),
            ),
            (
                "initramfs",
                replace("accelerator = \"auto\"", "initramfs = \"virtual\""),
            ),
        ];
        for (field, edit) in base {
            assert_eq!(moved(edit), (true, true, true), "{field} shapes the base");
        }
        let bake = [
            (
                "name",
                replace("name = \"debian-12-minimal\"", "name = \"other\""),
            ),
            (
                "version",
                replace("version = \"1.0.0\"", "version = \"1.0.1\""),
            ),
        ];
        for (field, edit) in bake {
            assert_eq!(moved(edit), (false, true, true), "{field} is baked in");
        }
        let build = [
            (
                "formats",
                replace("formats = [\"qcow2\"]", "formats = [\"raw\"]"),
            ),
            (
                "compress",
                replace("[output]\n", "[output]\ncompress = true\n"),
            ),
        ];
        for (field, edit) in build {
            assert_eq!(
                moved(edit),
                (false, false, true),
                "{field} shapes the artifacts"
            );
        }
        // Outside every image: how it is described, built and checked, and where it goes.
        let none = [
            (
                "description",
                replace("minimal, built by mmdebstrap", "minimal"),
            ),
            ("cpus", replace("cpus = 2", "cpus = 1")),
            ("memory", replace("memory_mib = 1024", "memory_mib = 2048")),
            ("accelerator", replace("\"auto\"", "\"tcg\"")),
            ("checks", replace("port = 22", "port = 2222")),
            (
                "cache",
                replace(
                    "[output]\n",
                    "[cache]\nurl = \"s3://layers/ci\"\n\n[output]\n",
                ),
            ),
        ];
        for (field, edit) in none {
            assert_eq!(
                moved(edit),
                (false, false, false),
                "{field} is outside every image"
            );
        }
        // A Vagrant box's Vagrantfile holds the build VM's memory and CPUs: they move the build
        // id of a definition that makes one.
        let with_box = |t: &str| t.replace("[\"qcow2\"]", "[\"qcow2\", \"vagrant-libvirt\"]");
        assert_eq!(moved(with_box), (false, false, true));
        for (field, edit) in [
            ("cpus", replace("cpus = 2", "cpus = 1")),
            ("memory", replace("memory_mib = 1024", "memory_mib = 2048")),
        ] {
            assert_eq!(
                moved_from(with_box, edit),
                (false, false, true),
                "{field} is in the box"
            );
        }
    }

    #[test]
    fn a_lineage_leaves_out_the_packages_asked_for_and_keeps_every_other_base_input() {
        let plain = base_lineage(&minimal(str::to_string), &resolved(&[])).unwrap();
        let more_packages =
            minimal(|t| t.replace("[system]\n", "[system]\npackages = [\"less\"]\n"));
        assert_eq!(more_packages.system.packages, ["less"]);
        assert_eq!(base_lineage(&more_packages, &resolved(&[])).unwrap(), plain);
        let from_repository = base_lineage(&minimal(str::to_string), &resolved(&["tool"]));
        assert_eq!(from_repository.unwrap(), plain);
        let other_host = minimal(|t| t.replace("hostname = \"debian\"", "hostname = \"other\""));
        assert_ne!(base_lineage(&other_host, &resolved(&[])).unwrap(), plain);
    }
}
