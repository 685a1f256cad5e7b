//! `wav_input`: plays a WAV file into the pipeline as if it were a microphone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::WavError;
use super::resample::{resample_clip, to_i16};
use crate::PIPELINE_SAMPLE_RATE;
use crate::frame::{AudioFrame, Direction, Frame};
use crate::processor::{BoxProcessor, BuildContext, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};

/// When `wav_input` plays the next of several files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextFile {
    /// Right after the previous file and its trailing silence.
    Immediately,
    /// Once the assistant has finished replying (`BotStoppedSpeaking` travelling upstream), like a
    /// person waiting for the answer.
    AfterReply,
    /// Once the assistant has started replying (`BotStartedSpeaking`): talking over it, to
    /// test interruptions.
    AfterBotStarts,
}

/// Settings of `wav_input`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WavInputSettings {
    /// The WAV file to play (any rate, channel count and sample format).
    pub path: PathBuf,
    /// Several files to play in order, as a scripted conversation (instead of `path`).
    pub paths: Vec<PathBuf>,
    /// When the next of several files starts.
    pub next: NextFile,
    /// Extra wait before the next file, in milliseconds.
    pub next_delay_ms: u32,
    /// Longest wait for the assistant before playing the next file anyway, in milliseconds.
    pub reply_timeout_ms: u32,
    /// Longest wait for the reply to begin, in milliseconds; 0: `reply_timeout_ms`. A file the
    /// assistant heard no turn in (too quiet) then costs this, not the wait a long reply needs.
    pub reply_start_timeout_ms: u32,
    /// Play the list this many times (for soak tests).
    pub repeat: u32,
    /// Pace frames in real time, like a microphone; false sends them as fast as possible.
    pub realtime: bool,
    /// Length of each audio frame in milliseconds.
    pub frame_ms: u32,
    /// Silence sent after each file, so voice activity detection sees the speech end.
    pub trailing_silence_ms: u32,
    /// Send end of stream after the last file, which stops the pipeline once every processor
    /// has finished (the answer to the last file included).
    pub end_of_stream: bool,
}

impl Default for WavInputSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            paths: Vec::new(),
            next: NextFile::AfterReply,
            next_delay_ms: 0,
            reply_timeout_ms: 60_000,
            reply_start_timeout_ms: 0,
            repeat: 1,
            realtime: true,
            frame_ms: 20,
            trailing_silence_ms: 1500,
            end_of_stream: true,
        }
    }
}

impl WavInputSettings {
    fn files(&self) -> Vec<PathBuf> {
        if self.paths.is_empty() { vec![self.path.clone()] } else { self.paths.clone() }
    }
}

impl Settings for WavInputSettings {
    const TYPE: &'static str = "wav_input";
    const ABOUT: &'static str = "reads a WAV file as 16 kHz mono audio frames, paced in real time";
    const SOURCE: bool = true;

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() && self.paths.is_empty() {
            problems.push(Problem::at("path", "`path` (or `paths`) is required: the WAV file to read"));
        } else if !self.path.as_os_str().is_empty() && !self.paths.is_empty() {
            problems.push(Problem::at("paths", "give either `path` or `paths`, not both"));
        } else {
            let key = if self.paths.is_empty() { "path" } else { "paths" };
            for f in self.files() {
                if !ctx.config_path(&f).is_file() {
                    problems
                        .push(Problem::at(key, format!("input WAV {} does not exist", ctx.config_path(&f).display())));
                }
            }
        }
        if !(10..=100).contains(&self.frame_ms) {
            problems.push(Problem::at("frame_ms", "`frame_ms` must be between 10 and 100"));
        }
        if self.repeat == 0 {
            problems.push(Problem::at("repeat", "`repeat` must be at least 1"));
        }
        problems
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let mut clips = Vec::new();
        for f in self.files() {
            let samples = read_wav_mono(&ctx.config_path(&f), PIPELINE_SAMPLE_RATE).map_err(BuildError::other)?;
            clips.push(Arc::<[i16]>::from(samples));
        }
        let (events, _) = tokio::sync::watch::channel(BotState::default());
        Ok(Box::new(WavInput { settings: self, clips, task: None, events }))
    }
}

/// Reads a WAV file of any format as mono i16 at `rate`.
pub fn read_wav_mono(path: &Path, rate: u32) -> Result<Vec<i16>, WavError> {
    let read = |source| WavError::Read { path: path.to_path_buf(), source };
    let mut reader = hound::WavReader::open(path).map_err(read)?;
    let spec = reader.spec();
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>().map_err(read)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|s| s as f32 * scale)).collect::<Result<_, _>>().map_err(read)?
        }
    };
    let ch = usize::from(spec.channels.max(1));
    let mono: Vec<f32> = interleaved.chunks_exact(ch).map(|f| f.iter().sum::<f32>() / ch as f32).collect();
    let resampled = resample_clip(&mono, spec.sample_rate, rate).map_err(|source| WavError::Resample {
        path: path.to_path_buf(),
        rate: spec.sample_rate,
        source,
    })?;
    Ok(to_i16(&resampled))
}

