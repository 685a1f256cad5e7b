//! Whisper through whisper.cpp (whisper-rs): one loaded model and its decoding state, used from one
//! blocking thread at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperError, WhisperState};

/// Why Whisper could not load or transcribe.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    /// The model file is missing.
    #[error("model file {} does not exist; fetch it with `scripts/fetch-models.sh`", .0.display())]
    MissingModel(PathBuf),
    /// The configured language is not one whisper knows.
    #[error("whisper does not know the language {0:?}; use a code such as \"en\" or \"auto\"")]
    UnknownLanguage(String),
    /// whisper.cpp could not load the file.
    #[error("cannot load Whisper model {} (is it a whisper.cpp ggml file?)", .model.display())]
    Load {
        /// The model file.
        model: PathBuf,
        /// whisper.cpp's error.
        #[source]
        source: WhisperError,
    },
    /// An English-only model was given another language.
    #[error(
        "{} is an English-only model but language is {language:?}; set language = \"en\" or use a \
         multilingual model such as ggml-base.bin",
        .model.display()
    )]
    EnglishOnly {
        /// The model file.
        model: PathBuf,
        /// The configured language.
        language: String,
    },
    /// whisper.cpp could not allocate its decoding state.
    #[error("cannot allocate Whisper state")]
    State(#[source] WhisperError),
    /// Not a failure: an early transcription was given up because the user spoke on (see
    /// [`WhisperEngine::transcribe_early`]).
    #[error("the transcription was abandoned")]
    Abandoned,
    /// Decoding failed.
    #[error("Whisper failed")]
    Whisper(#[source] WhisperError),
}

/// Encoder frames per second of audio (whisper's mel hop of 10 ms, halved by the encoder's stride).
const ENCODER_FRAMES_PER_SEC: f64 = 50.0;
/// Extra encoder frames past the end of the audio in `auto` mode. Measured on six generated
/// sentences with tiny.en: a margin of 32 makes whisper repeat the utterance two or three times,
/// 64, 128 and 256 give the same words (mean WER 0.14; the full window 0.09) at 15–30 % of the
/// full window's time.
const AUDIO_CTX_MARGIN: u32 = 64;
/// The smallest `auto` window (10 s of encoder frames). tiny.en Q8_0 with a window sized to a
/// short segment loops on real speech ("5 5 5 5 …" for "five five", "7 of Hearts, 7 of Hearts, …",
/// "old-s-s-y-y-y-y…"). Measured by `examples/stt_floors.rs` on the 24 human recordings of
/// tests/speech plus 8 shorter cuts and pads of them, 1 thread, median of 3 (loaded machine):
///
/// | floor | loops | said twice | words right (24) | median ms ≤ 1.2 s / longer |
/// |-------|-------|------------|------------------|----------------------------|
/// | none  | 3     | 2          | 92.3 %           |   94 / 199                 |
/// | 256   | 2     | 3          | 81.3 %           |  204 / 229                 |
/// | 384   | 1     | 0          | 93.5 %           |  288 / 320                 |
/// | 512   | 0     | 0          | 94.2 %           |  375 / 396                 |
/// | 768   | 0     | 0          | 94.8 %           |  641 / 669                 |
/// | full  | 0     | 0          | 94.8 %           | 2474 / 2373                |
///
/// 512 is the smallest without loops, but on every short turn it costs several times the
/// turn-sized window's encoder time (the table's last column), which the reply would wait for. So the first pass keeps the window
/// sized to the turn, and only a transcript that loops, or comes back empty although the VAD
/// heard speech ("go" and "eight" alone did), is decoded again with at least this window (and,
/// should it still loop, with the full one): 3 + 2 of the 32 clips, about 0.4 s each.
pub const AUDIO_CTX_FLOOR: u32 = 512;
/// Whisper's full 30 s window.
const AUDIO_CTX_MAX: u32 = 1500;
/// `auto` windows are rounded up to a multiple of this. The encoder's attention products have the
/// window as a dimension, and llamafile's tinyBLAS (on in .cargo/config.toml) only takes sizes
/// divisible by 8; any other size falls back to ggml's slower dot-product loop.
const AUDIO_CTX_ALIGN: u32 = 8;
/// Token budget per second of audio.
const MAX_TOKENS_PER_SEC: f32 = 10.0;

/// How much of whisper's 30 s encoder window to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCtx {
    /// Sized to each utterance (50 encoder frames per second of audio plus a margin), so a short
    /// turn costs a fraction of a full window; a transcript that loops or is empty is decoded
    /// again with at least [`AUDIO_CTX_FLOOR`] frames.
    Auto,
    /// A fixed number of encoder frames (at most 1500); 0 is whisper's default, the full window.
    Fixed(u32),
}

