//! `slowcat bench conversation`, `soak` and `history`: the whole assistant, measured turn by turn.
//!
//! - `conversation`: short spoken questions (made once with Piper and cached) play in real time
//!   through the pipeline of config.toml, its microphone and speaker swapped for WAV files, each
//!   question once the previous answer has played out. Prints p50/p95 of every stage of a turn,
//!   of voice-to-voice, and of the pipeline's own overhead.
//! - `soak`: the same pipeline for many turns, as fast as it goes (audio is not paced); resident
//!   memory and per-turn latency as the turns pile up.
//! - `history`: text turns against an LLM server, once with stateless memory and once with the
//!   whole conversation sent every turn (the traditional way); time to first token as the
//!   conversation grows.
//!
//! # How a turn's time is accounted
//! Voice-to-voice runs from the end of the user's speech (`user_speech_end_at`: where the VAD
//! found it in the audio) to the first reply sample handed to the output (`first_audio_at`). Six
//! stages, each measured by the processor doing the work, follow each other in that interval:
//!
//! 1. end of turn = `user_turn_end_at − user_speech_end_at`: the VAD's stop wait (`stop_ms` of
//!    silence, heard in real time) and what is left of Smart Turn's inference after it
//!    (`smart_turn_wait`; the inference, `smart_turn_time`, starts at the VAD's pause);
//! 2. `stt_time`: `UserTurnEnded` reaching whisper_stt → transcript ready;
//! 3. `memory_time`: memory injected into the request;
//! 4. `llm_ttfb`: request reaching openai_llm → first token;
//! 5. `llm_first_sentence`: first token reaching the TTS → first complete segment;
//! 6. `tts_ttfb`: segment complete → its first audio.
//!
//! Voice-to-voice minus the six is the pipeline's overhead: frames hopping between processors,
//! wake-ups after blocking work, and any wait no stage owns (memory waiting for an earlier store,
//! audio queued behind a reply still playing).

mod collect;
mod drive;
mod history;
mod report;
mod script;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use slowcat_processors::audio::{NextFile, WavInputSettings, WavOutputSettings};

pub use drive::{Assistant, BuildProcessors, Prepared, Rewiring};
pub use history::history;
pub use script::{
    QUESTIONS, Speech, TOOL_QUESTIONS, cache_dir, history_message, human_utterances, spoken, spoken_questions,
};

use crate::host::proc_status_kib;
use collect::{Collector, TurnRecord};
use drive::drive;

/// The rewiring of one run in `dir`: its data in `data/`, the replies written to `answers.wav`
/// with a loudspeaker's timing when `realtime_output` (the next question waits for the answer to
/// have played, as it would in a room).
fn rewiring(dir: &Path, input: WavInputSettings, realtime_output: bool, max_tokens: Option<u32>) -> Rewiring {
    let output = WavOutputSettings {
        path: dir.join("answers.wav"),
        record_input: false,
        realtime: realtime_output,
        ..WavOutputSettings::default()
    };
    Rewiring { data_dir: dir.join("data"), input, output, max_tokens }
}

/// `slowcat bench conversation`: `turns` spoken questions through the assistant in real time,
/// `runs` times (fresh memory each run); prints every turn, then p50/p95 per stage.
pub async fn conversation(assistant: &dyn Assistant, turns: usize, runs: usize, speech: Speech) -> anyhow::Result<()> {
    if turns == 0 || runs == 0 {
        bail!("--turns and --runs must be at least 1");
    }
    let (questions, said): (Vec<PathBuf>, Vec<String>) = match speech {
        Speech::Piper => {
            let paths = spoken_questions(&assistant.models_dir()?).await?;
            (paths, QUESTIONS.iter().map(|q| q.to_string()).collect())
        }
        Speech::Human => human_utterances()?.into_iter().unzip(),
    };
    let n = turns.min(questions.len());
    let input = WavInputSettings {
        paths: questions[..n].to_vec(),
        repeat: turns.div_ceil(n) as u32,
        next: NextFile::AfterReply,
        realtime: true,
        // A reply of 256 tokens plays for a minute or more: the next question must not talk over it.
        reply_timeout_ms: 300_000,
        // A recording heard as no turn (too quiet) moves on instead of waiting out the above.
        reply_start_timeout_ms: 20_000,
        ..WavInputSettings::default()
    };
    let r = real_time_runs(assistant, &input, turns, runs, "turns").await?;
    report::conversation(&report::Conversation {
        assistant,
        speech,
        turns,
        runs,
        pipeline: &r.pipeline,
        said: &said,
        utterances: n,
        all: &r.all,
        errors: &r.errors,
        interruptions: r.interruptions,
    });
    Ok(())
}

