//! Patch day without a cold build: a new rootfs base made from a cached base of the same
//! lineage (every base input but the package set, [`BaseSpec::lineage`]) by
//! installing exactly the packages that changed into its tree, as apt patches a running Debian
//! system, instead of running mmdebstrap again.
//!
//! It must give the tree a cold build of the new set gives, so nothing is taken on trust:
//! - every path that changed must belong to a package that changed, or be a by-product the
//!   package tools rewrite from the installed set alone ([`BY_PRODUCTS`]);
//! - a conffile the base changed (the customize hook's edits) whose new package ships another
//!   version is kept by dpkg where a cold build installs the new one, so it is refused;
//! - the identifiers derived from the old base's id (the root filesystem UUID in `fstab` and
//!   `grub.cfg`, the build key) are rewritten for the new id, and no file may still hold them.
//!
//! Anything else, or any failure, and the caller builds cold, saying why.

use super::rootfs::{self, MadeTree};
use super::{BaseInfo, BaseLayer, BaseStaging, BUILD_KEY_COMMENT};
use crate::apt::{Archive, Package, PackageSet};
use crate::contents::{self, FileList};
use crate::disk::loopmount::{Access, RootMount};
use crate::events::Reporter;
use crate::process::Command;
use crate::spec::BaseSpec;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Instant;

/// Most packages a patch installs or removes: past that, a cold build costs about the same.
const MAX_CHANGES: usize = 80;

/// Paths that package tools rewrite from the installed set alone (dpkg's and apt's databases,
/// debconf's, the dynamic linker's cache, the initramfs, alternatives, man-db's index), so the
/// patched tree holds what the cold build writes; logs are emptied by the bake's hygiene.
const BY_PRODUCTS: &[&str] = &[
    "/var/lib/dpkg/",
    "/var/lib/apt/",
    "/var/cache/apt/",
    "/var/cache/debconf/",
    "/var/cache/man/",
    "/var/cache/ldconfig/",
    "/var/log/",
    "/etc/ld.so.cache",
    "/etc/alternatives/",
    "/boot/initrd.img-",
    "/initrd.img",
    "/vmlinuz",
];

/// Files the patch rewrites itself: for the new base id (its root filesystem UUID, its build
/// key), and the locale archive when its data changed (templates/rootfs-patch.sh.hbs).
const REWRITTEN: &[&str] = &[
    "/etc/fstab",
    "/boot/grub/grub.cfg",
    "/root/.ssh/authorized_keys",
    "/usr/lib/locale/locale-archive",
];

/// Files the customize hook made from a package's files when the cached base was built, and
/// which the patch does not make again: a patch changing their source would leave them as the
/// old version made them, where a cold build has them from the new one.
const CUSTOMIZE_INPUTS: &[(&str, &str)] = &[(
    "/etc/skel/",
    "the users' home directories were copied from it",
)];

/// Units the customize hook enables or disables: their `[Install]` section decides which
/// links `systemctl` made, which an upgrade does not make again.
const CUSTOMIZE_UNITS: &[&str] = &[
    "systemd-networkd.service",
    "systemd-resolved.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
];

/// Top directories that are links into `/usr` on a merged-/usr system.
const MERGED_USR: &[&str] = &["/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/"];

/// A cached base and what turns its package set into the new one.
pub struct Patch {
    /// The cached base.
    pub from: BaseLayer,
    /// Packages of the new set that the cached base does not have at this version.
    pub install: Vec<Package>,
    /// Packages of the cached base that the new set does not have.
    pub remove: Vec<Package>,
}

impl Patch {
    /// One line for people: how many packages change, and from which base.
    pub fn summary(&self) -> String {
        format!(
            "{} package(s) to install, {} to remove, on base {}",
            self.install.len(),
            self.remove.len(),
            crate::layers::short(&self.from.info.id)
        )
    }
}

