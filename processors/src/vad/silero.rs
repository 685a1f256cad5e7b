//! `silero_vad`: Silero VAD v5 through ONNX Runtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ort::session::Session;
use ort::value::TensorRef;
use serde::Deserialize;

use super::{Decision, Detector, VadCore, VadError, VadProcessor, check_durations};
use crate::PIPELINE_SAMPLE_RATE;
use crate::processor::{BoxProcessor, BuildContext};
use crate::registry::{BuildError, Problem, Settings};

/// New samples per window at 16 kHz (v5 accepts only this size).
const WINDOW: usize = 512;
/// Samples of the previous window the model sees again.
const CONTEXT: usize = 64;
/// Size of the recurrent state, [2, 1, 128].
const STATE: usize = 2 * 128;
/// How far below `confidence` the probability may drop while speaking (Silero's own
/// recommendation: 0.15), so speech does not flicker off on soft syllables.
const HYSTERESIS: f32 = 0.15;

/// Settings of `silero_vad`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SileroVadSettings {
    /// The Silero VAD v5 ONNX model (in the models directory unless absolute).
    pub model: PathBuf,
    /// Speech probability (0–1) a 32 ms window needs to count as speech.
    pub confidence: f32,
    /// Speech needed before `UserStartedSpeaking`, in milliseconds.
    pub start_ms: u32,
    /// Silence needed before `UserStoppedSpeaking`, in milliseconds. Short (200) when a
    /// `smart_turn` processor decides whether the turn is over; 600–800 without one.
    pub stop_ms: u32,
    /// Silence after which the VAD reports a pause (`UserSpeechPaused`), in milliseconds: the
    /// end-of-turn detector and speech-to-text start on the turn then, and the stop confirms or
    /// discards their work. 0: at the first silent window (soonest reply; more work thrown away
    /// when the user goes on).
    pub pause_ms: u32,
    /// Windows quieter than this RMS level (dBFS) are silence whatever the model says.
    pub min_volume_db: f32,
    /// Quiet input is raised by up to this many dB before the detector judges it, so a quiet
    /// speaker is heard (speech whose loudest part reaches -20 dBFS is not raised; 0: never).
    /// `min_volume_db` still applies to the input as it arrives.
    pub max_gain_db: f32,
    /// ONNX Runtime threads; one is plenty for a 32 ms window every 32 ms.
    pub threads: usize,
}

impl Default for SileroVadSettings {
    fn default() -> Self {
        Self {
            model: PathBuf::from("silero_vad.onnx"),
            confidence: 0.5,
            start_ms: 200,
            stop_ms: 200,
            pause_ms: 0,
            min_volume_db: -45.0,
            max_gain_db: 24.0,
            threads: 1,
        }
    }
}

impl Settings for SileroVadSettings {
    const TYPE: &'static str = "silero_vad";
    const ABOUT: &'static str =
        "Silero voice activity detection: emits user started/stopped speaking, forwards the audio";

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        let model = ctx.model_path(&self.model);
        if !model.is_file() {
            problems.push(Problem::missing_model("model", &model));
        }
        if !(0.05..=0.99).contains(&self.confidence) {
            problems.push(Problem::at("confidence", "`confidence` must be between 0.05 and 0.99"));
        }
        if !(-100.0..=0.0).contains(&self.min_volume_db) {
            problems.push(Problem::at("min_volume_db", "`min_volume_db` is in dBFS: between -100 and 0"));
        }
        if !(0.0..=40.0).contains(&self.max_gain_db) {
            problems.push(Problem::at("max_gain_db", "`max_gain_db` must be between 0 (no gain) and 40 dB"));
        }
        if !(1..=8).contains(&self.threads) {
            problems.push(Problem::at("threads", "`threads` must be between 1 and 8"));
        }
        check_durations(self.start_ms, self.stop_ms, self.pause_ms, &mut problems);
        problems
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let detector = SileroDetector::load(&ctx.models_dir, &ctx.model_path(&self.model), self.threads)
            .map_err(BuildError::other)?;
        let decision = Decision {
            on: self.confidence,
            off: (self.confidence - HYSTERESIS).max(0.01),
            min_volume_db: self.min_volume_db,
        };
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

/// Silero VAD v5: 512 new samples plus 64 of context per call, a recurrent state carried over.
pub struct SileroDetector {
    session: Session,
    input: Vec<f32>,
    state: Vec<f32>,
}

impl SileroDetector {
    /// Loads the model with `threads` ONNX Runtime threads.
    pub fn load(models_dir: &Path, model: &Path, threads: usize) -> Result<Self, VadError> {
        if !model.is_file() {
            return Err(VadError::MissingModel(model.to_path_buf()));
        }
        let session = crate::onnx::session(models_dir, model, threads)?;
        Ok(Self { session, input: vec![0.0; CONTEXT + WINDOW], state: vec![0.0; STATE] })
    }
}

impl Detector for SileroDetector {
    fn window(&self) -> usize {
        WINDOW
    }

    fn speech_probability(&mut self, window: &[i16]) -> Result<f32, VadError> {
        // The last CONTEXT samples of the previous call become this call's context.
        self.input.copy_within(WINDOW.., 0);
        for (dst, &s) in self.input[CONTEXT..].iter_mut().zip(window) {
            *dst = f32::from(s) / 32768.0;
        }
        let sr = [i64::from(PIPELINE_SAMPLE_RATE)];
        let input = TensorRef::from_array_view(([1usize, CONTEXT + WINDOW], &self.input[..]))?;
        let state = TensorRef::from_array_view(([2usize, 1, 128], &self.state[..]))?;
        let sr = TensorRef::from_array_view(((), &sr[..]))?;
        let outputs = self.session.run(ort::inputs!["input" => input, "state" => state, "sr" => sr])?;
        let (_, prob) = outputs["output"].try_extract_tensor::<f32>()?;
        let prob = *prob.first().ok_or(VadError::NoProbability)?;
        let (_, next) = outputs["stateN"].try_extract_tensor::<f32>()?;
        if next.len() != STATE {
            return Err(VadError::State { got: next.len(), expected: STATE });
        }
        self.state.copy_from_slice(next);
        Ok(prob)
    }

    fn reset(&mut self) {
        self.input.fill(0.0);
        self.state.fill(0.0);
    }
}
