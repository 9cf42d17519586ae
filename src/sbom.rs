//! SPDX 2.3 JSON SBOM of a Debian root file tree: its dpkg packages, their declared licences
//! (from machine-readable `copyright` files), the baked-in service and the data snapshot.

use crate::apt::InstalledPackage;
use anyhow::{ensure, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What the SBOM describes besides the tree's packages.
pub struct SbomInput<'a> {
    /// Root of the image's file tree (reads usr/share/doc/*/copyright).
    pub root: &'a Path,
    /// The tree's installed packages, as dpkg records them.
    pub packages: &'a [InstalledPackage],
    /// Image name, e.g. "debian-12-web".
    pub name: &'a str,
    /// Image version, e.g. "1.0.0".
    pub version: &'a str,
    /// The build id (hex sha256): makes the documentNamespace unique and deterministic.
    pub build_id: &'a str,
    /// Creation time, RFC 3339 UTC with seconds (e.g. "2026-11-26T00:00:00Z").
    pub created: &'a str,
    /// The tool string for creationInfo.creators, e.g. "imgforge-0.1.0".
    pub tool: &'a str,
    /// The service baked in: git repository URL and commit.
    pub service: Option<(&'a str, &'a str)>,
    /// The data snapshot: where it is unpacked in the image and its digest (sha256 or git commit).
    pub data: Option<(&'a str, &'a str)>,
}

const NOASSERTION: &str = "NOASSERTION";

/// Debian short names (lowercase) whose SPDX licence or exception id is spelled differently.
const ALIASES: &[(&str, &str)] = &[
    ("expat", "MIT"),
    // Debian's "Artistic" is /usr/share/common-licenses/Artistic, the Artistic License 1.0 as
    // shipped with Perl, which SPDX lists as Artistic-1.0-Perl (not the OSI Artistic-1.0).
    ("artistic", "Artistic-1.0-Perl"),
    ("apache-2", "Apache-2.0"),
    ("openldap-2.8", "OLDAP-2.8"),
    ("bison", "Bison-exception-2.2"),
    ("bison-2.2", "Bison-exception-2.2"),
    ("gcc-runtime-3.1", "GCC-exception-3.1"),
];

/// LicenseRef id → (Debian short name, package whose copyright file gave it, the licence text).
type Refs = BTreeMap<String, (String, String, Option<String>)>;

/// The SPDX 2.3 document as JSON (deterministic: same input, same bytes).
pub fn spdx_document(input: &SbomInput) -> Result<Value> {
    let c = input.created.as_bytes();
    ensure!(
        c.len() == 20 && c[10] == b'T' && c[19] == b'Z',
        "bad created time"
    );
    let os = std::fs::read_to_string(input.root.join("etc/os-release")).unwrap_or_default();
    let distro = os.lines().find_map(|l| l.strip_prefix("VERSION_ID="));
    let distro = distro.map_or(String::new(), |v| {
        format!("&distro=debian-{}", pct(v.trim_matches('"'), ""))
    });
    let image = "SPDXRef-Image";
    let mut packages = vec![json!({
        "SPDXID": image, "name": input.name, "versionInfo": input.version,
        "primaryPackagePurpose": "OPERATING-SYSTEM", "downloadLocation": NOASSERTION,
        "filesAnalyzed": false, "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
    })];
    let mut refs = Refs::new();
    packages.extend(debian_packages(input, &distro, &mut refs)?);
    packages.extend(
        input
            .service
            .map(|(repo, commit)| service_package(repo, commit)),
    );
    packages.extend(input.data.map(|(path, digest)| data_package(path, digest)));
    packages.sort_by(|a, b| a["SPDXID"].as_str().cmp(&b["SPDXID"].as_str()));
    let rel = |from, kind, to: &Value| {
        json!({"spdxElementId": from, "relationshipType": kind,
               "relatedSpdxElement": to})
    };
    let mut relationships = vec![rel("SPDXRef-DOCUMENT", "DESCRIBES", &json!(image))];
    let contained = packages.iter().filter(|p| p["SPDXID"] != image);
    relationships.extend(contained.map(|p| rel(image, "CONTAINS", &p["SPDXID"])));
    let extracted = refs.into_iter().map(|(id, (name, pkg, text))| {
        let text = text.unwrap_or_else(|| "(no licence text in the copyright file)".into());
        let comment = format!(
            "Debian licence short name {name:?} as in usr/share/doc/{pkg}/copyright \
             (other packages may mean other terms by it)"
        );
        json!({"licenseId": id, "name": name, "extractedText": text, "comment": comment})
    });
    let doc = format!("{}-{}", input.name, input.version);
    let build = pct(input.build_id, "");
    let namespace = format!("https://spdx.org/spdxdocs/{}-{build}", pct(&doc, ""));
    Ok(json!({
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": doc, "documentNamespace": namespace,
        "creationInfo": {"created": input.created, "creators": [format!("Tool: {}", input.tool)]},
        "packages": packages, "relationships": relationships,
        "hasExtractedLicensingInfos": extracted.collect::<Vec<_>>(),
    }))
}

