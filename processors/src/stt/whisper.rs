//! `whisper_stt`: keeps the audio of the user's turn and transcribes it with Whisper when the
//! turn ends.
//!
//! Audio is kept in three parts: a pre-roll ring of the last `pre_roll_ms` before speech starts
//! (the VAD reports speech `start_ms` late, so the first syllable lives there), the speech in
//! progress, and the turn so far: every utterance up to the last `UserStoppedSpeaking`. When the
//! user pauses and speaks again before the turn ends, the pause is dropped except for its pre-roll
//! and the new utterance joins the same turn. When the turn ends (`UserTurnEnded`, or
//! `UserStoppedSpeaking` with `end_turn_on = "user_stopped_speaking"`), the turn so far is
//! transcribed; speech already in progress again (the turn-end signal raced the user's next
//! words) starts the next turn.
//!
//! A turn that `smart_turn` resumes (`UserTurnResumed`: the user spoke on before the reply was
//! heard) gets its audio back in front of the new speech, and is transcribed again as one turn
//! under the same number; its first transcript, if not pushed yet, never is.
//!
//! A turn's transcripts (interim and final) carry the number its `UserStartedSpeaking` carried (see
//! `Frame` on turn numbers): the number of the turn's first speech, or of the turn resumed.
//!
//! Transcription runs on a blocking thread fed by a worker task, one turn at a time in order, so
//! audio keeps flowing while whisper works and an interruption (which concerns the assistant's
//! reply) never cancels the transcription of what the user said.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::engine::{AudioCtx, Recognized, SttError, WhisperEngine, known_language};
use crate::PIPELINE_SAMPLE_RATE;
use crate::audio::resample::to_mono_f32;
use crate::error::ErrorChain;
use crate::frame::{DEFAULT_SPEAKER, Direction, ErrorFrame, Frame, Metric, MetricName, Transcription};
use crate::processor::{BoxProcessor, BuildContext, FrameSender, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};
use crate::turn::{Abandon, PauseWork};
use crate::vad::To16kMono;

/// Metric: from the turn's end signal to its transcription being ready.
pub const STT_TIME_METRIC: MetricName = MetricName::SttTime;
/// Longest turn kept: past it the turn is transcribed as it stands and a new one begins.
const MAX_TURN: Duration = Duration::from_secs(30);
/// Turns waiting for the transcriber (a live speaker cannot queue more than one or two; a WAV
/// file read faster than real time can). Past it a turn is dropped and the user is told.
const QUEUE: usize = 16;
/// How long `End` waits for pending transcriptions.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// What ends the user's turn and starts transcription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndTurnOn {
    /// `UserTurnEnded`, from an end-of-turn detector (`smart_turn`) after the user stopped.
    UserTurnEnded,
    /// `UserStoppedSpeaking` from the VAD: for pipelines without an end-of-turn detector.
    UserStoppedSpeaking,
}

/// Settings of `whisper_stt`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhisperSttSettings {
    /// The whisper.cpp ggml model (in the models directory unless absolute).
    pub model: PathBuf,
    /// Language code (`en`, `de`, …), or `auto` to detect it (multilingual models only).
    pub language: String,
    /// Threads whisper.cpp computes with. ggml's threads spin-wait for each other at every step,
    /// so on a machine whose cores are busy with other work (2 cores, a local LLM) 1 thread can be
    /// several times faster than 2.
    pub threads: usize,
    /// Encoder window: `"auto"` sizes it to the utterance, at least 512 frames (see `AUDIO_CTX_FLOOR`)
    /// (fast for short turns), a number of encoder frames (50 per second, at most 1500), or 0
    /// for whisper's full 30 s window.
    pub audio_ctx: AudioCtx,
    /// Beams of whisper's beam search: 1 decodes greedily (the fastest); a beam hears a few more
    /// words right for several times the transcription time (config.toml has the figures). At
    /// most 8.
    pub beam_size: u32,
    /// Audio kept from before the VAD reported speech, in milliseconds; should exceed the VAD's
    /// `start_ms` or the first syllable is lost.
    pub pre_roll_ms: u32,
    /// What ends the turn: `"user_turn_ended"` (an end-of-turn detector follows the VAD) or
    /// `"user_stopped_speaking"` (transcribe as soon as the VAD hears silence).
    pub end_turn_on: EndTurnOn,
    /// With `end_turn_on = "user_turn_ended"`: start transcribing as soon as the VAD hears the
    /// user pause (its first silent window), while the VAD waits for more silence and the
    /// end-of-turn detector decides. When the turn then ends with no new speech, that transcript
    /// is used and the reply starts sooner by about the STT time; when the user goes on, it is
    /// thrown away (CPU spent on pauses inside the turn). Each early transcript also goes
    /// downstream as an `InterimTranscription` once it is made, unless the user spoke on before
    /// (or the turn has ended by then), so the LLM can read the turn's prompt while the user
    /// pauses and the end-of-turn detector decides.
    pub transcribe_early: bool,
    /// Threads for the early transcription, which runs while the end-of-turn detector (Smart
    /// Turn, one thread) decides. On 2 cores, 1 leaves it the other core: both finish sooner
    /// than when three threads share two (ggml's threads spin while they wait for each other).
    /// A transcript that loops is decoded again on `threads`: the detector is done by then.
    pub early_threads: usize,
    /// The speaker id given to transcriptions.
    pub speaker: String,
    /// Forward the input audio downstream; by default this processor consumes it.
    pub forward_audio: bool,
}

