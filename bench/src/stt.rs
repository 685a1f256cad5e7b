//! `slowcat bench stt`: Whisper time per utterance length, and VAD time per 20 ms frame.
//!
//! Figures on this 2-core AMD EPYC (Zen 1, AVX2) VM, tiny.en, 2 threads, `auto` window, machine
//! otherwise idle: 1 s 133 ms, 3 s 300 ms, 8 s 601 ms; the full 30 s window 2.2–2.6 s. Before
//! llamafile's tinyBLAS was switched on (.cargo/config.toml) they were 236, 496 and 1126 ms, and
//! 3.9–4.1 s: ggml's default f16 matrix product is a row-by-row dot-product loop. Rounding the
//! window to a multiple of 8 (engine.rs) then took another 11 % of CPU off the 3 s case (1 thread:
//! 928 ms of CPU before, 548 with tinyBLAS, 486 with both). What is left is about 60 % encoder and
//! 35 % decoder; the decoder's share is mostly the 51864 × 384 f16 logits product per token.
//! The same model with Q8_0 weights (`ggml-tiny.en-q8_0.bin`, the default since) is 20–25 %
//! faster: medians of six runs at load 1.0–1.1, 1 s 84–98 ms (f16 110–124), 3 s 198 ms (f16 257),
//! 8 s 391–477 ms (f16 507–598); 1 thread 3 s 299–349 ms (f16 413–481). The words were the same
//! on 40 espeak and Piper clips but for this bench's 8 s one. Flash attention and OpenMP measured
//! no faster (see engine.rs; flash attention with Q8_0 3 s 211–242 ms), nor did switching off
//! timestamps (190–206 ms). With another process on one core, 2 threads spin and take seconds:
//! compare the 1-thread rows then. Since the `auto` window has a floor of 512 frames (engine.rs,
//! #15: smaller windows loop on short real speech) the 1 s and 3 s cases cost more: Q8_0 on
//! 1 thread, machine at load 4–5, 1 s 105–161 → 409–421 ms, 3 s 226 → 435 ms, 8 s 496 → 495 ms.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use slowcat_processors::PIPELINE_SAMPLE_RATE;
use slowcat_processors::audio::read_wav_mono;
use slowcat_processors::frame::AudioFrame;
use slowcat_processors::stt::{AudioCtx, WhisperEngine};
use slowcat_processors::vad::{Decision, Detector, SileroDetector, VadCore, WebRtcDetector};

use crate::host::load_average_or_unknown as load_average;
use crate::stats::{median, summary};

