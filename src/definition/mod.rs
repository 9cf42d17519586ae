//! Image definitions: the TOML files in `images/` that decide everything about an image.
//!
//! [`Definition::load`] reads a file and rejects anything it does not understand, naming the
//! file, the line and column, and the field. Values that need checking (sha256 digests, password
//! hashes, durations, sizes) are newtypes whose deserializers validate, so their errors carry the
//! position of the offending value too.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod builder;
mod consistency;
mod file;
mod locate;
mod machine;
mod output;
mod provision;
mod rules;
mod values;

pub use builder::*;
pub use file::DefinitionFile;
pub use machine::*;
pub use output::*;
pub use provision::*;
pub use values::*;

use builder::BuilderFields;
use locate::line_col;

/// An error in an image definition, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read.
    #[error("{path}: cannot read the image definition: {source}")]
    Read {
        /// The definition file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid definition.
    #[error("{path}:{line}:{column}: field `{field}`: {message}")]
    Invalid {
        /// The definition file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// Dotted path of the offending field (`system.users[0].password_hash`).
        field: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The answer file cannot be rendered from the definition; the message names the template
    /// and its line, or the definition's field.
    #[error("{path}: the answer file cannot be rendered: {message}")]
    Render {
        /// The definition file.
        path: PathBuf,
        /// What went wrong, located in the template or the definition.
        message: String,
    },
    /// The definition names a source that is not what it says (a ref or a file missing from
    /// a local repository); the message names the file and the field.
    #[error("{message}")]
    Source {
        /// What is wrong, with the definition's path and field.
        message: String,
    },
    /// Several problems in one definition, each with its own location.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Problems(Vec<DefinitionError>),
    /// Some of several definitions were invalid (each was reported as it was read).
    #[error("{invalid} of {total} definitions are invalid")]
    Several {
        /// How many were invalid.
        invalid: usize,
        /// How many were read.
        total: usize,
    },
}

/// A whole image definition.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Name and version of the image.
    pub image: ImageInfo,
    /// Operating system family and release.
    pub os: Os,
    /// How the base layer is made: the installer builder carries its `[installer]` table.
    pub builder: Builder,
    /// The virtual machine used for building.
    pub machine: Machine,
    /// Settings of the installed system.
    pub system: System,
    /// The service layer baked on top of the base.
    pub service: Option<Service>,
    /// The data snapshot baked on top of the base.
    pub data: Option<DataSnapshot>,
    /// Extra steps run during the bake, in order.
    pub provisioners: Vec<Provisioner>,
    /// Checks that prove a built image works.
    pub checks: Vec<Check>,
    /// Export formats.
    pub output: Output,
    /// Where `--register` publishes the image.
    pub publish: Publish,
    /// `[cloud]`: how an instance takes its keys, hostname and user data where it runs.
    pub cloud: Cloud,
    /// `[cache]`: the layer cache shared by runners.
    pub cache: CacheSettings,
    /// Directory of the definition file; relative paths in it are resolved against this.
    pub base_dir: PathBuf,
    /// The definition file itself.
    pub path: PathBuf,
}

/// A [`Definition`] as the TOML writes it, before the builder takes its installer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFields {
    image: ImageInfo,
    os: Os,
    builder: BuilderFields,
    #[serde(default)]
    installer: Option<Installer>,
    #[serde(default)]
    machine: Machine,
    system: System,
    #[serde(default)]
    service: Option<Service>,
    #[serde(default)]
    data: Option<DataSnapshot>,
    #[serde(default)]
    provisioners: Vec<Provisioner>,
    #[serde(default)]
    checks: Vec<Check>,
    #[serde(default)]
    output: Output,
    #[serde(default)]
    publish: Publish,
    #[serde(default)]
    cloud: Cloud,
    #[serde(default)]
    cache: CacheSettings,
}

