//! Voice activity detection: `silero_vad` (Silero v5 through ONNX Runtime) and `webrtc_vad`
//! (libfvad). Both cut the 16 kHz input into their detector's windows, decide speech per window
//! (probability over a threshold and loudness over a floor), and run the same [`SpeechTracker`]:
//! `UserStartedSpeaking` once speech has lasted `start_ms`, `UserSpeechPaused` once silence after
//! speech has lasted `pause_ms` (0: at the first silent window), `UserStoppedSpeaking` once it has
//! lasted `stop_ms`. The audio frames travel on unchanged; speech-to-text needs them.
//!
//! The pause lets the end-of-turn detector and speech-to-text start on the turn `stop_ms` before
//! the stop (their work takes longer than the stop wait on a small CPU); the stop then confirms it
//! when it reports the same end of speech.
//!
//! Each event carries the boundary's position on the pipeline timeline (taken from the audio's
//! timestamps, not from when the event was emitted: the speech began `start_ms` before
//! `UserStartedSpeaking`, and ended `stop_ms` before `UserStoppedSpeaking`), and the number of the
//! speech: each `UserStartedSpeaking` opens the next (see `Frame` on turn numbers). The start and
//! the stop are preceded by a metric with the same position, for logs and benchmarks:
//! `user_speech_start_at` and `user_speech_end_at`.
//!
//! Silero's inference runs on tokio's blocking pool, never on the thread that routes every frame
//! (see `slowcat_core::runtime`); WebRTC's detector ([`Detector::BLOCKING`] false) is a few
//! microseconds of arithmetic and runs inline. The detector lives behind a lock shared with the
//! blocking job, and the events a job finds wait in it until pushed: an interruption dropping
//! `process` while the job runs loses neither the detector's state nor an event (they go out
//! after the next audio frame). Each audio frame is forwarded after its detection, then its
//! events, in that order.

mod level;
mod silero;
mod webrtc;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::PIPELINE_SAMPLE_RATE;
use crate::audio::resample::{StreamResampler, to_i16, to_mono_f32};
use crate::error::ErrorChain;
use crate::frame::{AudioFrame, Direction, Frame, MetricName};
use crate::processor::{ProcessError, Processor, ProcessorContext};

pub use level::AutoGain;
pub use silero::{SileroDetector, SileroVadSettings};
pub use webrtc::{WebRtcDetector, WebRtcVadSettings};

