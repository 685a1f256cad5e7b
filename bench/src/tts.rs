//! `slowcat bench tts`: Piper's time from a complete first sentence to its first audio, and its
//! real-time factor. Figures, not assertions: run it on an idle machine, in a release build.
//!
//! Set `SLOWCAT_BENCH_LLM=http://127.0.0.1:18089/v1` (an OpenAI-compatible server) to also measure
//! both while the LLM generates, and the LLM's speed while Piper synthesizes: in a conversation
//! they share the cores.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ort::session::RunOptions;
use slowcat_processors::frame::Frame;
use slowcat_processors::harness::Harness;
use slowcat_processors::onnx::{SessionOptions, Spin};
use slowcat_processors::tts::{Overrides, Piper, PiperSettings, PiperVoice, StreamingTts};
use slowcat_processors::{BoxProcessor, BuildContext, Settings as _};

use crate::host::{load_average_or_unknown as load_average, logical_cpus, thread_cpu_time};
use crate::stats::{median, summary};

/// Runs per figure; the median is printed.
const RUNS: usize = 7;

/// A 10-word sentence, as the target is stated for.
const FIRST: &str = "Tomorrow the weather will be sunny with a light breeze.";

/// The first segments the variants below cut `FIRST` into.
const FIRST_SEGMENTS: &[&str] = &[
    "Tomorrow the weather will be sunny",
    "Tomorrow the weather will",
    "Tomorrow the weather",
    "will be sunny with a light breeze.",
];

const SENTENCES: &[&str] = &[
    "Hello.",
    "The weather today is sunny.",
    FIRST,
    "I would take a long walk in the park, then have lunch with a friend near the river.",
];

/// The ONNX Runtime set-ups compared: (name, threads, what idle intra-op threads do).
const SESSIONS: &[(&str, usize, Spin)] = &[
    ("1 thread", 1, Spin::Never),
    ("2 threads, spinning", 2, Spin::Always),
    ("2 threads, spin in runs", 2, Spin::DuringRuns),
    ("2 threads, no spinning", 2, Spin::Never),
];

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the TTS benchmark with the voice in `models_dir` and prints a table.
pub fn bench(models_dir: &Path) -> anyhow::Result<()> {
    let rt = slowcat_processors::runtime::build()?;
    rt.block_on(run(models_dir))
}

struct Voice {
    model: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Voice {
    fn load(&self, models_dir: &Path, threads: usize, spin: Spin) -> anyhow::Result<PiperVoice> {
        let session = SessionOptions { threads, spin };
        Ok(PiperVoice::load_with(models_dir, &self.model, &self.config, &session, Overrides::default())?)
    }
}

async fn run(models_dir: &Path) -> anyhow::Result<()> {
    let defaults = PiperSettings::default();
    let voice = Voice {
        model: models_dir.join(&defaults.model),
        config: models_dir.join(format!("{}.json", defaults.model.display())),
    };
    anyhow::ensure!(
        voice.model.is_file(),
        "{} does not exist; fetch it with `scripts/fetch-models.sh`",
        voice.model.display()
    );
    println!("slowcat bench tts: Piper {} , median of {RUNS} runs", defaults.model.display());
    println!("machine: {} logical CPUs; load average {}", logical_cpus(), load_average());

    println!("\nphonemization (espeak-ng, before inference), median:");
    let v = voice.load(models_dir, 1, Spin::Never)?;
    for text in [FIRST_SEGMENTS[2], FIRST] {
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            v.phoneme_ids(text)?;
            times.push(t.elapsed());
        }
        println!("  {:>8}  {text:?}", format!("{:.2} ms", median(times).unwrap_or_default().as_secs_f64() * 1000.0));
    }
    drop(v);

    println!("\nreal-time factor (synthesis time / audio length), one segment at a time; `on-CPU` is the time");
    println!("the synthesizing thread actually ran (1 thread only): what the wall time would be on an idle core.");
    println!("{:<24} {:>7} {:>9} {:>7} {:>8} {:>7}  text", "session", "audio", "synthesis", "RTF", "on-CPU", "CPU RTF");
    let mut cpu_cost = std::collections::HashMap::new();
    for &(name, threads, spin) in SESSIONS {
        let started = Instant::now();
        let mut v = voice.load(models_dir, threads, spin)?;
        let load = started.elapsed();
        let options = RunOptions::new().map_err(|e| anyhow::anyhow!("{e}"))?;
        // Blocking on this thread is fine here: nothing else runs, and it makes the thread's
        // CPU time the synthesis's.
        v.synthesize("Warming up.", &options)?;
        let rate = f64::from(v.sample_rate());
        for text in SENTENCES.iter().chain(FIRST_SEGMENTS) {
            let mut times = Vec::new();
            let mut cpu = Vec::new();
            let mut audio = Duration::ZERO;
            for _ in 0..RUNS {
                let (t, c) = (Instant::now(), thread_cpu_time());
                let clip = v.synthesize(text, &options)?;
                times.push(t.elapsed());
                if let (Some(before), Some(after)) = (c, thread_cpu_time()) {
                    cpu.push(after.saturating_sub(before));
                }
                audio = Duration::from_secs_f64(clip.len() as f64 / rate);
            }
            let synth = median(times).unwrap_or_default();
            let (cpu_s, cpu_rtf) = if threads == 1 && cpu.len() == RUNS {
                let c = median(cpu).unwrap_or_default();
                cpu_cost.insert(*text, c);
                (ms(c), format!("{:.3}", c.as_secs_f64() / audio.as_secs_f64()))
            } else {
                ("-".to_string(), "-".to_string())
            };
            println!(
                "{name:<24} {:>5.2} s {:>9} {:>7.3} {cpu_s:>8} {cpu_rtf:>7}  {text:?}",
                audio.as_secs_f64(),
                ms(synth),
                synth.as_secs_f64() / audio.as_secs_f64()
            );
        }
        println!("(session load, {name}: {})", ms(load));
    }

