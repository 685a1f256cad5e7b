//! slowcat's processors: one module per processor family, and [`register_all`], the one list that
//! registers their kinds. The frame type, the processor trait, the pipeline and the settings types
//! live in [`slowcat_core`]; they are re-exported here under their module names.

pub use slowcat_core::{PIPELINE_SAMPLE_RATE, frame, harness, pipeline, processor, runtime};
pub mod registry;

pub mod audio;
pub mod basic;
pub mod error;
pub mod llm;
pub mod memory;
pub mod onnx;
pub mod stt;
pub mod tools;
pub mod tts;
pub mod turn;
pub mod vad;

pub use registry::register_all;
pub use slowcat_core::{
    AudioFrame, BoxProcessor, BuildContext, BuildError, ChatMessage, CheckedSettings, Direction, Frame, FrameClass,
    FrameSender, Kind, LlmRequest, MetricName, Passed, Pipeline, PipelineOptions, Problem, ProcessError, Processor,
    ProcessorContext, Registry, Role, Settings, Shutdown, Transcription,
};
