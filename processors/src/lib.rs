//! slowcat's processors: the [`Frame`] type, the [`Processor`] trait and its contexts, the
//! [`registry`] of processor kinds, the [`Pipeline`] that runs them, a test [`harness`], and one
//! module per processor family.

pub mod frame;
pub mod harness;
mod lane;
pub mod pipeline;
pub mod processor;
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

pub use frame::{AudioFrame, ChatMessage, Direction, Frame, FrameClass, LlmRequest, Role, Transcription};
pub use pipeline::{Pipeline, PipelineOptions, Shutdown};
pub use processor::{BoxProcessor, BuildContext, FrameSender, ProcessError, Processor, ProcessorContext};
pub use registry::{BuildError, Kind, Problem, Settings};

/// The sample rate every processor after the input works at.
pub const PIPELINE_SAMPLE_RATE: u32 = 16_000;

/// CPU time the calling thread has run (Linux `/proc/thread-self/schedstat`, in nanoseconds), for
/// benchmarks whose figures must hold on a machine busy with other work. `None` elsewhere.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(std::time::Duration::from_nanos)
}

/// The 1, 5 and 15 minute load averages (Linux `/proc/loadavg`), for benchmarks to print beside
/// their figures. `None` elsewhere.
pub fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The median of benchmark timings (the upper one of an even count); zero for none.
pub fn median_duration(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
