//! Detached signatures for build outputs: OpenSSH `SSHSIG` (as `ssh-keygen -Y sign`) and minisign.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use base64::{engine::general_purpose::STANDARD, Engine};
use signature::{SignatureEncoding as _, Signer as _, Verifier as _};
use ssh_key::private::{KeypairData, RsaKeypair};
use ssh_key::sha2::{Digest, Sha256, Sha512};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::events::{payload, Reporter};
use crate::manifest::Manifest;

/// The namespace of every imgforge signature (`ssh-keygen -Y sign -n imgforge`).
pub const NAMESPACE: &str = "imgforge";
const MINISIGN_PREFIX: &str = "untrusted comment:";

/// Who signed: the principals of the matching allowed-signers line (for minisign: the public
/// key's untrusted comment) and the key's fingerprint (`SHA256:...` as `ssh-keygen -l` prints
/// it; for minisign the key id in hex as the minisign tool prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// Principals field of the allowed_signers line, or the minisign public key's comment.
    pub principal: String,
    /// `SHA256:...` for SSH keys, the key id for minisign.
    pub fingerprint: String,
}

/// Why signing or verifying failed; each message names the file and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A file could not be read or written.
    #[error("cannot access {0}")]
    Io(PathBuf, #[source] io::Error),
    /// The private key is password-protected.
    #[error("{0} is encrypted; CI needs an unencrypted key (ssh-keygen -N '', minisign -W)")]
    EncryptedKey(PathBuf),
    /// The key file is not a usable OpenSSH private key or minisign key.
    #[error("{0}: unusable key: {1}")]
    BadKey(PathBuf, String),
    /// `<file>.sig` does not exist.
    #[error("signature file {0} is missing; sign the file first")]
    Missing(PathBuf),
    /// `<file>.sig` cannot be parsed.
    #[error("signature file {0} is malformed ({1}); sign the file again")]
    Malformed(PathBuf, String),
    /// The signature was made for another namespace than [`NAMESPACE`].
    #[error("signature {0} has namespace {1:?}, not {NAMESPACE:?}; sign with -n {NAMESPACE}")]
    WrongNamespace(PathBuf, String),
    /// The signing key (fingerprint `.1`) is not in the allowed list `.2`.
    #[error("{0} was signed by key {1}, which is not in {2}; add it there if it is trusted")]
    UnknownKey(PathBuf, String, PathBuf),
    /// The signing key is listed, but its options (namespaces, validity) exclude this use.
    #[error("key {1} may not sign {0}: {2}")]
    KeyNotAllowed(PathBuf, String, String),
    /// The signature does not verify over the file's current contents.
    #[error("signature does not match the contents of {0} ({1}): it changed after signing")]
    Mismatch(PathBuf, String),
    /// An allowed_signers line is malformed or uses an unsupported option.
    #[error("{0} line {1}: {2}")]
    AllowedSigners(PathBuf, usize, String),
}
use SignatureError as E;

fn now() -> u64 {
    UNIX_EPOCH.elapsed().map_or(0, |d| d.as_secs())
}

fn read(path: &Path) -> Result<String, E> {
    fs::read_to_string(path).map_err(|e| E::Io(path.into(), e))
}

/// Signs `file` with the private key at `key` (unencrypted OpenSSH private key or minisign
/// secret key, detected by content), writing `<file>.sig` atomically in the format the matching
/// tool writes. Returns the signer's fingerprint.
pub fn sign(file: &Path, key: &Path) -> anyhow::Result<String> {
    let text = read(key)?;
    let (sig, fingerprint) = if text.starts_with(MINISIGN_PREFIX) {
        sign_minisign(file, key, &text)?
    } else {
        sign_ssh(file, key, &text)?
    };
    crate::atomic::write(&sig_path(file), sig.as_bytes())?;
    Ok(fingerprint)
}

