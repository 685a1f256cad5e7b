//! `openai_llm` against a server that misbehaves on purpose (the real server cannot be made to):
//! each fault gives an error frame, a closed reply, a spoken apology, and the next turn works.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod llm_support;

use std::time::Duration;

use llm_support::{
    FakeServer, Reply, assert_fault, assert_reply, free_port, llm, request, scripted_settings, texts, turn,
};
use slowcat_processors::Frame;
use slowcat_processors::harness::Harness;
use slowcat_processors::llm::OpenAiLlmSettings;

const LIMIT: Duration = Duration::from_secs(10);

async fn harness(settings: OpenAiLlmSettings) -> Harness {
    Harness::start(vec![llm(settings)]).await
}

#[tokio::test]
async fn a_good_stream_becomes_separate_text_frames_and_the_request_is_openai_shaped() {
    let server = FakeServer::start(vec![Reply::Stream(vec!["Paris", " is", " the", " capital."])]).await;
    let mut h = harness(scripted_settings(server.base_url())).await;
    let frames = turn(&mut h, 1, "What is the capital of France?", LIMIT).await;
    assert_eq!(assert_reply(&frames, 1, 4), ["Paris", " is", " the", " capital."]);
    let ttfb = frames.iter().find_map(|f| match f {
        Frame::Metrics(m) if m.name == slowcat_processors::MetricName::LlmTtfb => Some(m.turn),
        _ => None,
    });
    assert_eq!(ttfb, Some(Some(1)), "llm_ttfb is reported for the turn");

    let sent: serde_json::Value = serde_json::from_str(&server.chat_requests()[0]).unwrap();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], "fake-model");
    assert_eq!(sent["messages"][1]["role"], "user");
    assert_eq!(sent["messages"][1]["content"], "What is the capital of France?");
    assert!(sent.get("seed").is_none(), "no seed unless one is set: {sent}");
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_configured_seed_plus_the_turn_goes_with_every_reply_request() {
    let server = FakeServer::start(vec![Reply::Stream(vec!["Hi."]), Reply::Stream(vec!["Hello."])]).await;
    let mut h = harness(OpenAiLlmSettings { seed: Some(7), ..scripted_settings(server.base_url()) }).await;
    assert_reply(&turn(&mut h, 1, "Hi there.", LIMIT).await, 1, 1);
    assert_reply(&turn(&mut h, 2, "Hello again.", LIMIT).await, 2, 1);
    let seeds: Vec<serde_json::Value> = server
        .chat_requests()
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["seed"].clone())
        .collect();
    // Each turn its own seed: one seed for all would draw the same numbers every turn.
    assert_eq!(seeds, [8, 9]);
    h.finish(LIMIT).await;
}

/// After a reply, the chat as the next turn begins it goes to the server for one token, so a
/// server with a prompt cache has read it before the user's next question; the next turn waits for
/// it rather than racing it, and is answered as usual.
#[tokio::test]
async fn after_a_reply_the_next_turns_prompt_is_sent_ahead_for_one_token() {
    let server = FakeServer::start(vec![Reply::Stream(vec!["Paris", " is", " the", " capital."])]).await;
    let mut h = harness(OpenAiLlmSettings { prefill_next_turn: true, ..scripted_settings(server.base_url()) }).await;
    turn(&mut h, 1, "What is the capital of France?", LIMIT).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while server.chat_requests().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let requests = server.chat_requests();
    assert_eq!(requests.len(), 2, "no request ahead of the next turn");
    let ahead: serde_json::Value = serde_json::from_str(&requests[1]).unwrap();
    assert_eq!(ahead["stream"], false);
    assert_eq!(ahead["max_tokens"], 1);
    let first: serde_json::Value = serde_json::from_str(&requests[0]).unwrap();
    let messages = ahead["messages"].as_array().unwrap();
    assert_eq!(messages[..2], first["messages"].as_array().unwrap()[..], "it begins as the answered request");
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], "Paris is the capital.");
    assert_eq!(messages[3]["role"], "user");
    assert_eq!(messages[3]["content"], "");
    assert_eq!(messages.len(), 4);

    let frames = turn(&mut h, 2, "And of Spain?", LIMIT).await;
    assert_reply(&frames, 2, 1);
    // Nothing of the request ahead reaches the pipeline: one start and one end per turn.
    let out = h.finish(LIMIT).await;
    let starts = out.downstream.iter().filter(|f| matches!(f, Frame::LlmResponseStart { .. })).count();
    assert_eq!(starts, 2);
}

