//! `openai_llm`: streams replies from an OpenAI-compatible chat-completions server.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use tokio::task::JoinHandle;
use tokio::time::{Instant as Deadline, timeout_at};
use tracing::{Instrument, debug, info, info_span, warn};

use super::calls::{Assembler, TextGate};
use super::error::{Fault, LlmError, SetupError, chunk_error, root_cause};
use super::http::{ApiKey, Call, Endpoint, Server, http_client, pick_model, read_body};
use super::priming::{Background, Primer};
use super::settings::OpenAiLlmSettings;
use super::sse::Chunks;
use super::wire::{ChatRequest, Chunk, Message, ToolCall, ToolDef, parse_completion_message};
use crate::frame::{ChatMessage, Direction, Frame, LlmRequest, Role, ToolNote, TurnNotes};
use crate::processor::{ProcessError, Processor, ProcessorContext};
use crate::tools::{ToolBox, ToolError, ToolSpec};

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
/// Said when the model still asks for tools after `max_tool_rounds` and has said nothing.
const TOOL_LOOP_APOLOGY: &str = "Sorry, I couldn't finish that.";

/// Metric names of a turn that called tools (each with the turn's number).
pub mod metrics {
    use crate::frame::MetricName;

    /// From the request's arrival to the end of the first generation, the one that asked for
    /// tools (model lookup included): the LLM's first pass.
    pub const FIRST_PASS: MetricName = MetricName::LlmToolFirstPass;
    /// How long one round's tool calls took together (they run in parallel).
    pub const TOOL_TIME: MetricName = MetricName::LlmToolTime;
    /// From sending a follow-up request (with the tools' results) to its first text pushed:
    /// the LLM's second pass to its first token.
    pub const SECOND_PASS_TTFT: MetricName = MetricName::LlmToolSecondPassTtft;
    /// The client's own time in one round trip: from the end of the generation that asked for
    /// tools to the follow-up request going out, minus the tools' own time.
    pub const OVERHEAD: MetricName = MetricName::LlmToolOverhead;
}

/// Streams replies to [`LlmRequest`]s from an OpenAI-compatible server.
///
/// For each request it emits `LlmResponseStart { turn }`, one `LlmText` per streamed piece of
/// text as it arrives, and `LlmResponseEnd`. When the request fails it emits an `Error` frame,
/// still closes the reply with `LlmResponseEnd` (so whatever text came is spoken and the reply
/// is over for everyone downstream), then `Speak` with a short apology. An interruption drops
/// the in-flight reply: the HTTP response is dropped with it, which closes the connection so the
/// server stops generating, and nothing more of that reply is pushed.
///
/// With tools (see [`OpenAiLlm::with_tools`]) a turn may go to the tools and back: the calls of
/// a finished generation run in parallel, their results go back to the model in the same turn,
/// and only the text of the replies is pushed. Calls and results live within the turn: the next
/// turn's request is built from its own `LlmRequest`, so it never carries a call of this one.
/// An interruption drops the running tool calls with the reply.
pub struct OpenAiLlm {
    settings: OpenAiLlmSettings,
    server: Server,
    /// The model to ask for: from the settings, or looked up once at the server.
    model: Arc<OnceLock<String>>,
    /// The warm-up or read-ahead request in flight.
    priming: Background,
    /// The turn's first request, sent when the user paused.
    head_start: Option<HeadStart>,
    /// The turn being answered; still set after an interruption dropped the reply.
    replying: Option<u64>,
    /// What the model may call.
    tools: ToolBox,
    /// The names of the tool calls running now, to report those an interruption cancelled.
    running_tools: Mutex<Vec<String>>,
    /// Held while a reply is produced: announcements wait for it, so they are said between turns.
    speaking: Arc<tokio::sync::Mutex<()>>,
    /// Speaks the tools' announcements (a reminder that is due).
    announcer: Option<JoinHandle<()>>,
}

/// What one generation (one request, retries included) produced.
struct Generation {
    /// The text pushed downstream.
    text: String,
    /// The calls it made, when it finished.
    calls: Vec<ToolCall>,
    /// The model wrote its calls as JSON in its text instead of the API's `tool_calls`.
    calls_as_text: bool,
}

