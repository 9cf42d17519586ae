//! The imgforge command line: parses arguments and calls the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use imgforge::definition::DefinitionError;
use imgforge::events::{payload, Reporter};

mod cli;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Builds immutable VM images: render answer files, build with QEMU, bake service and data,
/// export, register as AMI/EMI, rotate old instances.
#[derive(Parser)]
#[command(name = "imgforge", version, about)]
struct Cli {
    /// Print machine-readable JSON (one object per line) on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Log what happens (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check image definitions; exits non-zero naming the file, line and field of each error.
    Validate {
        /// Definition files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Render a definition's answer file (preseed or kickstart).
    Render {
        /// Definition file.
        file: PathBuf,
        /// Write to this file (atomically) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the base, bake and build ids of a definition.
    Id {
        /// Definition file.
        file: PathBuf,
    },
    /// Show each definition's layer ids and which layers are already built or cached.
    Plan {
        /// Definition files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Root of the output tree.
        #[arg(long, default_value = "output")]
        output_dir: PathBuf,
        /// Remote layer cache, `s3://BUCKET/PREFIX` (over each definition's `[cache] url`).
        #[arg(long, env = "IMGFORGE_CACHE_URL")]
        cache_url: Option<String>,
    },
    /// Write each Debian definition's exact package set to `<definition>.lock`, which `id`,
    /// `plan` and `build` then use instead of the archive's current set.
    Lock {
        /// Definition files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Resolve again and rewrite existing locks (they are left as they are otherwise).
        #[arg(long)]
        update: bool,
    },
    /// List a built image's packages that the archive has newer versions of, security
    /// updates first (exit 3 with updates, 4 with security updates).
    Outdated {
        /// The build's manifest.json.
        manifest: PathBuf,
    },
    /// Build an image: base layer, bake, export, verify.
    Build(cli::BuildArgs),
    /// Boot a built image and run its checks again.
    Verify(cli::VerifyArgs),
    /// Register a built image as an AMI or EMI.
    Register(cli::RegisterArgs),
    /// Turn a Eucalyptus bundle back into the image.
    Unbundle(cli::UnbundleArgs),
    /// Replace instances older than a maximum age with instances of the newest image.
    Rotate(cli::RotateArgs),
    /// Deregister old images and delete their snapshots.
    Prune(cli::PruneArgs),
    /// Sign a build (its manifest and SHA256SUMS) with an OpenSSH or minisign key.
    Sign {
        /// The build's manifest.json.
        manifest: PathBuf,
        /// The private key: OpenSSH (`ssh-keygen -Y sign` format, namespace imgforge) or
        /// minisign, unencrypted.
        #[arg(long)]
        key: PathBuf,
    },
    /// Explain how two builds differ: packages, then files (exit 3 when they differ).
    Diff {
        /// The first build's manifest.json.
        a: PathBuf,
        /// The second build's manifest.json.
        b: PathBuf,
    },
    /// Report what this host has for building images.
    Doctor,
    /// Keep the local cache in bounds.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Remove base layers, downloads and work directories unused for `--max-age`, and trim
    /// the package cache to `--packages-max-size`; layers a build holds are kept.
    Gc {
        /// Remove what was not used for this long (`30d`, `12h`, `2w`).
        #[arg(long, default_value = "30d", value_parser = imgforge::parse_age)]
        max_age: std::time::Duration,
        /// Trim the shared package cache to this size (`2G`, `500M`); default
        /// `IMGFORGE_PACKAGE_CACHE_SIZE`, else 2G.
        #[arg(long, value_parser = parse_size)]
        packages_max_size: Option<u64>,
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `imgforge diff` found a difference (exit code [`EXIT_DIFFERENT`]).
#[derive(Debug, thiserror::Error)]
#[error("the builds differ")]
struct BuildsDiffer;

/// `imgforge outdated` found newer packages (exit code 3, or 4 when some are security updates).
#[derive(Debug, thiserror::Error)]
#[error("{count} package(s) of the image are outdated ({security} security updates)")]
struct PackagesOutdated {
    count: usize,
    security: usize,
}

/// Exit code of `imgforge outdated` when some outdated package is a security update.
const EXIT_SECURITY: u8 = 4;

/// Exit code for bad input (a definition error); 1 is any other failure.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit code of `imgforge diff` for two builds that differ.
const EXIT_DIFFERENT: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let reporter = Reporter::new(cli.json);
    match run(cli.command, &reporter) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            reporter.finish();
            if e.downcast_ref::<BuildsDiffer>().is_some() {
                return ExitCode::from(EXIT_DIFFERENT);
            }
            if let Some(o) = e.downcast_ref::<PackagesOutdated>() {
                return ExitCode::from(match o.security {
                    0 => EXIT_DIFFERENT,
                    _ => EXIT_SECURITY,
                });
            }
            let bad_input = e.downcast_ref::<DefinitionError>().is_some();
            if reporter.is_json() {
                let line = imgforge::events::result_line(&payload::Error {
                    message: format!("{e:#}"),
                });
                let _ = writeln!(std::io::stdout(), "{line}");
            }
            eprintln!("error: {e:#}");
            ExitCode::from(if bad_input { EXIT_BAD_INPUT } else { 1 })
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "imgforge=info",
        _ => "imgforge=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMGFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// `imgforge lock`: writes each definition's lock (or, without `update`, keeps one that exists).
fn lock(files: &[PathBuf], update: bool, reporter: &Reporter) -> Result<()> {
    for file in files {
        let def = imgforge::load_definition(file)?;
        let path = imgforge::lock_path(file);
        if path.is_file() && !update {
            reporter.emit(
                &format!(
                    "{} is locked already: `imgforge lock --update` resolves it again",
                    path.display()
                ),
                &payload::Locked {
                    definition: file.clone(),
                    lock: path.clone(),
                    written: false,
                    changes: None,
                },
            );
            continue;
        }
        let (path, changes) = imgforge::write_lock(&def)?;
        let what = match &changes {
            Some(c) if c.is_empty() => "unchanged".to_string(),
            Some(c) => c.summary(),
            None => "new".to_string(),
        };
        reporter.emit(
            &format!("wrote {}: {what}", path.display()),
            &payload::Locked {
                definition: file.clone(),
                lock: path.clone(),
                written: true,
                changes: Some(changes),
            },
        );
    }
    Ok(())
}

fn parse_size(text: &str) -> Result<u64, String> {
    imgforge::definition::ByteSize::parse(text)
        .map(|b| b.0)
        .ok_or_else(|| format!("`{text}` is not a size: write it like 2G or 500M"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

fn run(command: Command, reporter: &Reporter) -> Result<()> {
    match command {
        Command::Validate { files } => validate(&files, reporter),
        Command::Render { file, output } => render_answer_file(&file, output.as_deref()),
        Command::Id { file } => print_ids(&file, reporter),
        Command::Plan {
            files,
            output_dir,
            cache_url,
        } => plan(&files, &output_dir, cache_url.as_deref(), reporter),
        Command::Lock { files, update } => lock(&files, update, reporter),
        Command::Outdated { manifest } => outdated(&manifest, reporter),
        Command::Build(args) => {
            imgforge::install_handlers()?;
            build_image(&args, reporter)
        }
        Command::Verify(args) => {
            imgforge::install_handlers()?;
            imgforge::verify_manifest(&args.manifest, &args.overrides(), reporter)
        }
        Command::Register(args) => register(&args, reporter),
        Command::Unbundle(args) => {
            imgforge::unbundle(&args.manifest, &args.private_key, &args.output, reporter)
        }
        Command::Rotate(args) => runtime()?.block_on(imgforge::rotate(args.options(), reporter)),
        Command::Prune(args) => runtime()?.block_on(imgforge::prune(args.options(), reporter)),
        Command::Sign { manifest, key } => {
            imgforge::sign_build(&manifest, &key, reporter).map(|_| ())
        }
        Command::Cache {
            action:
                CacheAction::Gc {
                    max_age,
                    packages_max_size,
                    dry_run,
                },
        } => collect_cache(max_age, packages_max_size, dry_run, reporter),
        Command::Diff { a, b } => match imgforge::diff(&a, &b, reporter)?.any() {
            true => Err(BuildsDiffer.into()),
            false => Ok(()),
        },
        Command::Doctor => imgforge::doctor(reporter),
    }
}

/// `imgforge render`: the answer file on stdout, or written atomically to `output`.
fn render_answer_file(file: &Path, output: Option<&Path>) -> Result<()> {
    let def = imgforge::load_definition(file)?;
    let answer = imgforge::render(&def)?;
    match output {
        Some(out) => imgforge::write_atomically(out, answer.text.as_bytes()),
        None => {
            let _ = std::io::stdout().write_all(answer.text.as_bytes());
            Ok(())
        }
    }
}

/// `imgforge plan`: what each definition would build, and from which cached layers.
fn plan(
    files: &[PathBuf],
    output_dir: &Path,
    cache_url: Option<&str>,
    reporter: &Reporter,
) -> Result<()> {
    let items = imgforge::plan(files, output_dir, cache_url)?;
    let to_build = items
        .iter()
        .filter(|i| i.needs_build)
        .map(|i| i.file.clone())
        .collect();
    let plan = payload::BuildPlan {
        definitions: serde_json::to_value(&items)?,
        to_build,
    };
    reporter.result(&imgforge::plan_table(&items), &plan);
    Ok(())
}

/// `imgforge outdated`: fails (exit status by the worst kind) when a package is outdated.
fn outdated(manifest: &Path, reporter: &Reporter) -> Result<()> {
    let packages = imgforge::outdated(manifest)?;
    reporter.result(
        &imgforge::outdated_table(&packages),
        &payload::Outdated {
            manifest: manifest.to_path_buf(),
            packages: packages.clone(),
        },
    );
    match packages.len() {
        0 => Ok(()),
        count => Err(PackagesOutdated {
            count,
            security: packages.iter().filter(|p| p.security).count(),
        }
        .into()),
    }
}

/// `imgforge register`: one build registered as its destination asks.
fn register(args: &cli::RegisterArgs, reporter: &Reporter) -> Result<()> {
    let opts = args.options()?;
    let image =
        runtime()?.block_on(imgforge::register_manifest(&args.manifest, &opts, reporter))?;
    let human = if image.reused {
        format!("{} (existing image of this build)", image.image_id)
    } else {
        image.image_id.clone()
    };
    let registered = payload::Registered {
        image: serde_json::to_value(&image)?,
    };
    reporter.result(&human, &registered);
    Ok(())
}

/// `imgforge id`: the layer ids, with the service commit and data digest they cover.
fn print_ids(file: &Path, reporter: &Reporter) -> Result<()> {
    let def = imgforge::load_definition(file)?;
    let specs = imgforge::Specs::derive(&def)?;
    let ids = imgforge::LayerIds::of(&specs);
    let value = payload::Id {
        name: def.image.name.0.clone(),
        base: ids.base.clone(),
        bake: ids.bake.clone(),
        build: ids.build.clone(),
        service_commit: specs.bake.service.as_ref().map(|s| s.commit.clone()),
        data_digest: specs.bake.data.as_ref().map(|d| d.digest.clone()),
    };
    let human = format!(
        "base  {}\nbake  {}\nbuild {}",
        ids.base, ids.bake, ids.build
    );
    reporter.result(&human, &value);
    Ok(())
}

/// `imgforge build`: one definition, or several at once (`--jobs`) with a summary at the end.
fn build_image(args: &cli::BuildArgs, reporter: &Reporter) -> Result<()> {
    if let [file] = args.files.as_slice() {
        let built = imgforge::build(&args.options(file), reporter)?;
        return report_build(args, file, &built, reporter);
    }
    let jobs = imgforge::jobs_that_fit(args.jobs, &args.files);
    if jobs < args.jobs.min(args.files.len()) {
        reporter.emit(
            &format!("running {jobs} build(s) at once, not {}: the host's available memory holds no more build VMs", args.jobs),
            &payload::Warning {
                jobs: Some(jobs),
                asked: Some(args.jobs),
                ..Default::default()
            },
        );
    }
    let builds: Vec<_> = args.files.iter().map(|f| args.options(f)).collect();
    let results = imgforge::build_all(&builds, jobs, reporter);
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for job in &results {
        let outcome = job
            .result
            .as_ref()
            .map_err(|e| format!("{e:#}"))
            .and_then(|built| {
                report_build(args, &job.file, built, reporter).map_err(|e| format!("{e:#}"))?;
                Ok(built)
            });
        let (result, build_id, error) = match outcome {
            Ok(imgforge::BuildResult::Image(o)) if o.cached => {
                ("cached", o.manifest.provenance.ids.build.clone(), None)
            }
            Ok(imgforge::BuildResult::Image(o)) => {
                ("built", o.manifest.provenance.ids.build.clone(), None)
            }
            Ok(imgforge::BuildResult::Base { base, .. }) => ("base", base.info.id.clone(), None),
            Err(e) => ("failed", String::new(), Some(e)),
        };
        if let Some(e) = &error {
            failed.push(format!("{}: {e}", job.file.display()));
        }
        rows.push(json!({
            "file": job.file, "result": result, "build_id": build_id,
            "seconds": (job.seconds * 10.0).round() / 10.0, "error": error,
        }));
    }
    let table: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r["file"].as_str().unwrap_or_default().to_string(),
                format!("{:.1}s", r["seconds"].as_f64().unwrap_or_default()),
                r["result"].as_str().unwrap_or_default().to_string(),
                r["build_id"]
                    .as_str()
                    .map(|id| id.chars().take(12).collect())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    reporter.result(
        &imgforge::events::table(["definition", "time", "result", "build"], &table),
        &payload::BuildSummary {
            builds: rows,
            failed: failed.len(),
        },
    );
    match failed.as_slice() {
        [] => Ok(()),
        [first, ..] => anyhow::bail!(
            "{} of {} builds failed; first: {first}",
            failed.len(),
            results.len()
        ),
    }
}

/// Reports one finished build (its result line), then registers it with `--register`.
fn report_build(
    args: &cli::BuildArgs,
    file: &Path,
    built: &imgforge::BuildResult,
    reporter: &Reporter,
) -> Result<()> {
    match built {
        imgforge::BuildResult::Image(outcome) => {
            let human = if outcome.cached {
                format!(
                    "up to date: {} (cached, nothing rebuilt)",
                    outcome.manifest_path.display()
                )
            } else {
                format!("built: {}", outcome.manifest_path.display())
            };
            let manifest = payload::Manifest {
                manifest: Some(outcome.manifest.clone()),
                cached: outcome.cached,
                manifest_path: outcome.manifest_path.clone(),
            };
            reporter.result(&human, &manifest);
            if args.register {
                register_build(file, outcome, args.sign.as_deref(), reporter)?;
            }
        }
        imgforge::BuildResult::Base { base, cached } => {
            let value = payload::Base {
                cached: *cached,
                dir: base.dir.clone(),
                disk: base.disk(),
                info: serde_json::to_value(&base.info)?,
            };
            reporter.result(&format!("base layer: {}", base.disk().display()), &value);
        }
    }
    Ok(())
}

/// `imgforge cache gc`.
fn collect_cache(
    max_age: std::time::Duration,
    packages_max_size: Option<u64>,
    dry_run: bool,
    reporter: &Reporter,
) -> Result<()> {
    let packages_max_size = match packages_max_size {
        Some(size) => size,
        None => imgforge::package_cache_limit()?,
    };
    let root = imgforge::cache_dir();
    let opts = imgforge::GcOptions {
        max_age,
        packages_max_size,
        dry_run,
    };
    let report = imgforge::cache_gc(&root, &opts)?;
    let verb = if dry_run { "would free" } else { "freed" };
    let human = format!(
        "cache {}: {} base layers, {} other entries, {} packages; {verb} {:.1} MiB",
        root.display(),
        report.bases.len(),
        report.other.len(),
        report.packages.files,
        report.freed_bytes as f64 / f64::from(1 << 20)
    );
    let gc = payload::CacheGc {
        report: serde_json::to_value(&report)?,
    };
    reporter.result(&human, &gc);
    Ok(())
}

/// `build --register`: publishes a build to every target of its definition's `[publish]`;
/// with `--sign KEY`, each registration is signed with the key that signed the build.
fn register_build(
    file: &std::path::Path,
    outcome: &imgforge::BuildOutcome,
    sign: Option<&std::path::Path>,
    reporter: &Reporter,
) -> Result<()> {
    let mut targets = imgforge::RegisterOptions::from_publish(&outcome.manifest)?;
    for t in &mut targets {
        t.sign = sign.map(std::path::Path::to_path_buf);
    }
    if targets.is_empty() {
        anyhow::bail!(
            "{}: --register needs a [publish.aws] or [publish.eucalyptus] table",
            file.display()
        );
    }
    let rt = runtime()?;
    for opts in &targets {
        let image = rt.block_on(imgforge::register_manifest(
            &outcome.manifest_path,
            opts,
            reporter,
        ))?;
        let registered = payload::Registered {
            image: serde_json::to_value(&image)?,
        };
        reporter.result(&format!("registered: {}", image.image_id), &registered);
    }
    Ok(())
}

/// Validates every file, reporting each error, and fails if any failed.
fn validate(files: &[PathBuf], reporter: &Reporter) -> Result<()> {
    let mut invalid = 0;
    for file in files {
        let outcome = imgforge::validate(file);
        if outcome.as_ref().is_ok_and(|d| d.checks.is_empty()) {
            reporter.emit(
                &format!(
                    "{}: no [[checks]]: verify will prove only that the image boots (sshd \
                     answers on port 22), not that the service works",
                    file.display()
                ),
                &payload::Warning {
                    file: Some(file.clone()),
                    checks: Some(0),
                    ..Default::default()
                },
            );
        }
        match outcome {
            Ok(def) => reporter.emit(
                &format!(
                    "{}: ok ({} {})",
                    file.display(),
                    def.image.name,
                    def.image.version
                ),
                &payload::Valid {
                    file: file.clone(),
                    valid: true,
                },
            ),
            Err(e) => {
                reporter.emit(
                    &format!("{e}"),
                    &payload::Invalid {
                        file: file.clone(),
                        valid: false,
                        error: e.to_string(),
                    },
                );
                invalid += 1;
            }
        }
    }
    match invalid {
        0 => Ok(()),
        _ => Err(DefinitionError::Several {
            invalid,
            total: files.len(),
        }
        .into()),
    }
}