/// `[image]`: what the image is called.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// Image name: lowercase letters, digits and dashes.
    pub name: ImageName,
    /// Free-form version, recorded in the manifest and on cloud tags.
    pub version: String,
    /// Optional description, used when registering.
    #[serde(default)]
    pub description: Option<String>,
}

/// `[os]`: family and release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Os {
    /// `debian` or `rhel`.
    pub family: OsFamily,
    /// Release codename or number (`bookworm`, `9`).
    pub release: String,
    /// CPU architecture; only `x86_64` is built today.
    #[serde(default = "default_arch")]
    pub arch: Arch,
}

/// Operating system families imgforge renders answer files for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    /// Debian and derivatives: preseed.
    Debian,
    /// Red Hat family (Rocky, Alma): kickstart.
    Rhel,
}

/// CPU architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
}

fn default_arch() -> Arch {
    Arch::X86_64
}

/// `[system]`: settings of the installed system.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// Host name.
    pub hostname: String,
    /// DNS domain.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// IANA time zone (`Etc/UTC`, `Europe/Berlin`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Locale (`en_US.UTF-8`).
    #[serde(default = "default_locale")]
    pub locale: String,
    /// Keyboard layout (`us`).
    #[serde(default = "default_keyboard")]
    pub keyboard: String,
    /// Package mirror URL.
    pub mirror: String,
    /// HTTP proxy for the installer and apt, if any.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Also install from the release's updates and security suites, and give the image them as
    /// sources (default true); `false` only where a definition says so.
    #[serde(default = "default_true")]
    pub updates: bool,
    /// The security archive (Debian: default `debian-security` on the mirror's host; rhel:
    /// the repository of updates that kickstart adds, none by default).
    #[serde(default)]
    pub security_mirror: Option<String>,
    /// OpenPGP key file (binary or armored) that signs the mirror and the security archive,
    /// for an internal mirror with its own key (default: this host's Debian archive keyring).
    #[serde(default)]
    pub mirror_key: Option<PathBuf>,
    /// `[[system.repositories]]`: extra apt repositories.
    #[serde(default)]
    pub repositories: Vec<Repository>,
    /// Users to create.
    #[serde(default)]
    pub users: Vec<User>,
    /// Extra packages to install.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Debconf selections, `owner question type value` lines, applied by both builders.
    #[serde(default)]
    pub debconf: Vec<String>,
}

fn default_domain() -> String {
    "localdomain".into()
}
fn default_timezone() -> String {
    "Etc/UTC".into()
}
fn default_locale() -> String {
    "en_US.UTF-8".into()
}
fn default_keyboard() -> String {
    "us".into()
}

/// `[[system.repositories]]`: an extra apt repository, such as a team's own packages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// Its URL.
    pub uri: String,
    /// Its suites (`bookworm`, `stable`).
    pub suites: Vec<String>,
    /// Its components.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// OpenPGP key file (binary or armored) its `InRelease` is signed with.
    #[serde(default)]
    pub signed_by: Option<PathBuf>,
    /// Install from it unsigned (`[trusted=yes]`): refused unless said here, and warned about.
    #[serde(default)]
    pub trusted: bool,
    /// Packages installed from this repository's first suite, whatever other sources offer.
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

/// `[[system.users]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// crypt(3) hash of the password; plain text is refused.
    #[serde(default)]
    pub password_hash: Option<PasswordHash>,
    /// SSH public keys for `~/.ssh/authorized_keys`.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Whether the user may use sudo.
    #[serde(default)]
    pub sudo: bool,
}

/// `[cache]`: where layers are shared between runners.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Remote layer cache, `s3://bucket/prefix` (`--cache-url` and `IMGFORGE_CACHE_URL` win).
    #[serde(default)]
    pub url: Option<String>,
}

/// `[[checks]]`: what proves a built image works.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Check {
    /// A TCP port accepts connections (and sends the banner `expect`, when given).
    Tcp {
        /// Guest port.
        port: u16,
        /// Text the guest's first bytes must contain (a banner such as `SSH-2.0-`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
    },
    /// An HTTP GET answers 200 with a body containing `expect`.
    Http {
        /// Guest port.
        port: u16,
        /// Request path.
        path: String,
        /// Text the body must contain.
        expect: String,
    },
}

