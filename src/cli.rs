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
    /// exits with status 2 if there is any. With --llm, also asks the LLM server which models it
    /// serves (exit status 3 when it does not answer).
    Check(CheckArgs),
    /// Print benchmark figures (not tests: run them on an idle machine).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// List the audio input and output devices (names to use as `device` in config.toml).
    Devices,
    /// See and delete what the assistant remembers (the `stateless_memory` database).
    Memory(MemoryArgs),
    /// The tools the assistant's LLM can call.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// One text turn: TEXT goes through the config's processors from `user_turn` on (memory and
    /// tools included) and the reply is printed. The tools called are logged on stderr. Exit
    /// status 1 when the reply failed (the apology is printed).
    Ask(AskArgs),
}

/// The `slowcat tools` commands.
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Every tool of the config's `openai_llm` processor(s), with its source (`builtin` or
    /// `mcp:<server>`) and description. MCP servers are started for the listing and stopped
    /// after; name clashes and servers that fail are printed as warnings.
    List(ConfigArgs),
}

/// Options of `slowcat ask`.
#[derive(Debug, Clone, Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// What the user says.
    #[arg(required = true, value_name = "TEXT")]
    pub text: Vec<String>,

    /// Also speak the reply through the config's TTS and output device (the speaker).
    #[arg(long)]
    pub speak: bool,

    /// Use this OpenAI-compatible server for every `openai_llm` processor, e.g. http://127.0.0.1:8089/v1.
    #[arg(long, value_name = "URL")]
    pub llm_url: Option<String>,

    /// Log what the processors do (info level) on stderr, not only the tool calls and warnings.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Options of `slowcat memory`.
#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    /// The config file whose `stateless_memory` processor names the database.
    #[arg(long, short, global = true, default_value = "config.toml", env = "SLOWCAT_CONFIG", value_name = "PATH")]
    pub config: PathBuf,

    /// The database directory itself (the config is then not read).
    #[arg(long, global = true, value_name = "DIR")]
    pub path: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: MemoryCommandArgs,
}

/// The `slowcat memory` commands.
#[derive(Debug, Clone, Subcommand)]
pub enum MemoryCommandArgs {
    /// The speakers memory knows, with how many exchanges each.
    Speakers,
    /// A speaker's remembered facts, and newest exchanges, newest first, with their ids.
    List {
        /// Whose memories.
        #[arg(long, default_value = "default")]
        speaker: String,
        /// How many.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
    },
    /// A speaker's exchanges most relevant to some words (as the assistant ranks them), best first.
    Search {
        /// The words to look for.
        #[arg(required = true)]
        query: Vec<String>,
        /// Whose memories.
        #[arg(long, default_value = "default")]
        speaker: String,
        /// How many.
        #[arg(long, short = 'n', default_value_t = 10)]
        limit: usize,
    },
    /// One exchange in full.
    Show {
        /// The exchange id (as `list` shows it).
        id: u64,
        /// Whose memories.
        #[arg(long, default_value = "default")]
        speaker: String,
    },
    /// Delete one exchange by id, or every exchange of the speaker with --all.
    Forget {
        /// The exchange id (as `list` shows it).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Delete everything remembered for the speaker.
        #[arg(long)]
        all: bool,
        /// Whose memories.
        #[arg(long, default_value = "default")]
        speaker: String,
    },
    /// Every exchange as JSON lines, oldest first (every speaker's unless --speaker).
    Export {
        /// Only this speaker's.
        #[arg(long)]
        speaker: Option<String>,
    },
}

impl MemoryCommandArgs {
    fn into_command(self) -> slowcat_processors::memory::cli::MemoryCommand {
        use slowcat_processors::memory::cli::MemoryCommand as M;
        match self {
            Self::Speakers => M::Speakers,
            Self::List { speaker, limit } => M::List { speaker, limit },
            Self::Search { query, speaker, limit } => M::Search { speaker, query: query.join(" "), limit },
            Self::Show { id, speaker } => M::Show { speaker, id },
            Self::Forget { id, all, speaker } => M::Forget { speaker, id, all },
            Self::Export { speaker } => M::Export { speaker },
        }
    }
}