impl Default for WhisperSttSettings {
    fn default() -> Self {
        Self {
            model: PathBuf::from("ggml-tiny.en-q8_0.bin"),
            language: "en".into(),
            threads: 2,
            audio_ctx: AudioCtx::Auto,
            beam_size: 1,
            pre_roll_ms: 300,
            end_turn_on: EndTurnOn::UserTurnEnded,
            transcribe_early: true,
            early_threads: 1,
            speaker: DEFAULT_SPEAKER.into(),
            forward_audio: false,
        }
    }
}

impl Settings for WhisperSttSettings {
    const TYPE: &'static str = "whisper_stt";
    const ABOUT: &'static str = "Whisper speech-to-text (whisper.cpp): transcribes the user's turn when it ends";

    fn requires(&self) -> Vec<crate::registry::Requirement> {
        vec![crate::registry::Requirement {
            any_of: &[crate::vad::SileroVadSettings::TYPE, crate::vad::WebRtcVadSettings::TYPE],
            key: None,
            why: "it transcribes the turns a voice activity detector marks; put silero_vad or webrtc_vad before it",
        }]
    }

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        let model = ctx.model_path(&self.model);
        if !model.is_file() {
            problems.push(if self.model.as_os_str() == "ggml-base.bin" {
                Problem::at(
                    "model",
                    format!(
                        "model file {} does not exist; fetch it with `scripts/fetch-models.sh --only whisper-base`",
                        model.display()
                    ),
                )
            } else {
                Problem::missing_model("model", &model)
            });
        }
        if !known_language(&self.language) {
            problems.push(Problem::at(
                "language",
                format!(
                    "whisper does not know the language {:?}; use a code such as \"en\", or \"auto\"",
                    self.language
                ),
            ));
        }
        if !(1..=32).contains(&self.threads) {
            problems.push(Problem::at("threads", "`threads` must be between 1 and 32"));
        }
        if !(1..=32).contains(&self.early_threads) {
            problems.push(Problem::at("early_threads", "`early_threads` must be between 1 and 32"));
        }
        if !(1..=8).contains(&self.beam_size) {
            problems.push(Problem::at("beam_size", "`beam_size` must be between 1 (greedy) and 8"));
        }
        if self.pre_roll_ms > 2000 {
            problems.push(Problem::at("pre_roll_ms", "`pre_roll_ms` must be at most 2000"));
        }
        if self.speaker.trim().is_empty() {
            problems.push(Problem::at("speaker", "`speaker` must not be empty"));
        }
        problems
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let model = ctx.model_path(&self.model);
        let loaded = Instant::now();
        let mut engine =
            WhisperEngine::load(&model, self.threads, &self.language, self.audio_ctx).map_err(BuildError::other)?;
        engine.set_beam_size(self.beam_size);
        tracing::info!(model = %model.display(), ms = loaded.elapsed().as_millis() as u64, "Whisper model loaded");
        Ok(Box::new(WhisperStt::new(self, engine)))
    }
}

