//! What the assistant actually said aloud: an output (the speaker, a WAV file) notes each
//! sentence and how much audio it became, and reports the words up to the point playback
//! reached — all of them when the reply played out, the ones before the cut when an
//! interruption stopped it. Memory stores that, not the text the LLM wrote.

use crate::frame::{Frame, SpokenReply};

#[derive(Debug, Clone)]
struct Sentence {
    text: String,
    /// Position of its first sample on the output's timeline.
    start: u64,
    /// Position after its last sample, once `TtsStopped` came.
    end: Option<u64>,
}

/// Sentences of the reply being played and where their audio lies on the output's timeline
/// (samples at the output's rate, for [`PlayedText::on_audio`] and the `played` position given
/// to [`PlayedText::take`]).
#[derive(Debug, Clone)]
pub struct PlayedText {
    /// Samples per second on the timeline.
    rate: u32,
    turn: u64,
    sentences: Vec<Sentence>,
    written: u64,
    response_open: bool,
    response_ended: bool,
    sentence_open: bool,
}

impl PlayedText {
    /// An empty record for a timeline of `rate` samples per second.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: rate.max(1),
            turn: 0,
            sentences: Vec::new(),
            written: 0,
            response_open: false,
            response_ended: false,
            sentence_open: false,
        }
    }

    /// Notes a frame on its way to the output (`LlmResponseStart`, `TtsStarted`, `TtsStopped`,
    /// `LlmResponseEnd`; others are ignored).
    pub fn on_frame(&mut self, frame: &Frame) {
        match frame {
            Frame::LlmResponseStart { turn } => {
                self.turn = *turn;
                self.response_open = true;
                self.response_ended = false;
            }
            Frame::LlmResponseEnd => {
                self.close_sentence();
                self.response_open = false;
                self.response_ended = true;
            }
            Frame::TtsStarted { text, turn } => {
                self.close_sentence();
                if *turn != 0 || self.sentences.is_empty() {
                    self.turn = *turn;
                }
                self.sentences.push(Sentence { text: text.clone(), start: self.written, end: None });
                self.sentence_open = true;
            }
            Frame::TtsStopped => self.close_sentence(),
            _ => {}
        }
    }

    fn close_sentence(&mut self) {
        if self.sentence_open {
            if let Some(s) = self.sentences.last_mut() {
                s.end = Some(self.written);
            }
            self.sentence_open = false;
        }
    }

    /// Audio of `len` samples was written after everything before it.
    pub fn on_audio(&mut self, len: u64) {
        self.written += len;
    }

    /// Everything written so far, on the output's timeline.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The turn of the reply being played.
    pub fn turn(&self) -> u64 {
        self.turn
    }

    /// True when sentences are waiting to be reported.
    pub fn has_pending(&self) -> bool {
        !self.sentences.is_empty()
    }

    /// True inside a reply (`LlmResponseStart` seen, `LlmResponseEnd` not yet).
    pub fn in_response(&self) -> bool {
        self.response_open
    }

    /// True when the reply has all arrived: its `LlmResponseEnd`, or, for text spoken outside
    /// a reply (a greeting), its last sentence has stopped.
    pub fn is_complete(&self) -> bool {
        self.has_pending() && !self.sentence_open && (self.response_ended || !self.response_open)
    }

    /// The reply as heard when playback reached `played`, and a fresh start. `interrupted`
    /// marks a reply cut short: a sentence playback stopped inside keeps the share of its
    /// words that its played samples make. None when there was nothing to say.
    pub fn take(&mut self, played: u64, interrupted: bool) -> Option<SpokenReply> {
        if !self.has_pending() {
            self.clear();
            return None;
        }
        let mut words: Vec<&str> = Vec::new();
        let mut cut = false;
        for s in &self.sentences {
            if s.end == Some(s.start) {
                // No audio (its synthesis failed): never heard.
                continue;
            }
            // A sentence still arriving (its audio queued ahead of the output) is assumed to
            // last at least as long as its text takes to say.
            let end = s.end.unwrap_or_else(|| self.written.max(s.start + self.estimated_len(&s.text)));
            if !interrupted || played >= end {
                words.extend(s.text.split_whitespace());
                continue;
            }
            cut = true;
            if played > s.start && end > s.start {
                let all: Vec<&str> = s.text.split_whitespace().collect();
                let share = (played - s.start) as f64 / (end - s.start) as f64;
                let n = ((all.len() as f64) * share).floor() as usize;
                words.extend(&all[..n.min(all.len())]);
            }
            break;
        }
        let reply = SpokenReply {
            text: words.join(" "),
            interrupted: interrupted && (cut || !self.response_ended),
            turn: self.turn,
        };
        self.clear();
        Some(reply)
    }

    /// How long `text` takes to say: about 15 characters a second (a little slower than the
    /// Piper voices, so a cut sentence never counts words not yet heard).
    fn estimated_len(&self, text: &str) -> u64 {
        text.chars().count() as u64 * u64::from(self.rate) / 15
    }

    /// Forgets the reply (reported, or its audio is gone); the timeline goes on.
    pub fn clear(&mut self) {
        *self = Self { written: self.written, turn: self.turn, ..Self::new(self.rate) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentence(p: &mut PlayedText, text: &str, len: u64) {
        p.on_frame(&Frame::TtsStarted { text: text.into(), turn: 7 });
        p.on_audio(len);
        p.on_frame(&Frame::TtsStopped);
    }

    #[test]
    fn a_reply_played_out_is_reported_whole() {
        let mut p = PlayedText::new(1000);
        p.on_frame(&Frame::LlmResponseStart { turn: 7 });
        sentence(&mut p, "Hello there.", 100);
        assert!(!p.is_complete(), "the reply has not ended");
        sentence(&mut p, "How are you?", 100);
        p.on_frame(&Frame::LlmResponseEnd);
        assert!(p.is_complete());
        let r = p.take(200, false).unwrap();
        assert_eq!(r, SpokenReply { text: "Hello there. How are you?".into(), interrupted: false, turn: 7 });
        assert!(!p.has_pending());
        assert!(p.take(200, false).is_none());
    }

    #[test]
    fn an_interruption_keeps_the_words_played_before_the_cut() {
        let mut p = PlayedText::new(1000);
        p.on_frame(&Frame::LlmResponseStart { turn: 7 });
        sentence(&mut p, "One two.", 100);
        sentence(&mut p, "three four five six seven eight nine ten", 1000);
        sentence(&mut p, "Never heard.", 100);
        // Played the first sentence and 45 % of the second (3.6 of its 8 words).
        let r = p.take(100 + 450, true).unwrap();
        assert_eq!(r.text, "One two. three four five");
        assert!(r.interrupted);
        // Cut before any sound: nothing was said, but the reply was interrupted.
        sentence(&mut p, "Unheard words.", 100);
        let r = p.take(p.written() - 100, true).unwrap();
        assert_eq!(r.text, "");
        assert!(r.interrupted);
    }

    #[test]
    fn a_sentence_still_arriving_is_measured_by_its_text() {
        let mut p = PlayedText::new(1000);
        p.on_frame(&Frame::LlmResponseStart { turn: 2 });
        // 30 characters take about 2 s to say; only 0.5 s of audio has reached the output.
        p.on_frame(&Frame::TtsStarted { text: "aaaa bbbb cccc dddd eeee ffff".into(), turn: 2 });
        p.on_audio(500);
        let r = p.take(500, true).unwrap();
        assert_eq!(r.text, "aaaa");
    }

    #[test]
    fn a_sentence_without_audio_was_not_said() {
        let mut p = PlayedText::new(1000);
        p.on_frame(&Frame::LlmResponseStart { turn: 1 });
        sentence(&mut p, "Heard.", 100);
        sentence(&mut p, "Synthesis failed.", 0);
        p.on_frame(&Frame::LlmResponseEnd);
        assert_eq!(p.take(100, false).unwrap().text, "Heard.");
    }

    #[test]
    fn text_spoken_outside_a_reply_completes_with_its_sentence() {
        let mut p = PlayedText::new(1000);
        p.on_frame(&Frame::TtsStarted { text: "Hi, I am slowcat.".into(), turn: 0 });
        p.on_audio(50);
        assert!(!p.is_complete());
        p.on_frame(&Frame::TtsStopped);
        assert!(p.is_complete());
        assert_eq!(p.take(50, false).unwrap().text, "Hi, I am slowcat.");
    }
}