/// One SPDX package per installed Debian package of the image, with its purl (`distro` is
/// the purl's `&distro=` qualifier or empty) and declared licence.
fn debian_packages(input: &SbomInput, distro: &str, refs: &mut Refs) -> Result<Vec<Value>> {
    let root = input.root;
    let mut ids = BTreeSet::new();
    let mut packages = Vec::new();
    for p in input.packages {
        // Debian names are [a-z0-9+.-] and architectures [a-z0-9-]: 'P' for '+' and the '.'
        // before the architecture keep SPDXIDs unique.
        let id = format!(
            "SPDXRef-deb-{}.{}",
            p.name.replace('+', "P"),
            p.architecture
        );
        let id = sanitize(&id);
        ensure!(ids.insert(id.clone()), "duplicate package {id}");
        let copyright = root.join(format!("usr/share/doc/{}/copyright", p.name));
        let (name, arch) = (pct(&p.name, ""), pct(&p.architecture, ""));
        let purl = format!(
            "pkg:deb/debian/{name}@{}?arch={arch}{distro}",
            pct(&p.version, ":")
        );
        packages.push(json!({
            "SPDXID": id, "name": p.name, "versionInfo": p.version,
            "supplier": p.maintainer.as_deref().map_or(NOASSERTION.to_string(), organization),
            "sourceInfo": format!("built package from: {} {}", p.source, p.source_version),
            "downloadLocation": NOASSERTION, "filesAnalyzed": false,
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": declared_license(&copyright, &p.name, refs),
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": purl}],
        }));
    }
    Ok(packages)
}

/// The baked service as a package: named after its repository, versioned by its commit.
fn service_package(repo: &str, commit: &str) -> Value {
    let repo = repo.strip_prefix("git+").unwrap_or(repo);
    let trimmed = repo.trim_end_matches('/');
    let name = trimmed.rsplit(['/', ':']).next().unwrap_or(repo);
    let name = match name.strip_suffix(".git").unwrap_or(name) {
        "" | "." | ".." => "service",
        name => name,
    };
    // A repository on the build host's disk has no location SPDX can name.
    let location = match repo.contains("://") || repo.starts_with("git@") {
        true => format!("git+{repo}@{commit}"),
        false => NOASSERTION.to_string(),
    };
    json!({
        "SPDXID": "SPDXRef-Service", "name": name,
        "versionInfo": commit, "primaryPackagePurpose": "APPLICATION",
        "downloadLocation": location, "filesAnalyzed": false,
        "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
        "comment": format!("service from git repository {repo} at commit {commit}"),
    })
}

/// The data snapshot as a package: its sha256 as a checksum, or its git commit as the version.
fn data_package(path: &str, digest: &str) -> Value {
    let mut data = json!({
        "SPDXID": "SPDXRef-Data", "name": path, "downloadLocation": NOASSERTION,
        "filesAnalyzed": false, "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
        "comment": format!("data snapshot unpacked at {path}"),
    });
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        let sha = digest.to_ascii_lowercase();
        data["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha}]);
    } else {
        data["versionInfo"] = json!(digest);
    }
    data
}

