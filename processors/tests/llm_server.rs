//! `user_turn` and `openai_llm` against the real llama.cpp server (`scripts/llm-server.sh`, or
//! the one `SLOWCAT_LLM_URL` names). What the 135M model says is never asserted, only how it
//! arrives.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod llm_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llm_support::{assert_reply, llm, real_server_turn, real_server_url, request, texts, turn};
use slowcat_bench::llm::{TapKind, TapProxy};
use slowcat_processors::harness::Harness;
use slowcat_processors::llm::{OpenAiLlmSettings, UserTurn, UserTurnSettings, probe};
use slowcat_processors::{Direction, Frame, Transcription};

const LIMIT: Duration = Duration::from_secs(60);

fn settings(base_url: String) -> OpenAiLlmSettings {
    OpenAiLlmSettings { base_url, max_tokens: 48, temperature: 0.7, ..Default::default() }
}

#[tokio::test]
async fn the_server_lists_its_models() {
    let _server = real_server_turn().await;
    let models = probe(&real_server_url(), None).await.expect("the server answers /models");
    assert!(!models.is_empty() && models.iter().all(|m| !m.trim().is_empty()), "{models:?}");
}

#[tokio::test]
async fn a_reply_streams_as_separate_text_frames_as_tokens_arrive() {
    let _server = real_server_turn().await;
    let mut h = Harness::start(vec![llm(settings(real_server_url()))]).await;
    let before = h.output().downstream.len();
    h.send(request(1, "Tell me a short story about a cat who learns to fly.")).await;
    // Note when each frame comes out, to tell a stream from a reply delivered at once.
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let log = arrivals.clone();
    h.wait_for(LIMIT, move |f, _| {
        log.lock().unwrap().push((f.name(), Instant::now()));
        matches!(f, Frame::LlmResponseEnd)
    })
    .await
    .expect("the reply ends");
    let frames = h.output().downstream[before..].to_vec();
    let chunks = assert_reply(&frames, 1, 2);
    assert!(!chunks.concat().trim().is_empty());
    assert!(
        frames.iter().any(
            |f| matches!(f, Frame::Metrics(m) if m.name == slowcat_processors::MetricName::LlmTtfb && m.turn == Some(1))
        ),
        "llm_ttfb is reported"
    );
    let arrivals = arrivals.lock().unwrap().clone();
    let first_text = arrivals.iter().find(|(n, _)| *n == "LlmText").unwrap().1;
    let end = arrivals.iter().find(|(n, _)| *n == "LlmResponseEnd").unwrap().1;
    // Generating 2+ more tokens takes the server tens of milliseconds; a client that buffered the
    // reply would hand everything over at the same instant.
    assert!(end - first_text > Duration::from_millis(10), "text came all at once: {:?}", end - first_text);

    // Warm-up raised no error, and a second turn on the same client works.
    assert_reply(&turn(&mut h, 2, "And then what happened?", LIMIT).await, 2, 2);
    assert!(llm_support::errors(&h.output().downstream).is_empty());
    h.finish(LIMIT).await;
}

/// `seed` reaches the server's sampler: the same question, sampled at a high temperature, gets the
/// same words under one seed and other words under another.
#[tokio::test]
async fn the_seed_decides_the_reply() {
    let _server = real_server_turn().await;
    let question = "Invent a name for a pet dragon and say why.";
    let mut replies = Vec::new();
    for seed in [1234, 1234, 99] {
        let seeded = OpenAiLlmSettings {
            seed: Some(seed),
            temperature: 1.2,
            warmup: false,
            prefill_next_turn: false,
            ..settings(real_server_url())
        };
        let mut h = Harness::start(vec![llm(seeded)]).await;
        replies.push(assert_reply(&turn(&mut h, 1, question, LIMIT).await, 1, 2).concat());
        h.finish(LIMIT).await;
    }
    assert_eq!(replies[0], replies[1], "the same seed gave different replies");
    assert_ne!(replies[0], replies[2], "another seed gave the same reply: the seed is not used");
}

