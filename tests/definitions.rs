//! Image definitions, answer files and build ids, through the real binary.

mod common;

use common::{imgforge, repo_root, run};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn shipped_definitions() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(repo_root().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 4,
        "expected the four shipped definitions, found {v:?}"
    );
    v
}

#[test]
fn every_shipped_definition_validates() {
    let (code, _, err) = run(imgforge().arg("validate").args(shipped_definitions()));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.matches(": ok (").count(),
        shipped_definitions().len(),
        "{err}"
    );
}

/// Writes `text` as a definition in a fresh directory and validates it.
fn validate_text(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    fs::write(&path, text).unwrap();
    let (code, _, err) = run(imgforge().arg("validate").arg(&path));
    (code, err.replace(&dir.path().display().to_string(), "DIR"))
}

const GOOD: &str = r#"[image]
name = "t"
version = "1"

[os]
family = "debian"
release = "bookworm"

[builder]
kind = "rootfs"

[system]
hostname = "h"
mirror = "http://deb.debian.org/debian"
"#;

#[test]
fn unknown_key_is_refused_with_file_line_and_field() {
    let (code, err) =
        validate_text(&GOOD.replace("hostname = \"h\"", "hostname = \"h\"\nhostnme = \"typo\""));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("DIR/bad.toml:14:1: field `system"), "{err}");
    assert!(err.contains("unknown field `hostnme`"), "{err}");
}

#[test]
fn wrong_type_is_refused_with_file_line_and_field() {
    let (code, err) = validate_text(&format!("{GOOD}\n[machine]\nmemory_mib = \"lots\"\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("DIR/bad.toml:17:14: field `machine.memory_mib`"),
        "{err}"
    );
}

#[test]
fn plain_text_password_is_refused_with_a_hint() {
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[[system.users]]\nname = \"ops\"\npassword_hash = \"correct horse\"\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("DIR/bad.toml:18:17: field `system.users[0].password_hash`"),
        "{err}"
    );
    assert!(
        err.contains("plain-text password") && err.contains("mkpasswd -m sha-512"),
        "{err}"
    );
}

#[test]
fn malformed_sha256_is_refused() {
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[data]\ndest = \"/srv\"\ntarball = {{ path = \"d.tar\", sha256 = \"12345\" }}\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("DIR/bad.toml:18:"), "{err}");
    assert!(
        err.contains("field `data.tarball.sha256`") && err.contains("64 hex digits"),
        "{err}"
    );
}

#[test]
fn one_bad_file_fails_validation_of_many() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, GOOD.replace("rootfs", "chroot")).unwrap();
    let mut files = shipped_definitions();
    files.push(bad);
    let (code, _, err) = run(imgforge().arg("validate").args(&files));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `builder.kind`") && err.contains("unknown variant `chroot`"),
        "{err}"
    );
}

fn render(def: &Path) -> String {
    let (code, out, err) = run(imgforge().arg("render").arg(def));
    assert_eq!(code, 0, "render {}: {err}", def.display());
    out
}

#[test]
fn rendered_preseeds_pass_debconf_checkonly() {
    for def in shipped_definitions() {
        let text = fs::read_to_string(&def).unwrap();
        if !text.contains("family = \"debian\"") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("preseed.cfg");
        let (code, _, err) = run(imgforge().arg("render").arg(&def).arg("-o").arg(&out));
        assert_eq!(code, 0, "{err}");
        let check = Command::new("debconf-set-selections")
            .arg("--checkonly")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}: debconf-set-selections --checkonly: {}",
            def.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let preseed = fs::read_to_string(&out).unwrap();
        assert!(preseed.contains("d-i debian-installer/exit/poweroff boolean true"));
        assert!(preseed.contains("preseed_fetch build-key.pub"));
    }
}

#[test]
fn debconf_checkonly_catches_a_broken_preseed() {
    // The peer check is real: a malformed line is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cfg");
    fs::write(&bad, "d-i this-line-has-no-type-or-value\n").unwrap();
    let check = Command::new("debconf-set-selections")
        .arg("--checkonly")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!check.status.success());
}

fn ksvalidator(file: &Path) -> std::process::Output {
    Command::new(repo_root().join(".venv/bin/ksvalidator"))
        .args(["-v", "RHEL9"])
        .arg(file)
        .output()
        .expect("ksvalidator from .venv: run scripts/setup --test")
}

