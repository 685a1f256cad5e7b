//! The one sentence-streaming TTS processor: LLM text is gathered into segments, and each
//! segment is handed to a [`Synthesizer`] as soon as it is complete, so the first audio plays
//! while the reply is still being written. Piper, espeak-ng and OpenAI-compatible servers only
//! differ in their synthesizer.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::TtsError;
use super::text::{self, SentenceSplitter, SplitOptions};
use crate::error::ErrorChain;
use crate::frame::{AudioFrame, Direction, Frame};
use crate::processor::{ProcessError, Processor, ProcessorContext};

/// Turns one segment of speakable text into audio.
#[async_trait]
pub trait Synthesizer: Send + 'static {
    /// Synthesizes `text` (already rewritten by [`text::speakable`]), handing its audio to `out`
    /// as it becomes ready. Dropping the future must abandon the work (an interruption).
    async fn synthesize(&mut self, text: &str, out: &mut AudioOut<'_>) -> Result<(), TtsError>;
}

/// How text is streamed, shared by every TTS kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// Where segments are cut.
    pub split: SplitOptions,
    /// Longest `OutputAudio` frame, in milliseconds.
    pub chunk_ms: u32,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self { split: SplitOptions::default(), chunk_ms: 40 }
    }
}

/// Where a synthesizer hands its audio: cut into frames of at most `chunk_ms` and pushed
/// downstream; the first one also yields the `tts_ttfb` metric.
pub struct AudioOut<'a> {
    ctx: &'a ProcessorContext,
    chunk_ms: u32,
    turn: u64,
    started: Instant,
    first: Option<Duration>,
    pts: &'a mut Duration,
}

impl AudioOut<'_> {
    /// Pushes mono samples at `sample_rate` downstream.
    pub async fn push(&mut self, samples: &[i16], sample_rate: u32) {
        let chunk = (sample_rate as usize * self.chunk_ms as usize / 1000).max(1);
        for piece in samples.chunks(chunk) {
            let first = self.first.is_none();
            if first {
                self.first = Some(self.started.elapsed());
            }
            let frame = AudioFrame::new(piece.to_vec(), sample_rate, 1, *self.pts);
            *self.pts += frame.duration();
            self.ctx.push_downstream(Frame::OutputAudio(frame)).await;
            if first && let Some(ttfb) = self.first {
                self.ctx.push_metric(crate::frame::MetricName::TtsTtfb, Some(self.turn), ttfb).await;
            }
        }
    }

    /// Time from the segment being complete to its first audio, once there was audio.
    pub fn ttfb(&self) -> Option<Duration> {
        self.first
    }
}

/// Metric: from the reply's first text reaching the TTS to its first complete segment (the time
/// the LLM took to write the rest of its first sentence); with `llm_ttfb` before it and `tts_ttfb`
/// after it, the stages of a turn tile the voice-to-voice interval.
pub const FIRST_SENTENCE_METRIC: crate::frame::MetricName = crate::frame::MetricName::LlmFirstSentence;

/// A TTS processor: forwards everything but `LlmText` and `Speak`, which it turns into
/// `TtsStarted`, `OutputAudio`… and `TtsStopped` per segment.
pub struct StreamingTts<S> {
    synth: S,
    opts: StreamOptions,
    splitter: SentenceSplitter,
    turn: u64,
    pts: Duration,
    /// Between a reply's start and its first spoken segment: when its first text arrived.
    first_sentence: Option<Option<Instant>>,
}

impl<S: Synthesizer> StreamingTts<S> {
    /// A processor speaking through `synth`.
    pub fn new(synth: S, opts: StreamOptions) -> Self {
        let splitter = SentenceSplitter::new(opts.split.clone());
        Self { synth, opts, splitter, turn: 0, pts: Duration::ZERO, first_sentence: None }
    }

    /// The synthesizer (for benchmarks).
    pub fn synthesizer(&mut self) -> &mut S {
        &mut self.synth
    }

    async fn speak_all(&mut self, segments: Vec<String>, ctx: &ProcessorContext) {
        for segment in segments {
            self.speak(&segment, ctx).await;
        }
    }

    /// Synthesizes one segment; a failure becomes an error frame and the next segment is tried.
    async fn speak(&mut self, segment: &str, ctx: &ProcessorContext) {
        let spoken = text::speakable(segment);
        if !spoken.chars().any(char::is_alphanumeric) {
            return;
        }
        let started = Instant::now();
        if let Some(Some(first_text)) = self.first_sentence.take() {
            ctx.push_metric(FIRST_SENTENCE_METRIC, Some(self.turn), started - first_text).await;
        }
        let shown = text::display_text(segment);
        ctx.push_downstream(Frame::TtsStarted { text: shown.clone(), turn: self.turn }).await;
        let mut out =
            AudioOut { ctx, chunk_ms: self.opts.chunk_ms, turn: self.turn, started, first: None, pts: &mut self.pts };
        let result = self.synth.synthesize(&spoken, &mut out).await;
        let ttfb = out.ttfb();
        match result {
            Ok(()) => tracing::debug!(turn = self.turn, text = %shown, ?ttfb, "segment spoken"),
            Err(e) => {
                let error = ErrorChain(&e).to_string();
                tracing::warn!(turn = self.turn, text = %shown, %error, "speech synthesis failed");
                ctx.push_error(format!("speech synthesis of {shown:?} failed: {error}")).await;
            }
        }
        ctx.push_downstream(Frame::TtsStopped).await;
    }
}

#[async_trait]
impl<S: Synthesizer> Processor for StreamingTts<S> {
    /// The reply's text on its way down. Everything else passes untouched; the speaker's speaking
    /// events must not wait while a sentence is being synthesized (barge-in needs them at once).
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, direction| {
            direction == Direction::Downstream
                && matches!(
                    frame,
                    Frame::LlmResponseStart { .. } | Frame::LlmText(_) | Frame::LlmResponseEnd | Frame::Speak(_)
                )
        }
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        match frame {
            Frame::LlmResponseStart { turn } => {
                self.turn = turn;
                self.splitter.reset();
                self.first_sentence = Some(None);
                ctx.push(frame, direction).await;
            }
            Frame::LlmText(chunk) => {
                if let Some(first_text @ None) = &mut self.first_sentence {
                    *first_text = Some(Instant::now());
                }
                let segments = self.splitter.push(&chunk);
                self.speak_all(segments, ctx).await;
            }
            Frame::LlmResponseEnd => {
                let segments = self.splitter.flush();
                self.splitter.reset();
                self.speak_all(segments, ctx).await;
                ctx.push(frame, direction).await;
            }
            Frame::Speak(text) => {
                let segments = SentenceSplitter::split_all(&text, self.opts.split.clone());
                self.speak_all(segments, ctx).await;
            }
            // Not accepted; a safety net, as `Frame` may grow.
            frame => {
                ctx.push(frame, direction).await;
            }
        }
        Ok(())
    }

    async fn interrupted(&mut self, _ctx: &ProcessorContext) {
        // The in-flight synthesis was dropped with `process`; the rest of the reply goes too.
        self.splitter.reset();
    }

    async fn end(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        // A reply cut off by the end of the stream is still spoken.
        let segments = self.splitter.flush();
        self.speak_all(segments, ctx).await;
        Ok(())
    }
}
