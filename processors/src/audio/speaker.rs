//! `speaker`: plays `OutputAudio` on a sound card (cpal), reports when the assistant starts and
//! stops speaking, and what it actually said.
//!
//! Audio is resampled to the device's rate and written, at most `chunk_ms` at a time, into a
//! small lock-free ring buffer that the device callback reads from. The callback never blocks
//! and plays silence when the ring is empty. `process` waits for room in the ring, so the
//! device's pace holds back the TTS (backpressure). An interruption asks the callback to empty
//! the ring, so the speaker falls silent once the device has played what it already holds.
//! Nothing polls: the callback wakes whoever waits on it (`process` for room, `interrupted` for
//! the ring emptied, the monitor for audio taken) when it has taken audio, and the monitor sleeps
//! until the next moment its bookkeeping is due (the reply played out).
//!
//! The device buffer is not left at the device's default: through ALSA's PulseAudio plugin
//! (ALSA's `default` on most desktops) that is three 512-frame periods, 32 ms at 48 kHz, and
//! the device underruns whenever cpal's audio thread waits about 20 ms for a CPU, which a busy
//! 2-core machine does several times a minute. PulseAudio then plays silence; when nothing was
//! written since, the plugin reports an xrun, cpal re-prepares the device (the plugin drops and
//! reconnects its PulseAudio stream) and the rest of the reply is heard about 100 ms late.
//! So the speaker asks for a 100 ms buffer ([`AUTO_PERIOD_MS`]), and creates the threads that
//! move audio (cpal's and the plugin's PulseAudio client thread) at PulseAudio's own raised
//! priority where it may ([`AudioPriority`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::devices;
use super::played::PlayedText;
use super::resample::{StreamResampler, to_mono_f32};
use crate::error::ErrorChain;
use crate::frame::{Direction, ErrorFrame, Frame, Metric, SpokenReply};
use crate::processor::{BoxProcessor, BuildContext, FrameSender, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};

/// Settings of `speaker`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeakerSettings {
    /// The output device: empty or `default` for the system's default, else an id or a part of
    /// a name as `slowcat devices` lists them.
    pub device: String,
    /// Largest piece of audio written to the device at once, in milliseconds.
    pub chunk_ms: u32,
    /// Audio queued for the device beyond the piece being written, in milliseconds.
    pub queue_ms: u32,
    /// Device period in frames (cpal's buffer size: the device holds two or three periods);
    /// 0 picks about 50 ms (at least `chunk_ms`). Devices' own defaults can be far
    /// smaller and underrun under load.
    pub buffer_frames: u32,
    /// Silence inside a reply (waiting for the next sentence) after which the assistant counts
    /// as having stopped speaking, in milliseconds.
    pub stop_after_ms: u32,
}

impl Default for SpeakerSettings {
    fn default() -> Self {
        Self { device: String::new(), chunk_ms: 40, queue_ms: 120, buffer_frames: 0, stop_after_ms: 300 }
    }
}

impl Settings for SpeakerSettings {
    const TYPE: &'static str = "speaker";
    const ABOUT: &'static str = "plays the assistant's audio on a sound card and reports what was actually said";

    fn requires(&self) -> Vec<crate::registry::Requirement> {
        vec![crate::registry::Requirement {
            any_of: &[
                crate::tts::PiperSettings::TYPE,
                crate::tts::EspeakTtsSettings::TYPE,
                crate::tts::OpenAiTtsSettings::TYPE,
                crate::audio::MicSettings::TYPE,
                crate::audio::WavInputSettings::TYPE,
            ],
            key: None,
            why: "it plays audio that a TTS (or an audio input) makes; put one before it",
        }]
    }

    fn check(&self, _ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !(5..=200).contains(&self.chunk_ms) {
            problems.push(Problem::at("chunk_ms", "`chunk_ms` must be between 5 and 200"));
        }
        if !(20..=5000).contains(&self.queue_ms) {
            problems.push(Problem::at("queue_ms", "`queue_ms` must be between 20 and 5000"));
        }
        if self.buffer_frames != 0 && !(64..=65536).contains(&self.buffer_frames) {
            problems.push(Problem::at("buffer_frames", "`buffer_frames` must be 0 (device default) or 64 to 65536"));
        }
        if self.stop_after_ms > 10_000 {
            problems.push(Problem::at("stop_after_ms", "`stop_after_ms` must be at most 10000"));
        }
        problems
    }

