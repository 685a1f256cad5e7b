//! Measures what the VADs' input gain (`max_gain_db`, vad/level.rs) changes: for each recording of
//! the human set and for non-speech sounds at several levels, the turns Silero and WebRTC start
//! and where they put them, with the gain off and on, and Silero's highest speech probability
//! with the input raised by a fixed 0–24 dB.
//!
//! `vad_level [--max-gain 24]`

#![allow(clippy::unwrap_used)] // a measuring tool built on the tests' helpers, which unwrap

#[path = "../tests/speech_in_util/mod.rs"]
mod speech_in_util;

use std::time::Duration;

use slowcat_processors::AudioFrame;
use slowcat_processors::vad::{Decision, Detector, SileroDetector, SpeechEvent, VadCore, WebRtcDetector};
use speech_in_util::human::{breath, cough, human_set, pink_noise};
use speech_in_util::{models_dir, noise};

/// The speech boundaries found in `x` (ms): (start, end) per turn.
fn turns<D: Detector>(core: VadCore<D>, x: &[i16]) -> Vec<(u128, u128)> {
    let mut core = core;
    let mut found = Vec::new();
    let mut start = 0;
    let events = x.chunks(320).enumerate().flat_map(|(i, c)| {
        core.push(&AudioFrame::new(c.to_vec(), 16_000, 1, Duration::from_millis(20 * i as u64))).unwrap()
    });
    for e in events.collect::<Vec<_>>().into_iter().chain(core.flush()) {
        match e {
            SpeechEvent::Started { at } => start = at.as_millis(),
            SpeechEvent::Stopped { at } => found.push((start, at.as_millis())),
            SpeechEvent::Paused { .. } => {}
        }
    }
    found
}

fn show(t: &[(u128, u128)]) -> String {
    let s: Vec<String> = t.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    format!("{} [{}]", t.len(), s.join(" "))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut max_gain = 24.0f32;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--max-gain" => max_gain = args.next().expect("--max-gain DB").parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = models_dir();
    let silero = || SileroDetector::load(&dir, &dir.join("silero_vad.onnx"), 1).unwrap();
    let ms = |n| Duration::from_millis(n);
    let mut clips: Vec<(String, Vec<i16>)> = human_set().into_iter().map(|u| (u.name, u.samples)).collect();
    for db in [-25.0, -35.0, -45.0] {
        clips.push((format!("white noise {db} dBFS"), noise(48_000, db, 8)));
        clips.push((format!("pink noise {db} dBFS"), pink_noise(48_000, db, 8)));
    }
    for (k, db) in [(1i16, 0), (4, -12), (16, -24)] {
        clips.push((format!("breath {}", -30 + db), breath(7).iter().map(|s| s / k).collect()));
        clips.push((format!("cough {}", -12 + db), cough(7).iter().map(|s| s / k).collect()));
    }
    println!(
        "{:<24} {:>34} {:>34} {:>14} {:>14}  silero p max at +0/6/12/18/24 dB",
        "clip",
        "silero off",
        format!("silero +{max_gain}"),
        "webrtc off",
        format!("webrtc +{max_gain}")
    );
    for (name, s) in &clips {
        let mut x = vec![0i16; 8000];
        x.extend(s);
        x.extend(vec![0i16; 16_000]);
        let decision = Decision { on: 0.5, off: 0.35, min_volume_db: -45.0 };
        let yes_no = Decision { on: 0.5, off: 0.5, ..decision };
        let s_off = turns(VadCore::new(silero(), decision, ms(200), ms(200)), &x);
        let s_on = turns(VadCore::new(silero(), decision, ms(200), ms(200)).with_gain(max_gain), &x);
        let w_off = turns(VadCore::new(WebRtcDetector::new(2, 20), yes_no, ms(200), ms(200)), &x);
        let w_on = turns(VadCore::new(WebRtcDetector::new(2, 20), yes_no, ms(200), ms(200)).with_gain(max_gain), &x);
        let probs: Vec<String> = [0.0f32, 6.0, 12.0, 18.0, 24.0]
            .iter()
            .map(|g| {
                let k = 10f32.powf(g / 20.0);
                let mut d = silero();
                let p = x
                    .chunks_exact(512)
                    .map(|w| {
                        let w: Vec<i16> =
                            w.iter().map(|&v| (f32::from(v) * k).clamp(-32768.0, 32767.0) as i16).collect();
                        d.speech_probability(&w).unwrap()
                    })
                    .fold(0f32, f32::max);
                format!("{p:.2}")
            })
            .collect();
        println!(
            "{name:<24} {:>34} {:>34} {:>14} {:>14}  {}",
            show(&s_off),
            show(&s_on),
            show(&w_off),
            show(&w_on),
            probs.join(" ")
        );
    }
}