/// A speech boundary found by the [`SpeechTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechEvent {
    /// Speech has lasted long enough; it began `at`.
    Started {
        /// Start of the first speech window of the run.
        at: Duration,
    },
    /// Silence after speech has lasted the tracker's `pause` (zero: its first silent window): the
    /// speech ended `at`, unless it resumes before the silence has lasted long enough to stop it.
    /// Each pause inside speech gives one.
    Paused {
        /// End of the last speech window.
        at: Duration,
    },
    /// Silence has lasted long enough; the speech ended `at`.
    Stopped {
        /// End of the last speech window.
        at: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackerState {
    Quiet,
    /// Speech began `since`; `speech` of it so far, the last `gap` of it silent.
    Starting {
        since: Duration,
        speech: Duration,
        gap: Duration,
    },
    Speaking,
    Stopping {
        speech_end: Duration,
        paused: bool,
    },
}

/// Longest silence inside speech that is still starting.
pub const START_GAP: Duration = Duration::from_millis(100);

/// Turns per-window speech decisions into started/stopped events with hysteresis in time:
/// speech must add up to `start` before it counts (a cough or a click does not), silence must
/// last `stop` before speech ends (pauses between words do not end it). While speech is starting,
/// silences up to [`START_GAP`] do not reset it: the closure before a plosive ("wha-t time") is
/// silent for 40–80 ms, and the boundary belongs before the first word, not after it.
#[derive(Debug, Clone)]
pub struct SpeechTracker {
    start: Duration,
    stop: Duration,
    pause: Duration,
    state: TrackerState,
    last_speech_end: Duration,
}

impl SpeechTracker {
    /// A tracker needing `start` of speech to start and `stop` of silence to stop.
    pub fn new(start: Duration, stop: Duration) -> Self {
        Self { start, stop, pause: Duration::ZERO, state: TrackerState::Quiet, last_speech_end: Duration::ZERO }
    }

    /// Reports `Paused` once silence has lasted `pause` (zero: at the first silent window).
    pub fn with_pause(self, pause: Duration) -> Self {
        Self { pause, ..self }
    }

    /// Silence needed to stop.
    pub fn stop_after(&self) -> Duration {
        self.stop
    }

    /// True between `Started` and `Stopped`.
    pub fn speaking(&self) -> bool {
        matches!(self.state, TrackerState::Speaking | TrackerState::Stopping { .. })
    }

    /// Feeds the decision for the window `[at, at + len)`.
    pub fn update(&mut self, at: Duration, len: Duration, speech: bool) -> Option<SpeechEvent> {
        let end = at + len;
        if speech {
            self.last_speech_end = end;
        }
        match (self.state, speech) {
            (TrackerState::Quiet, true) => self.try_start(at, len),
            (TrackerState::Starting { since, speech, .. }, true) => self.try_start(since, speech + len),
            (TrackerState::Starting { since, speech, gap }, false) => {
                let gap = gap + len;
                // A short burst that did not add up to `start` before a real silence.
                self.state = if gap > START_GAP.min(self.stop) {
                    TrackerState::Quiet
                } else {
                    TrackerState::Starting { since, speech, gap }
                };
                None
            }
            (TrackerState::Speaking, false) => {
                self.state = TrackerState::Stopping { speech_end: at, paused: false };
                self.silence(at, end)
            }
            (TrackerState::Stopping { speech_end, .. }, false) => self.silence(speech_end, end),
            (TrackerState::Stopping { .. }, true) => {
                self.state = TrackerState::Speaking;
                None
            }
            (TrackerState::Quiet, false) | (TrackerState::Speaking, true) => None,
        }
    }

    fn try_start(&mut self, since: Duration, speech: Duration) -> Option<SpeechEvent> {
        if speech >= self.start {
            self.state = TrackerState::Speaking;
            Some(SpeechEvent::Started { at: since })
        } else {
            self.state = TrackerState::Starting { since, speech, gap: Duration::ZERO };
            None
        }
    }

    /// Silence since `speech_end` up to `end`: a stop, a pause, or nothing yet.
    fn silence(&mut self, speech_end: Duration, end: Duration) -> Option<SpeechEvent> {
        if let Some(stop) = self.try_stop(speech_end, end) {
            return Some(stop);
        }
        match &mut self.state {
            TrackerState::Stopping { paused: paused @ false, .. } if end - speech_end >= self.pause => {
                *paused = true;
                Some(SpeechEvent::Paused { at: speech_end })
            }
            _ => None,
        }
    }

    fn try_stop(&mut self, speech_end: Duration, end: Duration) -> Option<SpeechEvent> {
        if end.saturating_sub(speech_end) >= self.stop {
            self.state = TrackerState::Quiet;
            Some(SpeechEvent::Stopped { at: speech_end })
        } else {
            None
        }
    }

    /// Ends speech in progress (end of stream): `Stopped` at the end of the last speech window.
    pub fn flush(&mut self) -> Option<SpeechEvent> {
        let event = match self.state {
            TrackerState::Speaking => Some(SpeechEvent::Stopped { at: self.last_speech_end }),
            TrackerState::Stopping { speech_end, .. } => Some(SpeechEvent::Stopped { at: speech_end }),
            _ => None,
        };
        self.state = TrackerState::Quiet;
        event
    }
}

/// Why a voice activity detector could not load or judge a window.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    /// The model file is missing.
    #[error("model file {} does not exist; fetch it with `scripts/fetch-models.sh`", .0.display())]
    MissingModel(PathBuf),
    /// ONNX Runtime or the model would not load.
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    /// Running the model failed.
    #[error("Silero inference failed")]
    Inference(#[from] ort::Error),
    /// The model's output lacks the probability.
    #[error("Silero returned no probability")]
    NoProbability,
    /// The model's recurrent state has the wrong size (another model than Silero v5).
    #[error("Silero returned a state of {got} values, expected {expected}")]
    State {
        /// Values returned.
        got: usize,
        /// Values expected.
        expected: usize,
    },
    /// The blocking job running the detector panicked.
    #[error("voice activity detection panicked")]
    Panicked,
    /// WebRTC VAD rejected a window (a size it does not take).
    #[error("WebRTC VAD refused a frame of {0} samples")]
    Refused(usize),
}

/// A speech detector over fixed windows of 16 kHz mono audio.
pub trait Detector: Send + 'static {
    /// True for model inference, which runs on a blocking thread; false for detectors cheap
    /// enough to run on the async thread.
    const BLOCKING: bool = true;
    /// Samples per window at 16 kHz.
    fn window(&self) -> usize;
    /// Speech probability of one window of `window()` samples (0 or 1 for yes/no detectors).
    fn speech_probability(&mut self, window: &[i16]) -> Result<f32, VadError>;
    /// Forgets the recurrent state (after a gap in the audio).
    fn reset(&mut self);
}

