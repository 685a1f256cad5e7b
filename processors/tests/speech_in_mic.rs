//! `mic` on a real PulseAudio null sink: what is played into the sink is what the processor
//! captures. (A source vanishing mid-run: `speech_in_mic_vanish.rs`.)
//!
//! The test starts the daemon itself (`scripts/pulse.sh start`) and uses a null sink of its own,
//! selected through `PULSE_SOURCE`, so sounds other tests play into the default sink do not
//! reach it. One test function only: it sets environment variables for this process.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod speech_in_util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use slowcat_processors::audio::MicSettings;
use slowcat_processors::harness::Harness;
use slowcat_processors::registry::Settings;
use slowcat_processors::{AudioFrame, Frame};
use speech_in_util::*;

fn pulse_start() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pulse.sh");
    let out = Command::new(&script).arg("start").output().expect("cannot run scripts/pulse.sh");
    assert!(
        out.status.success(),
        "`scripts/pulse.sh start` failed (install pulseaudio with scripts/setup-system.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.trim().strip_prefix("export PULSE_SERVER=").expect("pulse.sh prints the server address").to_string()
}

fn pactl(args: &[&str]) -> String {
    let out = Command::new("pactl").args(args).output().expect("cannot run pactl");
    assert!(out.status.success(), "pactl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A null sink of this test's own; unloaded when dropped.
struct NullSink {
    module: String,
}

impl NullSink {
    fn load(name: &str) -> Self {
        Self { module: pactl(&["load-module", "module-null-sink", &format!("sink_name={name}")]) }
    }
}

impl Drop for NullSink {
    fn drop(&mut self) {
        let _ = Command::new("pactl").args(["unload-module", &self.module]).status();
    }
}

fn write_wav(path: &Path, samples: &[i16], rate: u32, channels: u16) {
    let spec =
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

/// Plays a WAV file into the sink and returns when it has been played.
fn play(sink: &str, path: &Path) {
    let status = Command::new("paplay").arg(format!("--device={sink}")).arg(path).status().expect("cannot run paplay");
    assert!(status.success(), "paplay failed");
}

/// Collects the audio captured during `d`.
async fn capture(h: &mut Harness, d: Duration) -> Vec<AudioFrame> {
    let from = h.output().downstream.len();
    h.wait_for(d, |_, _| false).await;
    h.output().downstream[from..]
        .iter()
        .filter_map(|f| if let Frame::InputAudio(a) = f { Some(a.clone()) } else { None })
        .collect()
}

fn correlation_at(hay: &[f32], needle: &[f32], off: usize, step: usize) -> f32 {
    let (mut dot, mut hn, mut nn) = (0f32, 0f32, 0f32);
    for i in (0..needle.len()).step_by(step) {
        let (a, b) = (hay[off + i], needle[i]);
        dot += a * b;
        hn += a * a;
        nn += b * b;
    }
    if hn == 0.0 || nn == 0.0 { 0.0 } else { dot / (hn * nn).sqrt() }
}

/// Best normalized cross-correlation of `needle` within `hay` (both 16 kHz mono): a coarse
/// search on every 4th sample and offset, refined around the best.
fn best_correlation(hay: &[f32], needle: &[f32]) -> (f32, usize) {
    let offsets = hay.len().saturating_sub(needle.len());
    let coarse = (0..offsets)
        .step_by(4)
        .max_by(|&a, &b| correlation_at(hay, needle, a, 4).total_cmp(&correlation_at(hay, needle, b, 4)))
        .unwrap_or(0);
    (coarse.saturating_sub(8)..(coarse + 8).min(offsets))
        .map(|o| (correlation_at(hay, needle, o, 1), o))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or((0.0, 0))
}

/// Power of `freq` in `x` relative to the total (Goertzel).
fn tone_share(x: &[f32], freq: f32) -> f32 {
    let w = std::f32::consts::TAU * freq / 16_000.0;
    let (mut s1, mut s2) = (0f32, 0f32);
    for &v in x {
        let s = v + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let total: f32 = x.iter().map(|v| v * v).sum::<f32>() * x.len() as f32 / 2.0;
    power / total.max(1e-9)
}

#[tokio::test]
async fn mic_captures_what_is_played_into_a_null_sink() {
    let server = pulse_start();
    let sink_name = format!("slowcat_mic_test_{}", std::process::id());
    let _sink = NullSink::load(&sink_name);
    // SAFETY: this test binary has a single test and sets these before any thread of its own
    // reads the environment; libpulse reads them when the capture stream connects.
    unsafe {
        std::env::set_var("PULSE_SERVER", &server);
        std::env::set_var("PULSE_SOURCE", format!("{sink_name}.monitor"));
    }
    let dir = tempfile::tempdir().unwrap();

    let settings = MicSettings { retry_ms: 500, ..Default::default() };
    let mic = settings.check_and_build(&build_context()).expect("mic builds on the default device");
    let t0 = Instant::now();
    let mut h = Harness::start(vec![mic]).await;

    // Capture through ALSA→PulseAudio is silent for up to ~2 s after the stream starts.
    let first = h.wait_for(Duration::from_secs(10), |f, _| matches!(f, Frame::InputAudio(_))).await;
    let Some(Frame::InputAudio(first)) = first else { panic!("no audio captured within 10 s") };
    println!("first audio after {:?}, pts {:?}", t0.elapsed(), first.pts);
    assert_eq!((first.sample_rate, first.channels, first.samples.len()), (16_000, 1, 320), "20 ms of 16 kHz mono");

    // A 1 kHz tone at 48 kHz stereo (the sink's native format), then speech at 22.05 kHz.
    let tone: Vec<i16> = (0..48_000)
        .flat_map(|i| {
            let v = ((i as f32 * 1000.0 * std::f32::consts::TAU / 48_000.0).sin() * 16_000.0) as i16;
            [v, v]
        })
        .collect();
    let tone_wav = dir.path().join("tone.wav");
    write_wav(&tone_wav, &tone, 48_000, 2);
    let speech = espeak("Please turn off the lights in the kitchen.", "en-us");
    let speech_wav = dir.path().join("speech.wav");
    write_wav(&speech_wav, &speech, 16_000, 1);

    let sink2 = sink_name.clone();
    let (tone_path, speech_path) = (tone_wav.clone(), speech_wav.clone());
    let player = std::thread::spawn(move || {
        play(&sink2, &tone_path);
        std::thread::sleep(Duration::from_millis(300));
        play(&sink2, &speech_path);
    });
    // Record while the player plays (slower on a busy machine), then half a second more.
    let mut captured = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    while !player.is_finished() && Instant::now() < give_up {
        captured.extend(capture(&mut h, Duration::from_millis(200)).await);
    }
    captured.extend(capture(&mut h, Duration::from_millis(500)).await);
    let now = t0.elapsed();
    player.join().unwrap();

    // Frames are contiguous 20 ms steps on the pipeline timeline, near the wall clock.
    for pair in captured.windows(2) {
        let step = pair[1].pts.saturating_sub(pair[0].pts);
        assert!(step == Duration::from_millis(20) || step > Duration::from_millis(300), "pts step {step:?}");
    }
    let last = captured.last().expect("audio while playing");
    let lag = now.as_secs_f64() - last.pts.as_secs_f64();
    println!("{} frames captured; last pts {:?}, {lag:.3} s behind the clock", captured.len(), last.pts);
    assert!((-0.1..1.0).contains(&lag), "timestamps are {lag:.3} s off the pipeline clock");

    let audio: Vec<f32> = captured.iter().flat_map(|a| a.samples.iter().map(|&s| f32::from(s) / 32768.0)).collect();
    // The tone: the loudest second should be almost all 1 kHz.
    let loud = (0..audio.len().saturating_sub(8_000))
        .step_by(1_600)
        .max_by(|&a, &b| {
            let e = |o: usize| audio[o..o + 8_000].iter().map(|v| v * v).sum::<f32>();
            e(a).total_cmp(&e(b))
        })
        .unwrap();
    let share = tone_share(&audio[loud..loud + 8_000], 1000.0);
    let off = tone_share(&audio[loud..loud + 8_000], 700.0);
    println!("1 kHz share of the loudest 0.5 s: {share:.3} (700 Hz: {off:.4})");
    assert!(share > 0.8 && off < 0.05, "the recording does not hold the 1 kHz tone");
    // The speech: the recording correlates with what was played.
    let played = to_f32(&speech);
    let (corr, at) = best_correlation(&audio, &played);
    println!("speech correlation {corr:.3} at {:.2} s", at as f32 / 16_000.0);
    assert!(corr > 0.9, "recorded speech correlates only {corr:.3} with what was played");

    let out = h.cancel().await;
    assert!(out.hung.is_empty(), "mic did not stop: {:?}", out.hung);
}
