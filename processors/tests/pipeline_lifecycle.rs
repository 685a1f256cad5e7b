//! The runtime's lifecycle: start, end of stream, cancel, interruption, bounded shutdown.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use slowcat_processors::basic::Passthrough;
use slowcat_processors::harness::Harness;
use slowcat_processors::{BoxProcessor, Direction, Frame, PipelineOptions, ProcessError, Processor, ProcessorContext};

type Log = Arc<Mutex<Vec<String>>>;

/// Records what reaches it, and behaves badly on request.
struct Probe {
    log: Log,
    /// Sleep this long in `process` for data frames.
    data_delay: Duration,
    /// Never return from `process` for data frames / from `stop`.
    hang_on_data: bool,
    hang_on_stop: bool,
    panic_on: Option<&'static str>,
    /// Let the runtime forward upstream frames without showing them to the probe.
    bypass_upstream: bool,
}

impl Probe {
    fn new(log: &Log) -> Self {
        Self {
            log: log.clone(),
            data_delay: Duration::ZERO,
            hang_on_data: false,
            hang_on_stop: false,
            panic_on: None,
            bypass_upstream: false,
        }
    }
}

fn text(f: &Frame) -> Option<&str> {
    match f {
        Frame::LlmText(t) => Some(t),
        _ => None,
    }
}

#[async_trait]
impl Processor for Probe {
    async fn start(&mut self, _ctx: &ProcessorContext) -> Result<(), ProcessError> {
        self.log.lock().unwrap().push("start".into());
        Ok(())
    }

    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        if let Some(t) = text(&frame) {
            if self.panic_on == Some("data") && t == "boom" {
                panic!("probe exploded");
            }
            self.log.lock().unwrap().push(format!("begin {t}"));
            if self.hang_on_data {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.data_delay).await;
            self.log.lock().unwrap().push(format!("done {t}"));
        } else {
            self.log.lock().unwrap().push(frame.name().to_string());
        }
        ctx.push(frame, dir).await;
        Ok(())
    }

    async fn interrupted(&mut self, _ctx: &ProcessorContext) {
        self.log.lock().unwrap().push("interrupted".into());
    }

    async fn stop(&mut self) {
        if self.hang_on_stop {
            std::future::pending::<()>().await;
        }
    }

    fn accepts(&self) -> slowcat_processors::processor::Accepts {
        if self.bypass_upstream {
            slowcat_processors::processor::accepts::downstream
        } else {
            slowcat_processors::processor::accepts::everything
        }
    }
}

fn words(frames: &[Frame]) -> Vec<String> {
    frames.iter().filter_map(text).map(str::to_string).collect()
}

#[tokio::test]
async fn start_reaches_every_processor_before_data_and_end_drains_in_order() {
    let logs: Vec<Log> = (0..3).map(|_| Log::default()).collect();
    let procs: Vec<BoxProcessor> = logs.iter().map(|l| Box::new(Probe::new(l)) as BoxProcessor).collect();
    let frames: Vec<Frame> = (0..200).map(|i| Frame::LlmText(i.to_string())).collect();
    let out = Harness::run(procs, frames).await;

    let expected: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(words(&out.downstream), expected, "data must come out complete and in order");
    assert_eq!(out.downstream.first(), Some(&Frame::Start));
    assert_eq!(out.downstream.last(), Some(&Frame::End), "End comes out after all data");
    for log in &logs {
        let log = log.lock().unwrap();
        assert_eq!(log.first().map(String::as_str), Some("start"), "start must precede data: {log:?}");
    }
    assert!(out.hung.is_empty());
}

#[tokio::test]
async fn upstream_frames_reach_the_head_and_downstream_the_tail() {
    let h = Harness::start(vec![Box::new(Passthrough), Box::new(Passthrough)]).await;
    h.send_upstream(Frame::BotStartedSpeaking).await;
    h.send(Frame::LlmText("down".into())).await;
    let out = h.finish(Duration::from_secs(5)).await;
    assert!(out.upstream.contains(&Frame::BotStartedSpeaking), "{:?}", out.upstream);
    assert_eq!(words(&out.downstream), vec!["down"]);
}

