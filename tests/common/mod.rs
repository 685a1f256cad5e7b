//! Shared helpers of the end-to-end tests: real models, the real LLM server, speech made with
//! our own Piper processor and heard back with our own Whisper processor.
#![allow(dead_code)]

pub mod pulse;

use std::path::{Path, PathBuf};
use std::time::Duration;

use slowcat_processors::harness::Harness;
use slowcat_processors::{BoxProcessor, BuildContext, Direction, Frame, Settings};

/// The models directory: `SLOWCAT_MODELS_DIR`, else `<repo>/models`.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("SLOWCAT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    assert!(
        dir.join("ggml-tiny.en.bin").is_file() && dir.join("ggml-tiny.en-q8_0.bin").is_file(),
        "models are missing in {}: run scripts/fetch-models.sh (scripts/test.sh does it)",
        dir.display()
    );
    dir
}

/// The base URL of the real LLM server the tests talk to.
pub fn llm_url() -> String {
    std::env::var("SLOWCAT_LLM_URL").unwrap_or_else(|_| {
        panic!(
            "SLOWCAT_LLM_URL is not set: run the tests with scripts/test.sh, or start a server with \
             `scripts/llm-server.sh start` and export SLOWCAT_LLM_URL=$(scripts/llm-server.sh url)"
        )
    })
}

/// A build context with the real models and a private data directory.
pub fn build_ctx(dir: &Path) -> BuildContext {
    BuildContext { models_dir: models_dir(), data_dir: dir.join("data"), config_dir: dir.to_path_buf() }
}

/// Builds a processor from its TOML settings, as config.toml would.
pub fn build<S: Settings>(ctx: &BuildContext, toml_settings: &str) -> BoxProcessor {
    let settings: S = toml::from_str(toml_settings).unwrap_or_else(|e| panic!("bad test settings: {e}"));
    settings
        .check_and_build(ctx)
        .unwrap_or_else(|e| panic!("cannot build {}: {}", S::TYPE, slowcat_processors::error::ErrorChain(&e)))
}

/// Speaks `text` with Piper into a 16 kHz WAV file, with `lead_ms` of silence before it.
pub async fn say(dir: &Path, text: &str, path: &Path) {
    use slowcat_processors::audio::WavOutputSettings;
    use slowcat_processors::tts::PiperSettings;
    let ctx = build_ctx(dir);
    let piper = build::<PiperSettings>(&ctx, "");
    let out = build::<WavOutputSettings>(&ctx, &format!("path = {:?}", path.to_str().unwrap()));
    let h = Harness::start(vec![piper, out]).await;
    h.send(Frame::Speak(text.to_string())).await;
    h.finish(Duration::from_secs(60)).await;
}

/// What Whisper hears in a WAV file (every utterance, joined).
pub async fn transcribe(dir: &Path, path: &Path) -> String {
    use slowcat_processors::audio::WavInputSettings;
    use slowcat_processors::stt::WhisperSttSettings;
    use slowcat_processors::vad::SileroVadSettings;
    let ctx = build_ctx(dir);
    let input = build::<WavInputSettings>(&ctx, &format!("path = {:?}\nrealtime = false", path.to_str().unwrap()));
    let vad = build::<SileroVadSettings>(&ctx, "stop_ms = 600");
    let stt = build::<WhisperSttSettings>(&ctx, "end_turn_on = \"user_stopped_speaking\"");
    let mut h = Harness::start(vec![input, vad, stt]).await;
    // End of stream from the file travels behind its audio and every transcription.
    let ended =
        h.wait_for(Duration::from_secs(120), |f, d| matches!(f, Frame::End) && d == Direction::Downstream).await;
    assert!(ended.is_some(), "transcribing {} did not finish", path.display());
    let out = h.cancel().await;
    out.downstream
        .iter()
        .filter_map(|f| match f {
            Frame::Transcription(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lower-case words without punctuation.
pub fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// One recording of a real person from the human speech set (tests/speech/manifest.tsv).
pub struct Utterance {
    /// Its name in the manifest.
    pub name: String,
    /// The 16 kHz mono WAV in the cache.
    pub path: PathBuf,
    /// What the person says.
    pub words: String,
}

/// The human speech set, in manifest order; fetched with scripts/fetch-speech.sh when it is not
/// in the cache yet.
pub fn human_speech() -> Vec<Utterance> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("SLOWCAT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap()).join(".cache/slowcat"));
    let manifest = std::fs::read_to_string(repo.join("tests/speech/manifest.tsv")).unwrap();
    let set: Vec<Utterance> = manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("name\t") && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            Utterance {
                name: cols[0].to_string(),
                path: cache.join("speech").join(format!("{}.wav", cols[0])),
                words: cols[cols.len() - 1].to_string(),
            }
        })
        .collect();
    if set.iter().any(|u| !u.path.is_file()) {
        let out = std::process::Command::new(repo.join("scripts/fetch-speech.sh")).output().unwrap();
        assert!(out.status.success(), "scripts/fetch-speech.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    set
}

// The scoring of processors/tests/speech_in_human.rs and `slowcat bench conversation --speech
// human`, so the pipeline's figure and the engine's are counted the same way.
use slowcat_bench::score;

/// Word errors in `heard` against `said` (the Levenshtein distance between their word lists,
/// case, punctuation and the spelling of numbers aside), and the number of words said.
pub fn word_errors(said: &str, heard: &str) -> (usize, usize) {
    score::word_errors(said, heard)
}

/// The longest run of one word said again and again in `text` ("W, W, W" is 3).
pub fn longest_repeat(text: &str) -> usize {
    let w = words(text);
    let mut best = usize::from(!w.is_empty());
    let mut run = 1;
    for pair in w.windows(2) {
        run = if pair[0] == pair[1] { run + 1 } else { 1 };
        best = best.max(run);
    }
    best
}
