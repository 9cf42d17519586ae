//! Feedback for people and for CI: with `--json`, one JSON object per line on stdout; otherwise
//! readable lines on stderr, with a progress spinner on a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Declares [`Event`] from one list of kinds, each with its doc and its `--json` name, and
/// derives [`Event::ALL`] and [`Event::name`] from it.
macro_rules! events {
    ($($(#[doc = $doc:literal])* $kind:ident => $name:literal,)*) => {
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
        }
    };
}

events! {
    /// The build's layer ids.
    Ids => "ids",
    /// A step of the command starts.
    Phase => "phase",
    /// The base layer was found in the cache.
    BaseCached => "base_cached",
    /// The build's HTTP server serves the answer file.
    HttpServer => "http_server",
    /// The installer fetched its answer file (as it happens).
    AnswerFileFetched => "answer_file_fetched",
    /// The installer powered off; carries the HTTP server's request log.
    Installed => "installed",
    /// An artifact was written.
    Artifact => "artifact",
    /// An artifact's bytes matched the build's digests.
    ArtifactChecked => "artifact_checked",
    /// A check passed, with the guest's evidence.
    CheckPassed => "check_passed",
    /// The build is already in the output directory and intact.
    Cached => "cached",
    /// The build in the output directory is not intact and is built again.
    OutputDamaged => "output_damaged",
    /// The final manifest of a build (a result line).
    Manifest => "manifest",
    /// The base layer of `build --base-only` (a result line).
    Base => "base",
    /// A registered image of `build --register` (a result line).
    Registered => "registered",
    /// `verify` passed (a result line).
    Verified => "verified",
    /// The command failed (last line).
    Error => "error",
    /// A definition is valid.
    Valid => "valid",
    /// A definition is invalid.
    Invalid => "invalid",
    /// One fact of `imgforge doctor`.
    Doctor => "doctor",
    /// An EBS snapshot upload started.
    SnapshotStarted => "snapshot_started",
    /// An upload finished.
    Uploaded => "uploaded",
    /// An image of this build already exists and is reused.
    ImageReused => "image_reused",
    /// The image was registered.
    ImageRegistered => "image_registered",
    /// The image is being copied to another region.
    ImageCopied => "image_copied",
    /// Another region already holds this build.
    ImageCopyReused => "image_copy_reused",
    /// Rotate's plan.
    Plan => "plan",
    /// An instance is left alone, with the reason.
    Skip => "skip",
    /// Nothing to rotate.
    Noop => "noop",
    /// A replacement was launched.
    Launch => "launch",
    /// Replacements are in flight.
    Waiting => "waiting",
    /// A replacement launched by an earlier run is taken up again.
    Resume => "resume",
    /// An instance was replaced.
    Replaced => "replaced",
    /// An action failed.
    Failed => "failed",
    /// Something worth a look that does not stop the command.
    Warning => "warning",
    /// An Auto Scaling group grows to launch replacements.
    AsgSurge => "asg_surge",
    /// An Auto Scaling group's instance refresh.
    AsgRefresh => "asg_refresh",
    /// The command's last line: what it did and its API calls.
    Summary => "summary",
    /// `prune` keeps an image, with the reasons.
    Keep => "keep",
    /// `prune` removes (or would remove) an image.
    Remove => "remove",
    /// `prune` removed an image.
    Removed => "removed",
    /// `imgforge plan`: each definition's ids and which layers exist (a result line).
    BuildPlan => "build_plan",
    /// The last line of a build of several definitions: each one's id, time and result.
    BuildSummary => "build_summary",
    /// `register --launch-template` made a new default launch template version.
    LaunchTemplateVersion => "launch_template_version",
    /// The base layer came from the remote layer cache.
    BaseDownloaded => "base_downloaded",
    /// The base layer was stored in the remote layer cache.
    BaseUploaded => "base_uploaded",
    /// The bake layer came from the remote layer cache: nothing was baked.
    BakeDownloaded => "bake_downloaded",
    /// The bake layer was stored in the remote layer cache.
    BakeUploaded => "bake_uploaded",
    /// `imgforge diff`: what differs between two builds (a result line).
    Diff => "diff",
    /// A build's manifest and `SHA256SUMS` were signed.
    Signed => "signed",
    /// A build's signatures were checked against the allowed signers.
    SignatureChecked => "signature_checked",
    /// `imgforge cache gc`: what was removed from the local cache (a result line).
    CacheGc => "cache_gc",
    /// `imgforge lock`: a definition's lock file was written (or left as it was).
    Locked => "locked",
    /// `imgforge outdated`: the image's packages the archive has newer versions of.
    Outdated => "outdated",
    /// A new base was patched from a cached one, or the patch was refused and it was built cold.
    BasePatch => "base_patch",
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
