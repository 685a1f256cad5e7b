//! Runs a chain of processors, one tokio task each, linked by bounded channels with a priority
//! lane for system frames. The binary and the test harness both run pipelines through this.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::frame::{Direction, ErrorFrame, Frame, FrameClass};
use crate::lane;
use crate::processor::{
    self, Accepts, BoxProcessor, Envelope, FrameSender, Lanes, ProcessError, ProcessorContext, Spawner,
};

/// Channel sizes and shutdown bounds.
///
/// Overflow policy: a full lane makes the sender wait (backpressure), on both lanes. The system
/// lane is much larger so that control frames and microphone audio are never held up by a
/// processor that is slow with data.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Capacity of each processor's data lane.
    pub data_capacity: usize,
    /// Capacity of each processor's system lane.
    pub system_capacity: usize,
    /// How long `Cancel` may take to travel the pipeline before tasks are stopped regardless.
    pub cancel_timeout: Duration,
    /// How long tasks (the processors' and those they spawned) may take to stop once told to.
    pub join_timeout: Duration,
    /// How long the final `End` may take to travel back upstream.
    pub drain_timeout: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            data_capacity: 64,
            system_capacity: 1024,
            cancel_timeout: Duration::from_millis(1000),
            join_timeout: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// How a pipeline stopped.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// Ids of processors that did not stop within the bounds, or whose spawned tasks did not:
    /// they were abandoned.
    pub hung: Vec<String>,
    /// Frames that came out of the pipeline while it stopped.
    pub frames: Vec<(Frame, Direction)>,
}

/// A running chain of processors.
pub struct Pipeline {
    head: FrameSender,
    tail: FrameSender,
    out_rx: lane::Receiver<Envelope>,
    tasks: Vec<(Arc<str>, JoinHandle<()>)>,
    /// The tasks each processor spawned ([`ProcessorContext::spawn`]).
    spawned: Vec<(Arc<str>, Spawner)>,
    cancel: CancellationToken,
    /// Set with `cancel`: the tasks' fast path reads it per frame, which is cheaper than asking
    /// the token (a lock shared by every task).
    stopping: Arc<AtomicBool>,
    epoch: Instant,
    options: PipelineOptions,
}

impl Pipeline {
    /// Spawns one task per processor, in order. Nothing flows until [`Pipeline::start`].
    pub fn spawn(processors: Vec<(String, BoxProcessor)>, options: PipelineOptions) -> Self {
        let cancel = CancellationToken::new();
        let stopping = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        // Both ends of the chain lead into one ordered output channel.
        let (out_tx, out_rx) = lane::bounded(options.system_capacity);
        let sink = Lanes { system: out_tx.clone(), data: out_tx };

        let mut inputs = Vec::with_capacity(processors.len());
        let mut receivers = Vec::with_capacity(processors.len());
        for _ in &processors {
            let (sys_tx, sys_rx) = lane::bounded(options.system_capacity);
            let (data_tx, data_rx) = lane::bounded(options.data_capacity);
            inputs.push(Lanes { system: sys_tx, data: data_tx });
            receivers.push((sys_rx, data_rx));
        }
        let lanes_at = |i: Option<usize>| match i {
            Some(i) if i < inputs.len() => inputs[i].clone(),
            _ => sink.clone(),
        };

        let mut tasks = Vec::with_capacity(processors.len());
        let mut spawned = Vec::with_capacity(processors.len());
        for (i, ((id, processor), (sys_rx, data_rx))) in processors.into_iter().zip(receivers).enumerate() {
            let id: Arc<str> = id.into();
            let up = lanes_at(i.checked_sub(1));
            let down = lanes_at(Some(i + 1));
            let ctx = ProcessorContext::new(id.clone(), processor::sender(down, up), cancel.clone(), epoch);
            spawned.push((id.clone(), ctx.spawner()));
            let accepts = processor.accepts();
            let task = Task {
                processor,
                accepts,
                ctx,
                sys_rx,
                data_rx,
                stopping: stopping.clone(),
                held: VecDeque::new(),
                deferred: VecDeque::new(),
            };
            tasks.push((id, tokio::spawn(task.run())));
        }
        let head = processor::sender(lanes_at(Some(0)), sink.clone());
        let tail = processor::sender(sink.clone(), lanes_at(inputs.len().checked_sub(1)));
        Self { head, tail, out_rx, tasks, spawned, cancel, stopping, epoch, options }
    }

