//! Reporting: the tables `slowcat bench conversation` and `soak` print.

use std::path::Path;
use std::time::Duration;

use super::Speech;
use super::collect::{TurnRecord, ms};
use super::drive::Assistant;
use crate::host::{disk_usage, proc_status_kib};
use crate::score;
use crate::stats::{median, percentile, sorted};

/// A table cell: whole milliseconds, or `-` when not measured.
pub(super) fn cell(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

/// What `slowcat bench conversation` measured, with what it needs to say how.
pub(super) struct Conversation<'a> {
    pub assistant: &'a dyn Assistant,
    pub speech: Speech,
    pub turns: usize,
    pub runs: usize,
    /// The pipeline, as `id(type) → …`.
    pub pipeline: &'a str,
    /// What the user said in each scripted utterance, in order.
    pub said: &'a [String],
    /// Scripted utterances played (they repeat after that many turns).
    pub utterances: usize,
    /// Every turn of every run, with its run number.
    pub all: &'a [(usize, TurnRecord)],
    pub errors: &'a [String],
    pub interruptions: usize,
}

/// Prints every turn, then p50/p95 per stage.
pub(super) fn conversation(r: &Conversation<'_>) {
    let Conversation { assistant, speech, turns, runs, pipeline: pipeline_desc, said, utterances: n, all, .. } = *r;
    println!(
        "slowcat bench conversation: {turns} spoken turns × {runs} run(s), config {}, LLM {}",
        assistant.config_path().display(),
        assistant.llm_url().unwrap_or("(from the config)")
    );
    println!("pipeline: {pipeline_desc}");
    println!(
        "input: {} speech, wav_input, real time, next utterance after the answer has played; output: wav_output (real time)",
        match speech {
            Speech::Piper => "Piper",
            Speech::Human => "real human",
        }
    );
    println!();
    println!(
        "{:>3} {:>4} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  heard",
        "run", "turn", "eot", "smart", "stt", "memory", "ttfb", "sent", "tts", "v2v", "ovh"
    );
    // Each run's turns lined up with the utterances it played (which repeat after `n`): the word
    // errors and the words said.
    let paired: Vec<score::Alignment> = (1..=runs)
        .map(|r| {
            let heard: Vec<&str> = all.iter().filter(|(run, _)| *run == r).map(|(_, t)| t.heard.as_str()).collect();
            let played: Vec<&str> = (0..2 * heard.len() + 2).map(|k| said[k % n].as_str()).collect();
            score::align_turns(&played, &heard)
        })
        .collect();
    let mut next_in_run = vec![0usize; runs + 1];
    for (run, t) in all {
        println!(
            "{:>3} {:>4} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
            run,
            t.turn,
            cell(t.end_of_turn_ms()),
            cell(t.smart_turn.map(ms)),
            cell(t.stt.map(ms)),
            t.memory.map(|d| format!("{:.2}", ms(d))).unwrap_or_else(|| "-".into()),
            cell(t.llm_ttfb.map(ms)),
            cell(t.first_sentence.map(ms)),
            cell(t.tts_ttfb.map(ms)),
            cell(t.voice_to_voice_ms()),
            t.overhead_ms().map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            t.heard
        );
        // What was said, where it was not heard word for word.
        let k = next_in_run[*run];
        next_in_run[*run] += 1;
        match paired.get(run - 1).and_then(|a| a.turns.get(k)) {
            Some(score::Paired::Said { said, errors }) if *errors > 0 => println!("{:>52}  said: {said}", ""),
            Some(score::Paired::SplitFrom) => println!("{:>52}  (the rest of the utterance before)", ""),
            Some(score::Paired::Extra { .. }) => println!("{:>52}  said: nothing", ""),
            _ => {}
        }
    }
    for (r, a) in paired.iter().enumerate() {
        for &lost in &a.lost {
            println!("run {}: not heard as a turn: {}", r + 1, said[lost % n]);
        }
    }
    let turns_only: Vec<&TurnRecord> = all.iter().map(|(_, t)| t).collect();
    print_stage_table(&turns_only);
    if runs > 1 {
        let per_run: Vec<String> = (1..=runs)
            .map(|r| {
                let v = all.iter().filter(|(run, _)| *run == r).filter_map(|(_, t)| t.voice_to_voice_ms());
                format!("{:.0}", median(v).unwrap_or(f64::NAN))
            })
            .collect();
        println!("voice-to-voice p50 per run (ms): {}", per_run.join(", "));
    }
    let complete = turns_only.iter().filter(|t| t.overhead_ms().is_some()).count();
    println!("turns fully measured: {complete} of {}", turns * runs);
    let (errors, words) = paired.iter().fold((0, 0), |(e, w), a| (e + a.errors, w + a.words));
    if words > 0 {
        println!(
            "words heard right: {:.1} % ({errors} errors in {words} words said; turns lined up with the utterances played)",
            100.0 * (1.0 - errors as f64 / words as f64)
        );
    }
    report_problems(r.errors, r.interruptions);
}

