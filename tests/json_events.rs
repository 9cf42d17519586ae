//! The `--json` event names and their payloads are an interface for CI: one style, each listed
//! once with its payload's fields (the `events!` list in `src/events.rs`), and the README's
//! table checked against that list, so that a rename, a new kind or a new field is a
//! deliberate change to both.

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

/// The README's table of events: (name, the names its fields column puts in backticks).
fn readme_table() -> Vec<(String, BTreeSet<String>)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### JSON events")
        .nth(1)
        .expect("README has a JSON events section");
    section
        .lines()
        .skip_while(|l| !l.starts_with("| event"))
        .skip(2)
        .take_while(|l| l.starts_with("| `"))
        .map(|l| {
            let name = l.split('`').nth(1).unwrap().to_string();
            let fields = l.rsplit('|').nth(1).unwrap();
            let named = fields.split('`').skip(1).step_by(2).map(str::to_string);
            (name, named.collect())
        })
        .collect()
}

#[test]
fn the_readme_documents_every_event_and_no_other() {
    let documented: Vec<String> = readme_table().into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        documented,
        names(),
        "the README's table, in the types' order"
    );
}

#[test]
fn the_readme_documents_every_field_of_every_payload() {
    let mut undocumented = Vec::new();
    let mut checked = 0;
    for ((name, documented), event) in readme_table().iter().zip(Event::ALL) {
        assert_eq!(name, event.name());
        for field in event.fields() {
            checked += 1;
            if !documented.contains(field) {
                undocumented.push(format!("{name}.{field}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "fields the README's table does not name: {undocumented:?}"
    );
    assert!(
        checked > 100,
        "the fields are read from the types: {checked}"
    );
}
