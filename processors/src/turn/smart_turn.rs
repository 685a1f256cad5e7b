//! `smart_turn`: decides when the user's turn is over, and when the user's speech interrupts the
//! assistant.
//!
//! End of turn: when the VAD reports that the user stopped speaking, Smart Turn v3.2 listens to
//! the turn's last 8 s and says how likely the utterance is complete. Likely → `UserTurnEnded` at
//! once; unlikely → wait: the user resuming keeps the turn open, and silence lasting
//! `incomplete_timeout_ms` ends it anyway.
//!
//! The model starts listening earlier, at the VAD's `UserSpeechPaused` (its first silent window),
//! on the turn's audio with the rest of the VAD's stop wait added as silence: inference takes
//! about as long as that wait on a small CPU, so the verdict is ready when the stop comes. The stop
//! uses it when it reports the same end of speech; after more speech it is thrown away. An early
//! "incomplete" is checked again on the audio the stop gives: the model's verdict swings with
//! a few tens of milliseconds more or less of trailing silence, and a wrong "incomplete" costs
//! the whole timeout, where a second inference costs a fraction of it.
//!
//! One utterance stays one turn: people leave pauses between words, and a pause of a few tenths
//! of a second can look like the end of a complete utterance ("turn" … "left"). When the user
//! starts speaking again after the turn has ended, before its reply is heard or too soon after to
//! be answering it, and within `merge_window_ms` of their last words (the gap on the input
//! timeline, from the VAD's end of speech to its start of speech, so a loaded machine's slow
//! verdict or reply does not stretch it), the turn goes on: `UserTurnResumed` then an `Interruption` go downstream (the reply in progress
//! is cancelled, speech-to-text joins the two parts into one turn), and the model hears the whole
//! turn at the next pause.
//!
//! The words count too: `whisper_stt` sends its early transcript of the turn upstream as well, and
//! a turn the model finds unfinished ends soon when the words make a complete sentence or
//! question, while one the model finds complete but whose words end on "and" or "the" waits. The
//! fallback wait after an unfinished utterance adapts to the speaker: once they have resumed a few
//! times, it is a little longer than the longest pause they took, within `incomplete_timeout_ms`.
//!
//! Turn numbers: the VAD numbers each speech; smart_turn decides, as a speech starts, whether it
//! opens a turn or goes on with one (a pause inside the turn, or a turn resumed before its reply was
//! heard), and forwards the speaking events with the turn's number: the earlier turn's when the
//! speech goes on with it, the next after it for a new turn (see `Frame` on turn numbers).
//!
//! Barge-in: user speech overlapping the assistant's speech for `barge_in_min_ms` pushes
//! `Interruption`, so shorter sounds (a cough, a click) do not interrupt.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ort::session::{RunOptions, Session};
use ort::value::Tensor;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::mel::{self, MelSpectrogram};
use super::pause::{Abandon, PauseWork};
use crate::PIPELINE_SAMPLE_RATE;
use crate::error::ErrorChain;
use crate::frame::{AudioFrame, Direction, Frame, MetricName};
use crate::onnx;
use crate::processor::{BoxProcessor, BuildContext, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};

