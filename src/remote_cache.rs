//! The layer cache runners share through S3 (`--cache-url s3://bucket/prefix`): a base or bake
//! layer is stored as one zstd-compressed tar object `<prefix>/<base|bake>/<id>.tar.zst` whose
//! sha256 is in its metadata. A build looks in the local cache, then here (download, check the digest, use),
//! then builds and uploads. Uploads are conditional (`If-None-Match: *`): when two runners
//! upload the same id at once, one object is written whole and the other upload is refused,
//! so no reader ever sees a partial object. An object whose bytes do not match its digest is
//! reported, deleted and built again, never used.
//!
//! The digest in an object's metadata is only the bucket writer's word, so a remote cache is
//! used only with a key to trust: runners sign what they upload (`IMGFORGE_CACHE_KEY`: the
//! signature of the layer's kind, id and sha256 rides in the object's metadata) and every
//! runner requires it (`IMGFORGE_CACHE_TRUST`: an allowed-signers file or minisign public key,
//! mandatory with a cache URL). An object without a signature by a trusted key, or whose
//! signature names another layer, id or digest, is reported, deleted and built again, never
//! unpacked; `plan` counts only signed objects as in the cache; a runner without a key to
//! sign with reads the cache and stores nothing.

use crate::cloud::{sdk_error, CloudOptions};
use crate::events::{payload, Reporter};
use crate::layers::short;
use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

/// Metadata key holding an object's sha256.
const DIGEST_KEY: &str = "sha256";
/// Metadata key holding the signature of the layer's statement (base64), see
/// [`layer_statement`].
const SIGNATURE_KEY: &str = "imgforge-signature";
/// The private key (OpenSSH or minisign) uploads are signed with.
pub const KEY_VAR: &str = "IMGFORGE_CACHE_KEY";
/// The allowed-signers file (or minisign public key) downloads must be signed by.
pub const TRUST_VAR: &str = "IMGFORGE_CACHE_TRUST";

/// What a stored layer's signature covers: its kind, its id and the sha256 of its object, so
/// that a signed object moved to another id or replaced is refused.
fn layer_statement(layer: Layer, id: &str, sha256: &str) -> String {
    format!(
        "imgforge layer v1\nlayer {}\nid {id}\nsha256 {sha256}\n",
        layer.name()
    )
}

/// A connection to the remote layer cache.
pub struct RemoteCache {
    url: String,
    bucket: String,
    prefix: String,
    s3: aws_sdk_s3::Client,
    runtime: tokio::runtime::Runtime,
    /// Signs uploads (`IMGFORGE_CACHE_KEY`); without it nothing is stored.
    signing_key: Option<std::path::PathBuf>,
    /// Downloads must be signed by a key of this file (`IMGFORGE_CACHE_TRUST`).
    trusted: std::path::PathBuf,
}

/// The layers the remote cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// A base layer: the OS disk with its kernel, initrd, build key and `base.json`.
    Base,
    /// A bake layer: the baked overlay of a base (only what the bake changed) and `bake.json`.
    Bake,
}

impl Layer {
    /// The layer's name in object keys, events and messages.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Base => "base",
            Layer::Bake => "bake",
        }
    }
}

/// What a download found.
enum Fetched {
    /// No object for this id.
    Missing,
    /// The layer was unpacked into the directory.
    Unpacked,
    /// The object is not signed by a trusted key (it has been deleted).
    Untrusted {
        /// The object's address.
        object: String,
        /// Why its signature does not check out.
        reason: String,
    },
    /// The object's bytes do not match its recorded digest (it has been deleted).
    Corrupt {
        /// The object's address.
        object: String,
        /// The digest recorded with it.
        expected: String,
        /// The digest of what was downloaded.
        actual: String,
    },
}

/// What an upload did.
enum Stored {
    /// The object was written: its compressed size in bytes and its sha256.
    Uploaded(u64, String),
    /// Another runner had written it first (or it was already there).
    AlreadyThere,
    /// Not stored: this runner has no key to sign it with.
    Unsigned,
}

impl RemoteCache {
    /// The remote cache a build uses: `url` (`--cache-url`, `IMGFORGE_CACHE_URL`) or else
    /// the definition's `[cache] url`; none when neither is set.
    pub fn chosen(url: Option<&str>, definitions: Option<&str>) -> Result<Option<RemoteCache>> {
        url.or(definitions).map(RemoteCache::connect).transpose()
    }

