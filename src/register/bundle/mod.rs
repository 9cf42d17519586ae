//! Eucalyptus / ec2-ami-tools image bundles (manifest version 2007-10-10).
//!
//! Bundling: the image as the single member of a tar stream (SHA-1 of that stream goes in the
//! manifest) → gzip → AES-128-CBC with a random key and IV (PKCS#7 padding) → parts of 10 MiB,
//! `<prefix>.part.NN`, each with its SHA-1. The manifest carries the key and IV as hex text,
//! encrypted with RSA PKCS#1 v1.5 under the cloud's and the user's certificates, and is signed
//! with RSA PKCS#1 v1.5 SHA-1 by the user's private key over the serialized
//! `<machine_configuration>` element followed by the `<image>` element.
//!
//! [`unbundle`] reverses it and checks every part digest, the tar digest and the signature.

use anyhow::{anyhow, bail, Context, Result};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use quick_xml::events::Event;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::{Pkcs1v15Encrypt, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use x509_cert::der::{DecodePem, Encode};

mod streams;

use streams::{
    CbcReader, CbcWriter, HashReader, HashWriter, PartReader, PartWriter, ProgressReader,
};

/// Size of a bundle part (as euca2ools and ec2-ami-tools write them).
pub const PART_SIZE: u64 = 10 * 1024 * 1024;
/// The manifest format version.
pub const MANIFEST_VERSION: &str = "2007-10-10";
const AES_BLOCK: usize = 16;

/// Reads the RSA public key of an X.509 certificate in PEM form.
pub fn load_certificate(path: &Path) -> Result<RsaPublicKey> {
    let pem = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the certificate", path.display()))?;
    let cert = x509_cert::Certificate::from_pem(&pem).map_err(|e| {
        anyhow!(
            "{}: not a PEM X.509 certificate ({e}); expected `-----BEGIN CERTIFICATE-----`, \
             as `euca-get-credentials` or `openssl req -x509` write it",
            path.display()
        )
    })?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| anyhow!("{}: cannot encode its public key: {e}", path.display()))?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| {
        anyhow!(
            "{}: the certificate's key is not an RSA key ({e}); bundles need RSA",
            path.display()
        )
    })
}

/// Reads an RSA private key in PEM form (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
pub fn load_private_key(path: &Path) -> Result<RsaPrivateKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the private key", path.display()))?;
    RsaPrivateKey::from_pkcs1_pem(&pem)
        .or_else(|_| RsaPrivateKey::from_pkcs8_pem(&pem))
        .map_err(|_| {
            anyhow!(
                "{}: not an unencrypted RSA private key in PEM form; expected \
                 `-----BEGIN RSA PRIVATE KEY-----` or `-----BEGIN PRIVATE KEY-----` \
                 (decrypt it first with `openssl pkey -in KEY -out KEY.pem`)",
                path.display()
            )
        })
}

/// The keys a bundle is made with.
pub struct BundleKeys {
    /// The cloud's public key (its certificate), which the cloud decrypts the bundle with.
    pub cloud: RsaPublicKey,
    /// The user's public key (their certificate).
    pub user: RsaPublicKey,
    /// The user's private key, which signs the manifest.
    pub private_key: RsaPrivateKey,
}

impl BundleKeys {
    /// Loads the three PEM files and checks that the private key belongs to the user's
    /// certificate.
    pub fn load(cloud_cert: &Path, user_cert: &Path, private_key: &Path) -> Result<BundleKeys> {
        let keys = BundleKeys {
            cloud: load_certificate(cloud_cert)?,
            user: load_certificate(user_cert)?,
            private_key: load_private_key(private_key)?,
        };
        if keys.private_key.to_public_key() != keys.user {
            bail!(
                "{}: this private key does not belong to the certificate {}; pass the key the \
                 certificate was issued for",
                private_key.display(),
                user_cert.display()
            );
        }
        Ok(keys)
    }
}

/// What the manifest says about the image.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// Image name (`<image><name>`).
    pub name: String,
    /// Account id of the bundling user (`<image><user>`).
    pub user: String,
    /// Architecture (`x86_64`).
    pub arch: String,
    /// File name prefix of the manifest and parts.
    pub prefix: String,
    /// The sha256 the image was checked to have: bundling hashes what it reads and fails,
    /// before anything is uploaded, when it differs.
    pub image_sha256: Option<String>,
}