/// RMS level of samples in dBFS (-inf for digital silence).
pub fn rms_db(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return f32::NEG_INFINITY;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / samples.len() as f64).sqrt() / 32768.0;
    (20.0 * rms.log10()) as f32
}

/// Thresholds shared by both detectors.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    /// Probability needed to count a window as speech while quiet.
    pub on: f32,
    /// Probability needed to keep counting windows as speech while speaking (hysteresis).
    pub off: f32,
    /// Windows quieter than this (dBFS RMS) are silence whatever the detector says.
    pub min_volume_db: f32,
}

/// Brings input audio to 16 kHz mono whatever it arrives as (the inputs already deliver that;
/// this keeps a differently configured input from breaking detection).
#[derive(Default)]
pub(crate) struct To16kMono {
    resampler: Option<StreamResampler>,
}

impl To16kMono {
    pub(crate) fn convert<'a>(&mut self, frame: &'a AudioFrame) -> std::borrow::Cow<'a, [i16]> {
        if frame.sample_rate == PIPELINE_SAMPLE_RATE && frame.channels == 1 {
            return std::borrow::Cow::Borrowed(&frame.samples[..]);
        }
        let mono = to_mono_f32(&frame.samples, frame.channels);
        if frame.sample_rate == PIPELINE_SAMPLE_RATE {
            return std::borrow::Cow::Owned(to_i16(&mono));
        }
        if self.resampler.as_ref().is_none_or(|r| r.from_rate() != frame.sample_rate) {
            self.resampler = StreamResampler::new(frame.sample_rate, PIPELINE_SAMPLE_RATE).ok();
        }
        match self.resampler.as_mut() {
            Some(r) => std::borrow::Cow::Owned(to_i16(&r.push(&mono))),
            None => std::borrow::Cow::Owned(Vec::new()),
        }
    }
}

/// Detection over a stream: buffers samples into windows and tracks speech. Independent of the
/// pipeline so the benchmark and tests can drive it directly.
pub struct VadCore<D> {
    detector: D,
    decision: Decision,
    tracker: SpeechTracker,
    /// Raises quiet input before the detector judges it (see [`AutoGain`]).
    gain: Option<AutoGain>,
    buf: Vec<i16>,
    /// Timeline position of `buf[0]`.
    buf_pts: Duration,
    convert: To16kMono,
}

/// Samples → duration at 16 kHz.
fn samples_to_duration(n: usize) -> Duration {
    Duration::from_nanos(n as u64 * 1_000_000_000 / u64::from(PIPELINE_SAMPLE_RATE))
}

impl<D: Detector> VadCore<D> {
    /// Reports pauses once silence has lasted `pause` instead of at the first silent window.
    pub fn with_pause(self, pause: Duration) -> Self {
        Self { tracker: self.tracker.with_pause(pause), ..self }
    }

    /// Raises quiet input by up to `max_gain_db` before the detector hears it (0: never).
    pub fn with_gain(self, max_gain_db: f32) -> Self {
        let gain = (max_gain_db > 0.0).then(|| AutoGain::new(max_gain_db, self.decision.min_volume_db));
        Self { gain, ..self }
    }

    /// Detection with `detector`, thresholds and the start/stop durations.
    pub fn new(detector: D, decision: Decision, start: Duration, stop: Duration) -> Self {
        Self {
            detector,
            decision,
            tracker: SpeechTracker::new(start, stop),
            gain: None,
            buf: Vec::new(),
            buf_pts: Duration::ZERO,
            convert: To16kMono::default(),
        }
    }

    /// True while the user is speaking.
    pub fn speaking(&self) -> bool {
        self.tracker.speaking()
    }

    /// Feeds one audio frame; returns the boundaries found in it, in order.
    pub fn push(&mut self, frame: &AudioFrame) -> Result<Vec<SpeechEvent>, VadError> {
        let samples = self.convert.convert(frame);
        let expected = self.buf_pts + samples_to_duration(self.buf.len());
        // A jump in the timeline (a capture device reopened, dropped frames): realign and start
        // the detector afresh, rather than running it across the gap.
        let gap = frame.pts.abs_diff(expected);
        if self.buf.is_empty() || gap > Duration::from_millis(100) {
            if !self.buf.is_empty() {
                self.detector.reset();
                self.gain.as_mut().map(AutoGain::reset);
                self.buf.clear();
            }
            self.buf_pts = frame.pts;
        }
        self.buf.extend_from_slice(&samples);
        let window = self.detector.window();
        let len = samples_to_duration(window);
        let mut events = Vec::new();
        let mut taken = 0;
        while self.buf.len() - taken >= window {
            let w = &self.buf[taken..taken + window];
            let at = self.buf_pts + samples_to_duration(taken);
            taken += window;
            let level = rms_db(w);
            let heard = match self.gain.as_mut() {
                Some(gain) => gain.apply(w, level, len.as_secs_f32()),
                None => w,
            };
            let p = self.detector.speech_probability(heard)?;
            let threshold = if self.tracker.speaking() { self.decision.off } else { self.decision.on };
            // The floor is on the audio as it came: far-away speech stays ignored however raised.
            let speech = p >= threshold && level >= self.decision.min_volume_db;
            events.extend(self.tracker.update(at, len, speech));
        }
        self.buf.drain(..taken);
        self.buf_pts += samples_to_duration(taken);
        Ok(events)
    }

