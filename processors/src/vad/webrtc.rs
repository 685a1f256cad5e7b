//! `webrtc_vad`: the WebRTC voice activity detector (libfvad, through the webrtc-vad crate). No
//! model file, microseconds per frame, but a yes/no answer that is easily fooled by noise.

use std::time::Duration;

use serde::Deserialize;
use webrtc_vad::{SampleRate, Vad, VadMode};

use super::{Decision, Detector, VadCore, VadError, VadProcessor, check_durations};
use crate::PIPELINE_SAMPLE_RATE;
use crate::processor::{BoxProcessor, BuildContext};
use crate::registry::{BuildError, Problem, Settings};

/// Settings of `webrtc_vad`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcVadSettings {
    /// 0 (least aggressive: calls more things speech) to 3 (most aggressive: misses soft speech).
    pub aggressiveness: u8,
    /// Detector frame length: 10, 20 or 30 ms.
    pub frame_ms: u32,
    /// Speech needed before `UserStartedSpeaking`, in milliseconds.
    pub start_ms: u32,
    /// Silence needed before `UserStoppedSpeaking`, in milliseconds.
    pub stop_ms: u32,
    /// Silence after which the VAD reports a pause (`UserSpeechPaused`), in milliseconds: the
    /// end-of-turn detector and speech-to-text start on the turn then, and the stop confirms or
    /// discards their work. 0: at the first silent window (soonest reply; more work thrown away
    /// when the user goes on).
    pub pause_ms: u32,
    /// Frames quieter than this RMS level (dBFS) are silence whatever the detector says.
    pub min_volume_db: f32,
    /// Quiet input is raised by up to this many dB before the detector judges it (speech whose
    /// loudest part reaches -20 dBFS is not raised). Off (0) by default: WebRTC's detector goes by
    /// energy more than Silero, and takes raised white or pink noise at -35 and -45 dBFS for
    /// speech; it hears the quiet recordings Silero misses without it.
    pub max_gain_db: f32,
}

impl Default for WebRtcVadSettings {
    fn default() -> Self {
        Self {
            aggressiveness: 2,
            frame_ms: 20,
            start_ms: 200,
            stop_ms: 200,
            pause_ms: 0,
            min_volume_db: -45.0,
            max_gain_db: 0.0,
        }
    }
}

impl Settings for WebRtcVadSettings {
    const TYPE: &'static str = "webrtc_vad";
    const ABOUT: &'static str =
        "WebRTC voice activity detection: emits user started/stopped speaking, forwards the audio";

    fn check(&self, _ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.aggressiveness > 3 {
            problems.push(Problem::at("aggressiveness", "`aggressiveness` must be 0, 1, 2 or 3"));
        }
        if ![10, 20, 30].contains(&self.frame_ms) {
            problems.push(Problem::at("frame_ms", "`frame_ms` must be 10, 20 or 30"));
        }
        if !(-100.0..=0.0).contains(&self.min_volume_db) {
            problems.push(Problem::at("min_volume_db", "`min_volume_db` is in dBFS: between -100 and 0"));
        }
        if !(0.0..=40.0).contains(&self.max_gain_db) {
            problems.push(Problem::at("max_gain_db", "`max_gain_db` must be between 0 (no gain) and 40 dB"));
        }
        check_durations(self.start_ms, self.stop_ms, self.pause_ms, &mut problems);
        problems
    }

    fn build(self, _ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let detector = WebRtcDetector::new(self.aggressiveness, self.frame_ms);
        let decision = Decision { on: 0.5, off: 0.5, min_volume_db: self.min_volume_db };
        let core = VadCore::new(
            detector,
            decision,
            Duration::from_millis(self.start_ms.into()),
            Duration::from_millis(self.stop_ms.into()),
        )
        .with_pause(Duration::from_millis(self.pause_ms.into()))
        .with_gain(self.max_gain_db);
        Ok(Box::new(VadProcessor::new(core)))
    }
}

/// libfvad's instance behind a raw pointer.
struct FvadHandle(Vad);

// SAFETY: a libfvad instance is plain heap state with no thread affinity or thread-local data;
// the handle is owned by one detector and only used through `&mut self`, so moving it to
// another thread is sound. (The crate does not say so only because it holds a raw pointer.)
unsafe impl Send for FvadHandle {}

/// The WebRTC detector at 16 kHz.
pub struct WebRtcDetector {
    vad: FvadHandle,
    mode: u8,
    window: usize,
}

fn mode(aggressiveness: u8) -> VadMode {
    match aggressiveness {
        0 => VadMode::Quality,
        1 => VadMode::LowBitrate,
        2 => VadMode::Aggressive,
        _ => VadMode::VeryAggressive,
    }
}

impl WebRtcDetector {
    /// A detector with aggressiveness 0–3 over `frame_ms` (10, 20 or 30) frames.
    pub fn new(aggressiveness: u8, frame_ms: u32) -> Self {
        let vad = Vad::new_with_rate_and_mode(SampleRate::Rate16kHz, mode(aggressiveness));
        let frame_ms = if [10, 20, 30].contains(&frame_ms) { frame_ms } else { 20 };
        let window = (PIPELINE_SAMPLE_RATE * frame_ms / 1000) as usize;
        Self { vad: FvadHandle(vad), mode: aggressiveness, window }
    }
}

impl Detector for WebRtcDetector {
    // libfvad's arithmetic takes microseconds per window: no thread hop for it.
    const BLOCKING: bool = false;

    fn window(&self) -> usize {
        self.window
    }

    fn speech_probability(&mut self, window: &[i16]) -> Result<f32, VadError> {
        match self.vad.0.is_voice_segment(window) {
            Ok(true) => Ok(1.0),
            Ok(false) => Ok(0.0),
            Err(()) => Err(VadError::Refused(window.len())),
        }
    }

    fn reset(&mut self) {
        // fvad_reset also resets mode and rate to their defaults.
        self.vad.0.reset();
        self.vad.0.set_sample_rate(SampleRate::Rate16kHz);
        self.vad.0.set_mode(mode(self.mode));
    }
}
