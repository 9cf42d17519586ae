//! The shape of `src/`: no two top-level modules use each other, directly or through others,
//! so the pipeline reads in one direction (a submodule may use its parent, as `base::rootfs`
//! uses `base`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The top-level module a file of `src/` belongs to (`src/base/rootfs.rs` → `base`).
fn top_module(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file names as `crate::NAME`, outside comments.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in source_files() {
        if rel == "main.rs" {
            continue;
        }
        let from = top_module(Path::new(&rel));
        let uses = graph.entry(from.clone()).or_default();
        uses.extend(crate_references(&text).into_iter().filter(|m| *m != from));
    }
    graph
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let graph = module_graph();
    assert!(
        graph.contains_key("build") && graph["build"].contains("bake"),
        "{graph:?}"
    );
    // Depth-first search for a path from each module back to itself.
    for start in graph.keys() {
        let mut stack: Vec<Vec<&String>> = vec![vec![start]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = *path.last().unwrap();
            for next in graph.get(last).into_iter().flatten() {
                if next == start {
                    let cycle: Vec<&str> = path.iter().map(|m| m.as_str()).collect();
                    panic!("module cycle: {} -> {start}", cycle.join(" -> "));
                }
                if seen.insert(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push(longer);
                }
            }
        }
    }
}

#[test]
fn the_reference_scan_sees_uses_and_paths_but_not_comments() {
    let text =
        "use crate::qemu::{Vm, VmConfig};\nlet x = crate::layers::short(id); // crate::verify\n";
    let found: Vec<String> = crate_references(text).into_iter().collect();
    assert_eq!(found, ["layers", "qemu"]);
}

/// The library's surface is the three schema modules plus what `lib.rs` re-exports: every
/// other module is private, so a stage's internals can change without breaking a caller.
#[test]
fn only_the_schema_modules_are_public() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let public: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert_eq!(public, ["definition", "events", "manifest"]);
    let private = lib.lines().filter(|l| l.starts_with("mod ")).count();
    assert!(
        private >= 20,
        "the stage modules are declared privately: {private}"
    );
}

/// The `.rs` files of `src/` as (path relative to `src/`, text).
fn source_files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).unwrap();
                let rel = path.strip_prefix(&src).unwrap().display().to_string();
                out.push((rel, text));
            }
        }
    }
    out.sort();
    out
}

/// Debian's knowledge sits behind its seam (`os.rs` says which files): `apt/` (sources, keys,
/// package sets, dpkg's status), the package set's lock and `imgforge outdated`, the SBOM's
/// package reader, and the rootfs builder (mmdebstrap, its package cache, the patched base).
/// Everything else asks the family through `os`: no other module runs Debian's tools or
/// names the `apt` module. What runs inside a guest is in `templates/`. Another OS family gets
/// a seam of its own, not `if`s elsewhere.
#[test]
fn only_the_debian_seam_knows_debian() {
    let seam = [
        "apt/",
        "os.rs",
        "lock.rs",
        "outdated.rs",
        "sbom.rs",
        "base/rootfs.rs",
        "base/packages.rs",
        "base/patch.rs",
        "lib.rs",
    ];
    let tools = [
        "mmdebstrap",
        "apt-get",
        "apt-cache",
        "apt-ftparchive",
        "dpkg",
        "debconf",
    ];
    let mut outside = Vec::new();
    let mut inside = 0;
    for (file, text) in source_files() {
        let code = text.split("#[cfg(test)]").next().unwrap();
        let in_seam = seam.iter().any(|s| file.starts_with(s));
        let runs = tools
            .iter()
            .filter(|tool| code.contains(&format!("Command::new(\"{tool}")));
        let names = ["crate::apt", "apt::"].iter().filter(|path| {
            code.lines()
                .any(|l| l.contains(*path) && !l.trim().starts_with("//"))
        });
        for found in runs.chain(names) {
            match in_seam {
                true => inside += 1,
                false => outside.push(format!("{file}: {found}")),
            }
        }
    }
    assert!(outside.is_empty(), "Debian outside its seam: {outside:?}");
    assert!(
        inside >= 5,
        "the scan finds the seam's own commands and paths: {inside}"
    );
}

