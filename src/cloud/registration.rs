//! The signed registration statement: what binds a registered image to the build it holds,
//! so that `rotate --require-signature` and `register`'s reuse check a signature, not a tag.
//!
//! `register --sign KEY` signs, once the image id is known, the text
//!
//! ```text
//! imgforge registration v1
//! image ami-0123456789abcdef0
//! build <build id>
//! sha256 <sha256 of the uploaded artifact>
//! ```
//!
//! with the same keys and formats as builds (OpenSSH `ssh-keygen -Y sign -n imgforge`, or
//! minisign), and stores the signature file, base64-encoded, in the image's tags
//! `imgforge:registration-0`, `-1`, … (256 characters each, the tag value's limit), beside
//! `imgforge:build-id` and `imgforge:artifact-sha256`. A checker rebuilds the text from the
//! id of the image the tags sit on: tags copied onto another image name the wrong image and
//! fail, and whoever may tag images but does not hold an allowed key cannot make new ones.

use crate::cloud::tags;
use crate::signature::Signer;
use anyhow::{bail, Context, Result};
use aws_sdk_ec2::types::Tag;
use base64::Engine;
use std::path::Path;

/// Prefix of the tags that carry the signature, in order.
pub const SIGNATURE_TAG: &str = "imgforge:registration-";
/// The tag holding the uploaded artifact's sha256.
pub const ARTIFACT_TAG: &str = "imgforge:artifact-sha256";
/// The longest value a tag may have.
const TAG_VALUE_MAX: usize = 256;

/// What a registration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The registered image.
    pub image_id: String,
    /// The build it holds.
    pub build_id: String,
    /// sha256 of the artifact uploaded into it.
    pub artifact_sha256: String,
}

impl Statement {
    /// The signed text.
    pub fn text(&self) -> String {
        format!(
            "imgforge registration v1\nimage {}\nbuild {}\nsha256 {}\n",
            self.image_id, self.build_id, self.artifact_sha256
        )
    }

    /// Signs the statement with `key`; returns the tags that carry it and the signer's
    /// fingerprint.
    pub fn sign(&self, key: &Path) -> Result<(Vec<(String, String)>, String)> {
        let (sig, fingerprint) = crate::signature::sign_text(&self.text(), key)?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(sig);
        let mut tags = vec![
            (tags::BUILD_ID.to_string(), self.build_id.clone()),
            (ARTIFACT_TAG.to_string(), self.artifact_sha256.clone()),
        ];
        for (i, chunk) in encoded.as_bytes().chunks(TAG_VALUE_MAX).enumerate() {
            tags.push((
                format!("{SIGNATURE_TAG}{i}"),
                String::from_utf8_lossy(chunk).into_owned(),
            ));
        }
        Ok((tags, fingerprint))
    }

    /// Checks the statement carried by `image_tags` for `image_id` against the keys of
    /// `allowed`; returns it and its signer. Fails naming the image: no statement, a
    /// signature by a key not allowed, or one made for another image or build.
    pub fn verify(
        image_id: &str,
        image_tags: &[Tag],
        allowed: &Path,
    ) -> Result<(Statement, Signer)> {
        let value = |key: &str| {
            image_tags
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
                .map(str::to_string)
        };
        let mut chunks: Vec<(usize, String)> = image_tags
            .iter()
            .filter_map(|t| {
                let n = t.key()?.strip_prefix(SIGNATURE_TAG)?.parse().ok()?;
                Some((n, t.value()?.to_string()))
            })
            .collect();
        chunks.sort();
        let (Some(build_id), Some(artifact_sha256), false) = (
            value(tags::BUILD_ID),
            value(ARTIFACT_TAG),
            chunks.is_empty(),
        ) else {
            bail!(
                "image {image_id} carries no signed registration ({SIGNATURE_TAG}N tags): \
                 register the build with `imgforge register --sign KEY`"
            );
        };
        if chunks.iter().enumerate().any(|(i, (n, _))| i != *n) {
            bail!("image {image_id}: its {SIGNATURE_TAG}N tags are not numbered 0, 1, 2, …");
        }
        let encoded: String = chunks.into_iter().map(|(_, c)| c).collect();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .with_context(|| {
                format!("image {image_id}: its registration signature is not base64")
            })?;
        let statement = Statement {
            image_id: image_id.to_string(),
            build_id,
            artifact_sha256,
        };
        let signer =
            crate::signature::verify_text(&statement.text(), &sig, allowed).with_context(|| {
                format!(
                    "image {image_id}: its signed registration does not check out (a signature of \
                 another image or build, or by a key not allowed)"
                )
            })?;
        Ok((statement, signer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Command;

    fn tags_of(pairs: &[(String, String)]) -> Vec<Tag> {
        pairs
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }

    #[test]
    fn a_statement_checks_out_only_on_its_own_image_and_for_an_allowed_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ci");
        let other = dir.path().join("other");
        for k in [&key, &other] {
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f"])
                .arg(k)
                .run()
                .unwrap();
        }
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::write(&allowed, format!("ci@example.com {public}")).unwrap();
        let statement = Statement {
            image_id: "ami-1".into(),
            build_id: "b".repeat(64),
            artifact_sha256: "a".repeat(64),
        };
        let (pairs, fingerprint) = statement.sign(&key).unwrap();
        assert!(pairs.iter().all(|(_, v)| v.len() <= TAG_VALUE_MAX));
        let tags = tags_of(&pairs);
        let (back, signer) = Statement::verify("ami-1", &tags, &allowed).unwrap();
        assert_eq!((back, signer.fingerprint), (statement.clone(), fingerprint));
        // The same tags on another image.
        let e = format!(
            "{:#}",
            Statement::verify("ami-2", &tags, &allowed).unwrap_err()
        );
        assert!(
            e.contains("ami-2") && e.contains("does not check out"),
            "{e}"
        );
        // A changed digest tag.
        let mut changed = pairs.clone();
        changed[1].1 = "c".repeat(64);
        assert!(Statement::verify("ami-1", &tags_of(&changed), &allowed).is_err());
        // Signed by a key not allowed.
        let (forged, _) = statement.sign(&other).unwrap();
        assert!(Statement::verify("ami-1", &tags_of(&forged), &allowed).is_err());
        // No statement at all.
        let e = Statement::verify("ami-1", &tags[..2], &allowed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("carries no signed registration"), "{e}");
    }
}