/// One turn handed to the transcriber.
struct Job {
    /// Numbers the jobs, from 1.
    id: u64,
    /// The user turn.
    turn: u64,
    audio: Vec<f32>,
    start: Duration,
    end: Duration,
    /// When the turn's end was signalled, for `stt_time`.
    queued: Instant,
    /// The early transcription of exactly this audio, if one was started.
    early: Option<u64>,
}

enum Work {
    Turn(Job),
    /// The turn so far, transcribed before the turn has ended; kept until a `Turn` claims it.
    Early {
        id: u64,
        /// The user turn.
        turn: u64,
        audio: Vec<f32>,
        /// Where the speech so far starts and ends on the input timeline.
        start: Duration,
        end: Duration,
        /// Set when the user spoke on: whisper stops, or the work is skipped.
        abandoned: Arc<AtomicBool>,
    },
    /// The user stopped, and early transcription `id` is of the turn as it stands: send it on as
    /// an interim transcript unless a turn has claimed it.
    Interim(u64),
    /// Answered once every turn before it has been transcribed and pushed.
    Flush(oneshot::Sender<()>),
}

/// An early transcription handed to the worker.
#[derive(Debug)]
struct Early {
    id: u64,
    abandoned: Arc<AtomicBool>,
}

impl Abandon for Early {
    /// Its transcript would miss words: stops it (whisper checks between steps) or skips it.
    fn abandon(self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

/// Abandons `early`, if any.
fn abandon(early: Option<Early>) {
    if let Some(e) = early {
        e.abandon();
    }
}

/// The running `whisper_stt` processor.
pub struct WhisperStt {
    settings: WhisperSttSettings,
    engine: Option<WhisperEngine>,
    worker: Option<(mpsc::Sender<Work>, JoinHandle<()>)>,
    convert: To16kMono,
    pre_roll: VecDeque<i16>,
    pre_roll_cap: usize,
    /// Timeline position just past the newest sample received.
    cursor: Duration,
    /// Speech in progress (pre-roll included).
    open: Vec<i16>,
    open_start: Duration,
    /// The turn so far: utterances up to the last `UserStoppedSpeaking`.
    turn: Vec<i16>,
    turn_start: Option<Duration>,
    turn_end: Duration,
    /// The number of the turn so far (set with `turn_start`).
    turn_number: u64,
    speaking: bool,
    /// The number of the speech in progress, from its `UserStartedSpeaking`.
    open_turn: u64,
    /// Speech boundaries reported by the VAD's speaking events, more precise than the event arrival.
    vad_start: Option<Duration>,
    vad_end: Option<Duration>,
    /// The early transcription started on the turn as it stands; cleared by new speech.
    early: Option<Early>,
    /// The early transcription started at the VAD's pause, until the stop confirms it.
    paused: PauseWork<Early>,
    early_ids: u64,
    /// Id of the newest early transcription a turn has claimed (shared with the worker, which
    /// then has no use for sending it on as an interim transcript).
    claimed: Arc<AtomicU64>,
    jobs: u64,
    /// The turn handed over last, kept until the next one in case it is resumed.
    last_turn: Option<LastTurn>,
    /// Id of the job whose turn was resumed (shared with the worker, which then does not push its
    /// transcript, or numbers the resumed turn's transcript as it).
    resumed: Arc<AtomicU64>,
}

/// The audio of the turn handed over last.
struct LastTurn {
    job: u64,
    turn: u64,
    audio: Vec<i16>,
    start: Duration,
    end: Duration,
}

fn duration_of(samples: usize) -> Duration {
    Duration::from_nanos(samples as u64 * 1_000_000_000 / u64::from(PIPELINE_SAMPLE_RATE))
}

impl WhisperStt {
    /// A processor around a loaded engine.
    pub fn new(settings: WhisperSttSettings, engine: WhisperEngine) -> Self {
        let pre_roll_cap = (u64::from(PIPELINE_SAMPLE_RATE) * u64::from(settings.pre_roll_ms) / 1000) as usize;
        Self {
            settings,
            engine: Some(engine),
            worker: None,
            convert: To16kMono::default(),
            pre_roll: VecDeque::with_capacity(pre_roll_cap),
            pre_roll_cap,
            cursor: Duration::ZERO,
            open: Vec::new(),
            open_start: Duration::ZERO,
            turn: Vec::new(),
            turn_start: None,
            turn_end: Duration::ZERO,
            turn_number: 0,
            speaking: false,
            open_turn: 0,
            vad_start: None,
            vad_end: None,
            early: None,
            paused: PauseWork::default(),
            early_ids: 0,
            claimed: Arc::new(AtomicU64::new(0)),
            jobs: 0,
            last_turn: None,
            resumed: Arc::new(AtomicU64::new(0)),
        }
    }

    fn on_audio(&mut self, samples: &[i16], pts: Duration) {
        self.cursor = pts + duration_of(samples.len());
        if self.speaking {
            self.open.extend_from_slice(samples);
        } else {
            for &s in samples {
                if self.pre_roll.len() == self.pre_roll_cap {
                    self.pre_roll.pop_front();
                }
                if self.pre_roll_cap > 0 {
                    self.pre_roll.push_back(s);
                }
            }
        }
    }

    /// Speech of turn `turn` began `at`.
    fn on_started(&mut self, turn: u64, at: Duration) {
        self.vad_start = Some(at);
        if self.speaking {
            return;
        }
        self.speaking = true;
        self.open_turn = turn;
        // The turn grows: an early transcript of it would miss these words.
        abandon(self.early.take());
        self.paused.abandon();
        // An end reported before this utterance began belongs to an earlier one.
        self.vad_end = None;
        self.open.clear();
        self.open.extend(self.pre_roll.drain(..));
        self.open_start = self.cursor.saturating_sub(duration_of(self.open.len()));
    }

    /// Moves the speech in progress into the turn.
    fn commit_open(&mut self) {
        if self.open.is_empty() {
            return;
        }
        // The VAD's boundaries are used only when they fall inside this utterance's audio.
        let inside = |t: &Duration| (self.open_start..=self.cursor).contains(t);
        let speech_start = self.vad_start.take().filter(inside).unwrap_or(self.open_start);
        let speech_end = self.vad_end.take().filter(inside).unwrap_or(self.cursor);
        if self.turn_start.is_none() {
            self.turn_start = Some(speech_start);
            self.turn_number = self.open_turn;
        }
        self.turn.append(&mut self.open);
        self.turn_end = speech_end;
    }

    fn on_stopped(&mut self) {
        if !self.speaking {
            return;
        }
        self.speaking = false;
        self.commit_open();
    }

    /// Takes the turn so far as a transcription job.
    fn take_turn(&mut self) -> Option<Job> {
        let start = self.turn_start.take()?;
        let audio = to_mono_f32(&self.turn, 1);
        let kept = std::mem::take(&mut self.turn);
        if audio.is_empty() {
            return None;
        }
        let early = self.early.take().map(|e| e.id);
        if let Some(id) = early {
            self.claimed.store(id, Ordering::Relaxed);
        }
        self.jobs += 1;
        let end = self.turn_end.max(start);
        let turn = self.turn_number;
        self.last_turn = Some(LastTurn { job: self.jobs, turn, audio: kept, start, end });
        Some(Job { id: self.jobs, turn, audio, start, end, queued: Instant::now(), early })
    }

    /// The turn handed over last goes on (`UserTurnResumed`): its audio comes back in front of the
    /// speech that has just started, and its transcript is replaced by the whole turn's, under the
    /// same number `turn`.
    fn on_resumed(&mut self, turn: u64) {
        // A turn whose end never came through is simply still open.
        if self.turn_start.is_some() {
            return;
        }
        let Some(last) = self.last_turn.take() else { return };
        let mut audio = last.audio;
        audio.append(&mut self.turn);
        self.turn = audio;
        self.turn_start = Some(last.start);
        self.turn_end = last.end;
        self.turn_number = turn;
        self.resumed.store(last.job, Ordering::Relaxed);
        tracing::debug!(
            job = last.job,
            turn,
            last = last.turn,
            "the turn goes on; its audio is kept for one transcript"
        );
    }

    /// Starts transcribing `audio`, the speech up to `end`, before the turn has ended.
    fn transcribe_early(&mut self, audio: Vec<f32>, end: Duration) -> Option<Early> {
        let (tx, _) = self.worker.as_ref()?;
        if audio.is_empty() {
            return None;
        }
        self.early_ids += 1;
        let early = Early { id: self.early_ids, abandoned: Arc::new(AtomicBool::new(false)) };
        let start = self.turn_start.or(self.vad_start).unwrap_or(self.open_start);
        let turn = if self.turn_start.is_some() { self.turn_number } else { self.open_turn };
        let work = Work::Early { id: early.id, turn, audio, start, end, abandoned: early.abandoned.clone() };
        // Skipped when turns are queued: it would only delay them.
        tx.try_send(work).is_ok().then_some(early)
    }

    /// The VAD heard the user pause: transcribes the turn with the speech so far, so that the
    /// transcript is ready when the stop and the end of the turn come.
    fn on_paused(&mut self, at: Duration) {
        if !self.speaking {
            return;
        }
        // The user spoke on after the previous pause: its transcript misses words.
        self.paused.abandon();
        let mut audio = to_mono_f32(&self.turn, 1);
        audio.extend(to_mono_f32(&self.open, 1));
        let early = self.transcribe_early(audio, at);
        self.paused.started(at, early);
    }

    /// The VAD heard the user stop (the speech in progress is in the turn now): keeps the
    /// transcript started at the pause this stop confirms, or starts one, and has it sent on as an
    /// interim transcript.
    fn early_at_stop(&mut self, speech_end: Duration) {
        self.early = match self.paused.confirm(speech_end) {
            Some(early) => Some(early),
            None => self.transcribe_early(to_mono_f32(&self.turn, 1), self.turn_end),
        };
        if let (Some(early), Some((tx, _))) = (&self.early, &self.worker) {
            let _ = tx.try_send(Work::Interim(early.id));
        }
    }

    fn early_enabled(&self) -> bool {
        self.settings.transcribe_early && self.settings.end_turn_on == EndTurnOn::UserTurnEnded
    }

    async fn submit(&mut self, job: Job, ctx: &ProcessorContext) {
        let Some((tx, _)) = &self.worker else {
            ctx.push_error("speech-to-text is not running (the processor was not started)").await;
            return;
        };
        let secs = job.audio.len() as f64 / f64::from(PIPELINE_SAMPLE_RATE);
        tracing::debug!(processor = ctx.id(), secs, "transcribing turn");
        if tx.try_send(Work::Turn(job)).is_err() {
            ctx.push_error(format!(
                "speech-to-text cannot keep up: {QUEUE} turns are waiting, so a turn of {secs:.1} s was dropped; \
                 use a smaller model or more `threads`"
            ))
            .await;
        }
    }

    async fn end_turn(&mut self, ctx: &ProcessorContext) {
        if let Some(job) = self.take_turn() {
            self.submit(job, ctx).await;
        }
    }
}

#[async_trait]
impl Processor for WhisperStt {
    /// Audio and the turn's events on their way down. Upstream frames pass untouched, even
    /// while a transcription is handed over.
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, direction| {
            direction == Direction::Downstream
                && matches!(
                    frame,
                    Frame::InputAudio(_)
                        | Frame::UserStartedSpeaking { .. }
                        | Frame::UserTurnResumed { .. }
                        | Frame::UserSpeechPaused { .. }
                        | Frame::UserStoppedSpeaking { .. }
                        | Frame::UserTurnEnded
                )
        }
    }

    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        let Some(engine) = self.engine.take() else { return Ok(()) };
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker {
            id: ctx.id().to_string(),
            speaker: self.settings.speaker.clone(),
            sender: ctx.sender(),
            cancel: ctx.cancellation(),
            early_threads: self.settings.early_threads,
            claimed: self.claimed.clone(),
            resumed: self.resumed.clone(),
        };
        self.worker = Some((tx, ctx.spawn(worker.run(engine, rx))));
        Ok(())
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        match &frame {
            Frame::InputAudio(audio) => {
                let samples = self.convert.convert(audio).into_owned();
                self.on_audio(&samples, audio.pts);
                if self.speaking && duration_of(self.turn.len() + self.open.len()) >= MAX_TURN {
                    tracing::warn!(processor = ctx.id(), "turn longer than 30 s; transcribing it as it stands");
                    self.commit_open();
                    self.end_turn(ctx).await;
                    self.open_start = self.cursor;
                }
                if !self.settings.forward_audio {
                    return Ok(());
                }
            }
            Frame::UserStartedSpeaking { turn, at } => self.on_started(*turn, *at),
            Frame::UserTurnResumed { turn } => self.on_resumed(*turn),
            Frame::UserSpeechPaused { at, .. } if self.early_enabled() => self.on_paused(*at),
            Frame::UserStoppedSpeaking { at: speech_end, .. } => {
                let speech_end = *speech_end;
                self.vad_end = Some(speech_end);
                self.on_stopped();
                match self.settings.end_turn_on {
                    EndTurnOn::UserStoppedSpeaking => self.end_turn(ctx).await,
                    EndTurnOn::UserTurnEnded if self.settings.transcribe_early => self.early_at_stop(speech_end),
                    EndTurnOn::UserTurnEnded => {}
                }
            }
            Frame::UserTurnEnded if self.settings.end_turn_on == EndTurnOn::UserTurnEnded => {
                self.end_turn(ctx).await;
            }
            _ => {}
        }
        ctx.push(frame, direction).await;
        Ok(())
    }