/// Signs `text` (a statement kept elsewhere than in a file, such as in tags or object
/// metadata) with `key`; returns the signature file's bytes and the signer's fingerprint.
pub fn sign_text(text: &str, key: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("statement");
    fs::write(&file, text).map_err(|e| E::Io(file.clone(), e))?;
    let fingerprint = sign(&file, key)?;
    let sig = fs::read(sig_path(&file)).map_err(|e| E::Io(sig_path(&file), e))?;
    Ok((sig, fingerprint))
}

/// Checks signature `sig` (as [`sign_text`] made it) of `text` against the keys of `allowed`.
pub fn verify_text(text: &str, sig: &[u8], allowed: &Path) -> anyhow::Result<Signer> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("statement");
    fs::write(&file, text).map_err(|e| E::Io(file.clone(), e))?;
    fs::write(sig_path(&file), sig).map_err(|e| E::Io(sig_path(&file), e))?;
    verify(&file, allowed)
}

/// Checks `<file>.sig` against `file` and the trusted keys in `allowed`: an OpenSSH
/// allowed_signers file or a minisign public key (detected by content).
pub fn verify(file: &Path, allowed: &Path) -> anyhow::Result<Signer> {
    let trusted = read(allowed)?;
    let sig_file = sig_path(file);
    let sig = match fs::read(&sig_file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(E::Missing(sig_file).into()),
        read => read.map_err(|e| E::Io(sig_file.clone(), e))?,
    };
    let malformed = |e: &dyn std::fmt::Display| E::Malformed(sig_file.clone(), e.to_string());
    let sig = String::from_utf8(sig).map_err(|_| malformed(&"not text"))?;
    if trusted.starts_with(MINISIGN_PREFIX) {
        let pk = minisign::PublicKeyBox::from_string(&trusted)
            .and_then(|b| b.into_public_key())
            .map_err(|e| E::BadKey(allowed.into(), e.to_string()))?;
        let sig = minisign::SignatureBox::from_string(&sig).map_err(|e| malformed(&e))?;
        let fingerprint = key_id(sig.keynum());
        if sig.keynum() != pk.keynum() {
            return Err(E::UnknownKey(file.into(), fingerprint, allowed.into()).into());
        }
        let data = File::open(file).map_err(|e| E::Io(file.into(), e))?;
        minisign::verify(&pk, &sig, data, true, false, true)
            .map_err(|e| E::Mismatch(file.into(), format!("minisign: {e}")))?;
        let comment = trusted.lines().next().unwrap_or_default();
        let principal = comment.trim_start_matches(MINISIGN_PREFIX).trim().into();
        return Ok(Signer {
            principal,
            fingerprint,
        });
    }
    let sig = SshSig::from_pem(sig).map_err(|e| malformed(&e))?;
    if sig.namespace() != NAMESPACE {
        return Err(E::WrongNamespace(sig_file, sig.namespace().into()).into());
    }
    let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
    let mut refusal = None;
    for (i, line) in trusted.lines().enumerate() {
        let parsed = parse_allowed(line, now());
        let parsed = parsed.map_err(|e| E::AllowedSigners(allowed.into(), i + 1, e))?;
        let Some((principal, _, why)) = parsed.filter(|e| e.1.key_data() == sig.public_key())
        else {
            continue;
        };
        if let Some(why) = why {
            refusal = Some(format!("{} line {}: {why}", allowed.display(), i + 1));
            continue;
        }
        let data = signed_data(file, sig.namespace(), sig.reserved(), sig.hash_alg())?;
        let checked = sig.public_key().verify(&data, sig.signature());
        let detail = format!("SSH signature by {fingerprint}");
        checked.map_err(|e| E::Mismatch(file.into(), format!("{detail}: {e}")))?;
        return Ok(Signer {
            principal,
            fingerprint,
        });
    }
    Err(match refusal {
        Some(reason) => E::KeyNotAllowed(file.into(), fingerprint, reason),
        None => E::UnknownKey(file.into(), fingerprint, allowed.into()),
    })?
}

