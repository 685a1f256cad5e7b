//! `user_turn`: turns the final transcription of a user turn into an LLM request.

use async_trait::async_trait;
use serde::Deserialize;

use crate::frame::{ChatMessage, DEFAULT_SPEAKER, Direction, Frame, LlmRequest, Role, Transcription};
use crate::processor::{BoxProcessor, BuildContext, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Settings};

/// The system prompt `user_turn` uses unless configured: replies are heard, not read.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a friendly voice assistant. Everything you write is read aloud \
by a speech synthesizer, so answer in one to three short, natural spoken sentences. Use plain words only: no \
markdown, no lists, no headings, no emoji, no code, no URLs. If you don't know something, say so briefly.";

/// Settings of `user_turn`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserTurnSettings {
    /// The system message of every request. Empty: requests carry only the user's words.
    pub system_prompt: String,
}

impl Default for UserTurnSettings {
    fn default() -> Self {
        Self { system_prompt: DEFAULT_SYSTEM_PROMPT.into() }
    }
}

impl Settings for UserTurnSettings {
    const TYPE: &'static str = "user_turn";
    const ABOUT: &'static str =
        "turns the final transcription of a user turn into an LLM request (system prompt + user message)";

    fn build(self, _ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        Ok(Box::new(UserTurn::new(self)))
    }
}

/// Builds one [`LlmRequest`] per final [`Transcription`]: the system prompt and the user's
/// words, nothing else. It keeps no history; memory, further on, adds what the model should know.
///
/// The transcription itself travels on too, ahead of the request, for whoever wants the user's
/// words as heard (memory, logs, a transcript); every other frame passes unchanged. A
/// transcription that is empty or only whitespace makes no request.
///
/// An [`Frame::InterimTranscription`] (speech-to-text's transcript of the turn so far, made at a
/// pause) makes the same request as an [`Frame::LlmReadAhead`]: the LLM server can read it while
/// the user pauses and the end of the turn is decided, and the turn's request, when the user said
/// nothing more, is then already in its prompt cache (when the user went on, its beginning is). At start it sends what every request
/// begins with, the system prompt (memory adds the recent exchanges), as a read-ahead too, so the
/// first turn does not wait for the server to read it.
#[derive(Debug)]
pub struct UserTurn {
    system_prompt: String,
}

impl UserTurn {
    /// The processor for these settings.
    pub fn new(settings: UserTurnSettings) -> Self {
        Self { system_prompt: settings.system_prompt.trim().to_string() }
    }

    fn request(&self, t: &Transcription) -> Option<LlmRequest> {
        let text = t.text.trim();
        if text.is_empty() {
            return None;
        }
        let mut messages = Vec::with_capacity(2);
        if !self.system_prompt.is_empty() {
            messages.push(ChatMessage::new(Role::System, self.system_prompt.clone()));
        }
        messages.push(ChatMessage::new(Role::User, text));
        Some(LlmRequest { messages, speaker: t.speaker.clone(), turn: t.turn, memory_injected: false })
    }
}