    /// Sends `Start` through the pipeline.
    pub async fn start(&self) {
        self.send(Frame::Start).await;
    }

    /// Feeds a frame downstream into the first processor.
    pub async fn send(&self, frame: Frame) {
        self.head.downstream(frame).await;
    }

    /// Feeds a frame upstream into the last processor.
    pub async fn send_upstream(&self, frame: Frame) {
        self.tail.upstream(frame).await;
    }

    /// The next frame out of either end of the pipeline (downstream out of the last processor,
    /// upstream out of the first).
    pub async fn recv(&mut self) -> Option<(Frame, Direction)> {
        self.out_rx.recv().await
    }

    /// A cloneable handle feeding the first processor, for producers on other tasks.
    pub fn sender_for_bench(&self) -> FrameSender {
        self.head.clone()
    }

    /// The instant the pipeline was spawned.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Ids of the processors, in order.
    pub fn ids(&self) -> Vec<String> {
        self.tasks.iter().map(|(id, _)| id.to_string()).collect()
    }

    /// Graceful stop after `End` came out downstream: sends `End` back upstream so every
    /// processor handles the upstream frames still travelling (the last spoken reply reaching
    /// memory), then stops the tasks. Every wait is bounded.
    pub async fn finish(mut self) -> Shutdown {
        self.send_upstream(Frame::End).await;
        let deadline = tokio::time::Instant::now() + self.options.drain_timeout;
        let frames = self.drain_until(deadline, Frame::End, Direction::Upstream).await;
        self.join_after(frames).await
    }

    /// Stops at once: sends `Cancel`, which overtakes all queued data and drops in-flight work,
    /// then stops the tasks. Returns within `cancel_timeout + join_timeout` even when a
    /// processor hangs; the hung ones are named in the result.
    pub async fn cancel(mut self) -> Shutdown {
        let deadline = tokio::time::Instant::now() + self.options.cancel_timeout;
        let frames = if timeout_at(deadline, self.head.downstream(Frame::Cancel)).await.is_ok() {
            self.drain_until(deadline, Frame::Cancel, Direction::Downstream).await
        } else {
            Vec::new()
        };
        self.join_after(frames).await
    }

    /// Collects output until `last` comes out travelling `dir`, or until `deadline`.
    async fn drain_until(
        &mut self,
        deadline: tokio::time::Instant,
        last: Frame,
        dir: Direction,
    ) -> Vec<(Frame, Direction)> {
        let mut frames = Vec::new();
        while let Ok(Some((frame, d))) = timeout_at(deadline, self.out_rx.recv()).await {
            let done = frame == last && d == dir;
            frames.push((frame, d));
            if done {
                break;
            }
        }
        frames
    }

    async fn join_after(self, mut frames: Vec<(Frame, Direction)>) -> Shutdown {
        let mut shutdown = self.join().await;
        frames.append(&mut shutdown.frames);
        shutdown.frames = frames;
        shutdown
    }

