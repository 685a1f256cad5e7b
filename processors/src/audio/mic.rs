//! `mic`: captures a cpal input device as 16 kHz mono `InputAudio` frames of 20 ms.
//!
//! Three stages, so nothing blocks where it must not:
//! - the cpal data callback only converts samples to f32 and copies whole frames into a
//!   lock-free ring (rtrb); when the ring is full it drops and counts;
//! - a dedicated capture thread owns the stream (cpal streams are not `Send` everywhere), drains
//!   the ring every 10 ms, mixes to mono, resamples to 16 kHz and cuts 20 ms frames stamped on the
//!   pipeline timeline; when the device fails it reports it and reopens it every `retry_ms`;
//! - an async task pushes the frames (and error reports) into the pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, SizedSample};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::devices::{self, DeviceKind};
use super::resample::{StreamResampler, to_i16};
use crate::PIPELINE_SAMPLE_RATE;
use crate::error::ErrorChain;
use crate::frame::{AudioFrame, ErrorFrame, Frame};
use crate::processor::{BoxProcessor, BuildContext, ProcessError, Processor, ProcessorContext};
use crate::registry::{BuildError, Problem, Settings};

/// Length of each frame sent downstream.
const FRAME: Duration = Duration::from_millis(20);
/// How often the capture thread drains the ring.
const POLL: Duration = Duration::from_millis(10);
/// Ring capacity in time: the capture thread may stall this long before samples are dropped.
const RING: Duration = Duration::from_millis(500);
/// Frames waiting for the pipeline before the capture thread drops them (1 s).
const FRAME_QUEUE: usize = 50;
/// A new stream that has delivered nothing for this long is dead (capture through ALSA→PulseAudio
/// is silent for up to 2.2 s after it starts, so this must be well above that).
const STALL_AT_START: Duration = Duration::from_secs(5);
/// A stream that delivered audio and then nothing for this long is dead even without an error
/// (a sound server that died leaves the stream hanging without one).
const STALL: Duration = Duration::from_secs(2);
/// The timeline is realigned to the clock when the sample count drifts this far from it
/// (dropped samples, a reopened device).
const REALIGN: Duration = Duration::from_millis(300);

/// Settings of `mic`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicSettings {
    /// The input device: empty or `default` for the system default, else an id or (part of) a
    /// name as `slowcat devices` lists them.
    pub device: String,
    /// While the device is missing or broken, try to reopen it this often (milliseconds).
    pub retry_ms: u32,
}

impl Default for MicSettings {
    fn default() -> Self {
        Self { device: String::new(), retry_ms: 1000 }
    }
}

impl Settings for MicSettings {
    const TYPE: &'static str = "mic";
    const ABOUT: &'static str = "captures an input device (cpal) as 16 kHz mono audio frames of 20 ms";
    const SOURCE: bool = true;

    fn check(&self, _ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        // Listing devices is cheap (ALSA hints, nothing opened); the default device can only be
        // checked by opening it, which `build` does.
        if !devices::is_default_name(&self.device)
            && let Err(e) = devices::find(DeviceKind::Input, &self.device)
        {
            problems.push(Problem::at("device", e.to_string()));
        }
        if !(100..=60_000).contains(&self.retry_ms) {
            problems.push(Problem::at("retry_ms", "`retry_ms` must be between 100 and 60000"));
        }
        problems
    }

    fn build(self, _ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        // Open the device's configuration once now, so a device that cannot be used is reported
        // before the pipeline starts rather than as the first error frame.
        let (device, config) = open_config(&self.device).map_err(|e| BuildError::Invalid(e.to_string()))?;
        tracing::info!(
            device = %devices::describe(&device), rate = config.sample_rate(), channels = config.channels(),
            format = %config.sample_format(), "microphone ready"
        );
        Ok(Box::new(Mic { settings: self, capture: None }))
    }
}