/// Percent-encodes all but unreserved characters and those in `keep` (purl / URI component).
fn pct(s: &str, keep: &str) -> String {
    let ok =
        |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.as_bytes().contains(&b);
    let enc = |b: u8| {
        ok(b)
            .then(|| (b as char).to_string())
            .unwrap_or(format!("%{b:02X}"))
    };
    s.bytes().map(enc).collect()
}

/// Only letters, digits, '.' and '-' (SPDXID / LicenseRef syntax); '+' becomes "plus".
fn sanitize(s: &str) -> String {
    let s = s.replace('+', "plus");
    s.replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
        "-",
    )
}

/// "Name <email>" as the SPDX actor "Organization: Name (email)".
fn organization(maintainer: &str) -> String {
    let (name, email) = maintainer.split_once('<').unwrap_or((maintainer, ""));
    let name = name.replace(['(', ')'], "");
    match email.trim().trim_end_matches('>').trim() {
        "" => format!("Organization: {}", name.trim()),
        email => format!("Organization: {} ({email})", name.trim()),
    }
}

/// licenseDeclared from a Debian copyright file: its Files paragraphs' licences ANDed;
/// NOASSERTION if the file is absent or not machine-readable. LicenseRefs are added to `refs`.
fn declared_license(path: &Path, pkg: &str, refs: &mut Refs) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return NOASSERTION.into();
    };
    let paras = crate::apt::control_paragraphs(&String::from_utf8_lossy(&bytes));
    let format = paras
        .first()
        .and_then(|p| crate::apt::control_field(p, "format"))
        .unwrap_or("");
    if !format.contains("copyright-format/1.0") && !format.contains("dep5") {
        return NOASSERTION.into();
    }
    let (mut terms, mut unknown) = (BTreeSet::new(), Vec::new());
    for p in paras
        .iter()
        .filter(|p| crate::apt::control_field(p, "files").is_some())
    {
        let synopsis = crate::apt::control_field(p, "license")
            .and_then(|l| l.lines().next())
            .unwrap_or("")
            .trim();
        if synopsis.is_empty() {
            continue;
        }
        // Collect the distinct operands of the ANDed result.
        let e = spdx_expression(synopsis, &mut unknown);
        if e.contains(" OR ") {
            terms.insert(format!("({e})"));
        } else {
            terms.extend(e.replace(['(', ')'], "").split(" AND ").map(str::to_string));
        }
    }
    for (id, name) in unknown {
        let text = paras.iter().find_map(|p| {
            let (first, text) = crate::apt::control_field(p, "license")?.split_once('\n')?;
            let text = text.trim().to_string();
            (first.trim().eq_ignore_ascii_case(&name) && !text.is_empty()).then_some(text)
        });
        let entry = refs
            .entry(id)
            .or_insert_with(|| (name, pkg.to_string(), None));
        if entry.2.is_none() && text.is_some() {
            (entry.1, entry.2) = (pkg.to_string(), text);
        }
    }
    match terms.into_iter().collect::<Vec<_>>().join(" AND ") {
        e if e.is_empty() => NOASSERTION.into(),
        e => e,
    }
}

/// A Debian License synopsis ("GPL-2+ or Artistic", "GPL-2+ with Autoconf exception",
/// "A or B, and C") as an SPDX expression; unmappable terms become LicenseRefs, pushed to
/// `unknown` with their Debian name.
fn spdx_expression(synopsis: &str, unknown: &mut Vec<(String, String)>) -> String {
    let paren = |s: String| if s.contains(' ') { format!("({s})") } else { s };
    let mark = unknown.len();
    // Debian: an operator after a comma binds loosest, "A, and B or C" is A and (B or C).
    let mut parts = synopsis.split(',');
    let mut out = parts.next().and_then(|p| segment(p, unknown));
    for part in parts {
        let (op, rest) = part.trim().split_once(' ').unwrap_or_default();
        let op = op.to_ascii_uppercase();
        out = match (out, segment(rest, unknown)) {
            (Some(l), Some(r)) if op == "AND" || op == "OR" => {
                Some(format!("{} {op} {}", paren(l), paren(r)))
            }
            _ => None,
        };
    }
    out.unwrap_or_else(|| {
        unknown.truncate(mark);
        license_ref(synopsis, unknown)
    })
}