#[test]
fn rendered_kickstart_passes_ksvalidator_rhel9() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ks.cfg");
    let def = repo_root().join("images/rocky-9-kickstart.toml");
    let (code, _, err) = run(imgforge().arg("render").arg(&def).arg("-o").arg(&out));
    assert_eq!(code, 0, "{err}");
    let check = ksvalidator(&out);
    assert!(
        check.status.success(),
        "ksvalidator: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let ks = fs::read_to_string(&out).unwrap();
    assert!(ks.contains("\npoweroff\n") && ks.contains("%packages") && ks.contains("%post"));
    // And the validator does fail on a broken kickstart.
    fs::write(
        &out,
        ks.replace("timezone Etc/UTC --utc", "timezone --no-such-option"),
    )
    .unwrap();
    assert!(!ksvalidator(&out).status.success());
}

/// Rendered answer files are kept stable by snapshots in tests/snapshots;
/// `IMGFORGE_UPDATE_SNAPSHOTS=1` rewrites them after an intended change.
#[test]
fn rendered_answer_files_match_snapshots() {
    for (def, snap) in [
        (
            "images/debian-12-installer.toml",
            "debian-12-installer.preseed.cfg",
        ),
        ("images/debian-12-web.toml", "debian-12-web.preseed.cfg"),
        ("images/rocky-9-kickstart.toml", "rocky-9-kickstart.ks.cfg"),
    ] {
        let text = render(&repo_root().join(def));
        let path = repo_root().join("tests/snapshots").join(snap);
        if std::env::var_os("IMGFORGE_UPDATE_SNAPSHOTS").is_some() {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &text).unwrap();
        }
        let expected = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text == expected,
            "{def} renders differently from {}; if intended, run with IMGFORGE_UPDATE_SNAPSHOTS=1",
            path.display()
        );
    }
}

#[test]
fn template_strictness_reaches_the_user() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("t.hbs"),
        "d-i netcfg/get_hostname string {{hostnam}}\n",
    )
    .unwrap();
    let def = GOOD.replace("kind = \"rootfs\"", "kind = \"installer\"")
        + "\n[installer]\niso = { path = \"x.iso\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }\nboot_command = [\"<enter>\"]\ntemplate = \"t.hbs\"\n";
    fs::write(dir.path().join("d.toml"), def).unwrap();
    fs::write(dir.path().join("x.iso"), "").unwrap();
    let (code, _, err) = run(imgforge().arg("render").arg(dir.path().join("d.toml")));
    assert_ne!(code, 0);
    assert!(err.contains("t.hbs") && err.contains("hostnam"), "{err}");
}

/// A self-contained definition with a service repository and a data tarball in `dir`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("svc");
        fs::create_dir_all(&repo).unwrap();
        fs::write(repo.join("run.sh"), "echo hi\n").unwrap();
        for args in [
            vec!["init", "-q", "-b", "main"],
            vec!["add", "."],
            vec![
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                "one",
            ],
        ] {
            assert!(Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(&args)
                .status()
                .unwrap()
                .success());
        }
        fs::write(dir.path().join("data.tar"), b"snapshot v1").unwrap();
        fs::write(
            dir.path().join("debian.cfg.hbs"),
            "d-i netcfg/get_hostname string {{hostname}}\n",
        )
        .unwrap();
        Fixture { dir }
    }

    fn sha(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            fs::read(self.dir.path().join("data.tar")).unwrap(),
        ))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, text.replace("@SHA@", &self.sha())).unwrap();
        p
    }

    fn ids(&self, def: &Path) -> serde_json::Value {
        let (code, out, err) = run(imgforge().args(["id", "--json"]).arg(def));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(out.trim()).unwrap()
    }
}

const ID_DEF: &str = r#"# the definition as first written
[image]
name = "idtest"
version = "1"

[os]
family = "debian"
release = "bookworm"

[builder]
kind = "rootfs"

[system]
hostname = "h"
mirror = "http://deb.debian.org/debian"
packages = ["curl", "jq"]

[service]
repo = "svc"
ref = "main"
dest = "/opt/svc"

