//! The `--json` event names are an interface for CI: one style, each listed once (the
//! `events!` list in `src/events.rs`), and the README's table checked against that list, so
//! that a rename or a new kind is a deliberate change to both.

use imgforge::events::Event;
use std::collections::BTreeSet;

fn names() -> Vec<&'static str> {
    Event::ALL.iter().map(|e| e.name()).collect()
}

#[test]
fn event_names_are_snake_case_and_distinct() {
    let names = names();
    for name in &names {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name} is not snake_case"
        );
    }
    let distinct: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        names.len(),
        "a name is used twice: {names:?}"
    );
    assert!(
        names.len() >= 50,
        "the list is read from the types: {names:?}"
    );
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
    assert_eq!(
        documented,
        names(),
        "the README's table, in the types' order"
    );
}