/// The cached base of `lineage` closest to `set` (fewest packages to change), if one is near
/// enough to patch.
pub fn find(lineage: &str, set: &PackageSet) -> Option<Patch> {
    let store = crate::store::Store::current();
    let entries = fs::read_dir(store.bases()).ok()?;
    let mut best: Option<Patch> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(crate::store::STAGING_PREFIX) {
            continue;
        }
        let Some(base) = BaseLayer::open(&name) else {
            continue;
        };
        if base.info.lineage.as_deref() != Some(lineage) || base.info.direct_boot.is_none() {
            continue;
        }
        let Some(old) = base.info.package_set.clone() else {
            continue;
        };
        let (install, remove) = difference(&old, set);
        let changes = install.len() + remove.len();
        if changes == 0 || changes > MAX_CHANGES {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|b| changes < b.install.len() + b.remove.len())
        {
            best = Some(Patch {
                from: base,
                install,
                remove,
            });
        }
    }
    best
}

/// What to install (new, or another version or digest) and remove to go from `old` to `new`.
fn difference(old: &PackageSet, new: &PackageSet) -> (Vec<Package>, Vec<Package>) {
    let old_set: BTreeSet<&Package> = old.packages.iter().collect();
    let new_keys: BTreeSet<(&str, &str)> = new
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.arch.as_str()))
        .collect();
    let install = new
        .packages
        .iter()
        .filter(|p| !old_set.contains(p))
        .cloned()
        .collect();
    let remove = old
        .packages
        .iter()
        .filter(|p| !new_keys.contains(&(p.name.as_str(), p.arch.as_str())))
        .cloned()
        .collect();
    (install, remove)
}

/// Builds the new base into `staging` by patching `patch.from`'s tree; an error says why the
/// patched tree could differ from a cold build's, and nothing of the attempt is left.
pub fn build(
    spec: &BaseSpec,
    staging: &BaseStaging,
    patch: &Patch,
    reporter: &Reporter,
) -> Result<BaseInfo> {
    let started = Instant::now();
    let resolved = spec.package_set()?;
    reporter.phase("patch base");
    // The cached base stays while its tree is read: `cache gc` skips a locked base.
    let lock = crate::store::Store::current().base_lock(&patch.from.info.id)?;
    lock.lock()?;
    let work = tempfile::Builder::new()
        .prefix("patch-")
        .tempdir_in(staging.dir.path())?;
    let debs = work.path().join("debs");
    fetch(spec, &patch.install, &debs)?;
    let raw = work.path().join("tree.raw");
    Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(patch.from.disk())
        .arg(&raw)
        .run()?;
    let root = RootMount::find(
        &raw,
        work.path(),
        Access::ReadWrite,
        &crate::apt::is_debian_root,
    )?
    .context("the cached base's disk has no Debian root filesystem")?;
    let tree = root.path();
    let before = contents::list_files(tree)?;
    let conffiles_before = conffiles(tree)?;
    let removed_files = owned_files(tree, &patch.remove)?;
    let units_before = install_sections(tree);
    // The new identity first: the packages' scripts (an initramfs hook reading fstab) see what
    // they see in a cold build.
    let old_uuid = patch
        .from
        .info
        .direct_boot
        .as_ref()
        .map(|b| b.root_uuid.clone())
        .context("the cached base records no root filesystem UUID")?;
    rewrite_identity(tree, &old_uuid, &rootfs::root_uuid(staging), staging)?;
    run_apt(spec.source_date_epoch, patch, tree, &debs, reporter)?;
    crate::apt::check_installed(tree, &resolved.set)?;
    let after = contents::list_files(tree)?;
    let mut owned = owned_files(tree, &patch.install)?;
    owned.extend(removed_files);
    explain(&before, &after, &owned)?;
    check_customize_inputs(tree, &before, &after, &units_before)?;
    check_conffiles(tree, &patch.install, &conffiles_before, &before)?;
    no_trace_of(tree, &old_uuid, "the cached base's root filesystem UUID")?;
    let made = MadeTree {
        tree,
        started,
        package_use: None,
        tools: BTreeMap::from([(
            "apt-get".to_string(),
            rootfs::tool_version("apt-get", "--version"),
        )]),
    };
    let mut info = rootfs::finish(spec, staging, made, reporter)?;
    root.unmount()?;
    info.patched_from = Some(patch.from.info.id.clone());
    Ok(info)
}

