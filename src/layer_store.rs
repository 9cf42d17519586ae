//! The layer store: base and bake layers go through one protocol. A lookup takes the layer's
//! lock (a base: one build of it at a time, across threads and processes), looks in the local
//! cache (whose layout is `store.rs`'s), then in the remote cache (`remote_cache.rs`); a miss
//! is made by the caller's step, and what was made is published to the remote cache: a base
//! at once, a bake once its image has passed its checks (never from a build without them).

use crate::bake::Baked;
use crate::base::{BaseInfo, BaseLayer, BaseStaging};
use crate::events::{payload, Reporter};
use crate::layers::short;
use crate::remote_cache::{Layer, RemoteCache};
use crate::store::Store;
use anyhow::{Context, Result};
use std::path::Path;

/// Where a layer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The local cache had it.
    Local,
    /// The remote cache had it; it was downloaded.
    Remote,
    /// This build made it.
    Built,
}

/// Where a layer is, found without fetching it (what `plan` reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// In the local cache.
    Local,
    /// Only in the remote cache.
    Remote,
    /// In neither.
    Missing,
}

/// The local cache, with the remote one when the build has one.
pub struct LayerStore<'a> {
    local: Store,
    remote: Option<&'a RemoteCache>,
    reporter: &'a Reporter,
}

impl<'a> LayerStore<'a> {
    /// The store of this process's local cache and `remote`.
    pub fn new(remote: Option<&'a RemoteCache>, reporter: &'a Reporter) -> LayerStore<'a> {
        LayerStore {
            local: Store::current(),
            remote,
            reporter,
        }
    }

    /// Base layer `id`: from the local cache (and then shared, if the remote cache lacks it),
    /// else from the remote cache, else made by `build` in a staging directory that becomes
    /// the cache entry once it is complete, and published.
    pub fn base(
        &self,
        id: &str,
        build: impl FnOnce(&BaseStaging) -> Result<BaseInfo>,
    ) -> Result<(BaseLayer, Origin)> {
        // Held until the base is in the cache: the other builds of it wait here, then find it.
        let lock = self.local.base_lock(id)?;
        if lock.try_lock().is_err() {
            self.reporter.println(&format!(
                "    base layer {} is being built by another build; waiting for it",
                short(id)
            ));
            lock.lock()
                .with_context(|| format!("cannot lock base layer {}", short(id)))?;
        }
        if let Some(base) = BaseLayer::open(id) {
            // Last used now: `imgforge cache gc` keeps it.
            crate::sources::mark_used(&base.dir.join("base.json"))?;
            self.reporter.emit(
                &format!("base layer {} is cached: the OS is not rebuilt", short(id)),
                &payload::BaseCached {
                    base: id.to_string(),
                    cached: true,
                },
            );
            if let Some(remote) = self.remote {
                if !remote.has(Layer::Base, id)? {
                    remote.upload(Layer::Base, id, &base.dir, self.reporter)?;
                }
            }
            return Ok((base, Origin::Local));
        }
        if let Some(remote) = self.remote {
            let staging = BaseStaging::empty(id)?;
            if remote.download(Layer::Base, id, staging.dir.path(), self.reporter)? {
                return Ok((staging.commit_unpacked()?, Origin::Remote));
            }
        }
        let staging = BaseStaging::new(id)?;
        let info = build(&staging)?;
        crate::cancel::check()?;
        let base = staging.commit(info)?;
        if let Some(remote) = self.remote {
            remote.upload(Layer::Base, id, &base.dir, self.reporter)?;
        }
        Ok((base, Origin::Built))
    }

    /// Where base layer `id` is, in this process's local cache or else in the remote cache
    /// `remote` connects to (only asked when the local cache lacks it), without fetching it.
    pub fn base_presence(
        id: &str,
        remote: impl FnOnce() -> Result<Option<RemoteCache>>,
    ) -> Result<Presence> {
        if BaseLayer::open(id).is_some() {
            return Ok(Presence::Local);
        }
        match remote()? {
            Some(remote) if remote.has(Layer::Base, id)? => Ok(Presence::Remote),
            _ => Ok(Presence::Missing),
        }
    }

    /// Bake layer `id` on `base`: from the remote cache (unpacked into `work`, its overlay
    /// pointed at this machine's copy of the base), else made by `build`. Bake layers are not
    /// kept locally: a finished build keeps its image.
    pub fn bake(
        &self,
        id: &str,
        base: &BaseLayer,
        work: &Path,
        build: impl FnOnce() -> Result<Baked>,
    ) -> Result<(Baked, Origin)> {
        if let Some(remote) = self.remote {
            let dir = work.join("bake-layer");
            std::fs::create_dir_all(&dir)?;
            if remote.download(Layer::Bake, id, &dir, self.reporter)? {
                return Ok((Baked::open(&dir, &base.disk())?, Origin::Remote));
            }
        }
        Ok((build()?, Origin::Built))
    }

    /// Publishes bake layer `id`, made by this build, to the remote cache (staged in `work`);
    /// the caller calls it only once the image passed its checks.
    pub fn publish_bake(&self, id: &str, baked: &Baked, work: &Path) -> Result<()> {
        let Some(remote) = self.remote else {
            return Ok(());
        };
        let dir = work.join("bake-layer-out");
        baked.save(&dir)?;
        remote.upload(Layer::Bake, id, &dir, self.reporter)
    }
}