#[tokio::test]
async fn a_transcription_is_answered_through_user_turn_with_the_model_the_server_lists() {
    let _server = real_server_turn().await;
    let user_turn = Box::new(UserTurn::new(UserTurnSettings::default()));
    let s = OpenAiLlmSettings { model: String::new(), warmup: false, ..settings(real_server_url()) };
    let mut h = Harness::start(vec![user_turn, llm(s)]).await;
    h.send(Frame::Transcription(Box::new(Transcription {
        text: "What is the capital of France?".into(),
        speaker: "default".into(),
        turn: 7,
        start: Duration::ZERO,
        end: Duration::from_secs(2),
        processing: Duration::from_millis(150),
    })))
    .await;
    h.wait_for(LIMIT, |f, _| matches!(f, Frame::LlmResponseEnd)).await.expect("the reply ends");
    let frames = h.output().downstream.clone();
    let transcription = frames.iter().position(|f| matches!(f, Frame::Transcription(t) if t.turn == 7));
    let start = frames.iter().position(|f| matches!(f, Frame::LlmResponseStart { .. }));
    assert!(transcription < start, "the transcription travels on, ahead of the reply: {frames:?}");
    let from_reply: Vec<Frame> =
        frames.into_iter().skip_while(|f| !matches!(f, Frame::LlmResponseStart { .. })).collect();
    assert_reply(&from_reply, 7, 1);
    h.finish(LIMIT).await;
}

#[tokio::test]
async fn an_interruption_closes_the_connection_at_once_and_nothing_of_the_reply_follows() {
    let _server = real_server_turn().await;
    let server_url = real_server_url();
    let url = reqwest::Url::parse(&server_url).unwrap();
    let upstream: SocketAddr = tokio::net::lookup_host((url.host_str().unwrap(), url.port_or_known_default().unwrap()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TapProxy::start(upstream).await.unwrap();
    let s = OpenAiLlmSettings {
        max_tokens: 400,
        warmup: false,
        ..settings(format!("http://{}{}", proxy.addr(), url.path()))
    };
    let mut h = Harness::start(vec![llm(s)]).await;

    h.send(request(1, "Write a long story about a dragon and a knight, with many details.")).await;
    let mut seen = 0;
    h.wait_for(LIMIT, |f, _| {
        seen += matches!(f, Frame::LlmText(_)) as usize;
        seen == 2
    })
    .await
    .expect("text streams");
    assert!(!h.output().downstream.iter().any(|f| matches!(f, Frame::LlmResponseEnd)), "still generating");
    let conn = proxy
        .events()
        .iter()
        .find_map(|e| matches!(e.kind, TapKind::FromClient(_)).then_some(e.conn))
        .expect("the proxy carried the request");

    let interrupted_at = Instant::now();
    h.send(Frame::Interruption).await;
    h.wait_for(LIMIT, |f, d| matches!(f, Frame::Interruption) && d == Direction::Downstream)
        .await
        .expect("the interruption travels on");
    let mut closed_after = None;
    while interrupted_at.elapsed() < Duration::from_secs(5) {
        let closed = proxy.events().iter().find_map(|e| {
            (e.conn == conn && e.kind == TapKind::ClientClosed).then(|| e.at.saturating_duration_since(interrupted_at))
        });
        if closed.is_some() {
            closed_after = closed;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let closed_after = closed_after.expect("the client closed its connection after the interruption");
    eprintln!("connection closed {closed_after:?} after the interruption");
    // 400 tokens take the server several seconds: a close this soon is the interruption's doing.
    assert!(closed_after < Duration::from_secs(1), "closed only after {closed_after:?}");

    // Nothing of the aborted reply comes out after the interruption.
    h.wait_for(Duration::from_millis(500), |_, _| false).await;
    let out = &h.output().downstream;
    let at = out.iter().position(|f| matches!(f, Frame::Interruption)).unwrap();
    let after: Vec<&Frame> = out[at..]
        .iter()
        .filter(|f| matches!(f, Frame::LlmText(_) | Frame::LlmResponseEnd | Frame::Speak(_) | Frame::Error(_)))
        .collect();
    assert!(after.is_empty(), "after the interruption: {after:?}");

    // The next turn is answered normally.
    let frames = turn(&mut h, 2, "Say hello.", LIMIT).await;
    assert_reply(&frames, 2, 1);
    assert!(!texts(&frames).is_empty());
    h.finish(LIMIT).await;
}