[data]
dest = "/srv"
tarball = { path = "data.tar", sha256 = "@SHA@" }
"#;

/// The same definition: tables and keys in another order, other comments and spacing.
const ID_DEF_REORDERED: &str = r#"
[data]
tarball   = { sha256 = "@SHA@", path = "data.tar" }   # pinned
dest = "/srv"

[service]
dest = "/opt/svc"
ref = "main"
repo = "svc"

[system]
packages = [ "curl",   "jq" ]
mirror = "http://deb.debian.org/debian"
hostname = "h"

[builder]
kind = "rootfs"
[os]
release = "bookworm"
family = "debian"
[image]
version = "1"
name = "idtest"
"#;

#[test]
fn ids_ignore_key_order_comments_and_whitespace() {
    let f = Fixture::new();
    let a = f.ids(&f.write("a.toml", ID_DEF));
    let b = f.ids(&f.write("b.toml", ID_DEF_REORDERED));
    assert_eq!(a["base"], b["base"]);
    assert_eq!(a["bake"], b["bake"]);
    assert_eq!(a["build"], b["build"]);
    assert_eq!(a["base"].as_str().unwrap().len(), 64);
}

#[test]
fn a_one_byte_change_to_the_data_changes_the_bake_id_only() {
    let f = Fixture::new();
    let before = f.ids(&f.write("a.toml", ID_DEF));
    fs::write(f.dir.path().join("data.tar"), b"snapshot v2").unwrap();
    let after = f.ids(&f.write("a.toml", ID_DEF));
    assert_eq!(
        before["base"], after["base"],
        "the OS layer does not depend on the data"
    );
    assert_ne!(before["bake"], after["bake"]);
    assert_ne!(before["build"], after["build"]);
}

#[test]
fn a_one_byte_change_to_the_template_changes_the_base_id() {
    let f = Fixture::new();
    let with_template = ID_DEF.replace("kind = \"rootfs\"", "kind = \"installer\"")
        + "\n[installer]\niso = { path = \"data.tar\", sha256 = \"@SHA@\" }\nboot_command = [\"<enter>\"]\ntemplate = \"debian.cfg.hbs\"\n";
    let def = f.write("a.toml", &with_template);
    let before = f.ids(&def);
    fs::write(
        f.dir.path().join("debian.cfg.hbs"),
        "d-i netcfg/get_hostname string  {{hostname}}\n",
    )
    .unwrap();
    let after = f.ids(&def);
    assert_ne!(before["base"], after["base"]);
    assert_ne!(before["bake"], after["bake"], "the bake sits on the base");
}

#[test]
fn a_new_service_commit_changes_the_bake_id() {
    let f = Fixture::new();
    let def = f.write("a.toml", ID_DEF);
    let before = f.ids(&def);
    let repo = f.dir.path().join("svc");
    fs::write(repo.join("run.sh"), "echo hello\n").unwrap();
    assert!(Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qam",
            "two"
        ])
        .status()
        .unwrap()
        .success());
    let after = f.ids(&def);
    assert_eq!(before["base"], after["base"]);
    assert_ne!(before["bake"], after["bake"]);
    assert_ne!(before["service_commit"], after["service_commit"]);
}

#[test]
fn a_wrong_data_checksum_names_the_file_and_both_digests() {
    let f = Fixture::new();
    let pinned = f.sha();
    let def = f.write("a.toml", ID_DEF);
    fs::write(f.dir.path().join("data.tar"), b"tampered").unwrap();
    let actual = f.sha();
    let (code, _, err) = run(imgforge().arg("id").arg(&def));
    assert_ne!(code, 0);
    assert!(
        err.contains("data.tar") && err.contains("field `data.tarball.sha256`"),
        "{err}"
    );
    assert!(err.contains(&pinned) && err.contains(&actual), "{err}");
}

