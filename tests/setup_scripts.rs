//! README's set-up scripts as a user runs them: `scripts/llm-server.sh` starting and stopping the
//! local LLM server (the real prebuilt llama.cpp server, or whatever this CPU runs), saying why
//! when the server dies, and `scripts/run.sh` answering a spoken question when nothing answers at
//! the configured LLM address.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{say, transcribe, words};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("SLOWCAT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap()).join(".cache/slowcat"))
}

fn llm_server(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(repo().join("scripts/llm-server.sh"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Whether a process with this pid exists (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Every process whose command line names this port (`--port N`): what a stop must not leave.
fn processes_on(port: u16) -> Vec<String> {
    let needle = format!("--port\0{port}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).to_string();
        if cmdline.contains(&needle) && !cmdline.contains("llm-server.sh") {
            found.push(cmdline.replace('\0', " "));
        }
    }
    found
}

#[test]
fn llm_server_start_then_stop_leaves_no_process_behind() {
    let port = 18_193;
    let _ = llm_server(&["stop", "--port", &port.to_string()], &[]);
    let started = llm_server(&["start", "--port", &port.to_string(), "--nice", "0"], &[]);
    assert!(started.status.success(), "llm-server.sh start failed:\n{}", text(&started));
    let log = text(&started);
    assert!(log.contains("ready in") && log.contains(&format!("http://127.0.0.1:{port}/v1")), "{log}");

    let status = llm_server(&["status", "--port", &port.to_string()], &[]);
    assert!(status.status.success(), "status after start: {}", text(&status));
    let pid: u32 = std::fs::read_to_string(cache_dir().join(format!("llm-server-{port}.pid")))
        .expect("start writes a pid file")
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid) && port_open(port));

    // A second start is a no-op that leaves the one server running.
    let again = llm_server(&["start", "--port", &port.to_string()], &[]);
    assert!(again.status.success() && text(&again).contains("already running"), "{}", text(&again));

    let stopped = llm_server(&["stop", "--port", &port.to_string()], &[]);
    assert!(stopped.status.success(), "{}", text(&stopped));
    assert!(!alive(pid), "pid {pid} is still alive after stop");
    assert!(!port_open(port), "port {port} still accepts connections after stop");
    assert_eq!(processes_on(port), Vec::<String>::new(), "processes left behind after stop");
    let status = llm_server(&["status", "--port", &port.to_string()], &[]);
    assert_eq!(status.status.code(), Some(3), "status after stop: {}", text(&status));
}

#[test]
fn a_server_that_dies_during_its_warm_up_is_reported_on_the_terminal_with_its_signal_and_log() {
    // A stand-in for a llama.cpp build this CPU cannot run: it answers /v1/models, then dies with
    // SIGILL on the warm-up request. The real failure needs a CPU that traps an instruction.
    let port = 18_195;
    let fake = repo().join("tests/fixtures/llm-server-that-dies.py");
    let out = llm_server(
        &["start", "--port", &port.to_string(), "--nice", "0"],
        &[("SLOWCAT_LLAMA_SERVER", fake.to_str().unwrap())],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "start must fail:\n{said}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warm-up") && stderr.contains("SIGILL"), "the terminal must say why:\n{said}");
    assert!(
        stderr.contains("last lines of") && stderr.contains("about to run the first batch"),
        "the terminal must show the server's last log lines:\n{said}"
    );
    assert!(!port_open(port) && processes_on(port).is_empty(), "nothing may be left running: {:?}", processes_on(port));
}

#[tokio::test]
async fn the_run_command_starts_the_local_llm_when_nothing_answers_and_speaks_an_answer() {
    // README's run command with a WAV in and out, on a machine where nothing answers at the
    // configured base_url: run.sh starts the local server (on a port of this test's own) and the
    // assistant answers out loud.
    let port = 18_194;
    let _ = llm_server(&["stop", "--port", &port.to_string()], &[]);
    let dir = tempfile::tempdir().unwrap();
    let question = dir.path().join("question.wav");
    let answer = dir.path().join("answer.wav");
    say(dir.path(), "What is the capital of France?", &question).await;

    // The binary this test belongs to, in the build directory it was built in: run.sh finds it up to date.
    let target_dir = Path::new(env!("CARGO_BIN_EXE_slowcat")).parent().unwrap().parent().unwrap().to_path_buf();
    let (q, a, d) = (question.clone(), answer.clone(), dir.path().join("data"));
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(repo().join("scripts/run.sh"))
            .args(["--input", q.to_str().unwrap(), "--output", a.to_str().unwrap()])
            // Port 9 (discard): nothing answers there.
            .args(["--set", "processors.llm.base_url=http://127.0.0.1:9/v1"])
            .args(["--set", &format!("data_dir={:?}", d.to_str().unwrap())])
            .args(["--set", "processors.llm.max_tokens=40"])
            .env("SLOWCAT_PROFILE", "dev")
            .env("SLOWCAT_LLM_PORT", port.to_string())
            .env("CARGO_TARGET_DIR", target_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = text(&out);
    let _ = llm_server(&["stop", "--port", &port.to_string()], &[]);
    eprintln!("scripts/run.sh took {:?}", started.elapsed());
    assert!(out.status.success(), "scripts/run.sh failed:\n{said}");
    assert!(said.contains("does not answer") && said.contains("local llama.cpp server"), "{said}");
    assert!(said.contains(&format!("127.0.0.1:{port}")), "the local server's address is used:\n{said}");

    let heard = transcribe(dir.path(), &answer).await;
    eprintln!("the assistant said: {heard:?}");
    assert!(words(&heard).len() >= 2, "the answer WAV holds no spoken answer:\n{said}");
}