/// The time in a snapshot mirror URL: a path segment `YYYYMMDDTHHMMSSZ`, as
/// snapshot.debian.org names its dated archives.
pub fn snapshot_time(mirror: &str) -> Option<u32> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    mirror.split('/').find_map(|segment| {
        time::PrimitiveDateTime::parse(segment, &format)
            .ok()
            .and_then(|t| u32::try_from(t.assume_utc().unix_timestamp()).ok())
    })
}

/// The release date of a Debian release (its first point release), the default
/// `SOURCE_DATE_EPOCH` when nothing newer is pinned.
fn release_date(release: &str) -> u32 {
    match release {
        "bullseye" | "11" => 1_628_899_200, // 2021-08-14
        "trixie" | "13" => 1_754_697_600,   // 2025-08-09
        _ => 1_686_355_200,                 // bookworm, 2023-06-10
    }
}

fn default_true() -> bool {
    true
}

impl Definition {
    /// Reads and validates the definition at `path`.
    pub fn load(path: &Path) -> Result<Definition, DefinitionError> {
        Definition::load_with(path, |_| Vec::new())
    }

    /// Reads the definition at `path` and refuses it, all at once, for the problems of its
    /// own rules together with those `more` finds in it (the stages' checks of the files they
    /// will read, `crate::load`).
    pub fn load_with(
        path: &Path,
        more: impl FnOnce(&Definition) -> Vec<(String, String)>,
    ) -> Result<Definition, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Definition::parse_with(&text, path, more)
    }

    /// Parses and validates definition text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Definition, DefinitionError> {
        Definition::parse_with(text, path, |_| Vec::new())
    }

    /// [`Definition::parse`], refusing also for what `more` finds.
    fn parse_with(
        text: &str,
        path: &Path,
        more: impl FnOnce(&Definition) -> Vec<(String, String)>,
    ) -> Result<Definition, DefinitionError> {
        let de = toml::Deserializer::new(text);
        let fields: DefinitionFields = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((1, 1));
            DefinitionError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message: inner.message().trim().to_string(),
            }
        })?;
        let def = Definition::from_fields(fields, text, path)?;
        let mut problems = def.consistency_problems();
        problems.extend(more(&def));
        def.refuse(text, problems)?;
        Ok(def)
    }

    /// The definition `fields` describe, read from `text` at `path`: the builder takes its
    /// `[installer]` table, which only the installer builder may have.
    fn from_fields(
        f: DefinitionFields,
        text: &str,
        path: &Path,
    ) -> Result<Definition, DefinitionError> {
        let refuse = |field: &str, message: &str| {
            let (line, column) = locate::locate_field(text, field);
            DefinitionError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                field: field.to_string(),
                message: message.to_string(),
            }
        };
        let builder = match (f.builder.kind, f.installer, f.builder.variant) {
            (BuilderKind::Installer, Some(installer), None) => {
                Builder::Installer(Box::new(installer))
            }
            (BuilderKind::Installer, None, _) => {
                return Err(refuse(
                    "builder.kind",
                    "builder `installer` needs an [installer] table with `kernel` and `initrd`, or `iso`",
                ))
            }
            (BuilderKind::Installer, Some(_), Some(_)) => {
                return Err(refuse(
                    "builder.variant",
                    "`variant` chooses mmdebstrap's package set: it is for the rootfs builder only",
                ))
            }
            (BuilderKind::Rootfs, Some(_), _) => {
                return Err(refuse(
                    "installer",
                    "the rootfs builder boots no installer: remove [installer], or set kind = \"installer\"",
                ))
            }
            (BuilderKind::Rootfs, None, variant) => Builder::Rootfs { variant },
        };
        Ok(Definition {
            image: f.image,
            os: f.os,
            builder,
            machine: f.machine,
            system: f.system,
            service: f.service,
            data: f.data,
            provisioners: f.provisioners,
            checks: f.checks,
            output: f.output,
            publish: f.publish,
            cloud: f.cloud,
            cache: f.cache,
            base_dir: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            path: path.to_path_buf(),
        })
    }

    /// The time the image's timestamps are clamped to (`SOURCE_DATE_EPOCH`):
    /// `output.source_date_epoch`, else the time of a dated snapshot mirror
    /// (`system.mirror` such as `http://snapshot.debian.org/archive/debian/20261120T000000Z/`),
    /// else the release date of the OS release, so the same inputs give the same bytes.
    pub fn source_date_epoch(&self) -> u32 {
        self.output
            .source_date_epoch
            .or_else(|| snapshot_time(&self.system.mirror))
            .unwrap_or_else(|| release_date(&self.os.release))
    }

    /// The packages the base installs: `system.packages`, then [`Self::bake_only_packages`].
    pub fn base_packages(&self) -> Vec<String> {
        let mut packages = self.system.packages.clone();
        if self.cloud_init() {
            packages.extend(CLOUD_INIT_PACKAGES.iter().map(|p| p.to_string()));
        }
        packages.extend(self.bake_only_packages().iter().map(|p| p.to_string()));
        packages
    }

    /// Whether instances configure themselves with cloud-init (`cloud.init`, or its default:
    /// on for a Debian image with a `[publish]` target).
    pub fn cloud_init(&self) -> bool {
        match self.cloud.init {
            Some(init) => init == CloudInit::CloudInit,
            None => {
                self.os.family == OsFamily::Debian
                    && (self.publish.aws.is_some() || self.publish.eucalyptus.is_some())
            }
        }
    }

    /// Whether cloud-init also takes the metadata service of a cloud that does not identify
    /// itself as AWS (`cloud.private_ec2`, default: a `[publish.eucalyptus]` target).
    pub fn cloud_private_ec2(&self) -> bool {
        self.cloud
            .private_ec2
            .unwrap_or(self.publish.eucalyptus.is_some())
    }

    /// The user the metadata's SSH keys go to.
    pub fn cloud_user(&self) -> &str {
        self.cloud.user.as_deref().unwrap_or(DEFAULT_CLOUD_USER)
    }

    /// What the base installs only for the bake, and the bake purges again: Debian's Ansible
    /// (and the apt bindings its `apt` module needs) when a playbook runs in the image, less
    /// what `system.packages` names.
    pub fn bake_only_packages(&self) -> Vec<&'static str> {
        let runs_in_image = self
            .provisioners
            .iter()
            .any(|p| matches!(p, Provisioner::Ansible(a) if a.runner == AnsibleRunner::Image));
        match runs_in_image {
            true => ANSIBLE_PACKAGES
                .into_iter()
                .filter(|p| !self.system.packages.iter().any(|named| named == p))
                .collect(),
            false => Vec::new(),
        }
    }

    /// Every pinned file of the definition with the dotted name of its field.
    pub fn artifacts(&self) -> Vec<(String, &Artifact)> {
        let mut all = Vec::new();
        if let Some(i) = self.builder.installer() {
            for (name, a) in [
                ("kernel", &i.kernel),
                ("initrd", &i.initrd),
                ("iso", &i.iso),
            ] {
                if let Some(a) = a {
                    all.push((format!("installer.{name}"), a));
                }
            }
        }
        if let Some(DataSource::Tarball(t)) = self.data.as_ref().map(|d| &d.source) {
            all.push(("data.tarball".to_string(), t));
        }
        all
    }

    /// (`field`, "the file … does not exist") when `path`, resolved against the definition's
    /// directory, is not a file on this machine: the stages' checks of the files they read.
    pub fn missing_file(&self, field: String, path: &Path) -> Option<(String, String)> {
        let full = self.resolve(path);
        (!full.is_file()).then(|| (field, format!("the file {} does not exist", full.display())))
    }

    /// Where the definition file is, for the stages' specs.
    pub fn file(&self) -> DefinitionFile {
        DefinitionFile {
            path: self.path.clone(),
            dir: self.base_dir.clone(),
        }
    }

    /// Resolves a path written in the definition against the definition's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.file().resolve(p)
    }
}

