//! Tool calling in `openai_llm` against a scripted server (the real one cannot be made to split
//! a call at every byte, loop for ever or call a tool that does not exist on cue), with tools of
//! the test's own that record when they run and when their future is dropped.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod llm_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use llm_support::{
    FakeServer, Reply, assert_fault, call_events, calls_reply, request, requests, scripted_settings, texts, turn,
};
use serde_json::{Value, json};
use slowcat_processors::harness::Harness;
use slowcat_processors::llm::{OpenAiLlm, OpenAiLlmSettings, metrics};
use slowcat_processors::tools::{Tool, ToolBox, ToolError, ToolSpec};
use slowcat_processors::{Direction, Frame};

const LIMIT: Duration = Duration::from_secs(10);

/// What a test tool does when called.
#[derive(Clone, Copy)]
enum Act {
    /// Answers at once with `result`.
    Answer(&'static str),
    /// Answers after this long.
    Slow(Duration),
    /// Never answers.
    Hang,
}

/// One call of a test tool: its arguments, when it started and ended (if it did), and whether
/// its future was dropped before it ended.
#[derive(Debug, Clone)]
struct Run {
    args: Value,
    started: Instant,
    ended: Option<Instant>,
}

#[derive(Default)]
struct Log {
    runs: Mutex<Vec<Run>>,
    dropped: AtomicUsize,
    started: tokio::sync::Notify,
}

impl Log {
    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }
}

struct TestTool {
    name: &'static str,
    act: Act,
    log: Arc<Log>,
}

/// Counts a call's future dropped before it ended.
struct DropGuard {
    log: Arc<Log>,
    done: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.done {
            self.log.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Tool for TestTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.into(),
            description: format!("The test tool {}.", self.name),
            parameters: json!({"type": "object", "properties": {"zone": {"type": "string"}}}),
            source: "test".into(),
        }
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let at = {
            let mut runs = self.log.runs.lock().unwrap();
            runs.push(Run { args, started: Instant::now(), ended: None });
            runs.len() - 1
        };
        self.log.started.notify_one();
        let mut guard = DropGuard { log: self.log.clone(), done: false };
        let result = match self.act {
            Act::Answer(result) => result.to_string(),
            Act::Slow(delay) => {
                tokio::time::sleep(delay).await;
                format!("{} done", self.name)
            }
            Act::Hang => std::future::pending().await,
        };
        guard.done = true;
        self.log.runs.lock().unwrap()[at].ended = Some(Instant::now());
        Ok(result)
    }
}

async fn harness(settings: OpenAiLlmSettings, tools: Vec<TestTool>) -> Harness {
    let mut tool_box = ToolBox::new();
    for tool in tools {
        tool_box.add(Arc::new(tool)).expect("unique tool names");
    }
    let llm = OpenAiLlm::new(settings).expect("build openai_llm").with_tools(tool_box);
    Harness::start(vec![Box::new(llm)]).await
}

fn tool(name: &'static str, act: Act, log: &Arc<Log>) -> TestTool {
    TestTool { name, act, log: log.clone() }
}

fn metric_names(frames: &[Frame]) -> Vec<slowcat_processors::MetricName> {
    frames.iter().filter_map(|f| if let Frame::Metrics(m) = f { Some(m.name) } else { None }).collect()
}

