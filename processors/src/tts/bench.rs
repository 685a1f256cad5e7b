//! `slowcat bench tts`: Piper's time from a complete first sentence to its first audio, and its
//! real-time factor. Figures, not assertions: run it on an idle machine, in a release build.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::piper::{Overrides, Piper, PiperSettings, PiperVoice};
use crate::frame::Frame;
use crate::harness::Harness;
use crate::processor::BuildContext;
use crate::registry::Settings as _;

/// Runs per figure; the median is printed.
const RUNS: usize = 7;

/// A 10-word sentence, as the target is stated for.
const FIRST: &str = "Tomorrow the weather will be sunny with a light breeze.";

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

    println!("\nreal-time factor (synthesis time / audio length), one segment at a time:");
    println!("{:<8} {:>9} {:>11} {:>8}  text", "threads", "audio", "synthesis", "RTF");
    for threads in [1, 2] {
        let started = Instant::now();
        let voice = PiperVoice::load(models_dir, &model, &config, threads, Overrides::default())?;
        let load = started.elapsed();
        let piper = Piper::new(voice);
        piper.synthesize_clip("Warming up.").await?;
        for text in SENTENCES {
            let mut times = Vec::new();
            let mut audio = Duration::ZERO;
            for _ in 0..RUNS {
                let t = Instant::now();
                let clip = piper.synthesize_clip(text).await?;
                times.push(t.elapsed());
                audio = Duration::from_secs_f64(clip.len() as f64 / f64::from(piper.sample_rate()));
            }
            let synth = median(times);
            println!(
                "{threads:<8} {:>7.2} s {:>11} {:>8.3}  {text:?}",
                audio.as_secs_f64(),
                ms(synth),
                synth.as_secs_f64() / audio.as_secs_f64()
            );
        }
        println!("(session load with {threads} thread(s): {})", ms(load));
    }

    println!("\ntime from a complete 10-word first sentence to its first audio frame out of `piper_tts`:");
    println!("  {FIRST:?}");
    println!("{:<44} {:>8} {:>8} {:>8}", "first segment", "median", "min", "max");
    let ctx = BuildContext {
        models_dir: models_dir.to_path_buf(),
        data_dir: std::env::temp_dir(),
        config_dir: std::env::temp_dir(),
    };
    let variants: [(&str, usize, usize); 4] = [
        ("whole sentence", 0, 0),
        ("cut after 8 words", 3, 8),
        ("cut after 6 words", 3, 6),
        ("cut after 4 words", 3, 4),
    ];
    for (name, clause, words) in variants {
        let settings = PiperSettings { first_clause_words: clause, first_max_words: words, ..PiperSettings::default() };
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
        println!("{:<44} {:>8} {:>8} {:>8}", format!("{name}: {first_text:?}"), ms(median(times)), ms(min), ms(max));
    }
    println!("\ntarget: at most 150 ms from a complete 10-word sentence to its first audio on 2 cores");
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
