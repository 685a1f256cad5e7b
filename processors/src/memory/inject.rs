//! The rewrite of an LLM request: memory goes in, within a token budget, exactly once.
//!
//! After the rewrite the request has exactly one system message, first (system messages found
//! elsewhere are merged into it; one is created when there was none and there is memory to
//! add). Its end gains a bounded "memory" section with the relevant older exchanges, oldest
//! first. The newest exchanges go in as user/assistant message pairs, in order, right before the
//! current (last) user message. `memory_injected` is set, and a request that already has it set
//! is left alone.
//!
//! Budget (`max_context_tokens`, counting only what memory adds): the newest exchanges come
//! first, newest to oldest, stopping at the first that does not fit, but a quarter of the budget
//! is kept for relevant exchanges when there are any; relevant exchanges then fill what is left,
//! best first, skipping any that do not fit.
//!
//! Facts the user asked to keep (the `remember` tool) come before all that: a section of the
//! system message, within half the budget and at most `facts` of them (all of a speaker's facts
//! while there are no more than that, in the order they were remembered, so the section changes
//! only when a fact does; beyond that the ones that share most words with the question).
//!
//! An exchange whose turn called tools is replayed with a short record of the calls and their
//! results after the user's words (never in the assistant's, which a model would imitate aloud),
//! so a follow-up question ("what was that number again?") finds the result even when the reply
//! did not say it in full or was cut short.

use std::collections::HashMap;

use crate::frame::{ChatMessage, LlmRequest, Role};

use super::store::{Fact, MemoryDb, Recall};
use super::{Exchange, MemoryError};

/// Tokens a chat template adds per message (role markers, separators).
pub const MESSAGE_OVERHEAD_TOKENS: usize = 4;

/// What a rewrite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InjectOptions {
    /// Most tokens memory may add to a request.
    pub max_context_tokens: usize,
    /// Newest exchanges inserted as message pairs.
    pub recent_exchanges: usize,
    /// Most older, relevant exchanges listed in the system message.
    pub relevant_exchanges: usize,
    /// Most remembered facts listed in the system message.
    pub facts: usize,
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Injected {
    /// Exchanges inserted as message pairs.
    pub recent: usize,
    /// Exchanges listed in the memory section.
    pub relevant: usize,
    /// Facts listed.
    pub facts: usize,
    /// Estimated tokens added.
    pub tokens: usize,
}

/// Estimated tokens of a text for current BPE tokenizers: about four characters of ASCII text
/// per token, each non-ASCII character about one token (accents, CJK and emoji split finely), and
/// at least one token per word (short words and numbers are whole tokens). It errs high for
/// plain English, which keeps the real count under the budget.
pub fn estimate_tokens(text: &str) -> usize {
    let (mut ascii, mut other, mut words, mut in_word) = (0usize, 0usize, 0usize, false);
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1
        } else {
            other += 1
        }
        let word_char = c.is_alphanumeric();
        if word_char && !in_word {
            words += 1;
        }
        in_word = word_char;
    }
    words.max(ascii.div_ceil(4) + other)
}

fn message_tokens(text: &str) -> usize {
    estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS
}

const SECTION_HEADER: &str = "Memory: things said in earlier conversations with this user, oldest first. \
Use them only when they help with the current request.";

/// The assistant's side of a pair, marked when the user cut it short.
fn spoken(ex: &Exchange) -> String {
    match (ex.interrupted, ex.assistant.trim().is_empty()) {
        (false, _) => ex.assistant.clone(),
        (true, true) => "[interrupted before saying anything]".to_string(),
        (true, false) => format!("{} [interrupted]", ex.assistant.trim_end()),
    }
}

/// An exchange as the two chat messages it is replayed as; the turn's tool calls follow the
/// user's words.
fn chat_pair(ex: &Exchange) -> [ChatMessage; 2] {
    let user = if ex.tools.is_empty() { ex.user.clone() } else { format!("{}\n{TOOLS_OPEN}{}]", ex.user, ex.tools) };
    [ChatMessage::new(Role::User, user), ChatMessage::new(Role::Assistant, spoken(ex))]
}

/// How a replayed exchange introduces its tool calls.
pub const TOOLS_OPEN: &str = "[tools you used to answer this: ";

