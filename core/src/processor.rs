//! The `Processor` trait and the contexts through which processors reach the runtime.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame::{Direction, ErrorFrame, Frame, Metric};

/// A failure while handling a frame. The runtime turns it into an [`Frame::Error`] and,
/// unless it is fatal, keeps the pipeline serving the next turn.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// This frame failed; the next one may well succeed.
    #[error("{0}")]
    Recoverable(String),
    /// The processor cannot go on; the pipeline is cancelled.
    #[error("{0}")]
    Fatal(String),
}

impl ProcessError {
    /// A recoverable error from anything displayable.
    pub fn recoverable(e: impl std::fmt::Display) -> Self {
        Self::Recoverable(e.to_string())
    }

    /// A fatal error from anything displayable.
    pub fn fatal(e: impl std::fmt::Display) -> Self {
        Self::Fatal(e.to_string())
    }
}

/// One stage of the pipeline.
///
/// A processor declares the frames it handles with [`Processor::accepts`]; the runtime delivers
/// those to [`Processor::process`] and forwards every other frame itself, in order, without a
/// line of the processor's code. Lifecycle frames (`Start`, `End`, `Cancel`, `Interruption`)
/// have their own hooks and are forwarded by the runtime too. `process` pushes on (with
/// [`ProcessorContext::push`]) whatever should travel further: an accepted frame it does not push
/// is consumed.
///
/// `process` may run for a long time (streaming an LLM reply, playing audio): an `Interruption`
/// or `Cancel` arriving meanwhile drops that future at its next `.await`, so in-flight work is
/// cancelled instead of awaited, and system frames the processor does not accept travel on at
/// once instead of waiting for it. Blocking work (inference, disk) belongs on
/// `tokio::task::spawn_blocking`.
#[async_trait]
pub trait Processor: Send + 'static {
    /// Called when `Start` reaches the processor, after it has been forwarded.
    async fn start(&mut self, _ctx: &ProcessorContext) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Handles one frame travelling in `direction`: only frames [`Processor::accepts`] lets
    /// through reach it. The default forwards the frame unchanged, for a processor that only
    /// uses the hooks (a source that pushes from a task of its own).
    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        ctx.push(frame, direction).await;
        Ok(())
    }

    /// An interruption arrived: queued data has been dropped and in-flight work cancelled.
    /// Reset per-reply state here; the runtime forwards the interruption afterwards.
    async fn interrupted(&mut self, _ctx: &ProcessorContext) {}

    /// End of stream reached the processor: flush what is pending, before `End` travels on.
    async fn end(&mut self, _ctx: &ProcessorContext) -> Result<(), ProcessError> {
        Ok(())
    }

    /// The pipeline is stopping (after `End` or `Cancel`): release resources.
    async fn stop(&mut self) {}

    /// The time asked for with [`ProcessorContext::wake_after`] has come. Called by the processor's
    /// own task, between frames, so the processor's state needs no lock. The wake-up comes when
    /// the task is idle; a processor that keeps receiving frames meanwhile (audio every 20 ms)
    /// should also check its deadline when they arrive.
    async fn wake(&mut self, _ctx: &ProcessorContext) -> Result<(), ProcessError> {
        Ok(())
    }

    /// The frames this processor handles; the runtime forwards the others itself, without a
    /// call into [`Processor::process`], and system frames among them overtake a call in
    /// flight: a speaking event travelling upstream does not wait until the TTS has synthesized
    /// its sentence or the LLM has streamed its reply. Asked once, when the pipeline is spawned.
    /// The default accepts nothing: the processor only forwards.
    fn accepts(&self) -> Accepts {
        accepts::nothing
    }
}

/// Which frames a processor handles (see [`Processor::accepts`]). A plain function, so the
/// runtime can ask it while the processor is busy in a call. Never asked about lifecycle frames.
pub type Accepts = fn(&Frame, Direction) -> bool;

/// Common [`Accepts`] choices.
pub mod accepts {
    use crate::frame::{Direction, Frame};

    /// The processor handles no frame: everything passes it.
    pub fn nothing(_: &Frame, _: Direction) -> bool {
        false
    }

    /// The processor sees every frame.
    pub fn everything(_: &Frame, _: Direction) -> bool {
        true
    }

    /// Every frame travelling downstream; upstream frames pass untouched.
    pub fn downstream(_: &Frame, direction: Direction) -> bool {
        direction == Direction::Downstream
    }
}

/// A boxed processor, as the registry builds them.
pub type BoxProcessor = Box<dyn Processor>;

/// One message on a processor's input lanes.
pub(crate) type Envelope = (Frame, Direction);

/// The two input lanes of one processor task.
#[derive(Clone)]
pub(crate) struct Lanes {
    pub(crate) system: crate::lane::Sender<Envelope>,
    pub(crate) data: crate::lane::Sender<Envelope>,
}