/// What [`real_time_runs`] measured.
struct Runs {
    /// Every turn of every run, with its run number.
    all: Vec<(usize, TurnRecord)>,
    errors: Vec<String>,
    interruptions: usize,
    /// The pipeline, as `id(type) → …`.
    pipeline: String,
}

/// Plays `input` (`turns` utterances, one a turn) through the assistant in real time, `runs`
/// times, each with a fresh data directory (an empty memory). `what` names the turns in the
/// progress lines.
async fn real_time_runs(
    assistant: &dyn Assistant,
    input: &WavInputSettings,
    turns: usize,
    runs: usize,
    what: &str,
) -> anyhow::Result<Runs> {
    let mut r = Runs { all: Vec::new(), errors: Vec::new(), interruptions: 0, pipeline: String::new() };
    for run in 1..=runs {
        let dir = tempfile::tempdir()?;
        let prepared = assistant.prepare(&rewiring(dir.path(), input.clone(), true, None))?;
        r.pipeline = prepared.description;
        eprintln!("run {run}/{runs}: {turns} {what} in real time through {}", r.pipeline);
        let limit = Duration::from_secs(120 + 400 * turns as u64);
        let c = drive(prepared.build, turns as u64, limit, Collector::new(None)).await?;
        r.errors.extend(c.errors);
        r.interruptions += c.interruptions;
        r.all.extend(c.turns.into_values().filter(|t| t.turn <= turns as u64).map(|t| (run, t)));
    }
    Ok(r)
}

/// `slowcat bench tools`: [`TOOL_QUESTIONS`] spoken through the assistant in real time, `runs`
/// times (fresh memory each run), against a model that calls tools; prints each tool turn's
/// end of speech → first audio split into end of turn, STT, memory, the LLM's first pass, the
/// tools, the client's own round trip, the LLM's second pass to its first token, the rest of the
/// first sentence and TTS, then the medians.
pub async fn tools(assistant: &dyn Assistant, runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let questions = spoken(&assistant.models_dir()?, TOOL_QUESTIONS).await?;
    let turns = questions.len();
    let input = WavInputSettings {
        paths: questions,
        next: NextFile::AfterReply,
        realtime: true,
        reply_timeout_ms: 300_000,
        ..WavInputSettings::default()
    };
    let r = real_time_runs(assistant, &input, turns, runs, "tool questions").await?;
    report::tools(assistant, runs, &r.pipeline, &r.all, &r.errors);
    Ok(())
}

/// `slowcat bench soak`: `turns` spoken turns through the assistant as fast as it goes, replies
/// cut to `max_tokens`; resident memory and latency at the turns in `at`.
pub async fn soak(assistant: &dyn Assistant, turns: usize, max_tokens: u32, at: &[usize]) -> anyhow::Result<()> {
    if turns == 0 {
        bail!("--turns must be at least 1");
    }
    let questions = spoken_questions(&assistant.models_dir()?).await?;
    let n = turns.min(questions.len());
    let input = WavInputSettings {
        paths: questions[..n].to_vec(),
        repeat: turns.div_ceil(n) as u32,
        next: NextFile::AfterReply,
        realtime: false,
        // A turn that gets no reply (the LLM failed, or the transcript was empty) must not stall
        // the run: the next file comes after this bounded wait. (Smart Turn's fallback timeout
        // fires on its own now, also while this unpaced input sends no audio.)
        reply_timeout_ms: 20_000,
        ..WavInputSettings::default()
    };
    let dir = tempfile::tempdir()?;
    let run = rewiring(dir.path(), input, false, Some(max_tokens));
    let prepared = assistant.prepare(&run)?;
    let desc = prepared.description;
    eprintln!("soak: {turns} turns, not paced, through {desc}");
    let rss_before = proc_status_kib("VmRSS:");
    let started = Instant::now();
    let limit = Duration::from_secs(600 + 60 * turns as u64);
    let c = drive(prepared.build, turns as u64, limit, Collector::new(Some(50))).await?;
    let wall = started.elapsed();
    report::soak(&report::Soak {
        assistant,
        turns,
        max_tokens,
        at,
        pipeline: &desc,
        measured: &c.turns,
        wall,
        rss_before,
        data_dir: &run.data_dir,
        errors: &c.errors,
        interruptions: c.interruptions,
    });
    Ok(())
}
