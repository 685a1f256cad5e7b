//! A reminder is said aloud at its time, between turns: the whole assistant (`slowcat run`, the
//! repo's config) hears only silence, and a reminder seeded in its reminders file comes due a few
//! seconds after the start. The speaker is swapped for a WAV file that records the input too, so
//! the file's timeline is the pipeline's, and Whisper listens to what was said.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{models_dir, transcribe, words};

const BIN: &str = env!("CARGO_BIN_EXE_slowcat");

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn write_silence(path: &Path, secs: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for _ in 0..16_000 * secs {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
}

#[tokio::test]
async fn a_reminder_due_a_few_seconds_after_start_is_spoken_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tools")).unwrap();
    let input = dir.path().join("silence.wav");
    write_silence(&input, 25);
    let output = dir.path().join("said.wav");

    // Due 12 s from now: after the models have loaded (a few seconds on a busy machine), well
    // before the 25 s of silence end.
    let due = SystemTime::now() + Duration::from_secs(12);
    let reminders = serde_json::json!({
        "next_id": 1,
        "reminders": [{"id": 1, "text": "water the plants", "due_ms": unix_ms(due)}],
    });
    std::fs::write(data.join("tools/reminders.json"), reminders.to_string()).unwrap();

    let pipeline = r#"["mic", "vad", "turn", "stt", "user_turn", "memory", "llm", "tts", "out"]"#;
    let out = tokio::process::Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
        .arg("--input")
        .arg(&input)
        .args(["--set", &format!("models_dir={:?}", models_dir().to_str().unwrap())])
        .args(["--set", &format!("data_dir={:?}", data.to_str().unwrap())])
        .args(["--set", &format!("pipeline={pipeline}")])
        .args(["--set", "processors.out.type=\"wav_output\""])
        .args(["--set", &format!("processors.out.path={:?}", output.to_str().unwrap())])
        // The silence heard reaches the file too: its timeline then spans the whole run.
        .args(["--set", "processors.stt.forward_audio=true"])
        // Nothing is asked, so no LLM server is needed: nothing listens on port 9.
        .args(["--set", "processors.llm.base_url=\"http://127.0.0.1:9/v1\""])
        .args(["--set", "processors.llm.warmup=false"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let ended = SystemTime::now();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "slowcat run failed:\n{stderr}");

    // The file records the input by its timestamps: it spans the run, so it began (the pipeline
    // started) its length before the end.
    let mut reader = hound::WavReader::open(&output).unwrap();
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let rate = reader.spec().sample_rate as f64;
    let started = ended - Duration::from_secs_f64(samples.len() as f64 / rate);
    let onset = samples.iter().position(|s| s.unsigned_abs() > 500).expect("something was said");
    let said_at = started + Duration::from_secs_f64(onset as f64 / rate);
    let late_ms = unix_ms(said_at) - unix_ms(due);
    eprintln!("the reminder was said {late_ms} ms after it was due");
    // The bound holds the estimate's own error, about a second either way: the input is placed
    // by its timestamps, the reply as it arrives, and the process exits after the file is closed.
    assert!((-2500..=2500).contains(&late_ms), "said {late_ms} ms from its time:\n{stderr}");

    let heard = transcribe(dir.path(), &output).await;
    eprintln!("heard: {heard:?}");
    let heard = words(&heard);
    for word in ["reminder", "water", "plants"] {
        assert!(heard.iter().any(|w| w == word), "{word:?} not heard in {heard:?}:\n{stderr}");
    }
    let left = std::fs::read_to_string(data.join("tools/reminders.json")).unwrap();
    assert!(!left.contains("water the plants"), "a reminder said leaves the file: {left}");
}
