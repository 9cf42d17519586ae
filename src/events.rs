//! Feedback for people and for CI: with `--json`, one JSON object per line on stdout; otherwise
//! readable lines on stderr, with a progress spinner on a terminal.

use crate::definition::{Check, DiskFormat, OsFamily};
use crate::httpserve::Request;
use crate::layers::LayerIds;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Declares [`Event`] and its payloads from one list: each kind with its doc, its `--json` name
/// and the fields of its payload, a struct of the same name in [`payload`]. [`Event::ALL`],
/// [`Event::name`] and [`Event::fields`] are derived from it.
macro_rules! events {
    ($(
        $(#[doc = $doc:literal])*
        $kind:ident => $name:literal { $($(#[$attr:meta])* $field:ident: $ty:ty,)* }
    )*) => {
        /// Every kind of line `--json` prints, named in one style (snake_case). The names and
        /// the fields documented in the README are imgforge's interface for CI: a new kind may
        /// be added, none is renamed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Event {
            $($(#[doc = $doc])* $kind,)*
        }

        impl Event {
            /// Every kind, in the order the README lists them.
            pub const ALL: &'static [Event] = &[$(Event::$kind,)*];

            /// The value of the `event` field.
            pub fn name(self) -> &'static str {
                match self {
                    $(Event::$kind => $name,)*
                }
            }

            /// The fields its payload puts on the line, by name; a flattened field's own
            /// fields (a manifest's, a report's) are documented with their type instead.
            pub fn fields(self) -> Vec<&'static str> {
                let fields: &[(&str, &str)] = match self {
                    $(Event::$kind => &[$((stringify!($field), stringify!($($attr)*)),)*],)*
                };
                fields
                    .iter()
                    .filter(|(_, attrs)| !attrs.contains("flatten"))
                    .map(|(field, _)| *field)
                    .collect()
            }
        }

        /// The payload of each kind of event: a struct named like its kind, whose fields are
        /// the line's beside `event`, `message` and `elapsed_s` (the README's table says what
        /// each holds). An optional field that is absent is left off the line.
        pub mod payload {
            #![allow(missing_docs)]
            use super::*;
            $(
                $(#[doc = $doc])*
                #[derive(Debug, Clone, Default, Serialize)]
                pub struct $kind {
                    $($(#[$attr])* pub $field: $ty,)*
                }

                impl Payload for $kind {
                    const EVENT: Event = Event::$kind;
                }
            )*
        }
    };
}

/// A payload of one kind of event (see [`payload`]).
pub trait Payload: Serialize {
    /// Its kind.
    const EVENT: Event;
}

events! {
    /// The build's layer ids.
    Ids => "ids" { name: String, ids: LayerIds, }
    /// A step of the command starts.
    Phase => "phase" { phase: String, }
    /// The base layer was found in the cache.
    BaseCached => "base_cached" { base: String, cached: bool, }
    /// The build's HTTP server serves the answer file.
    HttpServer => "http_server" { url: String, }
    /// The installer fetched its answer file (as it happens).
    AnswerFileFetched => "answer_file_fetched" { file: String, after_s: f64, }
    /// The installer powered off; carries the HTTP server's request log.
    Installed => "installed" { requests: Vec<Request>, }
    /// An artifact was written.
    Artifact => "artifact" { file: String, format: Option<DiskFormat>, size: u64, sha256: String, }
    /// An artifact's bytes matched the build's digests.
    ArtifactChecked => "artifact_checked" { file: String, sha256: String, }
    /// A check passed, with the guest's evidence.
    CheckPassed => "check_passed" { check: Option<Check>, evidence: String, }
    /// The build is already in the output directory and intact.
    Cached => "cached" { manifest: PathBuf, cached: bool, }
    /// The build in the output directory is not intact and is built again.
    OutputDamaged => "output_damaged" { manifest: PathBuf, problem: String, }
    /// The final manifest of a build (a result line).
    Manifest => "manifest" {
        #[serde(flatten)] manifest: Option<crate::manifest::Manifest>,
        cached: bool,
        manifest_path: PathBuf,
    }
    /// The base layer of `build --base-only` (a result line).
    Base => "base" { cached: bool, dir: PathBuf, disk: PathBuf, info: Value, }
    /// A registered image of `build --register` (a result line).
    Registered => "registered" { #[serde(flatten)] image: Value, }
    /// `verify` passed (a result line).
    Verified => "verified" { manifest: PathBuf, checks: usize, booted: bool, }
    /// The command failed (last line).
    Error => "error" { message: String, }
    /// A definition is valid.
    Valid => "valid" { file: PathBuf, valid: bool, }
    /// A definition is invalid.
    Invalid => "invalid" { file: PathBuf, valid: bool, error: String, }
    /// One fact of `imgforge doctor`.
    Doctor => "doctor" { check: String, ok: bool, detail: String, required: bool, }
    /// An EBS snapshot upload started.
    SnapshotStarted => "snapshot_started" { snapshot_id: String, volume_size_gib: i64, }
    /// An upload finished: its statistics and the route's ids (a snapshot's, an S3 object's
    /// or a bundle's).
    Uploaded => "uploaded" {
        #[serde(skip_serializing_if = "Option::is_none")] snapshot_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] blocks_sent: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")] blocks_total: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")] bucket: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] key: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] location: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] parts: Option<usize>,
        stats: Value,
    }
    /// An image of this build already exists and is reused.
    ImageReused => "image_reused" { image_id: String, build_id: String, }
    /// The image was registered.
    ImageRegistered => "image_registered" { image_id: String, build_id: String, name: String, }
    /// The image is being copied to another region.
    ImageCopied => "image_copied" { region: String, image_id: String, }
    /// Another region already holds this build.
    ImageCopyReused => "image_copy_reused" { region: String, image_id: String, }
    /// Rotate's plan.
    Plan => "plan" {
        instances: Vec<Value>,
        floor: usize,
        healthy: usize,
        max_age_s: Option<u64>,
        superseded: bool,
    }
    /// An instance is left alone, with the reason.
    Skip => "skip" { instance: String, reason: String, }
    /// Nothing to rotate.
    Noop => "noop" { instances: usize, }
    /// A replacement was launched.
    Launch => "launch" { instance: String, replacement: String, image: String, }
    /// Replacements are in flight.
    Waiting => "waiting" { in_flight: usize, queued: usize, replaced: usize, }
    /// A replacement launched by an earlier run is taken up again.
    Resume => "resume" { instance: String, replacement: String, }
    /// An instance was replaced: by its replacement, or by new members of its group.
    Replaced => "replaced" {
        instance: String,
        #[serde(skip_serializing_if = "Option::is_none")] replacement: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] healthy_after_s: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")] group: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] new_members: Option<Vec<String>>,
    }
    /// An action failed: on an instance (and its replacement) or an image.
    Failed => "failed" {
        #[serde(skip_serializing_if = "Option::is_none")] instance: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] replacement: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] image: Option<String>,
        reason: String,
    }
    /// Something worth a look that does not stop the command, with what it is about.
    Warning => "warning" {
        #[serde(skip_serializing_if = "Option::is_none")] group: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] instance: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] image: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] target: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] object: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] expected: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] actual: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] untrusted: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] layer: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] jobs: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")] asked: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")] file: Option<PathBuf>,
        #[serde(skip_serializing_if = "Option::is_none")] checks: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")] repository: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")] trusted: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")] family: Option<OsFamily>,
        #[serde(skip_serializing_if = "Option::is_none")] reason: Option<String>,
    }
    /// An Auto Scaling group grows to launch replacements.
    AsgSurge => "asg_surge" { group: String, desired: i32, }
    /// An Auto Scaling group's instance refresh.
    AsgRefresh => "asg_refresh" { group: String, refresh: String, min_healthy: i32, max_healthy: i32, }
    /// The command's last line: what it did and its API calls.
    Summary => "summary" {
        api_calls: u64,
        api_calls_by_operation: Value,
        #[serde(skip_serializing_if = "Option::is_none")] dry_run: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")] changed: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")] replaced: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")] removed: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")] failed: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")] not_started: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")] skipped: Option<usize>,
    }
    /// `prune` keeps an image, with the reasons.
    Keep => "keep" { image: String, created: String, build_id: String, reasons: Vec<String>, }
    /// `prune` removes (or would remove) an image.
    Remove => "remove" {
        image: String,
        created: String,
        build_id: String,
        snapshots: Vec<String>,
        dry_run: bool,
    }
    /// `prune` removed an image.
    Removed => "removed" { image: String, snapshots: Vec<String>, disabled: bool, }
    /// `imgforge plan`: each definition's ids and which layers exist (a result line).
    BuildPlan => "build_plan" { definitions: Value, to_build: Vec<PathBuf>, }
    /// The last line of a build of several definitions: each one's id, time and result.
    BuildSummary => "build_summary" { builds: Vec<Value>, failed: usize, }
    /// `register --launch-template` made a new default launch template version.
    LaunchTemplateVersion => "launch_template_version" { #[serde(flatten)] version: Value, }
    /// The base layer came from the remote layer cache.
    BaseDownloaded => "base_downloaded" { layer: String, id: String, }
    /// The base layer was stored in the remote layer cache.
    BaseUploaded => "base_uploaded" {
        layer: String,
        id: String,
        bytes: Option<u64>,
        sha256: Option<String>,
        already_there: bool,
    }
    /// The bake layer came from the remote layer cache: nothing was baked.
    BakeDownloaded => "bake_downloaded" { layer: String, id: String, }
    /// The bake layer was stored in the remote layer cache.
    BakeUploaded => "bake_uploaded" {
        layer: String,
        id: String,
        bytes: Option<u64>,
        sha256: Option<String>,
        already_there: bool,
    }
    /// `imgforge diff`: what differs between two builds (a result line).
    Diff => "diff" { #[serde(flatten)] difference: Value, }
    /// A build's manifest and `SHA256SUMS` were signed.
    Signed => "signed" { manifest: PathBuf, files: Vec<PathBuf>, fingerprint: String, }
    /// A build's signatures were checked against the allowed signers.
    SignatureChecked => "signature_checked" { manifest: PathBuf, principal: String, fingerprint: String, }
    /// `imgforge cache gc`: what was removed from the local cache (a result line).
    CacheGc => "cache_gc" { #[serde(flatten)] report: Value, }
    /// `imgforge lock`: a definition's lock file was written (or left as it was).
    Locked => "locked" {
        definition: PathBuf,
        lock: PathBuf,
        written: bool,
        #[serde(skip_serializing_if = "Option::is_none")] changes: Option<Option<crate::lock::Changes>>,
    }
    /// `imgforge outdated`: the image's packages the archive has newer versions of.
    Outdated => "outdated" { manifest: PathBuf, packages: Vec<crate::outdated::OutdatedPackage>, }
    /// `imgforge id`: a definition's layer ids and what they cover (a result line).
    Id => "id" {
        name: String,
        base: String,
        bake: String,
        build: String,
        service_commit: Option<String>,
        data_digest: Option<String>,
    }
    /// `imgforge unbundle`: a Eucalyptus bundle written back as its image (a result line).
    Unbundled => "unbundled" { output: PathBuf, name: String, size: u64, parts: usize, }
    /// A new base was patched from a cached one, or the patch was refused and it was built cold.
    BasePatch => "base_patch" {
        base: String,
        from: String,
        install: Vec<String>,
        remove: Vec<String>,
        outcome: String,
        reason: Option<String>,
        seconds: f64,
    }
}

/// Where a command's progress and results go.
pub struct Reporter {
    json: bool,
    started: Instant,
    spinner: Mutex<Option<ProgressBar>>,
    /// The job this reporter speaks for when several builds run at once.
    job: Option<String>,
}

impl Reporter {
    /// A reporter; `json` selects JSON lines on stdout.
    pub fn new(json: bool) -> Reporter {
        Reporter {
            json,
            started: Instant::now(),
            spinner: Mutex::new(None),
            job: None,
        }
    }

    /// A reporter for one of several builds running at once: its events carry `job`, its lines
    /// start with `[job]`, and it shows no spinner.
    pub fn for_job(&self, job: &str) -> Reporter {
        Reporter {
            json: self.json,
            started: self.started,
            spinner: Mutex::new(None),
            job: Some(job.to_string()),
        }
    }

    /// Whether output is JSON lines.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Reports an event: `message` is for people, the payload (which names its kind) for
    /// machines.
    pub fn emit<P: Payload>(&self, message: &str, payload: &P) {
        if self.json {
            let mut obj = json!({
                "event": P::EVENT.name(),
                "message": message,
                "elapsed_s": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            });
            if let (Some(o), Value::Object(extra)) = (obj.as_object_mut(), payload_fields(payload))
            {
                o.extend(extra);
            }
            if let (Some(o), Some(job)) = (obj.as_object_mut(), &self.job) {
                o.insert("job".into(), json!(job));
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{obj}");
            let _ = out.flush();
        } else {
            self.println(message);
        }
    }

    /// Prints a line for people (stderr), above any spinner; silent in JSON mode.
    pub fn println(&self, message: &str) {
        if self.json {
            return;
        }
        match (self.spinner.lock().unwrap().as_ref(), &self.job) {
            (_, Some(job)) => eprintln!("[{job}] {message}"),
            (Some(bar), None) => bar.println(message),
            (None, None) => eprintln!("{message}"),
        }
    }

    /// Starts a phase: on a terminal a spinner shows it with the elapsed time.
    pub fn phase(&self, name: &str) {
        self.emit(
            &format!("==> {name}"),
            &payload::Phase {
                phase: name.to_string(),
            },
        );
        if self.json || self.job.is_some() || !std::io::stderr().is_terminal() {
            return;
        }
        let mut slot = self.spinner.lock().unwrap();
        if let Some(old) = slot.take() {
            old.finish_and_clear();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {wide_msg}")
                .expect("static template"),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        *slot = Some(bar);
    }

    /// Updates the spinner's detail (the console's last line, bytes sent, …).
    pub fn detail(&self, text: &str) {
        if let Some(bar) = self.spinner.lock().unwrap().as_ref() {
            bar.set_message(text.to_string());
        }
    }

    /// Ends the current phase's spinner.
    pub fn finish(&self) {
        if let Some(bar) = self.spinner.lock().unwrap().take() {
            bar.finish_and_clear();
        }
    }

    /// Prints a final result: in JSON mode its line on stdout (`event` and the payload's
    /// fields), else `human` on stdout.
    pub fn result<P: Payload>(&self, human: &str, payload: &P) {
        self.finish();
        // A closed stdout (a reader that went away) is not worth a panic.
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(out, "{}", result_line(payload))
        } else {
            writeln!(out, "{human}")
        };
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The line of a result: `event` and the payload's fields.
pub fn result_line<P: Payload>(payload: &P) -> Value {
    let mut line = json!({ "event": P::EVENT.name() });
    if let (Some(o), Value::Object(fields)) = (line.as_object_mut(), payload_fields(payload)) {
        o.extend(fields);
    }
    line
}

/// The payload's fields as a JSON object.
fn payload_fields<P: Payload>(payload: &P) -> Value {
    serde_json::to_value(payload).expect("an event payload serialises")
}

/// Four columns aligned for people; the second is right-aligned (ages, dates).
pub fn table(header: [&str; 4], rows: &[[String; 4]]) -> String {
    let header = header.map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    std::iter::once(&header)
        .chain(rows)
        .map(|row| {
            format!(
                "{:<w0$}  {:>w1$}  {:<w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