/// The memory database `slowcat memory` works on: --path, or the config's `stateless_memory` processor's.
fn memory_db_path(args: &MemoryArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.path {
        return Ok(path.clone());
    }
    // Only the sections are read: the memory database is reachable when a model the rest of the
    // pipeline needs is missing.
    let sections = config::load_sections(&args.config, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let paths: Vec<(String, PathBuf)> = sections
        .settings_of::<slowcat_processors::memory::StatelessMemorySettings>()
        .map(|(id, s)| (id.to_string(), s.db_path(&sections.build)))
        .collect();
    match paths.as_slice() {
        [(_, path)] => Ok(path.clone()),
        [] => anyhow::bail!(
            "{} has no `stateless_memory` processor; give the database directory with --path",
            args.config.display()
        ),
        many => {
            let ids: Vec<&str> = many.iter().map(|(id, _)| id.as_str()).collect();
            anyhow::bail!(
                "{} has several `stateless_memory` processors ({}); choose a database with --path",
                args.config.display(),
                ids.join(", ")
            )
        }
    }
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

    /// Read the user's speech from this WAV file instead of the microphone (replaces the
    /// pipeline's `mic`), for a replayable turn. The run ends when the answer is complete.
    #[arg(long, value_name = "WAV")]
    pub input: Option<PathBuf>,

    /// Write the assistant's speech to this WAV file instead of the speaker (replaces `speaker`).
    #[arg(long, value_name = "WAV")]
    pub output: Option<PathBuf>,

    /// Use this OpenAI-compatible server for every `openai_llm` processor, e.g. http://127.0.0.1:8089/v1.
    #[arg(long, value_name = "URL")]
    pub llm_url: Option<String>,

    /// Append one JSON line of metrics per conversation turn to this file.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// Options of `slowcat check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Also check that the LLM server of each `openai_llm` processor answers, and list its models.
    #[arg(long)]
    pub llm: bool,
}

impl RunArgs {
    fn rewire(&self) -> config::Rewire {
        config::Rewire { input: self.input.clone(), output: self.output.clone(), llm_url: self.llm_url.clone() }
    }
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
    /// The LLM client's own share of the time to first token (request frame → first text frame,
    /// minus the server's time to first token, timestamped by a proxy in between): p50/p99.
    Llm {
        /// The OpenAI-compatible server to measure against (start one with `scripts/llm-server.sh start`).
        #[arg(long, default_value = "http://127.0.0.1:8089/v1", env = "SLOWCAT_LLM_URL", value_name = "URL")]
        url: String,
        /// Measured requests.
        #[arg(long, default_value_t = 100)]
        requests: usize,
    },
    /// Memory injection and store latency at 100 to 1M stored exchanges, and bytes on disk per exchange.
    Memory {
        /// Stored exchanges to measure at (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [100u64, 10_000, 100_000, 1_000_000])]
        sizes: Vec<u64>,
        /// Runs per figure (the median is printed).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Injections timed per run.
        #[arg(long, default_value_t = 2000)]
        injections: usize,
        /// Build the databases in this directory (default: a temporary one).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Piper: time from a complete first sentence to its first audio, and the real-time factor.
    Tts(ModelsArgs),
    /// Smart Turn: feature extraction and inference time for an 8 s window.
    Turn(ModelsArgs),
    /// Whisper tiny.en time (f16 and Q8_0 weights) for 1, 3 and 8 s utterances, and VAD time per 20 ms
    /// frame (needs espeak-ng).
    Stt(ModelsArgs),
    /// The whole assistant of the config, microphone and speaker swapped for WAV files: spoken
    /// questions (made once with Piper) in real time, each after the previous answer has played;
    /// p50/p95 per stage, voice-to-voice, and the pipeline's overhead. The replies' wording moves
    /// the figures (a short first phrase is spoken sooner): `--set processors.llm.seed=N` makes
    /// them repeat from run to run, as far as the transcripts do.
    Conversation {
        #[command(flatten)]
        config: ConfigArgs,
        /// Spoken turns per run.
        #[arg(long, default_value_t = 10)]
        turns: usize,
        /// Runs (each with an empty memory); the figures pool every turn.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Use this OpenAI-compatible server for every `openai_llm` processor.
        #[arg(long, env = "SLOWCAT_LLM_URL", value_name = "URL")]
        llm_url: Option<String>,
        /// What the user says: `piper`, ten questions spoken by the assistant's own Piper voice, or
        /// `human`, recordings of real people (tests/speech, fetched by scripts/fetch-speech.sh:
        /// commands with pauses between words, numbers, sentences), with what each really says.
        #[arg(long, value_enum, default_value = "piper")]
        speech: slowcat_bench::conversation::Speech,
    },
    /// A tool turn against a model that calls tools: spoken questions (what is 1234 times 5678, the
    /// time in Tokyo…) through the whole assistant in real time; end of speech → first audio split
    /// into end of turn, STT, memory, the LLM's first pass, the tool, the client's own time per
    /// round trip, the LLM's second pass and TTS; medians. Serve Qwen2.5-Coder-0.5B with
    /// `scripts/llm-server.sh start --model qwen2.5-coder-0.5b --port 8090` and pass --llm-url.
    Tools {
        #[command(flatten)]
        config: ConfigArgs,
        /// Runs (each with an empty memory); the figures pool every turn.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Use this OpenAI-compatible server for every `openai_llm` processor.
        #[arg(long, env = "SLOWCAT_LLM_URL", value_name = "URL")]
        llm_url: Option<String>,
    },
    /// Many turns through the assistant as fast as it goes (audio not paced, short replies):
    /// resident memory and per-turn latency as the turns pile up.
    Soak {
        #[command(flatten)]
        config: ConfigArgs,
        /// Turns.
        #[arg(long, default_value_t = 1000)]
        turns: usize,
        /// Longest reply, in tokens (sets `max_tokens` of every `openai_llm` processor).
        #[arg(long, default_value_t = 24)]
        max_tokens: u32,
        /// Turns to report (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100, 250, 500, 750, 1000])]
        at: Vec<usize>,
        /// Use this OpenAI-compatible server for every `openai_llm` processor.
        #[arg(long, env = "SLOWCAT_LLM_URL", value_name = "URL")]
        llm_url: Option<String>,
    },
    /// LLM time to first token as a text conversation grows: stateless memory against the whole
    /// history sent every turn. Start a server with a large context for it, e.g.
    /// `scripts/llm-server.sh start --port 8090 --ctx 16384`.
    History {
        /// The OpenAI-compatible server.
        #[arg(long, env = "SLOWCAT_LLM_URL", value_name = "URL")]
        llm_url: String,
        /// Turns per variant.
        #[arg(long, default_value_t = 200)]
        turns: usize,
        /// Longest reply, in tokens.
        #[arg(long, default_value_t = 24)]
        max_tokens: u32,
        /// Turns to report (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 50, 100, 200])]
        at: Vec<usize>,
    },
}

/// Where benchmarks find the models.
#[derive(Debug, Clone, Args)]
pub struct ModelsArgs {
    /// The models directory.
    #[arg(long, env = "SLOWCAT_MODELS_DIR", default_value = "models", value_name = "DIR")]
    pub models_dir: PathBuf,
}

/// The log filter when neither --log nor RUST_LOG says otherwise.
fn default_log_filter(command: &Command) -> &'static str {
    match command {
        // stdout is the reply; stderr shows the tool calls (logged by the LLM client) and problems.
        Command::Ask(args) if !args.verbose => "warn,slowcat_processors::llm::openai_llm=info,whisper_rs=off",
        Command::Tools(_) => "warn,whisper_rs=off",
        // whisper.cpp logs an error for every early transcription given up because the user spoke
        // on; slowcat reports real Whisper failures itself, with what to do.
        _ => "info,whisper_rs=off,ort=warn",
    }
}

fn init_logging(filter: Option<&str>, default: &str) {
    let filter =
        filter.map(str::to_string).or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Loads and validates the config, printing every problem. `Err` carries the exit code.
fn load_config(args: &RunArgs) -> Result<config::Config, ExitCode> {
    config::load(&args.config.config, &args.config.overrides, &args.rewire()).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
}

fn assistant(config: ConfigArgs, llm_url: Option<String>) -> crate::bench::AssistantConfig {
    crate::bench::AssistantConfig { config: config.config, overrides: config.overrides, llm_url }
}

fn run_bench(rt: &tokio::runtime::Runtime, bench: BenchCommand) -> anyhow::Result<()> {
    use slowcat_bench::{conversation, llm, memory, pipeline, stt, tts, turn};
    match bench {
        BenchCommand::Pipeline { frames, samples } => rt.block_on(pipeline::pipeline(frames, samples)),
        BenchCommand::Memory { sizes, runs, injections, dir } => {
            let opts = memory::BenchOptions { sizes, runs, injections, dir, ..Default::default() };
            memory::run(&opts, &mut std::io::stdout())?;
        }
        BenchCommand::Llm { url, requests } => rt.block_on(llm::bench(&url, requests))?,
        BenchCommand::Tts(m) => tts::bench(&m.models_dir)?,
        BenchCommand::Turn(m) => turn::bench(&m.models_dir)?,
        BenchCommand::Stt(m) => stt::bench(&m.models_dir)?,
        BenchCommand::Conversation { config, turns, runs, llm_url, speech } => {
            let base = assistant(config, llm_url);
            rt.block_on(conversation::conversation(&base, turns, runs, speech))?
        }
        BenchCommand::Tools { config, runs, llm_url } => {
            let base = assistant(config, llm_url);
            rt.block_on(conversation::tools(&base, runs))?
        }
        BenchCommand::Soak { config, turns, max_tokens, at, llm_url } => {
            let base = assistant(config, llm_url);
            rt.block_on(conversation::soak(&base, turns, max_tokens, &at))?
        }
        BenchCommand::History { llm_url, turns, max_tokens, at } => {
            rt.block_on(conversation::history(&llm_url, turns, max_tokens, &at))?
        }
    }
    Ok(())
}

/// Runs the command line; returns the process exit status.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(cli.log.as_deref(), default_log_filter(&cli.command));
    let rt = match crate::app::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.command {
        Command::Check(args) => match load_config(&args.run) {
            Ok(cfg) => {
                let ids: Vec<String> = cfg.processors.iter().map(|p| format!("{} ({})", p.id, p.kind.name)).collect();
                println!("{}: ok — {} processors: {}", args.run.config.config.display(), ids.len(), ids.join(" → "));
                if args.llm { rt.block_on(crate::app::check_llm(&cfg)) } else { ExitCode::SUCCESS }
            }
            Err(code) => code,
        },
        Command::Run(args) => {
            let mut cfg = match load_config(&args) {
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
        Command::Bench(bench) => match run_bench(&rt, bench) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Memory(args) => {
            let result = memory_db_path(&args).and_then(|path| {
                Ok(slowcat_processors::memory::cli::run(&path, args.command.into_command(), &mut std::io::stdout())?)
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tools(ToolsCommand::List(args)) => {
            match rt.block_on(crate::ask::tools_list(&args.config, &args.overrides, &mut std::io::stdout())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ask(args) => {
            let opts = crate::ask::AskOptions {
                config: args.config.config,
                overrides: args.config.overrides,
                llm_url: args.llm_url,
                speak: args.speak,
                text: args.text.join(" "),
            };
            match rt.block_on(crate::ask::ask(&opts)) {
                Ok(outcome) if outcome.errors.is_empty() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Devices => match slowcat_processors::audio::devices::list_devices() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    };
    // Processors stuck in blocking code must not keep the process alive after a bounded shutdown.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}