/// Fetches the packages to install through the package cache (each checked against the set's
/// sha256, as the cold build's) and links them into `dir`.
fn fetch(spec: &BaseSpec, install: &[Package], dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    if install.is_empty() {
        return Ok(());
    }
    let archive = Archive::for_system(&spec.system, &spec.package_set()?.sources)?;
    let _indexes = archive.update()?;
    let set = PackageSet::new(install.to_vec());
    let mut cache = super::packages::PackageCache::for_base(
        spec,
        super::packages::limit()?,
        &dir.join(".cache"),
    )?;
    cache.fetch(&set, &archive)?;
    cache.link_into(&set, dir)
}

/// The patch script (templates/rootfs-patch.sh.hbs) that installs `install` and removes
/// `remove`.
fn render(install: &[Package], remove: &[Package], source_date_epoch: u32) -> Result<String> {
    let ctx = serde_json::json!({
        "source_date_epoch": source_date_epoch.to_string(),
        "install": install.iter().map(Package::file_name).collect::<Vec<_>>(),
        "remove": remove.iter().map(|p| format!("{}:{}", p.name, p.arch)).collect::<Vec<_>>(),
        "install_lists": dpkg_lists(install),
        "remove_lists": dpkg_lists(remove),
    });
    crate::render::render_script(crate::render::ROOTFS_PATCH, &ctx)
}

/// Runs apt in the tree (templates/rootfs-patch.sh.hbs) in namespaces of its own, with
/// `SOURCE_DATE_EPOCH` at `epoch`.
fn run_apt(epoch: u32, patch: &Patch, tree: &Path, debs: &Path, reporter: &Reporter) -> Result<()> {
    let script = debs.with_file_name("patch.sh");
    fs::write(&script, render(&patch.install, &patch.remove, epoch)?)?;
    let (code, out) = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--kill-child", "--", "sh"])
        .arg(&script)
        .arg(tree)
        .arg(debs)
        .run_unchecked()
        .context("cannot start the patch (unshare)")?;
    let output = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    for line in output.lines() {
        reporter.detail(line);
    }
    if code != 0 {
        bail!(
            "apt could not install the changed packages (exit status {code}); its last \
             lines:\n{}",
            crate::process::tail_lines(&output, 15)
        );
    }
    Ok(())
}

/// The names dpkg may give the file lists of `packages` (`name:arch.list` for a package
/// installable for several architectures, `name.list` for the others).
fn dpkg_lists(packages: &[Package]) -> Vec<String> {
    packages
        .iter()
        .flat_map(|p| {
            [
                format!("{}:{}.list", p.name, p.arch),
                format!("{}.list", p.name),
            ]
        })
        .collect()
}

/// Rewrites what the tree holds of the old base's id: its root filesystem UUID (in
/// [`REWRITTEN`]) and its build key (for the new base's).
fn rewrite_identity(
    tree: &Path,
    old_uuid: &str,
    new_uuid: &str,
    staging: &BaseStaging,
) -> Result<()> {
    for path in REWRITTEN {
        let file = tree.join(&path[1..]);
        if let Ok(text) = fs::read_to_string(&file) {
            fs::write(&file, text.replace(old_uuid, new_uuid))
                .with_context(|| format!("cannot rewrite {path} in the patched tree"))?;
        }
    }
    let keys = tree.join("root/.ssh/authorized_keys");
    let text = fs::read_to_string(&keys).context("the cached base has no build key for root")?;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.contains(BUILD_KEY_COMMENT))
        .map(str::to_string)
        .collect();
    lines.push(staging.public_key()?);
    fs::write(&keys, lines.join("\n") + "\n")?;
    Ok(())
}

/// Files (as absolute paths) that dpkg lists for `packages` in the tree.
fn owned_files(tree: &Path, packages: &[Package]) -> Result<BTreeSet<String>> {
    let info = tree.join("var/lib/dpkg/info");
    let mut owned = BTreeSet::new();
    for p in packages {
        let list = dpkg_lists(std::slice::from_ref(p))
            .into_iter()
            .map(|name| info.join(name))
            .find(|path| path.is_file());
        if let Some(list) = list {
            let text = fs::read_to_string(&list)
                .with_context(|| format!("cannot read {}", list.display()))?;
            for path in text.lines() {
                // Under merged /usr, dpkg lists `/lib/x` for what the tree holds at `/usr/lib/x`.
                if MERGED_USR.iter().any(|dir| path.starts_with(dir)) {
                    owned.insert(format!("/usr{path}"));
                }
                owned.insert(path.to_string());
            }
        }
    }
    Ok(owned)
}