/// The turn's reply frames only: start, texts, end, spoken frames.
fn reply_frames(frames: &[Frame]) -> Vec<Frame> {
    frames
        .iter()
        .filter(|f| {
            matches!(f, Frame::LlmResponseStart { .. } | Frame::LlmText(_) | Frame::LlmResponseEnd | Frame::Speak(_))
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn tool_calls_split_at_every_byte_are_run_and_the_answer_follows_in_the_same_turn() {
    let events = call_events(&[("call_abc", "get_time", r#"{"zone": "Asia/Tokyo"}"#)], true);
    // Every byte of the body in its own HTTP chunk: SSE lines and JSON split anywhere.
    let bytes: Vec<String> = events.concat().chars().map(|c| c.to_string()).collect();
    let server = FakeServer::start(vec![Reply::Chunks(bytes), Reply::Stream(vec!["It is noon", " in Tokyo."])]).await;
    let log = Arc::new(Log::default());
    let mut h = harness(scripted_settings(server.base_url()), vec![tool("get_time", Act::Answer("12:00"), &log)]).await;
    let frames = turn(&mut h, 1, "What time is it in Tokyo?", LIMIT).await;

    let runs = log.runs();
    assert_eq!(runs.len(), 1, "the tool runs once");
    assert_eq!(runs[0].args, json!({"zone": "Asia/Tokyo"}));
    assert_eq!(
        reply_frames(&frames),
        [
            Frame::LlmResponseStart { turn: 1 },
            Frame::LlmText("It is noon".into()),
            Frame::LlmText(" in Tokyo.".into()),
            Frame::LlmResponseEnd
        ],
        "one reply, with only the answer's text"
    );

    let sent = requests(&server);
    assert_eq!(sent.len(), 2, "the follow-up goes out in the same turn");
    assert_eq!(sent[0]["tools"][0]["type"], "function");
    assert_eq!(sent[0]["tools"][0]["function"]["name"], "get_time");
    let messages = sent[1]["messages"].as_array().unwrap();
    let n = messages.len();
    assert_eq!(messages[n - 2]["role"], "assistant");
    assert_eq!(messages[n - 2]["tool_calls"][0]["id"], "call_abc");
    assert_eq!(messages[n - 2]["tool_calls"][0]["function"]["name"], "get_time");
    let arguments: Value =
        serde_json::from_str(messages[n - 2]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"zone": "Asia/Tokyo"}));
    assert_eq!(messages[n - 1], json!({"role": "tool", "tool_call_id": "call_abc", "content": "12:00"}));

    let names = metric_names(&frames);
    for name in [metrics::FIRST_PASS, metrics::TOOL_TIME, metrics::SECOND_PASS_TTFT, metrics::OVERHEAD] {
        assert!(names.contains(&name), "{name} is reported: {names:?}");
    }
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn two_calls_in_one_reply_run_at_the_same_time() {
    let calls = [("c1", "slow_a", "{}"), ("c2", "slow_b", "{}")];
    let server = FakeServer::start(vec![calls_reply(&calls), Reply::Stream(vec!["Both done."])]).await;
    let log = Arc::new(Log::default());
    let slow = Act::Slow(Duration::from_millis(400));
    let mut h =
        harness(scripted_settings(server.base_url()), vec![tool("slow_a", slow, &log), tool("slow_b", slow, &log)])
            .await;
    let frames = turn(&mut h, 1, "Do both.", LIMIT).await;
    assert_eq!(texts(&frames), ["Both done."]);

    let runs = log.runs();
    assert_eq!(runs.len(), 2, "both calls run");
    let (a, b) = (&runs[0], &runs[1]);
    let (a_end, b_end) = (a.ended.expect("a ended"), b.ended.expect("b ended"));
    assert!(b.started < a_end && a.started < b_end, "the calls overlap in time: {runs:?}");

    let sent = requests(&server);
    let messages = sent[1]["messages"].as_array().unwrap();
    let results: Vec<(&str, &str)> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| (m["tool_call_id"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(results, [("c1", "slow_a done"), ("c2", "slow_b done")]);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn an_unknown_tool_or_malformed_arguments_give_the_model_an_error_and_the_turn_still_ends_with_a_reply() {
    let server = FakeServer::start(vec![
        calls_reply(&[("c1", "launch_rockets", "{}")]),
        Reply::Stream(vec!["I can't do that."]),
        calls_reply(&[("c2", "get_time", r#"{"zone": "#)]),
        Reply::Stream(vec!["Something went wrong."]),
    ])
    .await;
    let log = Arc::new(Log::default());
    let mut h = harness(scripted_settings(server.base_url()), vec![tool("get_time", Act::Answer("12:00"), &log)]).await;

    let frames = turn(&mut h, 1, "Launch the rockets.", LIMIT).await;
    assert_eq!(texts(&frames), ["I can't do that."]);
    let frames = turn(&mut h, 2, "What time is it?", LIMIT).await;
    assert_eq!(texts(&frames), ["Something went wrong."]);
    assert!(log.runs().is_empty(), "a call with malformed arguments is not run");

    let sent = requests(&server);
    assert_eq!(sent.len(), 4);
    let result = |request: &Value| request["messages"].as_array().unwrap().last().unwrap().clone();
    let unknown = result(&sent[1]);
    assert_eq!(unknown["role"], "tool");
    assert!(unknown["content"].as_str().unwrap().contains("no tool named `launch_rockets`"), "{unknown}");
    let malformed = result(&sent[3]);
    assert!(malformed["content"].as_str().unwrap().contains("bad arguments"), "{malformed}");
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_tool_that_hangs_is_cut_off_at_its_timeout_and_the_reply_still_comes() {
    let server =
        FakeServer::start(vec![calls_reply(&[("c1", "stuck", "{}")]), Reply::Stream(vec!["The tool did not answer."])])
            .await;
    let log = Arc::new(Log::default());
    let s =
        OpenAiLlmSettings { tool_timeout_ms: 500, tool_filler_after_ms: 100, ..scripted_settings(server.base_url()) };
    let mut h = harness(s, vec![tool("stuck", Act::Hang, &log)]).await;
    let frames = turn(&mut h, 1, "Use the stuck tool.", LIMIT).await;

    assert_eq!(
        reply_frames(&frames),
        [
            Frame::LlmResponseStart { turn: 1 },
            Frame::Speak("One moment.".into()),
            Frame::LlmText("The tool did not answer.".into()),
            Frame::LlmResponseEnd
        ],
        "the filler once while the tool runs, then the reply"
    );
    assert_eq!(log.dropped.load(Ordering::SeqCst), 1, "the hanging call was dropped at its timeout");
    let sent = requests(&server);
    let result = sent[1]["messages"].as_array().unwrap().last().unwrap().clone();
    assert!(result["content"].as_str().unwrap().contains("did not finish within 500 ms"), "{result}");
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_model_that_never_stops_calling_is_stopped_at_the_limit_and_the_turn_ends() {
    // Exactly the three requests of turn 1 call; the next turn gets the default text reply.
    let replies = ["c0", "c1", "c2"].iter().map(|id| calls_reply(&[(id, "get_time", "{}")])).collect();
    let server = FakeServer::start(replies).await;
    let log = Arc::new(Log::default());
    let s = OpenAiLlmSettings { max_tool_rounds: 2, ..scripted_settings(server.base_url()) };
    let mut h = harness(s, vec![tool("get_time", Act::Answer("12:00"), &log)]).await;
    h.send(request(1, "What time is it?")).await;
    h.wait_for(LIMIT, |f, _| matches!(f, Frame::Speak(_))).await.expect("the turn ends with something said");
    let frames = h.output().downstream.clone();

    assert_eq!(log.runs().len(), 2, "the tools run max_tool_rounds times");
    let sent = requests(&server);
    assert_eq!(sent.len(), 3, "two rounds, then one request without tools");
    assert!(sent[1].get("tools").is_some() && sent[2].get("tools").is_none(), "the last request offers no tools");
    let reply = reply_frames(&frames);
    assert_eq!(reply.first(), Some(&Frame::LlmResponseStart { turn: 1 }));
    assert!(texts(&frames).is_empty(), "nothing of the calls is spoken: {reply:?}");
    assert_eq!(reply[reply.len() - 2], Frame::LlmResponseEnd);
    assert!(matches!(&reply[reply.len() - 1], Frame::Speak(s) if s.starts_with("Sorry")), "{reply:?}");

    // The next turn works as usual.
    let frames = turn(&mut h, 2, "Hello?", LIMIT).await;
    assert_eq!(texts(&frames), ["Hello", " again", "."]);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn calls_written_as_text_are_run_and_their_json_is_never_spoken_while_normal_replies_stream_at_once() {
    let server = FakeServer::start(vec![
        Reply::Stream(vec!["Paris", " is", " the", " capital."]),
        Reply::Stream(vec!["{\"na", "me\": \"get_time\", \"argu", "ments\": {\"zone\": \"Asia/", "Tokyo\"}}"]),
        Reply::Stream(vec!["It is noon."]),
        Reply::Stream(vec![
            "```",
            "json\n{\"name\": \"get_time\",",
            " \"parameters\": {\"zone\": \"Europe/Paris\"}}\n",
            "```",
        ]),
        Reply::Stream(vec!["It is five."]),
        Reply::Stream(vec![
            "<tool",
            "_call>\n{\"name\": \"get_time\", \"arguments\": ",
            "{\"zone\": \"UTC\"}}\n</tool_call>",
        ]),
        Reply::Stream(vec!["It is three."]),
    ])
    .await;
    let log = Arc::new(Log::default());
    let mut h = harness(scripted_settings(server.base_url()), vec![tool("get_time", Act::Answer("12:00"), &log)]).await;

    // Text that cannot be a call goes out piece by piece, as it arrives.
    let frames = turn(&mut h, 1, "What is the capital of France?", LIMIT).await;
    assert_eq!(texts(&frames), ["Paris", " is", " the", " capital."]);

    for (n, answer) in [(2, "It is noon."), (3, "It is five."), (4, "It is three.")] {
        let frames = turn(&mut h, n, "What time is it?", LIMIT).await;
        assert_eq!(texts(&frames), [answer], "turn {n}: only the answer is spoken");
    }
    let zones: Vec<Value> = log.runs().into_iter().map(|r| r.args["zone"].clone()).collect();
    assert_eq!(zones, ["Asia/Tokyo", "Europe/Paris", "UTC"], "each shape runs the tool with its arguments");
    let sent = requests(&server);
    assert_eq!(sent.len(), 7);
    // A model that writes calls as text reads no `tool` messages: the results come back in a
    // user message after the question, and the tools are not offered again (Qwen2.5-Coder-0.5B
    // only repeats its call otherwise).
    for follow_up in [&sent[2], &sent[4], &sent[6]] {
        let messages = follow_up["messages"].as_array().unwrap();
        assert!(messages.iter().all(|m| m["role"] != "tool" && m.get("tool_calls").is_none()), "{follow_up}");
        let last = messages.last().unwrap();
        assert_eq!(last["role"], "user");
        assert_eq!(last["content"], "The get_time tool says: 12:00\nUse this to answer my question.");
        assert_eq!(messages[messages.len() - 2]["content"], "What time is it?", "the question comes before it");
        assert!(follow_up.get("tools").is_none(), "no tools offered after a call written as text: {follow_up}");
    }
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_call_written_as_text_of_a_tool_that_does_not_exist_is_never_spoken_and_the_question_is_asked_again_without_tools()
 {
    // Qwen2.5-Coder-0.5B, asked for a joke, writes the joke into a call of a `joke` tool.
    let server = FakeServer::start(vec![
        Reply::Stream(vec!["{\"name\": \"joke\", \"arguments\": ", "{\"text\": \"Why did the tomato blush?\"}}"]),
        Reply::Stream(vec!["Why did the tomato blush?", " It saw the salad dressing."]),
    ])
    .await;
    let log = Arc::new(Log::default());
    let mut h = harness(scripted_settings(server.base_url()), vec![tool("get_time", Act::Answer("12:00"), &log)]).await;
    let frames = turn(&mut h, 1, "Tell me a joke.", LIMIT).await;
    assert_eq!(texts(&frames), ["Why did the tomato blush?", " It saw the salad dressing."], "only the answer is said");
    assert!(log.runs().is_empty(), "no tool ran");
    let sent = requests(&server);
    assert_eq!(sent.len(), 2);
    assert!(sent[0].get("tools").is_some(), "the first request offers the tools");
    assert!(sent[1].get("tools").is_none(), "asked again without tools: {}", sent[1]);
    assert_eq!(sent[1]["messages"], sent[0]["messages"], "the same question, without the call");
    h.finish(LIMIT).await;
}

/// Waits until the server has had `n` chat requests.
async fn wait_for_requests(server: &FakeServer, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let sent = requests(server);
        if sent.len() >= n {
            return sent;
        }
        assert!(Instant::now() < deadline, "{n} requests expected, got {}: {sent:#?}", sent.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_warm_up_begins_as_the_turn_begins_and_the_turn_is_sent_ahead_tools_included() {
    // The chat template writes the tools into the prompt: a priming request without them reads a
    // prompt the turn does not begin with, and the first tool turn reads ~1000 tokens cold.
    let server = FakeServer::start(vec![]).await;
    let log = Arc::new(Log::default());
    let settings = OpenAiLlmSettings {
        warmup: true,
        read_ahead_turn: true,
        system_prompt: "You are slowcat.".into(),
        ..scripted_settings(server.base_url())
    };
    let mut h = harness(settings, vec![tool("get_time", Act::Answer("12:00"), &log)]).await;
    let warm_up = wait_for_requests(&server, 1).await.remove(0);
    let Frame::LlmRequest(ahead) = request(1, "What time is it?") else { unreachable!() };
    h.send(Frame::LlmReadAhead(ahead)).await;
    wait_for_requests(&server, 2).await;
    let frames = turn(&mut h, 1, "What time is it?", LIMIT).await;
    assert!(!texts(&frames).is_empty(), "the turn is answered");
    let sent = requests(&server);
    // The request sent ahead is the turn's first pass: the turn sends no other.
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let first_pass = &sent[1];
    assert_eq!(first_pass["tools"][0]["function"]["name"], "get_time");
    assert_eq!(warm_up["tools"], first_pass["tools"], "the warm-up offers the turn's tools");
    assert_eq!(warm_up["max_tokens"], 1, "the warm-up asks for one token");
    let system = warm_up["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.starts_with("You are slowcat.")
            && first_pass["messages"][0]["content"].as_str().unwrap().starts_with(system),
        "the warm-up begins as the turn's system message does: {system:?}"
    );
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_generation_cut_off_before_it_finished_runs_none_of_its_calls() {
    let cut = || Reply::ChunksThenDrop(call_events(&[("c1", "get_time", "{}")], false));
    let server = FakeServer::start(vec![cut(), cut(), cut()]).await;
    let log = Arc::new(Log::default());
    let mut h = harness(scripted_settings(server.base_url()), vec![tool("get_time", Act::Answer("12:00"), &log)]).await;
    let frames = turn(&mut h, 1, "What time is it?", LIMIT).await;
    assert_fault(&frames, 1, &["closed the connection"]);
    assert!(log.runs().is_empty(), "no call of an unfinished generation runs");
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn an_interruption_while_a_tool_runs_drops_it_and_the_next_request_carries_no_call() {
    let server = FakeServer::start(vec![calls_reply(&[("c1", "stuck", "{}")]), Reply::Stream(vec!["Hi."])]).await;
    let log = Arc::new(Log::default());
    let mut h = harness(scripted_settings(server.base_url()), vec![tool("stuck", Act::Hang, &log)]).await;
    let started = log.started.notified();
    h.send(request(1, "Use the stuck tool.")).await;
    tokio::time::timeout(LIMIT, started).await.expect("the tool starts");

    h.send(Frame::Interruption).await;
    h.wait_for(LIMIT, |f, d| matches!(f, Frame::Interruption) && d == Direction::Downstream)
        .await
        .expect("the interruption travels on");
    let deadline = Instant::now() + LIMIT;
    while log.dropped.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(log.dropped.load(Ordering::SeqCst), 1, "the tool's future was dropped");
    // Past the filler's delay: nothing of the interrupted turn comes out after the interruption.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let out = h.output().downstream.clone();
    let at = out.iter().position(|f| matches!(f, Frame::Interruption)).unwrap();
    let after: Vec<&Frame> = out[at + 1..].iter().filter(|f| !matches!(f, Frame::Metrics(_))).collect();
    assert!(after.is_empty(), "after the interruption: {after:?}");

    let frames = turn(&mut h, 2, "Hello.", LIMIT).await;
    assert_eq!(texts(&frames), ["Hi."]);
    let sent = requests(&server);
    assert_eq!(sent.len(), 2, "the interrupted turn sent no follow-up");
    let messages = sent[1]["messages"].as_array().unwrap();
    assert!(
        messages.iter().all(|m| m["role"] != "tool" && m.get("tool_calls").is_none()),
        "no call of the interrupted turn: {messages:?}"
    );
    assert_eq!(log.runs().len(), 1);
    h.finish(LIMIT).await;
}

/// The filler said while a slow tool runs reaches the TTS in the middle of the reply (between
/// `LlmResponseStart` and `LlmResponseEnd`): it is spoken at once, as part of the turn, and the
/// answer is spoken after it.
#[tokio::test]
async fn the_filler_said_while_a_slow_tool_runs_is_spoken_in_the_turn_before_the_answer() {
    use slowcat_processors::audio::WavOutputSettings;
    use slowcat_processors::tts::EspeakTtsSettings;
    use slowcat_processors::{BuildContext, Settings as _};

    let server =
        FakeServer::start(vec![calls_reply(&[("c1", "lookup", "{}")]), Reply::Stream(vec!["It is", " noon."])]).await;
    let log = Arc::new(Log::default());
    let mut tool_box = ToolBox::new();
    tool_box.add(Arc::new(tool("lookup", Act::Slow(Duration::from_millis(800)), &log))).unwrap();
    let llm_settings = OpenAiLlmSettings {
        tool_filler_after_ms: 100,
        tool_filler: "One moment.".into(),
        ..scripted_settings(server.base_url())
    };
    let llm = OpenAiLlm::new(llm_settings).unwrap().with_tools(tool_box);
    let dir = tempfile::tempdir().unwrap();
    let ctx = BuildContext::for_dir(dir.path());
    let tts = EspeakTtsSettings::default().check_and_build(&ctx).expect("espeak-ng");
    let out = WavOutputSettings { path: dir.path().join("said.wav"), ..WavOutputSettings::default() }
        .check_and_build(&ctx)
        .unwrap();
    let mut h = Harness::start(vec![Box::new(llm), tts, out]).await;
    h.send(request(1, "Look it up.")).await;
    let spoken =
        h.wait_for(LIMIT, |f, d| d == Direction::Upstream && matches!(f, Frame::SpokenReply(r) if r.turn == 1)).await;
    assert!(spoken.is_some(), "the reply is spoken");
    let started: Vec<(String, u64)> = h
        .output()
        .downstream
        .iter()
        .filter_map(|f| match f {
            Frame::TtsStarted { text, turn } => Some((text.clone(), *turn)),
            _ => None,
        })
        .collect();
    assert_eq!(started, [("One moment.".to_string(), 1), ("It is noon.".to_string(), 1)]);
    let reply = h.output().upstream.iter().find_map(|f| match f {
        Frame::SpokenReply(r) => Some(r.text.clone()),
        _ => None,
    });
    // The output reports what was heard, the filler with it; memory leaves the filler out of the
    // reply it stores (memory_tools.rs).
    assert_eq!(reply.as_deref(), Some("One moment. It is noon."));
    h.finish(LIMIT).await;
}
