//! Collecting: the frames leaving the pipeline joined into one record per turn.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use slowcat_processors::frame::{Metric, MetricName};
use slowcat_processors::{Direction, Frame};

use crate::host::proc_status_kib;

/// Milliseconds, the unit every table of these benchmarks shows.
pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One turn as measured: instants on the pipeline's timeline and stage durations.
#[derive(Debug, Clone, Default)]
pub(super) struct TurnRecord {
    pub(super) turn: u64,
    pub(super) heard: String,
    pub(super) speech_end: Option<Duration>,
    pub(super) smart_turn: Option<Duration>,
    pub(super) smart_wait: Option<Duration>,
    pub(super) turn_end: Option<Duration>,
    pub(super) stt: Option<Duration>,
    pub(super) memory: Option<Duration>,
    pub(super) llm_ttfb: Option<Duration>,
    pub(super) first_sentence: Option<Duration>,
    pub(super) tts_ttfb: Option<Duration>,
    /// `first_audio_at` from the output.
    pub(super) first_audio_at: Option<Duration>,
    /// When the turn's first `OutputAudio` left the pipeline.
    pub(super) first_audio_out: Option<Duration>,
    /// Resident memory then.
    pub(super) rss_kib: Option<u64>,
    /// A turn that called tools: the LLM's first pass (request → end of the generation that
    /// asked for them).
    pub(super) tool_first_pass: Option<Duration>,
    /// The tools' time, every round.
    pub(super) tool_time: Option<Duration>,
    /// The client's own time per tool round trip, the largest of the turn's rounds.
    pub(super) tool_overhead: Option<Duration>,
    /// Follow-up request with the results → its first text.
    pub(super) tool_second_pass_ttft: Option<Duration>,
}

impl TurnRecord {
    pub(super) fn end_of_turn_ms(&self) -> Option<f64> {
        Some(ms(self.turn_end?) - ms(self.speech_end?))
    }

    pub(super) fn voice_to_voice_ms(&self) -> Option<f64> {
        Some(ms(self.first_audio_at?) - ms(self.speech_end?))
    }

    /// The six stages, in order, when all were measured.
    pub(super) fn stages_ms(&self) -> Option<[f64; 6]> {
        Some([
            self.end_of_turn_ms()?,
            ms(self.stt?),
            ms(self.memory?),
            ms(self.llm_ttfb?),
            ms(self.first_sentence?),
            ms(self.tts_ttfb?),
        ])
    }

    pub(super) fn overhead_ms(&self) -> Option<f64> {
        Some(self.voice_to_voice_ms()? - self.stages_ms()?.iter().sum::<f64>())
    }

    /// End of turn → first reply audio out of the pipeline (the soak's latency: its audio is not
    /// paced, so the end of speech is not on the wall clock).
    pub(super) fn processing_ms(&self) -> Option<f64> {
        Some(ms(self.first_audio_out?) - ms(self.turn_end?))
    }
}

/// The measurements that come before the turn's first numbered metric (the VAD's and Smart Turn's
/// metrics carry no turn number).
#[derive(Debug, Default, Clone, Copy)]
struct EndOfTurn {
    speech_end: Option<Duration>,
    smart_turn: Option<Duration>,
    smart_wait: Option<Duration>,
    turn_end: Option<Duration>,
}

/// Joins the frames leaving the pipeline into turn records.
pub(super) struct Collector {
    pub(super) epoch: Instant,
    pub(super) turns: BTreeMap<u64, TurnRecord>,
    /// The user turn being measured.
    open: EndOfTurn,
    /// The last user turn that ended, until its number is known.
    ended: Option<EndOfTurn>,
    /// A turn the user went on with after it had ended (before its reply was heard), until it
    /// ends again: what was measured of its first end is dropped, and its measurements count
    /// from its real end, the end of the user's last words.
    resumed: Option<u64>,
    /// The turn whose audio is being played.
    audio_turn: u64,
    /// The highest turn whose reply was reported as spoken.
    pub(super) spoken: u64,
    pub(super) errors: Vec<String>,
    pub(super) interruptions: usize,
    /// Print a progress line every this many turns.
    progress_every: Option<u64>,
    pub(super) started: Instant,
}

