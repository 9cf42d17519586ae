//! The `--json` event names are an interface for CI: one style, documented in the README, and
//! pinned here so that a rename is a deliberate change to this list.

use imgforge::events::Event;

const NAMES: [&str; 54] = [
    "ids",
    "phase",
    "base_cached",
    "http_server",
    "answer_file_fetched",
    "installed",
    "artifact",
    "artifact_checked",
    "check_passed",
    "cached",
    "output_damaged",
    "manifest",
    "base",
    "registered",
    "verified",
    "error",
    "valid",
    "invalid",
    "doctor",
    "snapshot_started",
    "uploaded",
    "image_reused",
    "image_registered",
    "image_copied",
    "image_copy_reused",
    "plan",
    "skip",
    "noop",
    "launch",
    "waiting",
    "resume",
    "replaced",
    "failed",
    "warning",
    "asg_surge",
    "asg_refresh",
    "summary",
    "keep",
    "remove",
    "removed",
    "build_plan",
    "build_summary",
    "launch_template_version",
    "base_downloaded",
    "base_uploaded",
    "bake_downloaded",
    "bake_uploaded",
    "diff",
    "signed",
    "signature_checked",
    "cache_gc",
    "locked",
    "outdated",
    "base_patch",
];

#[test]
fn event_names_are_pinned_and_snake_case() {
    assert_eq!(Event::ALL.map(Event::name), NAMES);
    for name in NAMES {
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name} is not snake_case"
        );
    }
}

#[test]
fn the_readme_documents_every_event_and_no_other() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### JSON events")
        .nth(1)
        .expect("README has a JSON events section");
    let documented: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with("| event"))
        .skip(2)
        .take_while(|l| l.starts_with("| `"))
        .map(|l| l.split('`').nth(1).unwrap())
        .collect();
    assert_eq!(documented, NAMES);
}