/// What `wav_input` has seen of the assistant speaking, counted so a waiting producer can tell
/// a new event from an old one.
#[derive(Debug, Clone, Copy, Default)]
struct BotState {
    started: u64,
    stopped: u64,
}

/// Emits WAV files' audio as `InputAudio` frames, with silence between and after them, then
/// `End`.
pub struct WavInput {
    settings: WavInputSettings,
    clips: Vec<Arc<[i16]>>,
    task: Option<JoinHandle<()>>,
    events: tokio::sync::watch::Sender<BotState>,
}

/// Produces the frames, paced against the pipeline's clock.
struct Producer {
    settings: WavInputSettings,
    sender: crate::processor::FrameSender,
    cancel: tokio_util::sync::CancellationToken,
    epoch: tokio::time::Instant,
    /// Position on the timeline of the next frame.
    pts: Duration,
    per_frame: usize,
}

impl Producer {
    /// Sends `samples` (zero-padded to whole frames); false when the pipeline is gone.
    async fn play(&mut self, samples: &[i16]) -> bool {
        for chunk in samples.chunks(self.per_frame) {
            let mut frame = chunk.to_vec();
            frame.resize(self.per_frame, 0);
            if !self.send(frame).await {
                return false;
            }
        }
        true
    }

    async fn silence(&mut self, ms: u32) -> bool {
        let frames = (ms / self.settings.frame_ms).max(1);
        for _ in 0..frames {
            if !self.send(vec![0; self.per_frame]).await {
                return false;
            }
        }
        true
    }

    async fn send(&mut self, samples: Vec<i16>) -> bool {
        if self.settings.realtime {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(self.epoch + self.pts) => {}
            }
        }
        let frame = AudioFrame::new(samples, PIPELINE_SAMPLE_RATE, 1, self.pts);
        self.pts += Duration::from_millis(u64::from(self.settings.frame_ms));
        self.sender.downstream(Frame::InputAudio(frame)).await
    }

    /// Waits for the assistant (keeping the microphone "open" with silence in real time);
    /// false when the pipeline is gone.
    async fn wait_for_bot(&mut self, events: &mut tokio::sync::watch::Receiver<BotState>, since: BotState) -> bool {
        let want_stop = self.settings.next == NextFile::AfterReply;
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_millis(u64::from(self.settings.reply_timeout_ms));
        let start_deadline = match self.settings.reply_start_timeout_ms {
            0 => deadline,
            ms => deadline.min(now + Duration::from_millis(u64::from(ms))),
        };
        loop {
            let s = *events.borrow();
            let started = s.started > since.started;
            let done = if want_stop { s.stopped > since.stopped && s.stopped >= s.started } else { started };
            if done {
                return true;
            }
            let now = tokio::time::Instant::now();
            if !started && now >= start_deadline {
                tracing::warn!("the assistant did not begin a reply in time; playing the next file");
                return true;
            }
            if now >= deadline {
                tracing::warn!("no reply from the assistant in time; playing the next file anyway");
                return true;
            }
            if self.settings.realtime {
                if !self.silence(self.settings.frame_ms).await {
                    return false;
                }
            } else {
                tokio::select! {
                    _ = self.cancel.cancelled() => return false,
                    _ = events.changed() => {}
                    _ = tokio::time::sleep_until(if started { deadline } else { start_deadline }) => {}
                }
            }
        }
    }
}

#[async_trait]
impl Processor for WavInput {
    /// The speaking events that pace the next file (`next = "after_reply"`).
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, _| matches!(frame, Frame::BotStartedSpeaking | Frame::BotStoppedSpeaking)
    }

    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        let mut producer = Producer {
            settings: self.settings.clone(),
            sender: ctx.sender(),
            cancel: ctx.cancellation(),
            epoch: tokio::time::Instant::from_std(ctx.epoch()),
            pts: ctx.now(),
            per_frame: (PIPELINE_SAMPLE_RATE * self.settings.frame_ms / 1000) as usize,
        };
        let clips = self.clips.clone();
        let mut events = self.events.subscribe();
        self.task = Some(ctx.spawn(async move {
            let s = producer.settings.clone();
            let total = clips.len() * s.repeat as usize;
            for (i, clip) in clips.iter().cycle().take(total).enumerate() {
                let before = *events.borrow();
                if !producer.play(clip).await || !producer.silence(s.trailing_silence_ms).await {
                    return;
                }
                // After the last file nothing waits: end of stream travels behind the reply's
                // frames, so the pipeline still finishes the answer before it stops.
                let last = i + 1 == total;
                if s.next != NextFile::Immediately && !last {
                    if !producer.wait_for_bot(&mut events, before).await {
                        return;
                    }
                    if s.next_delay_ms > 0 && !producer.silence(s.next_delay_ms).await {
                        return;
                    }
                }
            }
            if s.end_of_stream {
                producer.sender.downstream(Frame::End).await;
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
        match frame {
            Frame::BotStartedSpeaking => self.events.send_modify(|s| s.started += 1),
            Frame::BotStoppedSpeaking => self.events.send_modify(|s| s.stopped += 1),
            _ => {}
        }
        ctx.push(frame, direction).await;
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