    println!("\ntime from a complete 10-word first sentence to its first audio frame out of `piper_tts`:");
    println!("  {FIRST:?}");
    println!("(`on-CPU`: the first segment's synthesis on-CPU time from the table above: the figure on an idle core;");
    println!(" `phrase ≤N`: cut at a phrase boundary after at least 3 words when the sentence runs past N words)");
    println!("{:<72} {:>8} {:>8} {:>8} {:>8}", "settings: first segment", "median", "min", "max", "on-CPU");
    let ctx = BuildContext {
        models_dir: models_dir.to_path_buf(),
        data_dir: std::env::temp_dir(),
        config_dir: std::env::temp_dir(),
    };
    // (name, threads, spin, first_clause_words, first_max_words)
    let variants: [(&str, usize, Spin, usize, usize); 7] = [
        ("1 thread, whole sentence", 1, Spin::Never, 0, 0),
        ("1 thread, 6 words", 1, Spin::Never, 6, 6),
        ("1 thread, phrase ≤5", 1, Spin::Never, 3, 5),
        ("2 threads not spinning, phrase ≤5", 2, Spin::Never, 3, 5),
        ("2 threads, whole sentence", 2, Spin::DuringRuns, 0, 0),
        ("2 threads, 6 words", 2, Spin::DuringRuns, 6, 6),
        ("2 threads, phrase ≤5", 2, Spin::DuringRuns, 3, 5),
    ];
    for (name, threads, spin, clause, words) in variants {
        let settings = PiperSettings { first_clause_words: clause, first_max_words: words, ..PiperSettings::default() };
        let v = voice.load(models_dir, threads, spin)?;
        let tts: BoxProcessor = Box::new(StreamingTts::new(Piper::new(v), settings.stream_options()));
        let (times, first_text) = first_audio(tts).await?;
        print_first_audio(name, &first_text, times, &cpu_cost);
    }
    let tts = defaults.clone().check_and_build(&ctx).context("building piper_tts")?;
    let (default_times, first_text) = first_audio(tts).await?;
    let default_name = format!("DEFAULT ({} thread(s), phrase ≤{})", defaults.threads, defaults.first_max_words);
    print_first_audio(&default_name, &first_text, default_times.clone(), &cpu_cost);

    if let Some(url) = std::env::var("SLOWCAT_BENCH_LLM").ok().filter(|u| !u.is_empty()) {
        contention(models_dir, &voice, &url).await?;
    } else {
        println!("\n(set SLOWCAT_BENCH_LLM=<OpenAI-compatible base URL> to also measure with the LLM generating)");
    }

    println!(
        "\nconfigured default (PiperSettings::default / config.toml): {} thread(s), first piece cut at a phrase \
         boundary within {} words: {} from a complete 10-word sentence to its first audio (median; load \
         average {})",
        defaults.threads,
        defaults.first_max_words,
        ms(median(default_times).unwrap_or_default()),
        load_average()
    );
    println!("target: at most 150 ms from a complete 10-word sentence to its first audio on 2 cores");
    println!("load average at the end: {}", load_average());
    Ok(())
}

fn print_first_audio(
    name: &str,
    first_text: &str,
    times: Vec<Duration>,
    cpu_cost: &std::collections::HashMap<&str, Duration>,
) {
    let s = summary(times).unwrap_or_default();
    let cpu = cpu_cost.get(first_text).map_or("-".to_string(), |c| ms(*c));
    println!(
        "{:<72} {:>8} {:>8} {:>8} {cpu:>8}",
        format!("{name}: {first_text:?}"),
        ms(s.median),
        ms(s.min),
        ms(s.max)
    );
}

