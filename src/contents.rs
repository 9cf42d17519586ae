//! What an image holds, as two plain-text lists beside its artifacts: `<name>.packages`
//! (`name version architecture`, as `dpkg-query -W` lists them) and `<name>.files` (every path
//! with its type and mode, owner, size and sha256 or link target). `seal` writes them from the
//! image's file tree; `diff` reads two builds' lists back. Both are sorted, so `diff(1)` works
//! on them too.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One line of a file list: everything about a path but the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// `st_mode` in octal, type bits included (`100644`, `40755`, `120777`).
    pub mode: String,
    /// `uid:gid`.
    pub owner: String,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// sha256 of a regular file, the target of a symbolic link, `-` otherwise.
    pub content: String,
}

/// Paths (absolute, as in the image) and their entries.
pub type FileList = BTreeMap<String, FileEntry>;

/// Package name (with `:arch` for a second architecture) and `version architecture`.
pub type PackageList = BTreeMap<String, String>;

/// Lists every path under `root` (not crossing into other filesystems), hashing regular files.
pub fn list_files(root: &Path) -> Result<FileList> {
    let mut files = FileList::new();
    for entry in walkdir::WalkDir::new(root).same_file_system(true) {
        let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
        let meta = entry.metadata()?;
        let relative = entry.path().strip_prefix(root)?;
        let path = format!("/{}", relative.display());
        let kind = meta.file_type();
        let content = if kind.is_file() {
            crate::sources::sha256_file(entry.path())?
        } else if kind.is_symlink() {
            std::fs::read_link(entry.path())?.display().to_string()
        } else if kind.is_block_device() || kind.is_char_device() {
            format!("{:x}", meta.rdev())
        } else {
            "-".to_string()
        };
        let size = if kind.is_dir() { 0 } else { meta.len() };
        let entry = FileEntry {
            mode: format!("{:o}", meta.mode()),
            owner: format!("{}:{}", meta.uid(), meta.gid()),
            size,
            content,
        };
        files.insert(path, entry);
    }
    Ok(files)
}

/// The text of a file list: `mode owner size content path` per line, tab-separated, with tabs,
/// newlines and backslashes in names escaped.
pub fn files_text(files: &FileList) -> String {
    let mut text = String::new();
    for (path, e) in files {
        let _ = writeln!(
            text,
            "{}\t{}\t{}\t{}\t{}",
            e.mode,
            e.owner,
            e.size,
            escape(&e.content),
            escape(path)
        );
    }
    text
}

/// Reads a file list written by [`files_text`]; `origin` names it in errors.
pub fn parse_files(text: &str, origin: &Path) -> Result<FileList> {
    let mut files = FileList::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.splitn(5, '\t').collect();
        let [mode, owner, size, content, path] = fields[..] else {
            bail!("{}:{}: not a file-list line", origin.display(), n + 1);
        };
        let size = size
            .parse()
            .with_context(|| format!("{}:{}: bad size", origin.display(), n + 1))?;
        files.insert(
            unescape(path),
            FileEntry {
                mode: mode.to_string(),
                owner: owner.to_string(),
                size,
                content: unescape(content),
            },
        );
    }
    Ok(files)
}

/// The text of a package list: `name version architecture` per line.
pub fn packages_text(packages: &PackageList) -> String {
    packages
        .iter()
        .map(|(name, rest)| format!("{name} {rest}\n"))
        .collect()
}

/// Reads a package list written by [`packages_text`]; `origin` names it in errors.
pub fn parse_packages(text: &str, origin: &Path) -> Result<PackageList> {
    text.lines()
        .enumerate()
        .map(|(n, line)| match line.split_once(' ') {
            Some((name, rest)) => Ok((name.to_string(), rest.to_string())),
            None => bail!("{}:{}: not a package-list line", origin.display(), n + 1),
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_list_reads_back_as_written_names_with_tabs_and_newlines_included() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/odd\tname\nx\\y"), b"v1").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.len(), 4, "{files:?}");
        assert_eq!(files["/link"].content, "/etc");
        let text = files_text(&files);
        assert_eq!(text.lines().count(), 4);
        assert_eq!(parse_files(&text, Path::new("x.files")).unwrap(), files);
    }

    #[test]
    fn a_changed_byte_changes_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"v1").unwrap();
        let before = list_files(dir.path()).unwrap();
        std::fs::write(dir.path().join("f"), b"v2").unwrap();
        let after = list_files(dir.path()).unwrap();
        assert_ne!(before["/f"], after["/f"]);
    }

    #[test]
    fn a_malformed_list_is_refused_naming_its_line() {
        let err = parse_files("100644\t0:0\t1\n", Path::new("a.files")).unwrap_err();
        assert!(err.to_string().contains("a.files:1"), "{err}");
        let err = parse_packages("ok 1 all\nbroken\n", Path::new("a.packages")).unwrap_err();
        assert!(err.to_string().contains("a.packages:2"), "{err}");
    }
}
