//! `openai_llm`: streams replies from an OpenAI-compatible chat-completions server.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::{Instant as Deadline, timeout_at};
use tracing::{Instrument, debug, info, info_span, warn};

use super::wire::{ChatRequest, Chunk, ChunkError, parse_chunk, parse_completion, parse_models, truncate};
use crate::frame::{ChatMessage, Direction, ErrorFrame, Frame, LlmRequest, Role};
use crate::processor::{BoxProcessor, BuildContext, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};

/// LM Studio's local server.
pub const DEFAULT_BASE_URL: &str = "http://localhost:1234/v1";

/// A streamed reply larger than this is refused as malformed: a voice reply is a few KiB, and a
/// server that never stops must not fill memory.
const MAX_REPLY_BYTES: usize = 8 << 20;
/// The longest line of a streamed reply: one event's JSON is well under 1 KiB.
const MAX_LINE_BYTES: usize = 256 << 10;
/// How much of an error reply's body is read to show it.
const MAX_ERROR_BODY_BYTES: usize = 4096;
/// How long an error body may take to arrive once the status is known.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(2);
/// The longest wait between two retries, whatever `retry_backoff_ms` and the attempt count say.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long to wait for `[DONE]` after the server gave a finish reason. Reading to the end of the
/// body lets the connection go back to the pool; a server that never sends `[DONE]` costs this.
const FINISH_GRACE: Duration = Duration::from_millis(200);
/// How long the end of a finished reply's body may take to arrive for the connection to be reused.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// How long an idle connection is kept for the next request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Bounds of `probe`, which must answer quickly for `slowcat check`.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a reply the next turn's beginning is sent ahead: not while the reply's first
/// sentence is synthesized, which the server's work would slow down (short replies end by then).
const PREFILL_DELAY: Duration = Duration::from_secs(1);
/// Bound of the model lookup that precedes the first request when `model` is empty.
const MODEL_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of `openai_llm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiLlmSettings {
    /// The server's OpenAI-compatible API root (LM Studio: `http://localhost:1234/v1`; the local
    /// test server of `scripts/llm-server.sh`: `http://127.0.0.1:8089/v1`). Plain http only.
    pub base_url: String,
    /// The model id to ask for. Empty: the first chat model the server lists at `/models`, or the
    /// server's own choice when it lists none. Set it when the server serves several models.
    pub model: String,
    /// Sampling temperature, 0 to 2.
    pub temperature: f32,
    /// The longest reply, in tokens.
    pub max_tokens: u32,
    /// Sampling seed, so the same conversation gets the same replies (benchmarks, bug reports):
    /// turn n's request carries seed + n. (One seed for every request would draw the same random
    /// numbers every turn, and a small model then says the same thing over and over.) None: the
    /// server's own choice (usually a new random one).
    pub seed: Option<u64>,
    /// Extra instructions put in front of the request's system message (or as the system message
    /// when the request has none). Usually empty: the system prompt belongs to `user_turn`; this
    /// is for instructions that go with one model, whatever built the request.
    pub system_prompt: String,
    /// How long connecting to the server may take.
    pub connect_timeout_ms: u64,
    /// How long the first piece of text may take to arrive once the request is sent. Retries
    /// (each with this bound) happen only before the first piece of text.
    pub first_token_timeout_ms: u64,
    /// How long a whole reply may take, retries included.
    pub total_timeout_ms: u64,
    /// The name of an environment variable holding an API key, sent as a bearer token. Empty: no
    /// key (LM Studio and llama.cpp need none). The key itself is never logged.
    pub api_key_env: String,
    /// How many times to retry a request that failed before any text arrived (connection
    /// refused or dropped, HTTP 429 or 5xx).
    pub retries: u32,
    /// The wait before the first retry; it doubles each retry, up to 2 s.
    pub retry_backoff_ms: u64,
    /// Send a one-token request at start so the server has the model loaded before the first
    /// turn. Failing is only a warning.
    pub warmup: bool,
    /// After each complete reply, send the chat as the next turn will begin it (this reply, then
    /// an empty user message) with a one-token budget, so that a server with a prompt cache
    /// (llama.cpp, LM Studio) has read it before the user speaks again: the next reply's first
    /// token comes a few prompt tokens sooner. Failing is only logged.
    pub prefill_next_turn: bool,
    /// When the user has stopped speaking and the end of the turn is still being decided
    /// ([`Frame::LlmReadAhead`], from the transcript so far), send the request the turn will
    /// make, for one token: the server then reads the question while the turn ends, and the
    /// reply's first token comes sooner by that head start. When the user goes on instead, the
    /// server read a prompt for nothing. Failing is only logged.
    pub read_ahead_turn: bool,
}

impl Default for OpenAiLlmSettings {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            model: String::new(),
            temperature: 0.7,
            max_tokens: 256,
            seed: None,
            system_prompt: String::new(),
            connect_timeout_ms: 2_000,
            first_token_timeout_ms: 15_000,
            total_timeout_ms: 60_000,
            api_key_env: String::new(),
            retries: 2,
            retry_backoff_ms: 250,
            warmup: true,
            prefill_next_turn: true,
            read_ahead_turn: true,
        }
    }
}