impl AudioCtx {
    /// The `audio_ctx` to give whisper for `samples` samples at 16 kHz.
    pub fn frames_for(self, samples: usize) -> u32 {
        match self {
            AudioCtx::Fixed(n) => n.min(AUDIO_CTX_MAX),
            AudioCtx::Auto => Self::sized(samples, 0),
        }
    }

    /// The `auto` window for `samples` samples with at least `floor` frames: the audio's own
    /// frames plus [`AUDIO_CTX_MARGIN`], rounded up to [`AUDIO_CTX_ALIGN`]; 0 (the full window)
    /// from 1500 on. Public for the benchmark that chose the floor.
    pub fn sized(samples: usize, floor: u32) -> u32 {
        let secs = samples as f64 / f64::from(crate::PIPELINE_SAMPLE_RATE);
        let frames = ((secs * ENCODER_FRAMES_PER_SEC).ceil() as u32 + AUDIO_CTX_MARGIN)
            .max(floor)
            .next_multiple_of(AUDIO_CTX_ALIGN);
        // Past the full window whisper slides over the audio anyway.
        if frames >= AUDIO_CTX_MAX { 0 } else { frames }
    }
}

impl<'de> Deserialize<'de> for AudioCtx {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) if n <= AUDIO_CTX_MAX => Ok(AudioCtx::Fixed(n)),
            Raw::Number(n) => {
                Err(serde::de::Error::custom(format!("audio_ctx {n} is larger than whisper's window of 1500")))
            }
            Raw::Text(s) if s == "auto" => Ok(AudioCtx::Auto),
            Raw::Text(s) => Err(serde::de::Error::custom(format!(
                "audio_ctx must be \"auto\" or a number of encoder frames (0..=1500), not {s:?}"
            ))),
        }
    }
}

/// Routes whisper.cpp's and ggml's own logging (model loading chatter on stderr) to `tracing`,
/// under the `whisper_rs` target.
pub fn quiet_whisper_logs() {
    whisper_rs::install_logging_hooks();
}

/// True when whisper knows `language` (a code such as `en`, or `auto`).
pub fn known_language(language: &str) -> bool {
    quiet_whisper_logs();
    language == "auto"
        || (!language.is_empty()
            && language.bytes().all(|b| b.is_ascii_alphanumeric())
            && whisper_rs::get_lang_id(language).is_some())
}

/// A loaded Whisper model with its decoding state.
pub struct WhisperEngine {
    state: WhisperState,
    /// Token ids from here on are special (end of text, timestamps, language tags).
    eot: i32,
    multilingual: bool,
    threads: usize,
    language: String,
    audio_ctx: AudioCtx,
    guards: Guards,
    /// Beams of whisper's beam search; 1 decodes greedily.
    beam_size: u32,
}

/// One transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    /// The cleaned text; empty when whisper heard no words.
    pub text: String,
    /// What whisper returned before cleaning.
    pub raw: String,
    /// The encoder window used.
    pub audio_ctx: u32,
    /// Whisper's probability that the audio holds no speech.
    pub no_speech: f32,
    /// Mean probability of the text tokens (low when whisper is guessing).
    pub confidence: f32,
    /// The language whisper transcribed in (detected when `language` is `auto`).
    pub language: String,
    /// How long inference took.
    pub elapsed: Duration,
    /// The first pass repeated itself and this is the second, with the full window.
    pub retried: bool,
}

/// The decoder's guards against loops and invented text, all on by default. Benchmarks and tests
/// turn them off one at a time to show what each is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guards {
    /// whisper.cpp's temperature fallback: a decode whose tokens repeat (low entropy) or that
    /// whisper is unsure of (low mean log-probability) while it hears speech is decoded again at
    /// higher temperatures.
    pub fallback: bool,
    /// A transcript that says a word or short phrase 3 or more times in a row, or a first pass
    /// that heard no words, is decoded again with a larger window ([`AUDIO_CTX_FLOOR`]), and
    /// with the full one while it still loops (larger windows do not loop where a window sized
    /// to a sub-second segment does).
    pub retry_full: bool,
}

