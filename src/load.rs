//! A definition loaded for a command: parsed into its types with the rules across its fields
//! (`definition`), checked against what its OS family can do (`os`), then checked by each stage for the files on this machine it will read,
//! each check next to the code that reads them (the package sources' keys, the pinned files,
//! the answer-file template, the provisioners' files, the Eucalyptus keys). Every problem is
//! refused at once, each at its own line.

use crate::definition::{Definition, DefinitionError};
use std::path::Path;

/// The definition at `path`, with the files its stages will read checked.
pub fn definition(path: &Path) -> Result<Definition, DefinitionError> {
    Definition::load_with(path, file_problems)
}

/// (field, what is wrong) for each file `def` names that a stage will read and that is not
/// on this machine, or not what that stage needs.
fn file_problems(def: &Definition) -> Vec<(String, String)> {
    let mut problems = crate::os::problems(def);
    problems.extend(crate::sources::file_problems(def));
    problems.extend(crate::render::file_problems(def));
    problems.extend(crate::bake::file_problems(def));
    problems.extend(crate::register::file_problems(def));
    problems
}

/// Every check `imgforge validate` makes, none needing a build, the network or a download:
/// the definition loads and is consistent, the files it names are there, its answer file
/// renders, and a service repository on this machine has the ref and the unit file.
pub fn validate(file: &Path) -> Result<Definition, DefinitionError> {
    let def = definition(file)?;
    crate::render::render(&def).map_err(|e| DefinitionError::Render {
        path: file.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    crate::sources::check_local_service(&def).map_err(|e| DefinitionError::Source {
        message: format!("{e:#}"),
    })?;
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_reads_no_named_file_and_loading_refuses_every_problem_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let text = format!(
            "[image]\nname = \"t\"\nversion = \"1\"\n[os]\nfamily = \"debian\"\nrelease = \"bookworm\"\n\
             [builder]\nkind = \"rootfs\"\n[system]\nhostname = \"h\"\nmirror = \"http://deb.debian.org/debian\"\n\
             [data]\ndest = \"/srv\"\ntarball = {{ path = \"gone.tar\", sha256 = \"{}\" }}\n\
             [[provisioners]]\ntype = \"shell\"\nscript = \"gone.sh\"\n",
            "0".repeat(64)
        );
        std::fs::write(&path, &text).unwrap();
        Definition::parse(&text, &path).expect("the definition's own rules hold");
        let with_bad_cpus = text.replace("[data]", "[machine]\ncpus = 0\n[data]");
        std::fs::write(&path, &with_bad_cpus).unwrap();
        let err = definition(&path).unwrap_err().to_string();
        for (field, line) in [
            ("machine.cpus", 13),
            ("data.tarball.path", 16),
            ("provisioners[0].script", 19),
        ] {
            assert!(
                err.contains(&format!("t.toml:{line}:1: field `{field}`")),
                "{field} at line {line}: {err}"
            );
        }
        assert!(err.contains("gone.tar does not exist"), "{err}");
    }
}