#[test]
fn destinations_outside_the_place_they_name_are_refused() {
    let tar = "tarball = { path = \"d.tar\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }";
    let cases = [
        (
            format!("{GOOD}\n[data]\ndest = \"../../etc\"\n{tar}\n"),
            "DIR/bad.toml:17:8: field `data.dest`",
            "relative path",
        ),
        (
            format!("{GOOD}\n[data]\ndest = \"/srv/../etc\"\n{tar}\n"),
            "DIR/bad.toml:17:8: field `data.dest`",
            "contains `..`",
        ),
        (
            format!("{GOOD}\n[service]\nrepo = \".\"\nref = \"HEAD\"\ndest = \"opt/web\"\n"),
            "DIR/bad.toml:19:8: field `service.dest`",
            "relative path",
        ),
        (
            format!(
                "{GOOD}\n[[provisioners]]\ntype = \"file\"\nsource = \"f\"\ndest = \"/etc/../../root/x\"\n"
            ),
            "field `provisioners[0]",
            "contains `..`",
        ),
    ];
    for (text, location, problem) in cases {
        let (code, err) = validate_text(&text);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(location), "{location}: {err}");
        assert!(err.contains(problem), "{problem}: {err}");
    }
}

#[test]
fn validation_errors_are_printed_once() {
    let (code, err) = validate_text(&GOOD.replace("rootfs", "chroot"));
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.matches("unknown variant `chroot`").count(), 1, "{err}");
    assert!(err.contains("1 of 1 definitions are invalid"), "{err}");
}

#[test]
fn every_consistency_problem_is_reported_at_its_own_line() {
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[machine]\nfirmware = \"uefi\"\ndisk_size = \"512M\"\n\n[output]\nformats = []\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("DIR/bad.toml:18:1: field `machine.disk_size`: a UEFI disk needs at least 1G"),
        "{err}"
    );
    assert!(
        err.contains("DIR/bad.toml:21:1: field `output.formats`: name at least one"),
        "{err}"
    );
}

#[test]
fn publish_targets_are_checked_before_any_build() {
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[publish.aws]\nregion = \"us-east-1\"\nupload = \"ftp\"\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("DIR/bad.toml:18:10: field `publish.aws.upload`")
            && err.contains("unknown variant `ftp`"),
        "{err}"
    );
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[publish.aws]\nregion = \"us-east-1\"\nupload = \"import\"\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `publish.aws.upload`") && err.contains("name the bucket"),
        "{err}"
    );
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[publish.eucalyptus]\nendpoint = \"http://euca:8773/\"\nbucket = \"b\"\n\
         cloud_cert = \"c.pem\"\ncert = \"u.pem\"\nprivate_key = \"k.pem\"\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `publish.eucalyptus`") && err.contains("missing field `user`"),
        "{err}"
    );
}

#[test]
fn a_template_error_is_located_in_the_template_not_the_definition() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("t.hbs"),
        "d-i debian-installer/locale string en_US\nd-i netcfg/get_hostname string {{hostnam}}\n",
    )
    .unwrap();
    let def = GOOD.replace("kind = \"rootfs\"", "kind = \"installer\"")
        + "\n[installer]\niso = { path = \"x.iso\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }\nboot_command = [\"<enter>\"]\ntemplate = \"t.hbs\"\n";
    fs::write(dir.path().join("d.toml"), def).unwrap();
    fs::write(dir.path().join("x.iso"), "").unwrap();
    let (code, _, err) = run(imgforge().arg("validate").arg(dir.path().join("d.toml")));
    assert_eq!(code, 2, "{err}");
    let err = err.replace(&dir.path().display().to_string(), "DIR");
    assert!(
        err.contains("DIR/d.toml: the answer file cannot be rendered: DIR/t.hbs: line 2"),
        "{err}"
    );
    assert!(err.contains("hostnam"), "{err}");
    assert!(!err.contains(":1:1:"), "no made-up location: {err}");
}

