//! MCP servers' tools in the tool box: the real `@modelcontextprotocol/server-memory` and
//! `server-filesystem` from npm (started with `npx -y`), a server command that does not exist,
//! and a scripted server that dies in the middle of a call (no real server does that on demand).

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use slowcat_processors::processor::BuildContext;
use slowcat_processors::tools::{ToolBox, ToolError, ToolsSettings};

/// npx, or `None` with a message: scripts/setup-system.sh installs Node, so CI has it.
/// `npx`, which scripts/setup-system.sh installs (Debian's `nodejs` and `npm`, Homebrew's `node`).
fn npx() -> &'static str {
    let found = std::process::Command::new("npx").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "npx (Node.js) is not installed: run scripts/setup-system.sh");
    "npx"
}

/// The major version of `node`.
fn node_major() -> u32 {
    let out = std::process::Command::new("node").arg("--version").output().expect("node runs");
    let version = String::from_utf8_lossy(&out.stdout);
    version.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).expect("node's version")
}

async fn tool_box(dir: &Path, mcp_json: serde_json::Value) -> (ToolBox, Vec<String>) {
    std::fs::write(dir.join("mcp.json"), serde_json::to_string_pretty(&mcp_json).unwrap()).unwrap();
    let settings = ToolsSettings {
        mcp_config: "mcp.json".into(),
        // The first `npx -y` downloads the package.
        mcp_start_timeout_secs: 180.0,
        ..Default::default()
    };
    let ctx = BuildContext::for_dir(dir);
    assert!(settings.check(&ctx).is_empty());
    let mut tools = settings.build(&ctx).expect("builds");
    let warnings = tools.start().await;
    (tools, warnings)
}

fn source_of(tools: &ToolBox, name: &str) -> Option<String> {
    tools.specs().into_iter().find(|s| s.name == name).map(|s| s.source)
}

#[tokio::test]
async fn the_real_memory_and_filesystem_servers_offer_their_tools_and_answer_calls() {
    let npx = npx();
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("shopping.txt"), "eggs, flour, lemons\n").unwrap();
    let files = files.canonicalize().unwrap();
    let (mut tools, warnings) = tool_box(
        dir.path(),
        json!({"mcpServers": {
            "memory": {"command": npx, "args": ["-y", "@modelcontextprotocol/server-memory"],
                       "env": {"MEMORY_FILE_PATH": dir.path().join("graph.jsonl")}},
            "filesystem": {"command": npx, "args": ["-y", "@modelcontextprotocol/server-filesystem", files]}
        }}),
    )
    .await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(source_of(&tools, "create_entities").as_deref(), Some("mcp:memory"));
    assert_eq!(source_of(&tools, "read_graph").as_deref(), Some("mcp:memory"));
    assert_eq!(source_of(&tools, "list_directory").as_deref(), Some("mcp:filesystem"));
    assert_eq!(source_of(&tools, "calculate").as_deref(), Some("builtin"), "built-ins stay");
    let spec = tools.specs().into_iter().find(|s| s.name == "list_directory").unwrap();
    assert!(!spec.description.is_empty() && spec.parameters["properties"]["path"].is_object(), "{spec:?}");

    let listing = tools.call("list_directory", json!({"path": files})).await.unwrap();
    assert!(listing.contains("shopping.txt"), "{listing}");
    let content = tools.call("read_text_file", json!({"path": files.join("shopping.txt")})).await.unwrap();
    assert!(content.contains("eggs, flour, lemons"), "{content}");
    // Outside the allowed directory: the server's refusal comes back as the tool's failure.
    let err = tools.call("list_directory", json!({"path": "/etc"})).await.unwrap_err();
    assert!(matches!(err, ToolError::Failed(_)), "{err:?}");

    tools
        .call(
            "create_entities",
            json!({"entities": [{"name": "Ana", "entityType": "person", "observations": ["is the user's sister"]}]}),
        )
        .await
        .unwrap();
    let graph = tools.call("read_graph", json!({})).await.unwrap();
    assert!(graph.contains("Ana") && graph.contains("is the user's sister"), "{graph}");

    // Stopped with slowcat: the sessions end, and their tools say so.
    tools.stop().await;
    let err = tools.call("read_graph", json!({})).await.unwrap_err();
    assert!(matches!(err, ToolError::Unavailable(_)), "{err:?}");
    assert!(tools.call("calculate", json!({"expression": "2+2"})).await.unwrap().ends_with("= 4"));
}