const FACTS_HEADER: &str = "Facts the user asked you to remember:";

/// The facts to list and what they cost: all of them in id order while there are at most
/// `options.facts`, else the best matches for `query` (newest first among equals), then listed
/// in id order; within half of the budget.
fn fact_lines(facts: &[Fact], query: Option<&str>, options: &InjectOptions) -> (Vec<String>, usize) {
    if facts.is_empty() || options.facts == 0 {
        return (Vec::new(), 0);
    }
    let mut chosen: Vec<&Fact> = if facts.len() <= options.facts {
        facts.iter().collect()
    } else {
        let mut ranked = super::store::rank_facts(facts, query.unwrap_or(""));
        // The newest fill what the question leaves.
        for f in facts.iter().rev() {
            if ranked.len() >= options.facts {
                break;
            }
            if !ranked.iter().any(|r| r.id == f.id) {
                ranked.push(f);
            }
        }
        ranked.truncate(options.facts);
        ranked
    };
    chosen.sort_unstable_by_key(|f| f.id);
    let limit = options.max_context_tokens / 2;
    let mut cost = estimate_tokens(FACTS_HEADER) + 2;
    let mut lines = Vec::new();
    for f in chosen {
        let line = format!("- {}", f.text);
        let c = estimate_tokens(&line) + 1;
        if cost + c <= limit {
            cost += c;
            lines.push(line);
        }
    }
    if lines.is_empty() { (lines, 0) } else { (lines, cost) }
}

/// What a replayed exchange costs of the budget.
fn pair_tokens(pair: &[ChatMessage; 2]) -> usize {
    pair.iter().map(|m| message_tokens(&m.content)).sum()
}

/// How long ago, in words an LLM reads well.
pub fn age(now_ms: u64, at_ms: u64) -> String {
    let mins = now_ms.saturating_sub(at_ms) / 60_000;
    let plural = |n: u64, unit: &str| format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" });
    match mins {
        0 => "just now".to_string(),
        1..60 => plural(mins, "minute"),
        60..1440 => plural(mins / 60, "hour"),
        1440..86_400 => plural(mins / 1440, "day"),
        86_400..525_600 => plural(mins / 43_200, "month"),
        _ => plural(mins / 525_600, "year"),
    }
}

/// How a memory line quotes the user, which also tells whether a question is listed already.
fn user_said(ex: &Exchange) -> String {
    format!("the user said \"{}\"", ex.user)
}

/// One line of the memory section; `age` says when (see [`age`] and `day_age`).
fn memory_line(ex: &Exchange, age: &str) -> String {
    let mut line = format!("- {age}: {} and you answered \"{}\"", user_said(ex), ex.assistant);
    if ex.interrupted {
        line.push_str(" (the user interrupted you there)");
    }
    line
}

/// Reads what `request` needs from `db` (one read transaction) and rewrites it: what the
/// processor runs on a blocking thread for each request.
pub fn apply(
    db: &MemoryDb,
    request: &mut LlmRequest,
    options: &InjectOptions,
    now_ms: u64,
) -> Result<Injected, MemoryError> {
    if request.memory_injected {
        return Ok(Injected::default());
    }
    let wanted =
        options.max_context_tokens > 0 && options.recent_exchanges + options.relevant_exchanges + options.facts > 0;
    let recall = if wanted {
        db.recall(&request.speaker, request.last_user_message(), options.recent_exchanges, options.relevant_exchanges)?
    } else {
        Recall::default()
    };
    Ok(rewrite(request, &recall, options, now_ms))
}

