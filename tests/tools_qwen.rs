//! Tools end to end against a model that calls them: `slowcat ask` (the binary, with the repo's
//! config.toml) and Qwen2.5-Coder-0.5B-Instruct served by `scripts/llm-server.sh`, which this test
//! starts on its own port and stops at the end.
//!
//! What ran is read from the log lines the LLM client writes for each tool call on stderr
//! (`tool call done … tool=calculate args=… result=…`); the reply is what `ask` prints on stdout.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::path::{Path, PathBuf};
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_slowcat");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `SLOWCAT_QWEN_TEST_PORT` (scripts/test.sh sets it to the port after the SmolLM2 server's).
fn port() -> u16 {
    std::env::var("SLOWCAT_QWEN_TEST_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(18_090)
}

/// Stops the server when the test ends, however it ends.
struct Server(u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/llm-server.sh"))
            .args(["stop", "--port", &self.0.to_string()])
            .output();
    }
}

/// Starts Qwen2.5-Coder-0.5B on `port` (fetching the server and the model on first use).
/// Awaited, not blocking.
async fn start_qwen(port: u16) -> Server {
    let out = tokio::process::Command::new(repo().join("scripts/llm-server.sh"))
        .args(["start", "--model", "qwen2.5-coder-0.5b", "--port", &port.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/llm-server.sh start --model qwen2.5-coder-0.5b failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Server(port)
}

/// `slowcat ask TEXT` with the repo's config, its data in `data_dir` (an empty memory: what an
/// earlier exchange said changes what the model does), greedy sampling so the run repeats, and a
/// first-token bound for a busy machine (the tool specs make a long prompt).
async fn ask(port: u16, data_dir: &Path, text: &str) -> (Output, String, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("ask")
        .arg("--config")
        .arg(repo().join("config.toml"))
        .args(["--llm-url", &format!("http://127.0.0.1:{port}/v1")])
        .args(["--set", &format!("data_dir={:?}", data_dir.to_str().unwrap())])
        .args(["--set", "processors.llm.temperature=0"])
        .args(["--set", "processors.llm.first_token_timeout_ms=60000"])
        .arg(text)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    eprintln!("== slowcat ask {text:?}\n-- stdout:\n{stdout}-- stderr:\n{stderr}");
    (out, stdout, stderr)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The log lines of tool calls (done or failed).
fn tool_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("tool call done") || l.contains("tool call failed")).collect()
}

fn temp_data_dir(name: &str, root: &Path) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tests of this file one at a time: each starts and stops the server on the same port.
static ONE_SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn qwen_calls_the_calculator_and_the_clock_when_asked_and_no_tool_for_a_joke() {
    let port = port();
    let _one_at_a_time = ONE_SERVER.lock().await;
    let _server = start_qwen(port).await;
    let root = tempfile::tempdir().unwrap();

    let (out, reply, log) = ask(port, &temp_data_dir("calc", root.path()), "what is 1234 times 5678").await;
    assert!(out.status.success(), "ask failed");
    let calls = tool_lines(&log);
    assert!(
        calls.iter().any(|l| l.contains("tool=calculate") && l.contains("tool call done") && l.contains("7006652")),
        "the calculator must run and find 7006652: {calls:#?}"
    );
    assert!(reply.contains("7006652") || reply.contains("7,006,652"), "the reply must give the product: {reply:?}");
    assert!(!reply.contains("\"name\""), "the call's JSON is never part of the reply: {reply:?}");

    let (out, reply, log) = ask(port, &temp_data_dir("time", root.path()), "what time is it in Tokyo").await;
    assert!(out.status.success(), "ask failed");
    let calls = tool_lines(&log);
    assert!(
        calls.iter().any(|l| l.contains("tool=current_time") && l.contains("in Asia/Tokyo")),
        "the clock must run for Asia/Tokyo: {calls:#?}"
    );
    assert!(!reply.trim().is_empty(), "a spoken answer follows the tool");

    let (out, reply, log) = ask(port, &temp_data_dir("joke", root.path()), "tell me a joke").await;
    assert!(out.status.success(), "ask failed");
    // Qwen may still write a call of a `joke` tool, which does not exist: it is never said, the
    // question is asked again without tools, and no tool runs.
    assert!(!log.contains("tool call done"), "a joke needs no tool: {:#?}", tool_lines(&log));
    assert!(!reply.trim().is_empty(), "a joke is told");
    assert!(!reply.contains('{') && !reply.contains("\"name\""), "no call's JSON is said: {reply:?}");
}

/// Memory across `slowcat ask` runs (each its own process, sharing a data directory): a calculation's
/// result answers a follow-up, and a fact the model was asked to remember is known in a later
/// conversation and listed by `slowcat memory list`.
#[tokio::test]
async fn qwen_answers_follow_ups_from_a_tool_result_and_a_remembered_fact() {
    let port = port();
    let _one_at_a_time = ONE_SERVER.lock().await;
    let _server = start_qwen(port).await;
    let root = tempfile::tempdir().unwrap();
    let data = temp_data_dir("memory", root.path());

    let (out, _, log) = ask(port, &data, "what is 1234 times 5678").await;
    assert!(out.status.success(), "ask failed");
    assert!(tool_lines(&log).iter().any(|l| l.contains("tool=calculate") && l.contains("7006652")), "{log}");
    let (out, reply, _) = ask(port, &data, "what was that number again?").await;
    assert!(out.status.success(), "ask failed");
    assert!(reply.contains("7006652") || reply.contains("7,006,652"), "the follow-up gives the product: {reply:?}");

    // A new conversation: after other exchanges, this small model says it will remember instead of
    // calling `remember` (with none, it calls it).
    let data = temp_data_dir("facts", root.path());
    let (out, _, log) = ask(port, &data, "remember that my sister's name is Ana").await;
    assert!(out.status.success(), "ask failed");
    let calls = tool_lines(&log);
    assert!(calls.iter().any(|l| l.contains("tool=remember") && l.contains("tool call done")), "{calls:#?}");
    let (out, reply, _) = ask(port, &data, "what is my sister's name?").await;
    assert!(out.status.success(), "ask failed");
    assert!(reply.contains("Ana"), "the remembered fact answers: {reply:?}");

    let listed = std::process::Command::new(BIN)
        .args(["memory", "--path"])
        .arg(data.join("memory"))
        .arg("list")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.lines().any(|l| l.contains("fact 1") && l.contains("Ana")), "{listed}");
}
