//! Feedback for people and for CI: with `--json`, one JSON object per line on stdout; otherwise
//! readable lines on stderr, with a progress spinner on a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every kind of line `--json` prints, named in one style (snake_case). The names and the
/// fields documented in the README are imgforge's interface for CI: a new kind may be added,
/// none is renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The build's layer ids.
    Ids,
    /// A step of the command starts.
    Phase,
    /// The base layer was found in the cache.
    BaseCached,
    /// The build's HTTP server serves the answer file.
    HttpServer,
    /// The installer fetched its answer file (as it happens).
    AnswerFileFetched,
    /// The installer powered off; carries the HTTP server's request log.
    Installed,
    /// An artifact was written.
    Artifact,
    /// An artifact's bytes matched the build's digests.
    ArtifactChecked,
    /// A check passed, with the guest's evidence.
    CheckPassed,
    /// The build is already in the output directory and intact.
    Cached,
    /// The build in the output directory is not intact and is built again.
    OutputDamaged,
    /// The final manifest of a build (a result line).
    Manifest,
    /// The base layer of `build --base-only` (a result line).
    Base,
    /// A registered image of `build --register` (a result line).
    Registered,
    /// `verify` passed (a result line).
    Verified,
    /// The command failed (last line).
    Error,
    /// A definition is valid.
    Valid,
    /// A definition is invalid.
    Invalid,
    /// One fact of `imgforge doctor`.
    Doctor,
    /// An EBS snapshot upload started.
    SnapshotStarted,
    /// An upload finished.
    Uploaded,
    /// An image of this build already exists and is reused.
    ImageReused,
    /// The image was registered.
    ImageRegistered,
    /// The image is being copied to another region.
    ImageCopied,
    /// Another region already holds this build.
    ImageCopyReused,
    /// Rotate's plan.
    Plan,
    /// An instance is left alone, with the reason.
    Skip,
    /// Nothing to rotate.
    Noop,
    /// A replacement was launched.
    Launch,
    /// Replacements are in flight.
    Waiting,
    /// A replacement launched by an earlier run is taken up again.
    Resume,
    /// An instance was replaced.
    Replaced,
    /// An action failed.
    Failed,
    /// Something worth a look that does not stop the command.
    Warning,
    /// An Auto Scaling group grows to launch replacements.
    AsgSurge,
    /// An Auto Scaling group's instance refresh.
    AsgRefresh,
    /// The command's last line: what it did and its API calls.
    Summary,
    /// `prune` keeps an image, with the reasons.
    Keep,
    /// `prune` removes (or would remove) an image.
    Remove,
    /// `prune` removed an image.
    Removed,
    /// `imgforge plan`: each definition's ids and which layers exist (a result line).
    BuildPlan,
    /// The last line of a build of several definitions: each one's id, time and result.
    BuildSummary,
    /// `register --launch-template` made a new default launch template version.
    LaunchTemplateVersion,
    /// The base layer came from the remote layer cache.
    BaseDownloaded,
    /// The base layer was stored in the remote layer cache.
    BaseUploaded,
    /// The bake layer came from the remote layer cache: nothing was baked.
    BakeDownloaded,
    /// The bake layer was stored in the remote layer cache.
    BakeUploaded,
    /// `imgforge diff`: what differs between two builds (a result line).
    Diff,
    /// A build's manifest and `SHA256SUMS` were signed.
    Signed,
    /// A build's signatures were checked against the allowed signers.
    SignatureChecked,
    /// `imgforge cache gc`: what was removed from the local cache (a result line).
    CacheGc,
    /// `imgforge lock`: a definition's lock file was written (or left as it was).
    Locked,
    /// `imgforge outdated`: the image's packages the archive has newer versions of.
    Outdated,
    /// A new base was patched from a cached one, or the patch was refused and it was built cold.
    BasePatch,
}

