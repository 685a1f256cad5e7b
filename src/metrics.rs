//! Per-turn metrics: joins the measurements processors push as `Metrics` frames into one log
//! line per conversation turn, and optionally one JSON line per turn in a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use slowcat_processors::frame::Metric;
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
    /// First reply sample handed to the output device, on the pipeline timeline.
    pub first_audio_ms: Option<f64>,
    /// End of user speech → first reply sample handed to the output device.
    pub voice_to_voice_ms: Option<f64>,
}

/// Collects metrics and emits a turn once its first reply audio has been played.
#[derive(Debug, Default)]
pub struct TurnTracker {
    turns: BTreeMap<u64, TurnMetrics>,
    /// End of speech not yet attributed to a turn (the VAD does not know turn numbers).
    pending_speech_end: Option<Duration>,
    file: Option<PathBuf>,
    /// Turns completed so far, for benchmarks and tests.
    pub completed: Vec<TurnMetrics>,
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
        if m.name == "user_speech_end_at" {
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
            "stt_time" => t.stt_ms = v,
            "memory_time" => t.memory_ms = v,
            "llm_ttfb" => t.llm_ttfb_ms = v,
            "tts_ttfb" => t.tts_ttfb_ms = v,
            "first_audio_at" => {
                t.first_audio_ms = v;
                t.voice_to_voice_ms = t.user_speech_end_ms.map(|end| ms(m.value) - end);
                let done = self.turns.remove(&turn)?;
                self.emit(&done);
                self.completed.push(done.clone());
                // Old turns that never produced audio (errors) are not kept forever.
                self.turns.retain(|&k, _| k > turn);
                return Some(done);
            }
            _ => {}
        }
        None
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

    fn m(name: &'static str, turn: Option<u64>, ms: u64) -> Metric {
        Metric { source: "x".into(), turn, name, value: Duration::from_millis(ms) }
    }

    #[test]
    fn voice_to_voice_runs_from_speech_end_to_first_audio() {
        let mut t = TurnTracker::new(None);
        assert!(t.record(&m("user_speech_end_at", None, 1000)).is_none());
        t.record(&m("stt_time", Some(1), 150));
        t.record(&m("llm_ttfb", Some(1), 90));
        let done = t.record(&m("first_audio_at", Some(1), 1600)).unwrap();
        assert_eq!(done.voice_to_voice_ms, Some(600.0));
        assert_eq!(done.stt_ms, Some(150.0));
        assert_eq!(done.user_speech_end_ms, Some(1000.0));
    }
}