/// Why Smart Turn could not load or judge a turn.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// ONNX Runtime or the model file would not load.
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
    /// The file is another model.
    #[error(
        "{} is not a Smart Turn v3 model (it has inputs {inputs:?} and outputs {outputs:?}, not `input_features` and \
         `logits`); set `model` to {DEFAULT_MODEL}, which `scripts/fetch-models.sh` fetches",
        .model.display()
    )]
    NotSmartTurn {
        /// The model file.
        model: PathBuf,
        /// Its inputs.
        inputs: Vec<String>,
        /// Its outputs.
        outputs: Vec<String>,
    },
    /// Features of the wrong size were given.
    #[error("smart turn features must be {}×{N_FRAMES} values, got {got}", mel::N_MELS)]
    Features {
        /// Values given.
        got: usize,
    },
    /// A run could not be set up (its options or its input tensor).
    #[error("cannot set up a smart turn run")]
    Setup(#[source] ort::Error),
    /// The model failed.
    #[error("smart turn inference failed")]
    Inference(#[source] ort::Error),
    /// The model's output cannot be read.
    #[error("smart turn output")]
    Output(#[source] ort::Error),
    /// The output holds no finite probability.
    #[error("smart turn returned no usable probability ({0:?})")]
    NoProbability(Option<f32>),
    /// The blocking task running the model panicked.
    #[error("smart turn inference panicked")]
    Panicked,
}

/// The model file `scripts/fetch-models.sh` puts in the models directory.
pub const DEFAULT_MODEL: &str = "smart-turn-v3.2-cpu.onnx";
/// The model hears at most 8 s (800 feature frames): the samples of one full window.
pub const WINDOW_SAMPLES: usize = 8 * mel::SAMPLE_RATE as usize;
const N_FRAMES: usize = WINDOW_SAMPLES / mel::HOP_LENGTH;
/// Audio kept from before the VAD's start event: the VAD fires only after some speech, and the
/// reference pipeline the model was tuned with hears the onset too.
const PRE_ROLL: Duration = Duration::from_millis(500);
/// The wait, after the stop, for an utterance the model finds unfinished but whose words make a
/// complete sentence or question: the model misjudges some complete questions, and whisper puts
/// a full stop after almost anything, so a short wait still lets the user go on. Counted from the
/// stop, also when the words come later.
const COMPLETE_WORDS_WAIT: Duration = Duration::from_millis(400);
/// Speech that begins this soon after the reply became audible is no answer to it (nobody reacts
/// that fast): the user is going on with their turn. With a small LLM the reply is audible ~0.4 s
/// after the end of speech, and people pause 0.2–0.4 s between words.
const REACTION_TIME: Duration = Duration::from_millis(400);
/// The shortest fallback wait the speaker's pace can bring the timeout down to.
const MIN_FALLBACK: Duration = Duration::from_millis(1000);
/// How many of the speaker's recent pauses the fallback learns from, and how many it needs.
const PAUSES_KEPT: usize = 8;
const PAUSES_NEEDED: usize = 3;
/// Words a statement does not end on. A question may ("Where are you from?", "Do you remember
/// what my name is?"): one closed by a question mark dangles only on [`NEVER_LAST`].
const DANGLING: &[&str] = &[
    "and", "or", "but", "so", "because", "the", "a", "an", "to", "of", "in", "on", "at", "for", "with", "from", "my",
    "your", "his", "her", "their", "our", "is", "are", "was", "were", "if", "than", "that", "which", "who", "um", "uh",
    "er", "like", "about", "into",
];

/// Words nothing ends on, a question neither.
const NEVER_LAST: &[&str] = &["and", "or", "but", "because", "the", "a", "an", "um", "uh", "er"];

/// When a turn whose words are complete ends: [`COMPLETE_WORDS_WAIT`] after the stop (`since`),
/// or at once (`now`) when that has passed.
fn complete_words_deadline(since: tokio::time::Instant, now: tokio::time::Instant) -> tokio::time::Instant {
    (since + COMPLETE_WORDS_WAIT).max(now + Duration::from_millis(1))
}

/// How a transcript ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WordsEnd {
    /// A sentence or question, closed by its punctuation, not on a dangling word.
    Complete,
    /// On a word no sentence ends on ("and", "the").
    Dangling,
    /// Neither: the words do not tell.
    Open,
}

fn words_end(text: &str) -> WordsEnd {
    let text = text.trim();
    let last = text
        .split_whitespace()
        .last()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'').to_lowercase())
        .unwrap_or_default();
    let question = text.ends_with('?');
    if last.is_empty() {
        WordsEnd::Open
    } else if NEVER_LAST.contains(&last.as_str()) || (!question && DANGLING.contains(&last.as_str())) {
        WordsEnd::Dangling
    } else if text.ends_with(['.', '?', '!']) && !text.ends_with("...") {
        WordsEnd::Complete
    } else {
        WordsEnd::Open
    }
}

/// Settings of `smart_turn`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmartTurnSettings {
    /// The Smart Turn v3 ONNX model, relative to the models directory.
    pub model: PathBuf,
    /// Probability from which the model's verdict counts as "the utterance is complete".
    pub threshold: f32,
    /// Silence after an utterance the model found incomplete before the turn ends anyway.
    pub incomplete_timeout_ms: u64,
    /// How much of the turn's most recent audio the model hears, in seconds (at most 8).
    pub max_duration_s: f32,
    /// ONNX Runtime intra-op threads for inference.
    pub threads: usize,
    /// Interrupt the assistant when the user talks over it.
    pub barge_in: bool,
    /// How long the user must talk over the assistant before it is interrupted.
    pub barge_in_min_ms: u64,
    /// Speech that starts within this long after the speech that ended a turn, before its reply
    /// is heard, continues that turn (its reply is cancelled). 0: never.
    pub merge_window_ms: u64,
}

impl Default for SmartTurnSettings {
    fn default() -> Self {
        Self {
            model: PathBuf::from(DEFAULT_MODEL),
            threshold: 0.5,
            incomplete_timeout_ms: 2500,
            max_duration_s: 8.0,
            threads: 1,
            barge_in: true,
            barge_in_min_ms: 300,
            merge_window_ms: 2000,
        }
    }
}

impl SmartTurnSettings {
    /// Problems with the values themselves, without looking at files.
    fn value_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.threshold) {
            problems.push(Problem::at("threshold", "`threshold` is a probability: it must be between 0 and 1"));
        }
        if !(self.max_duration_s > 0.0 && self.max_duration_s <= 8.0) {
            problems.push(Problem::at(
                "max_duration_s",
                "`max_duration_s` must be more than 0 and at most 8 (the model hears at most 8 s)",
            ));
        }
        if self.threads == 0 {
            problems.push(Problem::at("threads", "`threads` must be at least 1"));
        }
        problems
    }
}

impl Settings for SmartTurnSettings {
    const TYPE: &'static str = "smart_turn";
    const ABOUT: &'static str = "ends the user's turn when Smart Turn v3 hears a complete utterance (or after a timeout); interrupts the \
         assistant when the user talks over it";