fn sig_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

fn sign_ssh(file: &Path, key: &Path, text: &str) -> Result<(String, String), E> {
    let bad = |what: &str, e: ssh_key::Error| E::BadKey(key.into(), format!("{what} ({e})"));
    let sk = PrivateKey::from_openssh(text)
        .map_err(|e| bad("not an OpenSSH private key or minisign secret key", e))?;
    if sk.is_encrypted() {
        return Err(E::EncryptedKey(key.into()));
    }
    let data = signed_data(file, NAMESPACE, &[], HashAlg::Sha512)?;
    let sig = match sk.key_data() {
        KeypairData::Rsa(rsa) => rsa_sign(rsa, &data),
        other => other.try_sign(&data).map_err(Into::into),
    };
    let pem = sig
        .and_then(|sig| SshSig::new(sk.public_key().into(), NAMESPACE, HashAlg::Sha512, sig))
        .and_then(|sig| sig.to_pem(LineEnding::LF))
        .map_err(|e| bad("cannot sign with this key", e))?;
    Ok((pem, sk.fingerprint(HashAlg::Sha256).to_string()))
}

/// `rsa-sha2-512`, as ssh-keygen signs with RSA keys. ssh-key 0.6.7 passes the primes (p, p)
/// to the rsa crate, which refuses them (RustCrypto/SSH#217), so the key is built here.
fn rsa_sign(key: &RsaKeypair, data: &[u8]) -> ssh_key::Result<ssh_key::Signature> {
    let (public, private) = (&key.public, &key.private);
    let parts = [&public.n, &public.e, &private.d, &private.p, &private.q];
    let [n, e, d, p, q] = parts.map(rsa::BigUint::try_from);
    let key = rsa::RsaPrivateKey::from_components(n?, e?, d?, vec![p?, q?])?;
    let sig = rsa::pkcs1v15::SigningKey::<Sha512>::new(key).try_sign(data)?;
    ssh_key::Signature::new(ssh_key::Algorithm::new("rsa-sha2-512")?, sig.to_vec())
}

fn sign_minisign(file: &Path, key: &Path, text: &str) -> Result<(String, String), E> {
    let bad = |e: &dyn std::fmt::Display| E::BadKey(key.into(), e.to_string());
    let raw = text.lines().nth(1).map(|l| STANDARD.decode(l.trim()));
    let raw = raw.and_then(Result::ok).filter(|r| r.len() > 4);
    let raw = raw.ok_or_else(|| bad(&"not a minisign secret key"))?;
    if raw[2..4] != [0, 0] {
        return Err(E::EncryptedKey(key.into()));
    }
    // Not `into_unencrypted_secret_key`: minisign -W leaves the checksum zero, which it refuses.
    // `sign` below checks the signature against the public half of the key instead.
    let sk = minisign::SecretKey::from_bytes(&raw).map_err(|e| bad(&e))?;
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| bad(&e))?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let trusted = format!("timestamp:{}\tfile:{name}\thashed", now());
    let data = File::open(file).map_err(|e| E::Io(file.into(), e))?;
    let untrusted = Some("signature from minisign secret key");
    let sig = minisign::sign(Some(&pk), &sk, data, Some(&trusted), untrusted);
    let sig = sig.map_err(|e| match e.kind() {
        minisign::ErrorKind::Io => E::Io(file.into(), io::Error::other(e.to_string())),
        _ => bad(&e),
    })?;
    Ok((sig.into_string(), key_id(pk.keynum())))
}

/// The SSHSIG "signed data" blob (PROTOCOL.sshsig) over `file`, hashed as a stream.
fn signed_data(file: &Path, ns: &str, reserved: &[u8], alg: HashAlg) -> Result<Vec<u8>, E> {
    let hash = match alg {
        HashAlg::Sha256 => digest::<Sha256>(file),
        _ => digest::<Sha512>(file),
    };
    let hash = hash.map_err(|e| E::Io(file.into(), e))?;
    let mut out = b"SSHSIG".to_vec();
    let alg = alg.as_str();
    for field in [ns.as_bytes(), reserved, alg.as_bytes(), &hash] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    Ok(out)
}

