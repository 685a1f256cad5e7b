//! Stateless memory: the LLM keeps no conversation state; every LLM request is rewritten in
//! place with the memory that matters for this turn, so a turn costs the same at turn 10 and at
//! turn 10,000.
//!
//! The processor sits before the LLM. Downstream it sees the user's final `Transcription` and the
//! `LlmRequest` of each turn, and rewrites the request (see [`inject`]). Upstream it sees the
//! `SpokenReply` the output device sends once a reply has been played (only the spoken part when
//! the user interrupted), and stores the exchange — user text of that turn plus the reply as
//! heard — pairing them by turn id. A turn whose reply never comes (the LLM failed, nothing was
//! said) stores nothing: the user will repeat themselves, and a question without its answer
//! would be injected as if it had been answered.
//!
//! Upstream it also sees the LLM's [`TurnNotes`]: the tool calls of a turn with their results,
//! stored with the exchange as a short record (`tool_record_chars`) and replayed with it (see
//! [`inject`]), and what was said aside (the filler while tools ran), which is taken out of the
//! reply as heard before it is stored: the user heard it, but it answered nothing.
//!
//! The database is shared in this process with the memory tools (`remember`, `recall`,
//! `forget`; see [`MemoryDb::shared`]): the facts they keep per speaker are injected into each
//! request of that speaker.
//!
//! Stores go to a writer thread and are acknowledged after their durable commit; before the next
//! injection the processor waits for the acknowledgements still pending, so a turn always sees
//! the exchange before it. A request that comes right after an interruption (a "Stop." whose turn
//! ended as it cut the reply) waits briefly for the output's report of the interrupted reply, so
//! it carries what was heard of it. Reads run on `spawn_blocking`. See [`store`] for the layout and
//! [`index`] for relevance.

pub mod cli;
pub mod codec;
pub mod index;
pub mod inject;
pub mod store;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::frame::{Direction, Frame, LlmRequest, SpokenReply, ToolNote, TurnNotes};
use crate::processor::{BoxProcessor, BuildContext, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};

pub use inject::{InjectOptions, Injected, PrefixState, estimate_tokens, window_start};
pub use store::{
    Fact, MemoryDb, MemoryStore, NewExchange, Recall, Remembered, Retention, StoreOptions, StoreResult, rank_facts,
};

/// One stored exchange: what the user said in a turn and what the assistant said back aloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Per-speaker id, increasing with time.
    pub id: u64,
    /// The conversation turn it came from.
    pub turn: u64,
    /// When the reply finished, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// True when the user cut the reply short (`assistant` then holds only what was said).
    pub interrupted: bool,
    /// The user's final transcript.
    pub user: String,
    /// The reply as it was spoken.
    pub assistant: String,
    /// The tool calls of the turn with their results, short (empty: none): not said, but shown
    /// to the model with the exchange.
    pub tools: String,
}

/// What can go wrong with the memory database.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The directory cannot be created or used.
    #[error("cannot use {path} for the memory database: {source}")]
    Path {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data file is not a (readable) LMDB database.
    #[error(
        "the memory database {path} is damaged or not a memory database ({detail}); move its directory aside to \
         start with an empty memory, or restore a backup"
    )]
    CorruptFile {
        /// The data file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// A stored value does not decode.
    #[error("the memory database is damaged: {0}")]
    Corrupt(#[from] codec::Corrupt),
    /// LMDB failed (a full disk shows up here).
    #[error("{}", lmdb_message(.0))]
    Lmdb(#[from] heed::Error),
    /// Written by a newer layout.
    #[error("the memory database {path} was written by a newer slowcat (format {found}); upgrade slowcat to use it")]
    Format {
        /// The directory.
        path: PathBuf,
        /// Its format version.
        found: u8,
    },
    /// The database is already open in this process.
    #[error(
        "the memory database {0} is already open in this process (do two stateless_memory processors share one path?)"
    )]
    AlreadyOpen(PathBuf),
    /// The database is open in this process with other store settings.
    #[error(
        "the memory database {0} is already open in this process with other settings (do two stateless_memory \
         processors share one path?)"
    )]
    OpenedOtherwise(PathBuf),
    /// There is no database where one was expected.
    #[error("there is no memory database in {0} (nothing has been remembered there yet)")]
    Missing(PathBuf),
    /// Writing the output of a command failed.
    #[error("writing the output failed: {0}")]
    Output(std::io::Error),
    /// The writer's queue is full: the disk has stalled.
    #[error("the memory writer is {WRITER_BEHIND}")]
    Busy,
    /// The writer has stopped.
    #[error("the memory writer has stopped")]
    Stopped,
}