/// Why the microphone cannot capture.
#[derive(Debug, thiserror::Error)]
pub enum MicError {
    /// The device is not there.
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    /// The device is there but cannot be opened for capture.
    #[error("cannot open input device {device} ({source}). {hint}")]
    Open {
        /// Which device.
        device: String,
        /// What cpal said.
        source: cpal::Error,
        /// What to do.
        hint: String,
    },
    /// The device delivers samples in a format slowcat does not convert.
    #[error("input device {device} delivers {format} samples, which slowcat cannot read; choose another device")]
    Format {
        /// Which device.
        device: String,
        /// Its sample format.
        format: cpal::SampleFormat,
    },
}

fn open_hint(wanted: &str) -> String {
    let exist = devices::list(DeviceKind::Input)
        .map(|l| l.iter().map(|d| d.id.clone()).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let server = if devices::is_default_name(wanted) {
        "Is the sound server running (`scripts/pulse.sh start` starts one without hardware)? "
    } else {
        ""
    };
    format!("{server}Input devices that exist: {exist} (see `slowcat devices`)")
}

/// Finds the device and its native input configuration.
fn open_config(name: &str) -> Result<(cpal::Device, cpal::SupportedStreamConfig), MicError> {
    let device = devices::find(DeviceKind::Input, name)?;
    let config = device.default_input_config().map_err(|source| MicError::Open {
        device: devices::describe(&device),
        source,
        hint: open_hint(name),
    })?;
    Ok((device, config))
}

/// The running `mic` processor.
pub struct Mic {
    settings: MicSettings,
    capture: Option<Capture>,
}

struct Capture {
    stop: Arc<AtomicBool>,
    forward: JoinHandle<()>,
}

enum Event {
    Audio(AudioFrame),
    Error(String),
}

#[async_trait]
impl Processor for Mic {
    async fn start(&mut self, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        let (tx, mut rx) = mpsc::channel::<Event>(FRAME_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let job = CaptureThread {
            device: self.settings.device.clone(),
            retry: Duration::from_millis(self.settings.retry_ms.into()),
            epoch: ctx.epoch(),
            stop: stop.clone(),
            tx,
        };
        // Detached: it stops by itself within one poll of the flag or of the channel closing, and
        // is not joined so that a driver stuck in close cannot hold up shutdown.
        std::thread::Builder::new()
            .name("slowcat-mic".into())
            .spawn(move || job.run())
            .map_err(|e| ProcessError::fatal(format!("cannot start the capture thread: {e}")))?;
        let sender = ctx.sender();
        let cancel = ctx.cancellation();
        let id = ctx.id().to_string();
        let forward = ctx.spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = rx.recv() => match e { Some(e) => e, None => return },
                };
                let frame = match event {
                    Event::Audio(a) => Frame::InputAudio(a),
                    Event::Error(message) => {
                        Frame::Error(Box::new(ErrorFrame { source: id.clone(), message, recoverable: true }))
                    }
                };
                if !sender.downstream(frame).await {
                    return;
                }
            }
        });
        self.capture = Some(Capture { stop, forward });
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(c) = self.capture.take() {
            c.stop.store(true, Ordering::Relaxed);
            c.forward.abort();
        }
    }
}

/// State shared by the capture thread and the cpal callbacks of one stream.
struct Shared {
    dropped: AtomicU64,
    failed: AtomicBool,
}

struct CaptureThread {
    device: String,
    retry: Duration,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Event>,
}

