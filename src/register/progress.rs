//! Progress of a registration's transfers, and the clean-up of a snapshot left half made.

use crate::events::{Payload, Reporter};
use aws_smithy_types::error::display::DisplayErrorContext;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Deletes a snapshot this run made, reporting (not failing) if that is impossible.
pub(crate) async fn delete_snapshot(
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
    progress: &Progress<'_>,
) {
    match ec2.delete_snapshot().snapshot_id(snapshot_id).send().await {
        Ok(_) => progress.println(&format!("deleted the incomplete snapshot {snapshot_id}")),
        Err(e) => progress.println(&format!(
            "warning: could not delete snapshot {snapshot_id}: {}; delete it by hand",
            DisplayErrorContext(e)
        )),
    }
}

/// Progress of one transfer: a bar with bytes and throughput on a terminal, events otherwise.
pub struct Progress<'a> {
    reporter: &'a Reporter,
    bar: ProgressBar,
}

impl<'a> Progress<'a> {
    /// A progress bar over `total` bytes (0: no bar).
    pub fn new(reporter: &'a Reporter, label: &str, total: u64) -> Progress<'a> {
        let visible = total > 0 && !reporter.is_json() && std::io::stderr().is_terminal();
        let bar = if visible {
            reporter.finish();
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("static template"),
            );
            b.set_prefix(label.to_string());
            b
        } else {
            ProgressBar::hidden()
        };
        Progress { reporter, bar }
    }

    /// Counts `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// A handle on the bar for a blocking thread (hidden when there is no bar).
    pub(crate) fn bar_handle(&self) -> ProgressBar {
        self.bar.clone()
    }

    /// Ends the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// A line for people, above the bar.
    pub fn println(&self, message: &str) {
        if self.bar.is_hidden() {
            self.reporter.println(message);
        } else {
            self.bar.println(message);
        }
    }

    /// An event (JSON line, or a line for people above the bar).
    pub fn emit<P: Payload>(&self, message: &str, payload: &P) {
        if self.reporter.is_json() {
            self.reporter.emit(message, payload);
        } else {
            self.println(message);
        }
    }
}
