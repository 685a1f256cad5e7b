//! `slowcat bench turn`: Smart Turn's time on a full window, feature extraction and model apart.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use slowcat_processors::PIPELINE_SAMPLE_RATE;
use slowcat_processors::turn::{SmartTurnModel, SmartTurnSettings, WINDOW_SAMPLES};

use crate::host::thread_cpu_time;
use crate::stats::summary;

/// `slowcat bench turn`: times Smart Turn on a full 8 s window, feature extraction and model
/// separately, with one intra-op thread (the default) and with two, and prints the medians.
pub fn bench(models_dir: &Path) -> anyhow::Result<()> {
    const WARMUP: usize = 2;
    const RUNS: usize = 15;
    let path = models_dir.join(SmartTurnSettings::default().model);
    if !path.is_file() {
        bail!("model file {} does not exist; fetch it with `scripts/fetch-models.sh`", path.display());
    }
    let audio = bench_audio(WINDOW_SAMPLES);
    println!("smart turn v3.2 ({}), 8 s window: {RUNS} runs after {WARMUP} warm-up runs", path.display());
    for threads in [1, 2] {
        let began = Instant::now();
        let mut model = SmartTurnModel::load(models_dir, &path, threads)?;
        let load = began.elapsed();
        for _ in 0..WARMUP {
            model.predict(&audio)?;
        }
        let (mut features_ms, mut model_ms, mut total_ms, mut cpu_ms) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let cpu0 = thread_cpu_time();
            let t0 = Instant::now();
            let features = model.features(&audio);
            let t1 = Instant::now();
            model.infer(features)?;
            let t2 = Instant::now();
            features_ms.push((t1 - t0).as_secs_f64() * 1000.0);
            model_ms.push((t2 - t1).as_secs_f64() * 1000.0);
            total_ms.push((t2 - t0).as_secs_f64() * 1000.0);
            if let (Some(a), Some(b)) = (cpu0, thread_cpu_time()) {
                cpu_ms.push((b - a).as_secs_f64() * 1000.0);
            }
        }
        println!("{threads} thread(s), model load {:.0} ms:", load.as_secs_f64() * 1000.0);
        for (name, values) in [("log-mel features", features_ms), ("model", model_ms), ("mel + model", total_ms)] {
            let s = summary(values).unwrap_or_default();
            println!("  {name:<17} median {:7.2} ms   min {:7.2} ms   max {:7.2} ms", s.median, s.min, s.max);
        }
        // With one intra-op thread ONNX Runtime computes on the calling thread, so its CPU time is
        // what the run costs on an idle core, even when other processes share the machine.
        if threads == 1 && !cpu_ms.is_empty() {
            let s = summary(cpu_ms).unwrap_or_default();
            println!("  {:<17} median {:7.2} ms   min {:7.2} ms   max {:7.2} ms", "CPU time", s.median, s.min, s.max);
        }
    }
    Ok(())
}

/// Speech-like test audio: a voiced tone with harmonics, modulated at syllable rate, plus noise.
/// Inference time does not depend on what is said.
fn bench_audio(n: usize) -> Vec<i16> {
    let mut seed = 0x2545_f491_u32;
    (0..n)
        .map(|i| {
            let t = i as f32 / PIPELINE_SAMPLE_RATE as f32;
            let tau = std::f32::consts::TAU;
            let voiced: f32 = (1..6).map(|h| (tau * 140.0 * h as f32 * t).sin() / h as f32).sum();
            let envelope = 0.5 + 0.5 * (tau * 4.0 * t).sin();
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (seed >> 16) as f32 / 65536.0 - 0.5;
            ((0.2 * voiced * envelope + 0.02 * noise) * 32767.0) as i16
        })
        .collect()
}