impl Collector {
    pub(super) fn new(progress_every: Option<u64>) -> Self {
        Self {
            epoch: Instant::now(),
            turns: BTreeMap::new(),
            open: EndOfTurn::default(),
            ended: None,
            resumed: None,
            audio_turn: 0,
            spoken: 0,
            errors: Vec::new(),
            interruptions: 0,
            progress_every,
            started: Instant::now(),
        }
    }

    fn turn(&mut self, n: u64) -> &mut TurnRecord {
        let ended = &mut self.ended;
        self.turns.entry(n).or_insert_with(|| {
            let e = ended.take().unwrap_or_default();
            TurnRecord {
                turn: n,
                speech_end: e.speech_end,
                smart_turn: e.smart_turn,
                smart_wait: e.smart_wait,
                turn_end: e.turn_end,
                ..TurnRecord::default()
            }
        })
    }

    pub(super) fn on_frame(&mut self, frame: &Frame, dir: Direction) {
        match frame {
            Frame::Metrics(m) => self.on_metric(m),
            Frame::Transcription(t) if dir == Direction::Downstream && self.resumed != Some(t.turn) => {
                self.turn(t.turn).heard = t.text.clone()
            }
            Frame::UserTurnResumed { turn } => {
                self.turns.remove(turn);
                self.resumed = Some(*turn);
            }
            Frame::TtsStarted { turn, .. } => self.audio_turn = *turn,
            Frame::OutputAudio(_) if self.audio_turn > 0 => {
                let now = self.epoch.elapsed();
                let t = self.turn(self.audio_turn);
                if t.first_audio_out.is_none() {
                    t.first_audio_out = Some(now);
                    t.rss_kib = proc_status_kib("VmRSS:");
                }
            }
            Frame::SpokenReply(r) if dir == Direction::Upstream && r.turn > self.spoken => {
                self.spoken = r.turn;
                if let Some(every) = self.progress_every
                    && r.turn % every == 0
                {
                    let rss = self.turns.get(&r.turn).and_then(|t| t.rss_kib).unwrap_or(0);
                    eprintln!(
                        "… turn {}: {:.0} s, RSS {:.1} MiB, {} errors",
                        r.turn,
                        self.started.elapsed().as_secs_f64(),
                        rss as f64 / 1024.0,
                        self.errors.len()
                    );
                }
            }
            Frame::Error(e) => self.errors.push(format!("{}: {}", e.source, e.message)),
            Frame::Interruption => self.interruptions += 1,
            _ => {}
        }
    }