    async fn end(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        // The stream ended: what the user said so far is the last turn.
        self.on_stopped();
        self.end_turn(ctx).await;
        if let Some((tx, _)) = &self.worker {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(Work::Flush(done_tx)).await.is_ok()
                && tokio::time::timeout(FLUSH_TIMEOUT, done_rx).await.is_err()
            {
                return Err(ProcessError::recoverable(
                    "speech-to-text did not finish within 120 s of the end of input",
                ));
            }
        }
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some((_, handle)) = self.worker.take() {
            handle.abort();
        }
    }
}

/// An early transcription the worker has made.
struct EarlyDone {
    id: u64,
    turn: u64,
    recognized: Result<Recognized, SttError>,
    /// Where its speech starts and ends on the input timeline.
    start: Duration,
    end: Duration,
    /// Sent on as an interim transcript already.
    sent: bool,
}

/// The task that feeds turns to whisper on a blocking thread, one at a time, and pushes the
/// results downstream.
struct Worker {
    id: String,
    speaker: String,
    sender: FrameSender,
    cancel: CancellationToken,
    early_threads: usize,
    /// See [`WhisperStt::claimed`].
    claimed: Arc<AtomicU64>,
    /// See [`WhisperStt::resumed`].
    resumed: Arc<AtomicU64>,
}

