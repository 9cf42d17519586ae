//! imgforge builds immutable VM images for teams that rebuild instead of patching.
//!
//! The crate reads as one pipeline, a module per stage, in the order a build runs them:
//!
//! ```text
//! definition ─► render ─► layers (ids) ─► base ─► bake ─► export ─► verify ─► manifest
//!                                      (rootfs | installer)                    │
//!                                                     register ─► rotate ─► prune
//! ```
//!
//! [`build`] runs the first row as a list of steps. Around the stages: [`qemu`] drives
//! virtual machines (the installer's HTTP server, boot commands and the bake protocol are
//! private to the stages that use them), [`cloud`] holds what register, rotate and prune share
//! (configuration, call counting, paginated and chunked describes, tags), [`events`] reports
//! progress for people and the `--json` events for CI.
//!
//! ```no_run
//! use std::path::Path;
//! let def = imgforge::definition::Definition::load(Path::new("images/debian-12-web.toml"))?;
//! let answer = imgforge::render::render(&def)?;
//! let (ids, _resolved) = imgforge::layers::resolve_and_compute(&def, &answer)?;
//! println!("base {} bake {}", ids.base, ids.bake);
//! # Ok::<(), anyhow::Error>(())
//! ```

#![warn(missing_docs)]

pub mod atomic;
mod bake;
mod bake_protocol;
mod base;
mod bootcmd;
pub mod build;
pub mod cancel;
pub mod cloud;
pub mod definition;
pub mod doctor;
pub mod events;
mod export;
mod httpserve;
pub mod layers;
pub mod manifest;
mod process;
pub mod prune;
pub mod qemu;
pub mod register;
pub mod render;
pub mod rotate;
mod sources;
mod sparse;
pub mod verify;

pub use base::{BaseInfo, BaseLayer, DirectBoot};