/// What runs in a guest or a hook is a template in `templates/` (rendered strictly, its values
/// shell-quoted, checked by `sh -n`, `bash -n` and shellcheck in the unit tests), not a
/// `format!` string: no source file outside its tests holds shell script text.
#[test]
fn no_shell_script_text_in_the_source() {
    let marks = ["mkdir -p", "rm -rf", "|| fail", "2>/dev/null", "<<'EOF'"];
    let mut found = Vec::new();
    for (file, text) in source_files() {
        let code = text.split("#[cfg(test)]").next().unwrap();
        for mark in marks {
            if code.contains(mark) {
                found.push(format!("{file}: {mark}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "shell in src/, move it to templates/: {found:?}"
    );
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let in_templates = fs::read_dir(templates)
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .filter(|t| marks.iter().any(|m| t.contains(m)))
        .count();
    assert!(in_templates >= 3, "the scan finds the templates' own shell");
}

/// A module a newcomer can read: no source file over 800 lines (split by what it holds, as
/// `definition/`, `apt/` and `register/bundle/` are).
#[test]
fn no_source_file_is_over_800_lines() {
    let files = source_files();
    assert!(
        files.len() > 40,
        "the scan reads the sources: {}",
        files.len()
    );
    let long: Vec<(String, usize)> = files
        .into_iter()
        .map(|(file, text)| (file, text.lines().count()))
        .filter(|(_, lines)| *lines > 800)
        .collect();
    assert!(long.is_empty(), "split these: {long:?}");
}

/// A stage receives its spec (`spec.rs`), never the whole definition: `&Definition` is taken
/// only by the definition module, the spec derivation and what resolves its inputs (`render`,
/// `lock`, `sources`, the OS family's seam `os` and `apt/mod.rs`), the loading of a definition with the stages' checks of
/// the files it names (`load`, and each stage's `file_problems`, run before any spec exists),
/// and the orchestration (`build`, `plan`, `batch`, the binary).
#[test]
fn stages_take_their_spec_not_the_definition() {
    let allowed = [
        "definition/",
        "spec.rs",
        "os.rs",
        "render.rs",
        "lock.rs",
        "sources.rs",
        "apt/mod.rs",
        "load.rs",
        "build.rs",
        "plan.rs",
        "batch.rs",
        "main.rs",
        "lib.rs",
    ];
    let mut found = Vec::new();
    let mut checks = 0;
    for (file, text) in source_files() {
        let code = text.split("#[cfg(test)]").next().unwrap();
        for line in code.lines().filter(|l| l.contains("&Definition")) {
            if line.contains("fn file_problems(") {
                checks += 1;
            } else if !allowed.iter().any(|a| file.starts_with(a)) {
                found.push(format!("{file}: {}", line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "stages that read the definition: {found:?}"
    );
    assert!(
        checks >= 4,
        "the scan finds the stages' file checks: {checks}"
    );
}

/// A function a newcomer can read at once: none in `src/` (tests aside) over 80 lines, from its
/// signature to its closing brace.
#[test]
fn no_function_is_over_80_lines() {
    let mut long = Vec::new();
    let mut functions = 0;
    for (file, text) in source_files() {
        let code = text.split("#[cfg(test)]").next().unwrap();
        let lines: Vec<&str> = code.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "async fn ",
            ]
            .iter()
            .chain(&["pub async fn ", "pub(crate) async fn "])
            .any(|p| trimmed.starts_with(p));
            if !is_fn || trimmed.ends_with(';') || trimmed.ends_with('}') {
                continue;
            }
            let indent = &line[..line.len() - trimmed.len()];
            let end = lines[start..]
                .iter()
                .position(|l| *l == format!("{indent}}}"));
            if let Some(end) = end {
                functions += 1;
                if end + 1 > 80 {
                    let name = trimmed.split('(').next().unwrap_or(trimmed);
                    long.push(format!("{file}: {name} ({} lines)", end + 1));
                }
            }
        }
    }
    assert!(functions > 500, "the scan finds the functions: {functions}");
    assert!(long.is_empty(), "functions over 80 lines: {long:?}");
}