    /// Ends speech in progress (end of stream).
    pub fn flush(&mut self) -> Option<SpeechEvent> {
        self.tracker.flush()
    }

    /// Silence heard when the stop is reported: `stop_ms` rounded up to whole detector windows.
    pub fn stop_after(&self) -> Duration {
        let window = samples_to_duration(self.detector.window());
        let windows = self.tracker.stop_after().as_nanos().div_ceil(window.as_nanos().max(1));
        window * windows as u32
    }
}

/// The `silero_vad` / `webrtc_vad` processor: forwards every frame, and after each audio frame
/// the speech boundaries it completed.
pub struct VadProcessor<D> {
    shared: std::sync::Arc<std::sync::Mutex<Shared<D>>>,
    failed: bool,
    /// The number of the speech heard last (0: none yet).
    speech: u64,
}

/// What the processor shares with its blocking detection jobs.
struct Shared<D> {
    core: VadCore<D>,
    /// Events found and not pushed yet.
    pending: Vec<SpeechEvent>,
}

impl<D: Detector> Shared<D> {
    fn detect(&mut self, audio: &AudioFrame) -> Result<(), VadError> {
        let events = self.core.push(audio)?;
        self.pending.extend(events);
        Ok(())
    }
}

impl<D: Detector> VadProcessor<D> {
    /// A processor around a detection core.
    pub fn new(core: VadCore<D>) -> Self {
        Self {
            shared: std::sync::Arc::new(std::sync::Mutex::new(Shared { core, pending: Vec::new() })),
            failed: false,
            speech: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<D>> {
        // A panic in a detection job leaves the tracker usable: keep going.
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs the detector on one frame, on a blocking thread when it is a model.
    async fn detect(&self, audio: &AudioFrame) -> Result<(), VadError> {
        if !D::BLOCKING {
            return self.lock().detect(audio);
        }
        let shared = self.shared.clone();
        let audio = audio.clone();
        tokio::task::spawn_blocking(move || {
            shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).detect(&audio)
        })
        .await
        .unwrap_or(Err(VadError::Panicked))
    }
}

/// Pushes `event` of the speech numbered `speech` (a start numbers the next one).
async fn emit(event: SpeechEvent, speech: &mut u64, stop_after: Duration, ctx: &ProcessorContext) {
    match event {
        SpeechEvent::Started { at } => {
            *speech += 1;
            let turn = *speech;
            tracing::debug!(processor = ctx.id(), turn, at_ms = at.as_millis() as u64, "user started speaking");
            ctx.push_metric(MetricName::UserSpeechStartAt, None, at).await;
            ctx.push_downstream(Frame::UserStartedSpeaking { turn, at }).await;
        }
        SpeechEvent::Paused { at } => {
            tracing::trace!(processor = ctx.id(), at_ms = at.as_millis() as u64, "user paused");
            ctx.push_downstream(Frame::UserSpeechPaused { turn: *speech, at, stop_after }).await;
        }
        SpeechEvent::Stopped { at } => {
            tracing::debug!(processor = ctx.id(), at_ms = at.as_millis() as u64, "user stopped speaking");
            ctx.push_metric(MetricName::UserSpeechEndAt, None, at).await;
            ctx.push_downstream(Frame::UserStoppedSpeaking { turn: *speech, at }).await;
        }
    }
}

#[async_trait]
impl<D: Detector> Processor for VadProcessor<D> {
    /// Audio only: speaking events and the rest pass it even while a window is analysed.
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, _| matches!(frame, Frame::InputAudio(_))
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        let Frame::InputAudio(audio) = &frame else {
            ctx.push(frame, direction).await;
            return Ok(());
        };
        let result = self.detect(audio).await;
        ctx.push(frame, direction).await;
        let (events, stop_after) = {
            let mut shared = self.lock();
            (std::mem::take(&mut shared.pending), shared.core.stop_after())
        };
        for event in events {
            emit(event, &mut self.speech, stop_after, ctx).await;
        }
        match result {
            Ok(()) => self.failed = false,
            // Report once per failure streak, not 50 times a second.
            Err(e) if !self.failed => {
                self.failed = true;
                return Err(ProcessError::recoverable(format!("voice activity detection failed: {}", ErrorChain(&e))));
            }
            Err(e) => tracing::debug!(processor = ctx.id(), error = %e, "voice activity detection still failing"),
        }
        Ok(())
    }

    async fn end(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        let (events, stop_after) = {
            let mut shared = self.lock();
            let flushed = shared.core.flush();
            let mut events = std::mem::take(&mut shared.pending);
            events.extend(flushed);
            (events, shared.core.stop_after())
        };
        for event in events {
            emit(event, &mut self.speech, stop_after, ctx).await;
        }
        Ok(())
    }
}

/// Checks shared by both VADs' settings.
pub(crate) fn check_durations(
    start_ms: u32,
    stop_ms: u32,
    pause_ms: u32,
    problems: &mut Vec<crate::registry::Problem>,
) {
    use crate::registry::Problem;
    if start_ms > 2000 {
        problems.push(Problem::at("start_ms", "`start_ms` must be at most 2000 (speech needed before it counts)"));
    }
    if !(20..=5000).contains(&stop_ms) {
        problems.push(Problem::at("stop_ms", "`stop_ms` must be between 20 and 5000 (silence that ends speech)"));
    }
    if pause_ms >= stop_ms {
        problems
            .push(Problem::at("pause_ms", "`pause_ms` must be less than `stop_ms` (a pause comes before the stop)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(20);

    fn run(tracker: &mut SpeechTracker, pattern: &str) -> Vec<SpeechEvent> {
        pattern.chars().enumerate().filter_map(|(i, c)| tracker.update(W * i as u32, W, c == '#')).collect()
    }

    #[test]
    fn speech_must_last_start_ms_and_silence_stop_ms() {
        let mut t = SpeechTracker::new(Duration::from_millis(60), Duration::from_millis(100));
        // 2 windows of speech then 120 ms of silence is a click; then 40 ms gaps inside speech
        // neither delay the start nor end the speech.
        // Each silence inside speech is reported as a pause when it begins; the stop gives the
        // same end of speech as the pause it confirms.
        let events = run(&mut t, "..##......##..#..###.......");
        assert_eq!(
            events,
            vec![
                SpeechEvent::Started { at: W * 10 },
                SpeechEvent::Paused { at: W * 15 },
                SpeechEvent::Paused { at: W * 20 },
                SpeechEvent::Stopped { at: W * 20 },
            ]
        );
        assert!(!t.speaking());
    }

    #[test]
    fn a_pause_is_reported_once_silence_lasts_pause_ms() {
        let mut t = SpeechTracker::new(Duration::from_millis(40), Duration::from_millis(200))
            .with_pause(Duration::from_millis(50));
        // 40 ms gaps are not pauses; a 60 ms gap is one (reported at its third window), and the
        // final silence gives a pause and then the stop, with the same end of speech.
        let events = run(&mut t, "###..###...###...........");
        assert_eq!(
            events,
            vec![
                SpeechEvent::Started { at: Duration::ZERO },
                SpeechEvent::Paused { at: W * 8 },
                SpeechEvent::Paused { at: W * 14 },
                SpeechEvent::Stopped { at: W * 14 },
            ]
        );
    }

    #[test]
    fn a_stop_shorter_than_a_window_comes_without_a_pause() {
        let mut t = SpeechTracker::new(Duration::from_millis(40), Duration::from_millis(20));
        let events = run(&mut t, "###.");
        assert_eq!(events, vec![SpeechEvent::Started { at: Duration::ZERO }, SpeechEvent::Stopped { at: W * 3 }]);
    }

    #[test]
    fn flush_ends_speech_in_progress() {
        let mut t = SpeechTracker::new(Duration::from_millis(40), Duration::from_millis(200));
        assert_eq!(run(&mut t, "####"), vec![SpeechEvent::Started { at: Duration::ZERO }]);
        assert_eq!(t.flush(), Some(SpeechEvent::Stopped { at: W * 4 }));
        assert_eq!(t.flush(), None);
    }

    #[test]
    fn rms_of_full_scale_square_is_zero_db() {
        assert!(rms_db(&[32767, -32767, 32767, -32767]).abs() < 0.01);
        assert_eq!(rms_db(&[0, 0]), f32::NEG_INFINITY);
        assert!((rms_db(&[3277, -3277]) + 20.0).abs() < 0.1);
    }
}
