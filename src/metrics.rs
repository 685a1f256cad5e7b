//! Per-turn metrics: joins the measurements processors push as `Metrics` frames, with what the
//! user said and what the assistant said aloud, into one log line per conversation turn, and
//! optionally one JSON line per turn in a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use slowcat_processors::frame::{Metric, MetricName, SpokenReply};
use tracing::{info, warn};

/// The stages of one turn, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TurnMetrics {
    /// The turn number.
    pub turn: u64,
    /// End of the user's speech on the pipeline timeline.
    pub user_speech_end_ms: Option<f64>,
    /// Speech-to-text time.
    pub stt_ms: Option<f64>,
    /// Memory injection time.
    pub memory_ms: Option<f64>,
    /// LLM request to first token.
    pub llm_ttfb_ms: Option<f64>,
    /// Complete first sentence to first synthesized audio.
    pub tts_ttfb_ms: Option<f64>,
    /// A turn that called tools: the LLM's first pass, request to the end of the generation that
    /// asked for them.
    pub llm_tool_first_pass_ms: Option<f64>,
    /// A turn that called tools: the tools' time, every round.
    pub tool_ms: Option<f64>,
    /// A turn that called tools: the LLM's second pass, follow-up request to its first text.
    pub llm_tool_second_pass_ttft_ms: Option<f64>,
    /// A turn that called tools: the client's own time per round trip (the largest of its rounds).
    pub tool_overhead_ms: Option<f64>,
    /// First reply sample handed to the output device, on the pipeline timeline.
    pub first_audio_ms: Option<f64>,
    /// End of user speech → first reply sample handed to the output device.
    pub voice_to_voice_ms: Option<f64>,
    /// What the user said (the turn's final transcript).
    pub user_text: Option<String>,
    /// What the assistant said aloud: the reply as played, cut where an interruption cut it.
    pub reply_text: Option<String>,
    /// True when the user interrupted the reply.
    pub interrupted: bool,
}

/// Collects metrics and emits a turn once its reply has been played (or cut off): the log line
/// and the JSON line then hold what was said on both sides.
#[derive(Debug, Default)]
pub struct TurnTracker {
    turns: BTreeMap<u64, TurnMetrics>,
    /// Turns whose first reply audio has played, waiting for the reply's spoken text.
    heard: BTreeMap<u64, TurnMetrics>,
    /// End of speech not yet attributed to a turn (the VAD does not know turn numbers).
    pending_speech_end: Option<Duration>,
    file: Option<PathBuf>,
    /// Turns completed so far, for benchmarks and tests.
    pub completed: Vec<TurnMetrics>,
    /// The user went on with the last turn (`UserTurnResumed`): the reply cut by it is not the
    /// turn's, which comes again whole under the same number.
    resumed: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl TurnTracker {
    /// A tracker that also appends JSON lines to `file`.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self { file, ..Self::default() }
    }

    /// Takes one measurement; returns the turn when it is complete.
    pub fn record(&mut self, m: &Metric) -> Option<TurnMetrics> {
        if m.name == MetricName::UserSpeechEndAt {
            self.pending_speech_end = Some(m.value);
            return None;
        }
        let turn = m.turn?;
        let pending = self.pending_speech_end;
        let t = self.turns.entry(turn).or_insert_with(|| TurnMetrics { turn, ..TurnMetrics::default() });
        if t.user_speech_end_ms.is_none()
            && let Some(end) = pending
        {
            t.user_speech_end_ms = Some(ms(end));
            self.pending_speech_end = None;
        }
        let v = Some(ms(m.value));
        match m.name {
            MetricName::SttTime => t.stt_ms = v,
            MetricName::MemoryTime => t.memory_ms = v,
            MetricName::LlmTtfb => t.llm_ttfb_ms = v,
            MetricName::TtsTtfb => t.tts_ttfb_ms = v,
            MetricName::LlmToolFirstPass => t.llm_tool_first_pass_ms = v,
            MetricName::LlmToolTime => t.tool_ms = Some(t.tool_ms.unwrap_or(0.0) + ms(m.value)),
            MetricName::LlmToolSecondPassTtft => t.llm_tool_second_pass_ttft_ms = t.llm_tool_second_pass_ttft_ms.or(v),
            MetricName::LlmToolOverhead => {
                t.tool_overhead_ms = Some(t.tool_overhead_ms.unwrap_or(0.0).max(ms(m.value)))
            }
            MetricName::FirstAudioAt => {
                t.first_audio_ms = v;
                t.voice_to_voice_ms = t.user_speech_end_ms.map(|end| ms(m.value) - end);
                let heard = self.turns.remove(&turn)?;
                // Old turns that never produced audio (errors) are not kept forever.
                self.turns.retain(|&k, _| k > turn);
                // A turn still waiting for its spoken text when a later one plays never gets it.
                let stale: Vec<u64> = self.heard.keys().copied().filter(|&k| k < turn).collect();
                for k in stale {
                    if let Some(t) = self.heard.remove(&k) {
                        self.complete(t);
                    }
                }
                self.heard.insert(turn, heard);
            }
            _ => {}
        }
        None
    }

    /// The user's final transcript of `turn` (again, for a turn the user went on with).
    pub fn said(&mut self, turn: u64, text: &str) {
        self.heard.remove(&turn);
        let pending = self.pending_speech_end.take();
        let t = self.turns.entry(turn).or_insert_with(|| TurnMetrics { turn, ..TurnMetrics::default() });
        // An end of speech still unclaimed is this transcript's: a resumed turn ends where its last
        // part does.
        if let Some(end) = pending {
            t.user_speech_end_ms = Some(ms(end));
        }
        t.user_text = Some(text.to_string());
    }

