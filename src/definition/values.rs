//! The scalar values of a definition, parsed into types: digests, password hashes, guest
//! paths, durations, sizes and image names.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// A lowercase sha256 digest in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sha256Hex(pub String);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256Hex(s.to_ascii_lowercase()))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not a sha256 digest: expected 64 hex digits, as printed by `sha256sum FILE`"
            )))
        }
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A crypt(3) password hash (`$6$…`, `$y$…`, `$5$…`, `$2b$…`), or `!` for a locked password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PasswordHash(pub String);

impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let is_hash = ["$6$", "$5$", "$y$", "$2b$", "$2y$", "$gy$"]
            .iter()
            .any(|p| s.starts_with(p) && s.len() > 20)
            || s == "!"
            || s == "*";
        if is_hash {
            Ok(PasswordHash(s))
        } else {
            Err(serde::de::Error::custom(
                "this looks like a plain-text password; only crypt(3) hashes are accepted. \
                 Make one with `mkpasswd -m sha-512` (Debian package whois) or \
                 `openssl passwd -6`, and paste the `$6$...` string here",
            ))
        }
    }
}

/// An absolute path inside the image, without `..`: a destination that cannot land outside
/// the place it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GuestPath(String);

impl<'de> Deserialize<'de> for GuestPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let path = Path::new(&s);
        if !path.is_absolute() {
            return Err(serde::de::Error::custom(format!(
                "`{s}` is a relative path; a destination in the image must be absolute, like \"/srv/{s}\""
            )));
        }
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(serde::de::Error::custom(format!(
                "`{s}` contains `..`; name the destination directly, without parent-directory steps"
            )));
        }
        Ok(GuestPath(s))
    }
}

impl std::ops::Deref for GuestPath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GuestPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration written the humantime way (`90s`, `5m`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration ({e}); write it like \"90s\", \"5m\" or \"1h\""
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in bytes written with a unit (`4G`, `4GiB`, `512M`); units are powers of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `4G`, `4GiB`, `512M`, `1T` or a plain number of bytes.
    pub fn parse(s: &str) -> Option<ByteSize> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
            "" => 0,
            "K" | "k" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return None,
        };
        n.checked_mul(1u64 << shift).map(ByteSize)
    }

    /// Size in MiB, rounded down.
    pub fn mib(self) -> u64 {
        self.0 >> 20
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ByteSize::parse(&s).filter(|b| b.0 > 0).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not a size; write it like \"4G\", \"4GiB\" or \"2048M\""
            ))
        })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}M", self.mib()))
    }
}

/// An image name: lowercase letters, digits and dashes, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageName(pub String);

impl<'de> Deserialize<'de> for ImageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if ok {
            Ok(ImageName(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not an image name: use lowercase letters, digits, dots and dashes, \
                 starting with a letter (at most 64), like \"debian-12-web\""
            )))
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
