//! A reminder is said aloud at its time, between turns: the whole assistant (`slowcat run`, the
//! repo's config, its speaker on a PulseAudio null sink) hears only silence, and a reminder seeded
//! in its reminders file comes due a few seconds after the start. The test records the null sink's
//! monitor, finds when the reminder was played, and Whisper listens to what was said.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pulse::{PrivateSink, RATE, Recorder, require_pulse};
use common::{models_dir, transcribe, words};

const BIN: &str = env!("CARGO_BIN_EXE_slowcat");

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn write_wav(path: &Path, samples: &[i16]) {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

fn write_silence(path: &Path, secs: u32) {
    write_wav(path, &vec![0; (RATE * secs) as usize]);
}

#[tokio::test]
async fn a_reminder_due_a_few_seconds_after_start_is_spoken_at_its_time() {
    require_pulse();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tools")).unwrap();
    let input = dir.path().join("silence.wav");
    write_silence(&input, 25);

    // The assistant's speaker plays on a null sink of this test's own, recorded from its monitor.
    let sink = PrivateSink::load("reminder");
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let recorder = Recorder::start(&sink.monitor(), t0);

    // Due 12 s from now: after the models have loaded (a few seconds on a busy machine), well
    // before the 25 s of silence end.
    let due = SystemTime::now() + Duration::from_secs(12);
    let reminders = serde_json::json!({
        "next_id": 1,
        "reminders": [{"id": 1, "text": "water the plants", "due_ms": unix_ms(due)}],
    });
    std::fs::write(data.join("tools/reminders.json"), reminders.to_string()).unwrap();

    let out = tokio::process::Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
        .arg("--input")
        .arg(&input)
        .args(["--set", &format!("models_dir={:?}", models_dir().to_str().unwrap())])
        .args(["--set", &format!("data_dir={:?}", data.to_str().unwrap())])
        // Nothing is asked, so no LLM server is needed: nothing listens on port 9.
        .args(["--set", "processors.llm.base_url=\"http://127.0.0.1:9/v1\""])
        .args(["--set", "processors.llm.warmup=false"])
        .env("PULSE_SINK", sink.name())
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "slowcat run failed:\n{stderr}");
    let played = recorder.stop();

    let due_at = due.duration_since(wall0).unwrap().as_secs_f64();
    let loud = played.loud_times(due_at, 0.0, due_at + 12.0);
    let Some(&said_at) = loud.first() else { panic!("nothing was played on the null sink:\n{stderr}") };
    let late_ms = ((said_at - due_at) * 1000.0).round() as i64;
    eprintln!("the reminder was heard on the null sink {late_ms} ms after it was due");
    // Never before its time; after it, within the time to synthesize a sentence on a busy machine.
    assert!((0..=3000).contains(&late_ms), "played {late_ms} ms from its time:\n{stderr}");

    // What was played from then on, heard by Whisper.
    let origin = played.origin(due_at);
    let from = (((said_at - origin - 0.3) * f64::from(RATE)).max(0.0) as usize).min(played.samples.len());
    let heard_wav = dir.path().join("played.wav");
    write_wav(&heard_wav, &played.samples[from..]);
    let heard = transcribe(dir.path(), &heard_wav).await;
    eprintln!("heard: {heard:?}");
    let heard = words(&heard);
    for word in ["reminder", "water", "plants"] {
        assert!(heard.iter().any(|w| w == word), "{word:?} not heard in {heard:?}:\n{stderr}");
    }
    let left = std::fs::read_to_string(data.join("tools/reminders.json")).unwrap();
    assert!(!left.contains("water the plants"), "a reminder said leaves the file: {left}");
}