impl Default for Guards {
    fn default() -> Self {
        Self { fallback: false, retry_full: true }
    }
}

/// What one pass of whisper returned.
struct Decoded {
    raw: String,
    no_speech: f32,
    confidence: f32,
}

/// ggml's abort callback for [`WhisperEngine::transcribe_early`]: true once the flag `data` points
/// at is set.
unsafe extern "C" fn abandoned_flag(data: *mut std::ffi::c_void) -> bool {
    // SAFETY: `run` passes a pointer to an AtomicBool that outlives the computation.
    unsafe { (*(data as *const AtomicBool)).load(Ordering::Relaxed) }
}

impl WhisperEngine {
    /// Loads a ggml model. Takes 0.1–0.5 s; call it from a blocking thread.
    pub fn load(model: &Path, threads: usize, language: &str, audio_ctx: AudioCtx) -> Result<Self, SttError> {
        quiet_whisper_logs();
        if !model.is_file() {
            return Err(SttError::MissingModel(model.to_path_buf()));
        }
        if !known_language(language) {
            return Err(SttError::UnknownLanguage(language.to_string()));
        }
        let mut params = WhisperContextParameters::default();
        params.use_gpu(false);
        // whisper.cpp's own default turns flash attention on; on CPUs it is slower (ggml's
        // flash-attention kernel runs dot products one row at a time, while plain attention goes
        // through tinyBLAS; `slowcat bench stt` shows it). whisper-rs's `openmp` feature (ggml's
        // threads on libgomp instead of its own pool) measured no better, so it stays off.
        params.flash_attn(false);
        let ctx = WhisperContext::new_with_params(model, params)
            .map_err(|source| SttError::Load { model: model.to_path_buf(), source })?;
        let multilingual = ctx.is_multilingual();
        if !multilingual && !matches!(language, "en" | "auto") {
            return Err(SttError::EnglishOnly { model: model.to_path_buf(), language: language.to_string() });
        }
        let eot = ctx.token_eot();
        let state = ctx.create_state().map_err(SttError::State)?;
        Ok(Self {
            state,
            eot,
            multilingual,
            threads: threads.max(1),
            language: language.to_string(),
            audio_ctx,
            guards: Guards::default(),
            beam_size: 1,
        })
    }

    /// Decodes with a beam search of `beams` (1 or 0: greedily, the default).
    pub fn set_beam_size(&mut self, beams: u32) {
        self.beam_size = beams.max(1);
    }

    /// Turns guards on or off (for benchmarks and tests).
    pub fn set_guards(&mut self, guards: Guards) {
        self.guards = guards;
    }

    /// True for a multilingual model.
    pub fn is_multilingual(&self) -> bool {
        self.multilingual
    }

    /// Transcribes 16 kHz mono audio in [-1, 1]. Blocks for the length of the inference.
    pub fn transcribe(&mut self, audio: &[f32]) -> Result<Recognized, SttError> {
        self.transcribe_with(audio, self.audio_ctx)
    }

    /// Transcribes on `threads` threads instead of the configured number, and gives up (with an
    /// error) soon after `abandoned` is set.
    pub fn transcribe_early(
        &mut self,
        audio: &[f32],
        threads: usize,
        abandoned: Arc<AtomicBool>,
    ) -> Result<Recognized, SttError> {
        self.run(audio, self.audio_ctx, threads, Some(abandoned))
    }

    /// Transcribes with an explicit encoder window (for benchmarks).
    pub fn transcribe_with(&mut self, audio: &[f32], audio_ctx: AudioCtx) -> Result<Recognized, SttError> {
        self.run(audio, audio_ctx, self.threads, None)
    }