/// What `[cloud] init = "cloud-init"` adds to the base: cloud-init, and `growpart` to grow
/// the root partition to the volume's size.
pub const CLOUD_INIT_PACKAGES: [&str; 2] = ["cloud-init", "cloud-guest-utils"];

/// Debian's Ansible and the apt bindings its `apt` module needs, for playbooks that run in the
/// image.
pub const ANSIBLE_PACKAGES: [&str; 2] = ["ansible-core", "python3-apt"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chef_run_list_entries_parse_to_cookbook_and_recipe_or_role() {
        let recipe = |c: &str, r: &str| {
            Some(ChefRunItem::Recipe {
                cookbook: c.into(),
                recipe: r.into(),
            })
        };
        assert_eq!(
            ChefRunItem::parse("recipe[web::site]"),
            recipe("web", "site")
        );
        assert_eq!(ChefRunItem::parse("web::site"), recipe("web", "site"));
        assert_eq!(ChefRunItem::parse("web"), recipe("web", "default"));
        assert_eq!(
            ChefRunItem::parse("role[base]"),
            Some(ChefRunItem::Role("base".into()))
        );
        for bad in ["", "recipe[]", "role[a b]", "web::", "../x", "recipe[web"] {
            assert_eq!(ChefRunItem::parse(bad), None, "{bad}");
        }
        assert_eq!(
            ChefRunItem::parse("web").unwrap().canonical(),
            "recipe[web::default]"
        );
    }

    const MINIMAL: &str = r#"
[image]
name = "t"
version = "1"
[os]
family = "debian"
release = "bookworm"
[builder]
kind = "rootfs"
[system]
hostname = "h"
mirror = "http://deb.debian.org/debian"
"#;

    fn parse(text: &str) -> Result<Definition, DefinitionError> {
        Definition::parse(text, Path::new("images/t.toml"))
    }

    #[test]
    fn minimal_definition_gets_defaults() {
        let d = parse(MINIMAL).unwrap();
        assert_eq!(d.machine.cpus, 2);
        assert_eq!(d.machine.disk_size.mib(), 4096);
        assert_eq!(d.output.formats, vec![DiskFormat::Qcow2]);
    }

    #[test]
    fn the_source_date_comes_from_the_definition_else_a_snapshot_mirror_else_the_release() {
        assert_eq!(parse(MINIMAL).unwrap().source_date_epoch(), 1_686_355_200);
        let snapshot = MINIMAL.replace(
            "http://deb.debian.org/debian",
            "http://snapshot.debian.org/archive/debian/20261120T093000Z/",
        );
        // 2026-11-20 09:30:00 UTC.
        assert_eq!(parse(&snapshot).unwrap().source_date_epoch(), 1_795_167_000);
        let pinned = format!("{snapshot}[output]\nsource_date_epoch = 1700000000\n");
        assert_eq!(parse(&pinned).unwrap().source_date_epoch(), 1_700_000_000);
        let negative = format!("{MINIMAL}[output]\nsource_date_epoch = -1\n");
        let e = parse(&negative).unwrap_err().to_string();
        assert!(e.contains("output.source_date_epoch"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_field() {
        let text = MINIMAL.replace("hostname = \"h\"", "hostname = \"h\"\ncolour = \"red\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("images/t.toml:12:1: field `system"), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = format!("{MINIMAL}[machine]\ncpus = \"two\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("images/t.toml:14:8: field `machine.cpus`"),
            "{e}"
        );
    }

    #[test]
    fn plain_password_is_refused_with_a_hint() {
        let text =
            format!("{MINIMAL}[[system.users]]\nname = \"a\"\npassword_hash = \"hunter2\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("field `system.users[0].password_hash`"), "{e}");
        assert!(e.contains("mkpasswd"), "{e}");
        assert!(e.contains(":15:17:"), "{e}");
    }

    #[test]
    fn malformed_sha256_is_refused() {
        let text = format!(
            "{MINIMAL}[data]\ndest = \"/srv\"\ntarball = {{ path = \"d.tar\", sha256 = \"abc\" }}\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("field `data.tarball.sha256`"), "{e}");
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn a_data_source_and_a_pinned_file_are_each_exactly_one_thing() {
        let sha = "0".repeat(64);
        let data = |fields: &str| format!("{MINIMAL}[data]\ndest = \"/srv\"\n{fields}\n");
        let tarball = format!("tarball = {{ url = \"https://x/d.tar\", sha256 = \"{sha}\" }}");
        let git = "git = { repo = \"https://git.example/d.git\", ref = \"main\" }";
        let d = parse(&data(&tarball)).unwrap().data.unwrap();
        let DataSource::Tarball(t) = d.source else {
            panic!("a tarball: {:?}", d.source)
        };
        assert_eq!(t.location, ArtifactLocation::Url("https://x/d.tar".into()));
        assert!(matches!(
            parse(&data(git)).unwrap().data.unwrap().source,
            DataSource::Git(_)
        ));
        for fields in [format!("{tarball}\n{git}"), String::new()] {
            let e = parse(&data(&fields)).unwrap_err().to_string();
            let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
            assert!(line >= 12, "at the [data] table (line 12 on): {e}");
            assert!(e.contains(": field `data`: "), "{e}");
            assert!(e.contains("exactly one of `tarball` or `git`"), "{e}");
        }
        let both = tarball.replace("url =", "path = \"d.tar\", url =");
        let e = parse(&data(&both)).unwrap_err().to_string();
        assert!(e.contains("field `data.tarball`"), "{e}");
        assert!(e.contains("exactly one of `path` or `url`"), "{e}");
    }

    #[test]
    fn installer_builder_needs_media() {
        let text = MINIMAL.replace("kind = \"rootfs\"", "kind = \"installer\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("images/t.toml:9:1: field `builder.kind`"), "{e}");
    }

    #[test]
    fn only_the_installer_builder_has_an_installer_and_only_rootfs_a_variant() {
        let installer = "[installer]\nkernel = { url = \"https://x/linux\", sha256 = \"{0}\" }\ninitrd = { url = \"https://x/initrd.gz\", sha256 = \"{0}\" }\n"
            .replace("{0}", &"0".repeat(64));
        let def = parse(
            &format!("{MINIMAL}{installer}").replace("kind = \"rootfs\"", "kind = \"installer\""),
        )
        .unwrap();
        assert_eq!(def.builder.kind(), BuilderKind::Installer);
        assert!(def.builder.installer().unwrap().kernel.is_some());
        let e = parse(&format!("{MINIMAL}{installer}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `installer`: the rootfs builder boots no installer"),
            "{e}"
        );
        let variant = MINIMAL.replace("kind = \"rootfs\"", "kind = \"rootfs\"\nvariant = \"apt\"");
        assert_eq!(parse(&variant).unwrap().builder.variant(), "apt");
        assert_eq!(parse(MINIMAL).unwrap().builder.variant(), "minbase");
        let e = parse(
            &format!("{variant}{installer}").replace("kind = \"rootfs\"", "kind = \"installer\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("images/t.toml:10:1: field `builder.variant`"),
            "{e}"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("4G").unwrap().0, 4 << 30);
        assert_eq!(ByteSize::parse("4GiB").unwrap().0, 4 << 30);
        assert_eq!(ByteSize::parse("512M").unwrap().mib(), 512);
        assert!(ByteSize::parse("4 potatoes").is_none());
    }
}
