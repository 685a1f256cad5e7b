//! `slowcat bench conversation`, `soak` and `history`: the whole assistant, measured turn by turn.
//!
//! - `conversation`: short spoken questions (made once with Piper and cached) play in real time
//!   through the pipeline of config.toml, its microphone and speaker swapped for WAV files, each
//!   question once the previous answer has played out. Prints p50/p95 of every stage of a turn,
//!   of voice-to-voice, and of the pipeline's own overhead.
//! - `soak`: the same pipeline for many turns, as fast as it goes (audio is not paced); resident
//!   memory and per-turn latency as the turns pile up.
//! - `history`: text turns against an LLM server, once with stateless memory and once with the
//!   whole conversation sent every turn (the traditional way); time to first token as the
//!   conversation grows.
//!
//! # How a turn's time is accounted
//! Voice-to-voice runs from the end of the user's speech (`user_speech_end_at`: where the VAD
//! found it in the audio) to the first reply sample handed to the output (`first_audio_at`). Six
//! stages, each measured by the processor doing the work, follow each other in that interval:
//!
//! 1. end of turn = `user_turn_end_at − user_speech_end_at`: the VAD's stop wait (`stop_ms` of
//!    silence, heard in real time) and what is left of Smart Turn's inference after it
//!    (`smart_turn_wait`; the inference, `smart_turn_time`, starts at the VAD's pause);
//! 2. `stt_time`: `UserTurnEnded` reaching whisper_stt → transcript ready;
//! 3. `memory_time`: memory injected into the request;
//! 4. `llm_ttfb`: request reaching openai_llm → first token;
//! 5. `llm_first_sentence`: first token reaching the TTS → first complete segment;
//! 6. `tts_ttfb`: segment complete → its first audio.
//!
//! Voice-to-voice minus the six is the pipeline's overhead: frames hopping between processors,
//! wake-ups after blocking work, and any wait no stage owns (memory waiting for an earlier store,
//! audio queued behind a reply still playing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use slowcat_processors::audio::{NextFile, WavInputSettings, WavOutputSettings};
use slowcat_processors::frame::{ChatMessage, Metric, Role, SpokenReply};
use slowcat_processors::harness::Harness;
use slowcat_processors::llm::{OpenAiLlmSettings, UserTurnSettings};
use slowcat_processors::memory::StatelessMemorySettings;
use slowcat_processors::tts::PiperSettings;
use slowcat_processors::{
    BoxProcessor, BuildContext, Direction, Frame, Pipeline, PipelineOptions, ProcessError, Processor, ProcessorContext,
    Settings, Transcription,
};

use crate::config::{self, Override, Rewire};

/// The spoken questions: short, varied, each a complete sentence (so Smart Turn ends the turn
/// without waiting for its timeout). The second names the user and the last asks for it back.
pub const QUESTIONS: &[&str] = &[
    "What is the capital of France?",
    "My name is Alice, and I live in a small town by the sea.",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "How do bees make honey?",
    "What is two plus two?",
    "Tell me a fun fact about the moon.",
    "How far away is the sun from the earth?",
    "Recommend a good book for a rainy afternoon.",
    "Do you remember what my name is?",
];

/// What the user says in `slowcat bench conversation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Speech {
    /// [`QUESTIONS`], spoken by the assistant's own Piper voice.
    Piper,
    /// Recordings of real people: the set in tests/speech (scripts/fetch-speech.sh).
    Human,
}

/// The human speech set's recordings that make a turn each, with what is said in them, in the
/// order of tests/speech/manifest.tsv (fetched into the cache by scripts/fetch-speech.sh when it
/// is not there yet).
pub fn human_utterances() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = repo.join("tests/speech/manifest.tsv");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {} (the human speech set's list)", manifest.display()))?;
    let dir = slowcat_cache().join("speech");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("name\t") && !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(name), Some(words)) = (cols.first(), cols.last()) else { continue };
        out.push((dir.join(format!("{name}.wav")), words.to_string()));
    }
    if out.iter().any(|(p, _)| !p.is_file()) {
        let script = repo.join("scripts/fetch-speech.sh");
        eprintln!("fetching the human speech set with {}", script.display());
        let status = std::process::Command::new(&script).status().context("cannot run scripts/fetch-speech.sh")?;
        if !status.success() {
            bail!("scripts/fetch-speech.sh failed ({status}); see its output above");
        }
    }
    Ok(out)
}

/// The assistant to measure: a config file, changes to it, and optionally another LLM server.
#[derive(Debug, Clone)]
pub struct AssistantConfig {
    /// config.toml.
    pub config: PathBuf,
    /// `--set` changes.
    pub overrides: Vec<Override>,
    /// Base URL for every `openai_llm` processor.
    pub llm_url: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Where generated test speech is kept: `$SLOWCAT_CACHE/bench` or `~/.cache/slowcat/bench`.
pub fn cache_dir() -> PathBuf {
    slowcat_cache().join("bench")
}

/// slowcat's cache directory: `SLOWCAT_CACHE`, else `~/.cache/slowcat`.
fn slowcat_cache() -> PathBuf {
    std::env::var_os("SLOWCAT_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/slowcat")))
        .unwrap_or_else(|| std::env::temp_dir().join("slowcat"))
}