const WRITER_BEHIND: &str = "behind (is the disk stalled?)";

/// Errors of a write that ran out of space: ENOSPC, EFBIG (file size limit), EDQUOT, and EIO,
/// which LMDB reports when a write comes back short, as it does on a full disk.
fn out_of_space(io: &std::io::Error) -> bool {
    matches!(io.raw_os_error(), Some(28 | 27 | 122 | 5))
}

fn lmdb_message(e: &heed::Error) -> String {
    match e {
        heed::Error::Io(io) if out_of_space(io) => {
            format!("a write to disk failed ({io}): the disk is full or failing")
        }
        other => format!("LMDB error: {other}"),
    }
}

impl MemoryError {
    /// True when a write failed as it does on a full disk.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, MemoryError::Lmdb(heed::Error::Io(io)) if out_of_space(io))
    }
}

/// Settings of `stateless_memory`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatelessMemorySettings {
    /// Directory of the database; relative paths go under the data directory, `~/` is home.
    pub path: PathBuf,
    /// Most tokens memory adds to one LLM request.
    pub max_context_tokens: usize,
    /// Newest exchanges inserted as user/assistant messages.
    pub recent_exchanges: usize,
    /// Most older exchanges, relevant to the question, listed in the system message.
    pub relevant_exchanges: usize,
    /// Lay memory out so that consecutive requests begin the same way, which LLM servers with a
    /// prompt cache (llama.cpp, LM Studio) then skip: the recent window advances
    /// `recent_exchanges` at a time (so it holds up to twice as many), and the memory section is
    /// kept while the window keeps its start, gaining a later question's best match while there
    /// is room. Off: the newest `recent_exchanges` and the section for each question, every turn.
    pub stable_prefix: bool,
    /// Exchanges kept per speaker; the oldest beyond it are deleted (0: keep all).
    pub max_exchanges: u64,
    /// Exchanges older than this many days are deleted (0: keep them).
    pub max_age_days: u32,
    /// Compress stored exchanges with lz4.
    pub compression: bool,
    /// Newest exchanges per speaker kept one per record, read every turn; older ones are
    /// compressed in blocks by a background thread.
    pub hot_tier_size: usize,
    /// Most remembered facts (the `remember` tool) listed in each request of their speaker.
    pub remembered_facts: usize,
    /// Characters of a turn's tool calls and results (name, arguments, result) kept with its
    /// exchange and shown with it while it is among the recent ones (0: none kept).
    pub tool_record_chars: usize,
}

impl Default for StatelessMemorySettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("memory"),
            max_context_tokens: 1024,
            recent_exchanges: 6,
            relevant_exchanges: 4,
            stable_prefix: true,
            max_exchanges: 1_000_000,
            max_age_days: 0,
            compression: true,
            hot_tier_size: 64,
            remembered_facts: 20,
            tool_record_chars: 400,
        }
    }
}

impl StatelessMemorySettings {
    /// The database directory these settings name.
    pub fn db_path(&self, ctx: &BuildContext) -> PathBuf {
        ctx.data_path(&self.path)
    }

    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            compression: self.compression,
            hot_tier_size: self.hot_tier_size,
            retention: Retention { max_exchanges: self.max_exchanges, max_age_days: self.max_age_days },
            ..StoreOptions::default()
        }
    }
}