/// One encrypted part of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// File name (`<prefix>.part.NN`).
    pub filename: String,
    /// SHA-1 of the part, hex.
    pub sha1: String,
}

/// A bundle written to a directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The manifest file (`<prefix>.manifest.xml`).
    pub manifest: PathBuf,
    /// The part files, in order.
    pub parts: Vec<PathBuf>,
    /// Total size of the encrypted parts.
    pub bundled_size: u64,
}

/// Bundles `image` into `dir`; `progress` gets the number of image bytes read so far.
pub fn create(
    image: &Path,
    dir: &Path,
    spec: &BundleSpec,
    keys: &BundleKeys,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Bundle> {
    let key: [u8; 16] = rand::random();
    let iv: [u8; 16] = rand::random();
    let written = write_parts(image, dir, spec, &key, &iv, progress)?;
    let manifest_text = manifest_text(spec, keys, &written, &key, &iv)?;
    let manifest = dir.join(format!("{}.manifest.xml", spec.prefix));
    std::fs::write(&manifest, manifest_text)
        .with_context(|| format!("cannot write {}", manifest.display()))?;
    Ok(Bundle {
        manifest,
        parts: written
            .parts
            .parts
            .iter()
            .map(|p| dir.join(&p.filename))
            .collect(),
        bundled_size: written.parts.total,
    })
}

/// The encrypted parts of a bundle, and what the manifest says of them.
struct Written {
    parts: PartWriter,
    image_size: u64,
    /// SHA-1 of the tar stream, before compression and encryption.
    tar_sha1: String,
}

/// The image as a tar member, gzipped, encrypted with AES-128-CBC and split into parts in
/// `dir`.
fn write_parts(
    image: &Path,
    dir: &Path,
    spec: &BundleSpec,
    key: &[u8; 16],
    iv: &[u8; 16],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Written> {
    let file =
        File::open(image).with_context(|| format!("{}: cannot open the image", image.display()))?;
    let image_size = file.metadata()?.len();
    let parts = PartWriter::new(dir, &spec.prefix);
    let cbc = CbcWriter::new(parts, key, iv);
    let gz = GzEncoder::new(cbc, flate2::Compression::fast());
    let hashing = HashWriter::new(gz);
    let mut tar = tar::Builder::new(hashing);
    let mut header = tar::Header::new_gnu();
    header.set_size(image_size);
    header.set_mode(0o644);
    header.set_mtime(0);
    let member = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.img".into());
    let mut reader = ProgressReader {
        inner: BufReader::with_capacity(1 << 20, file),
        done: 0,
        progress,
        sha256: Sha256::new(),
    };
    tar.append_data(&mut header, &member, &mut reader)
        .with_context(|| format!("cannot bundle {}", image.display()))?;
    let read = hex::encode(reader.sha256.finalize());
    if let Some(expected) = spec.image_sha256.as_ref().filter(|e| **e != read) {
        bail!(
            "{}: the bytes bundled have sha256 {read}, not {expected} as checked before: the \
             image changed while it was being bundled; nothing uploaded",
            image.display()
        );
    }
    let hashing = tar.into_inner()?;
    let tar_sha1 = hex::encode(hashing.hasher.finalize());
    let parts = hashing.inner.finish()?.finish()?.finish()?;
    Ok(Written {
        parts,
        image_size,
        tar_sha1,
    })
}

/// The signed manifest: the machine configuration, the image with its digests and the key and
/// IV encrypted for the cloud and for the user, signed with the user's private key.
fn manifest_text(
    spec: &BundleSpec,
    keys: &BundleKeys,
    written: &Written,
    key: &[u8; 16],
    iv: &[u8; 16],
) -> Result<String> {
    let mut rng = rand::thread_rng();
    let mut encrypt = |pk: &RsaPublicKey, text: &[u8]| -> Result<String> {
        Ok(hex::encode(pk.encrypt(&mut rng, Pkcs1v15Encrypt, text)?))
    };
    let (key_hex, iv_hex) = (hex::encode(key), hex::encode(iv));
    let ec2_key = encrypt(&keys.cloud, key_hex.as_bytes())?;
    let user_key = encrypt(&keys.user, key_hex.as_bytes())?;
    let ec2_iv = encrypt(&keys.cloud, iv_hex.as_bytes())?;
    let user_iv = encrypt(&keys.user, iv_hex.as_bytes())?;

    let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
    let machine = format!(
        "<machine_configuration><architecture>{}</architecture><block_device_mapping>\
         <mapping><virtual>ami</virtual><device>sda1</device></mapping>\
         <mapping><virtual>root</virtual><device>/dev/sda1</device></mapping>\
         </block_device_mapping></machine_configuration>",
        esc(&spec.arch)
    );
    let Written {
        parts,
        image_size,
        tar_sha1,
    } = written;
    let bundled_size = parts.total;
    let mut image_xml = format!(
        "<image><name>{}</name><user>{}</user><type>machine</type>\
         <digest algorithm=\"SHA1\">{tar_sha1}</digest><size>{image_size}</size>\
         <bundled_size>{bundled_size}</bundled_size>\
         <ec2_encrypted_key algorithm=\"AES-128-CBC\">{ec2_key}</ec2_encrypted_key>\
         <user_encrypted_key algorithm=\"AES-128-CBC\">{user_key}</user_encrypted_key>\
         <ec2_encrypted_iv>{ec2_iv}</ec2_encrypted_iv>\
         <user_encrypted_iv>{user_iv}</user_encrypted_iv><parts count=\"{}\">",
        esc(&spec.name),
        esc(&spec.user),
        parts.parts.len()
    );
    for (i, p) in parts.parts.iter().enumerate() {
        image_xml.push_str(&format!(
            "<part index=\"{i}\"><filename>{}</filename><digest algorithm=\"SHA1\">{}</digest></part>",
            esc(&p.filename),
            p.sha1
        ));
    }
    image_xml.push_str("</parts></image>");
    let signed = format!("{machine}{image_xml}");
    let signature = keys
        .private_key
        .sign(
            Pkcs1v15Sign::new::<Sha1>(),
            &Sha1::digest(signed.as_bytes()),
        )
        .context("cannot sign the bundle manifest with the private key")?;
    Ok(format!(
        "<?xml version=\"1.0\" ?>\n<manifest><version>{MANIFEST_VERSION}</version>\
         <bundler><name>imgforge</name><version>{}</version><release>0</release></bundler>\
         {signed}<signature>{}</signature></manifest>\n",
        env!("CARGO_PKG_VERSION"),
        hex::encode(signature)
    ))
}

/// What [`unbundle`] found.
#[derive(Debug, Clone)]
pub struct Unbundled {
    /// Image name from the manifest.
    pub name: String,
    /// Bytes written.
    pub size: u64,
    /// Number of parts read.
    pub parts: usize,
}

/// Restores the image of the bundle whose manifest is `manifest_path` (parts next to it) into
/// `output`, with the user's `private_key`. Every part digest, the tar digest and the manifest
/// signature are checked; on any mismatch nothing is left at `output`.
pub fn unbundle(
    manifest_path: &Path,
    private_key: &RsaPrivateKey,
    output: &Path,
) -> Result<Unbundled> {
    let text = std::fs::read_to_string(manifest_path).with_context(|| {
        format!(
            "{}: cannot read the bundle manifest",
            manifest_path.display()
        )
    })?;
    let m = ParsedManifest::parse(&text)
        .with_context(|| format!("{}: not a bundle manifest", manifest_path.display()))?;

    verify_signature(&m, private_key, manifest_path)?;
    let (key, iv) = key_and_iv(&m, private_key, manifest_path)?;

    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let parts = PartReader {
        dir: dir.to_path_buf(),
        parts: m.parts.clone(),
        next: 0,
        buf: Vec::new(),
        pos: 0,
    };
    let cbc = CbcReader::new(parts, &key, &iv);
    let hashing = HashReader {
        inner: GzDecoder::new(cbc),
        hasher: Sha1::new(),
    };
    let out_dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".imgforge-unbundle-")
        .tempfile_in(out_dir)
        .with_context(|| format!("cannot write in {}", out_dir.display()))?;
    let mut archive = tar::Archive::new(hashing);
    let size = {
        let mut entries = archive
            .entries()
            .context("the bundle's tar stream is unreadable")?;
        let mut entry = entries
            .next()
            .ok_or_else(|| anyhow!("the bundle's tar stream holds no image"))?
            .context("the bundle's tar stream is unreadable")?;
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let n = io::copy(&mut entry, &mut w).context("cannot restore the image")?;
        w.flush()?;
        n
    };
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).context("cannot read the end of the tar stream")?;
    let digest = hex::encode(rest.hasher.finalize());
    if !digest.eq_ignore_ascii_case(&m.digest) {
        bail!(
            "{}: the tar stream's SHA-1 is {digest}, the manifest says {}: the bundle is corrupt",
            manifest_path.display(),
            m.digest
        );
    }
    if size != m.size {
        bail!(
            "{}: the image has {size} bytes, the manifest says {}",
            manifest_path.display(),
            m.size
        );
    }
    tmp.as_file().sync_all()?;
    tmp.persist(output)
        .with_context(|| format!("cannot move the image into place at {}", output.display()))?;
    Ok(Unbundled {
        name: m.name,
        size,
        parts: m.parts.len(),
    })
}

