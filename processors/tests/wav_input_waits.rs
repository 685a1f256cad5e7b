//! `wav_input` plays its files one after another, each once the assistant has answered the one
//! before; a file the assistant heard no turn in must not hold the next one for the whole wait a
//! long reply needs.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::time::Duration;

use slowcat_processors::audio::{NextFile, WavInputSettings};
use slowcat_processors::harness::Harness;
use slowcat_processors::registry::Settings;
use slowcat_processors::{BuildContext, Frame};

fn write_wav(path: &std::path::Path, ms: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(16 * ms) {
        w.write_sample(((i % 50) as i16 - 25) * 100).unwrap();
    }
    w.finalize().unwrap();
}

/// Virtual time from start until the second file's first frame comes out.
async fn second_file_after(reply_start_timeout_ms: u32) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.wav"), dir.path().join("b.wav"));
    write_wav(&a, 200);
    write_wav(&b, 200);
    let settings = WavInputSettings {
        paths: vec![a, b],
        next: NextFile::AfterReply,
        realtime: false,
        trailing_silence_ms: 0,
        reply_timeout_ms: 60_000,
        reply_start_timeout_ms,
        end_of_stream: false,
        ..WavInputSettings::default()
    };
    let input = settings.check_and_build(&BuildContext::for_dir(dir.path())).unwrap();
    let t0 = tokio::time::Instant::now();
    let mut h = Harness::start(vec![input]).await;
    // The first file is 10 frames of 20 ms and one of trailing silence: the 12th is the second's.
    let mut frames = 0;
    let second = h
        .wait_for(Duration::from_secs(120), |f, _| {
            frames += usize::from(matches!(f, Frame::InputAudio(_)));
            frames == 12
        })
        .await;
    assert!(second.is_some(), "the second file was never played");
    let waited = t0.elapsed();
    h.cancel().await;
    waited
}

#[tokio::test(start_paused = true)]
async fn a_file_no_reply_begins_for_moves_on_after_the_start_timeout() {
    let waited = second_file_after(2_000).await;
    assert!(waited >= Duration::from_millis(1_900) && waited < Duration::from_secs(10), "{waited:?}");
    // Without it, the whole reply timeout.
    let waited = second_file_after(0).await;
    assert!(waited >= Duration::from_secs(59), "{waited:?}");
}
