//! Ansible and Chef in the bake, on real images: a playbook with a role and a template installs
//! a package from the Debian mirror and writes a page the checks fetch, with Debian's
//! ansible-core in the image (offline) or the host's over SSH; a changed variable re-bakes on
//! the cached base; a failing task or resource fails the build by name. No Chef client is
//! packaged for Debian 12, so the Chef tests stop at the client's invocation: a stand-in
//! `chef-solo` (tests/fixtures/chef/stand-in-chef-solo, which converges nothing) records how it
//! was called and what was staged for it.

mod common;

use common::repo_root;
use common::web::{base_lock, build_dir, last_manifest, read_from_image, WebFixture};
use serde_json::Value;
use std::fs;
use std::process::Command;

/// Copies `tests/fixtures/NAME` next to the fixture's definition.
fn copy_fixture(web: &WebFixture, name: &str) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("tests/fixtures").join(name))
        .arg(web.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The ids event of a build.
fn ids(events: &[Value]) -> &Value {
    &events
        .iter()
        .find(|e| e["event"] == "ids")
        .expect("an ids event")["ids"]
}

fn phases(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["event"] == "phase")
        .filter_map(|e| e["phase"].as_str())
        .collect()
}

/// The web fixture with the playbook as its one provisioner, checked by the page it writes.
fn ansible_web(greeting: &str, provisioner_settings: &str) -> WebFixture {
    let web = WebFixture::new("ansible test", "");
    copy_fixture(&web, "ansible");
    web.insert_before_checks(&format!(
        "[[provisioners]]\ntype = \"ansible\"\nplaybook = \"ansible/site.yml\"\nrequirements = \"requirements.yml\"\nextra_vars = {{ greeting = \"{greeting}\" }}\n{provisioner_settings}\n"
    ));
    web.replace_checks(&format!(
        "[[checks]]\ntype = \"http\"\nport = 80\npath = \"/ansible.html\"\nexpect = \"greeting {greeting} / Hello, world!\"\n"
    ));
    web
}

/// Replaces `from` with `to` everywhere in the fixture's definition.
fn edit_definition(web: &WebFixture, from: &str, to: &str) {
    let def = fs::read_to_string(web.definition()).unwrap();
    assert!(def.contains(from), "{from} in {def}");
    fs::write(web.definition(), def.replace(from, to)).unwrap();
}

/// Whether dpkg's status file in the image has `package` installed.
fn installed(raw: &std::path::Path, package: &str) -> bool {
    let status = read_from_image(raw, "/var/lib/dpkg/status").expect("dpkg status");
    status.split("\n\n").any(|stanza| {
        stanza.lines().any(|l| l == format!("Package: {package}"))
            && stanza.lines().any(|l| l == "Status: install ok installed")
    })
}

#[test]
fn a_playbook_bakes_offline_rebakes_on_a_changed_variable_and_a_failing_task_is_named() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let web = ansible_web("v1", "");
    let (code, events, err) = web.build(&[]);
    assert_eq!(code, 0, "{err}");
    let manifest = last_manifest(&events);
    assert!(
        events.iter().any(|e| e["event"] == "check_passed"),
        "the page the playbook wrote was fetched from the booted image"
    );
    let version = manifest["tools"]["provisioners[0]"]
        .as_str()
        .unwrap_or_default();
    assert!(
        version.starts_with("ansible-playbook [core 2.14"),
        "{manifest}"
    );

    let raw = build_dir(manifest).join("debian-12-web-1.0.0.raw");
    assert!(installed(&raw, "hello"), "the playbook installed hello");
    assert!(
        installed(&raw, "nginx-light"),
        "the purge kept what the image needs"
    );
    for package in ["ansible-core", "python3-apt"] {
        assert!(
            !installed(&raw, package),
            "{package} was installed for the bake only"
        );
    }
    assert_eq!(read_from_image(&raw, "/usr/bin/ansible-playbook"), None);
    assert_eq!(read_from_image(&raw, "/root/.ansible"), None);
    assert_eq!(read_from_image(&raw, "/var/lib/imgforge-bake/tools"), None);
    let record: Value =
        serde_json::from_str(&read_from_image(&raw, "/etc/imgforge/build.json").unwrap()).unwrap();
    assert_eq!(record["tools"]["provisioners[0]"], version, "{record}");

    // One variable changed: a new bake on the cached base writing the new value (the page is
    // read from the image: serving it was proven above).
    let before = ids(&events).clone();
    edit_definition(&web, "greeting v1", "greeting v2");
    edit_definition(&web, "greeting = \"v1\"", "greeting = \"v2\"");
    let (code, events, err) = web.build(&["--no-verify"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&events)["base"], before["base"]);
    assert_ne!(ids(&events)["bake"], before["bake"]);
    assert!(
        events.iter().any(|e| e["event"] == "base_cached"),
        "{events:?}"
    );
    assert!(!phases(&events).contains(&"mmdebstrap"), "no new base");
    let raw = build_dir(last_manifest(&events)).join("debian-12-web-1.0.0.raw");
    let page = read_from_image(&raw, "/srv/web/ansible.html").expect("the page");
    assert!(page.contains("greeting v2 / Hello, world!"), "{page}");

    // A failing task fails the build, naming the task.
    edit_definition(
        &web,
        "greeting = \"v2\" }",
        "greeting = \"v2\", fail_on_purpose = true }",
    );
    let before = web.outputs();
    let (code, _, err) = web.build(&[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("provisioners[0] (ansible ansible/site.yml): task webpage : break on purpose"),
        "{err}"
    );
    assert!(
        err.contains("the definition asked this task to fail"),
        "quotes Ansible: {err}"
    );
    assert_eq!(web.outputs(), before, "no new output");
}