#[tokio::test]
async fn interruption_cancels_in_flight_work_and_drops_queued_data_but_not_system_frames_or_end() {
    let log = Log::default();
    let mut probe = Probe::new(&log);
    probe.data_delay = Duration::from_secs(30);
    let mut h = Harness::start(vec![Box::new(probe)]).await;
    for i in 0..5 {
        h.send(Frame::LlmText(format!("d{i}"))).await;
    }
    // Wait until the first data frame is in flight.
    let t0 = Instant::now();
    while !log.lock().unwrap().contains(&"begin d0".to_string()) {
        assert!(t0.elapsed() < Duration::from_secs(5), "processor never started on data");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    h.send(Frame::End).await; // queued behind the data: must survive the interruption
    h.send(Frame::UserStartedSpeaking { turn: 1, at: Duration::ZERO }).await;
    let started = Instant::now();
    h.send(Frame::Interruption).await;
    let got = h.wait_for(Duration::from_secs(5), |f, _| matches!(f, Frame::Interruption)).await;
    assert!(got.is_some(), "the interruption must come out");
    assert!(started.elapsed() < Duration::from_secs(1), "in-flight work must be cancelled, not awaited");
    let out = h.finish(Duration::from_secs(5)).await;

    assert!(words(&out.downstream).is_empty(), "queued and in-flight data must be dropped: {:?}", out.downstream);
    assert!(
        out.downstream.contains(&Frame::UserStartedSpeaking { turn: 1, at: Duration::ZERO }),
        "system frames survive"
    );
    assert!(out.downstream.contains(&Frame::End), "end of stream survives");
    let log = log.lock().unwrap();
    assert!(!log.contains(&"done d0".to_string()), "the in-flight call must not complete: {log:?}");
    assert!(log.contains(&"interrupted".to_string()));
    assert!(!log.iter().any(|l| l == "begin d1"), "queued data must never reach the processor: {log:?}");
}

/// Starts a probe busy with a long call, then sends `BotStartedSpeaking` upstream through it;
/// true when the event came out while the call was still in flight.
async fn speaking_event_passes_a_busy_processor(bypass_upstream: bool) -> bool {
    let log = Log::default();
    let mut probe = Probe::new(&log);
    probe.data_delay = Duration::from_secs(30);
    probe.bypass_upstream = bypass_upstream;
    let mut h = Harness::start(vec![Box::new(probe)]).await;
    h.send(Frame::LlmText("long synthesis".into())).await;
    let t0 = Instant::now();
    while !log.lock().unwrap().iter().any(|l| l.starts_with("begin")) {
        assert!(t0.elapsed() < Duration::from_secs(5), "processor never started on data");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    h.send_upstream(Frame::BotStartedSpeaking).await;
    let passed = h
        .wait_for(Duration::from_millis(500), |f, d| matches!(f, Frame::BotStartedSpeaking) && d == Direction::Upstream)
        .await
        .is_some();
    let seen = log.lock().unwrap().iter().any(|l| l == "BotStartedSpeaking");
    let _ = h.cancel().await;
    if bypass_upstream {
        assert!(!seen, "a bypassed frame must not reach the processor");
    }
    passed
}

#[tokio::test]
async fn bypassed_system_frames_pass_a_call_in_flight_and_the_others_wait_for_it() {
    // A processor that never looks at upstream frames (the TTS, the LLM) must not hold the
    // speaker's speaking events while it synthesizes: barge-in needs them at once.
    assert!(speaking_event_passes_a_busy_processor(true).await, "the bypassed event waited for the call");
    // One that handles them sees them in order, after the call in flight.
    assert!(!speaking_event_passes_a_busy_processor(false).await, "the event overtook a processor that handles it");
}

#[tokio::test]
async fn system_frames_overtake_queued_data() {
    let log = Log::default();
    let mut probe = Probe::new(&log);
    probe.data_delay = Duration::from_millis(200);
    let mut h = Harness::start(vec![Box::new(probe)]).await;
    for i in 0..3 {
        h.send(Frame::LlmText(format!("d{i}"))).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.send(Frame::UserStartedSpeaking { turn: 1, at: Duration::ZERO }).await;
    h.wait_for(Duration::from_secs(5), |f, _| matches!(f, Frame::LlmText(t) if t == "d2")).await;
    let out = h.finish(Duration::from_secs(5)).await;
    let pos = |pred: &dyn Fn(&Frame) -> bool| out.downstream.iter().position(pred).unwrap();
    assert!(
        pos(&|f| matches!(f, Frame::UserStartedSpeaking { .. }))
            < pos(&|f| matches!(f, Frame::LlmText(t) if t == "d1")),
        "a system frame sent after queued data must come out before it: {:?}",
        out.downstream
    );
}

#[tokio::test]
async fn cancel_returns_within_bounds_and_names_a_processor_that_never_returns() {
    let log = Log::default();
    let mut hung = Probe::new(&log);
    hung.hang_on_data = true;
    hung.hang_on_stop = true;
    let procs: Vec<(String, BoxProcessor)> = vec![
        ("first".into(), Box::new(Passthrough)),
        ("stuck".into(), Box::new(hung)),
        ("last".into(), Box::new(Passthrough)),
    ];
    let h = Harness::start_with(procs, PipelineOptions::default()).await;
    h.send(Frame::LlmText("x".into())).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let out = h.cancel().await;
    assert!(t.elapsed() < Duration::from_secs(2), "cancel took {:?}", t.elapsed());
    assert_eq!(out.hung, vec!["stuck".to_string()], "the hung processor must be named");
    assert!(out.downstream.contains(&Frame::Cancel), "cancel travels the whole pipeline");
}

#[tokio::test]
async fn a_panicking_processor_becomes_an_error_and_the_next_frame_still_flows() {
    let log = Log::default();
    let mut probe = Probe::new(&log);
    probe.panic_on = Some("data");
    let frames = vec![Frame::LlmText("boom".into()), Frame::LlmText("after".into())];
    let out = Harness::run(vec![Box::new(probe)], frames).await;
    assert!(
        out.downstream.iter().any(|f| matches!(f, Frame::Error(e) if e.message.contains("probe exploded"))),
        "{:?}",
        out.downstream
    );
    assert_eq!(words(&out.downstream), vec!["after"]);
}