/// Problems with a database directory visible without opening it.
pub(crate) fn path_problem(path: &Path) -> Option<String> {
    let mut existing = path;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => return None,
        }
    }
    if !existing.is_dir() {
        return Some(format!(
            "{} cannot hold the memory database: {} is not a directory; choose another `path`",
            path.display(),
            existing.display()
        ));
    }
    if existing.metadata().is_ok_and(|m| m.permissions().readonly()) {
        return Some(format!("{} is read-only; choose a writable `path` for the memory database", existing.display()));
    }
    if existing == path
        && let Err(e) = store::check_data_file(path)
    {
        return Some(e.to_string());
    }
    None
}

impl Settings for StatelessMemorySettings {
    const TYPE: &'static str = "stateless_memory";
    const ABOUT: &'static str =
        "remembers every exchange per speaker (LMDB) and injects recent and relevant ones into each LLM request";

    fn requires(&self) -> Vec<crate::registry::Requirement> {
        vec![crate::registry::Requirement {
            any_of: &[crate::llm::UserTurnSettings::TYPE],
            key: None,
            why: "it rewrites the LLM requests user_turn makes; put user_turn before it",
        }]
    }

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.hot_tier_size == 0 || self.hot_tier_size > 100_000 {
            problems.push(Problem::at("hot_tier_size", "must be between 1 and 100000"));
        }
        if self.recent_exchanges > self.hot_tier_size {
            problems.push(Problem::at(
                "hot_tier_size",
                format!(
                    "must be at least recent_exchanges ({}) so the newest exchanges are read from the hot tier",
                    self.recent_exchanges
                ),
            ));
        }
        if self.recent_exchanges > 1000 {
            problems.push(Problem::at("recent_exchanges", "must be at most 1000"));
        }
        if self.relevant_exchanges > 1000 {
            problems.push(Problem::at("relevant_exchanges", "must be at most 1000"));
        }
        if self.remembered_facts > store::MAX_FACTS {
            problems.push(Problem::at("remembered_facts", format!("must be at most {}", store::MAX_FACTS)));
        }
        if self.tool_record_chars > codec::MAX_TEXT_BYTES {
            problems.push(Problem::at("tool_record_chars", format!("must be at most {}", codec::MAX_TEXT_BYTES)));
        }
        if self.max_context_tokens > 1_000_000 {
            problems.push(Problem::at("max_context_tokens", "must be at most 1000000"));
        }
        if let Some(p) = path_problem(&self.db_path(ctx)) {
            problems.push(Problem::at("path", p));
        }
        problems
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let path = self.db_path(ctx);
        let db = MemoryDb::shared(&path, Some(self.store_options()))
            .map_err(|e| BuildError::Invalid(format!("path: {e}")))?;
        let store = MemoryStore::start(db).map_err(|e| BuildError::Invalid(format!("path: {e}")))?;
        let mut memory = StatelessMemory::new(
            store,
            InjectOptions {
                max_context_tokens: self.max_context_tokens,
                recent_exchanges: self.recent_exchanges,
                relevant_exchanges: self.relevant_exchanges,
                facts: self.remembered_facts,
            },
        );
        memory.tool_record_chars = self.tool_record_chars;
        if self.stable_prefix {
            memory.prefix = Some(Arc::new(std::sync::Mutex::new(PrefixState::default())));
        }
        Ok(Box::new(memory))
    }
}

