//! Where a definition file is.

use super::AnsibleProvisioner;
use std::path::{Path, PathBuf};

/// Where the definition file is: relative paths in it are resolved against its directory, and
/// messages name it. Not an input of any id: the same definition elsewhere is the same image.
#[derive(Debug, Clone)]
pub struct DefinitionFile {
    /// The definition file.
    pub path: PathBuf,
    /// Its directory.
    pub dir: PathBuf,
}

impl DefinitionFile {
    /// `p` resolved against the definition's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match p.is_absolute() {
            true => p.to_path_buf(),
            false => self.dir.join(p),
        }
    }

    /// The directory staged for a playbook outside the service: the playbook's own directory,
    /// with its roles, templates and variables.
    pub fn ansible_project(&self, a: &AnsibleProvisioner) -> PathBuf {
        let playbook = self.resolve(&a.playbook);
        playbook.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    /// The definition file, for messages.
    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }
}