/// A comma-free synopsis ("A or B with X exception and C") as an SPDX expression, None if malformed
/// (Debian's format groups with commas, not parentheses).
fn segment(text: &str, unknown: &mut Vec<(String, String)>) -> Option<String> {
    if text.contains(['(', ')']) {
        return None;
    }
    let (mut out, mut words) = (String::new(), Vec::new());
    for tok in text.split_whitespace().chain([""]) {
        let op = tok.to_ascii_uppercase();
        if !matches!(op.as_str(), "AND" | "OR" | "") {
            words.push(tok);
            continue;
        }
        if words.is_empty() {
            return None;
        }
        let (licence, exception) = match words.iter().position(|w| w.eq_ignore_ascii_case("with")) {
            Some(at) => (&words[..at], Some(&words[at + 1..])),
            None => (&words[..], None),
        };
        let licence = map_license(&licence.join("-"));
        let plain = |e: &[&str]| match e.split_last() {
            Some((last, rest)) if last.eq_ignore_ascii_case("exception") => rest.join("-"),
            _ => e.join("-"),
        };
        let term = match exception.map(plain) {
            Some(e) => licence.and_then(|l| Some(format!("{l} WITH {}", map_exception(&e, &l)?))),
            None => licence,
        };
        out += &term.unwrap_or_else(|| license_ref(&words.join(" "), unknown));
        out += &if op.is_empty() { op } else { format!(" {op} ") };
        words.clear();
    }
    Some(out)
}

fn license_ref(name: &str, unknown: &mut Vec<(String, String)>) -> String {
    let id = format!(
        "LicenseRef-{}",
        sanitize(&name.split_whitespace().collect::<Vec<_>>().join("-"))
    );
    unknown.push((id.clone(), name.to_string()));
    id
}

/// Case-insensitive alias lookup in [`ALIASES`].
fn alias(name: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(name))
        .map(|(_, id)| *id)
}

/// A Debian licence short name as an SPDX licence id (GNU "+" → -or-later, else -only).
fn map_license(name: &str) -> Option<String> {
    if let Some(id) = alias(name) {
        return spdx::license_id(id).map(|_| id.to_string());
    }
    let (body, plus) = name.strip_suffix('+').map_or((name, false), |b| (b, true));
    let upper = body.to_ascii_uppercase();
    for family in ["AGPL", "LGPL", "GFDL", "GPL"] {
        let v = upper
            .strip_prefix(family)
            .unwrap_or("")
            .trim_start_matches(['-', 'V']);
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let v = if v.contains('.') {
                v.to_string()
            } else {
                format!("{v}.0")
            };
            return spdx::gnu_license_id(&format!("{family}-{v}"), plus).map(|l| l.name.into());
        }
    }
    let lic = spdx::identifiers::LICENSES
        .iter()
        .find(|l| l.name.eq_ignore_ascii_case(body))?;
    (!plus && lic.flags & spdx::flags::IS_DEPRECATED == 0).then(|| lic.name.to_string())
}

