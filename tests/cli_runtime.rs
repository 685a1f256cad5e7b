//! End-to-end tests of the `slowcat` binary's runtime: WAV in/out through a pipeline, config
//! errors, and Ctrl-C.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_slowcat");

fn write_wav(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
    let spec =
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    (spec, r.samples::<i16>().map(Result::unwrap).collect())
}

/// A signal with structure at every scale, so a misplaced copy cannot correlate by chance.
fn test_signal(rate: u32, secs: f32) -> Vec<i16> {
    let mut x: u32 = 12345;
    (0..(rate as f32 * secs) as usize)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let noise = ((x >> 16) as f32 / 65536.0 - 0.5) * 0.2;
            let t = i as f32 / rate as f32;
            let env = if ((t * 4.0) as usize).is_multiple_of(2) { 1.0 } else { 0.3 };
            ((((t * 330.0 * std::f32::consts::TAU).sin() * 0.5 + noise) * env) * 20000.0) as i16
        })
        .collect()
}

fn passthrough_config(dir: &Path, input: &Path, output: &Path, realtime: bool) -> std::path::PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"pipeline = ["input", "pass", "output"]

[processors.input]
type = "wav_input"
path = "{}"
realtime = {realtime}
trailing_silence_ms = 200

[processors.pass]
type = "passthrough"

[processors.output]
type = "wav_output"
path = "{}"
"#,
            input.display(),
            output.display()
        ),
    )
    .unwrap();
    cfg
}

/// Offset (in samples) of `needle` inside `hay` that correlates best, and the correlation there.
fn best_alignment(hay: &[i16], needle: &[i16], max_lag: usize) -> (usize, f64) {
    let norm = |v: &[i16]| v.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>().sqrt();
    let mut best = (0, -1.0);
    for lag in 0..=max_lag.min(hay.len().saturating_sub(needle.len())) {
        let seg = &hay[lag..lag + needle.len()];
        let dot: f64 = seg.iter().zip(needle).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let c = dot / (norm(seg) * norm(needle)).max(1.0);
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

#[test]
fn wav_through_passthrough_comes_out_with_the_same_audio_at_the_same_times() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    let output = dir.path().join("out.wav");
    let signal = test_signal(16_000, 2.0);
    write_wav(&input, 16_000, 1, &signal);
    let cfg = passthrough_config(dir.path(), &input, &output, true);

    let t = Instant::now();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&cfg).output().unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "slowcat run failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(took >= Duration::from_millis(2000), "real-time pacing: 2 s of audio took {took:?}");

    let (spec, got) = read_wav(&output);
    assert_eq!((spec.sample_rate, spec.channels), (16_000, 1));
    // The file's timeline starts when the pipeline starts; the input starts a few ms later.
    let (lag, corr) = best_alignment(&got, &signal, 16_000 / 10);
    assert!(lag <= 16_000 * 30 / 1000, "audio placed {lag} samples late (more than 30 ms)");
    assert!(corr > 0.999, "output audio differs from the input (correlation {corr:.4})");
    assert_eq!(&got[lag..lag + signal.len()], &signal[..], "samples must come through unchanged");
}

#[test]
fn any_rate_and_channel_count_is_converted_to_16khz_mono() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    let output = dir.path().join("out.wav");
    // 1 s of a 500 Hz tone at 44.1 kHz stereo, the two channels identical.
    let mono: Vec<i16> =
        (0..44_100).map(|i| ((i as f32 * 500.0 * std::f32::consts::TAU / 44_100.0).sin() * 15000.0) as i16).collect();
    let stereo: Vec<i16> = mono.iter().flat_map(|&s| [s, s]).collect();
    write_wav(&input, 44_100, 2, &stereo);
    let cfg = passthrough_config(dir.path(), &input, &output, false);
    let out = Command::new(BIN).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (spec, got) = read_wav(&output);
    assert_eq!((spec.sample_rate, spec.channels), (16_000, 1));
    let first = got.iter().position(|s| s.abs() > 2000).expect("the tone must be in the output");
    let last = got.iter().rposition(|s| s.abs() > 2000).unwrap();
    let tone = &got[first..=last];
    let secs = tone.len() as f32 / 16_000.0;
    assert!((0.95..=1.02).contains(&secs), "about 1 s of tone expected, got {secs:.3} s");
    let crossings = tone.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count() as f32 / secs;
    assert!((480.0..=520.0).contains(&crossings), "the tone must stay at 500 Hz, got {crossings:.0}");
}

/// Writes `text` as the config file `name` in `dir` and runs `slowcat check` on it.
fn check(dir: &Path, name: &str, text: &str) -> (PathBuf, std::process::Output) {
    let cfg = dir.join(name);
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&cfg).output().unwrap();
    (cfg, out)
}

#[test]
fn check_refuses_a_processor_without_what_it_needs_before_it_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = check(
        dir.path(),
        "needs.toml",
        r#"pipeline = ["input", "llm", "output"]

[processors.input]
type = "passthrough"

[processors.llm]
type = "openai_llm"

[processors.output]
type = "wav_output"
path = "out.wav"
"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs.toml:1:") && stderr.contains("`llm` (openai_llm)") && stderr.contains("user_turn"),
        "the processor and what it needs: {stderr}"
    );
}

#[test]
fn a_config_with_three_problems_reports_all_of_them_with_lines_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, out) = check(
        dir.path(),
        "bad.toml",
        r#"pipeline = ["input", "vad", "output"]

[processors.input]
type = "wav_input"
path = "missing.wav"

[processors.vad]
type = "no_such_vad"

[processors.output]
type = "wav_output"
path = "out.wav"
smaple_rate = 16000
"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("3 problems"), "{stderr}");
    assert!(stderr.contains("bad.toml:5:") && stderr.contains("missing.wav"), "missing file with its line: {stderr}");
    assert!(
        stderr.contains("bad.toml:8:") && stderr.contains("no_such_vad") && stderr.contains("wav_input"),
        "unknown type listing known ones: {stderr}"
    );
    assert!(
        stderr.contains("bad.toml:13:") && stderr.contains("smaple_rate") && stderr.contains("sample_rate"),
        "mistyped key: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // `run` validates the same way before starting anything.
    let out = Command::new(BIN).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_missing_config_file_says_what_to_do() {
    let out = Command::new(BIN).args(["check", "--config", "/nonexistent/slowcat.toml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("/nonexistent/slowcat.toml") && stderr.contains("--config"), "{stderr}");
}

#[test]
fn ctrl_c_stops_a_run_within_two_seconds_and_leaves_a_valid_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    let output = dir.path().join("out.wav");
    write_wav(&input, 16_000, 1, &test_signal(16_000, 30.0));
    let cfg = passthrough_config(dir.path(), &input, &output, true);
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(sent.elapsed() < Duration::from_secs(5), "slowcat still running 5 s after Ctrl-C");
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(took < Duration::from_secs(2), "Ctrl-C took {took:?} to exit");
    assert!(status.success(), "clean exit expected: {status:?}\n{stderr}");
    let (_, got) = read_wav(&output);
    let secs = got.len() as f32 / 16_000.0;
    // Valid (readable) and holding part of the run: neither empty nor the whole 30 s input.
    assert!((0.1..10.0).contains(&secs), "the output holds what played before Ctrl-C ({secs:.2} s)");
}
