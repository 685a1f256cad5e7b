//! `openai_llm`: streams replies from an OpenAI-compatible chat-completions server.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use tokio::time::{Instant as Deadline, timeout_at};
use tracing::{Instrument, debug, info, info_span, warn};

use super::error::{LlmError, SetupError, chunk_error, root_cause};
use super::http::{ApiKey, Call, Endpoint, Server, http_client, pick_model, read_body};
use super::priming::{Background, Primer};
use super::settings::OpenAiLlmSettings;
use super::sse::Chunks;
use super::wire::{ChatRequest, Chunk, parse_completion};
use crate::frame::{ChatMessage, Direction, Frame, LlmRequest, Role};
use crate::processor::{ProcessError, Processor, ProcessorContext};

/// The longest wait between two retries, whatever `retry_backoff_ms` and the attempt count say.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long to wait for `[DONE]` after the server gave a finish reason. Reading to the end of the
/// body lets the connection go back to the pool; a server that never sends `[DONE]` costs this.
const FINISH_GRACE: Duration = Duration::from_millis(200);
/// How long after a reply the next turn's beginning is sent ahead: not while the reply's first
/// sentence is synthesized, which the server's work would slow down (short replies end by then).
const PREFILL_DELAY: Duration = Duration::from_secs(1);
/// Bound of the model lookup that precedes the first request when `model` is empty.
const MODEL_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

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
    server: Server,
    /// The model to ask for: from the settings, or looked up once at the server.
    model: Arc<OnceLock<String>>,
    /// The warm-up or read-ahead request in flight.
    priming: Background,
    /// The turn being answered; still set after an interruption dropped the reply.
    replying: Option<u64>,
}

impl OpenAiLlm {
    /// Builds the client; no request is made before `start`.
    pub fn new(settings: OpenAiLlmSettings) -> Result<Self, SetupError> {
        let endpoint = Endpoint::parse(&settings.base_url)
            .map_err(|reason| SetupError::InvalidUrl { url: settings.base_url.clone(), reason })?;
        let client = http_client(Duration::from_millis(settings.connect_timeout_ms), endpoint.loopback)
            .map_err(|e| SetupError::HttpClient(root_cause(&e)))?;
        let api_key = if settings.api_key_env.is_empty() {
            None
        } else {
            let key = std::env::var(&settings.api_key_env)
                .map_err(|_| SetupError::MissingApiKey(settings.api_key_env.clone()))?;
            Some(ApiKey(key))
        };
        let model = Arc::new(OnceLock::new());
        if !settings.model.trim().is_empty() {
            let _ = model.set(settings.model.trim().to_string());
        }
        let server = Server { client, endpoint, api_key };
        Ok(Self { settings, server, model, priming: Background::default(), replying: None })
    }

    fn first_token_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.first_token_timeout_ms)
    }

    fn primer(&self) -> Primer {
        Primer {
            server: self.server.clone(),
            model: self.model.clone(),
            first_token_timeout: self.first_token_timeout(),
            total_timeout: Duration::from_millis(self.settings.total_timeout_ms),
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
                let e = LlmError::Malformed { url: self.server.url().to_string(), detail: e.to_string() };
                self.fail(ctx, turn, 0, e).await;
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
    /// A request that comes sooner cancels it, or waits for it once sent.
    fn prefill(&mut self, mut chat: Vec<ChatMessage>) {
        chat.push(ChatMessage::new(Role::User, ""));
        let primer = self.primer();
        self.priming.read_ahead(primer, chat, PREFILL_DELAY, "next turn's prompt");
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
        let url = self.server.url();
        let first_token = Deadline::now() + self.first_token_timeout();
        let (deadline, is_total) = self.limit(progress, first_token, total);
        let response = self
            .server
            .send(Call::Chat { body: body.clone(), stream: true }, deadline)
            .await
            .map_err(|f| f.or_timeout(|| self.timeout_error(is_total)))?;
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            // A server that ignores `stream: true` sends the whole completion at once.
            let body =
                read_body(response, deadline, url).await.map_err(|f| f.or_timeout(|| self.timeout_error(is_total)))?;
            let text = parse_completion(&body).map_err(|e| chunk_error(url, e))?;
            if !text.is_empty() {
                progress.text(ctx, text).await;
            }
            return Ok(());
        }

        let mut chunks = Chunks::new(response, url, content_type);
        let mut finishing: Option<Deadline> = None;
        loop {
            let (mut deadline, is_total) = self.limit(progress, first_token, total);
            if let Some(grace) = finishing {
                deadline = deadline.min(grace);
            }
            let next = match timeout_at(deadline, chunks.next()).await {
                Ok(next) => next,
                Err(_) if finishing.is_some() => return Ok(()),
                Err(_) => return Err(self.timeout_error(is_total)),
            };
            match next {
                None if finishing.is_some() => return Ok(()),
                None => return Err(chunks.ended_early()),
                Some(Err(e)) => return Err(e),
                Some(Ok(Chunk::Done)) => {
                    chunks.drain_in_background();
                    return Ok(());
                }
                Some(Ok(Chunk::Delta { content, finished })) => {
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
        let url = self.server.url().to_string();
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
        match self.server.list_models(limit, "model lookup").await {
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
        if self.settings.warmup {
            // In the background: a server that is down or still loading its model must not hold
            // up the rest of the pipeline's start.
            let primer = self.primer();
            self.priming.warm_up(primer, ctx.sender(), ctx.id().to_string(), ctx.cancellation());
        }
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
                self.priming.cancel_unsent_read_ahead();
                self.priming.wait(self.first_token_timeout()).await;
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
                    let primer = self.primer();
                    self.priming.read_ahead(primer, chat, Duration::ZERO, "turn's prompt");
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
        self.priming.abort();
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

fn backoff(base_ms: u64, attempt: u32) -> Duration {
    Duration::from_millis(base_ms.saturating_mul(1u64 << attempt.min(16))).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn retries_back_off_boundedly() {
        assert_eq!(backoff(250, 0), Duration::from_millis(250));
        assert_eq!(backoff(250, 1), Duration::from_millis(500));
        assert_eq!(backoff(250, 30), MAX_BACKOFF);
    }
}