impl Settings for OpenAiLlmSettings {
    const TYPE: &'static str = "openai_llm";
    const ABOUT: &'static str =
        "streams replies from an OpenAI-compatible server (LM Studio, llama.cpp) as text chunks";

    fn check(&self, _ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(reason) = Endpoint::parse(&self.base_url) {
            problems.push(Problem::at("base_url", reason));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            problems.push(Problem::at("temperature", "`temperature` must be between 0 and 2"));
        }
        if self.max_tokens == 0 {
            problems.push(Problem::at("max_tokens", "`max_tokens` must be at least 1"));
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_token_timeout_ms", self.first_token_timeout_ms),
            ("total_timeout_ms", self.total_timeout_ms),
        ] {
            if value == 0 {
                problems.push(Problem::at(key, format!("`{key}` must be more than 0")));
            }
        }
        if self.first_token_timeout_ms > self.total_timeout_ms {
            problems.push(Problem::at(
                "first_token_timeout_ms",
                "`first_token_timeout_ms` must not exceed `total_timeout_ms`",
            ));
        }
        if self.retries > 10 {
            problems.push(Problem::at("retries", "`retries` must be at most 10"));
        }
        problems.extend(Problem::unset_api_key_env(&self.api_key_env));
        problems
    }

    fn build(self, ctx: &BuildContext) -> Result<BoxProcessor, BuildError> {
        let problems = self.check(ctx);
        if !problems.is_empty() {
            let all: Vec<String> = problems.into_iter().map(|p| p.message).collect();
            return Err(BuildError::Invalid(all.join("; ")));
        }
        Ok(Box::new(OpenAiLlm::new(self).map_err(BuildError::other)?))
    }
}

/// Why talking to the LLM server failed. Each names the server's URL; none contains the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// `base_url` is not a usable URL.
    #[error("base_url {url:?} is not usable: {reason}")]
    InvalidUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting failed: nothing listens there, or it is too slow to accept.
    #[error(
        "cannot reach the LLM server at {url} ({reason}). Start LM Studio's local server (Developer tab, \
         or `lms server start`), or run `scripts/llm-server.sh start`, which serves http://127.0.0.1:8089/v1 (set base_url to it)"
    )]
    Unreachable {
        /// The configured base URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("the LLM server at {url} answered HTTP {status}: {body}")]
    Http {
        /// The configured base URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the reply's body.
        body: String,
    },
    /// Nothing arrived within a time bound.
    #[error("no answer from the LLM server at {url} within {ms} ms ({setting})")]
    Timeout {
        /// The configured base URL.
        url: String,
        /// The bound.
        ms: u64,
        /// Where the bound comes from (the setting that holds it).
        setting: &'static str,
    },
    /// The reply did not finish within `total_timeout_ms`.
    #[error("the reply from the LLM server at {url} did not finish within {ms} ms (`total_timeout_ms`)")]
    TooSlow {
        /// The configured base URL.
        url: String,
        /// The bound.
        ms: u64,
    },
    /// The reply is not an OpenAI chat-completion stream.
    #[error("malformed reply from the LLM server at {url}: {detail}")]
    Malformed {
        /// The configured base URL.
        url: String,
        /// What could not be understood.
        detail: String,
    },
    /// The server reported an error in a successful reply.
    #[error("the LLM server at {url} reported an error: {message}")]
    Server {
        /// The configured base URL.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The connection broke before the reply was complete.
    #[error("the LLM server at {url} closed the connection before the reply was complete ({reason})")]
    Disconnected {
        /// The configured base URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
}

impl LlmError {
    /// A short sentence the assistant can say instead of the reply.
    pub fn apology(&self) -> &'static str {
        match self {
            LlmError::InvalidUrl { .. } | LlmError::Unreachable { .. } => {
                "Sorry, I can't reach my language model right now."
            }
            LlmError::Http { .. } | LlmError::Server { .. } => "Sorry, my language model ran into an error.",
            LlmError::Timeout { .. } | LlmError::TooSlow { .. } => {
                "Sorry, my language model is taking too long to answer."
            }
            LlmError::Malformed { .. } => "Sorry, I got a garbled answer from my language model.",
            LlmError::Disconnected { .. } => "Sorry, I lost the connection to my language model.",
        }
    }

    /// Whether sending the same request again may work (only ever done before the first token).
    fn retryable(&self) -> bool {
        match self {
            LlmError::Unreachable { .. } | LlmError::Disconnected { .. } => true,
            LlmError::Http { status, .. } => *status == 429 || *status >= 500,
            // A slow server gets slower with more requests; the other faults repeat themselves.
            _ => false,
        }
    }
}

/// Reads the model ids the server serves (`GET {base_url}/models`), for `slowcat check`.
/// `api_key` is sent as a bearer token when given. Bounded: answers within about 5 s.
pub async fn probe(base_url: &str, api_key: Option<&str>) -> Result<Vec<String>, LlmError> {
    let endpoint = Endpoint::parse(base_url).map_err(|reason| LlmError::InvalidUrl { url: base_url.into(), reason })?;
    let client = http_client(PROBE_CONNECT_TIMEOUT, endpoint.loopback)
        .map_err(|e| LlmError::InvalidUrl { url: base_url.into(), reason: root_cause(&e) })?;
    let key = api_key.map(|k| ApiKey(k.to_string()));
    list_models(&client, &endpoint, key.as_ref(), PROBE_TIMEOUT, "probe").await
}

impl OpenAiLlmSettings {
    /// [`probe`] with these settings' URL and API key.
    pub async fn probe(&self) -> Result<Vec<String>, LlmError> {
        let key = crate::registry::api_key_from_env(&self.api_key_env);
        probe(&self.base_url, key.as_deref()).await
    }
}

/// The URLs of one server.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `base_url` without a trailing slash, for messages.
    base: String,
    chat: reqwest::Url,
    models: reqwest::Url,
    /// Loopback servers are reached directly, whatever proxy the environment names.
    loopback: bool,
}

