//! Both VADs on generated speech padded with known silence: the boundaries they report.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod speech_in_util;

use std::time::Duration;

use slowcat_processors::harness::Harness;
use slowcat_processors::registry::Settings;
use slowcat_processors::vad::{SileroVadSettings, WebRtcVadSettings};
use slowcat_processors::{BoxProcessor, Frame};
use speech_in_util::*;

const BEFORE: f32 = 1.2;
const AFTER: f32 = 1.5;

struct Found {
    starts: Vec<Duration>,
    ends: Vec<Duration>,
    started: usize,
    stopped: usize,
    /// The speaking events' turn numbers and positions: start, stop.
    events: Vec<(&'static str, u64, Duration)>,
    /// `UserSpeechPaused`: end of speech and the silence the stop will have heard.
    pauses: Vec<(Duration, Duration)>,
    audio_frames: usize,
    /// Timestamp of the audio frame just before `UserStartedSpeaking`.
    audio_before_started: Option<Duration>,
}

async fn run(vad: BoxProcessor, samples: &[i16], origin: Duration) -> Found {
    let out = Harness::run(vec![vad], frames(samples, origin)).await;
    let mut f = Found {
        starts: vec![],
        ends: vec![],
        started: 0,
        stopped: 0,
        events: vec![],
        pauses: vec![],
        audio_frames: 0,
        audio_before_started: None,
    };
    let mut last_pts = None;
    for frame in &out.downstream {
        match frame {
            Frame::InputAudio(a) => {
                f.audio_frames += 1;
                last_pts = Some(a.pts);
            }
            Frame::UserStartedSpeaking { turn, at } => {
                f.started += 1;
                f.events.push(("start", *turn, *at));
                f.audio_before_started = f.audio_before_started.or(last_pts);
            }
            Frame::UserSpeechPaused { at, stop_after, .. } => f.pauses.push((*at, *stop_after)),
            Frame::UserStoppedSpeaking { turn, at } => {
                f.stopped += 1;
                f.events.push(("stop", *turn, *at));
            }
            Frame::Metrics(m) if m.name == slowcat_processors::MetricName::UserSpeechStartAt => f.starts.push(m.value),
            Frame::Metrics(m) if m.name == slowcat_processors::MetricName::UserSpeechEndAt => f.ends.push(m.value),
            _ => {}
        }
    }
    f
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

async fn check_boundaries(name: &str, build: impl Fn() -> BoxProcessor) {
    let origin = Duration::from_millis(5_000);
    for text in ["Please turn off the lights in the kitchen", "What time does the train leave tomorrow morning"] {
        let speech = espeak(text, "en-us");
        let clip = padded(&speech, BEFORE, AFTER);
        let f = run(build(), &clip, origin).await;
        let true_start = origin + Duration::from_secs_f32(BEFORE);
        let true_end = true_start + Duration::from_secs_f64(speech.len() as f64 / 16_000.0);
        println!(
            "{name}: {text:?}: start {:?} (true {}), end {:?} (true {}) ms",
            f.starts.iter().map(|&d| ms(d)).collect::<Vec<_>>(),
            ms(true_start),
            f.ends.iter().map(|&d| ms(d)).collect::<Vec<_>>(),
            ms(true_end)
        );
        assert_eq!(f.audio_frames, clip.len().div_ceil(320), "{name} must forward every audio frame");
        assert_eq!((f.started, f.stopped), (1, 1), "{name}: one utterance, one start and one stop");
        assert_eq!((f.starts.len(), f.ends.len()), (1, 1), "{name}: one boundary metric each");
        let (start, end) = (f.starts[0], f.ends[0]);
        // The events say where the speech began and ended, as the metrics do, and number it.
        assert_eq!(f.events, [("start", 1, start), ("stop", 1, end)], "{name}");
        assert!(
            (ms(start) - ms(true_start)).abs() <= 100,
            "{name}: speech start {} ms, true {} ms",
            ms(start),
            ms(true_start)
        );
        assert!((ms(end) - ms(true_end)).abs() <= 100, "{name}: speech end {} ms, true {} ms", ms(end), ms(true_end));
        // The pause that the stop confirms reports the same end of speech, so that work started
        // at the pause is used; it says how much silence the stop waits for (400 ms, in whole
        // detector windows).
        let &(paused_at, stop_after) = f.pauses.last().expect("no pause before the stop");
        assert_eq!(paused_at, end, "{name}: the last pause and the stop disagree on the end of speech");
        assert!(
            stop_after >= Duration::from_millis(400) && stop_after < Duration::from_millis(432),
            "{name}: stop_after {} ms",
            ms(stop_after)
        );
        // UserStartedSpeaking follows the audio in which the speech had lasted start_ms.
        let emitted = f.audio_before_started.unwrap();
        assert!(
            emitted >= start + Duration::from_millis(140) && emitted <= start + Duration::from_millis(400),
            "{name}: started emitted after audio at {} ms for speech from {} ms",
            ms(emitted),
            ms(start)
        );
    }
}

#[tokio::test]
async fn silero_finds_speech_boundaries_within_100ms() {
    let ctx = build_context();
    model("silero_vad.onnx");
    let settings = SileroVadSettings { stop_ms: 400, ..Default::default() };
    check_boundaries("silero", || settings.clone().check_and_build(&ctx).expect("silero_vad builds")).await;
}

#[tokio::test]
async fn webrtc_finds_speech_boundaries_within_100ms() {
    let ctx = build_context();
    let settings = WebRtcVadSettings { stop_ms: 400, ..Default::default() };
    check_boundaries("webrtc", || settings.clone().check_and_build(&ctx).expect("webrtc_vad builds")).await;
}

#[tokio::test]
async fn silence_and_noise_are_not_speech() {
    let ctx = build_context();
    model("silero_vad.onnx");
    let quiet = noise(16_000 * 3, -60.0, 7);
    let loud_noise = noise(16_000 * 3, -25.0, 8);
    for (what, clip) in [("quiet noise", &quiet), ("loud white noise", &loud_noise)] {
        let silero = SileroVadSettings::default().check_and_build(&ctx).unwrap();
        let f = run(silero, clip, Duration::ZERO).await;
        assert_eq!(f.started, 0, "silero took {what} for speech");
    }
    let webrtc = WebRtcVadSettings::default().check_and_build(&ctx).unwrap();
    let f = run(webrtc, &quiet, Duration::ZERO).await;
    assert_eq!(f.started, 0, "webrtc took quiet noise for speech");
}

#[test]
fn missing_silero_model_is_named() {
    let ctx = slowcat_processors::BuildContext::for_dir("/nonexistent");
    let problems = SileroVadSettings::default().check(&ctx);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, Some("model"));
    assert!(problems[0].message.contains("/nonexistent/models/silero_vad.onnx"), "{}", problems[0].message);
    assert!(problems[0].message.contains("fetch-models.sh"), "{}", problems[0].message);
    let err = SileroVadSettings::default().check_and_build(&ctx).err().expect("build fails");
    assert!(err.to_string().contains("silero_vad.onnx"), "{err}");
}

#[tokio::test]
async fn speech_below_min_volume_is_ignored() {
    let ctx = build_context();
    model("silero_vad.onnx");
    // Speech 40 dB down (far away, or someone else's quiet conversation), no noise floor.
    let speech: Vec<i16> =
        espeak("Please turn off the lights in the kitchen", "en-us").iter().map(|&s| s / 100).collect();
    let mut clip = vec![0i16; 16_000];
    clip.extend(&speech);
    clip.extend(vec![0i16; 16_000]);
    let f = run(SileroVadSettings::default().check_and_build(&ctx).unwrap(), &clip, Duration::ZERO).await;
    assert_eq!(f.started, 0, "speech 40 dB down passed the default min_volume_db of -45");
    let f = run(WebRtcVadSettings::default().check_and_build(&ctx).unwrap(), &clip, Duration::ZERO).await;
    assert_eq!(f.started, 0, "webrtc: speech 40 dB down passed the default min_volume_db of -45");
    // With the floor lowered, the same audio is speech.
    let low = SileroVadSettings { min_volume_db: -90.0, ..Default::default() };
    let f = run(low.check_and_build(&ctx).unwrap(), &clip, Duration::ZERO).await;
    assert_eq!(f.started, 1, "silero with min_volume_db = -90 should hear the quiet speech");
}