    fn requires(&self) -> Vec<crate::registry::Requirement> {
        vec![crate::registry::Requirement {
            any_of: &[crate::vad::SileroVadSettings::TYPE, crate::vad::WebRtcVadSettings::TYPE],
            key: None,
            why: "it judges the pauses a voice activity detector marks; put silero_vad or webrtc_vad before it",
        }]
    }

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        let path = ctx.model_path(&self.model);
        if !path.is_file() {
            problems.push(Problem::missing_model("model", &path));
        }
        problems.extend(self.value_problems());
        problems
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let model = SmartTurnModel::load(&ctx.models_dir, &ctx.model_path(&self.model), self.threads)
            .map_err(BuildError::other)?;
        Ok(Box::new(SmartTurn::new(self, model)))
    }
}

/// Smart Turn v3 with its feature extraction: 16 kHz audio in, probability of a complete
/// utterance out.
pub struct SmartTurnModel {
    session: Session,
    mel: MelSpectrogram,
}

impl SmartTurnModel {
    /// Loads the model with `threads` intra-op threads and checks that it is a Smart Turn model.
    pub fn load(models_dir: &Path, model: &Path, threads: usize) -> Result<Self, TurnError> {
        let session = onnx::session(models_dir, model, threads)?;
        let inputs: Vec<String> = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let outputs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        if !inputs.iter().any(|i| i == "input_features") || !outputs.iter().any(|o| o == "logits") {
            return Err(TurnError::NotSmartTurn { model: model.to_path_buf(), inputs, outputs });
        }
        Ok(Self { session, mel: MelSpectrogram::new() })
    }

    /// The model's input for 16 kHz mono `audio`: its last 8 s, zero-padded at the front,
    /// normalized to zero mean and unit variance, as a log-mel spectrogram `[80, 800]`
    /// (what `WhisperFeatureExtractor(chunk_length=8, do_normalize=True)` gives).
    pub fn features(&mut self, audio: &[i16]) -> Vec<f32> {
        window_features(&mut self.mel, audio)
    }

    /// Runs the model on features from [`SmartTurnModel::features`]; returns the probability that
    /// the utterance is complete.
    pub fn infer(&mut self, features: Vec<f32>) -> Result<f32, TurnError> {
        self.infer_with(features, &RunOptions::new().map_err(TurnError::Setup)?)
    }

    /// [`SmartTurnModel::infer`] that `options` can stop from another thread (`terminate`).
    pub fn infer_with(&mut self, features: Vec<f32>, options: &RunOptions) -> Result<f32, TurnError> {
        if features.len() != mel::N_MELS * N_FRAMES {
            return Err(TurnError::Features { got: features.len() });
        }
        let input = Tensor::from_array(([1usize, mel::N_MELS, N_FRAMES], features)).map_err(TurnError::Setup)?;
        let outputs = self
            .session
            .run_with_options(ort::inputs!["input_features" => input], options)
            .map_err(TurnError::Inference)?;
        let (_, probabilities) = outputs["logits"].try_extract_tensor::<f32>().map_err(TurnError::Output)?;
        match probabilities.first() {
            Some(&p) if p.is_finite() => Ok(p),
            other => Err(TurnError::NoProbability(other.copied())),
        }
    }

    /// Probability that the utterance ending `audio` (16 kHz mono) is complete.
    pub fn predict(&mut self, audio: &[i16]) -> Result<f32, TurnError> {
        let features = self.features(audio);
        self.infer(features)
    }
}

/// See [`SmartTurnModel::features`].
fn window_features(mel: &mut MelSpectrogram, audio: &[i16]) -> Vec<f32> {
    let tail = &audio[audio.len().saturating_sub(WINDOW_SAMPLES)..];
    let mut window = vec![0f32; WINDOW_SAMPLES];
    for (out, &s) in window[WINDOW_SAMPLES - tail.len()..].iter_mut().zip(tail) {
        *out = f32::from(s) / 32768.0;
    }
    mel::normalize(&mut window);
    mel.compute(&window).data
}

/// Where the user's turn stands.
#[derive(Debug)]
enum Turn {
    /// No turn in progress.
    Idle,
    /// The user is talking; the turn's audio starts at sample `start` (pre-roll included).
    Speaking { start: u64 },
    /// The user paused and the model is deciding, on a blocking thread. The processor goes on
    /// handling audio meanwhile, so talking over the assistant interrupts it even while the model
    /// runs (which took over a second on a loaded machine); the result is collected when a frame
    /// arrives or when the inference, finished, wakes the processor.
    Deciding { start: u64, speech_end_at: Duration, inference: Inference },
    /// The user paused and the model found the utterance incomplete: the turn ends at
    /// `deadline` unless the user resumes.
    Waiting { start: u64, speech_end_at: Duration, deadline: tokio::time::Instant, since: tokio::time::Instant },
}