impl Worker {
    async fn run(self, engine: WhisperEngine, mut rx: mpsc::Receiver<Work>) {
        let mut engine = Some(engine);
        // The latest early transcription, claimed by the turn it was made for.
        let mut early: Option<EarlyDone> = None;
        loop {
            let work = tokio::select! {
                _ = self.cancel.cancelled() => return,
                work = rx.recv() => match work { Some(w) => w, None => return },
            };
            let (job, recognized) = match work {
                Work::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
                Work::Early { id, turn, audio, start, end, abandoned } => {
                    // Abandoned while it waited: the processor abandons an early transcription
                    // before it sends the one that replaces it.
                    if abandoned.load(Ordering::Relaxed) {
                        continue;
                    }
                    let threads = Some((self.early_threads, abandoned.clone()));
                    let Some(recognized) = self.transcribe(&mut engine, audio, threads).await else {
                        return;
                    };
                    tracing::debug!(processor = %self.id, id, ok = recognized.is_ok(), "transcribed early");
                    let mut done = EarlyDone { id, turn, recognized, start, end, sent: false };
                    // The user has not spoken on since the pause: the turn so far goes on at once,
                    // so the LLM server starts reading the turn's prompt. When the user goes on, the
                    // server has read its beginning, and the next read adds only the new words.
                    if !abandoned.load(Ordering::Relaxed) {
                        self.send_interim(&mut done).await;
                    }
                    early = Some(done);
                    continue;
                }
                Work::Interim(id) => {
                    // Work runs in order: the early transcription is done by now (and was sent on
                    // when it was done, unless the user spoke meanwhile).
                    if let Some(done) = early.as_mut().filter(|e| e.id == id) {
                        self.send_interim(done).await;
                    }
                    continue;
                }
                Work::Turn(mut job) => match early.take() {
                    // Work runs in order: an early transcription of this turn is done by now.
                    Some(done) if job.early == Some(done.id) => {
                        tracing::debug!(processor = %self.id, id = done.id, "using the early transcription");
                        (job, done.recognized)
                    }
                    _ => {
                        let audio = std::mem::take(&mut job.audio);
                        let Some(r) = self.transcribe(&mut engine, audio, None).await else { return };
                        (job, r)
                    }
                },
            };
            if self.resumed.load(Ordering::Relaxed) == job.id {
                tracing::debug!(processor = %self.id, job = job.id, "the turn went on; its transcript is replaced");
                continue;
            }
            match recognized {
                Ok(r) if r.text.is_empty() => {
                    tracing::debug!(processor = %self.id, raw = %r.raw, "no words in the turn");
                }
                Ok(r) => {
                    let stt_time = job.queued.elapsed();
                    tracing::info!(
                        processor = %self.id, turn = job.turn, text = %r.text, audio_ctx = r.audio_ctx,
                        retried = r.retried, ms = r.elapsed.as_millis() as u64, "transcribed"
                    );
                    let t = Transcription {
                        text: r.text,
                        speaker: self.speaker.clone(),
                        turn: job.turn,
                        start: job.start,
                        end: job.end,
                        processing: r.elapsed,
                    };
                    let metric = Metric {
                        source: self.id.clone(),
                        turn: Some(job.turn),
                        name: STT_TIME_METRIC,
                        value: stt_time,
                    };
                    self.sender.downstream(Frame::Metrics(Box::new(metric))).await;
                    self.sender.downstream(Frame::Transcription(Box::new(t))).await;
                }
                Err(e) => {
                    let message = ErrorChain(&e).to_string();
                    self.error(message, true).await;
                }
            }
        }
    }