impl Endpoint {
    fn parse(base_url: &str) -> Result<Self, String> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base).map_err(|e| format!("{e}; expected e.g. {DEFAULT_BASE_URL}"))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err("https is not supported by this build (it has no TLS, since local servers speak \
                            plain http); use an http:// URL"
                    .into());
            }
            other => return Err(format!("scheme {other:?} is not http; expected e.g. {DEFAULT_BASE_URL}")),
        }
        let host = url.host_str().ok_or_else(|| format!("no host; expected e.g. {DEFAULT_BASE_URL}"))?;
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let join = |path: &str| reqwest::Url::parse(&format!("{base}/{path}")).map_err(|e| e.to_string());
        Ok(Self { chat: join("chat/completions")?, models: join("models")?, base, loopback })
    }
}

/// An API key; its `Debug` never shows it.
#[derive(Clone)]
struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

fn http_client(connect_timeout: Duration, loopback: bool) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Servers drop idle keep-alive connections after about 5 s (uvicorn, Node): giving them up
        // first avoids sending a turn's request on a connection the server is just closing.
        .pool_idle_timeout(POOL_IDLE_TIMEOUT);
    if loopback {
        builder = builder.no_proxy();
    }
    builder.build()
}

/// Streams replies to [`LlmRequest`]s from an OpenAI-compatible server.
///
/// For each request it emits `LlmResponseStart { turn }`, one `LlmText` per streamed piece of
/// text as it arrives, and `LlmResponseEnd`. When the request fails it emits an `Error` frame,
/// still closes the reply with `LlmResponseEnd` (so whatever text came is spoken and the reply
/// is over for everyone downstream), then `Speak` with a short apology. An interruption drops
/// the in-flight reply: the HTTP response is dropped with it, which closes the connection so the
/// server stops generating, and nothing more of that reply is pushed.
pub struct OpenAiLlm {
    settings: OpenAiLlmSettings,
    endpoint: Endpoint,
    client: reqwest::Client,
    api_key: Option<ApiKey>,
    /// The model to ask for: from the settings, or looked up once at the server.
    model: Arc<OnceLock<String>>,
    warmup: Option<JoinHandle<()>>,
    /// Set once the read-ahead in `warmup` (the next turn's beginning, or the turn's prompt) has
    /// gone out; until then a request may drop it.
    read_ahead_sent: Option<Arc<AtomicBool>>,
    /// The turn being answered; still set after an interruption dropped the reply.
    replying: Option<u64>,
}

impl OpenAiLlm {
    /// Builds the client; no request is made before `start`.
    pub fn new(settings: OpenAiLlmSettings) -> anyhow::Result<Self> {
        let endpoint = Endpoint::parse(&settings.base_url)
            .map_err(|reason| anyhow::anyhow!("base_url {:?}: {reason}", settings.base_url))?;
        let client = http_client(Duration::from_millis(settings.connect_timeout_ms), endpoint.loopback)
            .map_err(|e| anyhow::anyhow!("cannot create the HTTP client: {}", root_cause(&e)))?;
        let api_key = if settings.api_key_env.is_empty() {
            None
        } else {
            let key = std::env::var(&settings.api_key_env).map_err(|_| {
                anyhow::anyhow!("environment variable {} (api_key_env) is not set", settings.api_key_env)
            })?;
            Some(ApiKey(key))
        };
        let model = Arc::new(OnceLock::new());
        if !settings.model.trim().is_empty() {
            let _ = model.set(settings.model.trim().to_string());
        }
        Ok(Self { settings, endpoint, client, api_key, model, warmup: None, read_ahead_sent: None, replying: None })
    }

