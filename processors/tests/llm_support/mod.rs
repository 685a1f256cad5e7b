//! Shared by the LLM tests: the real local server (one per test binary), a server that misbehaves
//! on purpose, and helpers to run one reply through a pipeline.
#![allow(dead_code)] // each test binary uses its own part of this

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slowcat_processors::harness::Harness;
use slowcat_processors::llm::OpenAiLlmSettings;
use slowcat_processors::{BoxProcessor, BuildContext, ChatMessage, Frame, LlmRequest, Role, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long the script may take to start the server (it is ready in about 2 s once installed).
const SERVER_START_LIMIT: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The base URL of a real OpenAI-compatible server: `SLOWCAT_LLM_URL` when the test command set
/// it, else a llama.cpp server this test binary starts with `scripts/llm-server.sh` on a free
/// port, shared by all its tests and stopped when the binary exits.
pub fn real_server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("SLOWCAT_LLM_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => start_local_server(),
    })
    .clone()
}

fn start_local_server() -> String {
    let script = repo_root().join("scripts/llm-server.sh");
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("slowcat-llm-test-{}-{port}.log", std::process::id()));
    let log = File::create(&log_path).expect("create the server start log");
    let mut child = Command::new(&script)
        .args(["start", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > SERVER_START_LIMIT => {
                // SIGTERM, not SIGKILL: the script cleans up a half-done install on TERM.
                let _ = Command::new("kill").arg(child.id().to_string()).status();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("waiting for {}: {e}", script.display()),
        }
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    if !status.is_some_and(|s| s.success()) {
        panic!(
            "the LLM tests need a real OpenAI-compatible server and `scripts/llm-server.sh start --port {port}` \
             did not start one within {}s. Run `scripts/llm-server.sh install` once (it fetches a prebuilt \
             llama.cpp server, or compiles one where that cannot run: about 8 minutes), or set SLOWCAT_LLM_URL to a running server's base URL \
             (e.g. http://127.0.0.1:8089/v1 after `scripts/llm-server.sh start`). Script output:\n{output}",
            SERVER_START_LIMIT.as_secs()
        );
    }
    // Test binaries never run destructors of statics, so a watchdog in its own session stops the
    // server once this process has exited, however it exits.
    let watchdog = Command::new("setsid")
        .args(["sh", "-c", r#"tail --pid="$0" -f /dev/null; exec "$1" stop --port "$2""#])
        .arg(std::process::id().to_string())
        .arg(&script)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = watchdog {
        eprintln!(
            "warning: cannot watch the LLM server on port {port} ({e}); stop it with `scripts/llm-server.sh stop --port {port}`"
        );
    }
    format!("http://127.0.0.1:{port}/v1")
}

/// Held by each test that talks to the real server: llama-cpp-python's server cuts off a streaming
/// reply when another request arrives (its `interrupt_requests`), so its tests take turns.
pub async fn real_server_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Settings for `openai_llm` against a [`FakeServer`] at `base_url`: no request but the turns'
/// (no warm-up, prefill or read-ahead: the scripted replies are for the turns; a test that wants
/// one turns it on), quick retries and short timeouts.
pub fn scripted_settings(base_url: String) -> OpenAiLlmSettings {
    OpenAiLlmSettings {
        base_url,
        model: "fake-model".into(),
        warmup: false,
        prefill_next_turn: false,
        read_ahead_turn: false,
        retries: 2,
        retry_backoff_ms: 20,
        connect_timeout_ms: 1_000,
        first_token_timeout_ms: 2_000,
        total_timeout_ms: 5_000,
        ..Default::default()
    }
}

/// An `openai_llm` processor built through its settings, as the runtime builds it.
pub fn llm(settings: OpenAiLlmSettings) -> BoxProcessor {
    let dir = std::env::temp_dir();
    let problems = settings.check(&BuildContext::for_dir(&dir));
    assert!(problems.is_empty(), "settings rejected: {problems:?}");
    settings.check_and_build(&BuildContext::for_dir(&dir)).expect("build openai_llm")
}

/// A request as `user_turn` makes them.
pub fn request(turn: u64, question: &str) -> Frame {
    Frame::LlmRequest(Box::new(LlmRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are a helpful assistant. Answer briefly."),
            ChatMessage::new(Role::User, question),
        ],
        speaker: "default".into(),
        turn,
        memory_injected: false,
    }))
}

/// Sends a request and returns the downstream frames that came out until its `LlmResponseEnd`
/// (and, when the reply failed, the apology that follows it).
pub async fn turn(h: &mut Harness, turn: u64, question: &str, limit: Duration) -> Vec<Frame> {
    let before = h.output().downstream.len();
    h.send(request(turn, question)).await;
    h.wait_for(limit, |f, _| matches!(f, Frame::LlmResponseEnd))
        .await
        .unwrap_or_else(|| panic!("turn {turn}: no LlmResponseEnd within {limit:?}; got {:?}", h.output().downstream));
    let failed = h.output().downstream[before..].iter().any(|f| matches!(f, Frame::Error(_)));
    if failed {
        h.wait_for(Duration::from_secs(5), |f, _| matches!(f, Frame::Speak(_)))
            .await
            .unwrap_or_else(|| panic!("turn {turn}: an error but no apology"));
    }
    h.output().downstream[before..].to_vec()
}

/// The texts of the `LlmText` frames.
pub fn texts(frames: &[Frame]) -> Vec<String> {
    frames.iter().filter_map(|f| if let Frame::LlmText(t) = f { Some(t.clone()) } else { None }).collect()
}

/// The messages of the `Error` frames.
pub fn errors(frames: &[Frame]) -> Vec<String> {
    frames.iter().filter_map(|f| if let Frame::Error(e) = f { Some(e.message.clone()) } else { None }).collect()
}

/// Asserts a well-formed successful reply to `turn`: start, more than `min_chunks` texts, end,
/// nothing else of the reply, no error. Returns the texts.
pub fn assert_reply(frames: &[Frame], turn: u64, min_chunks: usize) -> Vec<String> {
    assert!(errors(frames).is_empty(), "turn {turn} failed: {:?}", errors(frames));
    let reply: Vec<&Frame> = frames
        .iter()
        .filter(|f| {
            matches!(f, Frame::LlmResponseStart { .. } | Frame::LlmText(_) | Frame::LlmResponseEnd | Frame::Speak(_))
        })
        .collect();
    assert_eq!(reply.first(), Some(&&Frame::LlmResponseStart { turn }), "{reply:?}");
    assert_eq!(reply.last(), Some(&&Frame::LlmResponseEnd), "{reply:?}");
    let texts = texts(frames);
    assert_eq!(reply.len(), texts.len() + 2, "only text between start and end: {reply:?}");
    assert!(texts.len() >= min_chunks, "expected at least {min_chunks} text frames, got {texts:?}");
    texts
}

/// Asserts the fault sequence of `turn`: an error whose message holds every `needle`, the reply
/// closed with `LlmResponseEnd`, then a spoken apology. Returns the error message.
pub fn assert_fault(frames: &[Frame], turn: u64, needles: &[&str]) -> String {
    let errors = errors(frames);
    assert_eq!(errors.len(), 1, "turn {turn}: expected one error frame, got {errors:?}");
    eprintln!("turn {turn} error: {}", errors[0]);
    for needle in needles {
        assert!(errors[0].contains(needle), "turn {turn}: error {:?} does not mention {needle:?}", errors[0]);
    }
    let data: Vec<&Frame> = frames
        .iter()
        .filter(|f| !matches!(f, Frame::Error(_) | Frame::Metrics(_) | Frame::Start | Frame::End))
        .collect();
    assert_eq!(data.first(), Some(&&Frame::LlmResponseStart { turn }), "{data:?}");
    let n = data.len();
    assert!(n >= 3, "{data:?}");
    assert_eq!(data[n - 2], &Frame::LlmResponseEnd, "the reply is closed before the apology: {data:?}");
    assert!(matches!(data[n - 1], Frame::Speak(s) if s.starts_with("Sorry")), "apology last: {data:?}");
    errors[0].clone()
}

/// What the misbehaving server does with one chat request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A correct stream: these pieces of text, a finish reason, `[DONE]`.
    Stream(Vec<&'static str>),
    /// This status and body.
    Status(u16, &'static str),
    /// A 200 event-stream response with this body, correctly framed: only the content is wrong.
    RawSse(&'static str),
    /// Response headers, then silence until the client goes away.
    Silent,
    /// These pieces of text, then the connection is dropped mid-stream.
    DropAfter(Vec<&'static str>),
    /// A 200 event-stream response whose body is these pieces, each written as its own HTTP
    /// chunk (split a body into single bytes to test a client's reassembly), then its end.
    Chunks(Vec<String>),
    /// Like `Chunks`, but the connection is dropped where the body's end would be.
    ChunksThenDrop(Vec<String>),
}

/// An OpenAI-compatible server of the tests' own that replies to each chat request with the next
/// scripted [`Reply`] (a correct stream once they run out), and lists one model, `fake-model`.
/// Every response closes its connection, so each request is a new one.
pub struct FakeServer {
    addr: SocketAddr,
    chat_requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// On a free port.
    pub async fn start(replies: Vec<Reply>) -> Self {
        Self::start_on(0, replies).await
    }

    /// On `port` (0: a free one).
    pub async fn start_on(port: u16, replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the fake server");
        let addr = listener.local_addr().unwrap();
        let chat_requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(replies.into_iter().collect::<std::collections::VecDeque<_>>()));
        let log = chat_requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((socket, _)) = accepted else { continue };
                        connections.spawn(serve(socket, script.clone(), log.clone()));
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Self { addr, chat_requests, task }
    }

    /// The base URL to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bodies of the chat requests received so far.
    pub fn chat_requests(&self) -> Vec<String> {
        self.chat_requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    script: Arc<Mutex<std::collections::VecDeque<Reply>>>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let Some((head, body)) = read_request(&mut socket).await else { return };
    let request_line = head.lines().next().unwrap_or_default().to_string();
    if request_line.starts_with("GET ") && request_line.contains("/models") {
        let json = r#"{"object":"list","data":[{"id":"fake-model","object":"model"}]}"#;
        let _ = socket.write_all(response_head(200, "application/json", Some(json.len())).as_bytes()).await;
        let _ = socket.write_all(json.as_bytes()).await;
        return;
    }
    if !(request_line.starts_with("POST ") && request_line.contains("/chat/completions")) {
        let _ = socket.write_all(response_head(404, "text/plain", Some(9)).as_bytes()).await;
        let _ = socket.write_all(b"not found").await;
        return;
    }
    log.lock().unwrap().push(body);
    let reply = script.lock().unwrap().pop_front().unwrap_or(Reply::Stream(vec!["Hello", " again", "."]));
    match reply {
        Reply::Stream(pieces) => {
            let _ = socket.write_all(response_head(200, "text/event-stream", None).as_bytes()).await;
            for piece in pieces {
                let _ = write_chunk(&mut socket, &event(json!({ "content": piece }), None)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = write_chunk(&mut socket, &event(json!({}), Some("stop"))).await;
            let _ = write_chunk(&mut socket, "data: [DONE]\n\n").await;
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
        Reply::Status(status, body) => {
            let _ = socket.write_all(response_head(status, "application/json", Some(body.len())).as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
        }
        Reply::RawSse(body) => {
            let _ = socket.write_all(response_head(200, "text/event-stream", None).as_bytes()).await;
            let _ = write_chunk(&mut socket, body).await;
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
        Reply::Silent => {
            let _ = socket.write_all(response_head(200, "text/event-stream", None).as_bytes()).await;
            // Hold the connection until the client leaves (bounded, so the task always ends).
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        Reply::Chunks(pieces) => {
            let _ = socket.write_all(response_head(200, "text/event-stream", None).as_bytes()).await;
            for piece in pieces {
                let _ = write_chunk(&mut socket, &piece).await;
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
        Reply::ChunksThenDrop(pieces) => {
            let _ = socket.write_all(response_head(200, "text/event-stream", None).as_bytes()).await;
            for piece in pieces {
                let _ = write_chunk(&mut socket, &piece).await;
            }
        }
        Reply::DropAfter(pieces) => {
            let _ = socket.write_all(response_head(200, "text/event-stream", None).as_bytes()).await;
            for piece in pieces {
                let _ = write_chunk(&mut socket, &event(json!({ "content": piece }), None)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Dropping the socket mid-body: the chunked body never ends.
        }
    }
    let _ = socket.flush().await;
}

fn response_head(status: u16, content_type: &str, length: Option<usize>) -> String {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".into(),
    };
    format!("HTTP/1.1 {status} Fake\r\nContent-Type: {content_type}\r\n{framing}\r\nConnection: close\r\n\r\n")
}

async fn write_chunk(socket: &mut TcpStream, data: &str) -> std::io::Result<()> {
    socket.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
    socket.flush().await
}

/// The head and body of one HTTP/1.1 request (bounded: 1 MiB, 10 s).
async fn read_request(socket: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                    return Some((head, body));
                }
            }
            if buf.len() > 1 << 20 {
                return None;
            }
            match socket.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.ok().flatten()
}

/// One server-sent event of a streamed chat completion chunk.
pub fn event(delta: Value, finish: Option<&str>) -> String {
    let chunk =
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {chunk}\n\n")
}

/// The events of a reply that calls `calls` (id, name, arguments), each call's id, name and
/// arguments sent one character per event, with the finish reason `tool_calls` and `[DONE]`
/// when `finish`.
pub fn call_events(calls: &[(&str, &str, &str)], finish: bool) -> Vec<String> {
    let mut events = vec![event(json!({"role": "assistant"}), None)];
    for (index, (id, name, arguments)) in calls.iter().enumerate() {
        for c in id.chars() {
            events
                .push(event(json!({"tool_calls": [{"index": index, "id": c.to_string(), "type": "function"}]}), None));
        }
        for c in name.chars() {
            events.push(event(json!({"tool_calls": [{"index": index, "function": {"name": c.to_string()}}]}), None));
        }
        for c in arguments.chars() {
            let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": c.to_string()}}]});
            events.push(event(delta, None));
        }
    }
    if finish {
        events.push(event(json!({}), Some("tool_calls")));
        events.push("data: [DONE]\n\n".into());
    }
    events
}

/// A reply calling `calls`, one event per HTTP chunk.
pub fn calls_reply(calls: &[(&str, &str, &str)]) -> Reply {
    Reply::Chunks(call_events(calls, true))
}

/// The chat requests the server received, as JSON.
pub fn requests(server: &FakeServer) -> Vec<Value> {
    server.chat_requests().iter().map(|r| serde_json::from_str(r).expect("a JSON request")).collect()
}
