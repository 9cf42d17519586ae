//! Ctrl-C and SIGTERM: a long step checks [`requested`] and stops, and its clean-up runs as on
//! any other failure (QEMU killed, temporary files and partial outputs removed).

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Catches SIGINT and SIGTERM from now on, instead of dying without cleaning up.
pub fn install_handlers() -> std::io::Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(flag()))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}

/// Fails if SIGINT or SIGTERM arrived: called between the steps of a build.
pub fn check() -> Result<()> {
    if requested() {
        bail!("interrupted (SIGINT or SIGTERM): stopped and cleaned up");
    }
    Ok(())
}
