//! The built-in tools through `ToolBox::call`, as the LLM processor runs them: real clocks, real
//! files under a data dir, a real HTTP server on this machine.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;
use slowcat_processors::processor::BuildContext;
use slowcat_processors::tools::{ToolBox, ToolError, ToolsSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn build(dir: &std::path::Path, settings: &ToolsSettings) -> ToolBox {
    settings.build(&BuildContext::for_dir(dir)).expect("the tool box builds")
}

fn names(tools: &ToolBox) -> Vec<String> {
    tools.specs().into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn the_defaults_offer_every_tool_but_search_and_search_needs_an_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let tools = build(dir.path(), &ToolsSettings::default());
    let mut expected = vec![
        "current_time",
        "calculate",
        "set_reminder",
        "list_reminders",
        "cancel_reminder",
        "remember",
        "recall",
        "forget",
        "fetch_web_page",
    ];
    assert_eq!(names(&tools), expected);
    for spec in tools.specs() {
        assert_eq!(spec.source, "builtin");
        assert_eq!(spec.parameters["type"], "object", "{} has an object schema", spec.name);
    }

    let settings = ToolsSettings {
        search_url: "http://127.0.0.1:9/search?q={query}".into(),
        calculator: false,
        ..Default::default()
    };
    let tools = build(dir.path(), &settings);
    expected.retain(|n| *n != "calculate");
    expected.push("web_search");
    assert_eq!(names(&tools), expected);
    assert!(matches!(tools.call("calculate", json!({"expression": "1+1"})).await, Err(ToolError::Unknown(_))));
}

#[test]
fn settings_refuse_unknown_keys_and_report_bad_values_at_once() {
    let err = toml::from_str::<ToolsSettings>("calculater = false").unwrap_err().to_string();
    assert!(err.contains("calculater"), "{err}");
    let parsed: ToolsSettings = toml::from_str("calculator = false\nsearch_url = \"\"").unwrap();
    assert!(!parsed.calculator && parsed.time);

    let dir = tempfile::tempdir().unwrap();
    let bad = ToolsSettings {
        time_zone: "Mars/Olympus".into(),
        search_url: "https://search.example/".into(),
        fetch_timeout_secs: 0.0,
        ..Default::default()
    };
    let problems = bad.check(&BuildContext::for_dir(dir.path()));
    let text: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
    assert_eq!(problems.len(), 3, "{text:?}");
    assert!(text[0].contains("Mars/Olympus") && text[1].contains("{query}") && text[2].contains("fetch_timeout_secs"));
    assert!(bad.build(&BuildContext::for_dir(dir.path())).is_err());
}

#[tokio::test]
async fn time_in_tokyo_is_nine_hours_ahead_of_utc() {
    let dir = tempfile::tempdir().unwrap();
    let tools = build(dir.path(), &ToolsSettings::default());
    for asked in ["Tokyo", "Asia/Tokyo", "tokyo, japan", "asia/tokyo"] {
        let before = Utc::now() + ChronoDuration::hours(9);
        let answer = tools.call("current_time", json!({ "timezone": asked })).await.unwrap();
        let after = Utc::now() + ChronoDuration::hours(9);
        assert!(answer.contains("UTC+09:00") && answer.contains("Asia/Tokyo"), "{asked}: {answer}");
        // The wall-clock time in Tokyo, whichever minute the call fell in.
        let shown = [before, after].map(|t| t.format("%H:%M").to_string());
        assert!(shown.iter().any(|t| answer.contains(t.as_str())), "{answer} shows none of {shown:?}");
        assert!(answer.contains(&before.format("%Y").to_string()), "{answer}");
    }
    // Cities whose zone has another city's name, and a zone in New York's summer or winter.
    let answer = tools.call("current_time", json!({"timezone": "San Francisco"})).await.unwrap();
    assert!(
        answer.contains("America/Los_Angeles") && (answer.contains("UTC-08:00") || answer.contains("UTC-07:00")),
        "{answer}"
    );
    let answer = tools.call("current_time", json!({"city": "New York"})).await.unwrap();
    assert!(answer.contains("America/New_York"), "{answer}");
    // No zone: the configured one.
    let settings = ToolsSettings { time_zone: "Asia/Kolkata".into(), ..Default::default() };
    let answer = build(dir.path(), &settings).call("current_time", json!({})).await.unwrap();
    assert!(answer.contains("UTC+05:30") && answer.contains("user's time zone"), "{answer}");

    let err = tools.call("current_time", json!({"timezone": "Atlantis"})).await.unwrap_err();
    assert!(matches!(err, ToolError::BadArguments(_)) && err.to_string().contains("Atlantis"), "{err}");
}

#[tokio::test]
async fn the_calculator_computes_and_explains_what_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let tools = build(dir.path(), &ToolsSettings::default());
    let call = |e: &'static str| {
        let tools = &tools;
        async move { tools.call("calculate", json!({ "expression": e })).await }
    };
    assert_eq!(call("1234 * 5678").await.unwrap(), "1234 * 5678 = 7006652");
    assert!(call("1,234 × 5,678").await.unwrap().ends_with("= 7006652"));
    assert!(call("2 ^ 10 + (3 - 1) / 4").await.unwrap().ends_with("= 1024.5"));
    assert!(call("sqrt(16) * 2.5").await.unwrap().ends_with("= 10"));
    // As Qwen2.5-Coder-0.5B wrote "what's 15% of 80".
    assert!(call("15% * 80").await.unwrap().ends_with("= 12"));
    // Extra keys copied from the schema, as Qwen does, are ignored; a stringified object works.
    let answer = tools.call("calculate", json!({"expression": "7 * 6", "required": ["expression"]})).await.unwrap();
    assert!(answer.ends_with("= 42"));
    assert!(tools.call("calculate", json!("{\"expression\": \"7 * 6\"}")).await.unwrap().ends_with("= 42"));

    for bad in ["1 / 0", "std::process::exit(1)", "rm -rf /", "2 +* 3"] {
        let err = call(bad).await.unwrap_err();
        assert!(matches!(err, ToolError::Failed(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains(bad), "the error names the input: {err}");
    }
    assert!(matches!(tools.call("calculate", json!({})).await, Err(ToolError::BadArguments(_))));
}

/// The next announcement, or `None` after `limit`.
async fn announcement(rx: &mut tokio::sync::mpsc::Receiver<String>, limit: Duration) -> Option<String> {
    tokio::time::timeout(limit, rx.recv()).await.ok().flatten()
}

#[tokio::test]
async fn a_reminder_is_announced_at_its_time_even_from_a_tool_box_rebuilt_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ToolsSettings::default();
    let mut first = build(dir.path(), &settings);
    let mut first_rx = first.take_announcements().expect("reminders give announcements");
    assert!(first.start().await.is_empty());
    let set_at = Instant::now();
    let answer =
        first.call("set_reminder", json!({"text": "take the cake out", "when": "in 2 seconds"})).await.unwrap();
    assert!(answer.contains("in 2 seconds") && answer.contains("take the cake out"), "{answer}");
    let list = first.call("list_reminders", json!({})).await.unwrap();
    assert!(list.contains("take the cake out"), "{list}");
    // "Restart": the first box goes before the reminder is due, a new one reads the same data dir.
    first.stop().await;
    drop(first);
    assert_eq!(announcement(&mut first_rx, Duration::from_millis(100)).await, None);

    let mut second = build(dir.path(), &settings);
    let mut rx = second.take_announcements().unwrap();
    assert!(second.take_announcements().is_none(), "the receiver is taken once");
    second.start().await;
    let text = announcement(&mut rx, Duration::from_secs(8)).await.expect("the reminder is announced");
    let after = set_at.elapsed();
    assert_eq!(text, "Reminder: take the cake out");
    assert!(after >= Duration::from_millis(1900) && after < Duration::from_secs(4), "announced after {after:?}");
    // Once said, it is gone, here and after another restart.
    assert_eq!(second.call("list_reminders", json!({})).await.unwrap(), "No reminders are set.");
    second.stop().await;
    drop(second);
    let mut third = build(dir.path(), &settings);
    let mut rx = third.take_announcements().unwrap();
    third.start().await;
    assert_eq!(announcement(&mut rx, Duration::from_millis(500)).await, None);
}