/// Checks the manifest's signature with the public half of `private_key`.
fn verify_signature(
    m: &ParsedManifest,
    private_key: &RsaPrivateKey,
    manifest_path: &Path,
) -> Result<()> {
    let signature = hex::decode(&m.signature)
        .map_err(|_| anyhow!("{}: <signature> is not hex", manifest_path.display()))?;
    private_key
        .to_public_key()
        .verify(
            Pkcs1v15Sign::new::<Sha1>(),
            &Sha1::digest(m.signed.as_bytes()),
            &signature,
        )
        .map_err(|_| {
            anyhow!(
                "{}: the manifest's signature does not verify with this private key: the \
                 manifest was altered, or it was signed by another user's key",
                manifest_path.display()
            )
        })
}

/// The bundle's AES key and IV, decrypted with `private_key` (the user's or the cloud's).
fn key_and_iv(
    m: &ParsedManifest,
    private_key: &RsaPrivateKey,
    manifest_path: &Path,
) -> Result<([u8; 16], [u8; 16])> {
    let decrypt = |candidates: &[&Option<String>], what: &str| -> Result<[u8; 16]> {
        for c in candidates.iter().filter_map(|c| c.as_ref()) {
            let Ok(ct) = hex::decode(c) else { continue };
            let Ok(plain) = private_key.decrypt(Pkcs1v15Encrypt, &ct) else {
                continue;
            };
            if let Ok(bytes) = hex::decode(plain) {
                if let Ok(arr) = <[u8; 16]>::try_from(bytes.as_slice()) {
                    return Ok(arr);
                }
            }
        }
        bail!(
            "{}: cannot decrypt the bundle's {what} with this private key; pass the key of the \
             user (or cloud) the bundle was made for",
            manifest_path.display()
        )
    };
    Ok((
        decrypt(&[&m.user_key, &m.ec2_key], "key")?,
        decrypt(&[&m.user_iv, &m.ec2_iv], "IV")?,
    ))
}