/// The `smart_turn` processor. Forwards every frame unchanged; adds `UserTurnEnded`,
/// `Interruption` and metrics.
///
/// The fallback timeout is a deadline checked whenever a frame arrives and, for input that stops
/// sending audio while the turn waits (a WAV file read as fast as possible, a stalled device), by
/// a wake-up the runtime delivers on the processor's own task ([`ProcessorContext::wake_after`]):
/// the turn state never races with a timer ending the turn behind the processor's back.
pub struct SmartTurn {
    settings: SmartTurnSettings,
    model: Arc<Mutex<SmartTurnModel>>,
    /// Wakes the processor when an inference has finished (set at start).
    waker: Option<crate::processor::Waker>,
    /// The most recent audio, at most `window` samples.
    audio: VecDeque<i16>,
    window: usize,
    /// Samples received since start: the timeline `Turn::start` is on.
    received: u64,
    /// Input timeline position just past the newest audio.
    audio_end: Duration,
    turn: Turn,
    /// Between the VAD's `UserStartedSpeaking` and `UserStoppedSpeaking`.
    user_speaking: bool,
    /// Between `BotStartedSpeaking` and `BotStoppedSpeaking` (or our interruption).
    bot_speaking: bool,
    /// How long the user has talked over the assistant in the current stretch of speech.
    overlap: Duration,
    /// Where the VAD found the current stretch of speech ended, once it reported the stop.
    vad_end: Option<Duration>,
    /// Inference started at the VAD's pause, until the stop confirms it.
    early: PauseWork<Inference>,
    /// The number of the turn in progress, or of the last one (0: none yet).
    turn_number: u64,
    /// The turn that ended last, with no other reply playing: where its audio starts, and where
    /// its speech ended on the input timeline (speech that begins within `merge_window_ms` of it,
    /// before its reply is heard, continues the turn).
    resumable: Option<(u64, Duration)>,
    /// When the reply to the resumable turn became audible (pipeline timeline).
    reply_heard_at: Option<Duration>,
    /// Whisper's early transcript of the turn up to the end of speech it names.
    words: Option<(Duration, WordsEnd)>,
    /// The speaker's recent pauses inside a turn (silence after which they went on).
    pauses: VecDeque<Duration>,
    format_reported: bool,
}

/// A Smart Turn inference in flight.
struct Inference {
    /// The probability, and how long the model took (it may finish well before it is collected).
    /// Closed without a value when the inference panicked.
    task: tokio::sync::oneshot::Receiver<Result<(f32, Duration), TurnError>>,
    /// Stops the run, when its verdict is no longer wanted.
    stop: Option<Arc<RunOptions>>,
    seconds: f32,
    /// When the stop came (when it was started, for one started at a pause that is not stopped yet).
    stopped: Instant,
    /// Started at the pause, on audio padded with silence.
    early: bool,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference").field("seconds", &self.seconds).field("early", &self.early).finish_non_exhaustive()
    }
}

impl Abandon for Inference {
    /// The verdict is not wanted any more (the user spoke on): stops the model between two of its
    /// steps, so the next inference need not wait for it.
    fn abandon(self) {
        if let Some(stop) = self.stop {
            let _ = stop.terminate();
        }
    }
}

/// Wakes the processor when dropped: at the end of an inference job, also one that panicked.
struct WakeOnDrop(Option<crate::processor::Waker>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        if let Some(w) = &self.0 {
            w.wake();
        }
    }
}

impl SmartTurn {
    /// A processor around a loaded model.
    pub fn new(settings: SmartTurnSettings, model: SmartTurnModel) -> Self {
        let window = ((settings.max_duration_s.clamp(0.0, 8.0) * PIPELINE_SAMPLE_RATE as f32) as usize).max(1);
        Self {
            settings,
            model: Arc::new(Mutex::new(model)),
            waker: None,
            audio: VecDeque::with_capacity(window),
            window,
            received: 0,
            audio_end: Duration::ZERO,
            turn: Turn::Idle,
            user_speaking: false,
            bot_speaking: false,
            overlap: Duration::ZERO,
            vad_end: None,
            early: PauseWork::default(),
            turn_number: 0,
            resumable: None,
            reply_heard_at: None,
            words: None,
            pauses: VecDeque::with_capacity(PAUSES_KEPT),
            format_reported: false,
        }
    }

    /// Keeps the audio for the model; returns how long it plays (zero when it cannot be used).
    async fn keep_audio(&mut self, audio: &AudioFrame, ctx: &ProcessorContext) -> Duration {
        if audio.sample_rate != PIPELINE_SAMPLE_RATE {
            if !self.format_reported {
                self.format_reported = true;
                ctx.push_error(format!(
                    "smart_turn needs {PIPELINE_SAMPLE_RATE} Hz input audio but got {} Hz; end-of-turn detection \
                     falls back to the {} ms timeout. Put smart_turn after the input and the VAD, which deliver \
                     {PIPELINE_SAMPLE_RATE} Hz",
                    audio.sample_rate, self.settings.incomplete_timeout_ms
                ))
                .await;
            }
            return Duration::ZERO;
        }
        let channels = usize::from(audio.channels.max(1));
        if channels == 1 {
            self.audio.extend(audio.samples.iter());
        } else {
            self.audio.extend(
                audio
                    .samples
                    .chunks_exact(channels)
                    .map(|f| (f.iter().map(|&s| i32::from(s)).sum::<i32>() / channels as i32) as i16),
            );
        }
        self.received += audio.frames() as u64;
        self.audio_end = audio.pts + audio.duration();
        let excess = self.audio.len().saturating_sub(self.window);
        self.audio.drain(..excess);
        audio.duration()
    }