#[test]
fn a_service_unit_missing_from_the_tree_is_refused_before_any_build() {
    let f = Fixture::new();
    let def = f.write(
        "unit.toml",
        &ID_DEF.replace(
            "dest = \"/opt/svc\"",
            "dest = \"/opt/svc\"\nunit = \"svc.service\"",
        ),
    );
    for command in ["validate", "id"] {
        let (code, _, err) = run(imgforge().arg(command).arg(&def));
        assert_ne!(code, 0, "{command}");
        assert!(
            err.contains("field `service.unit`") && err.contains("svc.service is not in"),
            "{command}: {err}"
        );
    }
    let (code, _, err) = run(imgforge().arg("validate").arg(&def));
    assert_eq!(code, 2, "bad input: {err}");
    let ok = f.write(
        "unit-ok.toml",
        &ID_DEF.replace(
            "dest = \"/opt/svc\"",
            "dest = \"/opt/svc\"\nunit = \"run.sh\"",
        ),
    );
    f.ids(&ok);
    let (code, _, err) = run(imgforge().arg("validate").arg(&ok));
    assert_eq!(code, 0, "{err}");

    // A playbook said to be in the service tree is looked for there, at the resolved commit.
    let playbook = |path: &str| {
        format!("{ID_DEF}\n[[provisioners]]\ntype = \"ansible\"\nplaybook = \"{path}\"\nin_service = true\n")
    };
    let (code, _, err) = run(imgforge()
        .arg("validate")
        .arg(f.write("pb.toml", &playbook("site.yml"))));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `provisioners[0].playbook`: site.yml is not in"),
        "{err}"
    );
    let (code, _, err) = run(imgforge()
        .arg("validate")
        .arg(f.write("pb-ok.toml", &playbook("run.sh"))));
    assert_eq!(code, 0, "{err}");
}

/// Validates `text` as a definition in a fresh directory holding a copy of the Ansible and
/// Chef fixtures (`ansible/`, `chef/`).
fn validate_beside_fixtures(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("tests/fixtures/ansible"))
        .arg(repo_root().join("tests/fixtures/chef"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    fs::write(
        dir.path().join("ansible/unvendored.yml"),
        "roles:\n  - src: https://github.com/example/ansible-role-nginx.git\n    name: nginx\n",
    )
    .unwrap();
    let path = dir.path().join("bad.toml");
    fs::write(&path, text).unwrap();
    let (code, _, err) = run(imgforge().arg("validate").arg(&path));
    (code, err.replace(&dir.path().display().to_string(), "DIR"))
}

#[test]
fn ansible_and_chef_provisioners_validate_against_their_files() {
    let good = format!(
        "{GOOD}\n[[provisioners]]\ntype = \"ansible\"\nplaybook = \"ansible/site.yml\"\nrequirements = \"requirements.yml\"\nextra_vars = {{ greeting = \"hi\" }}\n\n[[provisioners]]\ntype = \"chef\"\ncookbooks = \"chef/cookbooks\"\nroles = \"chef/roles\"\nenvironments = \"chef/environments\"\nenvironment = \"staging\"\nrun_list = [\"recipe[web::default]\", \"web\", \"role[base]\"]\n"
    );
    let (code, err) = validate_beside_fixtures(&good);
    assert_eq!(code, 0, "{err}");

    // Line numbers: GOOD is 14 lines, then a blank line, so the first [[provisioners]] is
    // line 16 and the second 22.
    let cases = [
        (
            good.replace("ansible/site.yml", "ansible/missing.yml"),
            "DIR/bad.toml:18:1: field `provisioners[0].playbook`",
            "DIR/ansible/missing.yml does not exist",
        ),
        (
            good.replace("\"requirements.yml\"", "\"unvendored.yml\""),
            "DIR/bad.toml:19:1: field `provisioners[0].requirements`",
            "role `nginx` from DIR/ansible/unvendored.yml is not vendored: put it in DIR/ansible/roles/nginx",
        ),
        (
            good.replace("\"recipe[web::default]\"", "\"recipe[nginx::default]\""),
            "DIR/bad.toml:28:1: field `provisioners[1].run_list`",
            "`recipe[nginx::default]`: DIR/chef/cookbooks/nginx/recipes/default.rb does not exist (cookbook `nginx`",
        ),
        (
            good.replace("\"role[base]\"", "\"role[db]\""),
            "field `provisioners[1].run_list`",
            "`role[db]`: no db.json or db.rb in DIR/chef/roles",
        ),
        (
            good.replace("environment = \"staging\"", "environment = \"prod\""),
            "DIR/bad.toml:27:1: field `provisioners[1].environment`",
            "no prod.json or prod.rb in DIR/chef/environments",
        ),
        (
            good.replace("requirements = ", "runner = \"host\"\nrequirements = "),
            "DIR/bad.toml:19:1: field `provisioners[0].runner`",
            "set needs_running_system = true",
        ),
        (
            good.replace("playbook = ", "playbok = "),
            "field `provisioners[0]",
            "unknown field `playbok`",
        ),
    ];
    for (text, location, problem) in cases {
        let (code, err) = validate_beside_fixtures(&text);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(location), "{location}: {err}");
        assert!(err.contains(problem), "{problem}: {err}");
    }

    // Every problem at once, each at its own line.
    let both = good
        .replace("ansible/site.yml", "ansible/missing.yml")
        .replace("chef/cookbooks", "chef/no-cookbooks");
    let (code, err) = validate_beside_fixtures(&both);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml:18:1: field `provisioners[0].playbook`"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:24:1: field `provisioners[1].cookbooks`: DIR/chef/no-cookbooks is not a directory"),
        "{err}"
    );
}