/// Rewrites `request` in place with what `recall` holds. Returns what was added.
pub fn rewrite(request: &mut LlmRequest, recall: &Recall, options: &InjectOptions, now_ms: u64) -> Injected {
    if request.memory_injected {
        return Injected::default();
    }
    request.memory_injected = true;
    let (facts, facts_cost) = fact_lines(&recall.facts, request.last_user_message(), options);
    let budget = options.max_context_tokens - facts_cost;
    let older = |ex: &Exchange| !recall.recent.iter().any(|r| r.id == ex.id);
    let wants_relevant = options.relevant_exchanges > 0 && recall.relevant.iter().any(|(ex, _)| older(ex));
    let reserve = if wants_relevant { budget / 4 } else { 0 };
    let mut used = 0usize;

    // Newest first until one does not fit, then back in chronological order.
    let mut pairs: Vec<[ChatMessage; 2]> = Vec::new();
    for ex in recall.recent.iter().rev().take(options.recent_exchanges) {
        let pair = chat_pair(ex);
        let cost = pair_tokens(&pair);
        if used + cost > budget - reserve {
            break;
        }
        used += cost;
        pairs.push(pair);
    }
    pairs.reverse();

    let mut lines: Vec<(u64, String)> = Vec::new();
    if wants_relevant {
        let injected = &recall.recent[recall.recent.len() - pairs.len()..];
        let candidates = recall.relevant.iter().filter(|(ex, _)| !injected.iter().any(|p| p.id == ex.id));
        let candidates =
            candidates.take(options.relevant_exchanges).map(|(ex, _)| (ex.id, memory_line(ex, &age(now_ms, ex.at_ms))));
        lines = fit_section(candidates, &mut used, budget);
        lines.sort_unstable_by_key(|(id, _)| *id);
    }

    let injected =
        Injected { recent: pairs.len(), relevant: lines.len(), facts: facts.len(), tokens: used + facts_cost };
    assemble(request, pairs, &facts, &lines);
    injected
}

/// What a speaker's previous request looked like, kept between requests by [`apply_stable`].
#[derive(Debug, Clone)]
struct Block {
    /// Id of the oldest exchange of the recent window (past [`window_start`] when the budget
    /// trimmed the window).
    start: u64,
    /// The memory section's lines, frozen while the window keeps its start.
    lines: Vec<(u64, String)>,
}

/// Layout state of [`apply_stable`], per speaker (in memory only: after a restart the first
/// request simply starts a new block).
#[derive(Debug, Default, Clone)]
pub struct PrefixState {
    blocks: HashMap<String, Block>,
}

/// Where the recent window starts when the newest exchange is `newest`: it advances `k`
/// exchanges at a time, so it holds between `k` and `2k − 1` exchanges and keeps its start for
/// `k` turns in a row.
pub fn window_start(newest: u64, k: usize) -> u64 {
    let k = k.max(1) as u64;
    ((newest / k) * k + 1).saturating_sub(k)
}

/// Age in days, so a memory line reads the same all day: what keeps the section unchanged.
fn day_age(now_ms: u64, at_ms: u64) -> String {
    match now_ms.saturating_sub(at_ms) / 86_400_000 {
        0 => "earlier today".to_string(),
        1 => "yesterday".to_string(),
        d @ 2..60 => format!("{d} days ago"),
        d @ 60..730 => format!("{} months ago", d / 30),
        d => format!("{} years ago", d / 365),
    }
}

