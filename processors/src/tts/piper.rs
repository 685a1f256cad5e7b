//! `piper_tts`: Piper (VITS) voices through ONNX Runtime, phonemes from espeak-ng.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ort::session::{RunOptions, Session};
use ort::value::Tensor;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization as _;

use super::stream::{AudioOut, StreamOptions, StreamingTts, Synthesizer};
use super::text::SplitOptions;
use super::{TtsError, espeak};
use crate::audio::resample::to_i16;
use crate::onnx;
use crate::processor::{BoxProcessor, BuildContext};
use crate::registry::{BuildError, Problem, Settings};

/// Settings of `piper_tts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiperSettings {
    /// The voice model, relative to the models directory.
    pub model: PathBuf,
    /// The voice's config; empty means the model's path with `.json` added.
    pub config: PathBuf,
    /// ONNX Runtime threads for synthesis. During a synthesis they spin-wait between operators,
    /// and they sleep between syntheses ([`onnx::Spin::DuringRuns`]), so they burn no core the LLM
    /// server needs while nothing is synthesized (`slowcat bench tts` compares).
    pub threads: usize,
    /// Speaking rate: 1.0 is the voice's own, 1.2 is 20 % faster (divides `length_scale`).
    pub speed: f32,
    /// Phoneme length scale; unset takes the voice config's.
    pub length_scale: Option<f32>,
    /// Voice variation (`noise_scale`); unset takes the voice config's.
    pub noise_scale: Option<f32>,
    /// Rhythm variation (`noise_w`); unset takes the voice config's.
    pub noise_w: Option<f32>,
    /// Speaker number for voices with several speakers.
    pub speaker: i64,
    /// A sentence longer than this many characters is cut at a clause boundary.
    pub max_chars: usize,
    /// The first segment of a reply ends at its first clause once it has this many words (0: off).
    pub first_clause_words: usize,
    /// The first segment of a reply is cut when it runs past this many words and no clause ended
    /// sooner: at a phrase boundary once it has `first_clause_words` words (0: off).
    pub first_max_words: usize,
    /// Longest audio frame pushed, in milliseconds.
    pub chunk_ms: u32,
}

impl Default for PiperSettings {
    fn default() -> Self {
        let split = SplitOptions::default();
        Self {
            model: PathBuf::from("en_US-joe-medium.onnx"),
            config: PathBuf::new(),
            // Idle machine: RTF 0.115 instead of 0.18; busy: no slower than one (config.toml).
            threads: 2,
            speed: 1.0,
            length_scale: None,
            noise_scale: None,
            noise_w: None,
            speaker: 0,
            max_chars: split.max_chars,
            first_clause_words: split.first_clause_words,
            // Synthesis time grows with the audio (about 0.19 s of one core per second of speech), so
            // the first segment is kept to a short phrase: "Tomorrow the weather | will be sunny…"
            // costs 0.2 s of one core instead of 0.5 s for the whole sentence (config.toml).
            first_max_words: 5,
            chunk_ms: 40,
        }
    }
}

impl PiperSettings {
    fn config_path(&self, ctx: &BuildContext) -> PathBuf {
        if self.config.as_os_str().is_empty() {
            let mut p = ctx.model_path(&self.model).into_os_string();
            p.push(".json");
            PathBuf::from(p)
        } else {
            ctx.model_path(&self.config)
        }
    }

    /// The streaming options these settings ask for.
    pub fn stream_options(&self) -> StreamOptions {
        StreamOptions {
            split: SplitOptions {
                max_chars: self.max_chars,
                first_clause_words: self.first_clause_words,
                first_max_words: self.first_max_words,
            },
            chunk_ms: self.chunk_ms,
        }
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            speed: self.speed,
            length_scale: self.length_scale,
            noise_scale: self.noise_scale,
            noise_w: self.noise_w,
            speaker: self.speaker,
        }
    }
}

impl Settings for PiperSettings {
    const TYPE: &'static str = "piper_tts";
    const ABOUT: &'static str = "speaks LLM text sentence by sentence with a Piper voice (ONNX, espeak-ng phonemes)";

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        let model = ctx.model_path(&self.model);
        if !model.is_file() {
            problems.push(Problem::missing_model("model", &model));
        }
        let config = self.config_path(ctx);
        if model.is_file() && !config.is_file() {
            problems.push(Problem::at(
                "config",
                format!("voice config {} does not exist (it comes with the voice model)", config.display()),
            ));
        }
        if !(0.25..=4.0).contains(&self.speed) {
            problems.push(Problem::at("speed", "`speed` must be between 0.25 and 4.0"));
        }
        if self.length_scale.is_some_and(|l| !(0.1..=4.0).contains(&l)) {
            problems.push(Problem::at("length_scale", "`length_scale` must be between 0.1 and 4.0"));
        }
        if !(1..=64).contains(&self.threads) {
            problems.push(Problem::at("threads", "`threads` must be between 1 and 64"));
        }
        problems.extend(check_stream(self.max_chars, self.chunk_ms));
        problems
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let voice = PiperVoice::load(
            &ctx.models_dir,
            &ctx.model_path(&self.model),
            &self.config_path(ctx),
            self.threads,
            self.overrides(),
        )
        .map_err(BuildError::other)?;
        Ok(Box::new(StreamingTts::new(Piper::new(voice), self.stream_options())))
    }
}

