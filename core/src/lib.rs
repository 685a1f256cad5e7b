//! slowcat's core: the [`Frame`] that flows between processors, the [`Processor`] trait and the
//! contexts through which processors reach the runtime, the [`Pipeline`] that runs them on tokio,
//! processor [`settings`] and the [`Registry`] of processor kinds, and a test [`harness`].
//!
//! It knows no processor: the processors crate registers its kinds in a [`Registry`], and the
//! runtime builds a pipeline from config.toml through it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod harness;
mod lane;
pub mod pipeline;
pub mod processor;
pub mod runtime;
pub mod settings;

pub use frame::{AudioFrame, ChatMessage, Direction, Frame, FrameClass, LlmRequest, MetricName, Role, Transcription};
pub use pipeline::{Pipeline, PipelineOptions, Shutdown};
pub use processor::{
    Accepts, BoxProcessor, BuildContext, FrameSender, ProcessError, Processor, ProcessorContext, Spawner, Waker,
};
pub use settings::{BuildError, CheckedSettings, Kind, Passed, Problem, Registry, Requirement, Settings};

/// The sample rate every processor after the input works at.
pub const PIPELINE_SAMPLE_RATE: u32 = 16_000;