/// Like [`apply`], but lays memory out so that consecutive requests of a speaker begin the same
/// way: LLM servers (llama.cpp, LM Studio) keep the previous request's work and only compute
/// what follows the part both share, so a request whose beginning is unchanged costs only its
/// new messages: re-reading a long prompt costs each turn far more than its few new tokens
/// (`slowcat bench history` measures both).
///
/// - The recent window advances `recent_exchanges` at a time ([`window_start`]): within a
///   block, each request is the previous one plus its exchange and the new question.
/// - The memory section is chosen when a block starts, for that turn's question, and then kept;
///   a later question's best match that is not listed yet is added while there is room (that
///   turn's request then differs from the system message on). A question already listed (small
///   talk repeats itself) is not listed again: it would take the room of other memories.
/// - When the window outgrows the budget (long replies), its oldest exchanges are dropped until
///   it fills half of what it may use, and the window then starts there until [`window_start`]
///   passes it: the next requests again only add to it, where dropping just what does not fit
///   would change every request's beginning from then on.
/// - Ages are in days.
///
/// The budget and the one-system-message rules of [`rewrite`] hold.
pub fn apply_stable(
    db: &MemoryDb,
    request: &mut LlmRequest,
    options: &InjectOptions,
    now_ms: u64,
    state: &mut PrefixState,
) -> Result<Injected, MemoryError> {
    if request.memory_injected {
        return Ok(Injected::default());
    }
    let k = options.recent_exchanges;
    let wanted = options.max_context_tokens > 0 && k + options.relevant_exchanges + options.facts > 0;
    let recall = if wanted {
        db.recall(&request.speaker, request.last_user_message(), (2 * k).saturating_sub(1), options.relevant_exchanges)?
    } else {
        Recall::default()
    };
    request.memory_injected = true;
    let (facts, facts_cost) = fact_lines(&recall.facts, request.last_user_message(), options);
    let budget = options.max_context_tokens - facts_cost;
    let previous = state.blocks.remove(&request.speaker);
    let start = match (recall.recent.last(), k) {
        (Some(newest), 1..) => {
            let start = window_start(newest.id, k);
            // A window the budget trimmed keeps its start until the steps pass it.
            match &previous {
                Some(b) if b.start > start && b.start <= newest.id => b.start,
                _ => start,
            }
        }
        _ => u64::MAX,
    };
    let window: Vec<&Exchange> = recall.recent.iter().filter(|ex| ex.id >= start).collect();
    let older = |id: u64| id < start && !recall.recent.iter().any(|r| r.id == id);
    let best = recall.relevant.iter().map(|(ex, _)| ex).filter(|ex| older(ex.id));

    // A line whose question is already listed adds nothing (small talk repeats itself), and would
    // take the room a question about something else needs.
    let listed = |lines: &[(u64, String)], ex: &Exchange| {
        let said = user_said(ex);
        lines.iter().any(|(id, line)| *id == ex.id || line.contains(&said))
    };
    let block = match previous {
        Some(mut b) if b.start == start => {
            if let Some(ex) = best.clone().next()
                && b.lines.len() < options.relevant_exchanges
                && !listed(&b.lines, ex)
            {
                b.lines.push((ex.id, memory_line(ex, &day_age(now_ms, ex.at_ms))));
                b.lines.sort_unstable_by_key(|(id, _)| *id);
            }
            b
        }
        _ => {
            let mut lines: Vec<(u64, String)> = Vec::new();
            for ex in best {
                if lines.len() == options.relevant_exchanges {
                    break;
                }
                if !listed(&lines, ex) {
                    lines.push((ex.id, memory_line(ex, &day_age(now_ms, ex.at_ms))));
                }
            }
            lines.sort_unstable_by_key(|(id, _)| *id);
            Block { start, lines }
        }
    };

    // The budget, as in `rewrite`: the window first, within three quarters of it when there are
    // lines to list, then the section's lines while they fit. A window over its share is trimmed
    // to half of it, oldest pairs first, and starts after them from now on.
    let reserve = if block.lines.is_empty() { 0 } else { budget / 4 };
    let mut pairs: Vec<[ChatMessage; 2]> = window.iter().map(|ex| chat_pair(ex)).collect();
    let mut used: usize = pairs.iter().map(pair_tokens).sum();
    let mut start = start;
    if used > budget - reserve {
        let mut dropped = 0;
        while used > (budget - reserve) / 2 && dropped < pairs.len() {
            used -= pair_tokens(&pairs[dropped]);
            dropped += 1;
        }
        pairs.drain(..dropped);
        start = match window.get(dropped) {
            Some(ex) => ex.id,
            // All of it (the newest exchange alone is over half): the window starts after it.
            None => window.last().map_or(u64::MAX, |ex| ex.id + 1),
        };
    }
    let lines = fit_section(block.lines.into_iter(), &mut used, budget);
    let injected =
        Injected { recent: pairs.len(), relevant: lines.len(), facts: facts.len(), tokens: used + facts_cost };
    assemble(request, pairs, &facts, &lines);
    state.blocks.insert(request.speaker.clone(), Block { start, lines });
    Ok(injected)
}

/// The memory section's lines that fit in `budget` beside the `used` tokens, in the order given
/// (a line that does not fit is skipped, later shorter ones may still fit); adds the section's
/// cost, header included, to `used` when it lists anything.
fn fit_section(candidates: impl Iterator<Item = (u64, String)>, used: &mut usize, budget: usize) -> Vec<(u64, String)> {
    let mut lines = Vec::new();
    let mut section = estimate_tokens(SECTION_HEADER) + 2;
    for (id, line) in candidates {
        let cost = estimate_tokens(&line) + 1;
        if *used + section + cost <= budget {
            section += cost;
            lines.push((id, line));
        }
    }
    if !lines.is_empty() {
        *used += section;
    }
    lines
}