    /// The turn's audio from sample `start` on, at most the window.
    fn turn_audio(&self, start: u64) -> Vec<i16> {
        let n = (self.received.saturating_sub(start)).min(self.audio.len() as u64) as usize;
        self.audio.range(self.audio.len() - n..).copied().collect()
    }

    /// The user started speaking `at` (the VAD reports it `start_ms` after the speech began; `now`
    /// is when the report came); true when this continues the turn that just ended. Sets the
    /// number of the turn the speech belongs to.
    fn user_started(&mut self, now: Duration, at: Duration) -> bool {
        self.user_speaking = true;
        self.overlap = Duration::ZERO;
        self.vad_end = None;
        // The speech began before the reply was heard, even when the VAD confirmed it after: as long
        // ago as the audio since its start lasts (input timelines need not match the clock).
        let began = now.saturating_sub(self.audio_end.saturating_sub(at));
        let heard = self.reply_heard_at.take();
        let before_reply = heard.is_none_or(|heard| began < heard + REACTION_TIME);
        debug!(?began, ?heard, resumable = self.resumable.is_some(), "user started");
        // The window is measured on the input timeline, from the end of the turn's speech to the
        // start of this one: the gap the user left. Measured from when the end of the turn was
        // decided, it would grow with the machine's load (a slow verdict, a slow reply), and two
        // questions asked seconds apart would be taken for one.
        let window = Duration::from_millis(self.settings.merge_window_ms);
        let resumable = self.resumable.take().filter(|&(_, end)| before_reply && at.saturating_sub(end) < window);
        let mut resumed = false;
        self.turn = match std::mem::replace(&mut self.turn, Turn::Idle) {
            Turn::Idle => match resumable {
                // The turn ended on a pause, and its reply has not been heard yet: it goes on.
                Some((start, _)) => {
                    info!("the user goes on speaking before the reply is heard; the turn goes on");
                    resumed = true;
                    Turn::Speaking { start }
                }
                _ => {
                    self.turn_number += 1;
                    let pre_roll = PRE_ROLL.as_millis() as u64 * u64::from(PIPELINE_SAMPLE_RATE) / 1000;
                    Turn::Speaking { start: self.received.saturating_sub(pre_roll) }
                }
            },
            Turn::Waiting { start, since, .. } => {
                debug!("user resumed an incomplete utterance; the turn goes on");
                if self.pauses.len() == PAUSES_KEPT {
                    self.pauses.pop_front();
                }
                self.pauses.push_back(since.elapsed());
                Turn::Speaking { start }
            }
            Turn::Deciding { start, inference, .. } => {
                // The result, whatever it is, came too late: the user goes on.
                debug!("user resumed before the model decided; the turn goes on");
                inference.abandon();
                Turn::Speaking { start }
            }
            speaking @ Turn::Speaking { .. } => speaking,
        };
        resumed
    }

    /// Runs the model on `audio` on a blocking thread.
    fn infer(&self, audio: Vec<i16>) -> Inference {
        let seconds = audio.len() as f32 / PIPELINE_SAMPLE_RATE as f32;
        let model = self.model.clone();
        let options = RunOptions::new().map(Arc::new).map_err(TurnError::Setup);
        let stop = options.as_ref().ok().cloned();
        let (tx, task) = tokio::sync::oneshot::channel();
        let wake = WakeOnDrop(self.waker.clone());
        tokio::task::spawn_blocking(move || {
            // Declared first, dropped last: the processor is woken once the result is sent.
            let _wake = wake;
            let run = || {
                // A panic in an earlier call leaves the model itself intact: keep using it.
                let mut model = model.lock().unwrap_or_else(PoisonError::into_inner);
                let began = Instant::now();
                let features = model.features(&audio);
                let options: Arc<RunOptions> = options?;
                Ok((model.infer_with(features, &options)?, began.elapsed()))
            };
            let _ = tx.send(run());
        });
        Inference { task, stop, seconds, stopped: Instant::now(), early: false }
    }

    /// The VAD heard the first silence after speech that ended `at`: starts the model on the turn
    /// as the stop would give it, the silence still to come added as digital silence.
    fn user_paused(&mut self, at: Duration, stop_after: Duration) {
        let Turn::Speaking { start } = self.turn else { return };
        // The user spoke on after the previous pause: its verdict is stale.
        self.early.abandon();
        debug!(at_ms = at.as_millis() as u64, "user paused; the model starts listening");
        let mut audio = self.turn_audio(start);
        let heard = self.audio_end.saturating_sub(at);
        let missing = stop_after.saturating_sub(heard);
        let pad = (missing.as_nanos() * u128::from(PIPELINE_SAMPLE_RATE) / 1_000_000_000) as usize;
        audio.resize(audio.len() + pad, 0);
        let inference = Inference { early: true, ..self.infer(audio) };
        self.early.started(at, Some(inference));
    }

