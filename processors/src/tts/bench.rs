//! `slowcat bench tts`: Piper's time from a complete first sentence to its first audio, and its
//! real-time factor. Figures, not assertions: run it on an idle machine, in a release build.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use ort::session::RunOptions;

use super::piper::{Overrides, PiperSettings, PiperVoice};
use crate::frame::Frame;
use crate::harness::Harness;
use crate::processor::BuildContext;
use crate::registry::Settings as _;

/// Runs per figure; the median is printed.
const RUNS: usize = 7;

/// A 10-word sentence, as the target is stated for.
const FIRST: &str = "Tomorrow the weather will be sunny with a light breeze.";

/// The first segments the variants below cut `FIRST` into.
const FIRST_SEGMENTS: &[&str] =
    &["Tomorrow the weather will be sunny with a", "Tomorrow the weather will be sunny", "Tomorrow the weather will"];

const SENTENCES: &[&str] = &[
    "Hello.",
    "The weather today is sunny.",
    FIRST,
    "I would take a long walk in the park, then have lunch with a friend near the river.",
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the TTS benchmark with the voice in `models_dir` and prints a table.
pub fn bench(models_dir: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(models_dir))
}

async fn run(models_dir: &Path) -> anyhow::Result<()> {
    let defaults = PiperSettings::default();
    let model = models_dir.join(&defaults.model);
    let config = models_dir.join(format!("{}.json", defaults.model.display()));
    anyhow::ensure!(model.is_file(), "{} does not exist; fetch it with `scripts/fetch-models.sh`", model.display());
    println!("slowcat bench tts: Piper {} , median of {RUNS} runs", defaults.model.display());
    println!("machine: {} logical CPUs; load average {}", num_cpus(), load_average());

    println!("\nreal-time factor (synthesis time / audio length), one segment at a time; `on-CPU` is the time");
    println!("the synthesizing thread actually ran (1 thread only): what the wall time would be on an idle core.");
    println!("{:<8} {:>9} {:>11} {:>8} {:>9} {:>9}  text", "threads", "audio", "synthesis", "RTF", "on-CPU", "CPU RTF");
    let mut cpu_cost = std::collections::HashMap::new();
    for threads in [1, 2] {
        let started = Instant::now();
        let mut voice = PiperVoice::load(models_dir, &model, &config, threads, Overrides::default())?;
        let load = started.elapsed();
        let options = RunOptions::new().map_err(|e| anyhow::anyhow!("{e}"))?;
        // Blocking on this thread is fine here: nothing else runs, and it makes the thread's
        // CPU time the synthesis's.
        voice.synthesize("Warming up.", &options)?;
        let rate = f64::from(voice.sample_rate());
        for text in SENTENCES.iter().chain(FIRST_SEGMENTS) {
            let mut times = Vec::new();
            let mut cpu = Vec::new();
            let mut audio = Duration::ZERO;
            for _ in 0..RUNS {
                let (t, c) = (Instant::now(), thread_cpu());
                let clip = voice.synthesize(text, &options)?;
                times.push(t.elapsed());
                if let (Some(before), Some(after)) = (c, thread_cpu()) {
                    cpu.push(after.saturating_sub(before));
                }
                audio = Duration::from_secs_f64(clip.len() as f64 / rate);
            }
            let synth = median(times);
            let (cpu_s, cpu_rtf) = if threads == 1 && cpu.len() == RUNS {
                let c = median(cpu);
                cpu_cost.insert(*text, c);
                (ms(c), format!("{:.3}", c.as_secs_f64() / audio.as_secs_f64()))
            } else {
                ("-".to_string(), "-".to_string())
            };
            println!(
                "{threads:<8} {:>7.2} s {:>11} {:>8.3} {cpu_s:>9} {cpu_rtf:>9}  {text:?}",
                audio.as_secs_f64(),
                ms(synth),
                synth.as_secs_f64() / audio.as_secs_f64()
            );
        }
        println!("(session load with {threads} thread(s): {})", ms(load));
    }

    println!("\ntime from a complete 10-word first sentence to its first audio frame out of `piper_tts`:");
    println!("  {FIRST:?}");
    println!("(`on-CPU`: the first segment's synthesis on-CPU time from the table above: the figure on an idle core)");
    println!("{:<72} {:>8} {:>8} {:>8} {:>8}", "settings: first segment", "median", "min", "max", "on-CPU");
    let ctx = BuildContext {
        models_dir: models_dir.to_path_buf(),
        data_dir: std::env::temp_dir(),
        config_dir: std::env::temp_dir(),
    };
    let variants: [(&str, usize, usize, usize); 6] = [
        ("1 thread, whole sentence", 1, 0, 0),
        ("1 thread, cut after 8 words", 1, 3, 8),
        ("1 thread, cut after 6 words", 1, 3, 6),
        ("1 thread, cut after 4 words", 1, 3, 4),
        ("2 threads, whole sentence", 2, 0, 0),
        ("2 threads, cut after 6 words", 2, 3, 6),
    ];
    for (name, threads, clause, words) in variants {
        let settings =
            PiperSettings { threads, first_clause_words: clause, first_max_words: words, ..PiperSettings::default() };
        let mut times = Vec::new();
        let mut first_text = String::new();
        let tts = settings.clone().build(&ctx).context("building piper_tts")?;
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
            // The first run warms the session up; it is not counted.
            if run > 0 {
                times.push(elapsed);
            }
        }
        h.cancel().await;
        let (min, max) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        let cpu = cpu_cost.get(first_text.as_str()).map_or("-".to_string(), |c| ms(*c));
        println!(
            "{:<72} {:>8} {:>8} {:>8} {cpu:>8}",
            format!("{name}: {first_text:?}"),
            ms(median(times)),
            ms(min),
            ms(max)
        );
    }
    println!("\ntarget: at most 150 ms from a complete 10-word sentence to its first audio on 2 cores");
    Ok(())
}

/// Time the calling thread has spent on a CPU (Linux: /proc/thread-self/schedstat).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