    async fn join(mut self) -> Shutdown {
        self.stopping.store(true, Ordering::Release);
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + self.options.join_timeout;
        let mut hung = Vec::new();
        let mut frames = Vec::new();
        for (id, mut handle) in std::mem::take(&mut self.tasks) {
            // Yield once so tasks that were told to stop get a chance to, even past the deadline.
            tokio::task::yield_now().await;
            if handle.is_finished() {
                continue;
            }
            loop {
                tokio::select! {
                    res = &mut handle => {
                        if let Err(e) = res && e.is_panic() {
                            warn!(processor = %id, "processor task panicked while stopping");
                        }
                        break;
                    }
                    // Keep the output drained so no task blocks on a full sink while stopping.
                    Some(f) = self.out_rx.recv() => frames.push(f),
                    _ = tokio::time::sleep_until(deadline) => {
                        warn!(processor = %id, "processor did not stop in time; abandoning it");
                        handle.abort();
                        hung.push(id.to_string());
                        break;
                    }
                }
            }
        }
        // Then what they spawned, within the same bound: the processors' `stop` has run, which
        // aborts the tasks some of them keep.
        for (id, spawner) in std::mem::take(&mut self.spawned) {
            spawner.close();
            // As above: tasks told to stop get a chance to, even past the deadline.
            tokio::task::yield_now().await;
            let waited = spawner.wait();
            tokio::pin!(waited);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut waited => break,
                    Some(f) = self.out_rx.recv() => frames.push(f),
                    _ = tokio::time::sleep_until(deadline) => {
                        warn!(processor = %id, "a task the processor spawned did not stop in time; abandoning it");
                        spawner.abort();
                        if !hung.iter().any(|h| **h == *id) {
                            hung.push(id.to_string());
                        }
                        break;
                    }
                }
            }
        }
        while let Ok(f) = self.out_rx.try_recv() {
            frames.push(f);
        }
        Shutdown { hung, frames }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.cancel.cancel();
        for (_, handle) in &self.tasks {
            handle.abort();
        }
        for (_, spawner) in &self.spawned {
            spawner.abort();
        }
    }
}

/// What became of one call into the processor.
enum Outcome<T> {
    Done(T),
    /// An `Interruption` or `Cancel` arrived and the call was dropped.
    Preempted,
}

struct Task {
    processor: BoxProcessor,
    /// The frames the processor handles; the task forwards the others itself.
    accepts: Accepts,
    ctx: ProcessorContext,
    sys_rx: lane::Receiver<Envelope>,
    data_rx: lane::Receiver<Envelope>,
    stopping: Arc<AtomicBool>,
    /// Frames that survive an interruption (End), taken off the data lane while draining it.
    held: VecDeque<Envelope>,
    /// System frames that arrived while a call was in flight, in arrival order.
    deferred: VecDeque<Envelope>,
}

