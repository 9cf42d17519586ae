//! Several definitions in one run (`imgforge build A.toml B.toml --jobs N`): builds run at
//! once on a few threads, each with its own work directory, QEMU ports and HTTP server; a base
//! layer several of them share is built once (the others wait on its lock, then reuse it); a
//! failed build does not stop the others.

use crate::build::{build, BuildOptions, BuildResult};
use crate::definition::Definition;
use crate::events::Reporter;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// One build of a batch, finished.
pub struct JobResult {
    /// The definition file.
    pub file: PathBuf,
    /// What the build produced, or why it failed.
    pub result: Result<BuildResult>,
    /// How long it took.
    pub seconds: f64,
}

/// How many builds may run at once: at most `asked`, and no more build VMs than the host's
/// available memory holds (each job's VM takes its definition's `memory_mib`, plus QEMU's own
/// overhead). Definitions that do not load count as small: their build fails at once.
pub fn jobs_that_fit(asked: usize, files: &[PathBuf]) -> usize {
    let per_job_mib = files
        .iter()
        .filter_map(|f| Definition::load(f).ok())
        .map(|d| u64::from(d.machine.memory_mib) + 256)
        .max()
        .unwrap_or(1);
    let available = available_memory_mib().unwrap_or(u64::MAX);
    let fit = (available / per_job_mib).max(1) as usize;
    asked.clamp(1, files.len().max(1)).min(fit)
}

/// `MemAvailable` from `/proc/meminfo`, in MiB.
fn available_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Builds every definition in `builds`, `jobs` at a time; each reports through its own
/// [`Reporter::for_job`] labelled with its file name. Results come back in the given order.
pub fn build_all(builds: &[BuildOptions], jobs: usize, reporter: &Reporter) -> Vec<JobResult> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<JobResult>>> =
        Mutex::new((0..builds.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, builds.len().max(1)) {
            scope.spawn(|| loop {
                let index = {
                    let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                    *n += 1;
                    *n - 1
                };
                let Some(opts) = builds.get(index) else {
                    return;
                };
                let label = opts
                    .file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| opts.file.display().to_string());
                let started = Instant::now();
                let result = build(opts, &reporter.for_job(&label));
                let done = JobResult {
                    file: opts.file.clone(),
                    result,
                    seconds: started.elapsed().as_secs_f64(),
                };
                results.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(done);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}