#[async_trait]
impl Processor for UserTurn {
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, direction| {
            direction == Direction::Downstream
                && matches!(frame, Frame::Transcription(_) | Frame::InterimTranscription(_))
        }
    }

    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        if !self.system_prompt.is_empty() {
            let messages =
                vec![ChatMessage::new(Role::System, self.system_prompt.clone()), ChatMessage::new(Role::User, "")];
            let request = LlmRequest { messages, speaker: DEFAULT_SPEAKER.into(), turn: 0, memory_injected: false };
            ctx.push_downstream(Frame::LlmReadAhead(Box::new(request))).await;
        }
        Ok(())
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        match frame {
            Frame::Transcription(t) if direction == Direction::Downstream => {
                let request = self.request(&t);
                if request.is_none() {
                    tracing::debug!(turn = t.turn, "empty transcription; no LLM request");
                }
                ctx.push_downstream(Frame::Transcription(t)).await;
                if let Some(request) = request {
                    ctx.push_downstream(Frame::LlmRequest(Box::new(request))).await;
                }
            }
            Frame::InterimTranscription(t) if direction == Direction::Downstream => {
                let request = self.request(&t);
                ctx.push_downstream(Frame::InterimTranscription(t)).await;
                if let Some(request) = request {
                    ctx.push_downstream(Frame::LlmReadAhead(Box::new(request))).await;
                }
            }
            other => {
                ctx.push(other, direction).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::harness::Harness;

    fn said(text: &str, turn: u64) -> Box<Transcription> {
        Box::new(Transcription {
            text: text.into(),
            speaker: "alice".into(),
            turn,
            start: Duration::ZERO,
            end: Duration::from_secs(1),
            processing: Duration::from_millis(100),
        })
    }

    fn transcription(text: &str, turn: u64) -> Frame {
        Frame::Transcription(said(text, turn))
    }

    #[tokio::test]
    async fn a_final_transcription_becomes_system_prompt_plus_user_message() {
        let p = UserTurn::new(UserTurnSettings { system_prompt: "  Be brief.  ".into() });
        let out = Harness::run(vec![Box::new(p)], vec![transcription("  What time is it? ", 3)]).await;
        let data = out.downstream_data();
        assert_eq!(data.len(), 3, "{data:?}");
        // At start, what every request begins with is read ahead.
        let Frame::LlmReadAhead(start) = data[0] else { panic!("expected a read-ahead, got {:?}", data[0]) };
        assert_eq!(start.messages, vec![ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "")]);
        assert_eq!((start.speaker.as_str(), start.turn), (DEFAULT_SPEAKER, 0));
        assert!(matches!(data[1], Frame::Transcription(t) if t.turn == 3));
        let Frame::LlmRequest(r) = data[2] else { panic!("expected a request, got {:?}", data[2]) };
        assert_eq!(
            r.messages,
            vec![ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "What time is it?")]
        );
        assert_eq!((r.speaker.as_str(), r.turn, r.memory_injected), ("alice", 3, false));
    }

    #[tokio::test]
    async fn without_a_system_prompt_nothing_is_read_ahead_at_start() {
        let p = UserTurn::new(UserTurnSettings { system_prompt: " ".into() });
        let out = Harness::run(vec![Box::new(p)], vec![transcription("Hi", 1)]).await;
        let names: Vec<_> = out.downstream_data().iter().map(|f| f.name()).collect();
        assert_eq!(names, ["Transcription", "LlmRequest"]);
    }

    #[tokio::test]
    async fn keeps_no_history_between_turns() {
        let p = UserTurn::new(UserTurnSettings::default());
        let out = Harness::run(vec![Box::new(p)], vec![transcription("First.", 1), transcription("Second.", 2)]).await;
        let requests: Vec<_> =
            out.downstream.iter().filter_map(|f| if let Frame::LlmRequest(r) = f { Some(r) } else { None }).collect();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].messages.len(), 2);
        assert_eq!(requests[1].last_user_message(), Some("Second."));
        assert_eq!(requests[1].messages[0].content, DEFAULT_SYSTEM_PROMPT);
    }

    #[tokio::test]
    async fn an_interim_transcript_is_read_ahead_as_the_turns_request_would_be() {
        let p = UserTurn::new(UserTurnSettings::default());
        let interim = Frame::InterimTranscription(said("What time is it?", 3));
        let out = Harness::run(vec![Box::new(p)], vec![interim, transcription("What time is it?", 3)]).await;
        let data = out.downstream_data();
        let names: Vec<_> = data.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["LlmReadAhead", "InterimTranscription", "LlmReadAhead", "Transcription", "LlmRequest"]);
        let (Frame::LlmReadAhead(ahead), Frame::LlmRequest(request)) = (data[2], data[4]) else {
            unreachable!("checked by name")
        };
        assert_eq!(ahead, request, "read ahead exactly as the turn asks");
    }

    #[tokio::test]
    async fn blank_transcriptions_make_no_request_and_other_frames_pass() {
        let p = UserTurn::new(UserTurnSettings::default());
        let interim = Frame::InterimTranscription(said(" ", 1));
        let frames = vec![interim, transcription(" \n\t", 1), Frame::LlmText("x".into())];
        let out = Harness::run(vec![Box::new(p)], frames).await;
        let names: Vec<_> = out.downstream_data().iter().map(|f| f.name()).collect();
        // Only the read-ahead at start.
        assert_eq!(names, ["LlmReadAhead", "InterimTranscription", "Transcription", "LlmText"]);
    }
}