impl CaptureThread {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.tx.is_closed()
    }

    fn report(&self, message: String) {
        tracing::warn!(device = %self.device, error = %message, "microphone");
        let _ = self.tx.try_send(Event::Error(message));
    }

    /// Sleeps up to `d`, waking early when told to stop.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }

    fn run(self) {
        let mut down = false;
        while !self.stopped() {
            match self.open() {
                Ok((stream, stream_state)) => {
                    if down {
                        tracing::info!(device = %self.device, "input device is back");
                        down = false;
                    }
                    let failure = self.pump(stream_state);
                    if let Some(why) = &failure {
                        self.report(format!(
                            "input device {} stopped working ({why}); reopening it every {} ms",
                            display_name(&self.device),
                            self.retry.as_millis()
                        ));
                        down = true;
                    }
                    close(stream);
                    if failure.is_some() {
                        self.sleep(self.retry);
                    }
                }
                Err(e) => {
                    if !down {
                        self.report(format!("{e}; retrying every {} ms", self.retry.as_millis()));
                        down = true;
                    } else {
                        tracing::debug!(device = %self.device, error = %e, "input device still unavailable");
                    }
                    self.sleep(self.retry);
                }
            }
        }
    }

    fn open(&self) -> Result<(cpal::Stream, StreamState), MicError> {
        let (device, supported) = open_config(&self.device)?;
        let config = supported.config();
        let channels = usize::from(config.channels.max(1));
        // Whole frames only, so a read split at the ring's wrap-around still holds whole frames.
        let frames = (config.sample_rate as usize * RING.as_millis() as usize / 1000).max(1024);
        let (producer, consumer) = rtrb::RingBuffer::<f32>::new(frames * channels);
        let shared = Arc::new(Shared { dropped: AtomicU64::new(0), failed: AtomicBool::new(false) });
        let name = devices::describe(&device);
        let open_err = |source| MicError::Open { device: name.clone(), source, hint: open_hint(&self.device) };
        let stream = match supported.sample_format() {
            cpal::SampleFormat::F32 => build::<f32>(&device, &config, producer, shared.clone()),
            cpal::SampleFormat::I16 => build::<i16>(&device, &config, producer, shared.clone()),
            cpal::SampleFormat::I32 => build::<i32>(&device, &config, producer, shared.clone()),
            cpal::SampleFormat::U16 => build::<u16>(&device, &config, producer, shared.clone()),
            cpal::SampleFormat::U8 => build::<u8>(&device, &config, producer, shared.clone()),
            cpal::SampleFormat::I8 => build::<i8>(&device, &config, producer, shared.clone()),
            cpal::SampleFormat::F64 => build::<f64>(&device, &config, producer, shared.clone()),
            format => return Err(MicError::Format { device: name, format }),
        }
        .map_err(open_err)?;
        stream.play().map_err(open_err)?;
        let resampler = StreamResampler::new(config.sample_rate, PIPELINE_SAMPLE_RATE).map_err(|e| MicError::Open {
            device: name.clone(),
            source: cpal::Error::with_message(cpal::ErrorKind::UnsupportedConfig, ErrorChain(&e).to_string()),
            hint: "Choose another device.".into(),
        })?;
        tracing::info!(device = %name, rate = config.sample_rate, channels, "listening: capturing from the microphone, speak now");
        Ok((stream, StreamState { consumer, shared, channels, resampler }))
    }

    /// Moves audio from the ring into the pipeline until the stream fails (returns why) or the
    /// processor stops (returns None).
    fn pump(&self, mut st: StreamState) -> Option<String> {
        let per_frame = (PIPELINE_SAMPLE_RATE as usize * FRAME.as_millis() as usize) / 1000;
        let mut out: Vec<f32> = Vec::new();
        let mut next_pts: Option<Duration> = None;
        let mut last_data = Instant::now();
        let mut flowing = false;
        let mut reported_drops = 0u64;
        let mut queue_drops = 0u64;
        let mut last_drop_log = Instant::now() - Duration::from_secs(10);
        let mut mono = Vec::new();
        while !self.stopped() {
            std::thread::sleep(POLL);
            if st.shared.failed.load(Ordering::Acquire) {
                return Some("the stream reported an error".into());
            }
            let n = st.consumer.slots() / st.channels * st.channels;
            if n == 0 {
                let limit = if flowing { STALL } else { STALL_AT_START };
                if last_data.elapsed() > limit {
                    return Some(format!("no audio for {} s", limit.as_secs()));
                }
                continue;
            }
            last_data = Instant::now();
            flowing = true;
            let Ok(chunk) = st.consumer.read_chunk(n) else { continue };
            let (a, b) = chunk.as_slices();
            mono.clear();
            let ch = st.channels;
            let mix = |s: &[f32], mono: &mut Vec<f32>| {
                mono.extend(s.chunks_exact(ch).map(|f| f.iter().sum::<f32>() / ch as f32));
            };
            mix(a, &mut mono);
            mix(b, &mut mono);
            chunk.commit_all();
            out.extend(st.resampler.push(&mono));

            // The newest sample was captured about now: stamp the unsent audio from the clock,
            // and keep counting samples unless that drifted away.
            let now = self.epoch.elapsed();
            let estimate = now.saturating_sub(samples_to_duration(out.len()));
            match next_pts {
                Some(p) if p.abs_diff(estimate) <= REALIGN => {}
                Some(p) => {
                    tracing::debug!(
                        from_ms = p.as_millis() as u64,
                        to_ms = estimate.as_millis() as u64,
                        "realigned capture timeline"
                    );
                    next_pts = Some(estimate);
                }
                None => next_pts = Some(estimate),
            }
            let mut pts = next_pts.unwrap_or(estimate);
            let mut sent = 0;
            while out.len() - sent >= per_frame {
                let frame = AudioFrame::new(to_i16(&out[sent..sent + per_frame]), PIPELINE_SAMPLE_RATE, 1, pts);
                sent += per_frame;
                pts += FRAME;
                if self.tx.try_send(Event::Audio(frame)).is_err() {
                    queue_drops += 1;
                }
            }
            out.drain(..sent);
            next_pts = Some(pts);

            let dropped = st.shared.dropped.load(Ordering::Relaxed);
            if (dropped > reported_drops || queue_drops > 0) && last_drop_log.elapsed() >= Duration::from_secs(1) {
                tracing::warn!(
                    device = %self.device, ring_samples = dropped - reported_drops, frames = queue_drops,
                    "microphone audio dropped: the pipeline is not keeping up"
                );
                reported_drops = dropped;
                queue_drops = 0;
                last_drop_log = Instant::now();
            }
        }
        None
    }
}

