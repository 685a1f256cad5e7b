//! `openai_tts`: any OpenAI-compatible `/audio/speech` server (OpenAI, Kokoro-FastAPI, …).
//! The audio is streamed: each piece is pushed downstream as it arrives.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::TtsError;
use super::pcm::{PcmFormat, PcmStream};
use super::piper::check_stream;
use super::stream::{AudioOut, StreamOptions, StreamingTts, Synthesizer};
use super::text::SplitOptions;
use crate::processor::{BoxProcessor, BuildContext};
use crate::registry::{BuildError, Problem, Settings};

/// The audio format asked of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    /// Raw 16-bit little-endian mono PCM at `sample_rate` (OpenAI and Kokoro: 24 kHz).
    Pcm,
    /// A WAV stream (16-bit PCM); its header gives the rate.
    Wav,
}

/// Settings of `openai_tts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiTtsSettings {
    /// The API base, up to and including `/v1`.
    pub base_url: String,
    /// Name of the environment variable holding the bearer token (never written in config.toml,
    /// never logged); empty sends none (local servers). The same as `openai_llm`'s.
    pub api_key_env: String,
    /// The model name the server expects (`tts-1`, `kokoro`, …).
    pub model: String,
    /// The voice name (`alloy`, `af_heart`, …).
    pub voice: String,
    /// `pcm` or `wav`.
    pub response_format: ResponseFormat,
    /// Sample rate of `pcm` responses (the API does not say it; OpenAI and Kokoro use 24000).
    pub sample_rate: u32,
    /// Speaking rate, 0.25 to 4.0.
    pub speed: f32,
    /// Seconds to wait for the connection, and between pieces of audio.
    pub timeout_secs: f64,
    /// A sentence longer than this many characters is cut at a clause boundary.
    pub max_chars: usize,
    /// The first segment of a reply ends at its first clause once it has this many words (0: off).
    pub first_clause_words: usize,
    /// Longest audio frame pushed, in milliseconds.
    pub chunk_ms: u32,
}

impl Default for OpenAiTtsSettings {
    fn default() -> Self {
        let split = SplitOptions::default();
        Self {
            base_url: "http://127.0.0.1:8880/v1".into(),
            api_key_env: String::new(),
            model: "kokoro".into(),
            voice: "af_heart".into(),
            response_format: ResponseFormat::Pcm,
            sample_rate: 24_000,
            speed: 1.0,
            timeout_secs: 15.0,
            max_chars: split.max_chars,
            first_clause_words: split.first_clause_words,
            chunk_ms: 40,
        }
    }
}

impl Settings for OpenAiTtsSettings {
    const TYPE: &'static str = "openai_tts";
    const ABOUT: &'static str =
        "speaks LLM text sentence by sentence through an OpenAI-compatible /audio/speech server";

    fn check(&self, _ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if reqwest::Url::parse(&self.base_url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
            problems.push(Problem::at("base_url", format!("{:?} is not an http(s) URL", self.base_url)));
        }
        if self.model.trim().is_empty() {
            problems.push(Problem::at("model", "`model` is required"));
        }
        if self.voice.trim().is_empty() {
            problems.push(Problem::at("voice", "`voice` is required"));
        }
        if !(8_000..=192_000).contains(&self.sample_rate) {
            problems.push(Problem::at("sample_rate", "`sample_rate` must be between 8000 and 192000"));
        }
        if !(0.25..=4.0).contains(&self.speed) {
            problems.push(Problem::at("speed", "`speed` must be between 0.25 and 4.0"));
        }
        if !(self.timeout_secs > 0.0 && self.timeout_secs <= 600.0) {
            problems.push(Problem::at("timeout_secs", "`timeout_secs` must be between 0 and 600"));
        }
        problems.extend(Problem::unset_api_key_env(&self.api_key_env));
        problems.extend(check_stream(self.max_chars, self.chunk_ms));
        problems
    }

    fn build(self, _ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let api_key = crate::registry::api_key_from_env(&self.api_key_env);
        let timeout = Duration::from_secs_f64(self.timeout_secs);
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| BuildError::other(TtsError::HttpClient(e)))?;
        let url = format!("{}/audio/speech", self.base_url.trim_end_matches('/'));
        let opts = StreamOptions {
            split: SplitOptions {
                max_chars: self.max_chars,
                first_clause_words: self.first_clause_words,
                first_max_words: 0,
            },
            chunk_ms: self.chunk_ms,
        };
        Ok(Box::new(StreamingTts::new(OpenAiSpeech { client, url, api_key, settings: self }, opts)))
    }
}

#[derive(Serialize)]
struct SpeechRequest<'a> {
    model: &'a str,
    input: &'a str,
    voice: &'a str,
    response_format: ResponseFormat,
    speed: f32,
}

/// The OpenAI-compatible synthesizer.
pub struct OpenAiSpeech {
    client: reqwest::Client,
    url: String,
    /// Read from `api_key_env` when built.
    api_key: Option<String>,
    settings: OpenAiTtsSettings,
}

#[async_trait]
impl Synthesizer for OpenAiSpeech {
    async fn synthesize(&mut self, text: &str, out: &mut AudioOut<'_>) -> Result<(), TtsError> {
        let s = &self.settings;
        let body = SpeechRequest {
            model: &s.model,
            input: text,
            voice: &s.voice,
            response_format: s.response_format,
            speed: s.speed,
        };
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response =
            request.send().await.map_err(|source| TtsError::Unreachable { url: self.url.clone(), source })?;
        let status = response.status();
        if !status.is_success() {
            let detail = response.text().await.unwrap_or_default();
            let detail: String = detail.chars().take(300).collect();
            return Err(TtsError::Status { url: self.url.clone(), status, detail: detail.trim().to_string() });
        }
        let mut pcm = match s.response_format {
            ResponseFormat::Pcm => PcmStream::raw(PcmFormat { sample_rate: s.sample_rate, channels: 1 }),
            ResponseFormat::Wav => PcmStream::wav(),
        };
        let mut body = response.bytes_stream();
        let mut any = false;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|source| TtsError::BrokeOff { url: self.url.clone(), source })?;
            let samples = pcm.push(&piece)?;
            if let Some(format) = pcm.format()
                && !samples.is_empty()
            {
                any = true;
                out.push(&samples, format.sample_rate).await;
            }
        }
        if !any {
            return Err(TtsError::NoAudio { url: self.url.clone() });
        }
        Ok(())
    }
}