fn digest<D: Digest>(file: &Path) -> io::Result<Vec<u8>> {
    let (mut f, mut hasher, mut buf) = (File::open(file)?, D::new(), vec![0; 1 << 16]);
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(hasher.finalize().to_vec()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// A minisign key id as the minisign tool prints it (`%lX`: upper-case hex, not zero-padded).
fn key_id(keynum: &[u8]) -> String {
    let id = u64::from_le_bytes(keynum.try_into().unwrap_or_default());
    format!("{id:X}")
}

/// Parses one allowed_signers line, `principals [options] keytype base64 [comment]`, into the
/// principals, the key and why its options refuse imgforge signatures now; `None` if blank or `#`.
type Allowed = (String, PublicKey, Option<String>);
fn parse_allowed(line: &str, now: u64) -> Result<Option<Allowed>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (principals, rest) = split_unquoted(line, char::is_whitespace);
    let (mut opts, key) = match PublicKey::from_openssh(rest) {
        Ok(key) => ("", key),
        Err(_) => {
            let (opts, rest) = split_unquoted(rest, char::is_whitespace);
            let key = PublicKey::from_openssh(rest).map_err(|e| format!("bad public key ({e})"))?;
            (opts, key)
        }
    };
    let mut refusal = None;
    while !opts.is_empty() {
        let (opt, tail) = split_unquoted(opts, |c| c == ',');
        opts = tail;
        let (name, value) = match opt.split_once('=') {
            Some((name, value)) => (name, Some(value.trim_matches('"'))),
            None => (opt, None),
        };
        let why = match (name.to_ascii_lowercase().as_str(), value) {
            ("cert-authority", None) => return Err("cert-authority is not supported".into()),
            ("namespaces", Some(v)) if !pattern_list_matches(v, NAMESPACE) => "excludes imgforge",
            ("valid-after", Some(v)) if parse_time(v)? > now => "is in the future",
            ("valid-before", Some(v)) if parse_time(v)? < now => "has passed",
            ("namespaces" | "valid-after" | "valid-before", Some(_)) => continue,
            _ => return Err(format!("unsupported option {opt:?}")),
        };
        refusal = Some(format!("{opt} {why}"));
    }
    Ok(Some((principals.trim_matches('"').into(), key, refusal)))
}

/// Splits `s` at the first `sep` character outside double quotes.
fn split_unquoted(s: &str, sep: impl Fn(char) -> bool) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && sep(c) {
            return (&s[..i], s[i + c.len_utf8()..].trim_start());
        }
    }
    (s, "")
}

/// Parses `YYYYMMDD[HHMM[SS]]Z` (UTC) to Unix seconds; local times are refused.
fn parse_time(v: &str) -> Result<u64, String> {
    let err = || format!("unsupported time {v:?}: write it in UTC as YYYYMMDD[HHMM[SS]]Z");
    let d = v
        .strip_suffix(['Z', 'z'])
        .filter(|d| matches!(d.len(), 8 | 12 | 14) && d.bytes().all(|b| b.is_ascii_digit()));
    let d = d.ok_or_else(err)?;
    let n = |r: std::ops::Range<usize>| d.get(r).map_or(0, |s| s.parse::<i64>().unwrap_or(0));
    let (y, m, day) = (n(0..4), n(4..6), n(6..8));
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(err());
    }
    let y = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y.div_euclid(400), y.rem_euclid(400));
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days * 86_400 + n(8..10) * 3600 + n(10..12) * 60 + n(12..14)).map_err(|_| err())
}