    /// The VAD reported the stop of speech that ended `at`.
    async fn user_stopped(&mut self, at: Duration, ctx: &ProcessorContext) {
        self.user_speaking = false;
        self.overlap = Duration::ZERO;
        self.vad_end = Some(at);
        let Turn::Speaking { start } = self.turn else {
            self.early.abandon();
            return;
        };
        let speech_end_at = ctx.now();
        let pause = self.early.at();
        let mut inference = match self.early.confirm(at) {
            // Started at the pause this stop confirms: no speech since.
            Some(inference) => {
                debug!("using the verdict started at the pause");
                inference
            }
            None => {
                debug!(
                    pause_ms = pause.map(|at| at.as_millis() as u64),
                    end_ms = at.as_millis() as u64,
                    "no verdict from this pause; the model starts listening now"
                );
                self.infer(self.turn_audio(start))
            }
        };
        inference.stopped = Instant::now();
        self.turn = Turn::Deciding { start, speech_end_at, inference };
        self.collect_decision(ctx).await;
    }

    /// Acts on the model's decision once it is there.
    async fn collect_decision(&mut self, ctx: &ProcessorContext) {
        use tokio::sync::oneshot::error::TryRecvError;
        let result = match &mut self.turn {
            // Not there yet: the job wakes the processor when it is.
            Turn::Deciding { inference, .. } => match inference.task.try_recv() {
                Err(TryRecvError::Empty) => return,
                Ok(result) => result,
                Err(TryRecvError::Closed) => Err(TurnError::Panicked),
            },
            _ => return,
        };
        let Turn::Deciding { start, speech_end_at, inference: d } = std::mem::replace(&mut self.turn, Turn::Idle)
        else {
            return;
        };
        let waited = d.stopped.elapsed();
        match result {
            Ok((probability, took)) => {
                ctx.push_metric(MetricName::SmartTurnTime, None, took).await;
                ctx.push_metric(MetricName::SmartTurnWait, None, waited).await;
                let words = self.words_of_this_turn();
                let sounds_complete = probability >= self.settings.threshold;
                // A sentence whose words hang ("… and") is not over, however it sounds.
                let complete = sounds_complete && words != Some(WordsEnd::Dangling);
                // The early verdict swings with the silence added to the audio: ask again on the
                // stop's own audio before the words decide how long to wait.
                if !sounds_complete && d.early {
                    debug!(probability, "incomplete at the pause; asking again on the audio of the stop");
                    let inference = Inference { stopped: d.stopped, ..self.infer(self.turn_audio(start)) };
                    self.turn = Turn::Deciding { start, speech_end_at, inference };
                    return;
                }
                info!(
                    probability,
                    complete,
                    ?words,
                    audio_s = d.seconds,
                    inference_ms = took.as_millis() as u64,
                    wait_ms = waited.as_millis() as u64,
                    "smart turn"
                );
                if complete {
                    self.end_turn(ctx, start, speech_end_at).await;
                } else {
                    let now = tokio::time::Instant::now();
                    // The pause began at the stop, `waited` ago.
                    let since = now.checked_sub(waited).unwrap_or(now);
                    let deadline = if words == Some(WordsEnd::Complete) {
                        complete_words_deadline(since, now)
                    } else {
                        now + self.fallback()
                    };
                    self.turn = Turn::Waiting { start, speech_end_at, deadline, since };
                    ctx.wake_after(deadline - now);
                }
            }
            Err(e) => {
                let error = ErrorChain(&e).to_string();
                warn!(%error, "smart turn failed; ending the turn on silence alone");
                ctx.push_error(format!("end-of-turn detection failed, so the turn ends on silence alone: {error}"))
                    .await;
                self.end_turn(ctx, start, speech_end_at).await;
            }
        }
    }

    /// Ends the turn. `speech_end_at` is when the stop reached us, pushed as the end of speech only
    /// when no stop of the VAD measured it (the stream ended mid-speech): the VAD knows better, and
    /// pushes its own metric with the stop.
    async fn end_turn(&mut self, ctx: &ProcessorContext, start: u64, speech_end_at: Duration) {
        self.turn = Turn::Idle;
        self.reply_heard_at = None;
        // A turn said over a reply that is playing is not one whose reply the user waits for.
        if self.settings.merge_window_ms > 0
            && !self.bot_speaking
            && let Some(end) = self.vad_end
        {
            self.resumable = Some((start, end));
        }
        ctx.cancel_wake();
        ctx.push_downstream(Frame::UserTurnEnded).await;
        if self.vad_end.is_none() {
            ctx.push_metric(MetricName::UserSpeechEndAt, None, speech_end_at).await;
        }
        ctx.push_metric(MetricName::UserTurnEndAt, None, ctx.now()).await;
    }