/// Every path that differs between `before` and `after` must be a file of a changed package
/// (`owned`), a by-product, or one the patch rewrote; the others are named.
fn explain(before: &FileList, after: &FileList, owned: &BTreeSet<String>) -> Result<()> {
    let changed = before
        .iter()
        .filter(|(path, entry)| after.get(*path) != Some(entry))
        .map(|(path, _)| path)
        .chain(after.keys().filter(|path| !before.contains_key(*path)));
    let unexplained: BTreeSet<&String> = changed
        .filter(|path| {
            !owned.contains(*path)
                && !REWRITTEN.contains(&path.as_str())
                && !BY_PRODUCTS.iter().any(|p| path.starts_with(p))
                && !depmod_output(path)
        })
        .collect();
    if unexplained.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = unexplained.iter().take(8).map(|p| p.as_str()).collect();
    bail!(
        "{} path(s) changed that no changed package owns, so a cold build may write them \
         otherwise: {}{}",
        unexplained.len(),
        shown.join(", "),
        if unexplained.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    )
}

/// `depmod`'s indexes of a kernel's modules (`/usr/lib/modules/<version>/modules.*`), made
/// from the modules alone.
fn depmod_output(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/usr/lib/modules/") else {
        return false;
    };
    matches!(rest.split_once('/'), Some((_, file)) if file.starts_with("modules.") && !file.contains('/'))
}

