//! One small wrapper over duct for every external program imgforge runs (qemu-img, mmdebstrap,
//! git, ssh, …): it logs the command line, captures output, and turns a failure into an error
//! that quotes the last lines of stderr.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::Path;

/// How many stderr lines a failure quotes.
const QUOTED_LINES: usize = 15;

/// An external command to run.
#[derive(Debug, Clone)]
pub struct Command {
    program: String,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    dir: Option<std::path::PathBuf>,
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as trimmed text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }
}

impl Command {
    /// A command running `program`.
    pub fn new(program: &str) -> Command {
        Command {
            program: program.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            dir: None,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Command {
        self.args.push(arg.into());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Command {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs in `dir` instead of the current directory.
    pub fn current_dir(mut self, dir: &Path) -> Command {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Feeds `bytes` on standard input.
    pub fn stdin(mut self, bytes: Vec<u8>) -> Command {
        self.stdin = Some(bytes);
        self
    }

    /// The command line as a shell would show it.
    pub fn display(&self) -> String {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        if let Some(input) = &self.stdin {
            e = e.stdin_bytes(input.clone());
        }
        if let Some(dir) = &self.dir {
            e = e.dir(dir);
        }
        e
    }

    /// Runs to completion, capturing output; a non-zero exit is an error quoting stderr.
    pub fn run(&self) -> Result<Output> {
        let (code, out) = self.run_unchecked()?;
        if code != 0 {
            bail!(
                "`{}` failed (exit status: {code}):\n{}",
                self.display(),
                tail_lines(&String::from_utf8_lossy(&out.stderr), QUOTED_LINES)
            );
        }
        Ok(out)
    }

    /// Runs to completion, capturing output, and returns the exit code (-1 for a signal) with it.
    ///
    /// On SIGINT or SIGTERM (see [`crate::cancel`]) the program is asked to stop with SIGTERM,
    /// then killed if it has not stopped within a few seconds.
    pub fn run_unchecked(&self) -> Result<(i32, Output)> {
        tracing::debug!(command = %self.display(), "run");
        let handle = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .start()
            .with_context(|| {
                format!(
                    "cannot start `{}`: is it installed? (`imgforge doctor` checks the host)",
                    self.program
                )
            })?;
        loop {
            if let Some(out) = handle.try_wait()? {
                let output = Output {
                    stdout: out.stdout.clone(),
                    stderr: out.stderr.clone(),
                };
                return Ok((out.status.code().unwrap_or(-1), output));
            }
            if crate::cancel::requested() {
                stop(&handle);
                bail!("interrupted: `{}` was stopped", self.program);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Starts the command in the background with output sent to `log`.
    pub fn spawn_logged(&self, log: &Path) -> Result<duct::Handle> {
        tracing::debug!(command = %self.display(), log = %log.display(), "spawn");
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = file.try_clone()?;
        self.expression()
            .stdout_file(file)
            .stderr_file(err)
            .unchecked()
            .start()
            .with_context(|| format!("cannot start `{}`: is it installed?", self.program))
    }
}

/// Asks a running child to stop (SIGTERM), then kills it after a grace period.
fn stop(handle: &duct::Handle) {
    for pid in handle.pids() {
        // SAFETY: kill(2) with a pid we started; at worst the process is already gone.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if matches!(handle.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = handle.kill();
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `program` is on the PATH.
pub fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether this process runs as root (the owner of `/proc/self` is its effective user): loop
/// mounts (the seal, the chroot bake) need it.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_quotes_stderr() {
        let e = Command::new("sh")
            .args(["-c", "echo first >&2; echo boom >&2; exit 3"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.contains("boom") && e.contains("first"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
    }

    #[test]
    fn missing_program_says_so() {
        let e = Command::new("imgforge-no-such-tool")
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.contains("is it installed"), "{e}");
    }

    #[test]
    fn stdin_and_stdout_round_trip() {
        let out = Command::new("cat").stdin(b"hello".to_vec()).run().unwrap();
        assert_eq!(out.text(), "hello");
    }
}