    async fn end_turn_if_timed_out(&mut self, ctx: &ProcessorContext) {
        if let Turn::Waiting { start, speech_end_at, deadline, since } = self.turn
            && tokio::time::Instant::now() >= deadline
        {
            info!(waited_ms = since.elapsed().as_millis() as u64, "no more speech; the turn ends after the wait");
            self.end_turn(ctx, start, speech_end_at).await;
        }
    }

    /// How the words whisper heard end, when they are of the speech this turn ends with.
    fn words_of_this_turn(&self) -> Option<WordsEnd> {
        self.words.filter(|(end, _)| Some(*end) == self.vad_end).map(|(_, w)| w)
    }

    /// The wait after an utterance that sounds unfinished: `incomplete_timeout_ms`, or, once the
    /// speaker has resumed after a few pauses, half as long again as the longest of them (at
    /// least `MIN_FALLBACK`).
    fn fallback(&self) -> Duration {
        let most = Duration::from_millis(self.settings.incomplete_timeout_ms);
        if self.pauses.len() < PAUSES_NEEDED {
            return most;
        }
        let longest = self.pauses.iter().max().copied().unwrap_or(most);
        (longest * 3 / 2).clamp(MIN_FALLBACK.min(most), most)
    }

    /// Whisper's early transcript of the turn arrived (upstream): a turn waiting on an unfinished
    /// sound ends soon when its words are complete.
    fn heard(&mut self, end: Duration, text: &str, ctx: &ProcessorContext) {
        let words = words_end(text);
        self.words = Some((end, words));
        if words != WordsEnd::Complete || self.words_of_this_turn().is_none() {
            return;
        }
        if let Turn::Waiting { deadline, since, .. } = &mut self.turn {
            // The user has been silent since the stop: the wait counts from there, not from
            // when the words came (late, when whisper had to decode them twice).
            let now = tokio::time::Instant::now();
            let soon = complete_words_deadline(*since, now);
            if soon < *deadline {
                debug!(text, "the words are a complete sentence; the turn ends soon");
                *deadline = soon;
                ctx.wake_after(soon - now);
            }
        }
    }

    /// Counts user speech heard while the assistant speaks, and interrupts once it is long enough.
    async fn count_overlap(&mut self, heard: Duration, ctx: &ProcessorContext) {
        if !(self.settings.barge_in && self.user_speaking && self.bot_speaking) {
            return;
        }
        self.overlap += heard;
        if self.overlap >= Duration::from_millis(self.settings.barge_in_min_ms) {
            info!(overlap_ms = self.overlap.as_millis() as u64, "user talks over the assistant; interrupting");
            // The speaker falls silent on the interruption; its next BotStartedSpeaking sets this
            // again. Without this, a later pause-and-resume of the user would interrupt the next
            // reply before it is even heard.
            self.bot_speaking = false;
            self.overlap = Duration::ZERO;
            ctx.push_downstream(Frame::Interruption).await;
        }
    }
}