#[tokio::test]
async fn a_server_that_cannot_start_is_a_warning_and_the_others_work() {
    let npx = npx();
    let dir = tempfile::tempdir().unwrap();
    let (mut tools, warnings) = tool_box(
        dir.path(),
        json!({"mcpServers": {
            "ghost": {"command": "/nonexistent/mcp-server-ghost", "args": []},
            "memory": {"command": npx, "args": ["-y", "@modelcontextprotocol/server-memory"],
                       "env": {"MEMORY_FILE_PATH": dir.path().join("graph.jsonl")}},
            "memory-again": {"command": npx, "args": ["-y", "@modelcontextprotocol/server-memory"],
                       "env": {"MEMORY_FILE_PATH": dir.path().join("graph2.jsonl")}}
        }}),
    )
    .await;
    let ghost: Vec<&String> = warnings.iter().filter(|w| w.contains("`ghost`")).collect();
    assert_eq!(ghost.len(), 1, "{warnings:?}");
    assert!(ghost[0].contains("/nonexistent/mcp-server-ghost") && ghost[0].contains("without its tools"), "{ghost:?}");
    // Two servers with the same tools: the first keeps each name, every clash is reported.
    let clashes = warnings.iter().filter(|w| w.contains("is kept")).count();
    assert!(clashes >= 9, "one warning per clashing tool: {warnings:?}");
    assert!(tools.specs().iter().all(|s| s.source != "mcp:ghost"));
    let graph = tools.call("read_graph", json!({})).await.unwrap();
    assert!(graph.contains("entities"), "{graph}");
    assert!(tools.call("calculate", json!({"expression": "6*7"})).await.unwrap().ends_with("= 42"));
    tools.stop().await;
}

/// A scripted MCP server (stdio, JSON-RPC lines) with two tools: `crash` exits in the middle of
/// the call, `grow` announces a changed tool list that then holds a third tool, `extra`.
const SCRIPTED: &str = r#"
import json, sys
grown = False
def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n"); sys.stdout.flush()
def tool(name):
    return {"name": name, "description": "scripted " + name, "inputSchema": {"type": "object", "properties": {}}}
for line in sys.stdin:
    msg = json.loads(line)
    method, mid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": "2025-06-18",
              "capabilities": {"tools": {"listChanged": True}}, "serverInfo": {"name": "scripted", "version": "1"}}})
    elif method == "tools/list":
        names = ["crash", "grow"] + (["extra"] if grown else [])
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [tool(n) for n in names]}})
    elif method == "tools/call":
        name = msg["params"]["name"]
        if name == "crash":
            sys.stderr.write("scripted server: crashing on purpose\n"); sys.stderr.flush()
            sys.exit(3)
        if name == "grow":
            grown = True
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": name + " done"}]}})
    elif mid is not None:
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
"#;