impl Lanes {
    fn send(&self, frame: Frame, direction: Direction) -> Push<'_> {
        let lane = if frame.is_system() { &self.system } else { &self.data };
        Push { lane, item: Some((frame, direction)) }
    }
}

/// The future of [`ProcessorContext::push`]: queues the frame on the neighbour's lane, waiting
/// while it is full. Resolves to false once the pipeline has shut down.
///
/// A plain struct rather than an `async fn`: it holds one frame and a reference, so the future
/// of a processor's `process` call, which the runtime boxes for every frame, stays small (nested
/// async functions each kept their own copy of the frame, and moving that state into the box
/// was the largest single cost of a pass-through hop).
#[must_use = "futures do nothing unless awaited"]
pub struct Push<'a> {
    lane: &'a crate::lane::Sender<Envelope>,
    item: Option<Envelope>,
}

impl Future for Push<'_> {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let Push { lane, item } = &mut *self;
        lane.poll_send(cx, item).map(|r| r.is_ok())
    }
}

/// A cloneable handle that pushes frames to a processor's neighbours, for work spawned off the
/// processor's own task (a WAV reader pacing frames, a capture stream).
#[derive(Clone)]
pub struct FrameSender {
    downstream: Lanes,
    upstream: Lanes,
}

impl FrameSender {
    /// Pushes a frame to the neighbour in `direction`. Waits while that neighbour's lane is full
    /// (backpressure). Resolves to false once the pipeline has shut down.
    pub fn push(&self, frame: Frame, direction: Direction) -> Push<'_> {
        match direction {
            Direction::Downstream => self.downstream.send(frame, direction),
            Direction::Upstream => self.upstream.send(frame, direction),
        }
    }

    /// Pushes downstream.
    pub fn downstream(&self, frame: Frame) -> Push<'_> {
        self.push(frame, Direction::Downstream)
    }

    /// Pushes upstream.
    pub fn upstream(&self, frame: Frame) -> Push<'_> {
        self.push(frame, Direction::Upstream)
    }
}

/// Spawns the tasks of one processor, tracked by the pipeline: at shutdown it cancels their token
/// ([`ProcessorContext::cancellation`]) and waits for them as long as for the processors; a task
/// still running then is aborted and its processor reported in
/// [`Shutdown::hung`](crate::Shutdown::hung). Cloneable, for state that spawns outside a call.
#[derive(Clone, Default)]
pub struct Spawner {
    tracker: TaskTracker,
    /// To abort what is left once the wait is over (a tracker can only wait).
    running: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Spawner {
    /// Spawns `task` on the runtime, tracked. It should stop when the pipeline's cancellation
    /// token fires.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.tracker.spawn(task);
        // Nothing panics while the lock is held; a poisoned list is still a list.
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.retain(|h| !h.is_finished());
        running.push(handle.abort_handle());
        handle
    }

    /// No more tasks count from now on: [`Spawner::wait`] resolves once the running ones end.
    pub(crate) fn close(&self) {
        self.tracker.close();
    }

    /// Resolves when every task has ended (after [`Spawner::close`]).
    pub(crate) async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Aborts every task still running.
    pub(crate) fn abort(&self) {
        for h in self.running.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            h.abort();
        }
    }
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner").field("tasks", &self.tracker.len()).finish()
    }
}

/// What a running processor can reach of the runtime.
pub struct ProcessorContext {
    id: Arc<str>,
    sender: FrameSender,
    cancel: CancellationToken,
    spawner: Spawner,
    epoch: Instant,
    /// When [`Processor::wake`] is due, in nanoseconds since `timer_epoch`; `NO_WAKE` when not
    /// asked. On tokio's clock, which tests may pause.
    wake_at: Arc<AtomicU64>,
    /// Tells the processor's task that `wake_at` changed from another thread ([`Waker`]).
    notify: Arc<tokio::sync::Notify>,
    timer_epoch: tokio::time::Instant,
}

/// Asks for a call to [`Processor::wake`] as soon as the processor's task is idle, from anywhere:
/// a blocking job (an inference) that finished. Instead of the processor polling for its result.
#[derive(Clone)]
pub struct Waker {
    wake_at: Arc<AtomicU64>,
    notify: Arc<tokio::sync::Notify>,
}