    /// The user went on with the turn that just ended: the reply about to be cut is forgotten.
    pub fn resumed(&mut self) {
        self.resumed = true;
    }

    /// What the assistant said aloud in reply to a turn: completes it when its audio has played.
    pub fn spoken(&mut self, reply: &SpokenReply) -> Option<TurnMetrics> {
        if std::mem::take(&mut self.resumed) && reply.interrupted {
            // Its first part's reply, cut as the user went on: the whole turn comes again.
            self.heard.remove(&reply.turn);
            return None;
        }
        let t = match self.heard.remove(&reply.turn) {
            Some(t) => t,
            None => {
                // Spoken without a first-audio measurement (a device that does not report one).
                let t = self.turns.get_mut(&reply.turn)?;
                t.reply_text = Some(reply.text.clone());
                t.interrupted = reply.interrupted;
                return None;
            }
        };
        let t = TurnMetrics { reply_text: Some(reply.text.clone()), interrupted: reply.interrupted, ..t };
        Some(self.complete(t))
    }

    /// Emits the turns whose audio played but whose spoken text never came (the run ended first).
    pub fn finish(&mut self) {
        for (_, t) in std::mem::take(&mut self.heard) {
            self.complete(t);
        }
    }

    fn complete(&mut self, t: TurnMetrics) -> TurnMetrics {
        self.emit(&t);
        self.completed.push(t.clone());
        t
    }

    fn emit(&self, t: &TurnMetrics) {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
        info!(
            turn = t.turn,
            stt_ms = %f(t.stt_ms),
            memory_ms = %t.memory_ms.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            llm_ttfb_ms = %f(t.llm_ttfb_ms),
            tts_ttfb_ms = %f(t.tts_ttfb_ms),
            voice_to_voice_ms = %f(t.voice_to_voice_ms),
            user_text = t.user_text.as_deref().unwrap_or(""),
            reply_text = t.reply_text.as_deref().unwrap_or(""),
            "turn metrics"
        );
        if let Some(path) = &self.file {
            let line = serde_json::to_string(t).unwrap_or_default();
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = r {
                warn!(file = %path.display(), error = %e, "cannot append turn metrics");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metric by the name logs and JSON know it by.
    fn m(name: &str, turn: Option<u64>, ms: u64) -> Metric {
        let name = MetricName::ALL.into_iter().find(|n| n.as_str() == name).expect("a metric name");
        Metric { source: "x".into(), turn, name, value: Duration::from_millis(ms) }
    }

    #[test]
    fn voice_to_voice_runs_from_speech_end_to_first_audio() {
        let mut t = TurnTracker::new(None);
        assert!(t.record(&m("user_speech_end_at", None, 1000)).is_none());
        t.record(&m("stt_time", Some(1), 150));
        t.record(&m("llm_ttfb", Some(1), 90));
        t.said(1, "What is the capital of France?");
        assert!(t.record(&m("first_audio_at", Some(1), 1600)).is_none());
        let reply = SpokenReply { text: "Paris.".into(), interrupted: false, turn: 1 };
        let done = t.spoken(&reply).unwrap();
        assert_eq!(done.voice_to_voice_ms, Some(600.0));
        assert_eq!(done.stt_ms, Some(150.0));
        assert_eq!(done.user_speech_end_ms, Some(1000.0));
        assert_eq!(done.user_text.as_deref(), Some("What is the capital of France?"));
        assert_eq!(done.reply_text.as_deref(), Some("Paris."));
    }

    #[test]
    fn a_turn_the_user_went_on_with_is_one_line_timed_from_its_last_part() {
        let mut t = TurnTracker::new(None);
        t.record(&m("user_speech_end_at", None, 1000));
        t.record(&m("stt_time", Some(1), 100));
        t.said(1, "Go forward.");
        t.record(&m("first_audio_at", Some(1), 1700));
        // The user goes on; the reply to the first part is cut.
        t.resumed();
        assert!(t.spoken(&SpokenReply { text: "OK".into(), interrupted: true, turn: 1 }).is_none());
        t.record(&m("user_speech_end_at", None, 2500));
        t.record(&m("stt_time", Some(1), 120));
        t.said(1, "Go forward ten meters.");
        t.record(&m("first_audio_at", Some(1), 3200));
        let done = t.spoken(&SpokenReply { text: "Going.".into(), interrupted: false, turn: 1 }).unwrap();
        assert_eq!(done.user_text.as_deref(), Some("Go forward ten meters."));
        assert_eq!(done.voice_to_voice_ms, Some(700.0));
        t.finish();
        assert_eq!(t.completed.len(), 1, "{:?}", t.completed);
    }

    #[test]
    fn each_json_line_says_what_both_sides_said() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("turns.jsonl");
        let mut t = TurnTracker::new(Some(file.clone()));
        for (turn, user, reply, interrupted) in [(1, "Stop.", "OK, stopping", true), (2, "Yes please.", "Here.", false)]
        {
            t.record(&m("user_speech_end_at", None, turn * 1000));
            t.said(turn, user);
            t.record(&m("first_audio_at", Some(turn), turn * 1000 + 700));
            t.spoken(&SpokenReply { text: reply.into(), interrupted, turn });
        }
        // A turn whose reply played but whose spoken text never came is still written at the end.
        t.said(3, "Goodbye.");
        t.record(&m("first_audio_at", Some(3), 3500));
        t.finish();
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["user_text"], "Stop.");
        assert_eq!(lines[0]["reply_text"], "OK, stopping");
        assert_eq!(lines[0]["interrupted"], true);
        assert_eq!(lines[1]["reply_text"], "Here.");
        assert_eq!(lines[1]["voice_to_voice_ms"], 700.0);
        assert_eq!(lines[2]["user_text"], "Goodbye.");
        assert!(lines[2]["reply_text"].is_null());
    }
}