fn print_stage_table(turns: &[&TurnRecord]) {
    type Stage = fn(&TurnRecord) -> Option<f64>;
    let rows: [(&str, Stage); 12] = [
        ("end of turn (VAD stop wait + smart turn)", |t| t.end_of_turn_ms()),
        ("  of which smart turn after the stop", |t| t.smart_wait.map(ms)),
        ("  of which VAD stop wait and hops", |t| Some(t.end_of_turn_ms()? - ms(t.smart_wait?))),
        ("  (smart turn inference, from the pause)", |t| t.smart_turn.map(ms)),
        ("speech to text", |t| t.stt.map(ms)),
        ("memory", |t| t.memory.map(ms)),
        ("LLM time to first token", |t| t.llm_ttfb.map(ms)),
        ("LLM first sentence", |t| t.first_sentence.map(ms)),
        ("TTS time to first audio", |t| t.tts_ttfb.map(ms)),
        ("sum of the six stages", |t| Some(t.stages_ms()?.iter().sum())),
        ("voice to voice", |t| t.voice_to_voice_ms()),
        ("pipeline overhead (v2v − stages)", |t| t.overhead_ms()),
    ];
    println!();
    println!("{:<42} {:>9} {:>9} {:>9} {:>9} {:>4}", "stage (ms)", "p50", "p95", "min", "max", "n");
    for (name, f) in rows {
        let v = sorted(turns.iter().filter_map(|t| f(t)));
        let fmt = |x: f64| if x.abs() < 10.0 { format!("{x:.2}") } else { format!("{x:.0}") };
        if v.is_empty() {
            println!("{name:<42} {:>9}", "-");
            continue;
        }
        println!(
            "{name:<42} {:>9} {:>9} {:>9} {:>9} {:>4}",
            fmt(percentile(&v, 0.5).unwrap_or(f64::NAN)),
            fmt(percentile(&v, 0.95).unwrap_or(f64::NAN)),
            fmt(v[0]),
            fmt(v[v.len() - 1]),
            v.len()
        );
    }
}

fn report_problems(errors: &[String], interruptions: usize) {
    if interruptions > 0 {
        println!("interruptions: {interruptions} (the user's next question overlapped a reply)");
    }
    if !errors.is_empty() {
        println!("errors: {}", errors.len());
        for e in errors.iter().take(5) {
            println!("  {e}");
        }
    }
}

/// What `slowcat bench soak` measured, with what it needs to say how.
pub(super) struct Soak<'a> {
    pub assistant: &'a dyn Assistant,
    pub turns: usize,
    pub max_tokens: u32,
    /// Turns to report.
    pub at: &'a [usize],
    /// The pipeline, as `id(type) → …`.
    pub pipeline: &'a str,
    /// Every turn measured.
    pub measured: &'a std::collections::BTreeMap<u64, TurnRecord>,
    /// The whole run, building included.
    pub wall: Duration,
    /// Resident memory before building the pipeline.
    pub rss_before: Option<u64>,
    /// The run's data directory (memory database).
    pub data_dir: &'a Path,
    pub errors: &'a [String],
    pub interruptions: usize,
}

/// Prints resident memory and latency at the turns asked for.
pub(super) fn soak(r: &Soak<'_>) {
    let Soak { assistant, turns, max_tokens, at, pipeline: desc, wall, rss_before, .. } = *r;
    let records: Vec<&TurnRecord> = r.measured.values().filter(|t| t.turn <= turns as u64).collect();

    println!(
        "slowcat bench soak: {turns} turns, max_tokens {max_tokens}, config {}, LLM {}",
        assistant.config_path().display(),
        assistant.llm_url().unwrap_or("(from the config)")
    );
    println!("pipeline: {desc}");
    println!("input: wav_input, not paced (realtime = false); output: wav_output");
    println!(
        "turns answered: {} of {turns} in {:.0} s ({:.2} s per turn)",
        records.iter().filter(|t| t.first_audio_out.is_some()).count(),
        wall.as_secs_f64(),
        wall.as_secs_f64() / turns as f64
    );
    println!();
    println!(
        "latency = end of turn (UserTurnEnded) → first reply audio out of the pipeline; window = median of the 10 turns up to it"
    );
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "turn", "RSS MiB", "latency", "window", "smart", "stt", "memory", "ttfb", "sent", "tts"
    );
    for &k in at.iter().filter(|&&k| k >= 1 && k <= turns) {
        let Some(t) = r.measured.get(&(k as u64)) else {
            println!("{k:>6} (not measured)");
            continue;
        };
        let window =
            median(r.measured.range((k.saturating_sub(9)) as u64..=k as u64).filter_map(|(_, t)| t.processing_ms()))
                .unwrap_or(f64::NAN);
        println!(
            "{:>6} {:>9} {:>9} {:>9.0} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            k,
            t.rss_kib.map(|r| format!("{:.1}", r as f64 / 1024.0)).unwrap_or_else(|| "-".into()),
            cell(t.processing_ms()),
            window,
            cell(t.smart_turn.map(ms)),
            cell(t.stt.map(ms)),
            t.memory.map(|d| format!("{:.2}", ms(d))).unwrap_or_else(|| "-".into()),
            cell(t.llm_ttfb.map(ms)),
            cell(t.first_sentence.map(ms)),
            cell(t.tts_ttfb.map(ms)),
        );
    }
    let rss = sorted(records.iter().filter_map(|t| t.rss_kib).map(|r| r as f64 / 1024.0));
    if !rss.is_empty() {
        println!(
            "RSS over the run: min {:.1} MiB, max {:.1} MiB (before building: {:.1} MiB; peak VmHWM {:.1} MiB)",
            rss[0],
            rss[rss.len() - 1],
            rss_before.unwrap_or(0) as f64 / 1024.0,
            proc_status_kib("VmHWM:").unwrap_or(0) as f64 / 1024.0
        );
    }
    println!("memory database on disk: {:.1} MiB", disk_usage(r.data_dir) as f64 / (1024.0 * 1024.0));
    report_problems(r.errors, r.interruptions);
}