#[async_trait]
impl Processor for SmartTurn {
    /// Audio and the speaking events it times and numbers the turn by, and the interim transcripts
    /// coming back from speech-to-text.
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, direction| match frame {
            Frame::InterimTranscription(_) => direction == Direction::Upstream,
            _ => matches!(
                frame,
                Frame::InputAudio(_)
                    | Frame::UserStartedSpeaking { .. }
                    | Frame::UserSpeechPaused { .. }
                    | Frame::UserStoppedSpeaking { .. }
                    | Frame::BotStartedSpeaking
                    | Frame::BotStoppedSpeaking
            ),
        }
    }

    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        self.waker = Some(ctx.waker());
        Ok(())
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        self.collect_decision(ctx).await;
        self.end_turn_if_timed_out(ctx).await;
        match frame {
            Frame::InputAudio(ref audio) => {
                let heard = self.keep_audio(audio, ctx).await;
                ctx.push(frame, direction).await;
                self.count_overlap(heard, ctx).await;
            }
            // The speaking events go on under the number of the turn the speech belongs to.
            Frame::UserStartedSpeaking { at, .. } => {
                let resumed = self.user_started(ctx.now(), at);
                let turn = self.turn_number;
                ctx.push(Frame::UserStartedSpeaking { turn, at }, direction).await;
                if resumed {
                    // Speech-to-text joins the parts; the reply to the first part is cancelled.
                    self.bot_speaking = false;
                    ctx.push_downstream(Frame::UserTurnResumed { turn }).await;
                    ctx.push_downstream(Frame::Interruption).await;
                }
            }
            Frame::UserSpeechPaused { at, stop_after, .. } => {
                ctx.push(Frame::UserSpeechPaused { turn: self.turn_number, at, stop_after }, direction).await;
                self.user_paused(at, stop_after);
            }
            Frame::UserStoppedSpeaking { at, .. } => {
                ctx.push(Frame::UserStoppedSpeaking { turn: self.turn_number, at }, direction).await;
                self.user_stopped(at, ctx).await;
            }
            Frame::InterimTranscription(ref t) if direction == Direction::Upstream => {
                self.heard(t.end, &t.text, ctx);
                ctx.push(frame, direction).await;
            }
            Frame::BotStartedSpeaking => {
                self.bot_speaking = true;
                // The reply is heard: speech that begins from now on is a new turn (or a barge-in).
                if self.resumable.is_some() && self.reply_heard_at.is_none() {
                    self.reply_heard_at = Some(ctx.now());
                }
                ctx.push(frame, direction).await;
            }
            Frame::BotStoppedSpeaking => {
                self.bot_speaking = false;
                ctx.push(frame, direction).await;
            }
            frame => {
                ctx.push(frame, direction).await;
            }
        }
        Ok(())
    }

    async fn interrupted(&mut self, _ctx: &ProcessorContext) {
        self.bot_speaking = false;
        self.overlap = Duration::ZERO;
    }

    /// The fallback timeout, when no frame arrived to check it.
    async fn wake(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        self.collect_decision(ctx).await;
        self.end_turn_if_timed_out(ctx).await;
        Ok(())
    }

    /// At end of stream a turn still open ends, so its last words are transcribed.
    async fn end(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        match self.turn {
            Turn::Idle => {}
            Turn::Speaking { start } => self.end_turn(ctx, start, ctx.now()).await,
            Turn::Waiting { start, speech_end_at, .. } | Turn::Deciding { start, speech_end_at, .. } => {
                self.end_turn(ctx, start, speech_end_at).await
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the numpy reference (matches transformers' `WhisperFeatureExtractor(chunk_length=8)`
    /// with `do_normalize=True` to 4e-7) for 0.5 s of a 440 Hz tone plus a chirp, as i16.
    #[test]
    fn model_input_is_the_front_padded_normalized_log_mel_of_the_last_8_s() {
        let audio: Vec<i16> = (0..8000)
            .map(|i| {
                let t = i as f64 / 16_000.0;
                let tau = std::f64::consts::TAU;
                let x = 0.3 * (tau * 440.0 * t).sin() + 0.2 * (tau * (100.0 * t + 3950.0 * t * t)).sin();
                (f64::from(x as f32) * 32767.0).round() as i16
            })
            .collect();
        let features = window_features(&mut MelSpectrogram::new(), &audio);
        assert_eq!(features.len(), 80 * 800);
        let expected = [
            (0, 0, -0.007622),
            (40, 300, -0.036478),
            (11, 760, 1.924286),
            (11, 790, 1.924274),
            (79, 799, -0.036478),
            (2, 750, 1.695895),
            (3, 750, 1.642855),
            (49, 780, 1.736058),
            (50, 780, 1.695931),
        ];
        for (m, f, want) in expected {
            let got = features[m * 800 + f];
            assert!((got - want).abs() < 1e-3, "mel {m} frame {f}: got {got}, numpy says {want}");
        }
        // Longer audio: only the last 8 s count.
        let mut long = vec![1000i16; 16_000];
        long.extend(std::iter::repeat_n(audio.clone(), 16).flatten());
        let tail = window_features(&mut MelSpectrogram::new(), &long[long.len() - 128_000..]);
        assert_eq!(window_features(&mut MelSpectrogram::new(), &long), tail);
    }

    #[test]
    fn settings_out_of_range_are_reported_with_their_key() {
        let settings =
            SmartTurnSettings { threshold: 1.5, max_duration_s: 9.0, threads: 0, ..SmartTurnSettings::default() };
        let dir = tempfile::tempdir().unwrap();
        let problems = settings.check(&BuildContext::for_dir(dir.path()));
        let keys: Vec<_> = problems.iter().filter_map(|p| p.key).collect();
        assert_eq!(keys, ["model", "threshold", "max_duration_s", "threads"]);
        assert!(problems[0].message.contains("scripts/fetch-models.sh"), "{}", problems[0].message);
    }

    #[test]
    fn defaults_parse_from_an_empty_table_and_unknown_keys_are_rejected() {
        let s: SmartTurnSettings = toml::from_str("").unwrap();
        assert_eq!(s.threshold, 0.5);
        assert_eq!(s.model, PathBuf::from(DEFAULT_MODEL));
        assert!(s.barge_in);
        assert!(toml::from_str::<SmartTurnSettings>("treshold = 0.4").is_err());
    }

    #[test]
    fn the_words_tell_a_complete_sentence_from_one_left_hanging() {
        for text in [
            "What is the capital of France?",
            "Stop.",
            "Turn left!",
            "Yes, please.",
            "Do you remember what my name is?",
            "Where are you from?",
        ] {
            assert_eq!(words_end(text), WordsEnd::Complete, "{text:?}");
        }
        for text in
            ["I want to go to the", "Tell me about", "Pizza and.", "Call my mother and", "Is it the?", "Tea or?"]
        {
            assert_eq!(words_end(text), WordsEnd::Dangling, "{text:?}");
        }
        for text in ["", "Go forward", "I was wondering...", "Hmm"] {
            assert_eq!(words_end(text), WordsEnd::Open, "{text:?}");
        }
    }
}
