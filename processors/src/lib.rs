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
    FrameSender, Kind, LlmRequest, Passed, Pipeline, PipelineOptions, Problem, ProcessError, Processor,
    ProcessorContext, Registry, Role, Settings, Shutdown, Transcription,
};

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