/// Prints `slowcat bench tools`: each turn's split, then the medians of the turns that called a
/// tool.
pub(super) fn tools(
    assistant: &dyn Assistant,
    runs: usize,
    pipeline: &str,
    all: &[(usize, TurnRecord)],
    errors: &[String],
) {
    println!(
        "slowcat bench tools: {} spoken tool questions × {runs} run(s), config {}, LLM {}",
        super::TOOL_QUESTIONS.len(),
        assistant.config_path().display(),
        assistant.llm_url().unwrap_or("(from the config)")
    );
    println!("pipeline: {pipeline}");
    println!(
        "end of speech → first audio = eot + stt + memory + LLM (pass 1 + tool + client + pass 2) + first sentence + TTS + hops"
    );
    println!();
    println!(
        "{:>3} {:>4} {:>6} {:>6} {:>6} {:>7} {:>6} {:>7} {:>7} {:>6} {:>6} {:>7}  heard",
        "run", "turn", "eot", "stt", "memory", "pass1", "tool", "client", "pass2", "sent", "tts", "v2v"
    );
    let fine = |d: Option<Duration>| d.map(|d| format!("{:.2}", ms(d))).unwrap_or_else(|| "-".into());
    for (run, t) in all {
        println!(
            "{:>3} {:>4} {:>6} {:>6} {:>6} {:>7} {:>6} {:>7} {:>7} {:>6} {:>6} {:>7}  {}",
            run,
            t.turn,
            cell(t.end_of_turn_ms()),
            cell(t.stt.map(ms)),
            fine(t.memory),
            cell(t.tool_first_pass.map(ms)),
            fine(t.tool_time),
            fine(t.tool_overhead),
            cell(t.tool_second_pass_ttft.map(ms)),
            cell(t.first_sentence.map(ms)),
            cell(t.tts_ttfb.map(ms)),
            cell(t.voice_to_voice_ms()),
            t.heard
        );
    }
    let called: Vec<&TurnRecord> = all.iter().map(|(_, t)| t).filter(|t| t.tool_first_pass.is_some()).collect();
    type Stage = fn(&TurnRecord) -> Option<f64>;
    let rows: [(&str, Stage); 10] = [
        ("end of turn", |t| t.end_of_turn_ms()),
        ("speech to text", |t| t.stt.map(ms)),
        ("memory", |t| t.memory.map(ms)),
        ("LLM first pass (request → call)", |t| t.tool_first_pass.map(ms)),
        ("tool", |t| t.tool_time.map(ms)),
        ("client overhead per round trip", |t| t.tool_overhead.map(ms)),
        ("LLM second pass to first token", |t| t.tool_second_pass_ttft.map(ms)),
        ("LLM first sentence", |t| t.first_sentence.map(ms)),
        ("TTS time to first audio", |t| t.tts_ttfb.map(ms)),
        ("end of speech → first audio", |t| t.voice_to_voice_ms()),
    ];
    println!();
    println!("{:<36} {:>9} {:>4}   (turns that called a tool)", "median (ms)", "p50", "n");
    for (name, f) in rows {
        let v: Vec<f64> = called.iter().filter_map(|t| f(t)).collect();
        let n = v.len();
        match median(v) {
            Some(x) if x.abs() < 10.0 => println!("{name:<36} {x:>9.3} {n:>4}"),
            Some(x) => println!("{name:<36} {x:>9.0} {n:>4}"),
            None => println!("{name:<36} {:>9} {n:>4}", "-"),
        }
    }
    println!("turns that called a tool: {} of {}", called.len(), all.len());
    report_problems(errors, 0);
}