#[tokio::test]
async fn a_server_that_dies_mid_call_makes_its_tools_unavailable_and_the_rest_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("scripted_mcp.py");
    std::fs::write(&script, SCRIPTED).unwrap();
    let (mut tools, warnings) =
        tool_box(dir.path(), json!({"mcpServers": {"scripted": {"command": "python3", "args": ["-u", script]}}})).await;
    assert!(warnings.is_empty(), "{warnings:?}");

    // The list changes when the server says so.
    assert!(source_of(&tools, "extra").is_none());
    assert_eq!(tools.call("grow", json!({})).await.unwrap(), "grow done");
    let deadline = Instant::now() + Duration::from_secs(10);
    while source_of(&tools, "extra").is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(source_of(&tools, "extra").as_deref(), Some("mcp:scripted"), "the refreshed list has `extra`");

    let started = Instant::now();
    let err = tools.call("crash", json!({})).await.unwrap_err();
    assert!(matches!(err, ToolError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("scripted"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "no hang: {:?}", started.elapsed());
    // Its tools stay listed but answer at once; the built-in ones work.
    let err = tools.call("grow", json!({})).await.unwrap_err();
    assert!(matches!(err, ToolError::Unavailable(_)) && err.to_string().contains("crashing on purpose"), "{err}");
    assert!(tools.call("calculate", json!({"expression": "1234 * 5678"})).await.unwrap().ends_with("= 7006652"));
    tools.stop().await;
}

#[test]
fn an_mcp_json_that_does_not_parse_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = BuildContext::for_dir(dir.path());
    let path = dir.path().join("mcp.json");
    let settings = ToolsSettings { mcp_config: "mcp.json".into(), ..Default::default() };

    std::fs::write(&path, "{\"mcpServers\": {\"memory\": {\"command\": \"npx\",}}}").unwrap();
    let problems = settings.check(&ctx);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains(&path.display().to_string()), "{}", problems[0].message);
    assert!(problems[0].message.contains("not a valid mcp.json"), "{}", problems[0].message);
    assert_eq!(problems[0].key, Some("tools"));

    std::fs::write(&path, "{\"mcpServers\": {\"memory\": {\"args\": []}}}").unwrap();
    let message = settings.check(&ctx).remove(0).message;
    assert!(message.contains("neither `command` nor `url`"), "{message}");

    std::fs::remove_file(&path).unwrap();
    let message = settings.check(&ctx).remove(0).message;
    assert!(message.contains("cannot read") && message.contains("mcp.json"), "{message}");
    assert!(settings.build(&ctx).is_err());
}

/// The real `@modelcontextprotocol/server-everything` serving streamable HTTP on `port`, in a
/// process group of its own so the test can end it (npx, npm and node) at once.
struct HttpServer {
    child: std::process::Child,
}

impl HttpServer {
    fn start(npx: &str, port: u16) -> Self {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(npx)
            .args(["-y", "@modelcontextprotocol/server-everything", "streamableHttp"])
            .env("PORT", port.to_string())
            // Its streamable HTTP transport uses the global `crypto`, which Node 18 (Debian 12's)
            // offers only behind this flag; Node 19 and later have it by default.
            .env("NODE_OPTIONS", if node_major() < 19 { "--experimental-global-webcrypto" } else { "" })
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("npx starts");
        // Ready once it accepts connections (after a download on the first run).
        let deadline = Instant::now() + Duration::from_secs(180);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "server-everything ended before it listened");
            assert!(Instant::now() < deadline, "server-everything did not listen within 180 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child }
    }

    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

#[tokio::test]
async fn a_streamable_http_server_is_reached_by_its_url_and_its_death_is_unavailable() {
    let npx = npx();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = HttpServer::start(npx, port);
    let dir = tempfile::tempdir().unwrap();
    let (mut tools, warnings) =
        tool_box(dir.path(), json!({"mcpServers": {"everything": {"url": format!("http://127.0.0.1:{port}/mcp")}}}))
            .await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(source_of(&tools, "echo").as_deref(), Some("mcp:everything"));
    let echoed = tools.call("echo", json!({"message": "hello from slowcat"})).await.unwrap();
    assert!(echoed.contains("hello from slowcat"), "{echoed}");

    server.kill();
    let err = tools.call("echo", json!({"message": "anyone there?"})).await.unwrap_err();
    assert!(matches!(err, ToolError::Unavailable(_)), "{err:?}");
    assert!(tools.call("calculate", json!({"expression": "2*21"})).await.unwrap().ends_with("= 42"));
    tools.stop().await;
}