/// Sends `FIRST` to `tts` RUNS + 1 times and returns the times to its first audio frame (the
/// first run warms up and is not counted) and the text of the first segment.
async fn first_audio(tts: BoxProcessor) -> anyhow::Result<(Vec<Duration>, String)> {
    let mut times = Vec::new();
    let mut first_text = String::new();
    let mut h = Harness::start(vec![tts]).await;
    for run in 0..=RUNS {
        h.send(Frame::LlmResponseStart { turn: run as u64 }).await;
        let t = Instant::now();
        // The sentence and the first word of the next: the sentence is complete.
        h.send(Frame::LlmText(format!("{FIRST} Then"))).await;
        let first = h.wait_for(Duration::from_secs(30), |f, _| matches!(f, Frame::OutputAudio(_))).await;
        let elapsed = t.elapsed();
        anyhow::ensure!(first.is_some(), "no audio within 30 s");
        if let Some(text) = h.output().downstream.iter().rev().find_map(|f| match f {
            Frame::TtsStarted { text, .. } => Some(text.clone()),
            _ => None,
        }) {
            first_text = text;
        }
        // Drop the rest of the reply, as a barge-in would, before the next run.
        h.send(Frame::Interruption).await;
        h.wait_for(Duration::from_secs(10), |f, _| matches!(f, Frame::Interruption)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if run > 0 {
            times.push(elapsed);
        }
    }
    h.cancel().await;
    Ok((times, first_text))
}

/// Streams completions from the LLM server until `stop`, counting generated tokens.
async fn llm_load(url: String, stop: Arc<AtomicBool>, tokens: Arc<AtomicU64>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let endpoint = format!("{}/chat/completions", url.trim_end_matches('/'));
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "Tell me a long story about a dog and a cat."}],
        "max_tokens": 48,
        "stream": false,
    });
    while !stop.load(Ordering::Relaxed) {
        let reply: serde_json::Value = client
            .post(&endpoint)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach the LLM server at {endpoint}"))?
            .error_for_status()?
            .json()
            .await?;
        let n = reply["usage"]["completion_tokens"].as_u64().context("the LLM reply has no usage")?;
        tokens.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

/// The LLM's tokens per second over `window` while `work` runs (or idle when `work` is `None`).
struct LlmMeter {
    stop: Arc<AtomicBool>,
    tokens: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    started: Instant,
}

impl LlmMeter {
    async fn start(url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(llm_load(url.to_string(), stop.clone(), tokens.clone()));
        // Let it reach steady generation before anything is counted.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokens.store(0, Ordering::Relaxed);
        Self { stop, tokens, task, started: Instant::now() }
    }

    async fn finish(self) -> anyhow::Result<f64> {
        let rate = self.tokens.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the LLM load task failed")??;
        Ok(rate)
    }
}

async fn contention(models_dir: &Path, voice: &Voice, url: &str) -> anyhow::Result<()> {
    println!("\nwith the LLM at {url} generating meanwhile (48-token completions back to back):");
    let idle = LlmMeter::start(url).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!("LLM alone: {:.1} tokens/s (completed requests only)", idle.finish().await?);
    println!(
        "{:<24} {:>14} {:>12} {:>16} {:>12}",
        "session", "first audio", "LLM tok/s", "Piper RTF busy", "LLM tok/s"
    );
    for &(name, threads, spin) in SESSIONS {
        let settings = PiperSettings { first_clause_words: 3, first_max_words: 5, ..PiperSettings::default() };
        let v = voice.load(models_dir, threads, spin)?;
        let tts: BoxProcessor = Box::new(StreamingTts::new(Piper::new(v), settings.stream_options()));
        let meter = LlmMeter::start(url).await;
        let (times, _) = first_audio(tts).await?;
        let rate_first = meter.finish().await?;

        // Piper synthesizing a reply back to back (as while it is spoken) with the LLM busy.
        let mut v = voice.load(models_dir, threads, spin)?;
        let meter = LlmMeter::start(url).await;
        let (audio, synth) = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
            let options = RunOptions::new().map_err(|e| anyhow::anyhow!("{e}"))?;
            let rate = f64::from(v.sample_rate());
            let (mut audio, t) = (0.0, Instant::now());
            while t.elapsed() < Duration::from_secs(6) {
                for text in SENTENCES {
                    audio += v.synthesize(text, &options)?.len() as f64 / rate;
                }
            }
            Ok((audio, t.elapsed().as_secs_f64()))
        })
        .await??;
        let rate_busy = meter.finish().await?;
        println!(
            "{name:<24} {:>14} {rate_first:>12.1} {:>16.3} {rate_busy:>12.1}",
            ms(median(times).unwrap_or_default()),
            synth / audio
        );
    }
    println!("(first audio: `phrase ≤5` cut, median; LLM tok/s beside it: during those runs, 200 ms pauses included;");
    println!(" Piper RTF busy: synthesizing sentences back to back for 6 s, the LLM's speed beside it)");
    Ok(())
}
