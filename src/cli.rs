//! The command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing::error;

use crate::config::{self, Override};

/// slowcat: a local voice assistant. You talk to your computer, it answers out loud, and
/// nothing leaves the machine.
///
/// The pipeline (microphone → voice activity → speech-to-text → memory → LLM → speech → speaker)
/// is described in config.toml: which processors run, in which order, with which settings.
#[derive(Debug, Parser)]
#[command(name = "slowcat", version, about, long_about)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or per module (e.g. "info,slowcat_processors::llm=debug").
    /// Overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the assistant (or any pipeline) described by the config until end of stream or Ctrl-C.
    Run(RunArgs),
    /// Validate the config without starting anything: reports every problem with its line and
    /// exits with status 2 if there is any.
    Check(ConfigArgs),
    /// Print benchmark figures (not tests: run them on an idle machine).
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Where the config comes from.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// The config file.
    #[arg(long, short, default_value = "config.toml", env = "SLOWCAT_CONFIG", value_name = "PATH")]
    pub config: PathBuf,

    /// Change one setting for this run, e.g. --set processors.llm.base_url=http://127.0.0.1:8089/v1
    /// (dotted key, TOML value; a bare word is a string). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<Override>,
}

/// Options of `slowcat run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Append one JSON line of metrics per conversation turn to this file.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Frames through 1, 6 and 20 pass-through processors: throughput and one-frame latency.
    Pipeline {
        /// Frames per throughput run.
        #[arg(long, default_value_t = 1_000_000)]
        frames: usize,
        /// One-frame latency samples per chain length.
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
    },
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info,whisper_rs=warn,ort=warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Loads and validates the config, printing every problem. `Err` carries the exit code.
fn load_config(args: &ConfigArgs) -> Result<config::Config, ExitCode> {
    config::load(&args.config, &args.overrides).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
}

/// Runs the command line; returns the process exit status.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(cli.log.as_deref());
    let rt = match crate::app::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.command {
        Command::Check(args) => match load_config(&args) {
            Ok(cfg) => {
                let ids: Vec<String> = cfg.processors.iter().map(|p| format!("{} ({})", p.id, p.kind.name)).collect();
                println!("{}: ok — {} processors: {}", args.config.display(), ids.len(), ids.join(" → "));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run(args) => {
            let mut cfg = match load_config(&args.config) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            if args.metrics_file.is_some() {
                cfg.metrics_file = args.metrics_file.clone();
            }
            let result = rt.block_on(crate::app::run(cfg));
            match result {
                Ok(report) if report.hung.is_empty() => ExitCode::SUCCESS,
                Ok(report) => {
                    error!(hung = ?report.hung, "some processors did not stop in time");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench(BenchCommand::Pipeline { frames, samples }) => {
            rt.block_on(crate::bench::pipeline(frames, samples));
            ExitCode::SUCCESS
        }
    };
    // Processors stuck in blocking code must not keep the process alive after a bounded shutdown.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}