    fn first_token_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.first_token_timeout_ms)
    }

    /// Lets a warm-up still in flight finish first (bounded): a request racing it would load the
    /// model twice, and llama-cpp-python's server cuts off whichever request came first.
    async fn wait_for_warmup(&mut self) {
        let limit = self.first_token_timeout();
        let Some(task) = self.warmup.as_mut() else { return };
        if tokio::time::timeout(limit, task).await.is_ok() {
            self.warmup = None;
        }
    }

    /// Answers `request`; returns the chat with the reply appended when it completed.
    async fn reply(&self, request: LlmRequest, received: Instant, ctx: &ProcessorContext) -> Option<Vec<ChatMessage>> {
        let turn = request.turn;
        if request.messages.is_empty() {
            ctx.push_error(format!("the LLM request for turn {turn} has no messages; nothing was sent")).await;
            return None;
        }
        let total = Deadline::from_std(received) + Duration::from_millis(self.settings.total_timeout_ms);
        ctx.push_downstream(Frame::LlmResponseStart { turn }).await;

        let model = self.model_for_request().await;
        let messages = self.with_system_prompt(request.messages);
        let body = ChatRequest {
            model: model.as_deref(),
            messages: &messages,
            stream: true,
            temperature: self.settings.temperature,
            max_tokens: self.settings.max_tokens,
            seed: self.settings.seed.map(|seed| seed.wrapping_add(turn)),
        };
        let body = match serde_json::to_vec(&body) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                self.fail(ctx, turn, 0, LlmError::Malformed { url: self.endpoint.base.clone(), detail: e.to_string() })
                    .await;
                return None;
            }
        };

        let mut progress = Progress { received, turn, chunks: 0, text: String::new() };
        let mut attempt = 0u32;
        let outcome = loop {
            match self.attempt(&body, ctx, total, &mut progress).await {
                Ok(()) => break Ok(()),
                Err(e) if progress.chunks == 0 && e.retryable() && attempt < self.settings.retries => {
                    let backoff = backoff(self.settings.retry_backoff_ms, attempt);
                    if Deadline::now() + backoff >= total {
                        break Err(e);
                    }
                    attempt += 1;
                    warn!(turn, attempt, error = %e, backoff_ms = backoff.as_millis() as u64, "LLM request failed before any text; retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(()) => {
                if progress.chunks == 0 {
                    warn!(turn, "the LLM reply had no text; nothing will be said");
                }
                info!(
                    turn,
                    chunks = progress.chunks,
                    elapsed_ms = received.elapsed().as_millis() as u64,
                    "LLM reply complete"
                );
                ctx.push_downstream(Frame::LlmResponseEnd).await;
                let mut chat = messages;
                chat.push(ChatMessage::new(Role::Assistant, progress.text));
                Some(chat)
            }
            Err(e) => {
                self.fail(ctx, turn, progress.chunks, e).await;
                None
            }
        }
    }

    /// Sends `chat` followed by an empty user message, for one token, in the background, after
    /// [`PREFILL_DELAY`]: the server's prompt cache then holds what the next request begins with.
    /// A request that comes sooner cancels it, or waits for it once sent (`wait_for_warmup`):
    /// llama.cpp would otherwise read both at once.
    fn prefill(&mut self, mut chat: Vec<ChatMessage>) {
        chat.push(ChatMessage::new(Role::User, ""));
        self.read_ahead(chat, PREFILL_DELAY, "next turn's prompt");
    }

    /// Sends `chat` for one token in the background after `delay` (and after the request ahead
    /// still in flight, if any), so the server's prompt cache holds it. `what` names it in logs.
    fn read_ahead(&mut self, chat: Vec<ChatMessage>, delay: Duration, what: &'static str) {
        self.cancel_unsent_read_ahead();
        let before = self.warmup.take();
        let warmup = self.warmup_request();
        let sent = Arc::new(AtomicBool::new(false));
        self.read_ahead_sent = Some(sent.clone());
        let task = async move {
            tokio::time::sleep(delay).await;
            if let Some(before) = before {
                let _ = tokio::time::timeout(warmup.first_token_timeout, before).await;
            }
            sent.store(true, Ordering::Relaxed);
            let started = Instant::now();
            let model = warmup.model.get().cloned();
            match warmup.one_token(model.as_deref(), &chat).await {
                Ok(()) => debug!(what, elapsed_ms = started.elapsed().as_millis() as u64, "prompt read ahead"),
                Err(e) => debug!(what, error = %e, "reading the prompt ahead failed"),
            }
        };
        self.warmup = Some(tokio::spawn(task.instrument(info_span!("llm_read_ahead"))));
    }

    /// Drops a read-ahead whose request has not gone out yet: what comes now supersedes it.
    fn cancel_unsent_read_ahead(&mut self) {
        if let Some(sent) = self.read_ahead_sent.take()
            && !sent.load(Ordering::Relaxed)
            && let Some(task) = self.warmup.take()
        {
            task.abort();
        }
    }

    fn warmup_request(&self) -> Warmup {
        Warmup {
            client: self.client.clone(),
            endpoint: self.endpoint.clone(),
            api_key: self.api_key.clone(),
            model: self.model.clone(),
            first_token_timeout: self.first_token_timeout(),
            total_timeout: Duration::from_millis(self.settings.total_timeout_ms),
        }
    }

    /// Error frame, end of the reply, then the apology: the end comes first so that text already
    /// streamed is flushed by speech synthesis before the apology is said.
    async fn fail(&self, ctx: &ProcessorContext, turn: u64, chunks: usize, e: LlmError) {
        warn!(turn, chunks, error = %e, "LLM reply failed");
        ctx.push_error(e.to_string()).await;
        ctx.push_downstream(Frame::LlmResponseEnd).await;
        ctx.push_downstream(Frame::Speak(e.apology().to_string())).await;
    }

    /// One HTTP request, streaming its text downstream as it arrives.
    async fn attempt(
        &self,
        body: &Bytes,
        ctx: &ProcessorContext,
        total: Deadline,
        progress: &mut Progress,
    ) -> Result<(), LlmError> {
        let url = &self.endpoint.base;
        let first_token = Deadline::now() + self.first_token_timeout();
        let mut request = self
            .client
            .post(self.endpoint.chat.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body.clone());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(&key.0);
        }

        let (deadline, is_total) = self.limit(progress, first_token, total);
        let response = match timeout_at(deadline, request.send()).await {
            Err(_) => return Err(self.timeout_error(is_total)),
            Ok(Err(e)) => return Err(request_error(url, &e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let body = read_error_body(response, deadline).await;
            return Err(LlmError::Http { url: url.clone(), status: status.as_u16(), body });
        }
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            // A server that ignores `stream: true` sends the whole completion at once.
            let body = read_body(response, deadline, url).await.map_err(|e| match e {
                ReadError::Timeout => self.timeout_error(is_total),
                ReadError::Failed(e) => e,
            })?;
            let text = parse_completion(&body).map_err(|e| chunk_error(url, e))?;
            if !text.is_empty() {
                progress.text(ctx, text).await;
            }
            return Ok(());
        }

        let events = limited(response.bytes_stream(), MAX_REPLY_BYTES).eventsource();
        let mut events = Box::pin(events);
        let mut seen_events = 0usize;
        let mut finishing: Option<Deadline> = None;
        loop {
            let (mut deadline, is_total) = self.limit(progress, first_token, total);
            if let Some(grace) = finishing {
                deadline = deadline.min(grace);
            }
            let next = match timeout_at(deadline, events.next()).await {
                Ok(next) => next,
                Err(_) if finishing.is_some() => return Ok(()),
                Err(_) => return Err(self.timeout_error(is_total)),
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(stream_error(url, e)),
                None if finishing.is_some() => return Ok(()),
                None if seen_events == 0 => {
                    return Err(LlmError::Malformed {
                        url: url.clone(),
                        detail: format!(
                            "the reply held no server-sent events (content type {:?})",
                            if content_type.is_empty() { "none" } else { &content_type }
                        ),
                    });
                }
                None => {
                    return Err(LlmError::Disconnected {
                        url: url.clone(),
                        reason: "the stream ended without [DONE]".into(),
                    });
                }
            };
            seen_events += 1;
            if event.event == "error" {
                return Err(LlmError::Server { url: url.clone(), message: truncate(&event.data, 500) });
            }
            match parse_chunk(&event.data).map_err(|e| chunk_error(url, e))? {
                Chunk::Done => {
                    drain_in_background(events);
                    return Ok(());
                }
                Chunk::Delta { content, finished } => {
                    if !content.is_empty() {
                        progress.text(ctx, content).await;
                    }
                    if finished && finishing.is_none() {
                        finishing = Some(Deadline::now() + FINISH_GRACE);
                    }
                }
            }
        }
    }

    /// The deadline that applies now: the first-token bound until text arrives, then the total.
    fn limit(&self, progress: &Progress, first_token: Deadline, total: Deadline) -> (Deadline, bool) {
        if progress.chunks == 0 && first_token < total { (first_token, false) } else { (total, true) }
    }

    fn timeout_error(&self, is_total: bool) -> LlmError {
        let url = self.endpoint.base.clone();
        if is_total {
            LlmError::TooSlow { url, ms: self.settings.total_timeout_ms }
        } else {
            LlmError::Timeout {
                url,
                ms: self.settings.first_token_timeout_ms,
                setting: "setting `first_token_timeout_ms`",
            }
        }
    }

    /// The configured model, or the one the server lists first; `None` lets the server choose.
    async fn model_for_request(&self) -> Option<String> {
        if let Some(model) = self.model.get() {
            return Some(model.clone());
        }
        let limit = self.first_token_timeout().min(MODEL_LOOKUP_TIMEOUT);
        match list_models(&self.client, &self.endpoint, self.api_key.as_ref(), limit, "model lookup").await {
            Ok(models) => pick_model(&models).map(|m| self.model.get_or_init(|| m).clone()),
            Err(e) => {
                debug!(error = %e, "model lookup failed; the server chooses the model");
                None
            }
        }
    }

    fn with_system_prompt(&self, mut messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
        let prompt = self.settings.system_prompt.trim();
        if prompt.is_empty() {
            return messages;
        }
        match messages.first_mut() {
            Some(first) if first.role == Role::System => {
                first.content = if first.content.trim().is_empty() {
                    prompt.into()
                } else {
                    format!("{prompt}\n\n{}", first.content)
                };
            }
            _ => messages.insert(0, ChatMessage::new(Role::System, prompt)),
        }
        messages
    }
}

