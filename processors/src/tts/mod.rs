//! Speech out: LLM text gathered into sentences and synthesized one by one as soon as each is
//! complete, with Piper, espeak-ng or an OpenAI-compatible server.

pub mod espeak;
mod espeak_tts;
mod openai_tts;
pub mod pcm;
mod piper;
mod stream;
pub mod text;

pub use espeak_tts::{Espeak, EspeakTtsSettings};
pub use openai_tts::{OpenAiSpeech, OpenAiTtsSettings, ResponseFormat};
pub use piper::{Overrides, Piper, PiperSettings, PiperVoice};
pub use stream::{AudioOut, StreamOptions, StreamingTts, Synthesizer};

use std::path::PathBuf;

/// Why a voice could not load or a segment could not be spoken.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// The audio a synthesizer returned is not playable.
    #[error(transparent)]
    Pcm(#[from] pcm::PcmError),
    /// espeak-ng could not phonemize.
    #[error(transparent)]
    Espeak(#[from] espeak::EspeakError),
    /// ONNX Runtime or the voice model would not load.
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    /// The voice config file cannot be read.
    #[error("cannot read the Piper voice config {}", .path.display())]
    ReadVoiceConfig {
        /// The config file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The voice config is not Piper's JSON.
    #[error("{} is not a Piper voice config", .path.display())]
    ParseVoiceConfig {
        /// The config file.
        path: PathBuf,
        /// Where the JSON is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The voice uses another phonemizer than espeak.
    #[error("{}: phoneme_type {kind:?} is not supported (only espeak voices are)", .path.display())]
    PhonemeType {
        /// The config file.
        path: PathBuf,
        /// Its phoneme type.
        kind: String,
    },
    /// The voice config lacks one of the phonemes framing every text.
    #[error("{}: phoneme_id_map has no {phoneme:?}", .path.display())]
    MissingPhoneme {
        /// The config file.
        path: PathBuf,
        /// The phoneme.
        phoneme: char,
    },
    /// espeak-ng cannot speak the voice's language.
    #[error("the voice {} needs espeak-ng", .model.display())]
    VoiceNeedsEspeak {
        /// The voice model.
        model: PathBuf,
        /// What espeak-ng said.
        #[source]
        source: espeak::EspeakError,
    },
    /// The model lacks an input every Piper voice has.
    #[error("{} is not a Piper voice: it has no input {input:?} (inputs: {inputs:?})", .model.display())]
    NotPiper {
        /// The model file.
        model: PathBuf,
        /// The missing input.
        input: &'static str,
        /// The inputs it has.
        inputs: Vec<String>,
    },
    /// The configured speaker is not in the voice.
    #[error("speaker {speaker} does not exist: the voice has {speakers} speaker(s)")]
    NoSpeaker {
        /// The configured speaker.
        speaker: i64,
        /// Speakers in the voice.
        speakers: u32,
    },
    /// Piper's model failed on a segment.
    #[error("Piper inference failed")]
    PiperInference(#[source] ort::Error),
    /// The blocking synthesis task panicked.
    #[error("the synthesis thread failed")]
    SynthesisThread(#[source] tokio::task::JoinError),
    /// The synthesis program cannot be started.
    #[error("cannot run {}", .program.display())]
    Run {
        /// The program.
        program: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the synthesis program failed midway.
    #[error("the pipe to {} broke", .program.display())]
    Pipe {
        /// The program.
        program: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// espeak-ng exited with an error.
    #[error("espeak-ng failed ({status}): {stderr}")]
    EspeakFailed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        stderr: String,
    },
    /// The HTTP client cannot be made (TLS set-up).
    #[error("cannot create the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The TTS server did not answer.
    #[error("cannot reach the TTS server at {url}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The reason.
        #[source]
        source: reqwest::Error,
    },
    /// The TTS server answered with an error status.
    #[error("the TTS server at {url} answered {status}: {detail}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The start of its reply.
        detail: String,
    },
    /// The audio stopped before its end.
    #[error("the audio from {url} broke off")]
    BrokeOff {
        /// The endpoint.
        url: String,
        /// The reason.
        #[source]
        source: reqwest::Error,
    },
    /// The TTS server answered without audio.
    #[error("the TTS server at {url} sent no audio")]
    NoAudio {
        /// The endpoint.
        url: String,
    },
}