/// OpenSSH `match_pattern_list`: `*`/`?` globs, `!` negates and wins.
fn pattern_list_matches(list: &str, s: &str) -> bool {
    let mut matched = false;
    for p in list.split(',').map(str::trim) {
        match p.strip_prefix('!') {
            Some(neg) if glob(neg.as_bytes(), s.as_bytes()) => return false,
            Some(_) => {}
            None => matched |= glob(p.as_bytes(), s.as_bytes()),
        }
    }
    matched
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.split_first(), s.split_first()) {
        (None, _) => s.is_empty(),
        (Some((b'*', rest)), _) => glob(rest, s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some((&c, rest)), Some((&d, tail))) => (c == b'?' || c == d) && glob(rest, tail),
        _ => false,
    }
}

/// The files a build's signature covers: the manifest and `SHA256SUMS`, which names every
/// artifact and document by its sha256.
fn signed_files(manifest_path: &Path) -> [PathBuf; 2] {
    let dir = match manifest_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    [
        manifest_path.to_path_buf(),
        dir.join(crate::manifest::SUMS_FILE_NAME),
    ]
}

/// Signs a build with `key`: `manifest.json.sig` and `SHA256SUMS.sig` beside them. The build
/// must be intact first (every recorded file present, of its size, listed with its digest), so
/// a signature never vouches for a damaged build. Returns the key's fingerprint.
pub fn sign_build(manifest_path: &Path, key: &Path, reporter: &Reporter) -> anyhow::Result<String> {
    let manifest = Manifest::load(manifest_path)?;
    manifest.check_all(manifest_path)?;
    let files = signed_files(manifest_path);
    let mut fingerprint = String::new();
    for file in &files {
        fingerprint = sign(file, key)?;
    }
    reporter.emit(
        &format!("signed {} ({fingerprint})", manifest_path.display()),
        &payload::Signed {
            manifest: manifest_path.to_path_buf(),
            files: files.to_vec(),
            fingerprint: fingerprint.clone(),
        },
    );
    Ok(fingerprint)
}

