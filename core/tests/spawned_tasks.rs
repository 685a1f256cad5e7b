//! Tasks a processor spawns are tracked: joined at shutdown, and reported like a hung processor
//! when they do not stop.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use slowcat_core::harness::Harness;
use slowcat_core::{Frame, PipelineOptions, ProcessError, Processor, ProcessorContext};

/// Spawns one task at start: either one that stops when the pipeline's token fires (and notes
/// that it finished), or one that ignores it.
struct Spawns {
    obeys: bool,
    finished: Arc<AtomicBool>,
}

#[async_trait]
impl Processor for Spawns {
    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        let (cancel, finished, obeys) = (ctx.cancellation(), self.finished.clone(), self.obeys);
        let sender = ctx.sender();
        ctx.spawn(async move {
            if obeys {
                cancel.cancelled().await;
                // Some last work after the token fired, which the shutdown waits for.
                tokio::time::sleep(Duration::from_millis(50)).await;
                sender.downstream(Frame::LlmText("bye".into())).await;
            } else {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            finished.store(true, Ordering::Release);
        });
        Ok(())
    }
}

fn spawns(obeys: bool) -> (Arc<AtomicBool>, slowcat_core::BoxProcessor) {
    let finished = Arc::new(AtomicBool::new(false));
    (finished.clone(), Box::new(Spawns { obeys, finished }))
}

#[tokio::test(start_paused = true)]
async fn a_spawned_task_that_ignores_cancellation_is_reported_hung_within_the_bound() {
    let options = PipelineOptions::default();
    let bound = options.cancel_timeout + options.join_timeout;
    let (_, stubborn) = spawns(false);
    let (obeyed, polite) = spawns(true);
    let h = Harness::start_with(vec![("stubborn".into(), stubborn), ("polite".into(), polite)], options).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let began = tokio::time::Instant::now();
    let out = h.cancel().await;
    assert!(began.elapsed() <= bound, "shutdown took {:?}, more than {bound:?}", began.elapsed());
    assert_eq!(out.hung, ["stubborn"], "only the processor whose task ignored cancellation");
    assert!(obeyed.load(Ordering::Acquire), "the task that stops when told was waited for");
    assert!(out.downstream.contains(&Frame::LlmText("bye".into())), "its last frame came out: {:?}", out.downstream);
}

#[tokio::test]
async fn tasks_that_stop_when_told_leave_nothing_hung() {
    let (obeyed, polite) = spawns(true);
    let out = Harness::run(vec![polite], vec![Frame::Speak("hi".into())]).await;
    assert!(out.hung.is_empty(), "{:?}", out.hung);
    assert!(obeyed.load(Ordering::Acquire), "the spawned task was joined before the pipeline returned");
}