    /// Connects to the cache at `url` (`s3://bucket/prefix`) with the standard AWS chain
    /// (`AWS_ENDPOINT_URL_S3`, profiles, instance roles); fails without `IMGFORGE_CACHE_TRUST`.
    pub fn connect(url: &str) -> Result<RemoteCache> {
        let rest = url
            .strip_prefix("s3://")
            .with_context(|| format!("cache URL {url}: only s3://BUCKET/PREFIX is supported"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("cache URL {url}: no bucket");
        }
        let trusted: std::path::PathBuf = std::env::var_os(TRUST_VAR)
            .filter(|v| !v.is_empty())
            .with_context(|| {
                format!(
                    "remote cache {url}: set {TRUST_VAR} to the allowed-signers file (or minisign \
                     public key) of the keys that sign its layers, and {KEY_VAR} to the private \
                     key on runners that store layers: whoever can write the bucket could \
                     otherwise replace a layer and its digest together"
                )
            })?
            .into();
        if !trusted.is_file() {
            bail!(
                "{TRUST_VAR}={}: no such file (the allowed-signers file or minisign public key \
                 for the remote cache {url})",
                trusted.display()
            );
        }
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let config = runtime.block_on(crate::cloud::load(&CloudOptions::default()))?;
        // Layers are hundreds of megabytes: no limit on a whole operation, only on silence.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build();
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .timeout_config(timeouts)
            .build();
        Ok(RemoteCache {
            url: url.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            runtime,
            signing_key: std::env::var_os(KEY_VAR).map(Into::into),
            trusted,
        })
    }

    /// The object key of `layer` `id`.
    fn key(&self, layer: Layer, id: &str) -> String {
        let kind = layer.name();
        match self.prefix.as_str() {
            "" => format!("{kind}/{id}.tar.zst"),
            p => format!("{p}/{kind}/{id}.tar.zst"),
        }
    }

    /// The object's address, for messages.
    fn address(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Whether `layer` `id` is in the cache under a trusted signature (its bytes are checked
    /// against the signed digest when downloaded).
    pub fn has(&self, layer: Layer, id: &str) -> Result<bool> {
        let key = self.key(layer, id);
        let head = self
            .runtime
            .block_on(self.s3.head_object().bucket(&self.bucket).key(&key).send());
        match head {
            Ok(head) => Ok(self.signed_digest(layer, id, head.metadata()).is_ok()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(sdk_error(e, &format!("HeadObject {}", self.address(&key)))),
        }
    }

    /// The digest an object's metadata records, once its signature by a trusted key over this
    /// layer, id and digest checks out: the metadata alone is the bucket writer's word.
    fn signed_digest(
        &self,
        layer: Layer,
        id: &str,
        metadata: Option<&std::collections::HashMap<String, String>>,
    ) -> Result<String> {
        let field = |k: &str| metadata.and_then(|m| m.get(k)).cloned();
        let digest = field(DIGEST_KEY).unwrap_or_default();
        let sig = field(SIGNATURE_KEY).context("it carries no signature")?;
        let sig = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sig)
            .context("its signature is not base64")?;
        crate::signature::verify_text(&layer_statement(layer, id, &digest), &sig, &self.trusted)?;
        Ok(digest)
    }

    /// Downloads `layer` `id` into `dir` and reports it; false when the cache does not have
    /// it, or has a corrupt copy (reported with both digests and deleted, never used).
    pub fn download(
        &self,
        layer: Layer,
        id: &str,
        dir: &Path,
        reporter: &Reporter,
    ) -> Result<bool> {
        let name = layer.name();
        reporter.phase(&format!("download {name} layer"));
        match self.fetch(layer, id, dir)? {
            Fetched::Missing => Ok(false),
            Fetched::Corrupt {
                object,
                expected,
                actual,
            } => {
                reporter.emit(
                    &format!(
                        "{object} is corrupt (sha256 {actual}, recorded {expected}): not used, \
                         deleted; the {name} layer is made again"
                    ),
                    &payload::Warning {
                        object: Some(object.clone()),
                        expected: Some(expected.clone()),
                        actual: Some(actual.clone()),
                        ..Default::default()
                    },
                );
                Ok(false)
            }
            Fetched::Untrusted { object, reason } => {
                reporter.emit(
                    &format!(
                        "{object} is not signed by a key of {TRUST_VAR}: {reason}; not used, \
                         deleted; the {name} layer is made again"
                    ),
                    &payload::Warning {
                        object: Some(object.clone()),
                        untrusted: Some(reason.clone()),
                        ..Default::default()
                    },
                );
                Ok(false)
            }
            Fetched::Unpacked => {
                let message = format!("{name} layer {} came from the remote cache", short(id));
                let (layer_name, id) = (name.to_string(), id.to_string());
                match layer {
                    Layer::Base => reporter.emit(
                        &message,
                        &payload::BaseDownloaded {
                            layer: layer_name,
                            id,
                        },
                    ),
                    Layer::Bake => reporter.emit(
                        &message,
                        &payload::BakeDownloaded {
                            layer: layer_name,
                            id,
                        },
                    ),
                }
                Ok(true)
            }
        }
    }

    /// Stores the files of `dir` as `layer` `id` and reports it.
    pub fn upload(&self, layer: Layer, id: &str, dir: &Path, reporter: &Reporter) -> Result<()> {
        let name = layer.name();
        reporter.phase(&format!("upload {name} layer"));
        let (bytes, digest) = match self.store(layer, id, dir)? {
            Stored::Uploaded(bytes, digest) => (Some(bytes), Some(digest)),
            Stored::AlreadyThere => (None, None),
            Stored::Unsigned => {
                reporter.emit(
                    &format!(
                        "{name} layer {} not stored in the remote cache: no {KEY_VAR} to sign \
                         it with (runners use only signed layers)",
                        short(id)
                    ),
                    &payload::Warning {
                        layer: Some(name.to_string()),
                        id: Some(id.to_string()),
                        ..Default::default()
                    },
                );
                return Ok(());
            }
        };
        let message = match bytes {
            Some(b) => format!(
                "{name} layer {} stored in the remote cache ({b} bytes)",
                short(id)
            ),
            None => format!(
                "{name} layer {} was stored in the remote cache by another build meanwhile",
                short(id)
            ),
        };
        let (layer_name, id, already_there) = (name.to_string(), id.to_string(), bytes.is_none());
        match layer {
            Layer::Base => reporter.emit(
                &message,
                &payload::BaseUploaded {
                    layer: layer_name,
                    id,
                    bytes,
                    sha256: digest,
                    already_there,
                },
            ),
            Layer::Bake => reporter.emit(
                &message,
                &payload::BakeUploaded {
                    layer: layer_name,
                    id,
                    bytes,
                    sha256: digest,
                    already_there,
                },
            ),
        }
        Ok(())
    }

    /// Downloads `layer` `id`, checks its digest and unpacks it into `dir`.
    fn fetch(&self, layer: Layer, id: &str, dir: &Path) -> Result<Fetched> {
        let key = self.key(layer, id);
        let object = self.address(&key);
        let got = self
            .runtime
            .block_on(self.s3.get_object().bucket(&self.bucket).key(&key).send());
        let got = match got {
            Ok(got) => got,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Ok(Fetched::Missing)
            }
            Err(e) => return Err(sdk_error(e, &format!("GetObject {object}"))),
        };
        let expected = match self.signed_digest(layer, id, got.metadata()) {
            Ok(digest) => digest,
            Err(e) => {
                self.delete(&key);
                return Ok(Fetched::Untrusted {
                    object,
                    reason: format!("{e:#}"),
                });
            }
        };
        let download = tempfile::NamedTempFile::new_in(dir)?;
        let actual = self.runtime.block_on(async {
            let mut body = got.body.into_async_read();
            let mut file = BufWriter::new(download.as_file());
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut body, &mut buf)
                    .await
                    .with_context(|| format!("{object}: download interrupted"))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                file.write_all(&buf[..n])?;
            }
            file.flush()?;
            anyhow::Ok(hex::encode(hash.finalize()))
        })?;
        if actual != expected {
            self.delete(&key);
            return Ok(Fetched::Corrupt {
                object,
                expected,
                actual,
            });
        }
        let decoder = zstd::Decoder::new(File::open(download.path())?)?;
        unpack_layer(decoder, dir, &object)?;
        // The digest above is the object's own word: what it holds is checked for itself. A
        // disk must not reach outside the layer (a backing file or an external data file
        // would have QEMU read any file of this machine); a bake overlay's backing file is
        // set to this runner's base next.
        for entry in std::fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "qcow2") {
                crate::qemu::check_self_contained(&path, layer == Layer::Bake)
                    .with_context(|| format!("{object}: refused"))?;
            }
        }
        Ok(Fetched::Unpacked)
    }

    /// Deletes the object at `key`, as far as the bucket lets us (a failure leaves it for the
    /// next runner to refuse again).
    fn delete(&self, key: &str) {
        let _ = self
            .runtime
            .block_on(self.s3.delete_object().bucket(&self.bucket).key(key).send());
    }

    /// Uploads the files of `dir` as `layer` `id`, unless the cache has it already.
    fn store(&self, layer: Layer, id: &str, dir: &Path) -> Result<Stored> {
        let Some(signing_key) = &self.signing_key else {
            return Ok(Stored::Unsigned);
        };
        let key = self.key(layer, id);
        let object = self.address(&key);
        let packed = tempfile::NamedTempFile::new_in(dir.parent().unwrap_or(Path::new(".")))?;
        let digest = pack(dir, packed.as_file())?;
        let size = packed.as_file().metadata()?.len();
        let (signature, _) =
            crate::signature::sign_text(&layer_statement(layer, id, &digest), signing_key)
                .with_context(|| {
                    format!("cannot sign the {} layer with {KEY_VAR}", layer.name())
                })?;
        let signature =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signature);
        let put = self.runtime.block_on(async {
            let body = ByteStream::from_path(packed.path())
                .await
                .with_context(|| format!("cannot read {}", packed.path().display()))?;
            let sent = put_request(&self.s3, &self.bucket, &key, &digest)
                .metadata(SIGNATURE_KEY, &signature)
                .body(body)
                .send()
                .await;
            anyhow::Ok(sent)
        })?;
        match put {
            Ok(_) => Ok(Stored::Uploaded(size, digest)),
            Err(e) if precondition_failed(&e) => Ok(Stored::AlreadyThere),
            Err(e) => Err(sdk_error(
                e,
                &format!("PutObject {object} (cache {})", self.url),
            )),
        }
    }
}