#[async_trait]
impl Processor for OpenAiLlm {
    /// Nothing upstream concerns the LLM: speaking events from the speaker pass it at once,
    /// even while a reply streams.
    fn bypass(&self) -> crate::processor::Bypass {
        crate::processor::bypass::upstream
    }

    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        if !self.settings.warmup {
            return Ok(());
        }
        // In the background: a server that is down or still loading its model must not hold up
        // the rest of the pipeline's start.
        let warmup = self.warmup_request();
        let sender = ctx.sender();
        let source = ctx.id().to_string();
        let cancel = ctx.cancellation();
        let task = async move {
            let started = Instant::now();
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = warmup.run() => r,
            };
            match result {
                Ok(model) => info!(model, elapsed_ms = started.elapsed().as_millis() as u64, "LLM warmed up"),
                Err(e) => {
                    warn!(error = %e, "LLM warm-up failed");
                    let message = format!("warm-up request failed (the next turns will try again): {e}");
                    sender.downstream(Frame::Error(Box::new(ErrorFrame { source, message, recoverable: true }))).await;
                }
            }
        };
        self.warmup = Some(tokio::spawn(task.instrument(info_span!("llm_warmup"))));
        Ok(())
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        match frame {
            Frame::LlmRequest(request) if direction == Direction::Downstream => {
                let received = Instant::now();
                let turn = request.turn;
                self.replying = Some(turn);
                self.cancel_unsent_read_ahead();
                self.wait_for_warmup().await;
                let chat = self.reply(*request, received, ctx).instrument(info_span!("llm_reply", turn)).await;
                self.replying = None;
                if let Some(chat) = chat.filter(|_| self.settings.prefill_next_turn) {
                    self.prefill(chat);
                }
            }
            Frame::LlmReadAhead(request) if direction == Direction::Downstream => {
                if self.settings.read_ahead_turn && !request.messages.is_empty() {
                    debug!(turn = request.turn, "reading the turn's prompt ahead");
                    let chat = self.with_system_prompt(request.messages);
                    self.read_ahead(chat, Duration::ZERO, "turn's prompt");
                }
            }
            other => {
                ctx.push(other, direction).await;
            }
        }
        Ok(())
    }

    async fn interrupted(&mut self, _ctx: &ProcessorContext) {
        // The reply's future, and with it the HTTP response and its connection, is already gone.
        if let Some(turn) = self.replying.take() {
            info!(turn, "LLM reply interrupted; its HTTP stream was closed");
        }
    }

    async fn stop(&mut self) {
        if let Some(task) = self.warmup.take() {
            task.abort();
        }
    }
}

