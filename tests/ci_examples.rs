//! The example CI pipelines in `.ci/examples/` pass the official schemas (PyPI
//! `check-jsonschema` with its built-in GitHub workflow and GitLab CI schemas, installed by
//! `scripts/setup --test`), a broken copy fails them, and every imgforge flag they use exists.

mod common;

use common::{imgforge, repo_root, run};
use std::path::Path;
use std::process::Command;

const PIPELINES: [(&str, &str); 2] = [
    (".ci/examples/github-actions.yml", "vendor.github-workflows"),
    (".ci/examples/gitlab-ci.yml", "vendor.gitlab-ci"),
];

fn check_jsonschema(file: &Path, schema: &str) -> (bool, String) {
    let out = Command::new(repo_root().join(".venv/bin/check-jsonschema"))
        .args(["--builtin-schema", schema])
        .arg(file)
        .output()
        .expect("check-jsonschema is installed by scripts/setup --test");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_example_pipelines_pass_their_schemas_and_a_broken_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    for (file, schema) in PIPELINES {
        let path = repo_root().join(file);
        let (ok, text) = check_jsonschema(&path, schema);
        assert!(ok, "{file}: {text}");

        // The check can fail: a job whose steps/script is misspelled is refused.
        let broken = std::fs::read_to_string(&path)
            .unwrap()
            .replacen("steps:", "stepz:", 1)
            .replacen("script:", "scrypt:", 1);
        let copy = dir.path().join(Path::new(file).file_name().unwrap());
        std::fs::write(&copy, broken).unwrap();
        let (ok, text) = check_jsonschema(&copy, schema);
        assert!(!ok, "{file}: a broken copy passed: {text}");
    }
}

#[test]
fn every_imgforge_flag_the_pipelines_use_exists() {
    let mut checked = 0;
    for (file, _) in PIPELINES {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        for line in text.lines() {
            let Some(rest) = line.split("$IMGFORGE").nth(1) else {
                continue;
            };
            let mut words = rest.trim_start_matches('"').split_whitespace();
            let Some(subcommand) = words.next() else {
                continue;
            };
            let (code, help, err) = run(imgforge().args([subcommand, "--help"]));
            assert_eq!(code, 0, "{file}: imgforge {subcommand}: {err}");
            let flags = words
                .map(|w| w.trim_end_matches(['\'', '"']))
                .filter(|w| w.starts_with("--"));
            for flag in flags {
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{file}: imgforge {subcommand} has no {flag}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} flags found: the scan is broken"
    );
}