    fn build(self, _ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        Ok(Box::new(Speaker::open(self)?))
    }
}

/// Counters shared with the device callback (atomics, and wake-ups: the callback never waits).
struct Shared {
    /// The zero of `started_ns`.
    base: Instant,
    /// Frames taken from the ring and handed to the device.
    played: AtomicU64,
    /// Frames emptied from the ring by interruptions, never played.
    discarded: AtomicU64,
    /// Interruptions asked for, and the last one the callback carried out.
    clear_requested: AtomicU64,
    clear_done: AtomicU64,
    /// When audio last started after a silent period: nanoseconds after `base`, plus one (0: never).
    started_ns: AtomicU64,
    /// Device latency: from the callback to the samples being heard, in nanoseconds.
    latency_ns: AtomicU64,
    /// Callbacks so far, to tell a running device from a stalled one.
    callbacks: AtomicU64,
    /// Notified by the callback when it took audio or emptied the ring: room for `write`, a
    /// clear carried out for `interrupted`. A `Notify` keeps one wake-up for a waiter that comes
    /// later, and waking never waits (the waiter list's lock is only held to unlink a waiter).
    taken: Notify,
    /// Notified by the callback (audio taken, a device error) and by the processor (the reply's
    /// bookkeeping changed): the monitor looks again.
    changed: Notify,
    sample_rate: u32,
    chunk_frames: usize,
}

/// A view of the speaker's counters, for tests and diagnostics.
#[derive(Clone)]
pub struct SpeakerStats(Arc<Shared>);

impl SpeakerStats {
    /// Frames (per channel, at the device rate) handed to the device so far.
    pub fn played_frames(&self) -> u64 {
        self.0.played.load(Ordering::Acquire)
    }

    /// Frames dropped unplayed by interruptions.
    pub fn discarded_frames(&self) -> u64 {
        self.0.discarded.load(Ordering::Acquire)
    }

    /// The device's sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.0.sample_rate
    }

    /// Largest piece written at once, in frames.
    pub fn chunk_frames(&self) -> usize {
        self.0.chunk_frames
    }

    /// Device callbacks so far.
    pub fn callbacks(&self) -> u64 {
        self.0.callbacks.load(Ordering::Acquire)
    }
}

/// Reply bookkeeping shared by `process`, `interrupted` and the monitor task.
struct State {
    text: PlayedText,
    speaking: bool,
    /// `first_audio_at` was reported for the current reply.
    first_reported: bool,
    /// The `started_ns` last acted on.
    seen_start: u64,
    drained_since: Option<Instant>,
    /// Replies taken by `process` for the monitor to report. `process` must not wait on an
    /// upstream push: the TTS's lanes can be full while the TTS waits for room in ours, and
    /// neither would ever move again.
    reports: VecDeque<SpokenReply>,
}

/// Plays audio on an output device.
pub struct Speaker {
    settings: SpeakerSettings,
    device_name: String,
    stream: Option<cpal::Stream>,
    producer: rtrb::Producer<f32>,
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
    resampler: Option<StreamResampler>,
    errors: Option<Receiver<String>>,
    monitor: Option<JoinHandle<()>>,
    /// Counts the monitor's looks at the counters; closed when it stops.
    ticks: Option<watch::Receiver<u64>>,
}

/// The device period asked for when `buffer_frames` is 0, in milliseconds. Through PulseAudio's
/// ALSA plugin this gives a 100 ms device buffer in 33 ms periods (the plugin wants at least
/// three periods in the two that cpal asks for), through a hardware device 50 ms periods in a
/// 100 ms buffer: the audio thread may then wait 45 ms or more for a CPU without an underrun.
const AUTO_PERIOD_MS: u32 = 50;

/// How long `interrupted` waits for the callback to empty the ring before going on.
const CLEAR_TIMEOUT: Duration = Duration::from_millis(200);
/// How long `process` waits for room in the ring before deciding the device has stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// At most one device error frame this often: after an underrun, ALSA's PulseAudio plugin can
/// fail the same call hundreds of times a second until it recovers.
const ERROR_EVERY: Duration = Duration::from_secs(5);

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Only plain bookkeeping happens under the lock; a poisoned one still holds valid data.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The output device would not open (cpal's errors differ by step, so its reason is kept as text).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open output device {device}: {reason}; is the sound server running (`scripts/pulse.sh start`)? \
     output devices: {others}"
)]
struct OpenError {
    device: String,
    reason: String,
    others: String,
}