/// The request's clock and how much text has gone downstream.
struct Progress {
    received: Instant,
    turn: u64,
    chunks: usize,
    /// The reply so far.
    text: String,
}

impl Progress {
    async fn text(&mut self, ctx: &ProcessorContext, text: String) {
        let ttfb = self.received.elapsed();
        self.text.push_str(&text);
        ctx.push_downstream(Frame::LlmText(text)).await;
        self.chunks += 1;
        if self.chunks == 1 {
            ctx.push_metric("llm_ttfb", Some(self.turn), ttfb).await;
        }
    }
}

/// The start-up request that gets the model loaded.
struct Warmup {
    client: reqwest::Client,
    endpoint: Endpoint,
    api_key: Option<ApiKey>,
    model: Arc<OnceLock<String>>,
    first_token_timeout: Duration,
    total_timeout: Duration,
}

impl Warmup {
    /// Returns the model it warmed up.
    async fn run(self) -> Result<String, LlmError> {
        let url = &self.endpoint.base;
        let models =
            list_models(&self.client, &self.endpoint, self.api_key.as_ref(), self.first_token_timeout, "warm-up")
                .await?;
        let model = match self.model.get() {
            Some(m) => m.clone(),
            None => {
                let Some(m) = pick_model(&models) else {
                    return Err(LlmError::Server {
                        url: url.clone(),
                        message: "it serves no models; load one (in LM Studio: the model picker at the top)".into(),
                    });
                };
                self.model.get_or_init(|| m).clone()
            }
        };
        self.one_token(Some(&model), &[ChatMessage::new(Role::User, "Hello")]).await?;
        Ok(model)
    }

    /// A non-streamed request for one token of a reply to `messages`.
    async fn one_token(&self, model: Option<&str>, messages: &[ChatMessage]) -> Result<(), LlmError> {
        let url = &self.endpoint.base;
        let body = ChatRequest { model, messages, stream: false, temperature: 0.0, max_tokens: 1, seed: None };
        let mut request = self.client.post(self.endpoint.chat.clone()).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(&key.0);
        }
        // The whole reply budget: loading a model on first use can take a while.
        let deadline = Deadline::now() + self.total_timeout;
        let timeout = || LlmError::Timeout {
            url: url.clone(),
            ms: self.total_timeout.as_millis() as u64,
            setting: "setting `total_timeout_ms`",
        };
        let response =
            timeout_at(deadline, request.send()).await.map_err(|_| timeout())?.map_err(|e| request_error(url, &e))?;
        let status = response.status();
        if !status.is_success() {
            let body = read_error_body(response, deadline).await;
            return Err(LlmError::Http { url: url.clone(), status: status.as_u16(), body });
        }
        read_body(response, deadline, url).await.map_err(|e| match e {
            ReadError::Timeout => timeout(),
            ReadError::Failed(e) => e,
        })?;
        Ok(())
    }
}