/// Range checks shared by the TTS kinds.
pub(crate) fn check_stream(max_chars: usize, chunk_ms: u32) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !(20..=2000).contains(&max_chars) {
        problems.push(Problem::at("max_chars", "`max_chars` must be between 20 and 2000"));
    }
    if !(5..=200).contains(&chunk_ms) {
        problems.push(Problem::at("chunk_ms", "`chunk_ms` must be between 5 and 200"));
    }
    problems
}

/// Settings that override the voice config's inference values.
#[derive(Debug, Clone, Copy)]
pub struct Overrides {
    /// Speaking rate (divides the length scale).
    pub speed: f32,
    /// Phoneme length scale.
    pub length_scale: Option<f32>,
    /// Voice variation.
    pub noise_scale: Option<f32>,
    /// Rhythm variation.
    pub noise_w: Option<f32>,
    /// Speaker number.
    pub speaker: i64,
}

impl Default for Overrides {
    fn default() -> Self {
        Self { speed: 1.0, length_scale: None, noise_scale: None, noise_w: None, speaker: 0 }
    }
}

#[derive(Debug, Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    espeak: EspeakConfig,
    #[serde(default)]
    inference: InferenceConfig,
    #[serde(default = "default_phoneme_type")]
    phoneme_type: String,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default = "one")]
    num_speakers: u32,
}

fn default_phoneme_type() -> String {
    "espeak".into()
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct InferenceConfig {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { noise_scale: 0.667, length_scale: 1.0, noise_w: 0.8 }
    }
}

/// A loaded Piper voice. Synthesis is blocking: call it from a blocking thread.
pub struct PiperVoice {
    session: Session,
    sample_rate: u32,
    espeak_voice: String,
    ids: HashMap<char, Vec<i64>>,
    /// `[noise_scale, length_scale, noise_w]`, as the model's `scales` input wants them.
    scales: [f32; 3],
    speaker: Option<i64>,
}

const PAD: char = '_';
const BOS: char = '^';
const EOS: char = '$';

impl PiperVoice {
    /// Loads the model and its config, and checks that espeak-ng knows the voice's language.
    /// The session's threads spin only during a synthesis ([`Self::session_options`]).
    pub fn load(
        models_dir: &Path,
        model: &Path,
        config: &Path,
        threads: usize,
        overrides: Overrides,
    ) -> Result<Self, TtsError> {
        Self::load_with(models_dir, model, config, &Self::session_options(threads), overrides)
    }

    /// The session options Piper runs with: `threads` intra-op threads that spin-wait during a
    /// synthesis and sleep between syntheses. Sleeping threads are woken for every operator, and
    /// with the LLM server generating on the cores meanwhile each wake-up waits for it, and on a
    /// small CPU the first audio comes much later (`slowcat bench tts`). Spinning threads keep their
    /// cores against a server running at a lower priority (`scripts/llm-server.sh` runs it at nice 10).
    pub fn session_options(threads: usize) -> onnx::SessionOptions {
        onnx::SessionOptions { threads, spin: onnx::Spin::DuringRuns }
    }

