//! Memory and tools together, as a user meets them across turns: the real memory processor on a
//! real LMDB database in a temporary directory, the real built-in tools (facts in that same
//! database, the calculator), real speech synthesis and WAV output where what was heard matters,
//! and `openai_llm` against a scripted server, which decides what the model calls (tests/
//! tools_qwen.rs has the real model).

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod llm_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use llm_support::{FakeServer, Reply, calls_reply, requests, scripted_settings};
use serde_json::{Value, json};
use slowcat_processors::frame::SpokenReply;
use slowcat_processors::harness::Harness;
use slowcat_processors::llm::{OpenAiLlm, OpenAiLlmSettings};
use slowcat_processors::memory::cli::{MemoryCommand, run};
use slowcat_processors::memory::{MemoryDb, StatelessMemorySettings};
use slowcat_processors::tools::{Tool, ToolBox, ToolError, ToolSpec, ToolsSettings};
use slowcat_processors::{BoxProcessor, BuildContext, ChatMessage, Direction, Frame, LlmRequest, Role, Settings};

const LIMIT: Duration = Duration::from_secs(15);

fn llm_settings(base_url: String) -> OpenAiLlmSettings {
    OpenAiLlmSettings {
        first_token_timeout_ms: 5_000,
        total_timeout_ms: 10_000,
        // The built-in tools but those that would start a clock or reach the network.
        tools: ToolsSettings { reminders: false, web_fetch: false, ..ToolsSettings::default() },
        ..scripted_settings(base_url)
    }
}

/// A reply that calls `name` with `arguments`, then finishes for the tools.
fn call(name: &str, arguments: &str) -> Reply {
    calls_reply(&[("call_1", name, arguments)])
}

/// Memory and the LLM (and `after` it), built from their settings as the runtime builds them,
/// with the data directory `dir/data`.
async fn pipeline(dir: &Path, llm: OpenAiLlmSettings, after: Vec<BoxProcessor>) -> Harness {
    let ctx = BuildContext::for_dir(dir);
    let memory = StatelessMemorySettings::default().check_and_build(&ctx).unwrap();
    let llm = llm.check_and_build(&ctx).unwrap();
    let mut processors = vec![memory, llm];
    processors.extend(after);
    Harness::start(processors).await
}

fn db_path(dir: &Path) -> std::path::PathBuf {
    dir.join("data").join("memory")
}

fn request(speaker: &str, turn: u64, question: &str) -> Frame {
    Frame::LlmRequest(Box::new(LlmRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are a voice assistant."),
            ChatMessage::new(Role::User, question),
        ],
        speaker: speaker.into(),
        turn,
        memory_injected: false,
    }))
}

/// One turn: the request goes down, the reply streams; then, as an output device does, what was
/// heard goes back up (`heard`: the text and whether the user cut it short), unless an output
/// processor of the pipeline reports it itself (`heard` is then `None`).
async fn turn(h: &mut Harness, speaker: &str, n: u64, question: &str, heard: Option<(&str, bool)>) {
    h.send(request(speaker, n, question)).await;
    h.wait_for(LIMIT, |f, _| matches!(f, Frame::LlmResponseEnd)).await.expect("the reply ends");
    if let Some((text, interrupted)) = heard {
        h.send_upstream(Frame::SpokenReply(Box::new(SpokenReply { text: text.into(), interrupted, turn: n }))).await;
    }
    h.wait_for(LIMIT, |f, d| d == Direction::Upstream && matches!(f, Frame::SpokenReply(r) if r.turn == n))
        .await
        .expect("the spoken reply passes memory");
}

fn messages(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn system(request: &Value) -> String {
    messages(request).into_iter().find(|(role, _)| role == "system").map(|(_, c)| c).unwrap_or_default()
}

#[tokio::test]
async fn a_fact_remembered_in_one_turn_is_in_every_later_request_of_that_speaker_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fact = "The user's sister is called Ana.";
    let server = FakeServer::start(vec![
        call("remember", &json!({"fact": fact}).to_string()),
        Reply::Stream(vec!["I will remember that."]),
        Reply::Stream(vec!["Hello again."]),
        Reply::Stream(vec!["Hello Bob."]),
    ])
    .await;
    // The memory processor holds the database open while the tool writes to it: one handle.
    let mut h = pipeline(dir.path(), llm_settings(server.base_url()), vec![]).await;
    turn(&mut h, "alice", 1, "Remember that my sister is called Ana.", Some(("I will remember that.", false))).await;
    turn(&mut h, "alice", 2, "Hello.", Some(("Hello again.", false))).await;
    turn(&mut h, "bob", 3, "Hello.", Some(("Hello Bob.", false))).await;
    let out = h.finish(LIMIT).await;
    let errors: Vec<_> = out.downstream.iter().filter(|f| matches!(f, Frame::Error(_))).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let sent = requests(&server);
    assert_eq!(sent.len(), 4);
    assert!(
        sent[1]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "tool" && m["content"].as_str().unwrap().starts_with("Remembered (fact 1)")),
        "the tool stored it: {:?}",
        sent[1]["messages"]
    );
    assert!(system(&sent[2]).contains(fact), "alice's next request knows it: {}", system(&sent[2]));
    assert!(!system(&sent[3]).contains("Ana"), "bob's does not: {}", system(&sent[3]));

    // A restart: a new pipeline on the same directory.
    let server = FakeServer::start(vec![Reply::Stream(vec!["Ana."])]).await;
    let mut h = pipeline(dir.path(), llm_settings(server.base_url()), vec![]).await;
    turn(&mut h, "alice", 1, "What is my sister called?", Some(("Ana.", false))).await;
    h.finish(LIMIT).await;
    assert!(system(&requests(&server)[0]).contains(fact), "after a restart: {}", system(&requests(&server)[0]));

    let mut listed = Vec::new();
    run(&db_path(dir.path()), MemoryCommand::List { speaker: "alice".into(), limit: 10 }, &mut listed).unwrap();
    let listed = String::from_utf8(listed).unwrap();
    assert!(listed.contains("fact 1  ") && listed.contains(fact), "`slowcat memory list` shows it:\n{listed}");
}

