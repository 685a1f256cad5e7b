//! Driving: the assistant the benchmarks measure, and running its pipeline turn by turn.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::bail;
use slowcat_processors::audio::{WavInputSettings, WavOutputSettings};
use slowcat_processors::{BoxProcessor, Direction, Frame, Pipeline, PipelineOptions};

use super::collect::Collector;

/// The assistant under measurement, as the runtime makes it from config.toml. Reading the config
/// is the runtime's work; asking for the result keeps this crate's dependencies pointing one way
/// (the binary depends on the benchmarks, the benchmarks on the processors).
pub trait Assistant {
    /// The config file, for the report.
    fn config_path(&self) -> &Path;
    /// The LLM server used instead of the config's, for the report.
    fn llm_url(&self) -> Option<&str>;
    /// The models directory the config names.
    fn models_dir(&self) -> anyhow::Result<PathBuf>;
    /// The pipeline with the run's rewiring, ready to build. Fails when the config is invalid or
    /// has no microphone or speaker to replace.
    fn prepare(&self, run: &Rewiring) -> anyhow::Result<Prepared>;
}

/// How one run changes the assistant.
#[derive(Debug, Clone)]
pub struct Rewiring {
    /// The run's data directory (memory): a fresh one per run.
    pub data_dir: PathBuf,
    /// Replaces the microphone (`mic` or `wav_input`): the scripted speech.
    pub input: WavInputSettings,
    /// Replaces the speaker (`speaker` or `wav_output`).
    pub output: WavOutputSettings,
    /// When set, the longest reply of every `openai_llm` processor, in tokens.
    pub max_tokens: Option<u32>,
}

/// Builds the processors of a pipeline (loads the models) when awaited.
pub type BuildProcessors = Pin<Box<dyn Future<Output = anyhow::Result<Vec<(String, BoxProcessor)>>>>>;

/// An assistant's pipeline, checked and not built yet.
pub struct Prepared {
    /// The processors in order, as `id(type) → …`, for the report.
    pub description: String,
    /// Builds them.
    pub build: BuildProcessors,
}

/// Builds and runs the pipeline until end of stream, until `stop_after` turns were spoken, or
/// until `limit`; returns what was measured.
pub(super) async fn drive(
    build: BuildProcessors,
    stop_after: u64,
    limit: Duration,
    mut c: Collector,
) -> anyhow::Result<Collector> {
    let processors = build.await?;
    let mut pipeline = Pipeline::spawn(processors, PipelineOptions::default());
    c.epoch = pipeline.epoch();
    c.started = Instant::now();
    pipeline.start().await;
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut fatal = None;
    let graceful = loop {
        tokio::select! {
            _ = &mut deadline => {
                eprintln!("warning: stopped after {} s without finishing", limit.as_secs());
                break false;
            }
            out = pipeline.recv() => {
                let Some((frame, dir)) = out else { break false };
                if frame == Frame::End && dir == Direction::Downstream {
                    break true;
                }
                if let Frame::Error(e) = &frame && !e.recoverable {
                    fatal = Some(format!("{}: {}", e.source, e.message));
                    break false;
                }
                c.on_frame(&frame, dir);
                if c.spoken >= stop_after {
                    break false;
                }
            }
        }
    };
    let shutdown = if graceful { pipeline.finish().await } else { pipeline.cancel().await };
    for (frame, dir) in &shutdown.frames {
        c.on_frame(frame, *dir);
    }
    if let Some(e) = fatal {
        bail!("the pipeline stopped on a fatal error: {e}");
    }
    Ok(c)
}
