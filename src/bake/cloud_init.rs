//! `[cloud] init = "cloud-init"`: the settings cloud-init reads in every instance, written by
//! the bake's last pass, and the per-instance state that pass clears in every image.

use crate::spec::CloudSpec;
use serde_json::{json, Value};

/// Where imgforge's settings for cloud-init go.
pub const SETTINGS_FILE: &str = "/etc/cloud/cloud.cfg.d/90_imgforge.cfg";

/// The settings for private EC2-compatible clouds. ds-identify reads `strict_id` only from a
/// file whose name contains `ec2`.
pub const PRIVATE_EC2_FILE: &str = "/etc/cloud/cloud.cfg.d/91_imgforge_ec2.cfg";

/// What the bake's last pass (`templates/bake-hygiene.sh.hbs`) writes for cloud-init: its
/// settings when the definition asks for it (null otherwise), and for private clouds the EC2
/// settings and ds-identify's policy. In every image that has cloud-init, that pass also
/// removes its state, logs and generated network files so that each instance initialises
/// afresh.
pub fn hygiene_values(cloud: &CloudSpec) -> Value {
    let private = cloud.init && cloud.private_ec2;
    json!({
        "settings": cloud.init.then(|| settings(&cloud.user)),
        "settings_file": SETTINGS_FILE,
        "private_ec2": private.then_some(PRIVATE_EC2),
        "private_ec2_file": PRIVATE_EC2_FILE,
        "private_ec2_policy": PRIVATE_EC2_POLICY,
    })
}

/// `90_imgforge.cfg`. ds-identify reads `datasource_list` line by line, so it stays on one line.
fn settings(user: &str) -> String {
    format!(
        "# Written by imgforge for [cloud] init = \"cloud-init\".
# A NoCloud seed (a disk labelled cidata) wins; then the EC2 metadata service.
datasource_list: [ NoCloud, Ec2, None ]
datasource:
  Ec2:
    timeout: 5
    max_wait: 30
# The image's own systemd-networkd DHCP stays in charge of the network.
network:
  config: disabled
# New host keys for each instance, of the types the image's sshd is told to use.
ssh_deletekeys: true
ssh_genkeytypes: [ed25519, ecdsa]
system_info:
  default_user:
    name: {user}
    lock_passwd: true
    gecos: Cloud user
    groups: [adm, sudo]
    sudo: [\"ALL=(ALL) NOPASSWD:ALL\"]
    shell: /bin/bash
",
    )
}

/// `91_imgforge_ec2.cfg`: take the metadata service of a cloud that is not AWS.
const PRIVATE_EC2: &str =
    "# Written by imgforge for [cloud] private_ec2: the metadata service of a cloud
# that does not identify itself as AWS (Eucalyptus) is taken too.
datasource:
  Ec2:
    strict_id: false
";

/// ds-identify's policy for private clouds: a datasource it can only call possible (EC2
/// without AWS's identity) is tried rather than ignored.
const PRIVATE_EC2_POLICY: &str = "policy: search,found=all,maybe=all,notfound=disabled";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Definition;

    fn definition(extra: &str) -> Definition {
        let text = format!(
            "[image]\nname = \"x\"\nversion = \"1\"\n[os]\nfamily = \"debian\"\nrelease = \"bookworm\"\n\
             [builder]\nkind = \"rootfs\"\n[system]\nhostname = \"x\"\nmirror = \"http://deb.debian.org/debian\"\n{extra}"
        );
        Definition::parse(&text, std::path::Path::new("x.toml")).unwrap()
    }

    fn hygiene_script(def: &Definition) -> String {
        let script = super::super::hygiene_script(
            def.os.family,
            &def.bake_only_packages(),
            &CloudSpec::of(def),
        )
        .unwrap();
        crate::render::assert_valid_shell(
            &(crate::bake_protocol::prelude(1_700_000_000).unwrap() + &script),
        );
        script
    }

    #[test]
    fn settings_only_when_asked_and_state_always_cleared() {
        let off = hygiene_script(&definition(""));
        assert!(!off.contains(SETTINGS_FILE));
        assert!(off.contains("cloud-init clean --logs --seed"));
        assert!(off.contains("rm -rf /var/lib/cloud/*"));

        let on = hygiene_script(&definition(
            "[cloud]\ninit = \"cloud-init\"\nuser = \"dev\"\n",
        ));
        assert!(on.contains("datasource_list: [ NoCloud, Ec2, None ]\n"));
        assert!(on.contains("    name: dev\n"));
        assert!(!on.contains(PRIVATE_EC2_FILE));

        let private = hygiene_script(&definition(
            "[cloud]\ninit = \"cloud-init\"\nprivate_ec2 = true\n",
        ));
        assert!(private.contains("strict_id: false"));
        assert!(private.contains("maybe=all"));
        assert!(private.contains("    name: admin\n"));
    }
}