#[tokio::test]
async fn a_reminder_due_while_slowcat_was_stopped_is_announced_at_start_and_a_cancelled_one_never() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ToolsSettings::default();
    {
        // Never started: as if slowcat was stopped right after setting it.
        let tools = build(dir.path(), &settings);
        tools.call("set_reminder", json!({"text": "call mum", "in_seconds": "1"})).await.unwrap();
        tools.call("set_reminder", json!({"message": "water the plants", "in_minutes": 0.02})).await.unwrap();
        let answer = tools.call("cancel_reminder", json!({"text": "plants"})).await.unwrap();
        assert!(answer.contains("water the plants"), "{answer}");
        let err = tools.call("cancel_reminder", json!({"id": 99})).await.unwrap_err();
        assert!(matches!(err, ToolError::Failed(_)), "{err:?}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut tools = build(dir.path(), &settings);
    let mut rx = tools.take_announcements().unwrap();
    let started = Instant::now();
    tools.start().await;
    assert_eq!(announcement(&mut rx, Duration::from_secs(2)).await.as_deref(), Some("Reminder: call mum"));
    assert!(started.elapsed() < Duration::from_secs(1), "overdue: announced at start");
    assert_eq!(announcement(&mut rx, Duration::from_millis(1500)).await, None, "the cancelled one stays silent");

    let err = tools.call("set_reminder", json!({"text": "nothing"})).await.unwrap_err();
    assert!(matches!(err, ToolError::BadArguments(_)), "no time given: {err:?}");
    let err = tools.call("set_reminder", json!({"text": "nothing", "when": "10"})).await.unwrap_err();
    assert!(err.to_string().contains("in 5 minutes"), "a bare number is refused with the format: {err}");
    // What Qwen2.5-Coder-0.5B sent: a delay and a clock time copied from elsewhere; the delay wins.
    let answer = tools
        .call("set_reminder", json!({"text": "check the laundry", "in_minutes": 5, "at": "2026-01-05 09:00"}))
        .await
        .unwrap();
    assert!(answer.contains("in 5 minutes"), "{answer}");
    let answer = tools.call("set_reminder", json!({"text": "stand-up", "when": "at 23:59"})).await.unwrap();
    assert!(answer.contains("23:59:00"), "{answer}");
    tools.stop().await;
}

#[tokio::test]
async fn remembered_facts_are_recalled_after_a_restart_and_can_be_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ToolsSettings::default();
    {
        let tools = build(dir.path(), &settings);
        assert_eq!(tools.call("recall", json!({})).await.unwrap(), "Nothing has been remembered yet.");
        tools.call("remember", json!({"fact": "The user's sister is called Ana."})).await.unwrap();
        tools.call("remember", json!({"fact": "The user parks on level 3."})).await.unwrap();
        let again = tools.call("remember", json!({"fact": "The user parks on level 3."})).await.unwrap();
        assert!(again.contains("Already"), "{again}");
    }
    let tools = build(dir.path(), &settings);
    let found = tools.call("recall", json!({"query": "sister name"})).await.unwrap();
    assert!(found.starts_with("fact 1: The user's sister is called Ana."), "{found}");
    assert!(!found.contains("level 3"), "only what matches: {found}");
    let all = tools.call("recall", json!({})).await.unwrap();
    assert!(all.contains("Ana") && all.contains("level 3"), "{all}");

    let forgot = tools.call("forget", json!({"query": "where does the user park"})).await.unwrap();
    assert!(forgot.contains("level 3"), "{forgot}");
    let found = tools.call("recall", json!({"query": "park"})).await.unwrap();
    assert!(found.starts_with("No remembered fact matches"), "{found}");
    assert!(tools.call("recall", json!({"query": "Ana"})).await.unwrap().contains("sister"));
}

