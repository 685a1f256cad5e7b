//! Requests that prepare the server rather than answer anyone, each for one token and never
//! spoken:
//! - the **warm-up** at start, which gets the model loaded before the first turn;
//! - **read-ahead**, which sends a prompt the server will soon be asked to continue (the next
//!   turn's beginning, or the turn being decided) so its prompt cache holds it.
//!
//! Both run in the background, one at a time, in the [`Background`] slot: a turn's request waits
//! for the one in flight (llama.cpp would otherwise read both at once, and llama-cpp-python's
//! server cuts off whichever came first) and drops one not yet sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::error::LlmError;
use super::http::{Call, Server, pick_model};
use super::wire::{ChatRequest, ToolDef};
use crate::frame::{ChatMessage, ErrorFrame, Frame, Role};
use crate::processor::{FrameSender, Spawner};
use crate::tools::ToolSpec;

/// What a priming request needs: the server, the model (shared with the replies, which may have
/// looked it up first), the bounds, and what a turn's first request begins with.
#[derive(Debug, Clone)]
pub(super) struct Primer {
    pub server: Server,
    pub model: Arc<OnceLock<String>>,
    pub first_token_timeout: Duration,
    pub total_timeout: Duration,
    /// The tools a turn's first request offers. A priming request offers the same ones: the chat
    /// template writes them into the prompt (ahead of the chat with most templates), so a prompt
    /// read without them is not the prefix the server will be asked to continue, and its cache
    /// would be no help.
    pub tools: Arc<[ToolSpec]>,
    /// The system prompt a turn's request begins with (empty: none).
    pub system_prompt: String,
}

impl Primer {
    /// The warm-up: picks the model when none is configured and asks it for one token. Returns
    /// the model it warmed up.
    async fn warm_up(&self) -> Result<String, LlmError> {
        let models = self.server.list_models(self.first_token_timeout, "warm-up").await?;
        let model = match self.model.get() {
            Some(m) => m.clone(),
            None => {
                let Some(m) = pick_model(&models) else {
                    return Err(LlmError::Server {
                        url: self.server.url().to_string(),
                        message: "it serves no models; load one (in LM Studio: the model picker at the top)".into(),
                    });
                };
                self.model.get_or_init(|| m).clone()
            }
        };
        // Begun as a turn begins (system prompt, tools), so the server's prompt cache holds that
        // part for the first turn: with the tool specs it is about a thousand tokens.
        let mut hello = Vec::new();
        if !self.system_prompt.is_empty() {
            hello.push(ChatMessage::new(Role::System, self.system_prompt.clone()));
        }
        hello.push(ChatMessage::new(Role::User, "Hello"));
        self.one_token(Some(&model), &hello).await?;
        Ok(model)
    }

    /// A non-streamed request for one token of a reply to `messages`.
    async fn one_token(&self, model: Option<&str>, messages: &[ChatMessage]) -> Result<(), LlmError> {
        let tools = (!self.tools.is_empty()).then(|| self.tools.iter().map(ToolDef::new).collect());
        let body = ChatRequest { model, messages, stream: false, temperature: 0.0, max_tokens: 1, seed: None, tools };
        let body = serde_json::to_vec(&body)
            .map_err(|e| LlmError::Malformed { url: self.server.url().to_string(), detail: e.to_string() })?;
        // The whole reply budget: loading a model on first use can take a while.
        let deadline = Deadline::now() + self.total_timeout;
        let timeout = || LlmError::Timeout {
            url: self.server.url().to_string(),
            ms: self.total_timeout.as_millis() as u64,
            setting: "setting `total_timeout_ms`",
        };
        self.server
            .fetch(Call::Chat { body: Bytes::from(body), stream: false }, deadline)
            .await
            .map_err(|f| f.or_timeout(timeout))?;
        Ok(())
    }
}

/// The one priming request that may be in flight.
#[derive(Default)]
pub(super) struct Background {
    /// The processor's tracked tasks, once it has started.
    spawner: Option<Spawner>,
    task: Option<JoinHandle<()>>,
    /// Set once the read-ahead in `task` has gone out; until then a turn's request may drop it.
    read_ahead_sent: Option<Arc<AtomicBool>>,
}

impl Background {
    /// Spawns the requests as the processor's tracked tasks from now on.
    pub(super) fn spawn_on(&mut self, spawner: Spawner) {
        self.spawner = Some(spawner);
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        match &self.spawner {
            Some(spawner) => spawner.spawn(task),
            // Not started in a pipeline (a unit test): nothing tracks it, `abort` still stops it.
            None => tokio::spawn(task),
        }
    }

    /// Starts the warm-up. A failure is a warning and a recoverable error frame from `source`:
    /// the next turns try again. `cancel` (the pipeline's shutdown) stops it.
    pub(super) fn warm_up(&mut self, primer: Primer, sender: FrameSender, source: String, cancel: CancellationToken) {
        let task = async move {
            let started = Instant::now();
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = primer.warm_up() => r,
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
        self.task = Some(self.spawn(task.instrument(info_span!("llm_warmup"))));
    }

    /// Sends `chat` for one token in the background after `delay` (and after the request ahead
    /// still in flight, if any), so the server's prompt cache holds it. `what` names it in logs.
    pub(super) fn read_ahead(&mut self, primer: Primer, chat: Vec<ChatMessage>, delay: Duration, what: &'static str) {
        self.cancel_unsent_read_ahead();
        let before = self.task.take();
        let sent = Arc::new(AtomicBool::new(false));
        self.read_ahead_sent = Some(sent.clone());
        let task = async move {
            tokio::time::sleep(delay).await;
            if let Some(before) = before {
                let _ = tokio::time::timeout(primer.first_token_timeout, before).await;
            }
            sent.store(true, Ordering::Relaxed);
            let started = Instant::now();
            let model = primer.model.get().cloned();
            match primer.one_token(model.as_deref(), &chat).await {
                Ok(()) => debug!(what, elapsed_ms = started.elapsed().as_millis() as u64, "prompt read ahead"),
                Err(e) => debug!(what, error = %e, "reading the prompt ahead failed"),
            }
        };
        self.task = Some(self.spawn(task.instrument(info_span!("llm_read_ahead"))));
    }

    /// Drops a read-ahead whose request has not gone out yet: what comes now supersedes it.
    pub(super) fn cancel_unsent_read_ahead(&mut self) {
        if let Some(sent) = self.read_ahead_sent.take()
            && !sent.load(Ordering::Relaxed)
            && let Some(task) = self.task.take()
        {
            task.abort();
        }
    }

    /// Lets the request in flight finish first, for at most `limit`.
    pub(super) async fn wait(&mut self, limit: Duration) {
        let Some(task) = self.task.as_mut() else { return };
        if tokio::time::timeout(limit, task).await.is_ok() {
            self.task = None;
        }
    }

    /// Drops whatever is in flight (the pipeline stops).
    pub(super) fn abort(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