#[tokio::test]
async fn after_a_calculation_the_next_request_carries_the_result_even_when_the_reply_was_cut_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start(vec![
        call("calculate", r#"{"expression": "1234*5678"}"#),
        Reply::Stream(vec!["The answer is seven million", " six thousand six hundred fifty-two."]),
        Reply::Stream(vec!["It was 7006652."]),
    ])
    .await;
    let mut h = pipeline(dir.path(), llm_settings(server.base_url()), vec![]).await;
    // The user cut the reply short before the number.
    turn(&mut h, "default", 1, "What is 1234 times 5678?", Some(("The answer is", true))).await;
    turn(&mut h, "default", 2, "What was that number again?", Some(("It was 7006652.", false))).await;
    h.finish(LIMIT).await;

    let sent = requests(&server);
    assert_eq!(sent.len(), 3);
    let next = messages(&sent[2]);
    let asked = next.iter().position(|(role, c)| role == "user" && c.starts_with("What is 1234 times 5678?")).unwrap();
    assert!(next[asked].1.contains("calculate") && next[asked].1.contains("7006652"), "the result is there: {next:?}");
    assert_eq!(next[asked + 1], ("assistant".to_string(), "The answer is [interrupted]".to_string()));
    assert!(next.iter().all(|(role, _)| role != "tool"), "no tool message outside its own turn: {next:?}");
    assert!(sent[2]["messages"].as_array().unwrap().iter().all(|m| m.get("tool_calls").is_none()));

    let db = MemoryDb::open_existing(&db_path(dir.path())).unwrap();
    // Newest first.
    let stored = db.recent("default", 2).unwrap();
    assert_eq!(stored[1].assistant, "The answer is", "the reply as heard, nothing of the tools in it");
    assert!(stored[1].tools.contains("7006652"), "{:?}", stored[1].tools);
    assert_eq!(stored[0].tools, "", "a turn without tools keeps no record");
}

/// A tool that takes its time, so the filler is said (no built-in tool is reliably slow).
struct Slow;

#[async_trait]
impl Tool for Slow {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "lookup".into(),
            description: "Looks it up, slowly.".into(),
            parameters: json!({"type": "object"}),
            source: "test".into(),
        }
    }

    async fn call(&self, _args: Value) -> Result<String, ToolError> {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok("noon".into())
    }
}

#[tokio::test]
async fn the_filler_is_heard_but_memory_stores_the_reply_without_it() {
    use slowcat_processors::audio::WavOutputSettings;
    use slowcat_processors::tts::EspeakTtsSettings;

    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start(vec![
        call("lookup", "{}"),
        Reply::Stream(vec!["It is", " noon."]),
        Reply::Stream(vec!["Yes."]),
    ])
    .await;
    let ctx = BuildContext::for_dir(dir.path());
    let memory = StatelessMemorySettings::default().check_and_build(&ctx).unwrap();
    let mut tools = ToolBox::new();
    tools.add(Arc::new(Slow)).unwrap();
    let settings = OpenAiLlmSettings {
        tool_filler_after_ms: 100,
        tool_filler: "One moment.".into(),
        ..llm_settings(server.base_url())
    };
    let llm = OpenAiLlm::new(settings).unwrap().with_tools(tools);
    let tts = EspeakTtsSettings::default().check_and_build(&ctx).expect("espeak-ng");
    let out = WavOutputSettings { path: dir.path().join("said.wav"), ..WavOutputSettings::default() }
        .check_and_build(&ctx)
        .unwrap();
    let mut h = Harness::start(vec![memory, Box::new(llm), tts, out]).await;
    turn(&mut h, "default", 1, "Look it up.", None).await;
    let heard = h.output().upstream.iter().find_map(|f| match f {
        Frame::SpokenReply(r) => Some(r.text.clone()),
        _ => None,
    });
    assert_eq!(heard.as_deref(), Some("One moment. It is noon."), "the filler was heard");
    turn(&mut h, "default", 2, "Thanks.", None).await;
    h.finish(LIMIT).await;

    let next = messages(&requests(&server)[2]);
    assert!(next.contains(&("assistant".to_string(), "It is noon.".to_string())), "{next:?}");
    assert!(next.iter().all(|(_, c)| !c.contains("One moment")), "the filler is not part of the reply: {next:?}");
    let db = MemoryDb::open_existing(&db_path(dir.path())).unwrap();
    // Newest first.
    let stored = db.recent("default", 2).unwrap();
    assert_eq!(stored[1].assistant, "It is noon.");
    assert_eq!(stored[1].tools, "lookup → noon");
}