/// Puts memory into `request`: one system message, first, ending with the facts and then the
/// memory section when there are `facts` and `lines`; the `pairs` in order right before the last
/// user message.
fn assemble(request: &mut LlmRequest, pairs: Vec<[ChatMessage; 2]>, facts: &[String], lines: &[(u64, String)]) {
    // Exactly one system message, first.
    let mut system: Option<String> = None;
    let mut rest = Vec::with_capacity(request.messages.len() + pairs.len() * 2);
    for m in request.messages.drain(..) {
        if m.role == Role::System {
            match &mut system {
                Some(s) => {
                    s.push_str("\n\n");
                    s.push_str(&m.content);
                }
                None => system = Some(m.content),
            }
        } else {
            rest.push(m);
        }
    }
    if !facts.is_empty() {
        let s = system.get_or_insert_with(String::new);
        if !s.is_empty() {
            s.push_str("\n\n");
        }
        s.push_str(FACTS_HEADER);
        for line in facts {
            s.push('\n');
            s.push_str(line);
        }
    }
    if !lines.is_empty() {
        let s = system.get_or_insert_with(String::new);
        if !s.is_empty() {
            s.push_str("\n\n");
        }
        s.push_str(SECTION_HEADER);
        for (_, line) in lines {
            s.push('\n');
            s.push_str(line);
        }
    }
    let at = rest.iter().rposition(|m| m.role == Role::User).unwrap_or(rest.len());
    let tail = rest.split_off(at);
    rest.extend(pairs.into_iter().flatten());
    rest.extend(tail);
    if let Some(s) = system {
        request.messages.push(ChatMessage::new(Role::System, s));
    }
    request.messages.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: u64, user: &str, assistant: &str) -> Exchange {
        Exchange {
            id,
            turn: id,
            at_ms: 0,
            interrupted: false,
            user: user.into(),
            assistant: assistant.into(),
            tools: String::new(),
        }
    }

    fn request(messages: Vec<ChatMessage>) -> LlmRequest {
        LlmRequest { messages, speaker: "default".into(), turn: 9, memory_injected: false }
    }

    #[test]
    fn token_estimate_is_chars_over_four_with_a_word_floor() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcdefgh"), 2);
        assert_eq!(estimate_tokens("a b c d e f"), 6);
        assert_eq!(estimate_tokens("héllo"), 2);
        assert_eq!(estimate_tokens("日本語"), 3);
    }

    #[test]
    fn ages_read_naturally() {
        let h = 3_600_000;
        assert_eq!(age(10 * h, 10 * h), "just now");
        assert_eq!(age(2 * h, h), "1 hour ago");
        assert_eq!(age(100 * h, 0), "4 days ago");
    }

    #[test]
    fn system_messages_are_merged_into_one_first() {
        let mut r = request(vec![
            ChatMessage::new(Role::User, "hi"),
            ChatMessage::new(Role::System, "one"),
            ChatMessage::new(Role::System, "two"),
        ]);
        let recall = Recall { recent: vec![], relevant: vec![(ex(1, "zebra", "stripes"), 1.0)], facts: vec![] };
        let opts = InjectOptions { max_context_tokens: 500, recent_exchanges: 2, relevant_exchanges: 2, facts: 0 };
        rewrite(&mut r, &recall, &opts, 0);
        assert_eq!(r.messages.iter().filter(|m| m.role == Role::System).count(), 1);
        assert_eq!(r.messages[0].role, Role::System);
        assert!(r.messages[0].content.starts_with("one\n\ntwo\n\nMemory:"));
        assert!(r.messages[0].content.contains("zebra"));
    }

    #[test]
    fn interrupted_replies_are_marked() {
        let mut e = ex(1, "tell me a story", "once upon a");
        e.interrupted = true;
        assert_eq!(spoken(&e), "once upon a [interrupted]");
        e.assistant.clear();
        assert_eq!(spoken(&e), "[interrupted before saying anything]");
    }
}