#[test]
fn playbook_and_cookbook_inputs_change_the_bake_id_exactly_when_they_change() {
    let f = Fixture::new();
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("tests/fixtures/ansible"))
        .arg(repo_root().join("tests/fixtures/chef"))
        .arg(f.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let def = |greeting: &str, run_list: &str| {
        format!(
            "{ID_DEF}\n[[provisioners]]\ntype = \"ansible\"\nplaybook = \"ansible/site.yml\"\nextra_vars = {{ greeting = \"{greeting}\" }}\n\n[[provisioners]]\ntype = \"chef\"\ncookbooks = \"chef/cookbooks\"\nroles = \"chef/roles\"\nrun_list = {run_list}\n"
        )
    };
    let ids = |greeting: &str, run_list: &str| f.ids(&f.write("a.toml", &def(greeting, run_list)));
    let before = ids("v1", "[\"web\"]");
    assert_eq!(
        before,
        ids("v1", "[\"web\"]"),
        "the same inputs, the same ids"
    );

    let var = ids("v2", "[\"web\"]");
    let run_list = ids("v1", "[\"web\", \"role[base]\"]");
    let template = f
        .dir
        .path()
        .join("ansible/roles/webpage/templates/page.html.j2");
    fs::write(&template, "<p>{{ greeting }}!</p>\n").unwrap();
    let role_file = ids("v1", "[\"web\"]");
    let recipe = f.dir.path().join("chef/cookbooks/web/recipes/default.rb");
    fs::write(&recipe, "log 'changed'\n").unwrap();
    let cookbook_file = ids("v1", "[\"web\"]");
    for (what, after, previous) in [
        ("an extra var", &var, &before),
        ("the run list", &run_list, &before),
        ("a role's template", &role_file, &before),
        ("a recipe", &cookbook_file, &role_file),
    ] {
        assert_eq!(after["base"], previous["base"], "{what}: the base stays");
        assert_ne!(
            after["bake"], previous["bake"],
            "{what} changes the bake id"
        );
    }
}

#[test]
fn definitions_with_other_names_and_versions_but_the_same_os_share_one_base() {
    let f = Fixture::new();
    let a = f.ids(&f.write("a.toml", ID_DEF));
    let other = ID_DEF
        .replace("name = \"idtest\"", "name = \"other-image\"")
        .replace("version = \"1\"", "version = \"7.3\"");
    let b = f.ids(&f.write("b.toml", &other));
    assert_eq!(a["base"], b["base"], "the OS layer is shared");
    assert_ne!(
        a["bake"], b["bake"],
        "name and version are baked into build.json"
    );
    let c = f.ids(&f.write(
        "c.toml",
        &ID_DEF.replace("hostname = \"h\"", "hostname = \"g\""),
    ));
    assert_ne!(a["base"], c["base"], "an OS setting is part of the base");
}

