//! The `speaker` on real devices: ALSA's default device routed to a PulseAudio null sink, whose
//! monitor is recorded back (`scripts/pulse.sh start` sets this up).

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

#[path = "../../tests/common/pulse.rs"]
mod pulse;
mod speech_out_util;

use std::time::{Duration, Instant};

use pulse::{RATE, Recorder, require_pulse};
use slowcat_processors::audio::resample::resample_clip;
use slowcat_processors::audio::{Speaker, SpeakerSettings};
use slowcat_processors::frame::SpokenReply;
use slowcat_processors::harness::{Harness, Output};
use slowcat_processors::tts::{Overrides, Piper, PiperSettings, PiperVoice};
use slowcat_processors::{AudioFrame, Direction, Frame, Settings};
use speech_out_util::*;

/// The tests share one null sink and record its monitor: played at the same time, their audio
/// would mix. Each test holds this while it uses the device.
static DEVICE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Records the null sink's monitor (what is played) from now on.
fn record() -> Recorder {
    Recorder::start("slowcat_null.monitor", Instant::now())
}

/// What `recorder` recorded, as 16 kHz mono in [-1, 1].
fn recorded(recorder: Recorder) -> Vec<f32> {
    recorder.stop().samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

fn voice() -> Piper {
    let model = model("en_US-joe-medium.onnx");
    Piper::new(
        PiperVoice::load(&models_dir(), &model, &model.with_extension("onnx.json"), 2, Overrides::default()).unwrap(),
    )
}

fn frames_of(samples: &[i16], rate: u32) -> Vec<Frame> {
    let chunk = rate as usize / 25;
    samples.chunks(chunk).map(|c| Frame::OutputAudio(AudioFrame::new(c.to_vec(), rate, 1, Duration::ZERO))).collect()
}

/// Best normalised correlation of `clip` inside `rec`, and where: a coarse search on 10 ms
/// energy envelopes, refined sample by sample around the best envelope match.
fn locate(rec: &[f32], clip: &[f32]) -> (f64, usize) {
    let env = |x: &[f32]| -> Vec<f32> { x.chunks(160).map(|c| c.iter().map(|s| s * s).sum::<f32>().sqrt()).collect() };
    let (re, ce) = (env(rec), env(clip));
    let corr = |a: &[f32], b: &[f32]| -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
    };
    let coarse = (0..re.len().saturating_sub(ce.len()))
        .max_by(|&a, &b| corr(&re[a..a + ce.len()], &ce).total_cmp(&corr(&re[b..b + ce.len()], &ce)))
        .unwrap_or(0)
        * 160;
    let lo = coarse.saturating_sub(320);
    let hi = (coarse + 320).min(rec.len().saturating_sub(clip.len()));
    (lo..=hi)
        .map(|lag| (corr(&rec[lag..lag + clip.len()], clip), lag))
        .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
}

/// What went wrong in a recording that does not match: runs of exact zeros (the sink played
/// nothing: an underrun) inside the clip, and the pieces of the clip found at another lag than
/// the whole (audio late after a gap, repeated or dropped).
fn diagnose(rec: &[f32], clip: &[f32], at: usize) -> String {
    let end = (at + clip.len()).min(rec.len());
    let mut gaps = Vec::new();
    let mut run = 0usize;
    // At least 5 ms of exact zeros where the clip is not silent itself.
    let mut report = |from: usize, len: usize| {
        let c = &clip[from - at..from - at + len];
        if len >= 80 && c.iter().map(|s| s * s).sum::<f32>() / len as f32 > 1e-5 {
            gaps.push(format!("{:.3} s +{} ms", from as f64 / 16e3, len / 16));
        }
    };
    for (i, &s) in rec[at..end].iter().enumerate() {
        if s == 0.0 {
            run += 1;
        } else {
            report(at + i - run, run);
            run = 0;
        }
    }
    report(end - run, run);
    // Each 100 ms block of the clip that holds speech, found within 200 ms of where it belongs.
    let block = 1600;
    let mut moved = Vec::new();
    for (b, piece) in clip.chunks_exact(block).enumerate() {
        if piece.iter().map(|s| s * s).sum::<f32>() / (block as f32) < 1e-4 {
            continue;
        }
        let home = at + b * block;
        let lo = home.saturating_sub(3200);
        let hi = (home + 3200).min(rec.len().saturating_sub(block));
        let best_of = |lags: &mut dyn Iterator<Item = usize>| {
            lags.map(|lag| (normalised(&rec[lag..lag + block], piece), lag))
                .fold((0.0, 0), |a, x| if x.0 > a.0 { x } else { a })
        };
        let coarse = best_of(&mut (lo..=hi).step_by(4)).1;
        let best = best_of(&mut (coarse.saturating_sub(4).max(lo)..=(coarse + 4).min(hi)));
        let shift = best.1 as i64 - home as i64;
        if shift.abs() > 16 || best.0 < 0.8 {
            moved.push(format!("{:.1} s: {:+} ms (corr {:.2})", b as f64 / 10.0, shift / 16, best.0));
        }
    }
    format!(
        "exact-zero runs inside the clip: {}; 100 ms blocks of the clip off their place: {}",
        if gaps.is_empty() { "none".to_string() } else { gaps.join(", ") },
        if moved.is_empty() { "none".to_string() } else { moved.join(", ") }
    )
}

