//! `wav_output`: records the audio reaching it into a WAV file on a real-time timeline.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::WavError;
use super::played::PlayedText;
use super::resample::{StreamResampler, to_i16, to_mono_f32};
use crate::error::ErrorChain;
use crate::frame::{AudioFrame, Direction, Frame};
use crate::processor::{BoxProcessor, BuildContext, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};

/// Settings of `wav_output`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WavOutputSettings {
    /// The WAV file to write (16-bit mono).
    pub path: PathBuf,
    /// Sample rate of the file; audio at other rates is resampled.
    pub sample_rate: u32,
    /// Also record `InputAudio` reaching this processor (placed by its timestamp), not only
    /// the assistant's `OutputAudio` (placed at the time it arrives, like a loudspeaker).
    pub record_input: bool,
    /// Report upstream what the assistant said (`SpokenReply`, for memory) once each reply is
    /// written, as a speaker does; turn off when a `speaker` after this processor reports it.
    pub report_spoken: bool,
    /// Report `BotStoppedSpeaking` when the reply has played out on the file's real-time timeline,
    /// as a loudspeaker does, instead of as soon as it is written. For scripted conversations
    /// with a real-time `wav_input` (`next = "after_reply"`): otherwise the next question starts
    /// while the previous answer still plays, and the next answer queues behind it.
    pub realtime: bool,
}

impl Default for WavOutputSettings {
    fn default() -> Self {
        Self { path: PathBuf::new(), sample_rate: 16_000, record_input: true, report_spoken: true, realtime: false }
    }
}

impl Settings for WavOutputSettings {
    const TYPE: &'static str = "wav_output";
    const ABOUT: &'static str = "writes the audio reaching it to a WAV file on a real-time timeline";

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push(Problem::at("path", "`path` is required: the WAV file to write"));
        } else if let Some(parent) = ctx.config_path(&self.path).parent()
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            problems.push(Problem::at("path", format!("output directory {} does not exist", parent.display())));
        }
        if !(8_000..=192_000).contains(&self.sample_rate) {
            problems.push(Problem::at("sample_rate", "`sample_rate` must be between 8000 and 192000"));
        }
        problems
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let path = ctx.config_path(&self.path);
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: self.sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(&path, spec)
            .map_err(|source| BuildError::other(WavError::Create { path: path.clone(), source }))?;
        let rate = self.sample_rate;
        Ok(Box::new(WavOutput {
            settings: self,
            path,
            writer: Some(writer),
            cursor: 0,
            resamplers: HashMap::new(),
            played: PlayedText::new(rate),
            speaking: false,
            stop_timer: None,
            turn: 0,
            first_audio_turn: 0,
        }))
    }
}

/// Writes audio frames to a WAV file; silence fills the gaps between them.
pub struct WavOutput {
    settings: WavOutputSettings,
    path: PathBuf,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    /// Samples written so far: the file's current end on the timeline.
    cursor: u64,
    resamplers: HashMap<u32, StreamResampler>,
    /// What the assistant said, reported like a speaker does (everything written is "played").
    played: PlayedText,
    /// Between the first audio of a reply and its end, like a loudspeaker playing.
    speaking: bool,
    /// With `realtime`: reports `BotStoppedSpeaking` once the reply has played out.
    stop_timer: Option<tokio::task::JoinHandle<()>>,
    /// The turn of the sentence being written (from `TtsStarted`).
    turn: u64,
    /// The last turn whose first audio was reported.
    first_audio_turn: u64,
}

impl WavOutput {
    /// Writes `audio` starting at `at` on the timeline, or right after what is already written
    /// when that is later (audio is never overlapped or reordered, as on a real device).
    fn write(&mut self, audio: &AudioFrame, at: Duration) -> Result<(), ProcessError> {
        let rate = self.settings.sample_rate;
        let mono = to_mono_f32(&audio.samples, audio.channels);
        let resampler = match self.resamplers.entry(audio.sample_rate) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                StreamResampler::new(audio.sample_rate, rate).map_err(|e| ProcessError::recoverable(ErrorChain(&e)))?,
            ),
        };
        let samples = to_i16(&resampler.push(&mono));
        let Some(writer) = self.writer.as_mut() else { return Ok(()) };
        let start = (at.as_secs_f64() * f64::from(rate)).round() as u64;
        let io = |e: hound::Error| ProcessError::recoverable(format!("writing {}: {e}", self.path.display()));
        while self.cursor < start {
            writer.write_sample(0i16).map_err(io)?;
            self.cursor += 1;
        }
        // Buffered: a 20 ms frame is 640 bytes, so this rarely reaches the disk.
        for s in samples {
            writer.write_sample(s).map_err(io)?;
        }
        self.cursor += samples_len(audio, rate);
        Ok(())
    }

    fn finalize(&mut self) -> Result<(), ProcessError> {
        if let Some(writer) = self.writer.take() {
            writer
                .finalize()
                .map_err(|e| ProcessError::recoverable(format!("finishing {}: {e}", self.path.display())))?;
        }
        Ok(())
    }
}

