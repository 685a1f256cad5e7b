//! Shared helpers of the end-to-end tests: real models, the real LLM server, speech made with
//! our own Piper processor and heard back with our own Whisper processor.
#![allow(dead_code)]

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
    settings.build(ctx).unwrap_or_else(|e| panic!("cannot build {}: {e:#}", S::TYPE))
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