/// Runs per measurement; the median is reported.
const RUNS: usize = 5;
/// Whisper threads, as the default config uses.
const THREADS: usize = 2;
/// The tiny.en files compared: the f16 conversion and its Q8_0 quantization (both from
/// `scripts/fetch-models.sh`).
const MODELS: [(&str, &str); 2] = [("f16", "ggml-tiny.en.bin"), ("q8_0", "ggml-tiny.en-q8_0.bin")];
/// Utterances of about 1, 3 and 8 s.
const UTTERANCES: [(f32, &str); 3] = [
    (1.0, "Yes, please."),
    (3.0, "Can you remind me to call my mother at six o'clock?"),
    (
        8.0,
        "What is the weather like tomorrow in Paris? I would like to go for a walk along the river \
         and then have dinner with my friends.",
    ),
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Speech from espeak-ng at 16 kHz, padded or cut to `secs`.
fn speech(text: &str, secs: f32, dir: &Path) -> anyhow::Result<Vec<i16>> {
    let wav = dir.join("utterance.wav");
    let out = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .output()
        .context("cannot run espeak-ng to make test speech; install it (scripts/setup-system.sh)")?;
    if !out.status.success() {
        return Err(anyhow!("espeak-ng failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let mut samples = read_wav_mono(&wav, PIPELINE_SAMPLE_RATE)?;
    samples.resize((secs * PIPELINE_SAMPLE_RATE as f32) as usize, 0);
    Ok(samples)
}

/// Measures and prints the speech-in figures: Whisper tiny.en (f16 and Q8_0 weights) on 2 threads
/// for 1, 3 and 8 s utterances (encoder window sized to the utterance, and whisper's full window
/// for comparison), and the time both VADs take per 20 ms frame. Needs espeak-ng for the speech.
pub fn bench(models_dir: &Path) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("slowcat-bench-stt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(models_dir, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(models_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    let models: Vec<(&str, PathBuf)> = MODELS.iter().map(|&(label, file)| (label, models_dir.join(file))).collect();
    let mut utterances = Vec::new();
    for (secs, text) in UTTERANCES {
        let audio: Vec<f32> = speech(text, secs, dir)?.iter().map(|&s| f32::from(s) / 32768.0).collect();
        utterances.push((secs, audio));
    }
    for (label, path) in &models {
        println!("Whisper tiny.en {label}: {}", path.display());
    }
    println!("median after one warm-up, the models taking turns run by run; load average {}", load_average());
    println!(
        "(ggml's threads spin at every step: on a machine busy with other work 2 threads can be far slower than 1)"
    );
    println!(
        "{:>7}  {:>5}  {:>7}  {:>10}  {:>4}  {:>10}  {:>9}  {:>9}  text",
        "audio", "model", "threads", "audio_ctx", "runs", "median ms", "min ms", "max ms"
    );
    // The full window only for comparison, and fewer runs of it: it is the slow case.
    for (threads, ctx, runs) in
        [(THREADS, AudioCtx::Auto, RUNS), (THREADS, AudioCtx::Fixed(0), 3), (1, AudioCtx::Auto, RUNS)]
    {
        let mut engines = Vec::with_capacity(models.len());
        for (label, path) in &models {
            engines.push((*label, WhisperEngine::load(path, threads, "en", ctx)?));
        }
        for (secs, audio) in &utterances {
            let mut firsts = Vec::with_capacity(engines.len());
            for (_, engine) in &mut engines {
                firsts.push(engine.transcribe(audio)?);
            }
            // Alternating the models spreads the machine's other work evenly over both.
            let mut times = vec![Vec::with_capacity(runs); engines.len()];
            for _ in 0..runs {
                for ((_, engine), t) in engines.iter_mut().zip(&mut times) {
                    t.push(engine.transcribe(audio)?.elapsed);
                }
            }
            for (((label, _), first), times) in engines.iter().zip(&firsts).zip(times) {
                let s = summary(times).unwrap_or_default();
                let window = match ctx {
                    AudioCtx::Auto => format!("auto {}", first.audio_ctx),
                    AudioCtx::Fixed(_) => "full 1500".to_string(),
                };
                println!(
                    "{:>6.1}s  {:>5}  {:>7}  {:>10}  {:>4}  {:>10.0}  {:>9.0}  {:>9.0}  {:?}",
                    secs,
                    label,
                    threads,
                    window,
                    runs,
                    ms(s.median),
                    ms(s.min),
                    ms(s.max),
                    first.text
                );
            }
        }
    }

    // 10 s: speech, silence, speech, as a microphone would deliver it.
    let mut stream = speech(UTTERANCES[2].1, 8.0, dir)?;
    stream.extend(std::iter::repeat_n(0i16, 2 * PIPELINE_SAMPLE_RATE as usize));
    let frames: Vec<AudioFrame> = stream
        .chunks(320)
        .enumerate()
        .map(|(i, c)| AudioFrame::new(c.to_vec(), PIPELINE_SAMPLE_RATE, 1, Duration::from_millis(20 * i as u64)))
        .collect();
    println!();
    println!(
        "VAD per 20 ms frame ({} frames of speech and silence), median of {RUNS} runs; load average {}",
        frames.len(),
        load_average()
    );
    println!("{:>10}  {:>14}  {:>12}", "vad", "median µs", "max µs");
    let silero = models_dir.join("silero_vad.onnx");
    let decision = Decision { on: 0.5, off: 0.35, min_volume_db: -45.0 };
    time_vad("silero", &frames, decision, || Ok(SileroDetector::load(models_dir, &silero, 1)?))?;
    let yes_no = Decision { on: 0.5, off: 0.5, ..decision };
    time_vad("webrtc", &frames, yes_no, || Ok(WebRtcDetector::new(2, 20)))?;

    // What moving each frame's detection to a blocking thread would cost instead.
    let rt = slowcat_processors::runtime::build()?;
    let hop = rt.block_on(async {
        let mut times = Vec::with_capacity(200);
        for _ in 0..200 {
            let t = Instant::now();
            let _ = tokio::task::spawn_blocking(|| ()).await;
            times.push(t.elapsed());
        }
        median(times).unwrap_or_default()
    });
    println!("{:>10}  {:>14.1}  {:>12}", "(spawn_blocking hop, no work)", hop.as_secs_f64() * 1e6, "");
    Ok(())
}

/// Prints the median time per frame of a fresh detector over `frames` (after one warm-up pass),
/// and the slowest single frame seen.
fn time_vad<D: Detector>(
    name: &str,
    frames: &[AudioFrame],
    decision: Decision,
    make: impl Fn() -> anyhow::Result<D>,
) -> anyhow::Result<()> {
    let start = Duration::from_millis(200);
    let mut per_frame = Vec::with_capacity(RUNS);
    let mut worst = Duration::ZERO;
    for run in 0..=RUNS {
        let mut core = VadCore::new(make()?, decision, start, start);
        let started = Instant::now();
        for f in frames {
            let t = Instant::now();
            core.push(f)?;
            if run > 0 {
                worst = worst.max(t.elapsed());
            }
        }
        if run > 0 {
            per_frame.push(started.elapsed() / frames.len() as u32);
        }
    }
    println!(
        "{:>10}  {:>14.1}  {:>12.1}",
        name,
        median(per_frame).unwrap_or_default().as_secs_f64() * 1e6,
        worst.as_secs_f64() * 1e6
    );
    Ok(())
}
