//! Feedback for people and for CI: with `--json`, one JSON object per line on stdout; otherwise
//! readable lines on stderr, with a progress spinner on a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a command's progress and results go.
pub struct Reporter {
    json: bool,
    started: Instant,
    spinner: Mutex<Option<ProgressBar>>,
}

impl Reporter {
    /// A reporter; `json` selects JSON lines on stdout.
    pub fn new(json: bool) -> Reporter {
        Reporter {
            json,
            started: Instant::now(),
            spinner: Mutex::new(None),
        }
    }

    /// Whether output is JSON lines.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Reports an event: `kind` names it, `message` is for people, `fields` for machines.
    pub fn event(&self, kind: &str, message: &str, fields: Value) {
        if self.json {
            let mut obj = json!({
                "event": kind,
                "message": message,
                "elapsed_s": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            });
            if let (Some(o), Value::Object(extra)) = (obj.as_object_mut(), fields) {
                o.extend(extra);
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
        match self.spinner.lock().unwrap().as_ref() {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    /// Starts a phase: on a terminal a spinner shows it with the elapsed time.
    pub fn phase(&self, name: &str) {
        self.event("phase", &format!("==> {name}"), json!({ "phase": name }));
        if self.json || !std::io::stderr().is_terminal() {
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