impl Speaker {
    /// Opens the device and starts its stream (playing silence until audio comes).
    pub fn open(settings: SpeakerSettings) -> Result<Self, BuildError> {
        let device = devices::find_output(&settings.device).map_err(|e| BuildError::Invalid(format!("device: {e}")))?;
        let device_name = devices::describe(&device);
        let open_error = |e: &dyn std::fmt::Display| {
            let others = devices::list(devices::DeviceKind::Output)
                .map(|l| l.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            BuildError::other(OpenError {
                device: device_name.clone(),
                reason: e.to_string(),
                others: if others.is_empty() { "none".into() } else { others },
            })
        };
        let supported = device.default_output_config().map_err(|e| open_error(&e))?;
        let rate = supported.sample_rate();
        let channels = supported.channels();
        let chunk_frames = (rate as usize * settings.chunk_ms as usize / 1000).max(1);
        let auto = settings.buffer_frames == 0;
        let period = if auto {
            (rate as usize * AUTO_PERIOD_MS as usize / 1000).max(chunk_frames) as u32
        } else {
            settings.buffer_frames
        };
        let mut config = supported.config();
        config.buffer_size = cpal::BufferSize::Fixed(period);
        // Room for the queue plus the piece being written; at least two device periods so the
        // callback can always be served.
        let queue = (rate as usize * settings.queue_ms as usize / 1000).max(2 * period as usize).max(chunk_frames);
        let shared = Arc::new(Shared {
            base: Instant::now(),
            played: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            clear_requested: AtomicU64::new(0),
            clear_done: AtomicU64::new(0),
            started_ns: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
            callbacks: AtomicU64::new(0),
            taken: Notify::new(),
            changed: Notify::new(),
            sample_rate: rate,
            chunk_frames,
        });
        let (err_tx, err_rx) = sync_channel(8);
        let format = supported.sample_format();
        let capacity = queue + chunk_frames;
        // Threads take their creator's priority: cpal's audio thread and the sound server
        // client's threads (ALSA's PulseAudio plugin starts one) are created while building.
        let boosted = AudioPriority::raise();
        let (stream, producer) = match open_stream(&device, config, format, capacity, &shared, &err_tx) {
            Ok(opened) => opened,
            // A device that cannot take the automatic period keeps its own.
            Err(e) if auto && e.kind() != cpal::ErrorKind::UnsupportedOperation => {
                tracing::warn!(device = %device_name, period, error = %e, "the device refuses this period; keeping its default");
                config.buffer_size = cpal::BufferSize::Default;
                open_stream(&device, config, format, capacity, &shared, &err_tx).map_err(|e| open_error(&e))?
            }
            Err(e) => return Err(open_error(&e)),
        };
        drop(boosted);
        stream.play().map_err(|e| open_error(&e))?;
        let period = stream.buffer_size().ok();
        tracing::info!(device = %device_name, rate, channels, %format, ?period, "speaker open");
        let state = State {
            text: PlayedText::new(rate),
            speaking: false,
            first_reported: false,
            seen_start: 0,
            drained_since: None,
            reports: VecDeque::new(),
        };
        Ok(Self {
            settings,
            device_name,
            stream: Some(stream),
            producer,
            shared,
            state: Arc::new(Mutex::new(state)),
            resampler: None,
            errors: Some(err_rx),
            monitor: None,
            ticks: None,
        })
    }

    /// The speaker's counters.
    pub fn stats(&self) -> SpeakerStats {
        SpeakerStats(self.shared.clone())
    }

    /// The device in use, as `slowcat devices` names it.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Resamples and queues audio, waiting for room in the ring (the device's pace).
    async fn play(&mut self, samples: &[i16], channels: u16, rate: u32) -> Result<(), ProcessError> {
        let device_rate = self.shared.sample_rate;
        if self.resampler.as_ref().is_none_or(|r| r.from_rate() != rate) {
            self.resampler =
                Some(StreamResampler::new(rate, device_rate).map_err(|e| ProcessError::recoverable(ErrorChain(&e)))?);
        }
        let mono = to_mono_f32(samples, channels);
        let out = self.resampler.as_mut().expect("set above").push(&mono);
        self.write(&out).await
    }

    async fn write(&mut self, samples: &[f32]) -> Result<(), ProcessError> {
        for piece in samples.chunks(self.shared.chunk_frames) {
            while self.producer.slots() < piece.len() {
                // Every callback takes audio from the full ring and wakes this: none for so long
                // means the device stopped.
                if tokio::time::timeout(STALL_TIMEOUT, self.shared.taken.notified()).await.is_err() {
                    return Err(ProcessError::recoverable(format!(
                        "output device {} stopped taking audio; the rest of this reply is not played",
                        self.device_name
                    )));
                }
            }
            lock(&self.state).text.on_audio(piece.len() as u64);
            // Cannot fail: the room was checked above and only this task writes.
            let _ = self.producer.push_entire_slice(piece);
        }
        Ok(())
    }

    /// Pushes the resampler's tail out (the last few milliseconds of a sentence).
    async fn flush_resampler(&mut self) -> Result<(), ProcessError> {
        let Some(r) = self.resampler.as_mut() else { return Ok(()) };
        if r.from_rate() == r.to_rate() {
            return Ok(());
        }
        let silence = vec![0.0; (r.from_rate() / 50) as usize];
        let out = r.push(&silence);
        r.reset();
        self.write(&out).await
    }
}

/// The nice value the threads that move audio run at: PulseAudio's own. They sleep almost all
/// the time; woken late on a busy machine, the device underruns.
const AUDIO_NICE: i32 = -11;

/// Runs the current thread at [`AUDIO_NICE`] until dropped (Linux: the nice value is per
/// thread and new threads inherit it). Without the right to (not root, no `RLIMIT_NICE`),
/// nothing changes.
struct AudioPriority(Option<i32>);

#[cfg(target_os = "linux")]
mod nice {
    use std::ffi::c_int;
    unsafe extern "C" {
        fn getpriority(which: c_int, who: u32) -> c_int;
        fn setpriority(which: c_int, who: u32, prio: c_int) -> c_int;
    }
    const PRIO_PROCESS: c_int = 0;