impl Waker {
    /// Wakes the processor now (a wake-up already asked for comes sooner).
    pub fn wake(&self) {
        self.wake_at.store(0, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

const NO_WAKE: u64 = u64::MAX;

impl ProcessorContext {
    pub(crate) fn new(id: Arc<str>, sender: FrameSender, cancel: CancellationToken, epoch: Instant) -> Self {
        Self {
            id,
            sender,
            cancel,
            spawner: Spawner::default(),
            epoch,
            wake_at: Arc::new(AtomicU64::new(NO_WAKE)),
            notify: Arc::new(tokio::sync::Notify::new()),
            timer_epoch: tokio::time::Instant::now(),
        }
    }

    /// A handle that wakes this processor from another thread or task (see [`Waker`]).
    pub fn waker(&self) -> Waker {
        Waker { wake_at: self.wake_at.clone(), notify: self.notify.clone() }
    }

    /// Resolves when a [`Waker`] was used since the last time.
    pub(crate) async fn woken_by_waker(&self) {
        self.notify.notified().await;
    }

    /// Asks for a call to [`Processor::wake`] after `delay`, replacing an earlier request: a
    /// timeout that must fire even when no frame arrives (input that pauses).
    pub fn wake_after(&self, delay: Duration) {
        let at = (self.timer_epoch.elapsed() + delay).as_nanos().min(u128::from(NO_WAKE - 1)) as u64;
        self.wake_at.store(at, Ordering::Relaxed);
    }

    /// Withdraws a request made with [`ProcessorContext::wake_after`].
    pub fn cancel_wake(&self) {
        self.wake_at.store(NO_WAKE, Ordering::Relaxed);
    }

    /// When the processor asked to be woken, if it did.
    pub(crate) fn wake_deadline(&self) -> Option<tokio::time::Instant> {
        match self.wake_at.load(Ordering::Relaxed) {
            NO_WAKE => None,
            ns => Some(self.timer_epoch + Duration::from_nanos(ns)),
        }
    }

    /// This processor's id in config.toml.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Pushes a frame to the neighbour in `direction`, waiting while its lane is full. The
    /// future resolves to false once the pipeline has shut down (nothing to do then but return).
    pub fn push(&self, frame: Frame, direction: Direction) -> Push<'_> {
        self.sender.push(frame, direction)
    }

    /// Pushes a frame downstream.
    pub fn push_downstream(&self, frame: Frame) -> Push<'_> {
        self.sender.downstream(frame)
    }

    /// Pushes a frame upstream.
    pub fn push_upstream(&self, frame: Frame) -> Push<'_> {
        self.sender.upstream(frame)
    }

    /// Pushes a recoverable error frame downstream, naming this processor.
    pub async fn push_error(&self, message: impl Into<String>) {
        let frame = Frame::Error(Box::new(ErrorFrame {
            source: self.id.to_string(),
            message: message.into(),
            recoverable: true,
        }));
        self.push_downstream(frame).await;
    }

    /// Pushes a measurement downstream.
    pub async fn push_metric(&self, name: crate::frame::MetricName, turn: Option<u64>, value: Duration) {
        let frame = Frame::Metrics(Box::new(Metric { source: self.id.to_string(), turn, name, value }));
        self.push_downstream(frame).await;
    }

    /// A handle for tasks the processor spawns.
    pub fn sender(&self) -> FrameSender {
        self.sender.clone()
    }

    /// Cancelled when the pipeline shuts down; spawned tasks should stop when it fires.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Spawns a task for this processor, tracked by the pipeline (see [`Spawner`]): a reader
    /// pacing frames, a monitor, a background request. It should stop when
    /// [`ProcessorContext::cancellation`] fires; at shutdown it is waited for, within the
    /// pipeline's bound.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawner.spawn(task)
    }

    /// A handle that spawns tracked tasks like [`ProcessorContext::spawn`], for state that
    /// spawns outside a call into the processor.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// The instant the pipeline started: the zero of every timeline.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Time since the pipeline started.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// What `build()` can reach while turning settings into a running processor.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Where model files live (`models/` next to config.toml unless configured).
    pub models_dir: PathBuf,
    /// Where processors keep their data (memory database), e.g. `~/.local/share/slowcat`.
    pub data_dir: PathBuf,
    /// The directory of config.toml; relative paths in settings are resolved against it.
    pub config_dir: PathBuf,
}

impl BuildContext {
    /// Resolves a model file name against the models directory (absolute paths are kept).
    pub fn model_path(&self, name: impl AsRef<Path>) -> PathBuf {
        let name = name.as_ref();
        if name.is_absolute() { name.to_path_buf() } else { self.models_dir.join(name) }
    }

    /// Resolves a path from the settings against the config file's directory.
    pub fn config_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if path.is_absolute() { path.to_path_buf() } else { self.config_dir.join(path) }
    }

    /// Resolves a data path: absolute paths and `~/` are kept, others go under `data_dir`.
    pub fn data_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if let Ok(rest) = path.strip_prefix("~")
            && let Some(home) = std::env::var_os("HOME")
        {
            return PathBuf::from(home).join(rest);
        }
        if path.is_absolute() { path.to_path_buf() } else { self.data_dir.join(path) }
    }

    /// A context rooted in one directory, for tests.
    pub fn for_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self { models_dir: dir.join("models"), data_dir: dir.join("data"), config_dir: dir }
    }
}

pub(crate) fn sender(downstream: Lanes, upstream: Lanes) -> FrameSender {
    FrameSender { downstream, upstream }
}
