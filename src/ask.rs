//! `slowcat ask` (one text turn through the config's processors from `user_turn` on) and
//! `slowcat tools list` (what the config's LLM can call).
//!
//! Both read the config's sections without checking the whole pipeline: the processors before
//! `user_turn` (microphone, VAD, speech-to-text) are not used, so a missing Whisper model or
//! microphone must not stop a text turn. The processors that are used are checked as `run` checks
//! them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use slowcat_processors::frame::{DEFAULT_SPEAKER, SpokenReply};
use slowcat_processors::llm::{OpenAiLlmSettings, UserTurnSettings};
use slowcat_processors::stt::WhisperSttSettings;
use slowcat_processors::{CheckedSettings, Direction, Frame, Pipeline, PipelineOptions, Settings as _, Transcription};
use tracing::warn;

use crate::config::{self, Config, Override, ProcessorEntry, Sections};

/// How long the apology may take to follow a failed reply out of the LLM.
const APOLOGY_WAIT: Duration = Duration::from_secs(2);

/// What `slowcat ask` asks, and where.
#[derive(Debug, Clone)]
pub struct AskOptions {
    /// config.toml.
    pub config: PathBuf,
    /// `--set` changes.
    pub overrides: Vec<Override>,
    /// Base URL for every `openai_llm` processor.
    pub llm_url: Option<String>,
    /// Play the reply through the config's TTS and output device.
    pub speak: bool,
    /// What the user says.
    pub text: String,
}

/// How a text turn went.
#[derive(Debug, Default)]
pub struct AskOutcome {
    /// The reply's text (as spoken, with `--speak`).
    pub reply: String,
    /// Error frames that came out of the pipeline.
    pub errors: Vec<String>,
}

fn sections(path: &Path, overrides: &[Override]) -> anyhow::Result<Sections> {
    config::load_sections(path, overrides).map_err(|e| anyhow!("{e}"))
}

fn parse_override(text: String) -> anyhow::Result<Override> {
    text.parse().map_err(anyhow::Error::msg)
}

/// The config's sections with `--set` changes, `--llm-url`, and `extra(id)` changes to each
/// `openai_llm` processor (before the user's own, which win).
fn sections_for_llms(
    path: &Path,
    overrides: &[Override],
    llm_url: Option<&str>,
    extra: &[&str],
) -> anyhow::Result<Sections> {
    let first = sections(path, overrides)?;
    let ids: Vec<String> = first.settings_of::<OpenAiLlmSettings>().map(|(id, _)| id.to_string()).collect();
    let mut all = Vec::new();
    for id in &ids {
        for change in extra {
            all.push(parse_override(format!("processors.{id}.{change}"))?);
        }
    }
    all.extend_from_slice(overrides);
    if let Some(url) = llm_url {
        for id in &ids {
            all.push(parse_override(format!("processors.{id}.base_url={url:?}"))?);
        }
    }
    if all.len() == overrides.len() { Ok(first) } else { sections(path, &all) }
}

/// `slowcat tools list`: every tool of every `openai_llm` processor of the config, with where it
/// comes from and what it does. MCP servers are started for the listing and stopped after; name
/// clashes and servers that failed are printed as warnings (on stderr).
pub async fn tools_list(path: &Path, overrides: &[Override], out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let sections = sections(path, overrides)?;
    let llms: Vec<(String, OpenAiLlmSettings)> =
        sections.settings_of::<OpenAiLlmSettings>().map(|(id, s)| (id.to_string(), s.clone())).collect();
    if llms.is_empty() {
        bail!("{} has no `openai_llm` processor in its pipeline, so no tools", path.display());
    }
    for (id, settings) in llms {
        let problems = settings.tools.check(&sections.build);
        if !problems.is_empty() {
            let lines: Vec<String> = problems.into_iter().map(|p| format!("  {}", p.message)).collect();
            bail!("[processors.{id}.tools] in {}:\n{}", path.display(), lines.join("\n"));
        }
        let mut tools = settings
            .tools
            .build(&sections.build)
            .map_err(|e| anyhow!("[processors.{id}.tools]: {}", slowcat_processors::error::ErrorChain(&e)))?;
        // Nobody listens: a reminder that is due stays in its file for the assistant to say.
        drop(tools.take_announcements());
        let warnings = tools.start().await;
        let specs = tools.specs();
        tools.stop().await;
        writeln!(out, "[processors.{id}] {} tool{}", specs.len(), if specs.len() == 1 { "" } else { "s" })?;
        let name_width = specs.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let source_width = specs.iter().map(|s| s.source.len()).max().unwrap_or(0);
        for spec in &specs {
            let description = spec.description.split_whitespace().collect::<Vec<_>>().join(" ");
            writeln!(out, "  {:name_width$}  {:source_width$}  {description}", spec.name, spec.source)?;
        }
        for warning in warnings {
            eprintln!("warning: [processors.{id}.tools] {warning}");
        }
    }
    Ok(())
}