    fn run(
        &mut self,
        audio: &[f32],
        audio_ctx: AudioCtx,
        threads: usize,
        abandoned: Option<Arc<AtomicBool>>,
    ) -> Result<Recognized, SttError> {
        let started = Instant::now();
        if audio.is_empty() {
            return Ok(Recognized {
                text: String::new(),
                raw: String::new(),
                audio_ctx: 0,
                no_speech: 1.0,
                confidence: 0.0,
                language: String::new(),
                elapsed: Duration::ZERO,
                retried: false,
            });
        }
        // Whisper pads the window with zeros; shorter than 1 s it tends to hallucinate, so pad to
        // 1 s of silence ourselves (cheap: the encoder window grows by at most 50 frames).
        let min = crate::PIPELINE_SAMPLE_RATE as usize;
        let padded;
        let audio = if audio.len() < min {
            padded = {
                let mut v = audio.to_vec();
                v.resize(min, 0.0);
                v
            };
            &padded[..]
        } else {
            audio
        };
        let mut n_ctx = audio_ctx.frames_for(audio.len());
        let mut decoded = self.decode(audio, n_ctx, threads, abandoned.as_ref())?;
        let mut retried = false;
        // A window sized to a short turn sometimes loops, or hears nothing in a single word: decode
        // again with a larger window, then with the full one while it still loops.
        let loops = |raw: &str| repeats_itself(&strip_annotations(raw));
        let failed = |raw: &str, first: bool| loops(raw) || (first && clean_transcript(raw).is_empty());
        if self.guards.retry_full && n_ctx != 0 && failed(&decoded.raw, true) {
            for larger in [AudioCtx::sized(audio.len(), AUDIO_CTX_FLOOR), 0] {
                if larger != 0 && larger <= n_ctx {
                    continue;
                }
                tracing::debug!(raw = %decoded.raw.trim(), audio_ctx = n_ctx, larger, "whisper looped or heard nothing; again with a larger window");
                n_ctx = larger;
                // The early pass runs on fewer threads beside the end-of-turn model, which is done
                // by now: the larger window gets every thread (512 frames: ~215 ms on 2 threads
                // instead of ~390 on 1, `examples/stt_floors.rs`), and the reply waits for it.
                decoded = self.decode(audio, n_ctx, threads.max(self.threads), abandoned.as_ref())?;
                retried = true;
                if !loops(&decoded.raw) {
                    break;
                }
            }
        }
        let language = whisper_rs::get_lang_str(self.state.full_lang_id_from_state()).unwrap_or("").to_string();
        Ok(Recognized {
            text: clean_transcript(&decoded.raw),
            raw: decoded.raw.trim().to_string(),
            audio_ctx: n_ctx,
            no_speech: decoded.no_speech,
            confidence: decoded.confidence,
            language,
            elapsed: started.elapsed(),
            retried,
        })
    }