/// The `[Install]` sections of [`CUSTOMIZE_UNITS`] in the tree (empty for a unit it lacks).
fn install_sections(tree: &Path) -> Vec<String> {
    CUSTOMIZE_UNITS
        .iter()
        .map(|unit| {
            let text = fs::read_to_string(tree.join("usr/lib/systemd/system").join(unit))
                .unwrap_or_default();
            let mut in_install = false;
            text.lines()
                .filter(|line| {
                    if line.starts_with('[') {
                        in_install = line.trim() == "[Install]";
                    }
                    in_install
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// Refuses a patch that changed a file the customize hook derived others from
/// ([`CUSTOMIZE_INPUTS`]) or a unit's `[Install]` section it enabled by ([`CUSTOMIZE_UNITS`]).
fn check_customize_inputs(
    tree: &Path,
    before: &FileList,
    after: &FileList,
    units_before: &[String],
) -> Result<()> {
    for (prefix, why) in CUSTOMIZE_INPUTS {
        let under = |list: &FileList| -> Vec<(String, contents::FileEntry)> {
            list.iter()
                .filter(|(path, _)| path.starts_with(prefix))
                .map(|(path, entry)| (path.clone(), entry.clone()))
                .collect()
        };
        if under(before) != under(after) {
            bail!("{prefix} changed and {why} when the cached base was made");
        }
    }
    for (unit, (then, now)) in CUSTOMIZE_UNITS
        .iter()
        .zip(units_before.iter().zip(install_sections(tree)))
    {
        if *then != now {
            bail!(
                "the [Install] section of {unit} changed, and the cached base enabled or \
                 disabled it by the old one"
            );
        }
    }
    Ok(())
}

/// Conffiles per package, from dpkg's status: path → md5 of the version the package ships.
type Conffiles = BTreeMap<String, BTreeMap<String, String>>;

fn conffiles(tree: &Path) -> Result<Conffiles> {
    let path = tree.join("var/lib/dpkg/status");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut all = Conffiles::new();
    for para in crate::apt::control_paragraphs(&text) {
        let (Some(name), Some(list)) = (
            crate::apt::control_field(&para, "Package"),
            crate::apt::control_field(&para, "Conffiles"),
        ) else {
            continue;
        };
        let files = list
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let (path, md5) = (words.next()?, words.next()?);
                (words.next() != Some("obsolete")).then(|| (path.to_string(), md5.to_string()))
            })
            .collect();
        all.insert(name.to_string(), files);
    }
    Ok(all)
}

/// A conffile of an installed package must be what the package ships, or left as the base had
/// it when the package ships it unchanged: a conffile the base edited and the new version
/// changes is kept by dpkg (`--force-confold`), where a cold build has the new one.
fn check_conffiles(
    tree: &Path,
    installed: &[Package],
    old: &Conffiles,
    before: &FileList,
) -> Result<()> {
    use sha2::Digest;
    let new = conffiles(tree)?;
    for p in installed {
        let Some(files) = new.get(&p.name) else {
            continue;
        };
        for (path, shipped) in files {
            let Ok(bytes) = fs::read(tree.join(&path[1..])) else {
                continue;
            };
            if hex::encode(md5::Md5::digest(&bytes)) == *shipped {
                continue;
            }
            let shipped_before = old.get(&p.name).and_then(|f| f.get(path));
            let untouched = before.get(path).map(|e| e.content.as_str())
                == Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str());
            if shipped_before != Some(shipped) || !untouched {
                bail!(
                    "{path}: the base changed this conffile of {} and the new version ships \
                     another one; dpkg keeps the base's, a cold build installs the new one",
                    p.name
                );
            }
        }
    }
    Ok(())
}

/// No file of the tree may still hold `needle` (an identifier of the old base).
fn no_trace_of(tree: &Path, needle: &str, what: &str) -> Result<()> {
    let (code, out) = Command::new("grep")
        .args(["-rlF", "--no-messages", "-D", "skip", "--", needle])
        .arg(tree)
        .run_unchecked()?;
    match code {
        1 => Ok(()),
        0 => bail!(
            "{what} is still in {}",
            out.text()
                .lines()
                .take(5)
                .map(|l| l.strip_prefix(&*tree.to_string_lossy()).unwrap_or(l))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!("grep could not search the patched tree (exit status {code})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contents::FileEntry;

    fn package(name: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: format!("{name}-{version}"),
            source: "debian".into(),
        }
    }

    fn file(content: &str) -> FileEntry {
        FileEntry {
            mode: "100644".into(),
            owner: "0:0".into(),
            size: content.len() as u64,
            content: content.into(),
        }
    }

    #[test]
    fn the_difference_installs_new_versions_and_new_packages_and_removes_dropped_ones() {
        let old = PackageSet::new(vec![
            package("libc6", "2.36"),
            package("libssl3", "3.0.20"),
            package("linux-image-6.1.0-50-amd64", "6.1.176"),
        ]);
        let new = PackageSet::new(vec![
            package("libc6", "2.36"),
            package("libssl3", "3.0.22"),
            package("linux-image-6.1.0-57-amd64", "6.1.192"),
        ]);
        let (install, remove) = difference(&old, &new);
        let names = |ps: &[Package]| ps.iter().map(Package::pinned).collect::<Vec<_>>();
        assert_eq!(
            names(&install),
            ["libssl3=3.0.22", "linux-image-6.1.0-57-amd64=6.1.192"]
        );
        assert_eq!(names(&remove), ["linux-image-6.1.0-50-amd64=6.1.176"]);
        // Same version, other bytes (a rebuild): installed again.
        let mut rebuilt = new.clone();
        rebuilt.packages[0].sha256 = "other".into();
        assert_eq!(names(&difference(&new, &rebuilt).0), ["libc6=2.36"]);
    }

    #[test]
    fn only_changes_a_changed_package_owns_or_a_tool_rewrites_are_explained() {
        let before = FileList::from([
            ("/usr/bin/openssl".to_string(), file("a")),
            ("/etc/hostname".to_string(), file("web")),
            ("/var/lib/dpkg/status".to_string(), file("s1")),
        ]);
        let mut after = before.clone();
        after.insert("/usr/bin/openssl".into(), file("b"));
        after.insert("/var/lib/dpkg/status".into(), file("s2"));
        after.insert(
            "/usr/lib/modules/6.1.0-57-amd64/modules.dep".into(),
            file("d"),
        );
        after.insert("/etc/fstab".into(), file("UUID=new"));
        let owned = BTreeSet::from(["/usr/bin/openssl".to_string()]);
        explain(&before, &after, &owned).unwrap();

        // A file no changed package owns (a maintainer script's by-product), changed or added.
        let mut stray = after.clone();
        stray.insert("/var/lib/tool/token".into(), file("random"));
        stray.insert("/etc/hostname".into(), file("other"));
        let e = explain(&before, &stray, &owned).unwrap_err().to_string();
        assert!(e.starts_with("2 path(s) changed"), "{e}");
        assert!(
            e.contains("/var/lib/tool/token") && e.contains("/etc/hostname"),
            "{e}"
        );
        // A removed file is a change too.
        let mut removed = after.clone();
        removed.remove("/etc/hostname");
        assert!(explain(&before, &removed, &owned).is_err());
    }

    #[test]
    fn the_patch_script_renders_to_valid_shell() {
        let script = render(
            &[package("libssl3", "3.0.22")],
            &[package("linux-image-6.1.0-50-amd64", "6.1.176")],
            1_700_000_000,
        )
        .unwrap();
        assert!(
            script.contains(" /tmp/imgforge-patch/'libssl3_3.0.22_amd64.deb'"),
            "{script}"
        );
        assert!(
            script.contains(" 'linux-image-6.1.0-50-amd64:amd64'-"),
            "{script}"
        );
        crate::render::assert_valid_shell(&script);
    }

    #[test]
    fn every_unit_the_customize_hook_enables_or_disables_is_watched() {
        let hook = crate::render::script_template(crate::render::ROOTFS_CUSTOMIZE).unwrap();
        let mut named = BTreeSet::new();
        for line in hook.lines() {
            let Some((_, rest)) = line
                .split_once("systemctl enable ")
                .or_else(|| line.split_once("systemctl disable "))
            else {
                continue;
            };
            for word in rest.split_whitespace().take_while(|w| !w.starts_with('>')) {
                named.insert(if word.contains('.') {
                    word.to_string()
                } else {
                    format!("{word}.service")
                });
            }
        }
        // imgforge's own unit is written by the hook itself, from the hook's template.
        named.remove("imgforge-ssh-hostkeys.service");
        let watched: BTreeSet<String> = CUSTOMIZE_UNITS.iter().map(|u| u.to_string()).collect();
        assert!(!named.is_empty());
        assert_eq!(named, watched);
        assert!(
            hook.contains("useradd -m"),
            "home directories come from /etc/skel"
        );
    }

    #[test]
    fn a_patch_changing_what_the_customize_hook_derived_from_is_refused() {
        let tree = tempfile::tempdir().unwrap();
        let units = tree.path().join("usr/lib/systemd/system");
        fs::create_dir_all(&units).unwrap();
        let unit = units.join("systemd-networkd.service");
        fs::write(
            &unit,
            "[Unit]\nA=1\n[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        let units_before = install_sections(tree.path());
        let before = FileList::from([("/etc/skel/.bashrc".to_string(), file("old"))]);
        // Outside [Install], and nothing under /etc/skel: accepted.
        fs::write(
            &unit,
            "[Unit]\nA=2\n[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        check_customize_inputs(tree.path(), &before, &before, &units_before).unwrap();
        // A new skeleton file.
        let mut after = before.clone();
        after.insert("/etc/skel/.profile".into(), file("new"));
        let e = check_customize_inputs(tree.path(), &before, &after, &units_before);
        assert!(e.unwrap_err().to_string().starts_with("/etc/skel/ changed"));
        // The unit's [Install] section.
        fs::write(&unit, "[Unit]\nA=2\n[Install]\nWantedBy=network.target\n").unwrap();
        let e = check_customize_inputs(tree.path(), &before, &before, &units_before);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("systemd-networkd.service"));
    }

    #[test]
    fn depmod_output_is_a_kernels_module_index_only() {
        assert!(depmod_output("/usr/lib/modules/6.1.0-57-amd64/modules.dep"));
        assert!(depmod_output(
            "/usr/lib/modules/6.1.0-57-amd64/modules.alias.bin"
        ));
        assert!(!depmod_output(
            "/usr/lib/modules/6.1.0-57-amd64/kernel/x/modules.dep"
        ));
        assert!(!depmod_output(
            "/usr/lib/modules/6.1.0-57-amd64/kernel/fs/ext4.ko"
        ));
        assert!(!depmod_output("/etc/modules.dep"));
    }
}
