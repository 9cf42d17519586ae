//! imgforge builds immutable VM images for teams that rebuild instead of patching.
//!
//! The crate reads as one pipeline, a module per stage, in the order a build runs them:
//!
//! ```text
//! definition ─► render ─► spec (ids) ─► base ─► bake ─► export ─► verify ─► manifest
//!                                    (rootfs | installer)                    │
//!                                                     register ─► rotate ─► prune
//! ```
//!
//! The stage modules are private: a program drives the pipeline through the short list of
//! functions and option types re-exported here ([`build()`], [`verify_manifest`],
//! [`register_manifest`], [`rotate()`], [`prune()`] and their `*Options`), and reads the three
//! public schema modules: [`definition`] (the TOML an image is defined in), [`manifest`] (what a
//! build records) and [`events`] (progress for people, the `--json` events for CI). Around the
//! stages, private modules drive QEMU, hold what register, rotate and prune share for the cloud,
//! and serve the installer's answer file.
//!
//! ```no_run
//! use std::path::Path;
//! let def = imgforge::definition::Definition::load(Path::new("images/debian-12-web.toml"))?;
//! let ids = imgforge::LayerIds::of(&imgforge::Specs::derive(&def)?);
//! println!("base {} bake {}", ids.base, ids.bake);
//! # Ok::<(), anyhow::Error>(())
//! ```

#![warn(missing_docs)]

mod apt;
mod atomic;
mod bake;
mod bake_protocol;
mod base;
mod batch;
mod bootcmd;
mod build;
mod cache;
mod cancel;
mod canonical;
mod cloud;
mod contents;
pub mod definition;
mod diff;
mod disk;
mod doctor;
pub mod events;
mod export;
mod httpserve;
mod layer_store;
mod layers;
mod load;
mod lock;
pub mod manifest;
mod os;
mod outdated;
mod plan;
mod process;
mod prune;
mod qemu;
mod register;
mod remote_cache;
mod render;
mod rotate;
mod sbom;
mod seal;
mod signature;
mod sources;
mod spec;
mod store;
mod vagrant;
mod verify;

pub use atomic::write as write_atomically;
pub use base::packages::limit as package_cache_limit;
pub use base::{BaseInfo, BaseLayer, DirectBoot};
pub use batch::{build_all, jobs_that_fit, JobResult};
pub use build::{build, BuildOptions, BuildOutcome, BuildResult};
pub use cache::{gc as cache_gc, GcOptions, GcReport};
pub use cancel::install_handlers;
pub use cloud::{parse_age, CloudOptions};
pub use diff::{diff, Difference};
pub use doctor::run as doctor;
pub use layers::LayerIds;
pub use load::{definition as load_definition, validate};
pub use lock::{path_for as lock_path, write_lock};
pub use lock::{Changes, Upgrade};
pub use outdated::{outdated, table as outdated_table, OutdatedPackage};
pub use plan::{plan, table as plan_table, LayerState, PlanItem, Upstream};
pub use prune::{run as prune, PruneOptions};
pub use register::ami::BootMode;
pub use register::{
    register_manifest, unbundle, AmiSettings, Destination, EucaKeys, RegisterOptions,
    RegisteredImage, SnapshotUpload, Target, UploadStats,
};
pub use render::{render, AnswerFile};
pub use rotate::health::AddressKind;
pub use rotate::{parse_filter, run as rotate, RotateOptions};
pub use signature::{check_build as check_build_signature, sign_build, Signer};
pub use spec::Specs;
pub use store::cache_dir;
pub use verify::{verify_manifest, VerifyOverrides};
