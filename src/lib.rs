//! imgforge builds immutable VM images for teams that rebuild instead of patching.
//!
//! The crate reads as one pipeline, a module per stage:
//! [`definition`] → [`render`] → [`layers`] (ids) → base layer ([`build`]) → bake ([`bake`]) →
//! [`export`] → [`register`] → [`rotate`] / [`prune`].
//! Around them: [`qemu`] drives virtual machines, [`httpserve`] serves answer files,
//! [`process`] runs external programs, [`events`] reports progress for people and CI.
//!
//! ```no_run
//! use std::path::Path;
//! let def = imgforge::definition::Definition::load(Path::new("images/debian-12-web.toml"))?;
//! let answer = imgforge::render::render(&def)?;
//! let (ids, _resolved) = imgforge::layers::resolve_and_compute(&def, &answer)?;
//! println!("base {} bake {}", ids.base, ids.bake);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod atomic;
pub mod bake;
mod bake_protocol;
pub mod base;
pub mod bootcmd;
pub mod build;
pub mod cancel;
pub mod cloud;
pub mod definition;
pub mod doctor;
pub mod events;
pub mod export;
pub mod httpserve;
pub mod layers;
pub mod manifest;
pub mod process;
pub mod prune;
pub mod qemu;
pub mod register;
pub mod render;
pub mod rotate;
pub mod sources;
pub mod sparse;
pub mod verify;