    /// Sends `early` on as an interim transcript, once, when it has words and no turn has claimed
    /// it (its final transcript follows at once then).
    async fn send_interim(&self, early: &mut EarlyDone) {
        let Ok(r) = &early.recognized else { return };
        if early.sent || r.text.is_empty() || self.claimed.load(Ordering::Relaxed) == early.id {
            return;
        }
        let t = Transcription {
            text: r.text.clone(),
            speaker: self.speaker.clone(),
            turn: early.turn,
            start: early.start,
            end: early.end.max(early.start),
            processing: r.elapsed,
        };
        // Upstream too: `smart_turn` weighs the words in its end-of-turn decision.
        self.sender.upstream(Frame::InterimTranscription(Box::new(t.clone()))).await;
        self.sender.downstream(Frame::InterimTranscription(Box::new(t))).await;
        early.sent = true;
    }

    /// Runs whisper on a blocking thread, on the configured number of threads or, for an early
    /// transcription, on `early` threads until its flag is set; `None` when the engine is gone
    /// (reported).
    async fn transcribe(
        &self,
        engine: &mut Option<WhisperEngine>,
        audio: Vec<f32>,
        early: Option<(usize, Arc<AtomicBool>)>,
    ) -> Option<Result<Recognized, SttError>> {
        let mut e = engine.take()?;
        match tokio::task::spawn_blocking(move || {
            let r = match early {
                Some((n, abandoned)) => e.transcribe_early(&audio, n, abandoned),
                None => e.transcribe(&audio),
            };
            (e, r)
        })
        .await
        {
            Ok((e, r)) => {
                *engine = Some(e);
                Some(r)
            }
            Err(join) => {
                // whisper.cpp panicked or the runtime is shutting down; the model is gone.
                self.error(format!("speech-to-text stopped: {join}"), false).await;
                None
            }
        }
    }

    async fn error(&self, message: String, recoverable: bool) {
        tracing::warn!(processor = %self.id, error = %message, "speech-to-text failed");
        let frame = Frame::Error(Box::new(ErrorFrame { source: self.id.clone(), message, recoverable }));
        self.sender.downstream(frame).await;
    }
}