/// The first model that is not an embedding model (LM Studio lists those too), else the first.
fn pick_model(models: &[String]) -> Option<String> {
    models.iter().find(|m| !m.to_ascii_lowercase().contains("embed")).or(models.first()).cloned()
}

async fn list_models(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    api_key: Option<&ApiKey>,
    limit: Duration,
    what: &'static str,
) -> Result<Vec<String>, LlmError> {
    let url = &endpoint.base;
    let deadline = Deadline::now() + limit;
    let timeout = || LlmError::Timeout {
        url: url.clone(),
        ms: limit.as_millis() as u64,
        setting: if what == "probe" { "the limit of a probe" } else { "setting `first_token_timeout_ms`" },
    };
    let mut request = client.get(endpoint.models.clone()).header(ACCEPT, "application/json");
    if let Some(key) = api_key {
        request = request.bearer_auth(&key.0);
    }
    let response =
        timeout_at(deadline, request.send()).await.map_err(|_| timeout())?.map_err(|e| request_error(url, &e))?;
    let status = response.status();
    if !status.is_success() {
        let body = read_error_body(response, deadline).await;
        return Err(LlmError::Http { url: format!("{url}/models"), status: status.as_u16(), body });
    }
    let body = read_body(response, deadline, url).await.map_err(|e| match e {
        ReadError::Timeout => timeout(),
        ReadError::Failed(e) => e,
    })?;
    let models = parse_models(&body).map_err(|e| chunk_error(&format!("{url}/models"), e))?;
    debug!(what, ?models, "models listed");
    Ok(models)
}

enum ReadError {
    Timeout,
    Failed(LlmError),
}

/// A whole (non-streamed) reply body, bounded in size and time.
async fn read_body(mut response: reqwest::Response, deadline: Deadline, url: &str) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        match timeout_at(deadline, response.chunk()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => {
                return Err(ReadError::Failed(LlmError::Disconnected { url: url.into(), reason: root_cause(&e) }));
            }
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(chunk))) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_REPLY_BYTES {
                    return Err(ReadError::Failed(LlmError::Malformed {
                        url: url.into(),
                        detail: format!("the reply is larger than {MAX_REPLY_BYTES} bytes"),
                    }));
                }
            }
        }
    }
}

/// The start of an error reply's body, on one line, for the error message.
async fn read_error_body(mut response: reqwest::Response, deadline: Deadline) -> String {
    let deadline = deadline.min(Deadline::now() + ERROR_BODY_WAIT);
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    let text = String::from_utf8_lossy(&body);
    if text.trim().is_empty() { "(empty body)".into() } else { truncate(&text, 500) }
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    Transport(reqwest::Error),
    #[error("the reply is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the reply has a line longer than {0} bytes")]
    LineTooLong(usize),
}

/// The body's bytes, failing once more than `max` have arrived or a line grows longer than
/// `MAX_LINE_BYTES`. The line bound matters as much: the SSE parser rescans an unfinished line
/// each time bytes arrive, so one endless line would cost time quadratic in its length.
fn limited(
    stream: impl Stream<Item = reqwest::Result<Bytes>>,
    max: usize,
) -> impl Stream<Item = Result<Bytes, BodyError>> {
    let mut seen = 0usize;
    let mut line = 0usize;
    stream.map(move |chunk| {
        let chunk = chunk.map_err(BodyError::Transport)?;
        seen += chunk.len();
        line = match chunk.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            Some(at) => chunk.len() - at - 1,
            None => line + chunk.len(),
        };
        if seen > max {
            Err(BodyError::TooLarge(max))
        } else if line > MAX_LINE_BYTES {
            Err(BodyError::LineTooLong(MAX_LINE_BYTES))
        } else {
            Ok(chunk)
        }
    })
}

/// Reads what follows `[DONE]` (the end of the chunked body) off the reply path, so the
/// connection goes back to the pool instead of being closed, and the next request skips a
/// connect. Bounded in time; the reply's end is not held up by it.
fn drain_in_background<S: Stream + Send + 'static>(events: std::pin::Pin<Box<S>>) {
    let mut events = events;
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_LIMIT, async { while events.next().await.is_some() {} }).await;
    });
}

fn stream_error(url: &str, e: EventStreamError<BodyError>) -> LlmError {
    let url = url.to_string();
    match e {
        EventStreamError::Transport(BodyError::Transport(e)) => LlmError::Disconnected { url, reason: root_cause(&e) },
        EventStreamError::Transport(e @ (BodyError::TooLarge(_) | BodyError::LineTooLong(_))) => {
            LlmError::Malformed { url, detail: e.to_string() }
        }
        EventStreamError::Utf8(e) => LlmError::Malformed { url, detail: format!("the stream is not UTF-8 ({e})") },
        EventStreamError::Parser(e) => {
            LlmError::Malformed { url, detail: format!("the stream is not server-sent events ({e:?})") }
        }
    }
}

fn chunk_error(url: &str, e: ChunkError) -> LlmError {
    match e {
        ChunkError::Server(message) => LlmError::Server { url: url.into(), message },
        e @ ChunkError::Malformed { .. } => LlmError::Malformed { url: url.into(), detail: e.to_string() },
    }
}