impl WavOutput {
    /// Reports the reply written so far upstream, as heard (all of it: a file plays everything),
    /// and that the assistant stopped speaking.
    async fn report(&mut self, interrupted: bool, ctx: &ProcessorContext) {
        let written = self.played.written();
        if let Some(reply) = self.played.take(written, interrupted)
            && self.settings.report_spoken
        {
            ctx.push_upstream(Frame::SpokenReply(Box::new(reply))).await;
        }
        if !self.is_speaking() {
            return;
        }
        if let Some(timer) = self.stop_timer.take() {
            timer.abort();
        }
        let played_out = Duration::from_secs_f64(self.cursor as f64 / f64::from(self.settings.sample_rate));
        if self.settings.realtime && !interrupted && played_out > ctx.now() {
            let (sender, at) = (ctx.sender(), tokio::time::Instant::from_std(ctx.epoch()) + played_out);
            self.stop_timer = Some(ctx.spawn(async move {
                tokio::time::sleep_until(at).await;
                sender.upstream(Frame::BotStoppedSpeaking).await;
                sender.downstream(Frame::BotStoppedSpeaking).await;
            }));
            return;
        }
        self.speaking = false;
        ctx.push_upstream(Frame::BotStoppedSpeaking).await;
        ctx.push_downstream(Frame::BotStoppedSpeaking).await;
    }

    /// True while the assistant's audio plays (a scheduled stop that has fired ends it).
    fn is_speaking(&mut self) -> bool {
        if self.stop_timer.as_ref().is_some_and(|t| t.is_finished()) {
            self.stop_timer = None;
            self.speaking = false;
        }
        self.speaking
    }

    /// The assistant's audio is starting: tell both directions, and measure the turn's first
    /// sample (placed at `at` on the timeline) once.
    async fn on_reply_audio(&mut self, at: Duration, ctx: &ProcessorContext) {
        if let Some(timer) = self.stop_timer.take_if(|t| !t.is_finished()) {
            // More audio before the last reply played out: the speaker never fell silent.
            timer.abort();
        }
        if !self.is_speaking() {
            self.speaking = true;
            ctx.push_upstream(Frame::BotStartedSpeaking).await;
            ctx.push_downstream(Frame::BotStartedSpeaking).await;
        }
        if self.turn > 0 && self.first_audio_turn != self.turn {
            self.first_audio_turn = self.turn;
            ctx.push_metric(crate::frame::MetricName::FirstAudioAt, Some(self.turn), at).await;
        }
    }
}

fn samples_len(audio: &AudioFrame, rate: u32) -> u64 {
    (audio.frames() as u64 * u64::from(rate)).div_ceil(u64::from(audio.sample_rate.max(1)))
}

#[async_trait]
impl Processor for WavOutput {
    /// The audio it records and the frames that place the reply's sentences on the timeline.
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, _| {
            matches!(
                frame,
                Frame::OutputAudio(_)
                    | Frame::InputAudio(_)
                    | Frame::LlmResponseStart { .. }
                    | Frame::LlmResponseEnd
                    | Frame::TtsStarted { .. }
                    | Frame::TtsStopped
            )
        }
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        let result = match &frame {
            Frame::OutputAudio(audio) => {
                let rate = f64::from(self.settings.sample_rate);
                let at = ctx.now().max(Duration::from_secs_f64(self.cursor as f64 / rate));
                self.on_reply_audio(at, ctx).await;
                self.played.on_audio(samples_len(audio, self.settings.sample_rate));
                self.write(audio, ctx.now())
            }
            Frame::TtsStarted { turn, .. } => {
                self.turn = *turn;
                Ok(())
            }
            Frame::InputAudio(audio) if self.settings.record_input => self.write(audio, audio.pts),
            _ => Ok(()),
        };
        if direction == Direction::Downstream {
            if matches!(frame, Frame::LlmResponseStart { .. }) {
                self.report(false, ctx).await;
            }
            self.played.on_frame(&frame);
        }
        ctx.push(frame, direction).await;
        if self.played.is_complete() {
            self.report(false, ctx).await;
        }
        result
    }

    async fn interrupted(&mut self, ctx: &ProcessorContext) {
        self.report(true, ctx).await;
        // A turn the user went on with (`UserTurnResumed`) is answered again under its number.
        self.first_audio_turn = 0;
    }

    async fn end(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        self.report(false, ctx).await;
        // The stream ends here: a stop still waiting for the timeline is reported now.
        if let Some(timer) = self.stop_timer.take_if(|t| !t.is_finished()) {
            timer.abort();
            self.speaking = false;
            ctx.push_upstream(Frame::BotStoppedSpeaking).await;
            ctx.push_downstream(Frame::BotStoppedSpeaking).await;
        }
        self.finalize()
    }

    async fn stop(&mut self) {
        if let Some(timer) = self.stop_timer.take() {
            timer.abort();
        }
        if let Err(e) = self.finalize() {
            tracing::warn!(error = %e, "could not finish the output WAV");
        }
    }
}
