//! Shared helpers of the speech-out tests: model paths, Whisper, word error rate.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use slowcat_processors::BuildContext;
use slowcat_processors::audio::resample::resample_clip;
use slowcat_processors::stt::{AudioCtx, WhisperEngine};

/// The models directory: `SLOWCAT_MODELS_DIR`, else `<repo>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("SLOWCAT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// The path of a model file; fails the test with what to run when it is missing.
pub fn model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(p.is_file(), "model {} is missing: run `scripts/fetch-models.sh` (or set SLOWCAT_MODELS_DIR)", p.display());
    p
}

/// A build context reading models from the models directory.
pub fn build_context() -> BuildContext {
    let dir = std::env::temp_dir();
    BuildContext { models_dir: models_dir(), data_dir: dir.clone(), config_dir: dir }
}

/// Whisper tiny.en, for reading synthesized speech back.
pub fn whisper() -> WhisperEngine {
    // One thread: ggml threads spin while waiting for each other, which collapses on a busy machine.
    WhisperEngine::load(&model("ggml-tiny.en.bin"), 1, "en", AudioCtx::Auto).expect("whisper loads")
}

/// Transcribes mono i16 audio at any rate.
pub fn transcribe(whisper: &mut WhisperEngine, samples: &[i16], rate: u32) -> String {
    let f: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let f = resample_clip(&f, rate, 16_000).unwrap();
    // Whisper's full window: windows sized to short clips make tiny.en repeat itself.
    whisper.transcribe_with(&f, AudioCtx::Fixed(0)).expect("whisper transcribes").text
}

/// Word error rate of `hyp` against `reference`: word-level edit distance over the reference's
/// word count, counted by the scorer the human-speech tests and benchmarks use (case,
/// punctuation and the spelling of numbers aside).
pub fn wer(reference: &str, hyp: &str) -> f64 {
    let (errors, words) = slowcat_bench::score::word_errors(reference, hyp);
    errors as f64 / words.max(1) as f64
}

/// Splits text into chunks of a few characters, like an LLM's token stream.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c == ' ' && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The part of a recording between its first and last sound (plus 0.2 s), so Whisper does
/// not hallucinate over long silences.
pub fn trim_silence(samples: &[i16], rate: u32) -> &[i16] {
    let loud = |s: &i16| s.unsigned_abs() > 500;
    let margin = rate as usize / 5;
    let Some(first) = samples.iter().position(loud) else { return &samples[..0] };
    let last = samples.iter().rposition(loud).unwrap_or(first);
    &samples[first.saturating_sub(margin)..(last + margin).min(samples.len())]
}