    /// [`Self::load`] with explicit session options (benchmarks compare them).
    pub fn load_with(
        models_dir: &Path,
        model: &Path,
        config: &Path,
        session: &onnx::SessionOptions,
        overrides: Overrides,
    ) -> Result<Self, TtsError> {
        let raw = std::fs::read_to_string(config)
            .map_err(|source| TtsError::ReadVoiceConfig { path: config.to_path_buf(), source })?;
        let cfg: VoiceConfig = serde_json::from_str(&raw)
            .map_err(|source| TtsError::ParseVoiceConfig { path: config.to_path_buf(), source })?;
        if cfg.phoneme_type != "espeak" {
            return Err(TtsError::PhonemeType { path: config.to_path_buf(), kind: cfg.phoneme_type });
        }
        let mut ids = HashMap::new();
        for (phoneme, id) in cfg.phoneme_id_map {
            let mut chars = phoneme.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                ids.insert(c, id);
            }
        }
        for c in [PAD, BOS, EOS] {
            if !ids.contains_key(&c) {
                return Err(TtsError::MissingPhoneme { path: config.to_path_buf(), phoneme: c });
            }
        }
        espeak::check_voice(&cfg.espeak.voice)
            .map_err(|source| TtsError::VoiceNeedsEspeak { model: model.to_path_buf(), source })?;
        let session = onnx::session_with(models_dir, model, session)?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for name in ["input", "input_lengths", "scales"] {
            if !inputs.contains(&name) {
                return Err(TtsError::NotPiper {
                    model: model.to_path_buf(),
                    input: name,
                    inputs: inputs.iter().map(ToString::to_string).collect(),
                });
            }
        }
        let length_scale = overrides.length_scale.unwrap_or(cfg.inference.length_scale) / overrides.speed.max(0.05);
        let speaker = (cfg.num_speakers > 1 || inputs.contains(&"sid")).then_some(overrides.speaker);
        if let Some(s) = speaker
            && (s < 0 || s >= i64::from(cfg.num_speakers))
        {
            return Err(TtsError::NoSpeaker { speaker: s, speakers: cfg.num_speakers });
        }
        Ok(Self {
            session,
            sample_rate: cfg.audio.sample_rate,
            espeak_voice: cfg.espeak.voice,
            ids,
            scales: [
                overrides.noise_scale.unwrap_or(cfg.inference.noise_scale),
                length_scale,
                overrides.noise_w.unwrap_or(cfg.inference.noise_w),
            ],
            speaker,
        })
    }

    /// The rate of the audio it makes.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Phoneme ids for a text: `^`, `_`, each phoneme followed by `_`, `$`. Phonemes the voice
    /// does not know are skipped.
    pub fn phoneme_ids(&self, text: &str) -> Result<Vec<i64>, TtsError> {
        let phonemes = espeak::phonemize(text, &self.espeak_voice)?;
        let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
        ids.extend(&self.ids[&BOS]);
        ids.extend(&self.ids[&PAD]);
        for c in phonemes.nfd() {
            if let Some(id) = self.ids.get(&c) {
                ids.extend(id);
                ids.extend(&self.ids[&PAD]);
            }
        }
        ids.extend(&self.ids[&EOS]);
        Ok(ids)
    }

    /// Synthesizes one segment to f32 samples at [`Self::sample_rate`]. `options` can stop the
    /// run from another thread (`terminate`).
    pub fn synthesize(&mut self, text: &str, options: &RunOptions) -> Result<Vec<f32>, TtsError> {
        let ids = self.phoneme_ids(text)?;
        if ids.len() <= 4 {
            return Ok(Vec::new());
        }
        let n = ids.len();
        let err = TtsError::PiperInference;
        let input = Tensor::from_array(([1usize, n], ids)).map_err(err)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(err)?;
        let scales = Tensor::from_array(([3usize], self.scales.to_vec())).map_err(err)?;
        let outputs = match self.speaker {
            Some(sid) => {
                let sid = Tensor::from_array(([1usize], vec![sid])).map_err(err)?;
                self.session.run_with_options(
                    ort::inputs! { "input" => input, "input_lengths" => lengths, "scales" => scales, "sid" => sid },
                    options,
                )
            }
            None => self.session.run_with_options(
                ort::inputs! { "input" => input, "input_lengths" => lengths, "scales" => scales },
                options,
            ),
        }
        .map_err(err)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        Ok(audio.to_vec())
    }
}

/// The Piper synthesizer: inference on a blocking thread, one segment at a time.
pub struct Piper {
    voice: Arc<Mutex<PiperVoice>>,
    sample_rate: u32,
}

impl Piper {
    /// A synthesizer speaking with `voice`.
    pub fn new(voice: PiperVoice) -> Self {
        let sample_rate = voice.sample_rate();
        Self { voice: Arc::new(Mutex::new(voice)), sample_rate }
    }

    /// Synthesizes a segment without streaming it (benchmarks, tests): i16 samples at
    /// [`Self::sample_rate`].
    pub async fn synthesize_clip(&self, text: &str) -> Result<Vec<i16>, TtsError> {
        let audio = self.run(text).await?;
        Ok(to_i16(&audio))
    }

    /// The rate of the audio it makes.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    async fn run(&self, text: &str) -> Result<Vec<f32>, TtsError> {
        let options = Arc::new(RunOptions::new().map_err(TtsError::PiperInference)?);
        // Dropping this future (an interruption) stops the inference instead of letting it
        // finish for nobody; its result is discarded with the task's handle.
        let _stop = TerminateOnDrop(options.clone());
        let voice = self.voice.clone();
        let text = text.to_string();
        tokio::task::spawn_blocking(move || {
            let mut voice = voice.lock().unwrap_or_else(|p| p.into_inner());
            voice.synthesize(&text, &options)
        })
        .await
        .map_err(TtsError::SynthesisThread)?
    }
}

struct TerminateOnDrop(Arc<RunOptions>);

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        let _ = self.0.terminate();
    }
}

#[async_trait]
impl Synthesizer for Piper {
    async fn synthesize(&mut self, text: &str, out: &mut AudioOut<'_>) -> Result<(), TtsError> {
        let audio = self.run(text).await?;
        out.push(&to_i16(&audio), self.sample_rate).await;
        Ok(())
    }
}
