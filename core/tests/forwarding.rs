//! Forward by default: a processor sees only the frames it accepts, and every other frame goes
//! on without it, in order.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use slowcat_core::frame::Metric;
use slowcat_core::harness::Harness;
use slowcat_core::processor::Accepts;
use slowcat_core::{Direction, Frame, ProcessError, Processor, ProcessorContext};

/// Handles `Speak` only: shouts it, and notes every frame it is shown.
struct Shout {
    seen: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Processor for Shout {
    fn accepts(&self) -> Accepts {
        |frame, _| matches!(frame, Frame::Speak(_))
    }

    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        self.seen.lock().unwrap().push(frame.name().to_string());
        let frame = match frame {
            Frame::Speak(text) => Frame::Speak(text.to_uppercase()),
            other => other,
        };
        ctx.push(frame, dir).await;
        Ok(())
    }
}

fn metric(n: u64) -> Frame {
    Frame::Metrics(Box::new(Metric {
        source: "test".into(),
        turn: Some(n),
        name: slowcat_core::MetricName::SttTime,
        value: Duration::from_millis(n),
    }))
}

#[tokio::test]
async fn a_processor_that_handles_only_speak_sees_nothing_else_and_the_rest_passes_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shout = || Box::new(Shout { seen: seen.clone() }) as slowcat_core::BoxProcessor;
    // Two of them, so frames forwarded by the runtime also pass a processor that is not the last.
    let mut h = Harness::start(vec![shout(), shout()]).await;

    let data: Vec<Frame> = vec![
        Frame::LlmResponseStart { turn: 1 },
        Frame::LlmText("one".into()),
        Frame::Speak("hello".into()),
        Frame::LlmText("two".into()),
        Frame::TtsStopped,
        Frame::Speak("again".into()),
        Frame::LlmResponseEnd,
        Frame::UserTurnEnded,
    ];
    let system: Vec<Frame> = vec![
        Frame::UserStartedSpeaking { turn: 1, at: Duration::ZERO },
        metric(1),
        Frame::BotStartedSpeaking,
        metric(2),
    ];
    for (i, f) in data.iter().enumerate() {
        h.send(f.clone()).await;
        if let Some(s) = system.get(i) {
            h.send(s.clone()).await;
        }
    }
    let upstream: Vec<Frame> = vec![Frame::BotStoppedSpeaking, Frame::LlmText("up".into()), metric(3)];
    for f in &upstream {
        h.send_upstream(f.clone()).await;
    }
    // The upstream frames come out of the head; wait for the last of them before ending.
    h.wait_for(Duration::from_secs(10), |f, d| d == Direction::Upstream && *f == metric(3)).await;
    let out = h.finish(Duration::from_secs(10)).await;

    assert_eq!(*seen.lock().unwrap(), ["Speak", "Speak", "Speak", "Speak"], "only Speak reaches process");

    let shouted = |f: &Frame| match f {
        Frame::Speak(t) => Frame::Speak(t.to_uppercase()),
        other => other.clone(),
    };
    let body = |frames: &[Frame], system_frames: bool| -> Vec<Frame> {
        frames
            .iter()
            .filter(|f| !matches!(f, Frame::Start | Frame::End) && f.is_system() == system_frames)
            .cloned()
            .collect()
    };
    // System frames take their own lane, so order is kept within each lane.
    assert_eq!(body(&out.downstream, false), data.iter().map(shouted).collect::<Vec<_>>(), "data in order");
    assert_eq!(body(&out.downstream, true), system, "system frames in order");
    let up: Vec<Frame> = out.upstream.iter().filter(|f| !matches!(f, Frame::End)).cloned().collect();
    let (up_system, up_data): (Vec<Frame>, Vec<Frame>) = up.into_iter().partition(Frame::is_system);
    assert_eq!(up_data, [Frame::LlmText("up".into())]);
    assert_eq!(up_system, [Frame::BotStoppedSpeaking, metric(3)]);
    assert!(out.hung.is_empty());
}