/// The parts in index order, refused unless they are numbered 0.. without gaps, each with a
/// plain file name and a digest, as many as `<parts count>` says.
fn checked_parts(mut indexed: Vec<(usize, Part)>, count: Option<usize>) -> Result<Vec<Part>> {
    indexed.sort_by_key(|(i, _)| *i);
    for (n, (i, p)) in indexed.iter().enumerate() {
        if *i != n || p.filename.is_empty() || p.sha1.is_empty() {
            bail!("<part index=\"{n}\"> is missing or lacks a filename or digest");
        }
        if p.filename.contains('/') || p.filename.contains("..") {
            bail!("<part> file name `{}` is not a plain file name", p.filename);
        }
    }
    if count != Some(indexed.len()) {
        bail!(
            "<parts count> says {count:?} but {} parts are listed",
            indexed.len()
        );
    }
    Ok(indexed.into_iter().map(|(_, p)| p).collect())
}

/// The fields of a bundle manifest that unbundling needs.
#[derive(Debug, Default)]
struct ParsedManifest {
    name: String,
    digest: String,
    size: u64,
    ec2_key: Option<String>,
    user_key: Option<String>,
    ec2_iv: Option<String>,
    user_iv: Option<String>,
    parts: Vec<Part>,
    signature: String,
    /// The exact text of `<machine_configuration>…</machine_configuration><image>…</image>`.
    signed: String,
}

