//! The `installer` builder: boots the OS installer in QEMU with the rendered answer file served
//! over HTTP, and waits for it to power off.

use crate::base::{BaseInfo, BaseStaging};
use crate::definition::Definition;
use crate::events::Reporter;
use crate::render::AnswerFile;
use anyhow::{bail, Result};

/// Builds the base layer by running the installer.
pub fn build(
    _def: &Definition,
    _answer: &AnswerFile,
    _staging: &BaseStaging,
    _reporter: &Reporter,
) -> Result<BaseInfo> {
    bail!("the installer builder is not built yet; use builder kind = \"rootfs\" for Debian")
}
