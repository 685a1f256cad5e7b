//! Speech to text: `whisper_stt` (whisper.cpp through whisper-rs).

mod bench;
pub mod engine;
mod whisper;

pub use bench::bench;
pub use engine::{AudioCtx, Recognized, WhisperEngine, clean_transcript};
pub use whisper::{EndTurnOn, STT_TIME_METRIC, WhisperStt, WhisperSttSettings};
