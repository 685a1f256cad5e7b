//! Shared helpers of the memory tests: a memory processor on a real LMDB database in a
//! temporary directory, driven turn by turn through the harness.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use slowcat_processors::frame::{SpokenReply, Transcription};
use slowcat_processors::harness::Harness;
use slowcat_processors::memory::StatelessMemorySettings;
use slowcat_processors::{BuildContext, ChatMessage, Direction, Frame, LlmRequest, Role, Settings};

pub const SYSTEM: &str = "You are a helpful voice assistant.";
const WAIT: Duration = Duration::from_secs(10);

/// Settings with the database in `dir/memory`.
pub fn settings(dir: &Path) -> StatelessMemorySettings {
    StatelessMemorySettings { path: dir.join("memory"), ..Default::default() }
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("memory")
}

/// Builds the processor from settings, as the runtime does.
pub async fn start(dir: &Path, settings: StatelessMemorySettings) -> Harness {
    let ctx = BuildContext::for_dir(dir);
    let processor = tokio::task::spawn_blocking(move || settings.check_and_build(&ctx))
        .await
        .expect("build task")
        .unwrap_or_else(|e| panic!("memory processor did not build: {e}"));
    Harness::start(vec![processor]).await
}

pub fn request(speaker: &str, turn: u64, user: &str) -> LlmRequest {
    LlmRequest {
        messages: vec![ChatMessage::new(Role::System, SYSTEM), ChatMessage::new(Role::User, user)],
        speaker: speaker.into(),
        turn,
        memory_injected: false,
    }
}

/// One conversation turn: the final transcription and the LLM request go downstream, the
/// rewritten request comes out; then, if given, the spoken reply comes back upstream and out.
pub async fn turn(h: &mut Harness, speaker: &str, turn: u64, user: &str, reply: Option<(&str, bool)>) -> LlmRequest {
    h.send(Frame::Transcription(Box::new(Transcription {
        text: user.into(),
        speaker: speaker.into(),
        turn,
        start: Duration::ZERO,
        end: Duration::ZERO,
        processing: Duration::ZERO,
    })))
    .await;
    h.send(Frame::LlmRequest(Box::new(request(speaker, turn, user)))).await;
    let out = h
        .wait_for(WAIT, |f, d| d == Direction::Downstream && matches!(f, Frame::LlmRequest(r) if r.turn == turn))
        .await
        .unwrap_or_else(|| panic!("the request of turn {turn} did not come out of the memory processor"));
    let Frame::LlmRequest(out) = out else { unreachable!() };
    if let Some((text, interrupted)) = reply {
        h.send_upstream(Frame::SpokenReply(Box::new(SpokenReply { text: text.into(), interrupted, turn }))).await;
        h.wait_for(WAIT, |f, d| d == Direction::Upstream && matches!(f, Frame::SpokenReply(r) if r.turn == turn))
            .await
            .unwrap_or_else(|| panic!("the spoken reply of turn {turn} did not come out upstream"));
    }
    *out
}

/// Error frames that came out so far.
pub fn errors(h: &Harness) -> Vec<String> {
    h.output()
        .downstream
        .iter()
        .filter_map(|f| match f {
            Frame::Error(e) => Some(e.message.clone()),
            _ => None,
        })
        .collect()
}

/// All message contents of a request joined, for "appears / does not appear" checks.
pub fn all_text(r: &LlmRequest) -> String {
    r.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")
}

pub fn roles(r: &LlmRequest) -> Vec<Role> {
    r.messages.iter().map(|m| m.role).collect()
}