impl Event {
    /// Every kind, in the order the README lists them.
    pub const ALL: [Event; 54] = [
        Event::Ids,
        Event::Phase,
        Event::BaseCached,
        Event::HttpServer,
        Event::AnswerFileFetched,
        Event::Installed,
        Event::Artifact,
        Event::ArtifactChecked,
        Event::CheckPassed,
        Event::Cached,
        Event::OutputDamaged,
        Event::Manifest,
        Event::Base,
        Event::Registered,
        Event::Verified,
        Event::Error,
        Event::Valid,
        Event::Invalid,
        Event::Doctor,
        Event::SnapshotStarted,
        Event::Uploaded,
        Event::ImageReused,
        Event::ImageRegistered,
        Event::ImageCopied,
        Event::ImageCopyReused,
        Event::Plan,
        Event::Skip,
        Event::Noop,
        Event::Launch,
        Event::Waiting,
        Event::Resume,
        Event::Replaced,
        Event::Failed,
        Event::Warning,
        Event::AsgSurge,
        Event::AsgRefresh,
        Event::Summary,
        Event::Keep,
        Event::Remove,
        Event::Removed,
        Event::BuildPlan,
        Event::BuildSummary,
        Event::LaunchTemplateVersion,
        Event::BaseDownloaded,
        Event::BaseUploaded,
        Event::BakeDownloaded,
        Event::BakeUploaded,
        Event::Diff,
        Event::Signed,
        Event::SignatureChecked,
        Event::CacheGc,
        Event::Locked,
        Event::Outdated,
        Event::BasePatch,
    ];

    /// The value of the `event` field.
    pub fn name(self) -> &'static str {
        match self {
            Event::Ids => "ids",
            Event::Phase => "phase",
            Event::BaseCached => "base_cached",
            Event::HttpServer => "http_server",
            Event::AnswerFileFetched => "answer_file_fetched",
            Event::Installed => "installed",
            Event::Artifact => "artifact",
            Event::ArtifactChecked => "artifact_checked",
            Event::CheckPassed => "check_passed",
            Event::Cached => "cached",
            Event::OutputDamaged => "output_damaged",
            Event::Manifest => "manifest",
            Event::Base => "base",
            Event::Registered => "registered",
            Event::Verified => "verified",
            Event::Error => "error",
            Event::Valid => "valid",
            Event::Invalid => "invalid",
            Event::Doctor => "doctor",
            Event::SnapshotStarted => "snapshot_started",
            Event::Uploaded => "uploaded",
            Event::ImageReused => "image_reused",
            Event::ImageRegistered => "image_registered",
            Event::ImageCopied => "image_copied",
            Event::ImageCopyReused => "image_copy_reused",
            Event::Plan => "plan",
            Event::Skip => "skip",
            Event::Noop => "noop",
            Event::Launch => "launch",
            Event::Waiting => "waiting",
            Event::Resume => "resume",
            Event::Replaced => "replaced",
            Event::Failed => "failed",
            Event::Warning => "warning",
            Event::AsgSurge => "asg_surge",
            Event::AsgRefresh => "asg_refresh",
            Event::Summary => "summary",
            Event::Keep => "keep",
            Event::Remove => "remove",
            Event::Removed => "removed",
            Event::BuildPlan => "build_plan",
            Event::BuildSummary => "build_summary",
            Event::LaunchTemplateVersion => "launch_template_version",
            Event::BaseDownloaded => "base_downloaded",
            Event::BaseUploaded => "base_uploaded",
            Event::BakeDownloaded => "bake_downloaded",
            Event::BakeUploaded => "bake_uploaded",
            Event::Diff => "diff",
            Event::Signed => "signed",
            Event::SignatureChecked => "signature_checked",
            Event::CacheGc => "cache_gc",
            Event::Locked => "locked",
            Event::Outdated => "outdated",
            Event::BasePatch => "base_patch",
        }
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

    /// Reports an event: `kind` names it, `message` is for people, `fields` for machines.
    pub fn event(&self, kind: Event, message: &str, fields: Value) {
        if self.json {
            let mut obj = json!({
                "event": kind.name(),
                "message": message,
                "elapsed_s": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            });
            if let (Some(o), Value::Object(extra)) = (obj.as_object_mut(), fields) {
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
        self.event(
            Event::Phase,
            &format!("==> {name}"),
            json!({ "phase": name }),
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

    /// Prints a final result: JSON value on stdout in JSON mode, else `human` on stdout.
    pub fn result(&self, human: &str, value: &Value) {
        self.finish();
        // A closed stdout (a reader that went away) is not worth a panic.
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(out, "{value}")
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