/// The PutObject call of a layer: its digest in the metadata, and written only if no object
/// has the key yet (`If-None-Match: *`), so that a racing runner's upload is refused.
fn put_request(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    digest: &str,
) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .metadata(DIGEST_KEY, digest)
        .if_none_match("*")
}

/// Whether a conditional write was refused because the object exists.
fn precondition_failed<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "PreconditionFailed" || c == "ConditionalRequestConflict")
}

/// Writes the regular files of `dir` (sorted, no subdirectories) as a zstd-compressed tar into
/// `out`; returns the sha256 of the compressed bytes.
fn pack(dir: &Path, out: &File) -> Result<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let hashing = Hashing {
        inner: BufWriter::new(out),
        hash: Sha256::new(),
    };
    // Deterministic headers (no times, owners or umask) and no sparse maps (where a copy has
    // holes depends on how it was written): two runners packing the same layer upload the
    // same bytes, whichever of them the bucket ends up holding. zstd squeezes the zeros.
    let mut tar = tar::Builder::new(zstd::Encoder::new(hashing, 3)?);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.sparse(false);
    for name in names {
        tar.append_path_with_name(dir.join(&name), &name)
            .with_context(|| format!("cannot pack {}", dir.join(&name).display()))?;
    }
    let mut hashing = tar.into_inner()?.finish()?;
    hashing.inner.flush()?;
    Ok(hex::encode(hashing.hash.finalize()))
}