    fn on_metric(&mut self, m: &Metric) {
        let v = Some(m.value);
        match (m.name, m.turn) {
            (MetricName::UserSpeechEndAt, _) => self.open.speech_end = v,
            (MetricName::SmartTurnTime, _) => self.open.smart_turn = v,
            (MetricName::SmartTurnWait, _) => self.open.smart_wait = v,
            (MetricName::UserTurnEndAt, _) => {
                self.open.turn_end = v;
                self.ended = Some(std::mem::take(&mut self.open));
                self.resumed = None;
            }
            // The cancelled first part of a resumed turn.
            (_, Some(n)) if self.resumed == Some(n) => {}
            (name, Some(n)) => {
                let t = self.turn(n);
                if name == MetricName::LlmToolTime {
                    t.tool_time = Some(t.tool_time.unwrap_or_default() + m.value);
                    return;
                }
                if name == MetricName::LlmToolOverhead {
                    t.tool_overhead = Some(t.tool_overhead.unwrap_or_default().max(m.value));
                    return;
                }
                let slot = match name {
                    MetricName::SttTime => &mut t.stt,
                    MetricName::MemoryTime => &mut t.memory,
                    MetricName::LlmTtfb => &mut t.llm_ttfb,
                    MetricName::LlmFirstSentence => &mut t.first_sentence,
                    MetricName::TtsTtfb => &mut t.tts_ttfb,
                    MetricName::FirstAudioAt => &mut t.first_audio_at,
                    MetricName::LlmToolFirstPass => &mut t.tool_first_pass,
                    MetricName::LlmToolSecondPassTtft => &mut t.tool_second_pass_ttft,
                    _ => return,
                };
                // The first of a turn counts: TTS measures every segment, the first is heard first.
                slot.get_or_insert(m.value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_tile_voice_to_voice_and_the_rest_is_overhead() {
        let d = Duration::from_millis;
        let t = TurnRecord {
            speech_end: Some(d(1000)),
            turn_end: Some(d(1450)),
            stt: Some(d(150)),
            memory: Some(d(1)),
            llm_ttfb: Some(d(100)),
            first_sentence: Some(d(90)),
            tts_ttfb: Some(d(80)),
            first_audio_at: Some(d(1874)),
            ..TurnRecord::default()
        };
        assert_eq!(t.voice_to_voice_ms(), Some(874.0));
        assert!((t.overhead_ms().unwrap() - 3.0).abs() < 1e-9);
    }

    /// A metric frame as the pipeline sends it.
    fn m(name: MetricName, turn: Option<u64>, ms: u64) -> Frame {
        Frame::Metrics(Box::new(Metric { source: "x".into(), turn, name, value: Duration::from_millis(ms) }))
    }

    #[test]
    fn turn_less_measurements_join_the_next_numbered_turn() {
        let mut c = Collector::new(None);
        use MetricName::*;
        for f in [
            m(UserSpeechEndAt, None, 500),
            m(UserSpeechEndAt, None, 1000),
            m(SmartTurnTime, None, 200),
            m(SmartTurnWait, None, 20),
            m(UserTurnEndAt, None, 1400),
            m(SttTime, Some(1), 150),
            m(TtsTtfb, Some(1), 80),
            m(TtsTtfb, Some(1), 300),
        ] {
            c.on_frame(&f, Direction::Downstream);
        }
        let t = &c.turns[&1];
        assert_eq!(t.end_of_turn_ms(), Some(400.0));
        assert_eq!(t.smart_turn, Some(Duration::from_millis(200)));
        assert_eq!(t.smart_wait, Some(Duration::from_millis(20)));
        assert_eq!(t.tts_ttfb, Some(Duration::from_millis(80)), "the first segment's counts");
    }

    #[test]
    fn a_resumed_turn_is_measured_from_the_end_of_the_users_last_words() {
        let mut c = Collector::new(None);
        use MetricName::*;
        // "Oh, I'm originally from Chicago also." ends a turn; the user goes on before the reply.
        for f in [
            m(UserSpeechEndAt, None, 1000),
            m(UserTurnEndAt, None, 1200),
            m(SttTime, Some(7), 100),
            m(LlmTtfb, Some(7), 90),
            Frame::UserTurnResumed { turn: 7 },
            m(LlmFirstSentence, Some(7), 50),
            m(UserSpeechEndAt, None, 3000),
            m(UserTurnEndAt, None, 3210),
            m(SttTime, Some(7), 120),
            m(LlmTtfb, Some(7), 80),
            m(FirstAudioAt, Some(7), 3700),
        ] {
            c.on_frame(&f, Direction::Downstream);
        }
        let t = &c.turns[&7];
        assert_eq!(t.end_of_turn_ms(), Some(210.0));
        assert_eq!(t.voice_to_voice_ms(), Some(700.0));
        assert_eq!(
            (t.stt, t.llm_ttfb, t.first_sentence),
            (Some(Duration::from_millis(120)), Some(Duration::from_millis(80)), None)
        );
    }
}