impl Task {
    async fn run(mut self) {
        let cancel = self.ctx.cancellation();
        // Registered once: a fresh `cancelled()` per frame would lock the token (shared by every
        // task) twice per frame.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            // Fast path without parking: system lane first, then frames held through an
            // interruption, then data.
            let next = if let Some(env) = self.deferred.pop_front() {
                Some(env)
            } else if let Ok(env) = self.sys_rx.try_recv() {
                Some(env)
            } else if let Some(env) = self.held.pop_front() {
                Some(env)
            } else if self.stopping.load(Ordering::Acquire) {
                None
            } else if let Ok(env) = self.data_rx.try_recv() {
                Some(env)
            } else {
                let wake = self.ctx.wake_deadline();
                let woken = async move {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = &mut cancelled => None,
                    Some(env) = self.sys_rx.recv() => Some(env),
                    Some(env) = self.data_rx.recv() => Some(env),
                    _ = woken, if wake.is_some() => {
                        self.ctx.cancel_wake();
                        if let Outcome::Done(Err(e)) = self.call(|p, ctx| p.wake(ctx)).await {
                            self.report(e).await;
                        }
                        continue;
                    }
                    // A waker moved the deadline: look at it again.
                    _ = self.ctx.woken_by_waker() => continue,
                    else => None,
                }
            };
            let Some((frame, dir)) = next else { break };
            if !self.handle(frame, dir).await {
                break;
            }
        }
        // Bounded by the pipeline's join timeout.
        self.processor.stop().await;
        debug!(processor = %self.ctx.id(), "stopped");
    }

    /// Handles one frame; false when the task should stop.
    async fn handle(&mut self, frame: Frame, dir: Direction) -> bool {
        match frame {
            Frame::Start => {
                self.ctx.push(Frame::Start, dir).await;
                let r = self.call(|p, ctx| p.start(ctx)).await;
                if let Outcome::Done(Err(e)) = r {
                    self.report(e).await;
                }
                true
            }
            Frame::Cancel => {
                self.ctx.push(Frame::Cancel, dir).await;
                false
            }
            Frame::Interruption => {
                self.drain_data();
                // Forward first: the processors further on (the speaker) fall silent sooner.
                self.ctx.push(Frame::Interruption, dir).await;
                let ctx = &self.ctx;
                self.processor.interrupted(ctx).await;
                true
            }
            Frame::End if dir == Direction::Downstream => {
                let r = self.call(|p, ctx| p.end(ctx)).await;
                if let Outcome::Done(Err(e)) = r {
                    self.report(e).await;
                }
                self.ctx.push(Frame::End, dir).await;
                true
            }
            Frame::End => {
                // End travelling upstream is the pipeline's final sweep: everything before it has
                // been handled, so this processor is done.
                self.ctx.push(Frame::End, dir).await;
                false
            }
            frame if !(self.accepts)(&frame, dir) => {
                self.ctx.push(frame, dir).await;
                true
            }
            frame => {
                let r = self.call(move |p, ctx| p.process(frame, dir, ctx)).await;
                if let Outcome::Done(Err(e)) = r {
                    self.report(e).await;
                }
                true
            }
        }
    }

    /// Runs one call into the processor while watching the system lane: an `Interruption` or
    /// `Cancel` drops the call; system frames the processor does not accept travel on at once; the
    /// others wait in `deferred` until it returns.
    /// A panic inside the processor becomes an error instead of killing the pipeline.
    async fn call<F>(&mut self, f: F) -> Outcome<Result<(), ProcessError>>
    where
        F: for<'a> FnOnce(
            &'a mut BoxProcessor,
            &'a ProcessorContext,
        ) -> futures::future::BoxFuture<'a, Result<(), ProcessError>>,
    {
        let Task { processor, ctx, sys_rx, deferred, accepts, .. } = self;
        let ctx: &ProcessorContext = ctx;
        let fut = AssertUnwindSafe(f(processor, ctx)).catch_unwind();
        tokio::pin!(fut);
        let done = |res: Result<Result<(), ProcessError>, Box<dyn std::any::Any + Send>>| {
            Outcome::Done(res.unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(ProcessError::Recoverable(format!("panicked: {msg}")))
            }))
        };
        // Most calls finish at their first poll: no need to watch the system lane for those.
        if let Poll::Ready(res) = futures::poll!(fut.as_mut()) {
            return done(res);
        }
        loop {
            tokio::select! {
                biased;
                res = &mut fut => return done(res),
                Some(env) = sys_rx.recv() => {
                    // Never past a deferred frame going the same way: order per direction holds.
                    // Lifecycle frames are never the processor's to accept or not.
                    let lifecycle = matches!(env.0, Frame::Start | Frame::Cancel | Frame::Interruption);
                    if !lifecycle && !accepts(&env.0, env.1) && !deferred.iter().any(|(_, d)| *d == env.1) {
                        ctx.push(env.0, env.1).await;
                        continue;
                    }
                    let preempts = matches!(env.0, Frame::Interruption | Frame::Cancel);
                    deferred.push_back(env);
                    if preempts {
                        debug!(processor = %ctx.id(), "in-flight work cancelled");
                        return Outcome::Preempted;
                    }
                }
            }
        }
    }

    /// Turns a failed call into an error frame (not an async call per frame when all is well).
    async fn report(&mut self, e: ProcessError) {
        let recoverable = matches!(e, ProcessError::Recoverable(_));
        warn!(processor = %self.ctx.id(), error = %e, recoverable, "processor error");
        let frame = Frame::Error(Box::new(ErrorFrame {
            source: self.ctx.id().to_string(),
            message: e.to_string(),
            recoverable,
        }));
        self.ctx.push_downstream(frame).await;
    }

    /// Drops queued data after an interruption, keeping frames that must survive it.
    fn drain_data(&mut self) {
        let mut dropped = 0usize;
        while let Ok(env) = self.data_rx.try_recv() {
            if env.0.class() == FrameClass::Uninterruptible {
                self.held.push_back(env);
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            debug!(processor = %self.ctx.id(), dropped, "interruption dropped queued data");
        }
    }
}