    /// One pass of whisper over `audio` with an encoder window of `n_ctx` frames.
    fn decode(
        &mut self,
        audio: &[f32],
        n_ctx: u32,
        threads: usize,
        abandoned: Option<&Arc<AtomicBool>>,
    ) -> Result<Decoded, SttError> {
        let strategy = if self.beam_size > 1 {
            SamplingStrategy::BeamSearch { beam_size: self.beam_size as i32, patience: -1.0 }
        } else {
            SamplingStrategy::Greedy { best_of: 1 }
        };
        let mut params = FullParams::new(strategy);
        params.set_n_threads(threads.max(1) as i32);
        // English-only models ignore the language; "auto" makes a multilingual one detect it.
        params.set_language(Some(if self.multilingual { self.language.as_str() } else { "en" }));
        // Each turn stands alone: no prompt from the previous one, one segment. Timestamp tokens
        // stay on although nobody reads them: without them the decoder cannot tell where the
        // audio ends and repeats the utterance until the token budget runs out, and whisper's
        // no-speech probability (read after the start token) becomes meaningless, so noise
        // turns into invented sentences instead of nothing.
        params.set_no_context(true);
        params.set_single_segment(true);
        params.set_suppress_nst(true);
        if !self.guards.fallback {
            // No temperature fallback: a failed decode is retried up to five times at higher
            // temperatures, which turns 0.1 s into seconds exactly when the audio is noise. On
            // the human recordings it also makes loops: short turns fail whisper's mean
            // log-probability test (< -1) at temperature 0, and the hotter decode that passes is
            // a confident loop ("Hello? Hello? Hello? …"): 12 of 32 clips loop with it, 3
            // without (stt_floors, no floor); 1 and 0 with the 512 floor. Loops are caught after
            // the decode instead. Whisper's own no-speech test (no-speech probability > 0.6 and
            // mean log-probability < -1: no text) stays on at its defaults.
            params.set_temperature_inc(0.0);
        }
        // Nobody says more than ~6 tokens a second; a decoder looping on a phrase stops here.
        let secs = audio.len() as f32 / crate::PIPELINE_SAMPLE_RATE as f32;
        params.set_max_tokens((secs * MAX_TOKENS_PER_SEC) as i32 + 16);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        // Checked by ggml between the steps of the computation. (whisper-rs 0.16's
        // `set_abort_callback_safe` reads its closure through the wrong pointer type and aborts
        // at random, so this uses the C callback directly.)
        if let Some(flag) = abandoned {
            // SAFETY: the callback only reads the AtomicBool behind the pointer, which `abandoned`
            // keeps alive until this function returns, after `full` has.
            unsafe {
                params.set_abort_callback(Some(abandoned_flag));
                params.set_abort_callback_user_data(Arc::as_ptr(flag) as *mut std::ffi::c_void);
            }
        }
        params.set_audio_ctx(n_ctx as i32);
        let result = self.state.full(params, audio);
        if abandoned.is_some_and(|flag| flag.load(Ordering::Relaxed)) {
            return Err(SttError::Abandoned);
        }
        result.map_err(SttError::Whisper)?;
        let mut raw = String::new();
        let mut no_speech = 0f32;
        let (mut p_sum, mut p_n) = (0f32, 0usize);
        for segment in self.state.as_iter() {
            raw.push_str(&segment.to_str_lossy().map_err(SttError::Whisper)?);
            no_speech = no_speech.max(segment.no_speech_probability());
            for i in 0..segment.n_tokens() {
                if let Some(token) = segment.get_token(i)
                    && token.token_id() < self.eot
                {
                    p_sum += token.token_probability();
                    p_n += 1;
                }
            }
        }
        let confidence = if p_n == 0 { 0.0 } else { p_sum / p_n as f32 };
        Ok(Decoded { raw, no_speech, confidence })
    }
}

/// Removes whisper's non-speech annotations (`[BLANK_AUDIO]`, `(music)`, `[ Silence ]`, `*sighs*`,
/// music notes), collapses whitespace, and keeps one copy of a loop ([`repeats_itself`]) or of a
/// repeated utterance. Returns an empty string when no word is left.
pub fn clean_transcript(raw: &str) -> String {
    let text = strip_annotations(raw);
    if text.chars().any(char::is_alphanumeric) { collapse_repeats(&collapse_loops(&text)) } else { String::new() }
}

