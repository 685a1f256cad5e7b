//! `slowcat bench history`: text turns against an LLM server, with stateless memory and with the
//! whole conversation in every request; time to first token as the conversation grows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use async_trait::async_trait;
use slowcat_processors::frame::{ChatMessage, Role, SpokenReply};
use slowcat_processors::llm::{OpenAiLlmSettings, UserTurnSettings};
use slowcat_processors::memory::StatelessMemorySettings;
use slowcat_processors::{
    BoxProcessor, BuildContext, Direction, Frame, Pipeline, PipelineOptions, ProcessError, Processor, ProcessorContext,
    Settings as _, Transcription,
};

use super::collect::ms;
use super::report::cell;
use super::script::history_message;
use crate::stats::median;

/// The traditional way: every request carries the whole conversation so far.
#[derive(Default)]
struct FullHistory {
    history: Vec<ChatMessage>,
    /// The user's words per turn, until the reply comes back.
    asked: BTreeMap<u64, String>,
}

#[async_trait]
impl Processor for FullHistory {
    fn accepts(&self) -> slowcat_processors::processor::Accepts {
        |frame, direction| match direction {
            Direction::Downstream => matches!(frame, Frame::LlmRequest(_)),
            Direction::Upstream => matches!(frame, Frame::SpokenReply(_)),
        }
    }

    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        match (frame, dir) {
            (Frame::LlmRequest(mut r), Direction::Downstream) => {
                if let Some(user) = r.last_user_message() {
                    self.asked.insert(r.turn, user.to_string());
                }
                // After the system message, before this turn's question.
                let at = r.messages.iter().take_while(|m| m.role == Role::System).count();
                r.messages.splice(at..at, self.history.iter().cloned());
                ctx.push(Frame::LlmRequest(r), dir).await;
            }
            (Frame::SpokenReply(s), Direction::Upstream) => {
                if let Some(user) = self.asked.remove(&s.turn)
                    && !s.text.trim().is_empty()
                {
                    self.history.push(ChatMessage::new(Role::User, user));
                    self.history.push(ChatMessage::new(Role::Assistant, s.text.clone()));
                }
                ctx.push(Frame::SpokenReply(s), dir).await;
            }
            (frame, dir) => {
                ctx.push(frame, dir).await;
            }
        }
        Ok(())
    }
}

/// Size of each turn's LLM request: (messages, characters).
type RequestSizes = Arc<Mutex<BTreeMap<u64, (usize, usize)>>>;

/// Notes the size of each LLM request on its way to the LLM.
struct RequestProbe(RequestSizes);

#[async_trait]
impl Processor for RequestProbe {
    fn accepts(&self) -> slowcat_processors::processor::Accepts {
        |frame, _| matches!(frame, Frame::LlmRequest(_))
    }

    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        if let Frame::LlmRequest(r) = &frame {
            let chars = r.messages.iter().map(|m| m.content.chars().count()).sum();
            self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(r.turn, (r.messages.len(), chars));
        }
        ctx.push(frame, dir).await;
        Ok(())
    }
}

/// Stands in for TTS and speaker in the text-only benchmark: reports each reply upstream as
/// spoken, whole, the way the output device does, so memory stores it.
#[derive(Default)]
struct ReplyAsSpoken {
    turn: u64,
    text: String,
}

#[async_trait]
impl Processor for ReplyAsSpoken {
    fn accepts(&self) -> slowcat_processors::processor::Accepts {
        |frame, direction| {
            direction == Direction::Downstream
                && matches!(frame, Frame::LlmResponseStart { .. } | Frame::LlmText(_) | Frame::LlmResponseEnd)
        }
    }

    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        match &frame {
            Frame::LlmResponseStart { turn } => {
                self.turn = *turn;
                self.text.clear();
            }
            Frame::LlmText(t) => self.text.push_str(t),
            _ => {}
        }
        let ended = matches!(frame, Frame::LlmResponseEnd);
        ctx.push(frame, dir).await;
        if ended {
            let reply = SpokenReply { text: std::mem::take(&mut self.text), interrupted: false, turn: self.turn };
            ctx.push_upstream(Frame::SpokenReply(Box::new(reply))).await;
        }
        Ok(())
    }
}

/// One turn of the history benchmark.
#[derive(Debug, Clone, Default)]
struct HistoryTurn {
    ttfb: Option<Duration>,
    messages: usize,
    chars: usize,
}

/// The two ways of giving the LLM the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Stateless,
    FullHistory,
}