/// FNV-1a: a stable file name for a text (std's hasher may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The questions as 16 kHz WAV files, spoken by Piper (the default voice) the first time and
/// cached in [`cache_dir`].
pub async fn spoken_questions(models_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
    let voice = PiperSettings::default().model;
    let mut paths = Vec::with_capacity(QUESTIONS.len());
    for text in QUESTIONS {
        let path = dir.join(format!("q-{:016x}.wav", fnv1a(&format!("{}\n{text}", voice.display()))));
        if !path.is_file() {
            eprintln!("speaking {text:?} with Piper into {}", path.display());
            say(models_dir, text, &path).await.with_context(|| format!("cannot speak {text:?} with Piper"))?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Speaks `text` with Piper into a 16 kHz WAV file (written aside, then renamed, so an
/// interrupted run never leaves half a question in the cache).
async fn say(models_dir: &Path, text: &str, path: &Path) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let partial = path.with_extension("partial.wav");
    let ctx = BuildContext {
        models_dir: models_dir.to_path_buf(),
        data_dir: scratch.path().to_path_buf(),
        config_dir: scratch.path().to_path_buf(),
    };
    let out = WavOutputSettings { path: partial.clone(), ..WavOutputSettings::default() };
    let (piper, out) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((PiperSettings::default().check_and_build(&ctx)?, out.check_and_build(&ctx)?))
    })
    .await??;
    let h = Harness::start(vec![piper, out]).await;
    h.send(Frame::Speak(text.to_string())).await;
    let output = h.finish(Duration::from_secs(60)).await;
    if let Some(Frame::Error(e)) = output.downstream.iter().find(|f| matches!(f, Frame::Error(_))) {
        bail!("{}: {}", e.source, e.message);
    }
    std::fs::rename(&partial, path).with_context(|| format!("cannot move {} into place", partial.display()))?;
    Ok(())
}

/// The models directory the config names (loaded with its devices as they are).
fn models_dir_of(base: &AssistantConfig) -> anyhow::Result<PathBuf> {
    let cfg = config::load(&base.config, &base.overrides, &Rewire::default()).map_err(|e| anyhow!("{e}"))?;
    Ok(cfg.build.models_dir)
}

/// The config with its microphone replaced by `input` (scripted questions) and its speaker by a
/// WAV file in `dir`, its data (memory) in `dir`, plus `extra` changes (before the user's own).
fn assistant_config(
    base: &AssistantConfig,
    dir: &Path,
    input: WavInputSettings,
    realtime_output: bool,
    extra: &[Override],
) -> anyhow::Result<config::Config> {
    let data_dir = dir.join("data");
    let mut overrides: Vec<Override> =
        vec![format!("data_dir={:?}", data_dir.to_string_lossy()).parse().map_err(anyhow::Error::msg)?];
    overrides.extend_from_slice(extra);
    overrides.extend_from_slice(&base.overrides);
    let answers = dir.join("answers.wav");
    let rewire = Rewire {
        input: Some(input.paths.first().cloned().context("no spoken question to play")?),
        output: Some(answers.clone()),
        llm_url: base.llm_url.clone(),
    };
    let mut cfg = config::load(&base.config, &overrides, &rewire).map_err(|e| anyhow!("{e}"))?;
    let name = base.config.display();
    let input_at = cfg
        .processors
        .iter()
        .position(|p| p.kind.name == slowcat_processors::audio::WavInputSettings::TYPE)
        .with_context(|| format!("{name} has no `mic` (or `wav_input`) for the spoken questions to replace"))?;
    let output_at = cfg
        .processors
        .iter()
        .rposition(|p| p.kind.name == slowcat_processors::audio::WavOutputSettings::TYPE)
        .with_context(|| format!("{name} has no `speaker` (or `wav_output`) for a WAV file to replace"))?;
    // Rewire gives one input file and an output that reports "stopped speaking" as soon as the
    // reply is written; the benchmarks need the scripted list and, in real time, a loudspeaker's
    // timing.
    let checked = |s: Box<dyn slowcat_processors::registry::AnySettings>, build: &slowcat_processors::BuildContext| {
        slowcat_processors::CheckedSettings::check(s, build).map_err(|problems| {
            let lines: Vec<String> = problems.into_iter().map(|p| p.message).collect();
            anyhow!("{}", lines.join("; "))
        })
    };
    cfg.processors[input_at].settings = checked(Box::new(input), &cfg.build)?;
    let output = WavOutputSettings {
        path: answers,
        record_input: false,
        realtime: realtime_output,
        ..WavOutputSettings::default()
    };
    cfg.processors[output_at].settings = checked(Box::new(output), &cfg.build)?;
    Ok(cfg)
}

fn describe(cfg: &config::Config) -> String {
    let ids: Vec<String> = cfg.processors.iter().map(|p| format!("{}({})", p.id, p.kind.name)).collect();
    ids.join(" → ")
}

/// Resident memory of this process (`VmRSS`) or its peak (`VmHWM`), in KiB.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Bytes a directory tree occupies on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// One turn as measured: instants on the pipeline's timeline and stage durations.
#[derive(Debug, Clone, Default)]
struct TurnRecord {
    turn: u64,
    heard: String,
    speech_end: Option<Duration>,
    smart_turn: Option<Duration>,
    smart_wait: Option<Duration>,
    turn_end: Option<Duration>,
    stt: Option<Duration>,
    memory: Option<Duration>,
    llm_ttfb: Option<Duration>,
    first_sentence: Option<Duration>,
    tts_ttfb: Option<Duration>,
    /// `first_audio_at` from the output.
    first_audio_at: Option<Duration>,
    /// When the turn's first `OutputAudio` left the pipeline.
    first_audio_out: Option<Duration>,
    /// Resident memory then.
    rss_kib: Option<u64>,
}

impl TurnRecord {
    fn end_of_turn_ms(&self) -> Option<f64> {
        Some(ms(self.turn_end?) - ms(self.speech_end?))
    }

    fn voice_to_voice_ms(&self) -> Option<f64> {
        Some(ms(self.first_audio_at?) - ms(self.speech_end?))
    }

    /// The six stages, in order, when all were measured.
    fn stages_ms(&self) -> Option<[f64; 6]> {
        Some([
            self.end_of_turn_ms()?,
            ms(self.stt?),
            ms(self.memory?),
            ms(self.llm_ttfb?),
            ms(self.first_sentence?),
            ms(self.tts_ttfb?),
        ])
    }

    fn overhead_ms(&self) -> Option<f64> {
        Some(self.voice_to_voice_ms()? - self.stages_ms()?.iter().sum::<f64>())
    }

    /// End of turn → first reply audio out of the pipeline (the soak's latency: its audio is not
    /// paced, so the end of speech is not on the wall clock).
    fn processing_ms(&self) -> Option<f64> {
        Some(ms(self.first_audio_out?) - ms(self.turn_end?))
    }
}

/// The measurements that come before the turn has its number (the VAD and Smart Turn do not
/// know turn numbers; whisper_stt assigns them).
#[derive(Debug, Default, Clone, Copy)]
struct EndOfTurn {
    speech_end: Option<Duration>,
    smart_turn: Option<Duration>,
    smart_wait: Option<Duration>,
    turn_end: Option<Duration>,
}

/// Joins the frames leaving the pipeline into turn records.
struct Collector {
    epoch: Instant,
    turns: BTreeMap<u64, TurnRecord>,
    /// The user turn being measured.
    open: EndOfTurn,
    /// The last user turn that ended, until its number is known.
    ended: Option<EndOfTurn>,
    /// The turn whose audio is being played.
    audio_turn: u64,
    /// The highest turn whose reply was reported as spoken.
    spoken: u64,
    errors: Vec<String>,
    interruptions: usize,
    /// Print a progress line every this many turns.
    progress_every: Option<u64>,
    started: Instant,
}

impl Collector {
    fn new(progress_every: Option<u64>) -> Self {
        Self {
            epoch: Instant::now(),
            turns: BTreeMap::new(),
            open: EndOfTurn::default(),
            ended: None,
            audio_turn: 0,
            spoken: 0,
            errors: Vec::new(),
            interruptions: 0,
            progress_every,
            started: Instant::now(),
        }
    }

    fn turn(&mut self, n: u64) -> &mut TurnRecord {
        let ended = &mut self.ended;
        self.turns.entry(n).or_insert_with(|| {
            let e = ended.take().unwrap_or_default();
            TurnRecord {
                turn: n,
                speech_end: e.speech_end,
                smart_turn: e.smart_turn,
                smart_wait: e.smart_wait,
                turn_end: e.turn_end,
                ..TurnRecord::default()
            }
        })
    }

    fn on_frame(&mut self, frame: &Frame, dir: Direction) {
        match frame {
            Frame::Metrics(m) => self.on_metric(m),
            Frame::Transcription(t) if dir == Direction::Downstream => self.turn(t.turn).heard = t.text.clone(),
            Frame::TtsStarted { turn, .. } => self.audio_turn = *turn,
            Frame::OutputAudio(_) if self.audio_turn > 0 => {
                let now = self.epoch.elapsed();
                let t = self.turn(self.audio_turn);
                if t.first_audio_out.is_none() {
                    t.first_audio_out = Some(now);
                    t.rss_kib = proc_status_kib("VmRSS:");
                }
            }
            Frame::SpokenReply(r) if dir == Direction::Upstream && r.turn > self.spoken => {
                self.spoken = r.turn;
                if let Some(every) = self.progress_every
                    && r.turn % every == 0
                {
                    let rss = self.turns.get(&r.turn).and_then(|t| t.rss_kib).unwrap_or(0);
                    eprintln!(
                        "… turn {}: {:.0} s, RSS {:.1} MiB, {} errors",
                        r.turn,
                        self.started.elapsed().as_secs_f64(),
                        rss as f64 / 1024.0,
                        self.errors.len()
                    );
                }
            }
            Frame::Error(e) => self.errors.push(format!("{}: {}", e.source, e.message)),
            Frame::Interruption => self.interruptions += 1,
            _ => {}
        }
    }

    fn on_metric(&mut self, m: &Metric) {
        let v = Some(m.value);
        match (m.name, m.turn) {
            ("user_speech_end_at", _) => self.open.speech_end = v,
            ("smart_turn_time", _) => self.open.smart_turn = v,
            ("smart_turn_wait", _) => self.open.smart_wait = v,
            ("user_turn_end_at", _) => {
                self.open.turn_end = v;
                self.ended = Some(std::mem::take(&mut self.open));
            }
            (name, Some(n)) => {
                let t = self.turn(n);
                let slot = match name {
                    "stt_time" => &mut t.stt,
                    "memory_time" => &mut t.memory,
                    "llm_ttfb" => &mut t.llm_ttfb,
                    "llm_first_sentence" => &mut t.first_sentence,
                    "tts_ttfb" => &mut t.tts_ttfb,
                    "first_audio_at" => &mut t.first_audio_at,
                    _ => return,
                };
                // The first of a turn counts: TTS measures every segment, the first is heard first.
                slot.get_or_insert(m.value);
            }
            _ => {}
        }
    }
}

/// Builds and runs the pipeline until end of stream, until `stop_after` turns were spoken, or
/// until `limit`; returns what was measured.
async fn drive(cfg: config::Config, stop_after: u64, limit: Duration, mut c: Collector) -> anyhow::Result<Collector> {
    let processors = crate::app::build_processors(cfg).await?;
    let mut pipeline = Pipeline::spawn(processors, PipelineOptions::default());
    c.epoch = pipeline.epoch();
    c.started = Instant::now();
    pipeline.start().await;
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut fatal = None;
    let graceful = loop {
        tokio::select! {
            _ = &mut deadline => {
                eprintln!("warning: stopped after {} s without finishing", limit.as_secs());
                break false;
            }
            out = pipeline.recv() => {
                let Some((frame, dir)) = out else { break false };
                if frame == Frame::End && dir == Direction::Downstream {
                    break true;
                }
                if let Frame::Error(e) = &frame && !e.recoverable {
                    fatal = Some(format!("{}: {}", e.source, e.message));
                    break false;
                }
                c.on_frame(&frame, dir);
                if c.spoken >= stop_after {
                    break false;
                }
            }
        }
    };
    let shutdown = if graceful { pipeline.finish().await } else { pipeline.cancel().await };
    for (frame, dir) in &shutdown.frames {
        c.on_frame(frame, *dir);
    }
    if let Some(e) = fatal {
        bail!("the pipeline stopped on a fatal error: {e}");
    }
    Ok(c)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    percentile(&sorted(values), 0.5)
}

fn cell(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

/// `slowcat bench conversation`: `turns` spoken questions through the assistant in real time,
/// `runs` times (fresh memory each run); prints every turn, then p50/p95 per stage.
pub async fn conversation(base: &AssistantConfig, turns: usize, runs: usize, speech: Speech) -> anyhow::Result<()> {
    if turns == 0 || runs == 0 {
        bail!("--turns and --runs must be at least 1");
    }
    let (questions, said): (Vec<PathBuf>, Vec<String>) = match speech {
        Speech::Piper => {
            let paths = spoken_questions(&models_dir_of(base)?).await?;
            (paths, QUESTIONS.iter().map(|q| q.to_string()).collect())
        }
        Speech::Human => human_utterances()?.into_iter().unzip(),
    };
    let n = turns.min(questions.len());
    let input = WavInputSettings {
        paths: questions[..n].to_vec(),
        repeat: turns.div_ceil(n) as u32,
        next: NextFile::AfterReply,
        realtime: true,
        // A reply of 256 tokens plays for a minute or more: the next question must not talk over it.
        reply_timeout_ms: 300_000,
        ..WavInputSettings::default()
    };
    let mut all: Vec<(usize, TurnRecord)> = Vec::new();
    let mut errors = Vec::new();
    let mut interruptions = 0;
    let mut pipeline_desc = String::new();
    for run in 1..=runs {
        let dir = tempfile::tempdir()?;
        let cfg = assistant_config(base, dir.path(), input.clone(), true, &[])?;
        pipeline_desc = describe(&cfg);
        eprintln!("run {run}/{runs}: {turns} turns in real time through {pipeline_desc}");
        let limit = Duration::from_secs(120 + 400 * turns as u64);
        let c = drive(cfg, turns as u64, limit, Collector::new(None)).await?;
        errors.extend(c.errors);
        interruptions += c.interruptions;
        all.extend(c.turns.into_values().filter(|t| t.turn <= turns as u64).map(|t| (run, t)));
    }

    println!(
        "slowcat bench conversation: {turns} spoken turns × {runs} run(s), config {}, LLM {}",
        base.config.display(),
        base.llm_url.as_deref().unwrap_or("(from the config)")
    );
    println!("pipeline: {pipeline_desc}");
    println!(
        "input: {} speech, wav_input, real time, next utterance after the answer has played; output: wav_output (real time)",
        match speech {
            Speech::Piper => "Piper",
            Speech::Human => "real human",
        }
    );
    println!();
    println!(
        "{:>3} {:>4} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  heard",
        "run", "turn", "eot", "smart", "stt", "memory", "ttfb", "sent", "tts", "v2v", "ovh"
    );
    for (run, t) in &all {
        println!(
            "{:>3} {:>4} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
            run,
            t.turn,
            cell(t.end_of_turn_ms()),
            cell(t.smart_turn.map(ms)),
            cell(t.stt.map(ms)),
            t.memory.map(|d| format!("{:.2}", ms(d))).unwrap_or_else(|| "-".into()),
            cell(t.llm_ttfb.map(ms)),
            cell(t.first_sentence.map(ms)),
            cell(t.tts_ttfb.map(ms)),
            cell(t.voice_to_voice_ms()),
            t.overhead_ms().map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            t.heard
        );
        // What was said, where it was not heard word for word.
        let i = (t.turn as usize).saturating_sub(1) % n;
        if let Some(said) = said.get(i)
            && normalized(said) != normalized(&t.heard)
        {
            println!("{:>52}  said: {said}", "");
        }
    }
    let turns_only: Vec<&TurnRecord> = all.iter().map(|(_, t)| t).collect();
    print_stage_table(&turns_only);
    if runs > 1 {
        let per_run: Vec<String> = (1..=runs)
            .map(|r| {
                let v = all.iter().filter(|(run, _)| *run == r).filter_map(|(_, t)| t.voice_to_voice_ms());
                format!("{:.0}", median(v))
            })
            .collect();
        println!("voice-to-voice p50 per run (ms): {}", per_run.join(", "));
    }
    let complete = turns_only.iter().filter(|t| t.overhead_ms().is_some()).count();
    println!("turns fully measured: {complete} of {}", turns * runs);
    report_problems(&errors, interruptions);
    Ok(())
}

/// Lower-case words without punctuation, to compare what was said with what was heard.
fn normalized(text: &str) -> String {
    text.split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_stage_table(turns: &[&TurnRecord]) {
    type Stage = fn(&TurnRecord) -> Option<f64>;
    let rows: [(&str, Stage); 12] = [
        ("end of turn (VAD stop wait + smart turn)", |t| t.end_of_turn_ms()),
        ("  of which smart turn after the stop", |t| t.smart_wait.map(ms)),
        ("  of which VAD stop wait and hops", |t| Some(t.end_of_turn_ms()? - ms(t.smart_wait?))),
        ("  (smart turn inference, from the pause)", |t| t.smart_turn.map(ms)),
        ("speech to text", |t| t.stt.map(ms)),
        ("memory", |t| t.memory.map(ms)),
        ("LLM time to first token", |t| t.llm_ttfb.map(ms)),
        ("LLM first sentence", |t| t.first_sentence.map(ms)),
        ("TTS time to first audio", |t| t.tts_ttfb.map(ms)),
        ("sum of the six stages", |t| Some(t.stages_ms()?.iter().sum())),
        ("voice to voice", |t| t.voice_to_voice_ms()),
        ("pipeline overhead (v2v − stages)", |t| t.overhead_ms()),
    ];
    println!();
    println!("{:<42} {:>9} {:>9} {:>9} {:>9} {:>4}", "stage (ms)", "p50", "p95", "min", "max", "n");
    for (name, f) in rows {
        let v = sorted(turns.iter().filter_map(|t| f(t)));
        let fmt = |x: f64| if x.abs() < 10.0 { format!("{x:.2}") } else { format!("{x:.0}") };
        if v.is_empty() {
            println!("{name:<42} {:>9}", "-");
            continue;
        }
        println!(
            "{name:<42} {:>9} {:>9} {:>9} {:>9} {:>4}",
            fmt(percentile(&v, 0.5)),
            fmt(percentile(&v, 0.95)),
            fmt(v[0]),
            fmt(v[v.len() - 1]),
            v.len()
        );
    }
}

fn report_problems(errors: &[String], interruptions: usize) {
    if interruptions > 0 {
        println!("interruptions: {interruptions} (the user's next question overlapped a reply)");
    }
    if !errors.is_empty() {
        println!("errors: {}", errors.len());
        for e in errors.iter().take(5) {
            println!("  {e}");
        }
    }
}

/// `slowcat bench soak`: `turns` spoken turns through the assistant as fast as it goes, replies
/// cut to `max_tokens`; resident memory and latency at the turns in `at`.
pub async fn soak(base: &AssistantConfig, turns: usize, max_tokens: u32, at: &[usize]) -> anyhow::Result<()> {
    if turns == 0 {
        bail!("--turns must be at least 1");
    }
    let questions = spoken_questions(&models_dir_of(base)?).await?;
    let n = turns.min(questions.len());
    let input = WavInputSettings {
        paths: questions[..n].to_vec(),
        repeat: turns.div_ceil(n) as u32,
        next: NextFile::AfterReply,
        realtime: false,
        // A turn that gets no reply (the LLM failed, or the transcript was empty) must not stall
        // the run: the next file comes after this bounded wait. (Smart Turn's fallback timeout
        // fires on its own now, also while this unpaced input sends no audio.)
        reply_timeout_ms: 20_000,
        ..WavInputSettings::default()
    };
    let dir = tempfile::tempdir()?;
    let probe = assistant_config(base, dir.path(), input.clone(), false, &[])?;
    let llm_ids: Vec<Override> = probe
        .llm_endpoints()
        .iter()
        .map(|(id, _, _)| format!("processors.{id}.max_tokens={max_tokens}").parse().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    drop(probe);
    let cfg = assistant_config(base, dir.path(), input, false, &llm_ids)?;
    let desc = describe(&cfg);
    eprintln!("soak: {turns} turns, not paced, through {desc}");
    let rss_before = proc_status_kib("VmRSS:");
    let started = Instant::now();
    let limit = Duration::from_secs(600 + 60 * turns as u64);
    let c = drive(cfg, turns as u64, limit, Collector::new(Some(50))).await?;
    let wall = started.elapsed();
    let records: Vec<&TurnRecord> = c.turns.values().filter(|t| t.turn <= turns as u64).collect();

    println!(
        "slowcat bench soak: {turns} turns, max_tokens {max_tokens}, config {}, LLM {}",
        base.config.display(),
        base.llm_url.as_deref().unwrap_or("(from the config)")
    );
    println!("pipeline: {desc}");
    println!("input: wav_input, not paced (realtime = false); output: wav_output");
    println!(
        "turns answered: {} of {turns} in {:.0} s ({:.2} s per turn)",
        records.iter().filter(|t| t.first_audio_out.is_some()).count(),
        wall.as_secs_f64(),
        wall.as_secs_f64() / turns as f64
    );
    println!();
    println!(
        "latency = end of turn (UserTurnEnded) → first reply audio out of the pipeline; window = median of the 10 turns up to it"
    );
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "turn", "RSS MiB", "latency", "window", "smart", "stt", "memory", "ttfb", "sent", "tts"
    );
    for &k in at.iter().filter(|&&k| k >= 1 && k <= turns) {
        let Some(t) = c.turns.get(&(k as u64)) else {
            println!("{k:>6} (not measured)");
            continue;
        };
        let window =
            median(c.turns.range((k.saturating_sub(9)) as u64..=k as u64).filter_map(|(_, t)| t.processing_ms()));
        println!(
            "{:>6} {:>9} {:>9} {:>9.0} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            k,
            t.rss_kib.map(|r| format!("{:.1}", r as f64 / 1024.0)).unwrap_or_else(|| "-".into()),
            cell(t.processing_ms()),
            window,
            cell(t.smart_turn.map(ms)),
            cell(t.stt.map(ms)),
            t.memory.map(|d| format!("{:.2}", ms(d))).unwrap_or_else(|| "-".into()),
            cell(t.llm_ttfb.map(ms)),
            cell(t.first_sentence.map(ms)),
            cell(t.tts_ttfb.map(ms)),
        );
    }
    let rss = sorted(records.iter().filter_map(|t| t.rss_kib).map(|r| r as f64 / 1024.0));
    if !rss.is_empty() {
        println!(
            "RSS over the run: min {:.1} MiB, max {:.1} MiB (before building: {:.1} MiB; peak VmHWM {:.1} MiB)",
            rss[0],
            rss[rss.len() - 1],
            rss_before.unwrap_or(0) as f64 / 1024.0,
            proc_status_kib("VmHWM:").unwrap_or(0) as f64 / 1024.0
        );
    }
    println!("memory database on disk: {:.1} MiB", disk_usage(&dir.path().join("data")) as f64 / (1024.0 * 1024.0));
    report_problems(&c.errors, c.interruptions);
    Ok(())
}

/// The user's words in turn `n` of the history benchmark: a name first, then questions on many
/// topics (none repeats within 200 turns).
pub fn history_message(n: usize) -> String {
    const TOPICS: [&str; 25] = [
        "the moon",
        "volcanoes",
        "honey bees",
        "the Roman empire",
        "jazz music",
        "black holes",
        "coffee",
        "ocean tides",
        "penguins",
        "rainbows",
        "chess",
        "the human heart",
        "electric cars",
        "the Sahara desert",
        "green tea",
        "lightning",
        "the printing press",
        "octopuses",
        "glaciers",
        "the piano",
        "baking bread",
        "sleep",
        "the internet",
        "Mount Everest",
        "whales",
    ];
    const ASKS: [&str; 8] = [
        "Tell me one fact about {}.",
        "What is the most surprising thing about {}?",
        "Why do people like {}?",
        "Explain {} to a child.",
        "What should I know about {}?",
        "Give me a tip related to {}.",
        "How old is the idea of {}?",
        "What is a common myth about {}?",
    ];
    if n <= 1 {
        return "Hi, my name is Sam, and I live in Lisbon.".into();
    }
    let i = n - 2;
    ASKS[(i / TOPICS.len()) % ASKS.len()].replace("{}", TOPICS[i % TOPICS.len()])
}

/// The traditional way: every request carries the whole conversation so far.
#[derive(Default)]
struct FullHistory {
    history: Vec<ChatMessage>,
    /// The user's words per turn, until the reply comes back.
    asked: BTreeMap<u64, String>,
}

#[async_trait]
impl Processor for FullHistory {
    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        match (frame, dir) {
            (Frame::LlmRequest(mut r), Direction::Downstream) => {
                if let Some(user) = r.last_user_message() {
                    self.asked.insert(r.turn, user.to_string());
                }
                // After the system message, before this turn's question.
                let at = r.messages.iter().take_while(|m| m.role == Role::System).count();
                r.messages.splice(at..at, self.history.iter().cloned());
                ctx.push(Frame::LlmRequest(r), dir).await;
            }
            (Frame::SpokenReply(s), Direction::Upstream) => {
                if let Some(user) = self.asked.remove(&s.turn)
                    && !s.text.trim().is_empty()
                {
                    self.history.push(ChatMessage::new(Role::User, user));
                    self.history.push(ChatMessage::new(Role::Assistant, s.text.clone()));
                }
                ctx.push(Frame::SpokenReply(s), dir).await;
            }
            (frame, dir) => {
                ctx.push(frame, dir).await;
            }
        }
        Ok(())
    }
}

/// Size of each turn's LLM request: (messages, characters).
type RequestSizes = Arc<Mutex<BTreeMap<u64, (usize, usize)>>>;

/// Notes the size of each LLM request on its way to the LLM.
struct RequestProbe(RequestSizes);

#[async_trait]
impl Processor for RequestProbe {
    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        if let Frame::LlmRequest(r) = &frame {
            let chars = r.messages.iter().map(|m| m.content.chars().count()).sum();
            self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(r.turn, (r.messages.len(), chars));
        }
        ctx.push(frame, dir).await;
        Ok(())
    }
}

/// Stands in for TTS and speaker in the text-only benchmark: reports each reply upstream as
/// spoken, whole, the way the output device does, so memory stores it.
#[derive(Default)]
struct ReplyAsSpoken {
    turn: u64,
    text: String,
}

#[async_trait]
impl Processor for ReplyAsSpoken {
    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        match &frame {
            Frame::LlmResponseStart { turn } => {
                self.turn = *turn;
                self.text.clear();
            }
            Frame::LlmText(t) => self.text.push_str(t),
            _ => {}
        }
        let ended = matches!(frame, Frame::LlmResponseEnd);
        ctx.push(frame, dir).await;
        if ended {
            let reply = SpokenReply { text: std::mem::take(&mut self.text), interrupted: false, turn: self.turn };
            ctx.push_upstream(Frame::SpokenReply(Box::new(reply))).await;
        }
        Ok(())
    }
}

