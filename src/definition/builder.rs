//! `[builder]` and `[installer]`: how the base layer is made, and the pinned files (installer
//! media, a data tarball) a definition names.

use super::values::{HumanDuration, Sha256Hex};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How the base layer is made (`[builder]`, and `[installer]` for the installer builder).
/// Serialised as `[builder]` is written (`kind`, `variant`): what the base id covers of it.
#[derive(Debug, Clone, Serialize)]
#[serde(into = "BuilderFields")]
pub enum Builder {
    /// Boots the OS installer from its media with a rendered answer file.
    Installer(Box<Installer>),
    /// Makes the OS tree with mmdebstrap and assembles a disk; no installer.
    Rootfs {
        /// mmdebstrap variant (default `minbase`).
        variant: Option<String>,
    },
}

impl Builder {
    /// Which of the two builders this is.
    pub fn kind(&self) -> BuilderKind {
        match self {
            Builder::Installer(_) => BuilderKind::Installer,
            Builder::Rootfs { .. } => BuilderKind::Rootfs,
        }
    }

    /// The mmdebstrap variant of the rootfs builder (default `minbase`).
    pub fn variant(&self) -> &str {
        match self {
            Builder::Rootfs {
                variant: Some(variant),
            } => variant,
            _ => "minbase",
        }
    }

    /// The installer's media and boot command, for the installer builder.
    pub fn installer(&self) -> Option<&Installer> {
        match self {
            Builder::Installer(i) => Some(i.as_ref()),
            Builder::Rootfs { .. } => None,
        }
    }
}

/// `[builder]` as the TOML writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BuilderFields {
    /// `installer` or `rootfs`.
    pub(super) kind: BuilderKind,
    /// mmdebstrap's variant, for the rootfs builder.
    #[serde(default)]
    pub(super) variant: Option<String>,
}

impl From<Builder> for BuilderFields {
    fn from(b: Builder) -> BuilderFields {
        BuilderFields {
            kind: b.kind(),
            variant: match b {
                Builder::Rootfs { variant } => variant,
                Builder::Installer(_) => None,
            },
        }
    }
}

/// The two ways of making a base layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    /// Boot the OS installer with a rendered answer file.
    Installer,
    /// Build the OS tree with mmdebstrap and assemble a disk; no installer.
    Rootfs,
}

/// `[installer]`: media and boot command of the installer builder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installer {
    /// Installer kernel for direct kernel boot.
    #[serde(default)]
    pub kernel: Option<Artifact>,
    /// Installer initrd for direct kernel boot.
    #[serde(default)]
    pub initrd: Option<Artifact>,
    /// Installer ISO, booted with `boot_command` typed at its prompt.
    #[serde(default)]
    pub iso: Option<Artifact>,
    /// Kernel command line for direct kernel boot; handlebars placeholders `{{http_url}}`,
    /// `{{http_ip}}`, `{{http_port}}` and `{{answer_url}}` are filled in.
    #[serde(default)]
    pub append: Option<String>,
    /// Keys typed at the ISO's boot prompt, VeeWee/Packer syntax.
    #[serde(default)]
    pub boot_command: Vec<String>,
    /// How long to wait after power-on before typing the boot command.
    #[serde(default = "default_boot_wait")]
    pub boot_wait: HumanDuration,
    /// Answer-file template overriding the shipped one, relative to the definition.
    #[serde(default)]
    pub template: Option<PathBuf>,
}

fn default_boot_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// A file pinned by its sha256: a local path or a URL (in TOML, exactly one of `path` and
/// `url`, beside `sha256`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "ArtifactFields", into = "ArtifactFields")]
pub struct Artifact {
    /// Where the file is.
    pub location: ArtifactLocation,
    /// Expected sha256 of the file.
    pub sha256: Sha256Hex,
}

/// Where a pinned file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// Local path, relative to the definition.
    Path(PathBuf),
    /// `http://` or `https://` URL.
    Url(String),
}

/// An [`Artifact`] as the TOML writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactFields {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    sha256: Sha256Hex,
}

impl TryFrom<ArtifactFields> for Artifact {
    type Error = &'static str;
    fn try_from(f: ArtifactFields) -> Result<Artifact, Self::Error> {
        let location = match (f.path, f.url) {
            (Some(path), None) => ArtifactLocation::Path(path),
            (None, Some(url)) => ArtifactLocation::Url(url),
            _ => return Err("give exactly one of `path` or `url`"),
        };
        Ok(Artifact {
            location,
            sha256: f.sha256,
        })
    }
}

impl From<Artifact> for ArtifactFields {
    fn from(a: Artifact) -> ArtifactFields {
        let (path, url) = match a.location {
            ArtifactLocation::Path(p) => (Some(p), None),
            ArtifactLocation::Url(u) => (None, Some(u)),
        };
        ArtifactFields {
            path,
            url,
            sha256: a.sha256,
        }
    }
}