    /// The calling thread's nice value (who 0: on Linux, the calling thread).
    pub fn get() -> i32 {
        // SAFETY: plain system calls on the calling thread; no memory is handed over.
        unsafe { getpriority(PRIO_PROCESS, 0) }
    }

    pub fn set(nice: i32) -> bool {
        // SAFETY: as above.
        unsafe { setpriority(PRIO_PROCESS, 0, nice) == 0 }
    }
}

impl AudioPriority {
    #[cfg(target_os = "linux")]
    fn raise() -> Self {
        let before = nice::get();
        if before > AUDIO_NICE && nice::set(AUDIO_NICE) {
            Self(Some(before))
        } else {
            tracing::debug!(nice = before, "cannot raise the audio threads' priority");
            Self(None)
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn raise() -> Self {
        Self(None)
    }
}

impl Drop for AudioPriority {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(before) = self.0 {
            nice::set(before);
        }
    }
}

/// Builds the output stream in the device's sample format, with a new ring of `capacity` frames
/// for it to play from; returns the stream and the ring's writing end.
fn open_stream(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    format: SampleFormat,
    capacity: usize,
    shared: &Arc<Shared>,
    errors: &SyncSender<String>,
) -> Result<(cpal::Stream, rtrb::Producer<f32>), cpal::Error> {
    let (producer, ring) = rtrb::RingBuffer::new(capacity);
    let (shared, errors) = (shared.clone(), errors.clone());
    let stream = match format {
        SampleFormat::F32 => build_stream::<f32>(device, config, ring, shared, errors),
        SampleFormat::I16 => build_stream::<i16>(device, config, ring, shared, errors),
        SampleFormat::I32 => build_stream::<i32>(device, config, ring, shared, errors),
        SampleFormat::U16 => build_stream::<u16>(device, config, ring, shared, errors),
        SampleFormat::U8 => build_stream::<u8>(device, config, ring, shared, errors),
        SampleFormat::F64 => build_stream::<f64>(device, config, ring, shared, errors),
        other => {
            return Err(cpal::Error::with_message(
                cpal::ErrorKind::UnsupportedOperation,
                format!("its sample format {other} is not supported"),
            ));
        }
    }?;
    Ok((stream, producer))
}

fn build_stream<T>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut ring: rtrb::Consumer<f32>,
    shared: Arc<Shared>,
    errors: SyncSender<String>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = usize::from(config.channels.max(1));
    let mut idle = true;
    let on_error = shared.clone();
    device.build_output_stream::<T, _, _>(
        config,
        move |data: &mut [T], info: &cpal::OutputCallbackInfo| {
            shared.callbacks.fetch_add(1, Ordering::AcqRel);
            let requested = shared.clear_requested.load(Ordering::Acquire);
            let cleared = requested != shared.clear_done.load(Ordering::Relaxed);
            if cleared {
                let n = ring.slots();
                if let Ok(chunk) = ring.read_chunk(n) {
                    chunk.commit_all();
                }
                shared.discarded.fetch_add(n as u64, Ordering::AcqRel);
                shared.clear_done.store(requested, Ordering::Release);
            }
            let frames = data.len() / channels;
            let n = ring.slots().min(frames);
            let mut filled = 0;
            if n > 0
                && let Ok(chunk) = ring.read_chunk(n)
            {
                let (a, b) = chunk.as_slices();
                for (frame, &s) in data.chunks_exact_mut(channels).zip(a.iter().chain(b)) {
                    frame.fill(T::from_sample(s.clamp(-1.0, 1.0)));
                    filled += 1;
                }
                chunk.commit_all();
                if idle {
                    let ns = u64::try_from(shared.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
                    shared.started_ns.store(ns + 1, Ordering::Release);
                }
                shared.played.fetch_add(filled as u64, Ordering::AcqRel);
                idle = false;
            } else {
                idle = true;
            }
            data[filled * channels..].fill(T::EQUILIBRIUM);
            let ts = info.timestamp();
            if let Some(latency) = ts.playback.checked_duration_since(ts.callback) {
                shared.latency_ns.store(u64::try_from(latency.as_nanos()).unwrap_or(0), Ordering::Relaxed);
            }
            // Only when something changed: a device playing silence wakes nobody.
            if filled > 0 || cleared {
                shared.taken.notify_one();
                shared.changed.notify_one();
            }
        },
        move |err: cpal::Error| {
            // Full: the monitor has not caught up; one message of the burst is enough.
            let _ = errors.try_send(err.to_string());
            on_error.changed.notify_one();
            // After any error but an xrun, cpal's ALSA thread tries again at once. ALSA's
            // PulseAudio plugin fails snd_pcm_avail_delay with EIO until PulseAudio's first
            // timing report for a (re)connected stream has come, so that is a busy loop, hundreds
            // of calls in a few ms, taking a CPU from the threads that bring the report.
            if err.kind() != cpal::ErrorKind::Xrun {
                std::thread::sleep(Duration::from_millis(1));
            }
        },
        None,
    )
}

/// Pushes a frame both ways: the turn logic upstream and the observers downstream want it.
async fn push_both(sender: &FrameSender, frame: Frame) {
    sender.push(frame.clone(), Direction::Upstream).await;
    sender.push(frame, Direction::Downstream).await;
}

/// Watches the counters: speaking started / stopped, first audio of a reply, the reply played
/// out (then reports what was said), device errors.
struct Monitor {
    id: String,
    sender: FrameSender,
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
    errors: Receiver<String>,
    epoch: Instant,
    stop_after: Duration,
    /// When a device error was last reported, and how many came after it unreported.
    last_error: Option<Instant>,
    unreported_errors: u64,
}

impl Monitor {
    /// Looks at the counters whenever the callback or the processor says they changed, and when
    /// the bookkeeping is due (`tick` says when); counts its looks in `ticks`.
    async fn run(mut self, cancel: tokio_util::sync::CancellationToken, ticks: watch::Sender<u64>) {
        let shared = self.shared.clone();
        let mut due: Option<Instant> = None;
        loop {
            let sleep = async move {
                match due {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = shared.changed.notified() => {}
                _ = sleep => {}
            }
            while let Ok(message) = self.errors.try_recv() {
                if let Some(frame) = self.error_frame(message) {
                    self.sender.push(frame, Direction::Downstream).await;
                }
            }
            let (frames, next) = self.tick();
            due = next;
            for (frame, both) in frames {
                if both {
                    push_both(&self.sender, frame).await;
                } else {
                    let dir = if matches!(frame, Frame::SpokenReply(_)) {
                        Direction::Upstream
                    } else {
                        Direction::Downstream
                    };
                    self.sender.push(frame, dir).await;
                }
            }
            ticks.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The frame reporting a device error, unless one was reported less than `ERROR_EVERY` ago.
    fn error_frame(&mut self, message: String) -> Option<Frame> {
        let now = Instant::now();
        if self.last_error.is_some_and(|at| now.duration_since(at) < ERROR_EVERY) {
            self.unreported_errors += 1;
            return None;
        }
        self.last_error = Some(now);
        let unreported = std::mem::take(&mut self.unreported_errors);
        tracing::warn!(processor = %self.id, error = %message, unreported, "output device error");
        let mut message = format!("output device error: {message}");
        if unreported > 0 {
            message.push_str(&format!(" ({unreported} more device errors since the last one reported)"));
        }
        Some(Frame::Error(Box::new(ErrorFrame { source: self.id.clone(), message, recoverable: true })))
    }

    /// One look at the counters; returns the frames to send (and whether both ways), and when to
    /// look again if nothing wakes the monitor before.
    fn tick(&self) -> (Vec<(Frame, bool)>, Option<Instant>) {
        let mut st = lock(&self.state);
        let mut out: Vec<(Frame, bool)> =
            st.reports.drain(..).map(|r| (Frame::SpokenReply(Box::new(r)), false)).collect();
        let now = Instant::now();
        let started = self.shared.started_ns.load(Ordering::Acquire);
        let consumed = self.shared.played.load(Ordering::Acquire) + self.shared.discarded.load(Ordering::Acquire);
        let drained = consumed >= st.text.written();
        if started != st.seen_start {
            st.seen_start = started;
            if !st.speaking {
                st.speaking = true;
                out.push((Frame::BotStartedSpeaking, true));
            }
            if !st.first_reported && (st.text.has_pending() || st.text.in_response()) {
                st.first_reported = true;
                let at = self.shared.base + Duration::from_nanos(started - 1);
                out.push((
                    Frame::Metrics(Box::new(Metric {
                        source: self.id.clone(),
                        turn: Some(st.text.turn()),
                        name: crate::frame::MetricName::FirstAudioAt,
                        value: at.saturating_duration_since(self.epoch),
                    })),
                    false,
                ));
            }
        }
        if !drained {
            // The callback wakes the monitor as it takes the rest.
            st.drained_since = None;
            return (out, None);
        }
        let since = *st.drained_since.get_or_insert(now);
        let latency = Duration::from_nanos(self.shared.latency_ns.load(Ordering::Relaxed));
        let complete = st.text.is_complete();
        // The last samples are still in the device's buffer for `latency`; inside a reply a
        // short pause is the next sentence being synthesized, not the end of speech.
        let hold = latency + if complete || !st.text.in_response() { Duration::ZERO } else { self.stop_after };
        if st.speaking && now.duration_since(since) >= hold {
            st.speaking = false;
            out.push((Frame::BotStoppedSpeaking, true));
        }
        if !st.speaking && complete && now.duration_since(since) >= latency {
            let written = st.text.written();
            if let Some(reply) = st.text.take(written, false) {
                tracing::debug!(turn = reply.turn, text = %reply.text, "reply played out");
                out.push((Frame::SpokenReply(Box::new(reply)), false));
            }
            st.first_reported = false;
        }
        let due = if st.speaking {
            Some(since + hold)
        } else if st.text.is_complete() {
            Some(since + latency)
        } else {
            None
        };
        (out, due)
    }
}

#[async_trait]
impl Processor for Speaker {
    /// The reply's audio and the frames that place its sentences on the timeline, on their way
    /// down.
    fn accepts(&self) -> crate::processor::Accepts {
        |frame, direction| {
            direction == Direction::Downstream
                && matches!(
                    frame,
                    Frame::OutputAudio(_)
                        | Frame::LlmResponseStart { .. }
                        | Frame::LlmResponseEnd
                        | Frame::TtsStarted { .. }
                        | Frame::TtsStopped
                )
        }
    }

    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        let Some(errors) = self.errors.take() else { return Ok(()) };
        let monitor = Monitor {
            id: ctx.id().to_string(),
            sender: ctx.sender(),
            shared: self.shared.clone(),
            state: self.state.clone(),
            errors,
            epoch: ctx.epoch(),
            stop_after: Duration::from_millis(u64::from(self.settings.stop_after_ms)),
            last_error: None,
            unreported_errors: 0,
        };
        let (ticks, ticked) = watch::channel(0);
        self.ticks = Some(ticked);
        self.monitor = Some(ctx.spawn(monitor.run(ctx.cancellation(), ticks)));
        Ok(())
    }

    async fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        ctx: &ProcessorContext,
    ) -> Result<(), ProcessError> {
        // Whatever this frame changes in the reply's bookkeeping, the monitor looks at it.
        let shared = self.shared.clone();
        let _changed = NotifyOnDrop(&shared.changed);
        match frame {
            Frame::OutputAudio(audio) => {
                // Consumed: the speaker is where the assistant's audio ends.
                return self.play(&audio.samples, audio.channels, audio.sample_rate).await;
            }
            Frame::LlmResponseStart { .. } => {
                let mut st = lock(&self.state);
                // A reply still playing when the next one starts is reported as it will be heard.
                let written = st.text.written();
                if let Some(previous) = st.text.take(written, false) {
                    st.reports.push_back(previous);
                }
                st.text.on_frame(&frame);
                st.first_reported = false;
            }
            Frame::TtsStopped => {
                let result = self.flush_resampler().await;
                lock(&self.state).text.on_frame(&frame);
                ctx.push(frame, direction).await;
                return result;
            }
            Frame::TtsStarted { .. } | Frame::LlmResponseEnd => lock(&self.state).text.on_frame(&frame),
            _ => {}
        }
        ctx.push(frame, direction).await;
        Ok(())
    }

    async fn interrupted(&mut self, ctx: &ProcessorContext) {
        let discarded_before = self.shared.discarded.load(Ordering::Acquire);
        let request = self.shared.clear_requested.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = tokio::time::Instant::now() + CLEAR_TIMEOUT;
        while self.shared.clear_done.load(Ordering::Acquire) < request {
            // The callback wakes this once it has emptied the ring.
            if tokio::time::timeout_at(deadline, self.shared.taken.notified()).await.is_err() {
                break;
            }
        }
        if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
        let played = self.shared.played.load(Ordering::Acquire) + discarded_before;
        let (reports, reply, was_speaking) = {
            let mut st = lock(&self.state);
            let reports = std::mem::take(&mut st.reports);
            let reply = st.text.take(played, true);
            // Whatever the callback did not get to is gone: the timeline jumps to the end.
            st.text.clear();
            let was_speaking = std::mem::take(&mut st.speaking);
            st.first_reported = false;
            st.drained_since = None;
            (reports, reply, was_speaking)
        };
        self.shared.changed.notify_one();
        tracing::debug!(processor = %ctx.id(), ?reply, "interrupted");
        if was_speaking {
            push_both(&ctx.sender(), Frame::BotStoppedSpeaking).await;
        }
        // The interruption emptied the TTS's lanes: these pushes do not wait.
        for reply in reports.into_iter().chain(reply) {
            ctx.push_upstream(Frame::SpokenReply(Box::new(reply))).await;
        }
    }

    async fn end(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        // Let the queued audio play out (bounded) so the last reply is heard and reported
        // before End travels on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        if let Some(ticks) = self.ticks.as_mut() {
            loop {
                let busy = {
                    let st = lock(&self.state);
                    let consumed =
                        self.shared.played.load(Ordering::Acquire) + self.shared.discarded.load(Ordering::Acquire);
                    consumed < st.text.written() || st.speaking || st.text.is_complete()
                };
                // Look again after the monitor's next look; done when it has stopped.
                if !busy || !matches!(tokio::time::timeout_at(deadline, ticks.changed()).await, Ok(Ok(()))) {
                    break;
                }
            }
        }
        // A reply the stream ended in the middle of is reported as far as it got.
        let (reports, reply) = {
            let mut st = lock(&self.state);
            let written = st.text.written();
            (std::mem::take(&mut st.reports), st.text.take(written, false))
        };
        for reply in reports.into_iter().chain(reply) {
            ctx.push_upstream(Frame::SpokenReply(Box::new(reply))).await;
        }
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(m) = self.monitor.take() {
            m.abort();
        }
        if let Some(stream) = self.stream.take() {
            let _ = stream.pause();
        }
    }
}

/// Notifies on drop, so every way out of a call (early returns, `?`) tells the monitor.
struct NotifyOnDrop<'a>(&'a Notify);

impl Drop for NotifyOnDrop<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}