/// Text turns through user_turn → (memory | full history) → openai_llm → a stand-in speaker.
async fn history_run(
    how: Context,
    url: &str,
    turns: usize,
    max_tokens: u32,
) -> anyhow::Result<(Vec<HistoryTurn>, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let ctx = BuildContext::for_dir(dir.path());
    let llm_toml = format!(
        "base_url = {url:?}\nmax_tokens = {max_tokens}\ntemperature = 0.0\nfirst_token_timeout_ms = 120000\ntotal_timeout_ms = 300000"
    );
    let sizes: RequestSizes = Arc::default();
    let probe = RequestProbe(sizes.clone());
    let processors = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, BoxProcessor)>> {
        let user_turn = toml::from_str::<UserTurnSettings>("")?.check_and_build(&ctx)?;
        let context: BoxProcessor = match how {
            Context::Stateless => toml::from_str::<StatelessMemorySettings>("")?.check_and_build(&ctx)?,
            Context::FullHistory => Box::new(FullHistory::default()),
        };
        let llm = toml::from_str::<OpenAiLlmSettings>(&llm_toml)?.check_and_build(&ctx)?;
        Ok(vec![
            ("user_turn".into(), user_turn),
            ("context".into(), context),
            ("probe".into(), Box::new(probe)),
            ("llm".into(), llm),
            ("spoken".into(), Box::new(ReplyAsSpoken::default())),
        ])
    })
    .await??;
    let mut pipeline = Pipeline::spawn(processors, PipelineOptions::default());
    pipeline.start().await;
    let mut results = vec![HistoryTurn::default(); turns];
    let mut errors = Vec::new();
    let started = Instant::now();
    for n in 1..=turns as u64 {
        pipeline
            .send(Frame::Transcription(Box::new(Transcription {
                text: history_message(n as usize),
                speaker: "default".into(),
                turn: n,
                start: Duration::ZERO,
                end: Duration::ZERO,
                processing: Duration::ZERO,
            })))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let Ok(out) = tokio::time::timeout_at(deadline, pipeline.recv()).await else {
                let _ = pipeline.cancel().await;
                bail!("turn {n} got no reply within 300 s");
            };
            let Some((frame, dir)) = out else { bail!("the pipeline stopped at turn {n}") };
            match frame {
                Frame::Metrics(m) if m.name == slowcat_processors::frame::MetricName::LlmTtfb && m.turn == Some(n) => {
                    results[n as usize - 1].ttfb = Some(m.value)
                }
                Frame::Error(e) => errors.push(format!("turn {n}: {}: {}", e.source, e.message)),
                Frame::SpokenReply(r) if dir == Direction::Upstream && r.turn == n => break,
                _ => {}
            }
        }
        if n % 25 == 0 {
            eprintln!("… {how:?}: turn {n} after {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    let _ = pipeline.cancel().await;
    let sizes = sizes.lock().unwrap_or_else(PoisonError::into_inner);
    for (turn, &(messages, chars)) in sizes.iter() {
        if let Some(r) = results.get_mut(*turn as usize - 1) {
            r.messages = messages;
            r.chars = chars;
        }
    }
    Ok((results, errors))
}

/// `slowcat bench history`: `turns` text turns with stateless memory, then with the whole history
/// in every request, against the server at `url`; time to first token at the turns in `at`.
pub async fn history(url: &str, turns: usize, max_tokens: u32, at: &[usize]) -> anyhow::Result<()> {
    if turns == 0 {
        bail!("--turns must be at least 1");
    }
    let mut runs = Vec::new();
    for how in [Context::Stateless, Context::FullHistory] {
        eprintln!("{how:?}: {turns} turns against {url}");
        runs.push((how, history_run(how, url, turns, max_tokens).await?));
    }
    println!("slowcat bench history: {turns} text turns, max_tokens {max_tokens}, temperature 0, LLM {url}");
    println!("the reply reaches memory through a stand-in for TTS and speaker (each reply counts as spoken whole)");
    println!("ttfb = LLM request → first token; window = median of the 5 turns up to it; ~tokens = characters / 4");
    println!();
    println!(
        "{:>5} | {:>18} {:>8} {:>5} {:>8} | {:>18} {:>8} {:>5} {:>8}",
        "turn", "stateless ttfb ms", "window", "msgs", "~tokens", "full-history ttfb", "window", "msgs", "~tokens"
    );
    for &k in at.iter().filter(|&&k| k >= 1 && k <= turns) {
        let mut line = format!("{k:>5}");
        for (_, (results, _)) in &runs {
            let r = &results[k - 1];
            let window =
                median(results[k.saturating_sub(5)..k].iter().filter_map(|r| r.ttfb).map(ms)).unwrap_or(f64::NAN);
            line += &format!(" | {:>18} {:>8.0} {:>5} {:>8}", cell(r.ttfb.map(ms)), window, r.messages, r.chars / 4);
        }
        println!("{line}");
    }
    for (how, (_, errors)) in &runs {
        if !errors.is_empty() {
            println!("{how:?}: {} errors, first: {}", errors.len(), errors[0]);
        }
    }
    Ok(())
}