/// Unpacks a layer's tar into `dir`: plain files only, each named by one file name; a link,
/// a device, a directory or a path (`../x`, `/etc/x`) is refused, naming `object`.
fn unpack_layer(reader: impl std::io::Read, dir: &Path, object: &str) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive
        .entries()
        .with_context(|| format!("{object}: not a layer archive"))?
    {
        let mut entry = entry.with_context(|| format!("{object}: damaged archive"))?;
        let path = entry.path()?.into_owned();
        let mut parts = path.components();
        let plain = matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        );
        if !plain || entry.header().entry_type() != tar::EntryType::Regular {
            bail!(
                "{object}: holds `{}` ({:?}), which is not a plain file of a layer: the object \
                 was not written by imgforge; nothing of it is used (delete it, and the layer is \
                 built again)",
                path.display(),
                entry.header().entry_type()
            );
        }
        entry
            .unpack_in(dir)
            .with_context(|| format!("{object}: cannot unpack into {}", dir.display()))?;
    }
    Ok(())
}

/// A writer that hashes what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::MotoServer;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

    /// A tar holding one entry of `kind` named `name` (a link to /etc/passwd where a link).
    fn tar_with(name: &str, kind: tar::EntryType) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o644);
        if kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd").unwrap();
        }
        // Written into the header's name field directly: `append_data` refuses `..` itself.
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_layer_holding_a_link_or_a_path_is_refused() {
        for (name, kind) in [
            ("disk.qcow2", tar::EntryType::Symlink),
            ("disk.qcow2", tar::EntryType::Link),
            ("../escape", tar::EntryType::Regular),
            ("sub/disk.qcow2", tar::EntryType::Regular),
            ("sub", tar::EntryType::Directory),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let e = unpack_layer(&tar_with(name, kind)[..], dir.path(), "s3://b/base/x")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not a plain file of a layer"),
                "{name} {kind:?}: {e}"
            );
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
        let dir = tempfile::tempdir().unwrap();
        unpack_layer(
            &tar_with("base.json", tar::EntryType::Regular)[..],
            dir.path(),
            "s3://b/base/x",
        )
        .unwrap();
        assert!(dir.path().join("base.json").is_file());
    }

    /// A cache in moto's bucket `layers` that signs with `key` and trusts `trusted`.
    fn cache(moto: &MotoServer, key: Option<&Path>, trusted: &Path) -> RemoteCache {
        let conf = aws_sdk_s3::config::Builder::from(&moto.sdk_config())
            .force_path_style(true)
            .build();
        RemoteCache {
            url: "s3://layers/ci".into(),
            bucket: "layers".into(),
            prefix: "ci".into(),
            s3: aws_sdk_s3::Client::from_conf(conf),
            runtime: tokio::runtime::Runtime::new().unwrap(),
            signing_key: key.map(Path::to_path_buf),
            trusted: trusted.to_path_buf(),
        }
    }

    fn ssh_key(dir: &Path, name: &str) -> std::path::PathBuf {
        let key = dir.join(name);
        crate::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .run()
            .unwrap();
        key
    }

    #[test]
    fn a_cache_requiring_signatures_refuses_what_a_bucket_writer_put_there() {
        let moto = MotoServer::start();
        let dir = tempfile::tempdir().unwrap();
        let (ci, intruder) = (ssh_key(dir.path(), "ci"), ssh_key(dir.path(), "intruder"));
        let allowed = dir.path().join("allowed");
        let public = std::fs::read_to_string(ci.with_extension("pub")).unwrap();
        std::fs::write(&allowed, format!("ci@example.com {public}")).unwrap();
        let runner = cache(&moto, Some(&ci), &allowed);
        let writer = cache(&moto, Some(&intruder), &allowed);
        runner
            .runtime
            .block_on(runner.s3.create_bucket().bucket("layers").send())
            .unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        std::fs::write(layer.join("base.json"), r#"{"id":"a"}"#).unwrap();
        let reporter = Reporter::new(true);
        runner.upload(Layer::Base, "a", &layer, &reporter).unwrap();
        let fetched = |id: &str| {
            let into = tempfile::tempdir_in(dir.path()).unwrap();
            let outcome = runner.fetch(Layer::Base, id, into.path()).unwrap();
            (outcome, into)
        };
        let (outcome, into) = fetched("a");
        assert!(
            matches!(outcome, Fetched::Unpacked),
            "the runner's own layer"
        );
        assert!(into.path().join("base.json").is_file());

        // The signed object of `a` copied, metadata and all, to id `b`: its statement names `a`.
        runner
            .runtime
            .block_on(
                runner
                    .s3
                    .copy_object()
                    .bucket("layers")
                    .copy_source(format!("layers/{}", runner.key(Layer::Base, "a")))
                    .key(runner.key(Layer::Base, "b"))
                    .send(),
            )
            .unwrap();
        let (outcome, into) = fetched("b");
        assert!(
            matches!(&outcome, Fetched::Untrusted { reason, .. } if reason.contains("does not match")),
            "a signature of another id"
        );
        assert_eq!(
            std::fs::read_dir(into.path()).unwrap().count(),
            0,
            "nothing unpacked"
        );
        let gone = runner.runtime.block_on(
            runner
                .s3
                .head_object()
                .bucket("layers")
                .key(runner.key(Layer::Base, "b"))
                .send(),
        );
        assert!(gone.is_err(), "the impostor object is deleted");

        // Other bytes with their own digest: unsigned, then signed by a key not trusted.
        std::fs::write(layer.join("base.json"), r#"{"id":"c","evil":true}"#).unwrap();
        let unsigned = cache(&moto, None, &allowed);
        unsigned
            .upload(Layer::Base, "c", &layer, &reporter)
            .unwrap();
        assert!(
            !runner.has(Layer::Base, "c").unwrap(),
            "a runner without a key stores nothing"
        );
        let packed = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        let digest = pack(&layer, packed.as_file()).unwrap();
        let key = runner.key(Layer::Base, "c");
        runner
            .runtime
            .block_on(
                put_request(&runner.s3, "layers", &key, &digest)
                    .body(std::fs::read(packed.path()).unwrap().into())
                    .send(),
            )
            .unwrap();
        writer.upload(Layer::Base, "d", &layer, &reporter).unwrap();
        for id in ["c", "d"] {
            assert!(
                !runner.has(Layer::Base, id).unwrap(),
                "{id}: plan does not count it"
            );
        }
        for (id, why) in [("c", "no signature"), ("d", "not in")] {
            let (outcome, into) = fetched(id);
            assert!(
                matches!(&outcome, Fetched::Untrusted { reason, .. } if reason.contains(why)),
                "{id}: refused because of {why}"
            );
            assert_eq!(std::fs::read_dir(into.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn the_same_layer_packs_into_the_same_bytes_whatever_its_times_modes_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        // A file with a hole in `a`, the same bytes written out in full in `b`.
        let sparse = File::create(a.join("disk.qcow2")).unwrap();
        sparse.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&sparse, b"data", 5 << 20).unwrap();
        let mut full = vec![0u8; 8 << 20];
        full[5 << 20..(5 << 20) + 4].copy_from_slice(b"data");
        std::fs::write(b.join("disk.qcow2"), &full).unwrap();
        std::fs::write(a.join("base.json"), "{}").unwrap();
        std::fs::write(b.join("base.json"), "{}").unwrap();
        let touched = std::process::Command::new("touch")
            .args(["-d", "2001-02-03"])
            .arg(b.join("base.json"))
            .status()
            .unwrap();
        assert!(touched.success());
        let digest = |d: &Path| pack(d, &tempfile::tempfile().unwrap()).unwrap();
        assert_eq!(digest(&a), digest(&b));
        std::fs::write(b.join("base.json"), "{ }").unwrap();
        assert_ne!(digest(&a), digest(&b), "a changed byte changes the digest");
    }

    #[tokio::test]
    async fn a_layer_upload_is_conditional_and_carries_its_digest() {
        // What S3 enforces is in the request: moto does not check it atomically, so the
        // request itself is asserted here.
        let (http, rx) = aws_smithy_http_client::test_util::capture_request(None);
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
            .endpoint_url("http://127.0.0.1:9")
            .force_path_style(true)
            .http_client(http)
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(conf);
        let _ = put_request(&s3, "layers", "ci/base/abc.tar.zst", "d1g35t")
            .body(ByteStream::from_static(b"layer"))
            .send()
            .await;
        let req = rx.expect_request();
        assert!(
            req.uri().contains("/layers/ci/base/abc.tar.zst"),
            "{}",
            req.uri()
        );
        assert_eq!(req.headers().get("if-none-match"), Some("*"));
        assert_eq!(req.headers().get("x-amz-meta-sha256"), Some("d1g35t"));
    }
}