fn normalised(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
}

fn count(out: &Output, dir: Direction, pred: impl Fn(&Frame) -> bool) -> usize {
    let frames = match dir {
        Direction::Downstream => &out.downstream,
        Direction::Upstream => &out.upstream,
    };
    frames.iter().filter(|f| pred(f)).count()
}

#[tokio::test]
async fn speech_played_on_the_null_sink_is_recorded_back() {
    let _device = DEVICE.lock().await;
    require_pulse();
    let sentence = "The speaker plays this sentence on the null sink.";
    let clip = voice().synthesize_clip(sentence).await.unwrap();
    let recorder = record();
    let speaker = Speaker::open(SpeakerSettings::default()).expect("the default output device opens");
    let mut h = Harness::start(vec![Box::new(speaker)]).await;
    h.send(Frame::TtsStarted { text: sentence.into(), turn: 5 }).await;
    for f in frames_of(&clip, 22_050) {
        h.send(f).await;
    }
    h.send(Frame::TtsStopped).await;
    let reply = h
        .wait_for(Duration::from_secs(20), |f, d| matches!(f, Frame::SpokenReply(_)) && d == Direction::Upstream)
        .await;
    assert_eq!(
        reply,
        Some(Frame::SpokenReply(Box::new(SpokenReply { text: sentence.into(), interrupted: false, turn: 5 })))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recording = recorded(recorder);
    let out = h.finish(Duration::from_secs(10)).await;
    for dir in [Direction::Upstream, Direction::Downstream] {
        assert_eq!(count(&out, dir, |f| matches!(f, Frame::BotStartedSpeaking)), 1, "{dir:?}");
        assert_eq!(count(&out, dir, |f| matches!(f, Frame::BotStoppedSpeaking)), 1, "{dir:?}");
    }
    let first = out.downstream.iter().find_map(|f| match f {
        Frame::Metrics(m) if m.name == slowcat_processors::MetricName::FirstAudioAt => Some(m.clone()),
        _ => None,
    });
    assert_eq!(first.map(|m| m.turn), Some(Some(5)), "first_audio_at with the turn");

    let played: Vec<f32> = clip.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let played = resample_clip(&played, 22_050, RATE).unwrap();
    let (correlation, at) = locate(&recording, &played);
    println!(
        "recorded {:.2} s; the clip is at {:.3} s with correlation {correlation:.3}",
        recording.len() as f64 / 16e3,
        at as f64 / 16e3
    );
    let diagnosis = diagnose(&recording, &played, at);
    let errors: Vec<&str> = out
        .downstream
        .iter()
        .filter_map(|f| match f {
            Frame::Error(e) => Some(e.message.as_str()),
            _ => None,
        })
        .collect();
    println!("{diagnosis}; device errors: {errors:?}");
    assert!(correlation >= 0.9, "what was recorded is not what was played: correlation {correlation:.3}; {diagnosis}");
}

#[tokio::test]
async fn an_interruption_silences_the_speaker_within_one_chunk() {
    let _device = DEVICE.lock().await;
    require_pulse();
    let speaker = Speaker::open(SpeakerSettings::default()).expect("the default output device opens");
    let stats = speaker.stats();
    let rate = stats.sample_rate();
    let mut h = Harness::start(vec![Box::new(speaker)]).await;
    let sentence = "one two three four five six seven eight nine ten";
    // 4 s of a tone stands for the sentence's audio.
    let tone: Vec<i16> = (0..22_050 * 4).map(|i| ((i as f32 * 0.125).sin() * 8000.0) as i16).collect();
    h.send(Frame::LlmResponseStart { turn: 6 }).await;
    h.send(Frame::TtsStarted { text: sentence.into(), turn: 6 }).await;
    let mut frames = frames_of(&tone, 22_050).into_iter();
    // The data lane holds about 2.5 s; the rest is sent once playback has made room.
    for f in frames.by_ref().take(40) {
        h.send(f).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.played_frames() < u64::from(rate) {
        assert!(Instant::now() < deadline, "the speaker played nothing in 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for f in frames.by_ref().take(20) {
        h.send(f).await;
    }
    let before = stats.played_frames();
    h.send(Frame::Interruption).await;
    let reply =
        h.wait_for(Duration::from_secs(5), |f, d| matches!(f, Frame::SpokenReply(_)) && d == Direction::Upstream).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = stats.played_frames();
    let chunk = stats.chunk_frames() as u64;
    println!(
        "played {:.3} s before the interruption, {} frames after it (one chunk is {chunk}); {} callbacks",
        before as f64 / f64::from(rate),
        after - before,
        stats.callbacks()
    );
    assert!(
        after - before <= chunk,
        "{} frames played after the interruption, more than one chunk ({chunk})",
        after - before
    );
    let Some(Frame::SpokenReply(reply)) = reply else { panic!("no SpokenReply after the interruption") };
    assert!(reply.interrupted && reply.turn == 6, "{reply:?}");
    // About a quarter of the audio was heard: the first two to four words.
    let words: Vec<&str> = reply.text.split_whitespace().collect();
    assert!((2..=4).contains(&words.len()) && sentence.starts_with(&reply.text), "{reply:?}");
    assert!(h.output().upstream.contains(&Frame::BotStoppedSpeaking), "BotStoppedSpeaking after the interruption");

    // The next reply plays.
    h.send(Frame::TtsStarted { text: "Next.".into(), turn: 7 }).await;
    for f in frames_of(&tone[..22_050 / 2], 22_050) {
        h.send(f).await;
    }
    h.send(Frame::TtsStopped).await;
    let next = h
        .wait_for(Duration::from_secs(10), |f, d| matches!(f, Frame::SpokenReply(_)) && d == Direction::Upstream)
        .await;
    assert_eq!(
        next,
        Some(Frame::SpokenReply(Box::new(SpokenReply { text: "Next.".into(), interrupted: false, turn: 7 })))
    );
    assert!(stats.played_frames() >= after + u64::from(rate) / 2 - u64::from(rate) / 10);
    h.finish(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn piper_into_the_speaker_is_heard_and_remembered_as_played() {
    let _device = DEVICE.lock().await;
    require_pulse();
    let reply = "Hello there, your assistant is ready. The park looks lovely today.";
    let recorder = record();
    let piper = PiperSettings::default().check_and_build(&build_context()).unwrap();
    let speaker = SpeakerSettings::default().check_and_build(&build_context()).unwrap();
    let mut h = Harness::start(vec![piper, speaker]).await;
    h.send(Frame::LlmResponseStart { turn: 11 }).await;
    for t in tokens(reply) {
        h.send(Frame::LlmText(t)).await;
    }
    h.send(Frame::LlmResponseEnd).await;
    let spoken = h
        .wait_for(Duration::from_secs(40), |f, d| matches!(f, Frame::SpokenReply(_)) && d == Direction::Upstream)
        .await;
    assert_eq!(
        spoken,
        Some(Frame::SpokenReply(Box::new(SpokenReply { text: reply.into(), interrupted: false, turn: 11 })))
    );
    let recording = recorded(recorder);
    let out = h.finish(Duration::from_secs(10)).await;
    let started = out.upstream.iter().position(|f| matches!(f, Frame::BotStartedSpeaking));
    let stopped = out.upstream.iter().rposition(|f| matches!(f, Frame::BotStoppedSpeaking));
    assert!(started.is_some() && started < stopped, "BotStartedSpeaking then BotStoppedSpeaking upstream");
    let metrics: Vec<(&str, Option<u64>)> = out
        .downstream
        .iter()
        .filter_map(|f| match f {
            Frame::Metrics(m) => Some((m.name.as_str(), m.turn)),
            _ => None,
        })
        .collect();
    assert!(metrics.contains(&("first_audio_at", Some(11))), "{metrics:?}");
    assert!(metrics.contains(&("tts_ttfb", Some(11))), "{metrics:?}");
    let samples: Vec<i16> = recording.iter().map(|&s| (s * 32767.0) as i16).collect();
    let heard = transcribe(&mut whisper(), trim_silence(&samples, RATE), RATE);
    let wer = wer(reply, &heard);
    println!("heard from the null sink: {heard:?} (WER {wer:.2})");
    assert!(wer <= 0.2, "WER {wer:.2}: {heard:?}");
}

#[test]
fn an_absent_device_is_a_clear_error_listing_the_devices() {
    require_pulse();
    let settings = SpeakerSettings { device: "no such loudspeaker".into(), ..SpeakerSettings::default() };
    let e = match Speaker::open(settings) {
        Ok(_) => panic!("opened a device that does not exist"),
        Err(e) => e.to_string(),
    };
    println!("{e}");
    assert!(e.contains("no such loudspeaker"), "{e}");
    assert!(e.contains("default") && e.contains("slowcat devices"), "the message lists the devices: {e}");
}
