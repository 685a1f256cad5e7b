//! Speech to text: `whisper_stt` (whisper.cpp through whisper-rs).

pub mod engine;
mod whisper;

pub use engine::{
    AUDIO_CTX_FLOOR, AudioCtx, Guards, Recognized, SttError, WhisperEngine, clean_transcript, repeats_itself,
};
pub use whisper::{EndTurnOn, STT_TIME_METRIC, WhisperStt, WhisperSttSettings};