/// The processors a text turn goes through: from `user_turn` to the last `openai_llm`, or to the
/// end of the pipeline when the reply is spoken. Only those are checked.
fn text_turn_config(path: &Path, sections: Sections, speak: bool) -> anyhow::Result<Config> {
    let name = path.display();
    let kinds: Vec<&str> = sections.processors.iter().map(|(_, kind, _)| kind.name).collect();
    let from = kinds.iter().position(|k| *k == UserTurnSettings::TYPE).with_context(|| {
        format!(
            "{name} has no `user_turn` processor in its pipeline: `slowcat ask` hands its text to user_turn, \
             which makes the LLM request; add one before the LLM"
        )
    })?;
    let last_llm = kinds[from..]
        .iter()
        .rposition(|k| *k == OpenAiLlmSettings::TYPE)
        .map(|i| from + i)
        .with_context(|| format!("{name} has no `openai_llm` processor after `user_turn`: nothing would answer"))?;
    let to = if speak { kinds.len() } else { last_llm + 1 };
    let build = sections.build;
    let mut processors = Vec::new();
    let mut problems = Vec::new();
    for (id, kind, settings) in sections.processors.into_iter().take(to).skip(from) {
        match CheckedSettings::check(settings, &build) {
            Ok(settings) => processors.push(ProcessorEntry { id, kind, settings }),
            Err(found) => problems.extend(found.into_iter().map(|p| match p.key {
                Some(key) => format!("  [processors.{id}] {key}: {}", p.message),
                None => format!("  [processors.{id}] {}", p.message),
            })),
        }
    }
    if !problems.is_empty() {
        bail!("{} problem(s) in {name}:\n{}", problems.len(), problems.join("\n"));
    }
    Ok(Config { path: path.to_path_buf(), build, metrics_file: None, processors })
}

/// `slowcat ask`: sends `text` as the user's words of one turn, prints the reply on stdout as it
/// streams (or, with `speak`, as it was spoken once it has played), and what the assistant says
/// on its own (a filler while tools run, an apology, a reminder that is due) on lines of their
/// own. Memory stores the exchange as for a spoken turn.
pub async fn ask(opts: &AskOptions) -> anyhow::Result<AskOutcome> {
    // The warm-up request would only delay the one real request, which waits for it.
    let sections = sections_for_llms(&opts.config, &opts.overrides, opts.llm_url.as_deref(), &["warmup=false"])?;
    let speaker = sections
        .settings_of::<WhisperSttSettings>()
        .map(|(_, s)| s.speaker.clone())
        .next()
        .unwrap_or_else(|| DEFAULT_SPEAKER.to_string());
    let cfg = text_turn_config(&opts.config, sections, opts.speak)?;
    let processors = crate::app::build_processors(cfg).await?;
    let mut pipeline = Pipeline::spawn(processors, PipelineOptions::default());
    pipeline.start().await;
    const TURN: u64 = 1;
    pipeline
        .send(Frame::Transcription(Box::new(Transcription {
            text: opts.text.clone(),
            speaker,
            turn: TURN,
            start: Duration::ZERO,
            end: Duration::ZERO,
            processing: Duration::ZERO,
        })))
        .await;

    let mut outcome = AskOutcome::default();
    let mut stdout = std::io::stdout();
    // Whether the line on stdout is unfinished (reply text streamed without its newline).
    let mut open_line = false;
    let said = |text: &str, open_line: &mut bool| {
        if *open_line {
            println!();
            *open_line = false;
        }
        println!("{}", text.trim());
    };
    let mut apology_by: Option<tokio::time::Instant> = None;
    let stop = crate::app::stop_requested();
    tokio::pin!(stop);
    loop {
        let next = async {
            match apology_by {
                Some(limit) => tokio::time::timeout_at(limit, pipeline.recv()).await.unwrap_or(None),
                None => pipeline.recv().await,
            }
        };
        let (frame, direction) = tokio::select! {
            _ = &mut stop => {
                pipeline.cancel().await;
                bail!("stopped before the reply was complete");
            }
            next = next => match next {
                Some(out) => out,
                None => break,
            },
        };
        match (frame, direction) {
            (Frame::LlmText(text), Direction::Downstream) => {
                print!("{text}");
                let _ = stdout.flush();
                open_line = true;
                outcome.reply.push_str(&text);
            }
            (Frame::Speak(text), Direction::Downstream) => {
                said(&text, &mut open_line);
                if apology_by.is_some() {
                    break;
                }
            }
            (Frame::Error(e), _) => {
                if open_line {
                    println!();
                    open_line = false;
                }
                eprintln!("error: [processors.{}] {}", e.source, e.message);
                outcome.errors.push(format!("{}: {}", e.source, e.message));
            }
            (Frame::LlmResponseEnd, Direction::Downstream) if !opts.speak => {
                if open_line {
                    println!();
                    open_line = false;
                }
                if !outcome.errors.is_empty() {
                    // The apology follows the failed reply's end.
                    apology_by = Some(tokio::time::Instant::now() + APOLOGY_WAIT);
                    continue;
                }
                // No output device reports what was heard: the reply printed counts as said, so
                // memory stores the exchange as after a spoken turn.
                let reply = SpokenReply { text: outcome.reply.clone(), interrupted: false, turn: TURN };
                pipeline.send_upstream(Frame::SpokenReply(Box::new(reply))).await;
            }
            (Frame::SpokenReply(reply), Direction::Upstream) if reply.turn == TURN => {
                if opts.speak {
                    said(&reply.text, &mut open_line);
                    outcome.reply = reply.text;
                }
                // Memory has taken it on its way up.
                break;
            }
            (Frame::End, Direction::Downstream) => break,
            _ => {}
        }
        if opts.speak && !outcome.errors.is_empty() {
            // The apology is spoken on the way out: `End` follows it through the TTS and output.
            break;
        }
    }
    let shutdown = pipeline.finish().await;
    for (frame, _) in shutdown.frames {
        if let Frame::Error(e) = frame {
            eprintln!("error: [processors.{}] {}", e.source, e.message);
            outcome.errors.push(format!("{}: {}", e.source, e.message));
        }
    }
    for id in &shutdown.hung {
        warn!(processor = %id, "did not stop within the shutdown bound and was abandoned");
    }
    Ok(outcome)
}
