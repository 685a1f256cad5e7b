//! Audio in and out: WAV files, and the conversions the device processors share.

pub mod devices;
mod mic;
mod played;
pub mod resample;
mod speaker;
mod wav_input;
mod wav_output;

pub use mic::{Mic, MicError, MicSettings};
pub use played::PlayedText;
pub use speaker::{Speaker, SpeakerSettings, SpeakerStats};
pub use wav_input::{NextFile, WavInput, WavInputSettings, read_wav_mono};
pub use wav_output::{WavOutput, WavOutputSettings};