/// `text` (a reply as heard, words joined by single spaces) without the words of `aside` (a
/// sentence said aside): its first whole occurrence, or, when the reply was cut short inside it,
/// the start of it that ends the reply.
fn without_aside(text: &str, aside: &str, interrupted: bool) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let aside: Vec<&str> = aside.split_whitespace().collect();
    if aside.is_empty() {
        return text.to_string();
    }
    let keep = |skip: std::ops::Range<usize>| {
        words.iter().enumerate().filter(|(i, _)| !skip.contains(i)).map(|(_, w)| *w).collect::<Vec<_>>().join(" ")
    };
    if let Some(at) = words.windows(aside.len()).position(|w| w == aside.as_slice()) {
        return keep(at..at + aside.len());
    }
    if interrupted {
        for n in (1..aside.len().min(words.len() + 1)).rev() {
            if words[words.len() - n..] == aside[..n] {
                return keep(words.len() - n..words.len());
            }
        }
    }
    text.to_string()
}

/// A turn's tool calls as one short line, `name {arguments} → result` per call, each cut to its
/// share of `max_chars` (so one long page does not push out a calculation); empty when
/// `max_chars` is 0 or there were none.
fn tool_record(tools: &[ToolNote], max_chars: usize) -> String {
    if tools.is_empty() || max_chars == 0 {
        return String::new();
    }
    let share = (max_chars / tools.len()).max(1);
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    tools
        .iter()
        .map(|t| {
            let args = flat(&t.arguments);
            let args = if args.is_empty() || args == "{}" { String::new() } else { format!(" {args}") };
            cut_chars(&format!("{}{args} → {}", t.name, flat(&t.result)), share)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `s` cut to `max` characters, an ellipsis marking a cut.
fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((end, _)) if s.chars().count() > max => format!("{}…", &s[..end]),
        _ => s.to_string(),
    }
}

/// Turns whose user text is remembered while their reply is awaited.
const PENDING_TURNS: usize = 16;
/// Longest wait for earlier stores before an injection goes ahead without them.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for pending stores at end of stream.
const END_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct TurnText {
    turn: u64,
    speaker: String,
    user: String,
    /// True once the text came from the LLM request (it wins over the transcription).
    from_request: bool,
    /// The tool calls the LLM reported for the turn.
    tools: Vec<ToolNote>,
    /// What the LLM said aside in the turn (left out of the stored reply).
    aside: Vec<String>,
}

struct PendingStore {
    turn: u64,
    ack: oneshot::Receiver<StoreResult>,
}

/// The `stateless_memory` processor.
pub struct StatelessMemory {
    store: Option<MemoryStore>,
    db: Arc<MemoryDb>,
    options: InjectOptions,
    /// Set with `stable_prefix`: how the previous requests were laid out.
    prefix: Option<Arc<std::sync::Mutex<PrefixState>>>,
    turns: VecDeque<TurnText>,
    pending: VecDeque<PendingStore>,
    /// Characters of tool record kept per exchange (0: none).
    tool_record_chars: usize,
    /// Until when the next turn's request waits for the report of a reply the user interrupted.
    report_due: Option<tokio::time::Instant>,
    /// That request, waiting.
    held: Option<LlmRequest>,
}

/// How long after an interruption the next turn's request waits for the output's report of what
/// was heard of the interrupted reply. The report comes right after the interruption reaches the
/// output (tens of ms), but a turn that ended as the user interrupted ("Stop.") can overtake it,
/// and its request would then carry nothing of the reply.
const REPORT_WAIT: Duration = Duration::from_millis(300);

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl StatelessMemory {
    /// A processor over a started store.
    pub fn new(store: MemoryStore, options: InjectOptions) -> Self {
        let db = store.db().clone();
        Self {
            store: Some(store),
            db,
            options,
            prefix: None,
            turns: VecDeque::new(),
            pending: VecDeque::new(),
            tool_record_chars: StatelessMemorySettings::default().tool_record_chars,
            report_due: None,
            held: None,
        }
    }

    fn remember_turn(&mut self, turn: u64, speaker: &str, user: &str, from_request: bool) {
        let speaker = store::speaker_id(speaker).to_string();
        if let Some(t) = self.turns.iter_mut().find(|t| t.turn == turn) {
            if from_request || !t.from_request {
                (t.speaker, t.user, t.from_request) = (speaker, user.to_string(), from_request);
            }
            return;
        }
        if self.turns.len() == PENDING_TURNS {
            self.turns.pop_front();
        }
        let (tools, aside) = (Vec::new(), Vec::new());
        self.turns.push_back(TurnText { turn, speaker, user: user.to_string(), from_request, tools, aside });
    }

    fn store_failed(&self, turn: u64, e: &MemoryError) -> String {
        let what = if e.is_disk_full() { "free some disk space" } else { "check the disk and the database directory" };
        format!(
            "memory: the exchange of turn {turn} was not stored in {}: {e}; the conversation goes on without \
             remembering it ({what})",
            self.db.path().display()
        )
    }

    /// Reports finished stores without waiting.
    async fn reap(&mut self, ctx: &ProcessorContext) {
        while let Some(p) = self.pending.front_mut() {
            match p.ack.try_recv() {
                Ok(result) => {
                    let turn = p.turn;
                    self.pending.pop_front();
                    self.report(turn, result, ctx).await;
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    let turn = p.turn;
                    self.pending.pop_front();
                    self.report(turn, Err(Arc::new(MemoryError::Stopped)), ctx).await;
                }
            }
        }
        if let Some(e) = self.store.as_ref().and_then(MemoryStore::take_upkeep_error) {
            ctx.push_error(format!("memory: background upkeep of {} failed: {e}", self.db.path().display())).await;
        }
    }

    /// Waits (up to `limit`) for every pending store, so what follows sees them.
    async fn settle(&mut self, limit: Duration, ctx: &ProcessorContext) {
        let deadline = tokio::time::Instant::now() + limit;
        while let Some(p) = self.pending.front_mut() {
            // Popped only once resolved: an interruption dropping this wait loses nothing.
            match tokio::time::timeout_at(deadline, &mut p.ack).await {
                Ok(result) => {
                    let turn = p.turn;
                    self.pending.pop_front();
                    let result = result.unwrap_or_else(|_| Err(Arc::new(MemoryError::Stopped)));
                    self.report(turn, result, ctx).await;
                }
                Err(_) => {
                    warn!(pending = self.pending.len(), "memory stores still pending; injecting without them");
                    break;
                }
            }
        }
        self.reap(ctx).await;
    }

    async fn report(&self, turn: u64, result: StoreResult, ctx: &ProcessorContext) {
        match result {
            Ok(id) => debug!(turn, id, "exchange stored"),
            Err(e) => ctx.push_error(self.store_failed(turn, &e)).await,
        }
    }

    /// Sends on the request that waited for the report of an interrupted reply, if any.
    async fn release_held(&mut self, ctx: &ProcessorContext) {
        if let Some(request) = self.held.take() {
            let request = self.on_request(request, false, ctx).await;
            ctx.push(Frame::LlmRequest(Box::new(request)), Direction::Downstream).await;
        }
    }

    /// Injects memory into `request`. A read-ahead (`ahead`) gets exactly what the turn's request
    /// would get with the same words, and changes nothing: the turn is not remembered from it, and
    /// the layout `stable_prefix` keeps between requests is left as it was.
    async fn on_request(&mut self, mut request: LlmRequest, ahead: bool, ctx: &ProcessorContext) -> LlmRequest {
        if !ahead && let Some(user) = request.last_user_message() {
            let user = user.to_string();
            self.remember_turn(request.turn, &request.speaker.clone(), &user, true);
        }
        if request.memory_injected {
            return request;
        }
        self.settle(ACK_WAIT, ctx).await;
        let started = Instant::now();
        let (db, options, turn) = (self.db.clone(), self.options, request.turn);
        let original = request.clone();
        let prefix = self.prefix.clone();
        let job = tokio::task::spawn_blocking(move || {
            let injected = match prefix {
                Some(state) => {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    if ahead {
                        inject::apply_stable(&db, &mut request, &options, unix_now_ms(), &mut state.clone())?
                    } else {
                        inject::apply_stable(&db, &mut request, &options, unix_now_ms(), &mut state)?
                    }
                }
                None => inject::apply(&db, &mut request, &options, unix_now_ms())?,
            };
            Ok::<_, MemoryError>((request, injected))
        });
        match job.await {
            Ok(Ok((request, injected))) => {
                let took = started.elapsed();
                debug!(
                    turn,
                    ahead,
                    recent = injected.recent,
                    relevant = injected.relevant,
                    tokens = injected.tokens,
                    took_us = took.as_micros() as u64,
                    "memory injected"
                );
                if !ahead {
                    ctx.push_metric(crate::frame::MetricName::MemoryTime, Some(turn), took).await;
                }
                request
            }
            // The turn's own request will meet the same failure and report it.
            Ok(Err(e)) if ahead => {
                debug!(turn, error = %e, "memory not read for a read-ahead");
                original
            }
            Ok(Err(e)) => {
                ctx.push_error(format!(
                    "memory: could not read {} for turn {turn}: {e}; answering without memory",
                    self.db.path().display()
                ))
                .await;
                original
            }
            Err(e) => {
                ctx.push_error(format!("memory: reading memory for turn {turn} failed: {e}; answering without memory"))
                    .await;
                original
            }
        }
    }

    fn on_notes(&mut self, notes: &TurnNotes) {
        match self.turns.iter_mut().find(|t| t.turn == notes.turn) {
            Some(t) => {
                t.tools.extend(notes.tools.iter().cloned());
                t.aside.extend(notes.aside.iter().cloned());
            }
            None => debug!(turn = notes.turn, "tool notes of a turn memory does not know; not kept"),
        }
    }

    async fn on_spoken(&mut self, reply: &SpokenReply, ctx: &ProcessorContext) {
        let Some(pos) = self.turns.iter().position(|t| t.turn == reply.turn) else {
            debug!(turn = reply.turn, "spoken reply with no user turn (greeting?); not stored");
            return;
        };
        // Turns are answered in order: older turns still waiting will never get their reply.
        let turn = self.turns.drain(..=pos).next_back().expect("position is in range");
        let mut said = reply.text.clone();
        for aside in &turn.aside {
            said = without_aside(&said, aside, reply.interrupted);
        }
        if said.trim().is_empty() && !reply.interrupted {
            debug!(turn = reply.turn, "nothing was said; not stored");
            return;
        }
        let exchange = NewExchange {
            speaker: turn.speaker,
            turn: turn.turn,
            at_ms: unix_now_ms(),
            interrupted: reply.interrupted,
            user: turn.user,
            assistant: said,
            tools: tool_record(&turn.tools, self.tool_record_chars),
        };
        let Some(store) = &self.store else { return };
        match store.submit(exchange) {
            Ok(ack) => self.pending.push_back(PendingStore { turn: reply.turn, ack }),
            Err(e) => ctx.push_error(self.store_failed(reply.turn, &e)).await,
        }
        self.reap(ctx).await;
    }
}

#[async_trait]
impl Processor for StatelessMemory {
    /// The turn's words and requests on their way down, the spoken reply on its way back;
    /// speaking events and everything else pass it at once, even while it stores or injects.
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, direction| match direction {
            Direction::Downstream => matches!(
                frame,
                Frame::Transcription(_) | Frame::LlmRequest(_) | Frame::LlmReadAhead(_) | Frame::UserTurnResumed { .. }
            ),
            Direction::Upstream => matches!(frame, Frame::SpokenReply(_) | Frame::TurnNotes(_)),
        }
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        match (frame, direction) {
            (Frame::Transcription(t), Direction::Downstream) => {
                self.remember_turn(t.turn, &t.speaker, &t.text, false);
                ctx.push(Frame::Transcription(t), direction).await;
            }
            (Frame::LlmRequest(request), Direction::Downstream) => {
                self.release_held(ctx).await;
                let now = tokio::time::Instant::now();
                match self.report_due.filter(|due| *due > now) {
                    Some(due) => {
                        debug!(turn = request.turn, "waiting for the report of the interrupted reply");
                        self.held = Some(*request);
                        ctx.wake_after(due - now);
                    }
                    None => {
                        self.report_due = None;
                        let request = self.on_request(*request, false, ctx).await;
                        ctx.push(Frame::LlmRequest(Box::new(request)), direction).await;
                    }
                }
            }
            (Frame::LlmReadAhead(request), Direction::Downstream) => {
                let request = self.on_request(*request, true, ctx).await;
                ctx.push(Frame::LlmReadAhead(Box::new(request)), direction).await;
            }
            (Frame::SpokenReply(reply), Direction::Upstream) => {
                self.on_spoken(&reply, ctx).await;
                ctx.push(Frame::SpokenReply(reply), direction).await;
                self.report_due = None;
                self.release_held(ctx).await;
            }
            (Frame::TurnNotes(notes), Direction::Upstream) => {
                self.on_notes(&notes);
                ctx.push(Frame::TurnNotes(notes), direction).await;
            }
            (Frame::UserTurnResumed { turn }, Direction::Downstream) => {
                // The newest turn goes on and will come again whole, under the same number: what
                // was heard of it so far is not an exchange to remember (its reply is cancelled).
                if let Some(t) = self.turns.pop_back() {
                    debug!(turn = t.turn, "the turn goes on; its first part is not stored");
                }
                ctx.push(Frame::UserTurnResumed { turn }, direction).await;
            }
            // Not accepted; a safety net, as `Frame` may grow.
            (frame, direction) => {
                ctx.push(frame, direction).await;
            }
        }
        Ok(())
    }

    async fn interrupted(&mut self, _ctx: &ProcessorContext) {
        // A reply is awaited: the output reports what was heard of it now.
        if !self.turns.is_empty() {
            self.report_due = Some(tokio::time::Instant::now() + REPORT_WAIT);
        }
    }

    async fn wake(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        if self.held.is_some() && self.report_due.is_some_and(|due| due <= tokio::time::Instant::now()) {
            debug!("no report of the interrupted reply came; the request goes on without it");
            self.report_due = None;
            self.release_held(ctx).await;
        }
        Ok(())
    }

    async fn end(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        self.report_due = None;
        self.release_held(ctx).await;
        self.settle(END_WAIT, ctx).await;
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(store) = self.store.take() {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filler_is_taken_out_of_the_reply_whole_or_as_far_as_it_was_heard() {
        let said = "One moment. 1234 times 5678 is 7006652.";
        assert_eq!(without_aside(said, "One moment.", false), "1234 times 5678 is 7006652.");
        // Cut short while the filler played: what was heard of it goes too.
        assert_eq!(without_aside("Let me see. One", "One moment.", true), "Let me see.");
        // Not interrupted, and not said whole: the reply is left as it is.
        assert_eq!(without_aside("I have one", "One moment.", false), "I have one");
    }

    #[test]
    fn tool_records_are_short_and_each_call_keeps_its_share() {
        let note = |name: &str, arguments: &str, result: &str| ToolNote {
            name: name.into(),
            arguments: arguments.into(),
            result: result.into(),
        };
        let calc = note("calculate", "{\"expression\": \"1234*5678\"}", "7006652");
        assert_eq!(
            tool_record(std::slice::from_ref(&calc), 400),
            "calculate {\"expression\": \"1234*5678\"} → 7006652"
        );
        let page = note("fetch_web_page", "{}", &"word ".repeat(500));
        let both = tool_record(&[page, calc.clone()], 120);
        assert!(both.starts_with("fetch_web_page → word word"), "{both}");
        assert!(both.ends_with("; calculate {\"expression\": \"1234*5678\"} → 7006652"), "{both}");
        assert!(both.chars().count() <= 122, "{both}");
        assert_eq!(tool_record(&[calc], 0), "");
    }
}
