//! Audio in and out: WAV files, and the conversions the device processors share.

pub mod devices;
mod mic;
mod played;
pub mod resample;
mod speaker;
mod wav_input;
mod wav_output;

use std::path::PathBuf;

pub use mic::{Mic, MicError, MicSettings};
pub use played::PlayedText;
pub use speaker::{Speaker, SpeakerSettings, SpeakerStats};
pub use wav_input::{NextFile, WavInput, WavInputSettings, read_wav_mono};
pub use wav_output::{WavOutput, WavOutputSettings};

/// Why a WAV file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// The file is missing, unreadable or not a WAV file.
    #[error("cannot read WAV file {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// hound's reason.
        #[source]
        source: hound::Error,
    },
    /// The file cannot be created (a missing directory, no permission).
    #[error("cannot create output WAV {}", .path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// hound's reason.
        #[source]
        source: hound::Error,
    },
    /// The file's rate cannot be converted to the one wanted.
    #[error("cannot resample {} from {rate} Hz", .path.display())]
    Resample {
        /// The file.
        path: PathBuf,
        /// The file's rate.
        rate: u32,
        /// The resampler's reason.
        #[source]
        source: resample::ResampleError,
    },
}