/// Checks a build's signatures against the keys `allowed` trusts: the manifest and
/// `SHA256SUMS`, both signed by the same allowed key. The digests are the caller's next step.
pub fn check_build(
    manifest_path: &Path,
    allowed: &Path,
    reporter: &Reporter,
) -> anyhow::Result<Signer> {
    let [manifest, sums] = signed_files(manifest_path);
    let signer = verify(&manifest, allowed)?;
    let sums_signer = verify(&sums, allowed)?;
    if sums_signer.fingerprint != signer.fingerprint {
        anyhow::bail!(
            "{} is signed by {} but {} by {}: sign the build again with one key (`imgforge sign`)",
            manifest.display(),
            signer.fingerprint,
            sums.display(),
            sums_signer.fingerprint
        );
    }
    reporter.emit(
        &format!(
            "    signed by {} ({}), an allowed signer",
            signer.principal, signer.fingerprint
        ),
        &payload::SignatureChecked {
            manifest: manifest_path.to_path_buf(),
            principal: signer.principal.clone(),
            fingerprint: signer.fingerprint.clone(),
        },
    );
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Output, Stdio};

    /// Runs a tool (openssh-client's ssh-keygen or minisign) in `dir`.
    fn run(dir: &Path, cmd: &str, args: &[&str], stdin: Option<&Path>) -> Output {
        let input = stdin.map_or(Stdio::null(), |p| File::open(p).unwrap().into());
        let mut command = Command::new(cmd);
        command.args(args).current_dir(dir).stdin(input);
        command
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}; apt-get install openssh-client minisign"))
    }

    fn ok(out: Output) -> String {
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout.into_owned()
    }

    fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> (SignatureError, String) {
        let e = r.unwrap_err();
        let msg = format!("{e:#}");
        (e.downcast().unwrap(), msg)
    }

    /// A temp dir holding `disk.img`, larger than one read buffer.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        fs::write(
            &file,
            (0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        (dir, file)
    }

    /// Generates an unencrypted key. ssh-key 0.6.7 cannot load ECDSA keys whose private scalar
    /// has a leading zero byte (half of P-521 keys, 1/256 of the others; RustCrypto/SSH#350),
    /// so those are generated again.
    fn ssh_key(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, String) {
        let base = ["-q", "-N", "", "-C", "ci@example.com", "-f", name];
        let (key, pub_file) = (dir.join(name), dir.join(format!("{name}.pub")));
        for _ in 0..30 {
            let _ = (fs::remove_file(&key), fs::remove_file(&pub_file));
            ok(run(dir, "ssh-keygen", &[&base[..], args].concat(), None));
            if PrivateKey::read_openssh_file(&key).is_ok() {
                break;
            }
        }
        (
            key,
            fs::read_to_string(pub_file).unwrap().trim().to_string(),
        )
    }

    fn fingerprint(dir: &Path, name: &str) -> String {
        let out = ok(run(
            dir,
            "ssh-keygen",
            &["-lf", &format!("{name}.pub")],
            None,
        ));
        out.split_whitespace().nth(1).unwrap().to_string()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        fs::write(dir.join(name), text).unwrap();
        dir.join(name)
    }

    fn flip_byte(file: &Path) {
        let mut bytes = fs::read(file).unwrap();
        bytes[100_000] ^= 1;
        fs::write(file, bytes).unwrap();
    }

    fn ssh_keygen_verify(dir: &Path, allowed: &Path, file: &Path) -> Output {
        let sig = sig_path(file);
        let args = [
            "-Y",
            "verify",
            "-f",
            allowed.to_str().unwrap(),
            "-I",
            "ci@example.com",
        ];
        run(
            dir,
            "ssh-keygen",
            &[&args[..], &["-n", NAMESPACE, "-s", sig.to_str().unwrap()]].concat(),
            Some(file),
        )
    }

    fn ssh_keygen_sign(dir: &Path, key: &Path, file: &Path, namespace: &str) {
        let _ = fs::remove_file(sig_path(file));
        let args = [
            "-Y",
            "sign",
            "-f",
            key.to_str().unwrap(),
            "-n",
            namespace,
            file.to_str().unwrap(),
        ];
        ok(run(dir, "ssh-keygen", &args, None));
    }

    #[test]
    fn ssh_signatures_interoperate_with_ssh_keygen() {
        let (dir, file) = setup();
        let d = dir.path();
        let types: [&[&str]; 5] = [
            &["-t", "ed25519"],
            &["-t", "rsa", "-b", "3072"],
            &["-t", "ecdsa", "-b", "256"],
            &["-t", "ecdsa", "-b", "384"],
            &["-t", "ecdsa", "-b", "521"],
        ];
        for (n, args) in types.iter().enumerate() {
            let name = format!("k{n}");
            let (key, pub_key) = ssh_key(d, &name, args);
            let fp = sign(&file, &key).unwrap();
            assert_eq!(fp, fingerprint(d, &name), "{args:?}");
            assert!(fp.starts_with("SHA256:"));
            let line = format!(
                "# CI\n\n\"ci@example.com\" namespaces=\"git,imgforge\" {pub_key} a comment\n"
            );
            let allowed = write(d, "allowed_signers", &line);
            ok(ssh_keygen_verify(d, &allowed, &file));
            let principal = "ci@example.com".to_string();
            let expected = Signer {
                principal,
                fingerprint: fp,
            };
            assert_eq!(verify(&file, &allowed).unwrap(), expected, "{args:?}");

            ssh_keygen_sign(d, &key, &file, NAMESPACE);
            assert_eq!(verify(&file, &allowed).unwrap(), expected, "{args:?}");
        }
    }

    #[test]
    fn ssh_verification_refusals() {
        let (dir, file) = setup();
        let d = dir.path();
        let (key, pub_key) = ssh_key(d, "k", &["-t", "ed25519"]);
        let allowed = write(d, "allowed", &format!("ci@example.com {pub_key}\n"));

        let (e, msg) = err(verify(&file, &allowed));
        assert!(matches!(e, E::Missing(_)), "{msg}");
        assert!(msg.contains("disk.img.sig is missing"), "{msg}");

        fs::write(sig_path(&file), "-----BEGIN SSH SIGNATURE-----\nAAAA\n").unwrap();
        let (e, msg) = err(verify(&file, &allowed));
        assert!(matches!(e, E::Malformed(..)), "{msg}");

        sign(&file, &key).unwrap();
        flip_byte(&file);
        let (e, msg) = err(verify(&file, &allowed));
        assert!(matches!(e, E::Mismatch(..)), "{msg}");
        assert!(
            msg.contains("disk.img") && msg.contains("changed after signing"),
            "{msg}"
        );
        assert!(!ssh_keygen_verify(d, &allowed, &file).status.success());

        let (other, _) = ssh_key(d, "other", &["-t", "ed25519"]);
        sign(&file, &other).unwrap();
        let (e, msg) = err(verify(&file, &allowed));
        assert!(matches!(e, E::UnknownKey(..)), "{msg}");
        assert!(msg.contains(&fingerprint(d, "other")), "{msg}");

        ssh_keygen_sign(d, &key, &file, "git");
        let (e, msg) = err(verify(&file, &allowed));
        assert!(
            matches!(e, E::WrongNamespace(_, ref ns) if ns == "git"),
            "{msg}"
        );

        sign(&file, &key).unwrap();
        for (opts, allow) in [
            ("namespaces=\"git\"", false),
            ("namespaces=\"img*\"", true),
            ("namespaces=\"*,!imgforge\"", false),
            ("valid-before=\"20200101Z\"", false),
            ("valid-after=\"20990101Z\"", false),
            (
                "valid-after=\"20200101Z\",valid-before=\"20990101120000Z\"",
                true,
            ),
        ] {
            let restricted = write(
                d,
                "restricted",
                &format!("ci@example.com {opts} {pub_key}\n"),
            );
            assert_eq!(
                ssh_keygen_verify(d, &restricted, &file).status.success(),
                allow,
                "{opts}"
            );
            match verify(&file, &restricted) {
                Ok(_) => assert!(allow, "{opts}"),
                Err(e) => {
                    let (e, msg) = err::<()>(Err(e));
                    assert!(!allow && matches!(e, E::KeyNotAllowed(..)), "{opts}: {msg}");
                    assert!(msg.contains("restricted line 1"), "{msg}");
                }
            }
        }

        for (opts, wanted) in [
            ("cert-authority", "cert-authority is not supported"),
            ("valid-before=\"20990101\"", "write it in UTC"),
            ("no-touch-required", "unsupported option"),
        ] {
            let bad = write(
                d,
                "bad",
                &format!("# ok\nci@example.com {opts} {pub_key}\n"),
            );
            let (e, msg) = err(verify(&file, &bad));
            assert!(
                matches!(e, E::AllowedSigners(_, 2, _)) && msg.contains(wanted),
                "{msg}"
            );
        }
    }

    #[test]
    fn encrypted_and_foreign_keys_are_refused() {
        let (dir, file) = setup();
        let d = dir.path();
        ok(run(
            d,
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "pw", "-f", "enc"],
            None,
        ));
        let (e, msg) = err(sign(&file, &d.join("enc")));
        assert!(
            matches!(e, E::EncryptedKey(_)) && msg.contains("enc is encrypted"),
            "{msg}"
        );
        let pw = write(d, "pw", "pw\npw\n");
        ok(run(
            d,
            "minisign",
            &["-G", "-p", "mpub", "-s", "msec"],
            Some(&pw),
        ));
        let (e, msg) = err(sign(&file, &d.join("msec")));
        assert!(
            matches!(e, E::EncryptedKey(_)) && msg.contains("msec"),
            "{msg}"
        );
        minisign_keys(d, "pub", "sec");
        let mut sec = fs::read_to_string(d.join("sec")).unwrap();
        let at = sec.find('\n').unwrap() + 100;
        let c = if &sec[at..=at] == "A" { "B" } else { "A" };
        sec.replace_range(at..=at, c);
        let (e, msg) = err(sign(&file, &write(d, "corrupt", &sec)));
        assert!(
            matches!(e, E::BadKey(..)) && msg.contains("corrupt"),
            "{msg}"
        );
        let (e, msg) = err(sign(&file, &write(d, "junk", "hello\n")));
        assert!(matches!(e, E::BadKey(..)) && msg.contains("junk"), "{msg}");
        assert!(!sig_path(&file).exists());
    }

    fn minisign_keys(dir: &Path, p: &str, s: &str) -> String {
        ok(run(dir, "minisign", &["-G", "-W", "-p", p, "-s", s], None));
        let text = fs::read_to_string(dir.join(p)).unwrap();
        text.lines()
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn minisign_signatures_interoperate_with_minisign() {
        let (dir, file) = setup();
        let d = dir.path();
        let id = minisign_keys(d, "pub", "sec");
        let (sig, path) = (sig_path(&file), file.to_str().unwrap());
        assert_eq!(sign(&file, &d.join("sec")).unwrap(), id);
        let tool_verify = ["-V", "-p", "pub", "-m", path, "-x", sig.to_str().unwrap()];
        assert!(ok(run(d, "minisign", &tool_verify, None)).contains("file:disk.img\thashed"));
        let principal = format!("minisign public key {id}");
        let expected = Signer {
            principal,
            fingerprint: id.clone(),
        };
        assert_eq!(verify(&file, &d.join("pub")).unwrap(), expected);

        for legacy in [&[][..], &["-l"]] {
            let args = ["-S", "-s", "sec", "-m", path, "-x", sig.to_str().unwrap()];
            ok(run(d, "minisign", &[&args[..], legacy].concat(), None));
            assert_eq!(
                verify(&file, &d.join("pub")).unwrap(),
                expected,
                "{legacy:?}"
            );
        }

        minisign_keys(d, "pub2", "sec2");
        let (e, msg) = err(verify(&file, &d.join("pub2")));
        assert!(
            matches!(e, E::UnknownKey(_, ref fp, _) if *fp == id),
            "{msg}"
        );

        flip_byte(&file);
        let (e, msg) = err(verify(&file, &d.join("pub")));
        assert!(matches!(e, E::Mismatch(..)), "{msg}");
        sign(&file, &d.join("sec")).unwrap();
        flip_byte(&file);
        let (e, msg) = err(verify(&file, &d.join("pub")));
        assert!(matches!(e, E::Mismatch(..)), "{msg}");

        fs::remove_file(&sig).unwrap();
        let (e, msg) = err(verify(&file, &d.join("pub")));
        assert!(matches!(e, E::Missing(_)), "{msg}");
    }

    #[test]
    fn times_and_patterns() {
        assert_eq!(parse_time("19700101Z"), Ok(0));
        assert_eq!(parse_time("20240229Z"), Ok(1_709_164_800));
        assert_eq!(parse_time("20000301123456Z"), Ok(951_914_096));
        assert!(parse_time("20241301Z").is_err());
        assert_eq!(
            key_id(&[0xc3, 9, 0x58, 0x1b, 0x34, 0x10, 0x5a, 0x01]),
            "15A10341B5809C3"
        );
        assert!(pattern_list_matches("git,imgforge", NAMESPACE));
        assert!(pattern_list_matches("img?orge", NAMESPACE));
        assert!(!pattern_list_matches("imgforge*x,git", NAMESPACE));
        assert!(!pattern_list_matches("*,!img*", NAMESPACE));
    }
}
