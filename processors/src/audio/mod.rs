//! Audio in and out: WAV files, and the conversions the device processors share.

pub mod resample;
mod wav_input;
mod wav_output;

pub use wav_input::{WavInput, WavInputSettings, read_wav_mono};
pub use wav_output::{WavOutput, WavOutputSettings};
