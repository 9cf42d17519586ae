//! Content-addressed layer ids: each is the sha256 of its stage's spec in canonical JSON
//! (keys sorted, no whitespace), see [`crate::spec`]: key order, comments and whitespace in the
//! TOML do not matter, and any change to an input of a stage gives its layer a new id.
//! - base: the OS, its settings, the disk, the builder with its media and answer file, and
//!   (Debian family) the package sources with their keys and the exact package set;
//! - bake: the base id, the image's name and version, the service commit and settings, the
//!   data digest and destination, and every provisioner with the digests of what it stages;
//! - build: the bake id and the output settings; it names the output directory.

use crate::spec::Specs;
use serde::Serialize;

/// The ids of one build's layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LayerIds {
    /// The OS layer, cached and shared by every bake on it.
    pub base: String,
    /// The service and data layer on top of the base.
    pub bake: String,
    /// The exported build: bake plus output settings.
    pub build: String,
}

impl LayerIds {
    /// The ids of `specs`' layers: each spec holds the id of the layer below it.
    pub fn of(specs: &Specs) -> LayerIds {
        LayerIds {
            base: specs.bake.base.clone(),
            bake: specs.output.bake.clone(),
            build: specs.output.id(),
        }
    }
}

/// The first 12 characters of an id, for messages.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::definition::Definition;
    use crate::spec::fixtures::{minimal, specs};

    /// Which layers a change of the definition moves: (base, bake, build).
    fn moved(edit: impl Fn(&str) -> String) -> (bool, bool, bool) {
        moved_from(str::to_string, edit)
    }

    /// Which layers `edit` moves in the definition `start` makes of `debian-12-minimal`.
    fn moved_from(
        start: impl Fn(&str) -> String,
        edit: impl Fn(&str) -> String,
    ) -> (bool, bool, bool) {
        let ids = |def: &Definition| LayerIds::of(&specs(def, &[]));
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
                replace("initramfs = \"virtual\"", "initramfs = \"generic\""),
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
        let lineage = |def: &Definition, packages: &[&str]| specs(def, packages).base.lineage();
        let plain = lineage(&minimal(str::to_string), &[]);
        let more_packages =
            minimal(|t| t.replace("[system]\n", "[system]\npackages = [\"less\"]\n"));
        assert_eq!(more_packages.system.packages, ["less"]);
        assert_eq!(lineage(&more_packages, &[]), plain);
        assert_eq!(lineage(&minimal(str::to_string), &["tool"]), plain);
        let other_host = minimal(|t| t.replace("hostname = \"debian\"", "hostname = \"other\""));
        assert_ne!(lineage(&other_host, &[]), plain);
        // The set is the input, not the request: asked of the system or of a repository, the
        // same set is the same base; another set is another base of the same lineage.
        let base = |def: &Definition, packages: &[&str]| specs(def, packages).base.id();
        let plain_base = base(&minimal(str::to_string), &[]);
        assert_eq!(
            base(&more_packages, &[]),
            base(&minimal(str::to_string), &["less"])
        );
        assert_ne!(base(&more_packages, &[]), plain_base);
    }
}
