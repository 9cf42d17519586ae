//! `imgforge cache gc` on a cache laid out as builds leave it: stale layers and downloads go,
//! recent ones and the packages within the size limit stay, a dry run removes nothing, and bad
//! flags are refused naming the flag.

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(86_400);

fn file(path: &Path, size: usize, age: Duration) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, vec![7u8; size]).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

fn gc(cache: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imgforge"))
        .args(["--json", "cache", "gc"])
        .args(args)
        .env("IMGFORGE_CACHE", cache)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gc_removes_stale_layers_and_trims_packages_least_recently_used_first() {
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    file(&c.join("base/stale/base.json"), 10, 45 * DAY);
    file(&c.join("base/stale/disk.qcow2"), 1 << 20, 45 * DAY);
    file(&c.join("base/recent/base.json"), 10, 2 * DAY);
    file(&c.join("downloads/old-iso"), 4096, 60 * DAY);
    file(
        &c.join("packages/bookworm-x/old_1_all.deb"),
        3 << 20,
        20 * DAY,
    );
    file(&c.join("packages/bookworm-x/new_1_all.deb"), 3 << 20, DAY);

    let (code, out, err) = gc(c, &["--dry-run", "--packages-max-size", "4M"]);
    assert_eq!(code, 0, "{err}");
    let dry: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(dry["event"], "cache_gc");
    assert_eq!(dry["bases"], serde_json::json!(["stale"]));
    assert_eq!(dry["packages"]["files"], 1);
    assert!(c.join("base/stale").exists() && c.join("downloads/old-iso").exists());
    assert!(c.join("packages/bookworm-x/old_1_all.deb").exists());

    let (code, out, err) = gc(c, &["--packages-max-size", "4M"]);
    assert_eq!(code, 0, "{err}");
    let done: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["bases"], serde_json::json!(["stale"]));
    assert_eq!(done["packages"]["files"], 1);
    assert!(done["freed_bytes"].as_u64().unwrap() >= (1 << 20) + (3 << 20));
    assert!(!c.join("base/stale").exists());
    assert!(!c.join("downloads/old-iso").exists());
    assert!(!c.join("packages/bookworm-x/old_1_all.deb").exists());
    assert!(c.join("base/recent/base.json").exists());
    assert!(c.join("packages/bookworm-x/new_1_all.deb").exists());
}

#[test]
fn bad_gc_flags_are_refused_naming_the_flag() {
    let cache = tempfile::tempdir().unwrap();
    for (args, named) in [
        (["--max-age", "30x"], "--max-age"),
        (["--packages-max-size", "lots"], "--packages-max-size"),
    ] {
        let (code, _, err) = gc(cache.path(), &args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(named), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_imgforge"))
        .args(["cache", "gc"])
        .env("IMGFORGE_CACHE", cache.path())
        .env("IMGFORGE_PACKAGE_CACHE_SIZE", "plenty")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("IMGFORGE_PACKAGE_CACHE_SIZE=`plenty`"),
        "{err}"
    );
}