/// `raw` without whisper's non-speech annotations, whitespace collapsed.
fn strip_annotations(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut closing: Option<char> = None;
    for c in raw.chars() {
        match closing {
            Some(close) if c == close => closing = None,
            Some(_) => {}
            None => match c {
                '[' => closing = Some(']'),
                '(' => closing = Some(')'),
                '*' => closing = Some('*'),
                '♪' | '♫' => {}
                c => out.push(c),
            },
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Longest phrase, in words, that [`repeats_itself`] looks for.
const LOOP_PHRASE_WORDS: usize = 8;
/// Copies in a row that make a loop: 3 ("W, W, W"), or 4 when each copy is a sentence of its
/// own, as people say "Yes. Yes. Yes, please."
const LOOP_COPIES: usize = 3;
const LOOP_SENTENCE_COPIES: usize = 4;

/// The words of `text`, each with its normalised form (letters and digits, lower case) and
/// whether it ends a sentence. A hyphen splits a word and stays on its first part ("old-s-y-y-y"
/// loops too).
fn loop_words(text: &str) -> Vec<(&str, String, bool)> {
    text.split_whitespace()
        .flat_map(|w| w.split_inclusive('-'))
        .map(|w| {
            let norm: String = w.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect();
            (w, norm, w.ends_with(['.', '?', '!']))
        })
        .collect()
}

/// The first loop in `words`: (start, phrase length, copies).
fn find_loop(words: &[(&str, String, bool)]) -> Option<(usize, usize, usize)> {
    for start in 0..words.len() {
        for len in 1..=LOOP_PHRASE_WORDS {
            if start + len > words.len() || words[start..start + len].iter().all(|w| w.1.is_empty()) {
                continue;
            }
            let same = |k: usize| {
                let (a, b) = (start, start + k * len);
                b + len <= words.len() && (0..len).all(|i| words[a + i].1 == words[b + i].1)
            };
            let mut copies = 1;
            while same(copies) {
                copies += 1;
            }
            // Copies that each end a sentence (all but the last may be followed by more).
            let sentences = (0..copies - 1).all(|k| words[start + (k + 1) * len - 1].2);
            if copies >= if sentences { LOOP_SENTENCE_COPIES } else { LOOP_COPIES } {
                return Some((start, len, copies));
            }
        }
    }
    None
}

/// True when `text` says a word or a phrase of up to eight words 3 or more times in a row
/// ("W, W, W, W", "about the moon, about the moon, about the moon", "go go go forward"): the
/// sign of a decoder loop. Case and punctuation do not matter; copies that are whole sentences
/// need a fourth ("Yes. Yes. Yes, please." is something people say).
pub fn repeats_itself(text: &str) -> bool {
    find_loop(&loop_words(text)).is_some()
}

/// `text` with each loop ([`repeats_itself`]) cut to its first copy, ending with the last copy's
/// punctuation.
fn collapse_loops(text: &str) -> String {
    let mut words = loop_words(text);
    let mut out: Vec<&str> = words.iter().map(|w| w.0).collect();
    while let Some((start, len, copies)) = find_loop(&words) {
        let mut end = start + len * copies;
        out[start + len - 1] = out[end - 1];
        // A last copy cut short by the token budget, at the very end, goes too.
        let rest = words.len() - end;
        if rest < len && (0..rest).all(|i| words[end + i].1 == words[start + i].1) {
            end = words.len();
        }
        out.drain(start + len..end);
        words.drain(start + len..end);
    }
    let mut joined = String::with_capacity(text.len());
    for w in out {
        if !joined.is_empty() && !joined.ends_with('-') {
            joined.push(' ');
        }
        joined.push_str(w);
    }
    joined
}

/// Whisper with an encoder window sized to the utterance sometimes says the whole utterance
/// again ("What is the capital of France? What is the capital of France? What is the"): seen in
/// 4 of 10 spoken questions of `slowcat bench conversation`, at the window sizes that keep it
/// fast. Nobody repeats the same sentences back to back in one turn, so when the text is one run
/// of sentences followed by copies of it (the last possibly cut short), the copies are dropped.
fn collapse_repeats(text: &str) -> String {
    // Sentences, each with its closing punctuation.
    let mut sentences: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '?' | '!') && text[i + 1..].starts_with(' ') {
            sentences.push(text[start..=i].trim());
            start = i + 1;
        }
    }
    if !text[start..].trim().is_empty() {
        sentences.push(text[start..].trim());
    }
    let norm = |s: &str| -> String {
        s.chars().filter(|c| c.is_alphanumeric() || c.is_whitespace()).collect::<String>().to_lowercase()
    };
    let normed: Vec<String> = sentences.iter().map(|s| norm(s)).collect();
    let n = normed.len();
    for period in 1..=n / 2 {
        let repeats = (period..n).all(|i| {
            let (got, want) = (&normed[i], &normed[i % period]);
            // The last copy may be cut short by the token limit.
            got == want || (i == n - 1 && !got.trim().is_empty() && want.starts_with(got.trim()))
        });
        if repeats {
            return sentences[..period].join(" ");
        }
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_utterance_said_again_by_whisper_is_kept_once() {
        let cases = [
            ("What is the capital of France? What is the capital of France?", "What is the capital of France?"),
            (
                "How do bees make honey? How do bees make honey? How do bees make honey? How do bees make",
                "How do bees make honey?",
            ),
            ("I see. Thanks a lot. I see. Thanks a lot.", "I see. Thanks a lot."),
            // Different sentences, or a sentence said once, stay as they are.
            ("No. No, I said tomorrow.", "No. No, I said tomorrow."),
            ("Yes. Yes. Yes, please.", "Yes. Yes. Yes, please."),
            ("Turn on the lights.", "Turn on the lights."),
            ("It is 4.5 degrees. It is cold.", "It is 4.5 degrees. It is cold."),
        ];
        for (raw, want) in cases {
            assert_eq!(clean_transcript(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn a_word_or_phrase_three_times_in_a_row_is_a_loop() {
        for text in [
            "W, W, W, W, W, W",
            "about the moon, about the moon, about the moon",
            "go go go forward",
            "Go forward, forward, forward.",
            "7 of Hearts, 7 of Hearts, 7 of Hearts, 7",
            "5 5 5 5 5 5",
            "No. No. No. No.",
            "He was not an old-s-s-y-y-y-y-y-y-y-y",
        ] {
            assert!(repeats_itself(text), "{text:?}");
        }
        for text in [
            "Yes. Yes. Yes, please.",
            "five five",
            "5 5",
            "Go forward.",
            "I said no, no, I said tomorrow.",
            "Well, there isn't that much difference. Well, there isn't that much difference.",
            "",
            "- - -",
        ] {
            assert!(!repeats_itself(text), "{text:?}");
        }
    }

    #[test]
    fn a_loop_is_kept_once() {
        let cases = [
            ("W, W, W, W, W, W, W, W, W, W,", "W,"),
            ("about the moon, about the moon, about the moon", "about the moon"),
            ("go go go forward", "go forward"),
            ("Go forward, forward, forward, forward, forward.", "Go forward."),
            ("7 of Hearts, 7 of Hearts, 7 of Hearts, 7", "7 of Hearts,"),
            ("He was not an old-s-s-y-y-y-y-y-y", "He was not an old-s-s-y"),
            ("Yes. Yes. Yes, please.", "Yes. Yes. Yes, please."),
            ("A well-known cold-hearted man.", "A well-known cold-hearted man."),
        ];
        for (raw, want) in cases {
            assert_eq!(clean_transcript(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn non_speech_markers_leave_nothing() {
        for raw in ["[BLANK_AUDIO]", " (music)", "[ Silence ]", " ...", "♪ ♪", "*sighs*", " - ", ""] {
            assert_eq!(clean_transcript(raw), "", "{raw:?}");
        }
    }

    #[test]
    fn words_survive_cleaning() {
        assert_eq!(clean_transcript(" Hello there. [BLANK_AUDIO]"), "Hello there.");
        assert_eq!(clean_transcript("(laughs) OK,  fine!"), "OK, fine!");
        assert_eq!(clean_transcript("It costs 5 dollars."), "It costs 5 dollars.");
    }

    #[test]
    fn audio_ctx_grows_with_the_utterance_and_caps() {
        assert_eq!(AudioCtx::Auto.frames_for(16_000), (50 + AUDIO_CTX_MARGIN).next_multiple_of(AUDIO_CTX_ALIGN));
        assert_eq!(AudioCtx::sized(16_000, AUDIO_CTX_FLOOR), AUDIO_CTX_FLOOR);
        assert_eq!(AudioCtx::Auto.frames_for(12 * 16_000), (600 + AUDIO_CTX_MARGIN).next_multiple_of(AUDIO_CTX_ALIGN));
        assert_eq!(AudioCtx::Auto.frames_for(12 * 16_000) % AUDIO_CTX_ALIGN, 0);
        assert_eq!(AudioCtx::sized(16_000, 0), (50 + AUDIO_CTX_MARGIN).next_multiple_of(AUDIO_CTX_ALIGN));
        assert_eq!(AudioCtx::sized(3 * 16_000, 0), (150 + AUDIO_CTX_MARGIN).next_multiple_of(AUDIO_CTX_ALIGN));
        assert_eq!(AudioCtx::Auto.frames_for(40 * 16_000), 0);
        assert_eq!(AudioCtx::Fixed(0).frames_for(16_000), 0);
        assert_eq!(AudioCtx::Fixed(700).frames_for(16_000), 700);
    }

    #[test]
    fn audio_ctx_parses_auto_or_a_number() {
        #[derive(Deserialize)]
        struct S {
            a: AudioCtx,
        }
        assert_eq!(toml::from_str::<S>("a = \"auto\"").unwrap().a, AudioCtx::Auto);
        assert_eq!(toml::from_str::<S>("a = 0").unwrap().a, AudioCtx::Fixed(0));
        assert_eq!(toml::from_str::<S>("a = 512").unwrap().a, AudioCtx::Fixed(512));
        assert!(toml::from_str::<S>("a = \"big\"").is_err());
        assert!(toml::from_str::<S>("a = 4000").is_err());
    }
}