/// A tiny HTTP/1.1 server on 127.0.0.1: answers every request with `body` as `content_type`, and
/// sends each request line it saw on the channel.
async fn serve(content_type: &'static str, body: String) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let _ = tx.send(text.lines().next().unwrap_or_default().to_string());
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
            });
        }
    });
    (port, rx)
}

const PAGE: &str = "<html><head><title>Cakes</title><style>p { color: red }</style></head><body>\
    <h1>Lemon drizzle</h1><p>Bake for <b>45 minutes</b> at 180 degrees.</p>\
    <script>var secret = 1;</script></body></html>";

#[tokio::test]
async fn a_web_page_on_this_machine_is_refused_unless_allowed_and_then_read_as_text() {
    let (port, mut requests) = serve("text/html; charset=utf-8", PAGE.to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let guarded = build(dir.path(), &ToolsSettings::default());
    for url in [
        format!("http://127.0.0.1:{port}/cake"),
        format!("http://localhost:{port}/cake"),
        format!("http://[::ffff:127.0.0.1]:{port}/cake"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
    ] {
        let err = guarded.call("fetch_web_page", json!({ "url": url })).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{url}: {err}");
    }
    for url in ["file:///etc/passwd", "ftp://example.org/x"] {
        let err = guarded.call("fetch_web_page", json!({ "url": url })).await.unwrap_err();
        assert!(matches!(err, ToolError::BadArguments(_)) && err.to_string().contains("http"), "{url}: {err}");
    }
    assert!(requests.try_recv().is_err(), "no request reached the local server");

    let settings = ToolsSettings { allow_private_addresses: true, ..Default::default() };
    let open = build(dir.path(), &settings);
    let text = open.call("fetch_web_page", json!({"url": format!("http://127.0.0.1:{port}/cake")})).await.unwrap();
    assert_eq!(requests.recv().await.unwrap(), "GET /cake HTTP/1.1");
    assert!(text.contains("Lemon drizzle") && text.contains("Bake for 45 minutes at 180 degrees."), "{text}");
    assert!(
        !text.contains('<') && !text.contains("secret") && !text.contains("color"),
        "markup and code dropped: {text}"
    );

    // The limits: a long page is cut, and says so.
    let settings = ToolsSettings { allow_private_addresses: true, max_text_chars: 20, ..Default::default() };
    let text = build(dir.path(), &settings)
        .call("fetch_web_page", json!({"url": format!("http://127.0.0.1:{port}/")}))
        .await
        .unwrap();
    assert!(text.ends_with("[the rest of the page was cut]") && text.len() < 120, "{text}");
}

#[tokio::test]
async fn a_page_that_never_answers_times_out() {
    // Accepts and then says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let settings = ToolsSettings { allow_private_addresses: true, fetch_timeout_secs: 0.5, ..Default::default() };
    let started = Instant::now();
    let err = build(dir.path(), &settings)
        .call("fetch_web_page", json!({"url": format!("http://127.0.0.1:{port}/")}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("longer than"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn web_search_sends_the_query_to_the_configured_endpoint_and_lists_results() {
    let results = json!({"results": [
        {"title": "Lemon drizzle cake", "url": "https://cakes.example/lemon", "content": "A classic bake."},
        {"title": "Victoria sponge", "url": "https://cakes.example/sponge", "content": "Jam and cream."}
    ]});
    let (port, mut requests) = serve("application/json", results.to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = ToolsSettings {
        search_url: format!("http://127.0.0.1:{port}/search?q={{query}}&format=json"),
        ..Default::default()
    };
    let tools = build(dir.path(), &settings);
    let text = tools.call("web_search", json!({"query": "cake recipes & tips"})).await.unwrap();
    assert_eq!(requests.recv().await.unwrap(), "GET /search?q=cake+recipes+%26+tips&format=json HTTP/1.1");
    assert!(text.starts_with("1. Lemon drizzle cake (https://cakes.example/lemon)\nA classic bake."), "{text}");
    assert!(text.contains("2. Victoria sponge"), "{text}");
}