#[test]
fn the_same_playbook_runs_from_the_host_over_ssh() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    // Debian's Ansible named in the packages: the same base as the offline test (which adds it
    // for its playbook), kept in the image, with the python the host's Ansible needs there.
    let web = ansible_web("over ssh", "runner = \"host\"\nneeds_running_system = true");
    edit_definition(
        &web,
        "packages = [\"nginx-light\"]",
        "packages = [\"nginx-light\", \"ansible-core\", \"python3-apt\"]",
    );
    let offline = ansible_web("over ssh", "");
    let base_of = |web: &WebFixture| {
        let (code, out, err) = common::run(
            common::imgforge()
                .args(["id", "--json"])
                .arg(web.definition()),
        );
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(out.trim()).unwrap()["base"].clone()
    };
    assert_eq!(base_of(&web), base_of(&offline), "one base for both");
    // Its page is read from the image: the offline test proved such a page is served.
    let (code, events, err) = web.build(&["--no-verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        phases(&events).contains(&"bake (running system, SSH)"),
        "{events:?}"
    );
    let manifest = last_manifest(&events);
    let host = Command::new("ansible-playbook")
        .arg("--version")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    assert_eq!(
        manifest["tools"]["provisioners[0]"].as_str(),
        host.lines().next(),
        "the host's Ansible ran"
    );
    let raw = build_dir(manifest).join("debian-12-web-1.0.0.raw");
    assert!(installed(&raw, "hello"));
    let page = read_from_image(&raw, "/srv/web/ansible.html").expect("the page");
    assert!(page.contains("greeting over ssh / Hello, world!"), "{page}");
    assert!(
        installed(&raw, "ansible-core"),
        "named in system.packages, it stays"
    );
    assert_eq!(read_from_image(&raw, "/run/imgforge-ansible"), None);
    assert_eq!(read_from_image(&raw, "/root/.ansible"), None);
}

#[test]
fn chef_is_staged_and_invoked_and_a_missing_client_or_failed_resource_is_named() {
    let _guard = base_lock().lock().unwrap_or_else(|e| e.into_inner());
    let web = WebFixture::new("chef test", "");
    copy_fixture(&web, "chef");
    let chef = "[[provisioners]]\ntype = \"chef\"\ncookbooks = \"chef/cookbooks\"\nroles = \"chef/roles\"\nenvironments = \"chef/environments\"\nenvironment = \"staging\"\nrun_list = [\"web\", \"role[base]\"]\nattributes = { greeting = \"from chef\" }\n";

    // No client in the image: the build fails saying so, before anything is converged.
    web.insert_before_checks(chef);
    let (code, _, err) = web.build(&["--no-verify"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "provisioners[0] (chef recipe[web::default], role[base]): no Chef client in the image"
        ),
        "{err}"
    );
    assert!(err.contains("exit status 127"), "{err}");

    // A stand-in client (not Chef: it converges nothing) installed by an earlier step shows
    // the files imgforge staged and the command line it ran.
    let stand_in = "[[provisioners]]\ntype = \"file\"\nsource = \"chef/stand-in-chef-solo\"\ndest = \"/usr/local/bin/chef-solo\"\nmode = \"0755\"\n";
    web.set_data("chef test", "");
    web.insert_before_checks(&format!("{stand_in}\n{chef}"));
    let (code, events, err) = web.build(&["--no-verify"]);
    assert_eq!(code, 0, "{err}");
    let manifest = last_manifest(&events);
    assert_eq!(
        manifest["tools"]["provisioners[1]"],
        "stand-in chef-solo 0 (not Chef)"
    );
    let raw = build_dir(manifest).join("debian-12-web-1.0.0.raw");
    let seen = read_from_image(&raw, "/srv/web/chef-invocation.txt").expect("the client ran");
    let dir = "/run/bake/provisioners/1";
    assert!(
        seen.contains(&format!(
            "args: --config {dir}/solo.rb --json-attributes {dir}/node.json --environment staging --no-color --force-formatter\n"
        )),
        "{seen}"
    );
    assert!(seen.contains("license: accept-no-persist"), "{seen}");
    assert!(
        seen.contains(&format!("cookbook_path [\"{dir}/cookbooks\"]")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("file_cache_path \"{dir}/cache\"")),
        "{seen}"
    );
    let node = seen
        .split("--- node.json\n")
        .nth(1)
        .unwrap()
        .split("--- files")
        .next()
        .unwrap();
    let node: Value = serde_json::from_str(node).unwrap();
    assert_eq!(
        node["run_list"],
        serde_json::json!(["recipe[web::default]", "role[base]"])
    );
    assert_eq!(node["greeting"], "from chef");
    for file in [
        "./cookbooks/web/recipes/default.rb",
        "./roles/base.json",
        "./environments/staging.json",
        "./solo.rb",
        "./node.json",
    ] {
        assert!(seen.contains(&format!("{file}\n")), "{file} staged: {seen}");
    }

    // A resource the client reports as failed fails the build, by name.
    web.set_data("chef test", "");
    web.insert_before_checks(&format!(
        "{stand_in}\n{}",
        chef.replace(
            "greeting = \"from chef\"",
            "greeting = \"x\", fail_on_purpose = true"
        )
    ));
    let (code, _, err) = web.build(&["--no-verify"]);
    assert_ne!(code, 0);
    assert!(err.contains("resource file[/srv/web/chef.html]"), "{err}");
}