/// While the end of the turn is decided, the request the turn will make with the words so far goes
/// to the server in full: when the turn ends with those words, its reply is that request's (the
/// server answers once, and sooner); when the user said more, it is dropped and the turn's own
/// request is answered. Nothing of a request sent ahead reaches the pipeline but its reply.
#[tokio::test]
async fn a_request_sent_ahead_is_the_turns_when_the_words_are_the_same() {
    let noon = || Reply::Stream(vec!["It", " is", " noon."]);
    for (read_ahead_turn, ahead_words, script) in [
        (true, "What time is it?", vec![noon()]),
        (true, "What time", vec![Reply::Stream(vec!["Time", " for", " what?"]), noon()]),
        (false, "What time is it?", vec![noon()]),
    ] {
        let server = FakeServer::start(script).await;
        let mut h = harness(OpenAiLlmSettings { read_ahead_turn, ..scripted_settings(server.base_url()) }).await;
        let Frame::LlmRequest(asked) = request(1, ahead_words) else { unreachable!() };
        h.send(Frame::LlmReadAhead(asked)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while read_ahead_turn && server.chat_requests().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let frames = turn(&mut h, 1, "What time is it?", LIMIT).await;
        let requests = server.chat_requests();
        let case = format!("read_ahead_turn = {read_ahead_turn}, {ahead_words:?} ahead");
        assert_eq!(assert_reply(&frames, 1, 3), ["It", " is", " noon."], "{case}");
        let bodies: Vec<serde_json::Value> = requests.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
        let expected = if read_ahead_turn && ahead_words != "What time is it?" { 2 } else { 1 };
        assert_eq!(bodies.len(), expected, "{case}: {requests:?}");
        let answered = bodies.last().unwrap();
        assert_eq!(
            (&answered["stream"], &answered["max_tokens"]),
            (&true.into(), &scripted_settings(String::new()).max_tokens.into())
        );
        let last = answered["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["content"], "What time is it?", "{case}: the turn's words are answered");
        let out = h.finish(LIMIT).await;
        assert!(!out.downstream.iter().any(|f| matches!(f, Frame::LlmReadAhead(_))));
        let starts = out.downstream.iter().filter(|f| matches!(f, Frame::LlmResponseStart { .. })).count();
        assert_eq!(starts, 1, "{case}");
    }
}

#[tokio::test]
async fn a_server_that_ignores_stream_true_still_gets_its_answer_through() {
    let json =
        r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there."}}]}"#;
    let server = FakeServer::start(vec![Reply::Status(200, json)]).await;
    let mut h = harness(scripted_settings(server.base_url())).await;
    assert_eq!(assert_reply(&turn(&mut h, 1, "Hi", LIMIT).await, 1, 1), ["Hi there."]);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn malformed_event_streams_are_errors_and_the_next_turn_works() {
    let server = FakeServer::start(vec![
        // Garbage lines (ignored by the SSE rules), one good piece, then JSON that is not JSON.
        Reply::RawSse(
            "garbage without a colon\n: a comment\nnonsense: field\n\n\
             data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
             data: {\"choices\": [oops\n\n",
        ),
        // Not an event stream at all.
        Reply::RawSse("<html><body>502 Bad Gateway</body></html>\n"),
        // An error reported inside the stream.
        Reply::RawSse("data: {\"error\":{\"message\":\"context length exceeded\"}}\n\n"),
    ])
    .await;
    let mut h = harness(scripted_settings(server.base_url())).await;

    let frames = turn(&mut h, 1, "Hi", LIMIT).await;
    assert_fault(&frames, 1, &["malformed", &server.base_url(), "oops"]);
    assert_eq!(texts(&frames), ["Hel"], "text before the bad event still goes out");

    let frames = turn(&mut h, 2, "Hi", LIMIT).await;
    assert_fault(&frames, 2, &["malformed", "no server-sent events"]);
    assert!(texts(&frames).is_empty());

    let frames = turn(&mut h, 3, "Hi", LIMIT).await;
    assert_fault(&frames, 3, &["reported an error", "context length exceeded"]);

    let frames = turn(&mut h, 4, "Hi", LIMIT).await;
    assert_reply(&frames, 4, 2);
    assert_eq!(server.chat_requests().len(), 4, "malformed replies are not retried");
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_5xx_shows_its_body_is_retried_a_bounded_number_of_times_and_the_next_turn_works() {
    let body = r#"{"error":"model crashed: out of memory"}"#;
    let server = FakeServer::start(vec![Reply::Status(500, body); 3]).await;
    let mut h = harness(scripted_settings(server.base_url())).await;

    let frames = turn(&mut h, 1, "Hi", LIMIT).await;
    assert_fault(&frames, 1, &["HTTP 500", "model crashed: out of memory", &server.base_url()]);
    assert_eq!(server.chat_requests().len(), 3, "one request and `retries` = 2 retries");

    let frames = turn(&mut h, 2, "Hi", LIMIT).await;
    assert_reply(&frames, 2, 2);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_4xx_is_not_retried() {
    let server = FakeServer::start(vec![Reply::Status(400, "unknown model 'fake-model'")]).await;
    let mut h = harness(scripted_settings(server.base_url())).await;
    let frames = turn(&mut h, 1, "Hi", LIMIT).await;
    assert_fault(&frames, 1, &["HTTP 400", "unknown model 'fake-model'"]);
    assert_eq!(server.chat_requests().len(), 1);
    assert_reply(&turn(&mut h, 2, "Hi", LIMIT).await, 2, 2);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_server_busy_at_first_is_retried_before_the_first_token_without_the_user_noticing() {
    let server = FakeServer::start(vec![
        Reply::Status(503, "model loading"),
        Reply::DropAfter(vec![]),
        Reply::Stream(vec!["Hi", " there."]),
    ])
    .await;
    let mut h = harness(scripted_settings(server.base_url())).await;
    let frames = turn(&mut h, 1, "Hi", LIMIT).await;
    assert_eq!(assert_reply(&frames, 1, 2), ["Hi", " there."]);
    assert_eq!(server.chat_requests().len(), 3);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn no_token_before_the_first_token_timeout_is_an_error_and_the_next_turn_works() {
    let server = FakeServer::start(vec![Reply::Silent]).await;
    let mut h =
        harness(OpenAiLlmSettings { first_token_timeout_ms: 300, ..scripted_settings(server.base_url()) }).await;
    let frames = turn(&mut h, 1, "Hi", LIMIT).await;
    assert_fault(&frames, 1, &["within 300 ms", "first_token_timeout_ms"]);
    assert_eq!(server.chat_requests().len(), 1, "a slow server is not sent more requests");
    assert_reply(&turn(&mut h, 2, "Hi", LIMIT).await, 2, 2);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_disconnect_mid_stream_keeps_the_text_so_far_then_apologises_and_the_next_turn_works() {
    let server = FakeServer::start(vec![Reply::DropAfter(vec!["Once", " upon"])]).await;
    let mut h = harness(scripted_settings(server.base_url())).await;
    let frames = turn(&mut h, 1, "Tell me a story", LIMIT).await;
    assert_fault(&frames, 1, &["closed the connection"]);
    assert_eq!(texts(&frames), ["Once", " upon"]);
    assert_eq!(server.chat_requests().len(), 1, "no retry once text went out: it would repeat it");
    assert_reply(&turn(&mut h, 2, "Hi", LIMIT).await, 2, 2);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn connection_refused_names_the_url_and_what_to_start_and_a_server_started_later_is_used() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let mut h = harness(scripted_settings(url.clone())).await;
    let frames = turn(&mut h, 1, "Hi", LIMIT).await;
    let message = assert_fault(&frames, 1, &[&url, "scripts/llm-server.sh start", "LM Studio"]);
    assert!(message.to_lowercase().contains("refused"), "{message}");

    let server = FakeServer::start_on(port, vec![]).await;
    assert_reply(&turn(&mut h, 2, "Hi", LIMIT).await, 2, 2);
    assert_eq!(server.chat_requests().len(), 1);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn a_server_down_at_start_gives_a_warning_naming_the_url_and_the_pipeline_still_runs() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let mut h =
        harness(OpenAiLlmSettings { warmup: true, model: String::new(), ..scripted_settings(url.clone()) }).await;
    let warning = h.wait_for(LIMIT, |f, _| matches!(f, Frame::Error(_))).await.expect("a warm-up warning");
    let Frame::Error(e) = warning else { unreachable!() };
    assert!(e.message.contains("warm-up") && e.message.contains(&url), "{}", e.message);
    assert!(e.message.contains("scripts/llm-server.sh start"), "{}", e.message);
    assert!(e.recoverable);
    assert!(!h.output().downstream.iter().any(|f| matches!(f, Frame::Speak(_))), "nothing is said at start");

    // The server comes up; with `model` empty the client asks it which model to use.
    let server = FakeServer::start_on(port, vec![]).await;
    assert_reply(&turn(&mut h, 1, "Hi", LIMIT).await, 1, 2);
    let sent: serde_json::Value = serde_json::from_str(&server.chat_requests()[0]).unwrap();
    assert_eq!(sent["model"], "fake-model");
    h.finish(LIMIT).await;
}
