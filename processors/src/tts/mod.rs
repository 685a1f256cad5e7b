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