#[test]
fn a_virtual_initramfs_is_refused_for_the_installer_builder_and_unknown_kinds_by_name() {
    let installer = fs::read_to_string(repo_root().join("images/debian-12-installer.toml"))
        .unwrap()
        .replace(
            "firmware = \"bios\"",
            "firmware = \"bios\"\ninitramfs = \"virtual\"",
        );
    let (code, err) = validate_text(&installer);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `machine.initramfs`") && err.contains("rootfs builder only"),
        "{err}"
    );
    let (code, err) = validate_text(&format!("{GOOD}\n[machine]\ninitramfs = \"tiny\"\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `machine.initramfs`") && err.contains("unknown variant `tiny`"),
        "{err}"
    );
    let (code, err) = validate_text(&format!("{GOOD}\n[machine]\ninitramfs = \"virtual\"\n"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn environment_outputs_are_refused_by_name_where_they_cannot_work() {
    let (code, err) = validate_text(&format!("{GOOD}\n[output]\nformats = [\"vagrant\"]\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `output.formats")
            && err.contains("unknown variant `vagrant`")
            && err.contains("vagrant-libvirt"),
        "{err}"
    );
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[machine]\nfirmware = \"uefi\"\ndisk_size = \"2G\"\n[output]\nformats = [\"vagrant-libvirt\"]\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `output.formats`") && err.contains("boots with BIOS"),
        "{err}"
    );
    let rocky = fs::read_to_string(repo_root().join("images/rocky-9-kickstart.toml")).unwrap();
    let (code, err) = validate_text(&format!("{rocky}\n[cloud]\ninit = \"cloud-init\"\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `cloud.init`") && err.contains("Debian images only"),
        "{err}"
    );
    let (code, err) = validate_text(&format!(
        "{rocky}\n[output]\nformats = [\"vagrant-libvirt\"]\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `output.formats`") && err.contains("Debian images only"),
        "{err}"
    );
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[cloud]\ninit = \"cloud-init\"\nuser = \"root\"\n"
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("field `cloud.user`"), "{err}");
    let (code, err) = validate_text(&format!("{GOOD}\n[cloud]\ninit = \"yes\"\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("field `cloud.init`") && err.contains("unknown variant `yes`"),
        "{err}"
    );
    let (code, err) = validate_text(&format!(
        "{GOOD}\n[cloud]\ninit = \"cloud-init\"\n[output]\nformats = [\"qcow2\", \"vagrant-libvirt\"]\n"
    ));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn cloud_init_is_part_of_the_base_and_on_by_default_with_a_publish_target() {
    let f = Fixture::new();
    let plain = f.write("plain.toml", ID_DEF);
    let cloud = f.write(
        "cloud.toml",
        &format!("{ID_DEF}\n[cloud]\ninit = \"cloud-init\"\n"),
    );
    let published = f.write(
        "published.toml",
        &format!("{ID_DEF}\n[publish.aws]\nregion = \"us-east-1\"\n"),
    );
    let opted_out = f.write(
        "opted-out.toml",
        &format!("{ID_DEF}\n[publish.aws]\nregion = \"us-east-1\"\n[cloud]\ninit = \"none\"\n"),
    );
    let (plain, cloud) = (f.ids(&plain), f.ids(&cloud));
    let (published, opted_out) = (f.ids(&published), f.ids(&opted_out));
    assert_ne!(
        plain["base"], cloud["base"],
        "cloud-init's packages are in the base"
    );
    assert_eq!(
        cloud["base"], published["base"],
        "a publish target turns it on"
    );
    assert_eq!(
        plain["base"], opted_out["base"],
        "init = \"none\" keeps today's image"
    );
}

/// One bad value per rule of `validate`: each is refused naming the file, line and field, and
/// says the rule (and the nearest valid value where there is one).
#[test]
fn every_value_rule_refuses_its_bad_value_naming_the_field() {
    let zeros = "0".repeat(64);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            GOOD.replace("hostname = \"h\"", "hostname = \"web_1\""),
            "system.hostname",
            "RFC 1123",
        ),
        (format!("{GOOD}domain = \"example..com\"\n"), "system.domain", "not a DNS domain"),
        (
            format!("{GOOD}timezone = \"Europe/Berln\"\n"),
            "system.timezone",
            "did you mean `Europe/Berlin`?",
        ),
        (
            format!("{GOOD}locale = \"en_US.UTF8\"\n"),
            "system.locale",
            "did you mean `en_US.UTF-8`?",
        ),
        (
            format!("{GOOD}keyboard = \"qwerty\"\n"),
            "system.keyboard",
            "not a known keyboard layout (checked against this host's",
        ),
        (
            format!("{GOOD}packages = [\"nginx-light\", \"Curl\"]\n"),
            "system.packages",
            "`Curl` is not a package name",
        ),
        (
            format!("{GOOD}mirror_key = \"missing.gpg\"\n"),
            "system.mirror_key",
            "does not exist",
        ),
        (
            format!("{GOOD}\n[[system.users]]\nname = \"Ops\"\n"),
            "system.users[0].name",
            "not a user name",
        ),
        (
            format!("{GOOD}\n[[system.users]]\nname = \"ops\"\n\n[[system.users]]\nname = \"root\"\n"),
            "system.users[1].name",
            "an account the base system has already",
        ),
        (
            format!("{GOOD}\n[[system.repositories]]\nuri = \"http://127.0.0.1/r\"\nsuites = [\"stable\"]\n"),
            "system.repositories[0].signed_by",
            "an unsigned repository is refused",
        ),
        (format!("{GOOD}\n[machine]\ncpus = 0\n"), "machine.cpus", "1 to 64"),
        (
            format!("{GOOD}\n[machine]\nmemory_mib = 128\n"),
            "machine.memory_mib",
            "at least 256 MiB",
        ),
        (
            format!("{GOOD}\n[machine]\ndisk_size = \"1G\"\n"),
            "machine.disk_size",
            "at least 2G",
        ),
        (
            format!("{GOOD}\n[machine]\ndisk_size = \"3T\"\n"),
            "machine.disk_size",
            "at most 2T",
        ),
        (
            format!("{GOOD}\n[machine.timeouts]\nboot = \"0s\"\n"),
            "machine.timeouts.boot",
            "a timeout of 0",
        ),
        (
            format!("{GOOD}\n[[checks]]\ntype = \"tcp\"\nport = 0\n"),
            "checks[0].port",
            "1 to 65535",
        ),
        (
            format!("{GOOD}\n[[checks]]\ntype = \"http\"\nport = 80\npath = \"@evil.example/\"\nexpect = \"ok\"\n"),
            "checks[0].path",
            "not a request path",
        ),
        (
            format!("{GOOD}\n[[checks]]\ntype = \"http\"\nport = 80\npath = \"/\"\nexpect = \"\"\n"),
            "checks[0].expect",
            "matches every page",
        ),
        (
            format!("{GOOD}\n[[checks]]\ntype = \"tcp\"\nport = 22\nexpect = \" \"\n"),
            "checks[0].expect",
            "matches any banner",
        ),
        (
            format!("{GOOD}\n[data]\ndest = \"/srv\"\ntarball = {{ path = \"missing.tar\", sha256 = \"{zeros}\" }}\n"),
            "data.tarball.path",
            "DIR/missing.tar does not exist",
        ),
    ];
    for (text, field, rule) in &cases {
        let (code, err) = validate_text(text);
        assert_eq!(code, 2, "{field} was not refused:\n{text}");
        let located = err
            .lines()
            .find(|l| l.contains(&format!("field `{field}`")))
            .unwrap_or_else(|| panic!("no refusal names `{field}`: {err}"));
        assert!(located.contains(rule), "{field}: {located}");
        let at = located
            .split("DIR/bad.toml:")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|line| line.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no file and line: {located}"));
        let line = text.lines().nth(at - 1).unwrap_or_default();
        let key = field.rsplit('.').next().unwrap().split('[').next().unwrap();
        assert!(
            line.contains(key) || line.starts_with('['),
            "{field} located at line {at} `{line}`"
        );
    }
    // All at once, each at its own line.
    let (code, err) = validate_text(&format!(
        "{}timezone = \"Mars/Olympus\"\nkeyboard = \"qwerty\"\n\n[machine]\ncpus = 0\n",
        GOOD.replace("hostname = \"h\"", "hostname = \"-h\"")
    ));
    assert_eq!(code, 2);
    for field in [
        "system.hostname",
        "system.timezone",
        "system.keyboard",
        "machine.cpus",
    ] {
        assert!(err.contains(&format!("field `{field}`")), "{field}: {err}");
    }
}

#[test]
fn a_definition_without_checks_validates_with_a_warning() {
    let (code, err) = validate_text(GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("no [[checks]]: verify will prove only that the image boots"),
        "{err}"
    );
    let (_, err) = validate_text(&format!("{GOOD}\n[[checks]]\ntype = \"tcp\"\nport = 22\n"));
    assert!(!err.contains("no [[checks]]"), "{err}");
}