/// A Debian exception name ("Autoconf", "Linux-syscall-note") for `licence` as an SPDX id.
fn map_exception(words: &str, licence: &str) -> Option<&'static str> {
    let major = licence.chars().find(char::is_ascii_digit).unwrap_or('2');
    let (plain, versioned) = (
        format!("{words}-exception"),
        format!("{words}-exception-{major}.0"),
    );
    let candidates = [alias(words).unwrap_or(words), &plain, &versioned];
    let found = candidates.into_iter().find_map(|c| {
        let mut all = spdx::identifiers::EXCEPTIONS.iter();
        all.find(|e| e.name.eq_ignore_ascii_case(c) && e.flags & spdx::flags::IS_DEPRECATED == 0)
            .map(|e| e.name)
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// This host's installed packages.
    fn host_packages() -> Vec<InstalledPackage> {
        crate::apt::installed_packages(Path::new("/")).unwrap()
    }

    fn input<'a>(
        root: &'a Path,
        packages: &'a [InstalledPackage],
        service: Option<(&'a str, &'a str)>,
        data: Option<(&'a str, &'a str)>,
    ) -> SbomInput<'a> {
        SbomInput {
            root,
            packages,
            name: "debian-12-web",
            version: "1.0.0",
            build_id: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            created: "2026-11-26T00:00:00Z",
            tool: "imgforge-0.1.0",
            service,
            data,
        }
    }

    const SERVICE: Option<(&str, &str)> = Some((
        "https://github.com/acme/web-app.git",
        "0123456789abcdef0123456789abcdef01234567",
    ));
    const DATA_TAR: Option<(&str, &str)> = Some((
        "/srv/data",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ));
    const DATA_GIT: Option<(&str, &str)> =
        Some(("/srv/data", "89abcdef0123456789abcdef0123456789abcdef"));

    /// `dpkg-query` on this host: installed ("ii ") packages as (name, version, arch), sorted.
    fn dpkg_query() -> Vec<(String, String, String)> {
        let out = Command::new("dpkg-query")
            .args([
                "-W",
                "-f",
                "${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n",
            ])
            .output()
            .expect("dpkg-query");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut v: Vec<_> = text
            .lines()
            .filter_map(|l| l.strip_prefix("ii  "))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect();
        v.sort();
        v
    }

    /// Runs pyspdxtools (PYSPDXTOOLS, else .venv/bin/pyspdxtools of this crate) on `doc`.
    fn pyspdxtools(doc: &Value) -> (bool, String) {
        let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/pyspdxtools");
        assert!(
            Path::new(tool).exists(),
            "{tool} missing: run scripts/setup --test"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sbom.spdx.json");
        std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
        let out = Command::new(tool).arg("-i").arg(&file).output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (
            out.status.success() && !log.contains("ERROR") && !log.contains("invalid"),
            log,
        )
    }

    fn deb_packages(doc: &Value) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-deb-"))
            .map(|p| {
                let purl = p["externalRefs"][0]["referenceLocator"].as_str().unwrap();
                let arch = purl
                    .split("?arch=")
                    .nth(1)
                    .unwrap()
                    .split('&')
                    .next()
                    .unwrap();
                (
                    p["name"].as_str().unwrap().into(),
                    p["versionInfo"].as_str().unwrap().into(),
                    arch.into(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn host_packages_match_dpkg_query() {
        let expected = dpkg_query();
        assert!(expected.len() > 50);
        let got: Vec<_> = crate::apt::installed_packages(Path::new("/"))
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.version, p.architecture))
            .collect();
        assert_eq!(got, expected);
        let start = std::time::Instant::now();
        let doc = spdx_document(&input(Path::new("/"), &host_packages(), None, None)).unwrap();
        eprintln!(
            "SBOM of / with {} packages in {:?}",
            expected.len(),
            start.elapsed()
        );
        assert_eq!(deb_packages(&doc), expected);
    }

    #[test]
    fn host_document_is_valid_spdx_and_deterministic() {
        let ssh = Some(("git@github.com:acme/web-app.git", SERVICE.unwrap().1));
        for (service, data) in [(None, None), (SERVICE, DATA_TAR), (ssh, DATA_GIT)] {
            let doc =
                spdx_document(&input(Path::new("/"), &host_packages(), service, data)).unwrap();
            let (ok, log) = pyspdxtools(&doc);
            assert!(ok, "pyspdxtools rejected the document:\n{log}");
            let again =
                spdx_document(&input(Path::new("/"), &host_packages(), service, data)).unwrap();
            assert_eq!(
                serde_json::to_vec_pretty(&doc).unwrap(),
                serde_json::to_vec_pretty(&again).unwrap()
            );
        }
    }

    #[test]
    fn validator_rejects_broken_documents() {
        let doc =
            spdx_document(&input(Path::new("/"), &host_packages(), SERVICE, DATA_TAR)).unwrap();
        let mut underscore = doc.clone();
        underscore["packages"][0]["SPDXID"] = json!("SPDXRef-Bad_Id");
        let mut no_describes = doc.clone();
        no_describes["relationships"]
            .as_array_mut()
            .unwrap()
            .retain(|r| r["relationshipType"] != "DESCRIBES");
        let mut bad_licence = doc;
        bad_licence["packages"][0]["licenseDeclared"] = json!("LicenseRef-undeclared");
        for broken in [underscore, no_describes, bad_licence] {
            assert!(
                !pyspdxtools(&broken).0,
                "pyspdxtools accepted a broken document"
            );
        }
    }

    /// A fake root: multi-arch twins, a removed package, a Source with version, licences.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "var/lib/dpkg/status",
            "Package: libfoo1\nStatus: install ok installed\nArchitecture: amd64\n\
             Multi-Arch: same\nSource: foo (1:2.0-1)\nVersion: 1:2.0-1+b1\n\
             Maintainer: Foo Team (Debian) <foo@example.org>\n\
             Description: foo\n long text\n .\n more\n\n\
             Package: libfoo1\nStatus: install ok installed\nArchitecture: i386\n\
             Source: foo (1:2.0-1)\n\
             Version: 1:2.0-1+b1\nMaintainer: Foo Team <foo@example.org>\n\n\
             Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
             Package: g++\nStatus: hold ok installed\nArchitecture: amd64\nVersion: 4:12.2.0-3\n",
        );
        write(
            "usr/share/doc/libfoo1/copyright",
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
             Files: *\nCopyright: 2020 Foo\nLicense: GPL-2+ or Artistic\n\n\
             Files: a/*\nCopyright: 2020 Foo\nLicense: public-domain\n\n\
             Files: b/*\nCopyright: 2020 Foo\nLicense: Expat\n\n\
             Files: c/*\nCopyright: 2020 Foo\nLicense: Expat, and GPL-2+\n\n\
             License: public-domain\n Nobody owns this.\n .\n Really.\n",
        );
        write(
            "usr/share/doc/g++/copyright",
            "This is not machine-readable.\n",
        );
        write("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n");
        dir
    }

    #[test]
    fn fixture_document() {
        let root = fixture();
        let pkgs = crate::apt::installed_packages(root.path()).unwrap();
        let names: Vec<_> = pkgs
            .iter()
            .map(|p| format!("{}:{}", p.name, p.architecture))
            .collect();
        assert_eq!(names, ["g++:amd64", "libfoo1:amd64", "libfoo1:i386"]);
        assert_eq!(
            (pkgs[1].source.as_str(), pkgs[1].source_version.as_str()),
            ("foo", "1:2.0-1")
        );
        assert_eq!(pkgs[0].source, "g++");
        let doc = spdx_document(&input(root.path(), &pkgs, SERVICE, DATA_TAR)).unwrap();
        let (ok, log) = pyspdxtools(&doc);
        assert!(ok, "{log}");
        let by_id = |id: &str| {
            doc["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["SPDXID"] == id)
                .unwrap()
                .clone()
        };
        let foo = by_id("SPDXRef-deb-libfoo1.i386");
        assert_eq!(
            foo["licenseDeclared"],
            "(GPL-2.0-or-later OR Artistic-1.0-Perl) AND GPL-2.0-or-later \
             AND LicenseRef-public-domain AND MIT"
        );
        assert_eq!(foo["supplier"], "Organization: Foo Team (foo@example.org)");
        assert_eq!(foo["sourceInfo"], "built package from: foo 1:2.0-1");
        assert_eq!(
            foo["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libfoo1@1:2.0-1%2Bb1?arch=i386&distro=debian-12"
        );
        assert_eq!(
            by_id("SPDXRef-deb-gPP.amd64")["licenseDeclared"],
            "NOASSERTION"
        );
        assert_eq!(
            by_id("SPDXRef-deb-libfoo1.amd64")["supplier"],
            "Organization: Foo Team Debian (foo@example.org)"
        );
        assert_eq!(
            doc["hasExtractedLicensingInfos"][0]["extractedText"],
            "Nobody owns this.\n\nReally."
        );
        let service = by_id("SPDXRef-Service");
        assert_eq!(service["name"], "web-app");
        assert_eq!(
            service["downloadLocation"],
            format!("git+{}@{}", SERVICE.unwrap().0, SERVICE.unwrap().1)
        );
        assert_eq!(
            by_id("SPDXRef-Data")["checksums"][0]["checksumValue"],
            DATA_TAR.unwrap().1
        );
        assert_eq!(doc["relationships"].as_array().unwrap().len(), 1 + 5);
    }

    #[test]
    fn licence_mapping() {
        let cases = [
            ("GPL-2+", "GPL-2.0-or-later"),
            ("GPL-2", "GPL-2.0-only"),
            ("LGPL-2.1+", "LGPL-2.1-or-later"),
            ("GPLv3+", "GPL-3.0-or-later"),
            ("GPL-2.0+", "GPL-2.0-or-later"),
            ("BSD-3-clause", "BSD-3-Clause"),
            ("Expat", "MIT"),
            ("zlib", "Zlib"),
            ("Apache-2.0", "Apache-2.0"),
            (
                "GPL-1+ or Artistic",
                "GPL-1.0-or-later OR Artistic-1.0-Perl",
            ),
            ("LGPL-3+ or GPL-2+", "LGPL-3.0-or-later OR GPL-2.0-or-later"),
            (
                "GPL-2+ with Autoconf exception",
                "GPL-2.0-or-later WITH Autoconf-exception-2.0",
            ),
            (
                "GPL-3+ with autoconf exception",
                "GPL-3.0-or-later WITH Autoconf-exception-3.0",
            ),
            (
                "GPL-3+ with Bison exception",
                "GPL-3.0-or-later WITH Bison-exception-2.2",
            ),
            (
                "GPL-2 with Linux-syscall-note exception or MIT",
                "GPL-2.0-only WITH Linux-syscall-note OR MIT",
            ),
            (
                "Apache-2.0 with LLVM exception",
                "Apache-2.0 WITH LLVM-exception",
            ),
            (
                "GPL-2+ or Artistic, and BSD-3-clause",
                "(GPL-2.0-or-later OR Artistic-1.0-Perl) AND BSD-3-Clause",
            ),
            (
                "(MIT or GPL-2) and ISC",
                "LicenseRef--MIT-or-GPL-2--and-ISC",
            ),
            (
                "REGCOMP, and GPL-1+ or Artistic",
                "LicenseRef-REGCOMP AND (GPL-1.0-or-later OR Artistic-1.0-Perl)",
            ),
            ("MIT, or", "LicenseRef-MIT--or"),
            (
                "A, or B, and C",
                "(LicenseRef-A OR LicenseRef-B) AND LicenseRef-C",
            ),
            ("public-domain", "LicenseRef-public-domain"),
            (
                "FSF-unlimited and GPL-2+",
                "LicenseRef-FSF-unlimited AND GPL-2.0-or-later",
            ),
            (
                "GPL-2+ with OpenSSL exception",
                "LicenseRef-GPL-2plus-with-OpenSSL-exception",
            ),
            ("MPL-1.1+", "LicenseRef-MPL-1.1plus"),
            ("GPL-2+ or", "LicenseRef-GPL-2plus-or"),
            ("LGPLv3+_or_GPLv2+", "LicenseRef-LGPLv3plus-or-GPLv2plus"),
        ];
        for (debian, spdx) in cases {
            let mut unknown = Vec::new();
            assert_eq!(spdx_expression(debian, &mut unknown), spdx, "{debian}");
            let refs = unknown
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            assert!(spdx
                .split(['(', ')', ' '])
                .filter(|t| t.starts_with("LicenseRef-"))
                .all(|t| refs.contains(t)));
        }
    }
}
