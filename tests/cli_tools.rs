//! `slowcat tools list` and `slowcat ask` as a user meets them when something is missing: a
//! server that is down, an MCP server that cannot start, a pipeline without `user_turn`. (Tool
//! calls against a real model: tests/tools_qwen.rs.)

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_slowcat");

/// A text-only config: user_turn → llm, the LLM at `url`, data in `dir`.
fn text_config(dir: &Path, url: &str, tools: &str) -> std::path::PathBuf {
    let cfg = dir.join("config.toml");
    let text = format!(
        "pipeline = [\"user_turn\", \"llm\"]\ndata_dir = {:?}\n\n[processors.user_turn]\ntype = \"user_turn\"\n\n\
         [processors.llm]\ntype = \"openai_llm\"\nbase_url = {url:?}\nretries = 0\nwarmup = false\n\n\
         [processors.llm.tools]\n{tools}\n",
        dir.join("data").to_str().unwrap()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn tools_list_shows_every_builtin_with_its_source_and_warns_about_an_mcp_server_that_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mcp.json"),
        r#"{"mcpServers": {"ghost": {"command": "/nonexistent/mcp-server-ghost", "args": []}}}"#,
    )
    .unwrap();
    let cfg = text_config(dir.path(), "http://127.0.0.1:9/v1", "mcp_config = \"mcp.json\"\nweb_fetch = false");
    let out = Command::new(BIN).args(["tools", "list", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for name in ["current_time", "calculate", "set_reminder", "list_reminders", "cancel_reminder", "remember"] {
        let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(name));
        let line = line.unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"));
        assert!(line.contains("builtin"), "{line}");
        assert!(line.split_whitespace().count() > 3, "a description follows: {line}");
    }
    assert!(!stdout.contains("fetch_web_page"), "switched off in the config: {stdout}");
    assert!(stderr.contains("warning") && stderr.contains("ghost"), "the server that failed is named: {stderr}");

    // --set changes the listing like the config would.
    let out = Command::new(BIN)
        .args(["tools", "list", "--set", "processors.llm.tools.calculator=false", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("calculate"));
}

#[test]
fn ask_with_the_llm_down_prints_the_apology_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = text_config(dir.path(), &format!("http://127.0.0.1:{}/v1", closed_port()), "");
    let out = Command::new(BIN).args(["ask", "--config"]).arg(&cfg).arg("hello there").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.to_lowercase().contains("sorry"), "the apology is what the assistant says: {stdout:?}");
    assert!(stderr.contains("error") && stderr.contains("127.0.0.1"), "the error names the server: {stderr}");
}

#[test]
fn ask_without_user_turn_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "pipeline = [\"pass\"]\n\n[processors.pass]\ntype = \"passthrough\"\n").unwrap();
    let out = Command::new(BIN).args(["ask", "--config"]).arg(&cfg).arg("hello").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("user_turn"), "{stderr}");
}