/// A failure before any response arrived.
fn request_error(url: &str, e: &reqwest::Error) -> LlmError {
    let reason = root_cause(e);
    if e.is_connect() {
        LlmError::Unreachable { url: url.into(), reason }
    } else {
        // Connected, then the connection broke before a response (server crashed or restarted).
        LlmError::Disconnected { url: url.into(), reason }
    }
}

/// The innermost cause of an error: reqwest's own message only repeats the URL.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

fn backoff(base_ms: u64, attempt: u32) -> Duration {
    Duration::from_millis(base_ms.saturating_mul(1u64 << attempt.min(16))).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_from_toml_with_defaults_and_reject_unknown_keys() {
        assert!(crate::registry::find("openai_llm").is_some());
        let s: OpenAiLlmSettings = toml::from_str("max_tokens = 64").unwrap();
        assert_eq!(s.base_url, DEFAULT_BASE_URL);
        assert_eq!(s.max_tokens, 64);
        assert!(toml::from_str::<OpenAiLlmSettings>("max_token = 64").is_err());
    }

    #[test]
    fn check_names_each_bad_key() {
        let ctx = BuildContext::for_dir("/tmp");
        let s = OpenAiLlmSettings {
            base_url: "https://api.example.com/v1".into(),
            temperature: 3.0,
            max_tokens: 0,
            first_token_timeout_ms: 90_000,
            api_key_env: "SLOWCAT_TEST_SURELY_UNSET_KEY".into(),
            ..Default::default()
        };
        let keys: Vec<_> = s.check(&ctx).into_iter().filter_map(|p| p.key).collect();
        assert_eq!(keys, ["base_url", "temperature", "max_tokens", "first_token_timeout_ms", "api_key_env"]);
        assert!(OpenAiLlmSettings::default().check(&ctx).is_empty());
    }

    #[test]
    fn endpoint_joins_paths_and_spots_loopback() {
        let e = Endpoint::parse("http://localhost:1234/v1/").unwrap();
        assert_eq!(e.chat.as_str(), "http://localhost:1234/v1/chat/completions");
        assert_eq!(e.models.as_str(), "http://localhost:1234/v1/models");
        assert_eq!(e.base, "http://localhost:1234/v1");
        assert!(e.loopback);
        assert!(!Endpoint::parse("http://192.168.1.5:1234/v1").unwrap().loopback);
        assert!(Endpoint::parse("ftp://x/v1").is_err());
        assert!(Endpoint::parse("localhost:1234").is_err());
    }

    #[test]
    fn system_prompt_goes_in_front_of_the_requests_own() {
        let settings = OpenAiLlmSettings { system_prompt: "Answer in French.".into(), ..Default::default() };
        let llm = OpenAiLlm::new(settings).unwrap();
        let merged = llm
            .with_system_prompt(vec![ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Hi")]);
        assert_eq!(merged[0].content, "Answer in French.\n\nBe brief.");
        assert_eq!(merged.len(), 2);
        let inserted = llm.with_system_prompt(vec![ChatMessage::new(Role::User, "Hi")]);
        assert_eq!(inserted[0], ChatMessage::new(Role::System, "Answer in French."));
    }

    #[test]
    fn retries_back_off_boundedly_and_only_for_transient_faults() {
        assert_eq!(backoff(250, 0), Duration::from_millis(250));
        assert_eq!(backoff(250, 1), Duration::from_millis(500));
        assert_eq!(backoff(250, 30), MAX_BACKOFF);
        let url = String::new();
        assert!(LlmError::Http { url: url.clone(), status: 503, body: String::new() }.retryable());
        assert!(!LlmError::Http { url: url.clone(), status: 400, body: String::new() }.retryable());
        assert!(!LlmError::Malformed { url, detail: String::new() }.retryable());
    }

    #[tokio::test]
    async fn endless_lines_and_endless_replies_are_cut_off() {
        let chunks = |sizes: Vec<(usize, u8)>| {
            futures::stream::iter(sizes.into_iter().map(|(n, b)| Ok::<_, reqwest::Error>(Bytes::from(vec![b; n]))))
        };
        let results: Vec<_> = limited(chunks(vec![(200 << 10, b'x'), (100 << 10, b'x')]), 1 << 20).collect().await;
        assert!(matches!(results[1], Err(BodyError::LineTooLong(_))));
        let lines = (0..20).map(|_| (100 << 10, b'\n')).collect();
        let results: Vec<_> = limited(chunks(lines), 1 << 20).collect().await;
        assert!(results[..10].iter().all(|r| r.is_ok()));
        assert!(matches!(results[10], Err(BodyError::TooLarge(_))));
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", Some(ApiKey("sk-secret".into()))), "Some(ApiKey(<redacted>))");
    }

    #[test]
    fn pick_model_skips_embedding_models() {
        let models = vec!["text-embedding-nomic-embed-text-v1.5".to_string(), "qwen3-4b".to_string()];
        assert_eq!(pick_model(&models).as_deref(), Some("qwen3-4b"));
        assert_eq!(pick_model(&[]), None);
    }
}
