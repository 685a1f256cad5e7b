//! `wav_input`: plays a WAV file into the pipeline as if it were a microphone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::resample::{resample_clip, to_i16};
use crate::PIPELINE_SAMPLE_RATE;
use crate::frame::{AudioFrame, Direction, Frame};
use crate::processor::{BoxProcessor, BuildContext, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};

/// Settings of `wav_input`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WavInputSettings {
    /// The WAV file to play (any rate, channel count and sample format).
    pub path: PathBuf,
    /// Pace frames in real time, like a microphone; false sends them as fast as possible.
    pub realtime: bool,
    /// Length of each audio frame in milliseconds.
    pub frame_ms: u32,
    /// Silence sent after the file, so voice activity detection sees the speech end.
    pub trailing_silence_ms: u32,
    /// Send end of stream after the trailing silence, which stops the pipeline once every
    /// processor has finished.
    pub end_of_stream: bool,
}

impl Default for WavInputSettings {
    fn default() -> Self {
        Self { path: PathBuf::new(), realtime: true, frame_ms: 20, trailing_silence_ms: 1500, end_of_stream: true }
    }
}

impl Settings for WavInputSettings {
    const TYPE: &'static str = "wav_input";
    const ABOUT: &'static str = "reads a WAV file as 16 kHz mono audio frames, paced in real time";
    const SOURCE: bool = true;

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push(Problem::at("path", "`path` is required: the WAV file to read"));
        } else if !ctx.config_path(&self.path).is_file() {
            problems.push(Problem::at(
                "path",
                format!("input WAV {} does not exist", ctx.config_path(&self.path).display()),
            ));
        }
        if !(10..=100).contains(&self.frame_ms) {
            problems.push(Problem::at("frame_ms", "`frame_ms` must be between 10 and 100"));
        }
        problems
    }

    fn build(self, ctx: &BuildContext) -> Result<BoxProcessor, BuildError> {
        let path = ctx.config_path(&self.path);
        let samples = read_wav_mono(&path, PIPELINE_SAMPLE_RATE)?;
        Ok(Box::new(WavInput { settings: self, samples: samples.into(), task: None }))
    }
}

/// Reads a WAV file of any format as mono i16 at `rate`.
pub fn read_wav_mono(path: &Path, rate: u32) -> anyhow::Result<Vec<i16>> {
    let mut reader =
        hound::WavReader::open(path).with_context(|| format!("cannot read WAV file {}", path.display()))?;
    let spec = reader.spec();
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|s| s as f32 * scale)).collect::<Result<_, _>>()?
        }
    };
    let ch = usize::from(spec.channels.max(1));
    let mono: Vec<f32> = interleaved.chunks_exact(ch).map(|f| f.iter().sum::<f32>() / ch as f32).collect();
    let resampled = resample_clip(&mono, spec.sample_rate, rate)
        .with_context(|| format!("cannot resample {} from {} Hz", path.display(), spec.sample_rate))?;
    Ok(to_i16(&resampled))
}

/// Emits a WAV file's audio as `InputAudio` frames, then silence, then `End`.
pub struct WavInput {
    settings: WavInputSettings,
    samples: Arc<[i16]>,
    task: Option<JoinHandle<()>>,
}

#[async_trait]
impl Processor for WavInput {
    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        let sender = ctx.sender();
        let cancel = ctx.cancellation();
        let epoch = tokio::time::Instant::from_std(ctx.epoch());
        let origin = ctx.now();
        let settings = self.settings.clone();
        let samples = self.samples.clone();
        self.task = Some(tokio::spawn(async move {
            let per_frame = (PIPELINE_SAMPLE_RATE * settings.frame_ms / 1000) as usize;
            let silence = (PIPELINE_SAMPLE_RATE as u64 * u64::from(settings.trailing_silence_ms) / 1000) as usize;
            let total = samples.len() + silence;
            let mut pos = 0usize;
            while pos < total {
                let end = (pos + per_frame).min(total);
                let chunk: Vec<i16> = (pos..end).map(|i| samples.get(i).copied().unwrap_or(0)).collect();
                let pts = origin + Duration::from_secs_f64(pos as f64 / f64::from(PIPELINE_SAMPLE_RATE));
                if settings.realtime {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(epoch + pts) => {}
                    }
                }
                let frame = AudioFrame::new(chunk, PIPELINE_SAMPLE_RATE, 1, pts);
                if !sender.downstream(Frame::InputAudio(frame)).await {
                    return;
                }
                pos = end;
            }
            if settings.end_of_stream {
                sender.downstream(Frame::End).await;
            }
        }));
        Ok(())
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        ctx.push(frame, direction).await;
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