/// Closes a stream without waiting for it: closing joins cpal's worker thread, which can be stuck
/// for good in a driver call when the device or sound server vanished under it. A stuck close
/// costs one parked thread instead of the microphone.
fn close(stream: cpal::Stream) {
    let spawned = std::thread::Builder::new().name("slowcat-mic-close".into()).spawn(move || {
        let started = Instant::now();
        drop(stream);
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "input stream closed");
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to close the input stream; leaking it");
    }
}

fn display_name(device: &str) -> &str {
    if devices::is_default_name(device) { "default" } else { device }
}

fn samples_to_duration(n: usize) -> Duration {
    Duration::from_nanos(n as u64 * 1_000_000_000 / u64::from(PIPELINE_SAMPLE_RATE))
}

struct StreamState {
    consumer: rtrb::Consumer<f32>,
    shared: Arc<Shared>,
    channels: usize,
    resampler: StreamResampler,
}

/// Builds an input stream whose callback only converts and copies whole frames into the ring.
fn build<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    mut producer: rtrb::Producer<f32>,
    shared: Arc<Shared>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    let on_error = {
        let shared = shared.clone();
        move |e: cpal::Error| {
            // Not the audio thread's data path: logging here is fine.
            tracing::warn!(error = %e, "input stream error");
            shared.failed.store(true, Ordering::Release);
        }
    };
    device.build_input_stream::<T, _, _>(
        *config,
        move |data: &[T], _: &cpal::InputCallbackInfo| {
            let fit = producer.slots().min(data.len()) / channels * channels;
            if let Ok(chunk) = producer.write_chunk_uninit(fit) {
                chunk.fill_from_iter(data[..fit].iter().map(|&s| f32::from_sample_(s)));
            }
            let lost = data.len() - fit;
            if lost > 0 {
                shared.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            }
        },
        on_error,
        None,
    )
}