/// One turn of the history benchmark.
#[derive(Debug, Clone, Default)]
struct HistoryTurn {
    ttfb: Option<Duration>,
    messages: usize,
    chars: usize,
}

/// The two ways of giving the LLM the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Stateless,
    FullHistory,
}

/// Text turns through user_turn → (memory | full history) → openai_llm → a stand-in speaker.
async fn history_run(
    how: Context,
    url: &str,
    turns: usize,
    max_tokens: u32,
) -> anyhow::Result<(Vec<HistoryTurn>, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let ctx = BuildContext::for_dir(dir.path());
    let llm_toml = format!(
        "base_url = {url:?}\nmax_tokens = {max_tokens}\ntemperature = 0.0\nfirst_token_timeout_ms = 120000\ntotal_timeout_ms = 300000"
    );
    let sizes: RequestSizes = Arc::default();
    let probe = RequestProbe(sizes.clone());
    let processors = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, BoxProcessor)>> {
        let user_turn = toml::from_str::<UserTurnSettings>("")?.check_and_build(&ctx)?;
        let context: BoxProcessor = match how {
            Context::Stateless => toml::from_str::<StatelessMemorySettings>("")?.check_and_build(&ctx)?,
            Context::FullHistory => Box::new(FullHistory::default()),
        };
        let llm = toml::from_str::<OpenAiLlmSettings>(&llm_toml)?.check_and_build(&ctx)?;
        Ok(vec![
            ("user_turn".into(), user_turn),
            ("context".into(), context),
            ("probe".into(), Box::new(probe)),
            ("llm".into(), llm),
            ("spoken".into(), Box::new(ReplyAsSpoken::default())),
        ])
    })
    .await??;
    let mut pipeline = Pipeline::spawn(processors, PipelineOptions::default());
    pipeline.start().await;
    let mut results = vec![HistoryTurn::default(); turns];
    let mut errors = Vec::new();
    let started = Instant::now();
    for n in 1..=turns as u64 {
        pipeline
            .send(Frame::Transcription(Box::new(Transcription {
                text: history_message(n as usize),
                speaker: "default".into(),
                turn: n,
                start: Duration::ZERO,
                end: Duration::ZERO,
                processing: Duration::ZERO,
            })))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let Ok(out) = tokio::time::timeout_at(deadline, pipeline.recv()).await else {
                let _ = pipeline.cancel().await;
                bail!("turn {n} got no reply within 300 s");
            };
            let Some((frame, dir)) = out else { bail!("the pipeline stopped at turn {n}") };
            match frame {
                Frame::Metrics(m) if m.name == "llm_ttfb" && m.turn == Some(n) => {
                    results[n as usize - 1].ttfb = Some(m.value)
                }
                Frame::Error(e) => errors.push(format!("turn {n}: {}: {}", e.source, e.message)),
                Frame::SpokenReply(r) if dir == Direction::Upstream && r.turn == n => break,
                _ => {}
            }
        }
        if n % 25 == 0 {
            eprintln!("… {how:?}: turn {n} after {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    let _ = pipeline.cancel().await;
    let sizes = sizes.lock().unwrap_or_else(PoisonError::into_inner);
    for (turn, &(messages, chars)) in sizes.iter() {
        if let Some(r) = results.get_mut(*turn as usize - 1) {
            r.messages = messages;
            r.chars = chars;
        }
    }
    Ok((results, errors))
}

/// `slowcat bench history`: `turns` text turns with stateless memory, then with the whole history
/// in every request, against the server at `url`; time to first token at the turns in `at`.
pub async fn history(url: &str, turns: usize, max_tokens: u32, at: &[usize]) -> anyhow::Result<()> {
    if turns == 0 {
        bail!("--turns must be at least 1");
    }
    let mut runs = Vec::new();
    for how in [Context::Stateless, Context::FullHistory] {
        eprintln!("{how:?}: {turns} turns against {url}");
        runs.push((how, history_run(how, url, turns, max_tokens).await?));
    }
    println!("slowcat bench history: {turns} text turns, max_tokens {max_tokens}, temperature 0, LLM {url}");
    println!("the reply reaches memory through a stand-in for TTS and speaker (each reply counts as spoken whole)");
    println!("ttfb = LLM request → first token; window = median of the 5 turns up to it; ~tokens = characters / 4");
    println!();
    println!(
        "{:>5} | {:>18} {:>8} {:>5} {:>8} | {:>18} {:>8} {:>5} {:>8}",
        "turn", "stateless ttfb ms", "window", "msgs", "~tokens", "full-history ttfb", "window", "msgs", "~tokens"
    );
    for &k in at.iter().filter(|&&k| k >= 1 && k <= turns) {
        let mut line = format!("{k:>5}");
        for (_, (results, _)) in &runs {
            let r = &results[k - 1];
            let window = median(results[k.saturating_sub(5)..k].iter().filter_map(|r| r.ttfb).map(ms));
            line += &format!(" | {:>18} {:>8.0} {:>5} {:>8}", cell(r.ttfb.map(ms)), window, r.messages, r.chars / 4);
        }
        println!("{line}");
    }
    for (how, (_, errors)) in &runs {
        if !errors.is_empty() {
            println!("{how:?}: {} errors, first: {}", errors.len(), errors[0]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_messages_do_not_repeat_within_200_turns() {
        let all: std::collections::HashSet<String> = (1..=200).map(history_message).collect();
        assert_eq!(all.len(), 200);
        assert!(history_message(1).contains("Sam"));
    }

    #[test]
    fn stages_tile_voice_to_voice_and_the_rest_is_overhead() {
        let d = Duration::from_millis;
        let t = TurnRecord {
            speech_end: Some(d(1000)),
            turn_end: Some(d(1450)),
            stt: Some(d(150)),
            memory: Some(d(1)),
            llm_ttfb: Some(d(100)),
            first_sentence: Some(d(90)),
            tts_ttfb: Some(d(80)),
            first_audio_at: Some(d(1874)),
            ..TurnRecord::default()
        };
        assert_eq!(t.voice_to_voice_ms(), Some(874.0));
        assert!((t.overhead_ms().unwrap() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn turn_less_measurements_join_the_next_numbered_turn() {
        let mut c = Collector::new(None);
        let m = |name, turn, ms| {
            Frame::Metrics(Box::new(Metric { source: "x".into(), turn, name, value: Duration::from_millis(ms) }))
        };
        for f in [
            m("user_speech_end_at", None, 500),
            m("user_speech_end_at", None, 1000),
            m("smart_turn_time", None, 200),
            m("smart_turn_wait", None, 20),
            m("user_turn_end_at", None, 1400),
            m("stt_time", Some(1), 150),
            m("tts_ttfb", Some(1), 80),
            m("tts_ttfb", Some(1), 300),
        ] {
            c.on_frame(&f, Direction::Downstream);
        }
        let t = &c.turns[&1];
        assert_eq!(t.end_of_turn_ms(), Some(400.0));
        assert_eq!(t.smart_turn, Some(Duration::from_millis(200)));
        assert_eq!(t.smart_wait, Some(Duration::from_millis(20)));
        assert_eq!(t.tts_ttfb, Some(Duration::from_millis(80)), "the first segment's counts");
    }
}