impl ParsedManifest {
    /// Takes the text `v` of the element at `path` (`manifest/image/name`, …); `part` is the
    /// `<part>` being read, if any.
    fn set(&mut self, path: &str, v: String, part: Option<&mut Part>) -> Result<()> {
        match path {
            "manifest/image/name" => self.name = v,
            "manifest/image/digest" => self.digest = v,
            "manifest/image/size" => {
                self.size = v.parse().context("<image><size> is not a number")?
            }
            "manifest/image/ec2_encrypted_key" => self.ec2_key = Some(v),
            "manifest/image/user_encrypted_key" => self.user_key = Some(v),
            "manifest/image/ec2_encrypted_iv" => self.ec2_iv = Some(v),
            "manifest/image/user_encrypted_iv" => self.user_iv = Some(v),
            "manifest/signature" => self.signature = v,
            "manifest/image/parts/part/filename" => {
                if let Some(p) = part {
                    p.filename = v;
                }
            }
            "manifest/image/parts/part/digest" => {
                if let Some(p) = part {
                    p.sha1 = v;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn parse(text: &str) -> Result<ParsedManifest> {
        let mut m = ParsedManifest {
            signed: format!(
                "{}{}",
                element_text(text, "machine_configuration")?,
                element_text(text, "image")?
            ),
            ..Default::default()
        };
        let mut reader = quick_xml::Reader::from_str(text);
        reader.config_mut().trim_text(true);
        let mut path: Vec<String> = Vec::new();
        let mut part_count = None;
        let mut part_index = 0usize;
        let mut indexed: Vec<(usize, Part)> = Vec::new();
        loop {
            match reader.read_event()? {
                Event::Start(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let attr = |key: &str| -> Option<String> {
                        e.try_get_attribute(key)
                            .ok()
                            .flatten()
                            .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
                    };
                    if name == "parts" {
                        part_count = attr("count").and_then(|c| c.parse::<usize>().ok());
                    }
                    if name == "part" {
                        part_index = attr("index")
                            .and_then(|c| c.parse().ok())
                            .ok_or_else(|| anyhow!("a <part> has no numeric index"))?;
                        indexed.push((
                            part_index,
                            Part {
                                filename: String::new(),
                                sha1: String::new(),
                            },
                        ));
                    }
                    path.push(name);
                }
                Event::End(_) => {
                    path.pop();
                }
                Event::Text(t) => {
                    let part = indexed
                        .iter_mut()
                        .find(|(i, _)| *i == part_index)
                        .map(|(_, p)| p);
                    m.set(&path.join("/"), t.unescape()?.into_owned(), part)?;
                }
                Event::Eof => break,
                _ => {}
            }
        }
        m.parts = checked_parts(indexed, part_count)?;
        if m.digest.is_empty() || m.signature.is_empty() {
            bail!("<image><digest> or <signature> is missing");
        }
        Ok(m)
    }
}

/// The text of the first `<tag>…</tag>` element in `text`.
fn element_text<'a>(text: &'a str, tag: &str) -> Result<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text
        .find(&open)
        .ok_or_else(|| anyhow!("no <{tag}> element"))?;
    let end = text[start..]
        .find(&close)
        .ok_or_else(|| anyhow!("<{tag}> is not closed"))?;
    Ok(&text[start..start + end + close.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parsing_rejects_missing_parts() {
        let text =
            "<manifest><machine_configuration></machine_configuration><image><digest>ab</digest>\
                    <parts count=\"2\"><part index=\"0\"><filename>a.part.00</filename>\
                    <digest>00</digest></part></parts></image><signature>00</signature></manifest>";
        let e = ParsedManifest::parse(text).unwrap_err().to_string();
        assert!(e.contains("count"), "{e}");
    }
}