/// One attempt's state: text held back while it may be a call, and the streamed calls.
struct Pass {
    gate: TextGate,
    calls: Assembler,
    /// Something (text or a call) arrived: the first-token bound no longer applies.
    got_any: bool,
    /// Text frames pushed: the request is not retried after one.
    pushed: usize,
    text: String,
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
        Ok(Self {
            settings,
            server,
            model,
            priming: Background::default(),
            head_start: None,
            replying: None,
            tools: ToolBox::new(),
            running_tools: Mutex::new(Vec::new()),
            speaking: Arc::new(tokio::sync::Mutex::new(())),
            announcer: None,
        })
    }

    /// Offers `tools` to the model. `start` starts them, `stop` stops them.
    pub fn with_tools(mut self, tools: ToolBox) -> Self {
        self.tools = tools;
        self
    }

    /// The tools a request of tool round `round` offers: none once the rounds are used up, or
    /// when the model writes its calls as text (`text_caller`).
    fn tools_offered<'a>(&self, specs: &'a [ToolSpec], round: u32, text_caller: bool) -> Option<Vec<ToolDef<'a>>> {
        let offer = !specs.is_empty() && round < self.settings.max_tool_rounds && !text_caller;
        offer.then(|| specs.iter().map(ToolDef::new).collect())
    }

    /// Temperature, longest reply and seed of turn `turn`'s requests.
    fn sampling(&self, turn: u64) -> (f32, u32, Option<u64>) {
        let seed = self.settings.seed.map(|seed| seed.wrapping_add(turn));
        (self.settings.temperature, self.settings.max_tokens, seed)
    }

    /// Sends the first request `request` will make, as it will make it, when the user pauses:
    /// the server reads the prompt and starts the reply while `turn` decides whether the turn is
    /// over, and the reply streams into the connection's buffers. The turn's request uses it when
    /// it is the same, byte for byte (the user said nothing more); anything else drops it, which
    /// closes its connection and stops the server's work on it.
    fn start_ahead(&mut self, request: &LlmRequest) -> bool {
        // The model must be known to write the same request (it is, after the warm-up).
        let Some(model) = self.model.get().cloned() else { return false };
        let messages = self.with_system_prompt(request.messages.clone());
        let specs = self.tools.specs();
        let tools = self.tools_offered(&specs, 0, false);
        let Ok(body) = chat_body(Some(&model), &messages, self.sampling(request.turn), tools) else { return false };
        let body = Bytes::from(body);
        let server = self.server.clone();
        let deadline = Deadline::now() + Duration::from_millis(self.settings.total_timeout_ms);
        let call = Call::Chat { body: body.clone(), stream: true };
        let response = tokio::spawn(async move { server.send(call, deadline).await });
        // Replacing an earlier one drops it.
        self.head_start = Some(HeadStart { body, response: Some(response), turn: request.turn });
        true
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
            tools: if self.settings.max_tool_rounds > 0 { self.tools.specs().into() } else { Arc::from([]) },
            system_prompt: self.settings.system_prompt.trim().to_string(),
        }
    }

    /// Answers `request`, going to the tools and back when the model calls them; returns the
    /// chat with the spoken reply appended when it completed.
    async fn reply(
        &self,
        request: LlmRequest,
        received: Instant,
        ctx: &ProcessorContext,
        mut head: Option<HeadStart>,
    ) -> Option<Vec<ChatMessage>> {
        let turn = request.turn;
        if request.messages.is_empty() {
            ctx.push_error(format!("the LLM request for turn {turn} has no messages; nothing was sent")).await;
            return None;
        }
        let _between_turns = self.speaking.lock().await;
        let total_timeout = Duration::from_millis(self.settings.total_timeout_ms);
        ctx.push_downstream(Frame::LlmResponseStart { turn }).await;

        let model = self.model_for_request().await;
        let messages = self.with_system_prompt(request.messages);
        let specs = self.tools.specs();
        let mut chat: Vec<Message> = Vec::new();
        let mut progress = Progress { received, turn, chunks: 0, text: String::new(), pass_sent: None, ahead: false };
        let mut round = 0u32;
        // Set once the model wrote its calls as text: it is then offered no more tools.
        let mut text_caller = false;
        // When the last generation that asked for tools ended, and how long its tools took.
        let mut round_trip: Option<(Instant, Duration)> = None;
        let gave_up = loop {
            let tools = self.tools_offered(&specs, round, text_caller);
            let offer = tools.is_some();
            let sampling = self.sampling(turn);
            // The turn's own messages until a tool round adds the wire-level ones.
            let body = if chat.is_empty() {
                chat_body(model.as_deref(), &messages, sampling, tools)
            } else {
                chat_body(model.as_deref(), &chat, sampling, tools)
            };
            let body = match body {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    let e = LlmError::Malformed { url: self.server.url().to_string(), detail: e.to_string() };
                    self.fail(ctx, turn, progress.chunks, e).await;
                    return None;
                }
            };
            // The first request is bounded from the frame's arrival; each follow-up gets the
            // whole budget again, since the tools' time is not the server's.
            let total = if round == 0 { Deadline::from_std(received) } else { Deadline::now() } + total_timeout;
            if let Some((ended, tool_time)) = round_trip.take() {
                ctx.push_metric(metrics::OVERHEAD, Some(turn), ended.elapsed().saturating_sub(tool_time)).await;
                progress.pass_sent = Some(Instant::now());
            }
            let generation = match self.generate(&body, ctx, total, &mut progress, round, head.take()).await {
                Ok(generation) => generation,
                Err(e) => {
                    self.fail(ctx, turn, progress.chunks, e).await;
                    return None;
                }
            };
            if generation.calls.is_empty() {
                break false;
            }
            let ended = Instant::now();
            if !offer {
                warn!(
                    turn,
                    rounds = round,
                    calls = generation.calls.len(),
                    "the model still calls tools after `max_tool_rounds`; they are not run"
                );
                break true;
            }
            if generation.calls_as_text && generation.calls.iter().all(|c| self.tools.get(&c.name).is_none()) {
                // A call, written as text, of a tool that does not exist: Qwen2.5-Coder-0.5B asked
                // for a joke writes `{"name": "joke", …}`. Told there is no such tool it only says
                // so; asked again without tools, it answers in words. Nothing of the call is said.
                let names: Vec<&str> = generation.calls.iter().map(|c| c.name.as_str()).collect();
                warn!(turn, tools = ?names, "the model wrote a call of a tool that does not exist; asking again without tools");
                text_caller = true;
                round += 1;
                continue;
            }
            if round == 0 {
                ctx.push_metric(metrics::FIRST_PASS, Some(turn), received.elapsed()).await;
            }
            let started = Instant::now();
            let results = self.run_calls(&generation.calls, ctx, turn, &request.speaker).await;
            let tool_time = started.elapsed();
            // For memory, which keeps them with the exchange (never in what was said).
            let tools = generation
                .calls
                .iter()
                .zip(&results)
                .map(|(call, result)| ToolNote {
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                    result: result.clone(),
                })
                .collect();
            ctx.push_upstream(Frame::TurnNotes(Box::new(TurnNotes { turn, tools, aside: Vec::new() }))).await;
            ctx.push_metric(metrics::TOOL_TIME, Some(turn), tool_time).await;
            if chat.is_empty() {
                chat = messages.iter().cloned().map(Message::Chat).collect();
            }
            if generation.calls_as_text {
                // A model that writes its calls as text does not read `tool` messages either:
                // Qwen2.5-Coder-0.5B, given its call and the result that way (or offered the
                // tools again), only repeats the call. Told the results in a user message and
                // offered no tools, it answers with them.
                text_caller = true;
                if !generation.text.trim().is_empty() {
                    chat.push(Message::Chat(ChatMessage::new(Role::Assistant, generation.text)));
                }
                let mut told: Vec<String> = generation
                    .calls
                    .iter()
                    .zip(results)
                    .map(|(call, result)| match self.tools.get(&call.name) {
                        Some(_) => format!("The {} tool says: {result}", call.name),
                        // Beside calls of tools that exist (a call of none is asked again above).
                        None => format!("There is no {} tool.", call.name),
                    })
                    .collect();
                told.push("Use this to answer my question.".into());
                chat.push(Message::Chat(ChatMessage::new(Role::User, told.join("\n"))));
            } else {
                chat.push(Message::calls(generation.text, &generation.calls));
                for (call, result) in generation.calls.iter().zip(results) {
                    chat.push(Message::result(&call.id, result));
                }
            }
            round_trip = Some((ended, tool_time));
            round += 1;
        };
        if progress.chunks == 0 && !gave_up {
            warn!(turn, "the LLM reply had no text; nothing will be said");
        }
        info!(
            turn,
            chunks = progress.chunks,
            tool_rounds = round,
            started_ahead = progress.ahead,
            elapsed_ms = received.elapsed().as_millis() as u64,
            "LLM reply complete"
        );
        ctx.push_downstream(Frame::LlmResponseEnd).await;
        if gave_up && progress.chunks == 0 {
            ctx.push_downstream(Frame::Speak(TOOL_LOOP_APOLOGY.into())).await;
        }
        let mut chat = messages;
        chat.push(ChatMessage::new(Role::Assistant, progress.text));
        Some(chat)
    }

    /// One request, retried while nothing of it was pushed; returns its text and, when it
    /// finished, its calls (a generation cut off before it finished makes no call).
    async fn generate(
        &self,
        body: &Bytes,
        ctx: &ProcessorContext,
        total: Deadline,
        progress: &mut Progress,
        round: u32,
        mut head: Option<HeadStart>,
    ) -> Result<Generation, LlmError> {
        let turn = progress.turn;
        let mut attempt = 0u32;
        loop {
            let mut pass = Pass {
                gate: TextGate::new(&self.tools),
                calls: Assembler::default(),
                got_any: false,
                pushed: 0,
                text: String::new(),
            };
            match self.attempt(body, ctx, total, progress, &mut pass, head.take()).await {
                Ok(()) => {
                    let prefix = format!("call_{turn}_{round}_");
                    let mut calls = pass.calls.finish(&prefix);
                    let (rest, text_calls) = pass.gate.finish(&self.tools, &format!("{prefix}t"));
                    if let Some(rest) = rest {
                        pass.text.push_str(&rest);
                        progress.text(ctx, rest).await;
                    }
                    if !text_calls.is_empty() {
                        debug!(turn, calls = text_calls.len(), "the model wrote its tool calls as text");
                    }
                    let calls_as_text = calls.is_empty() && !text_calls.is_empty();
                    calls.extend(text_calls);
                    return Ok(Generation { text: pass.text, calls, calls_as_text });
                }
                Err(e) if pass.pushed == 0 && e.retryable() && attempt < self.settings.retries => {
                    let backoff = backoff(self.settings.retry_backoff_ms, attempt);
                    if Deadline::now() + backoff >= total {
                        return Err(e);
                    }
                    attempt += 1;
                    warn!(turn, attempt, error = %e, backoff_ms = backoff.as_millis() as u64, "LLM request failed before any text; retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `calls` in parallel, each under `tool_timeout_ms`; returns each one's result, an
    /// error's text as the result (the model can say what went wrong). Says `tool_filler` once
    /// when they take longer than `tool_filler_after_ms`. Dropping this future (barge-in) drops
    /// every call still running.
    async fn run_calls(&self, calls: &[ToolCall], ctx: &ProcessorContext, turn: u64, speaker: &str) -> Vec<String> {
        let limit = Duration::from_millis(self.settings.tool_timeout_ms);
        *lock(&self.running_tools) = calls.iter().map(|c| c.name.clone()).collect();
        let runs = futures::future::join_all(calls.iter().map(|call| self.run_call(call, limit, turn, speaker)));
        let filler = async {
            tokio::time::sleep(Duration::from_millis(self.settings.tool_filler_after_ms)).await;
            let filler = self.settings.tool_filler.trim();
            if !filler.is_empty() {
                // Marked as said aside before it is said, so memory leaves it out of the reply.
                let notes = TurnNotes { turn, tools: Vec::new(), aside: vec![filler.to_string()] };
                ctx.push_upstream(Frame::TurnNotes(Box::new(notes))).await;
                ctx.push_downstream(Frame::Speak(filler.to_string())).await;
            }
            std::future::pending::<()>().await;
        };
        let results = tokio::select! {
            results = runs => results,
            () = filler => unreachable!("the filler never ends"),
        };
        lock(&self.running_tools).clear();
        results
    }

    async fn run_call(&self, call: &ToolCall, limit: Duration, turn: u64, speaker: &str) -> String {
        let started = Instant::now();
        let outcome = match arguments(&call.arguments) {
            Ok(args) => match tokio::time::timeout(limit, self.tools.call_for(speaker, &call.name, args)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(ToolError::Failed(format!(
                    "the tool `{}` did not finish within {} ms",
                    call.name,
                    limit.as_millis()
                ))),
            },
            Err(e) => Err(e),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // The arguments and the start of the result are logged: `slowcat ask` shows these lines,
        // and they are how one sees what the model asked for and what it was told.
        let args = call.arguments.trim();
        match outcome {
            Ok(result) => {
                info!(turn, tool = %call.name, args, result = %abridged(&result), elapsed_ms, "tool call done");
                result
            }
            Err(e) => {
                warn!(turn, tool = %call.name, args, elapsed_ms, error = %e, "tool call failed");
                format!("Error: {e}")
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
        pass: &mut Pass,
        head: Option<HeadStart>,
    ) -> Result<(), LlmError> {
        let url = self.server.url();
        let first_token = Deadline::now() + self.first_token_timeout();
        let (deadline, is_total) = self.limit(pass, first_token, total);
        let ahead = match head {
            Some(head) => timeout_at(deadline, head.take_for(body)).await.map_err(|_| self.timeout_error(is_total))?,
            None => None,
        };
        progress.ahead |= ahead.is_some();
        let response = match ahead {
            Some(response) => response,
            None => self.server.send(Call::Chat { body: body.clone(), stream: true }, deadline).await,
        }
        .map_err(|f| f.or_timeout(|| self.timeout_error(is_total)))?;
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            // A server that ignores `stream: true` sends the whole completion at once.
            let body =
                read_body(response, deadline, url).await.map_err(|f| f.or_timeout(|| self.timeout_error(is_total)))?;
            let (text, calls) = parse_completion_message(&body).map_err(|e| chunk_error(url, e))?;
            self.piece(ctx, progress, pass, text, calls).await;
            return Ok(());
        }

        let mut chunks = Chunks::new(response, url, content_type);
        let mut finishing: Option<Deadline> = None;
        loop {
            let (mut deadline, is_total) = self.limit(pass, first_token, total);
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
                Some(Ok(chunk)) => {
                    let (content, calls, finished) = match chunk {
                        Chunk::Delta { content, finished } => (content, Vec::new(), finished),
                        Chunk::Calls { content, calls, finished } => (content, calls, finished),
                        Chunk::Done => unreachable!("handled above"),
                    };
                    self.piece(ctx, progress, pass, content, calls).await;
                    if finished && finishing.is_none() {
                        finishing = Some(Deadline::now() + FINISH_GRACE);
                    }
                }
            }
        }
    }

    /// Takes one piece of a reply: text goes downstream unless it may be a call written as
    /// text; call pieces are put together.
    async fn piece(
        &self,
        ctx: &ProcessorContext,
        progress: &mut Progress,
        pass: &mut Pass,
        content: String,
        calls: Vec<super::wire::CallDelta>,
    ) {
        if !calls.is_empty() {
            pass.got_any = true;
            calls.into_iter().for_each(|c| pass.calls.add(c));
        }
        if content.is_empty() {
            return;
        }
        if let Some(text) = pass.gate.feed(content, &self.tools) {
            pass.text.push_str(&text);
            pass.pushed += 1;
            progress.text(ctx, text).await;
        }
        pass.got_any |= pass.pushed > 0 || pass.gate.holding();
    }

    /// The deadline that applies now: the first-token bound until something arrives, then the
    /// total.
    fn limit(&self, pass: &Pass, first_token: Deadline, total: Deadline) -> (Deadline, bool) {
        if !pass.got_any && first_token < total { (first_token, false) } else { (total, true) }
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
    /// Requests only: everything else, speaking events from the speaker among them, passes it
    /// at once, even while a reply streams.
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, direction| {
            direction == Direction::Downstream && matches!(frame, Frame::LlmRequest(_) | Frame::LlmReadAhead(_))
        }
    }

    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        self.priming.spawn_on(ctx.spawner());
        for warning in self.tools.start().await {
            warn!(%warning, "tools");
        }
        if let Some(announcements) = self.tools.take_announcements() {
            let task = announce(announcements, ctx, self.speaking.clone());
            self.announcer = Some(ctx.spawn(task.instrument(info_span!("llm_announcements"))));
        }
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
                let head = self.head_start.take();
                let chat = self.reply(*request, received, ctx, head).instrument(info_span!("llm_reply", turn)).await;
                self.replying = None;
                if let Some(chat) = chat.filter(|_| self.settings.prefill_next_turn) {
                    self.prefill(chat);
                }
            }
            Frame::LlmReadAhead(request) if direction == Direction::Downstream => {
                if self.settings.read_ahead_turn && request.turn > 0 && self.start_ahead(&request) {
                    debug!(turn = request.turn, "the turn's request sent ahead");
                } else if self.settings.read_ahead_turn && !request.messages.is_empty() {
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
        self.head_start = None;
        // The reply's future, and with it the HTTP response and its connection, is already gone.
        if let Some(turn) = self.replying.take() {
            info!(turn, "LLM reply interrupted; its HTTP stream was closed");
        }
        // The calls' futures went with the reply's: nothing of them runs on, and the next
        // request, built from its own frame, carries none of them.
        let cancelled = std::mem::take(&mut *lock(&self.running_tools));
        if !cancelled.is_empty() {
            info!(tools = ?cancelled, "tool calls cancelled by the interruption");
        }
    }

    async fn stop(&mut self) {
        self.priming.abort();
        if let Some(task) = self.announcer.take() {
            task.abort();
            let _ = task.await;
        }
        self.tools.stop().await;
    }
}

/// A chat-completions request body, streamed.
fn chat_body<M: serde::Serialize>(
    model: Option<&str>,
    messages: &[M],
    (temperature, max_tokens, seed): (f32, u32, Option<u64>),
    tools: Option<Vec<ToolDef>>,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&ChatRequest { model, messages, stream: true, temperature, max_tokens, seed, tools })
}

/// A turn's first request, sent ahead of the turn's end ([`OpenAiLlm::start_ahead`]).
struct HeadStart {
    body: Bytes,
    /// Sending it; its response, unread, once the server answered.
    response: Option<JoinHandle<Result<reqwest::Response, Fault>>>,
    turn: u64,
}

impl HeadStart {
    /// The response to `body` if this request was it; `None` when it was another (then it is
    /// dropped) or could not be sent (the turn sends its own).
    async fn take_for(mut self, body: &Bytes) -> Option<Result<reqwest::Response, Fault>> {
        if self.body != *body {
            debug!(turn = self.turn, "the turn's request differs from the one sent ahead; dropped");
            return None;
        }
        self.response.take()?.await.ok()
    }
}

impl Drop for HeadStart {
    /// Closes its connection: the server stops generating a reply nobody will read.
    fn drop(&mut self) {
        if let Some(response) = &self.response {
            response.abort();
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
    /// When the follow-up request of a tool round went out, until its first text.
    pass_sent: Option<Instant>,
    /// The reply is the one started when the user paused.
    ahead: bool,
}

impl Progress {
    async fn text(&mut self, ctx: &ProcessorContext, text: String) {
        let ttfb = self.received.elapsed();
        let pass_ttft = self.pass_sent.take().map(|sent| sent.elapsed());
        self.text.push_str(&text);
        ctx.push_downstream(Frame::LlmText(text)).await;
        self.chunks += 1;
        if self.chunks == 1 {
            ctx.push_metric(crate::frame::MetricName::LlmTtfb, Some(self.turn), ttfb).await;
        }
        if let Some(ttft) = pass_ttft {
            ctx.push_metric(metrics::SECOND_PASS_TTFT, Some(self.turn), ttft).await;
        }
    }
}

/// Speaks each announcement of the tools as it comes, between turns (never inside a reply),
/// until the pipeline shuts down.
fn announce(
    mut announcements: tokio::sync::mpsc::Receiver<String>,
    ctx: &ProcessorContext,
    speaking: Arc<tokio::sync::Mutex<()>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let sender = ctx.sender();
    let cancel = ctx.cancellation();
    async move {
        loop {
            let text = tokio::select! {
                _ = cancel.cancelled() => return,
                text = announcements.recv() => match text {
                    Some(text) => text,
                    None => return,
                },
            };
            let _between_turns = tokio::select! {
                _ = cancel.cancelled() => return,
                guard = speaking.lock() => guard,
            };
            info!(chars = text.len(), "speaking an announcement of the tools");
            if !sender.downstream(Frame::Speak(text)).await {
                return;
            }
        }
    }
}

/// A call's arguments as a JSON object (empty: none).
fn arguments(text: &str) -> Result<serde_json::Value, ToolError> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err(ToolError::BadArguments("the arguments must be a JSON object".into())),
        Err(e) => Err(ToolError::BadArguments(format!("the arguments are not valid JSON ({e})"))),
    }
}

/// At most the first 160 characters of a tool's result, for the log (a fetched page is long).
fn abridged(text: &str) -> String {
    const LOGGED_CHARS: usize = 160;
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(LOGGED_CHARS) {
        Some((end, _)) => format!("{}…", &flat[..end]),
        None => flat,
    }
}

/// The mutex's data, even after a panic while it was held (a list of names stays usable).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
