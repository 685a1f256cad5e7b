//! The test PulseAudio: a null sink of a test's own, and a recorder of what it plays. Used by the
//! end-to-end tests and, included by its path, by slowcat-processors' speaker tests.
#![allow(dead_code)] // each test uses its own part of this

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The rate the recorder records at (16 kHz mono).
pub const RATE: u32 = 16_000;
/// A sample above this (about -50 dBFS) is sound; the null sink plays exact zeros otherwise.
pub const LOUD: u16 = 100;

/// Fails the test with what to do when the test PulseAudio (scripts/pulse.sh) is not running.
pub fn require_pulse() {
    // The repository's scripts/ sits beside the manifest of the root crate, above that of
    // slowcat-processors.
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("scripts/pulse.sh"))
        .find(|script| script.is_file())
        .expect("scripts/pulse.sh in the repository");
    let status = Command::new(&script).arg("status").output().expect("scripts/pulse.sh runs");
    assert!(
        status.status.success(),
        "PulseAudio with the slowcat_null sink is not running ({}): run `eval \"$(scripts/pulse.sh start)\"`",
        String::from_utf8_lossy(&status.stdout).trim()
    );
}

/// A null sink of the test's own (the speaker plays on it when `PULSE_SINK` names it): other
/// tests playing on `slowcat_null` meanwhile are not heard, and this one does not disturb them.
pub struct PrivateSink {
    name: String,
    module: String,
}

impl PrivateSink {
    /// Loads a null sink named after `test` and this process.
    pub fn load(test: &str) -> Self {
        let name = format!("slowcat_{test}_{}", std::process::id());
        let out = Command::new("pactl")
            .args(["load-module", "module-null-sink", &format!("sink_name={name}")])
            .output()
            .expect("pactl (pulseaudio-utils) runs; run scripts/setup-system.sh");
        assert!(
            out.status.success(),
            "cannot load a null sink ({}): run `eval \"$(scripts/pulse.sh start)\"`",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Self { name, module: String::from_utf8_lossy(&out.stdout).trim().to_string() }
    }

    /// The sink's name, for `PULSE_SINK`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source that records what the sink plays.
    pub fn monitor(&self) -> String {
        format!("{}.monitor", self.name)
    }
}

impl Drop for PrivateSink {
    fn drop(&mut self) {
        let _ = Command::new("pactl").args(["unload-module", &self.module]).status();
    }
}

/// Seconds since `t0`: every time in this test is on that one line.
pub fn secs(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64()
}

/// What the null sink plays, recorded from its monitor, with the time each piece arrived.
pub struct Recorder {
    child: Child,
    data: Arc<Mutex<Recording>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Recording {
    bytes: Vec<u8>,
    /// (arrival in seconds since t0, bytes received by then).
    reads: Vec<(f64, usize)>,
}

/// A finished recording: 16 kHz mono samples, and when the reads arrived (samples by then).
pub struct Recorded {
    /// 16 kHz mono samples, as played.
    pub samples: Vec<i16>,
    /// (arrival in seconds since t0, samples received by then).
    pub reads: Vec<(f64, usize)>,
}

impl Recorder {
    /// Starts recording `source`; times are seconds since `t0`.
    pub fn start(source: &str, t0: Instant) -> Self {
        let mut child = Command::new("parec")
            .args(["-d", source, "--format=s16le", "--rate=16000", "--channels=1", "--latency-msec=10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("parec (pulseaudio-utils) runs; run scripts/setup-system.sh");
        let mut stdout = child.stdout.take().expect("piped");
        let data = Arc::new(Mutex::new(Recording::default()));
        let sink = data.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let at = secs(t0, Instant::now());
                let mut r = sink.lock().unwrap();
                r.bytes.extend_from_slice(&buf[..n]);
                let total = r.bytes.len();
                r.reads.push((at, total));
            }
        });
        // Capture may deliver nothing for a while after it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while data.lock().unwrap().bytes.len() < 3200 {
            assert!(Instant::now() < deadline, "parec recorded nothing from {source} in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, data, reader: Some(reader) }
    }

    /// Stops recording; what was played.
    pub fn stop(mut self) -> Recorded {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let r = std::mem::take(&mut *self.data.lock().unwrap_or_else(|p| p.into_inner()));
        let samples = r.bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        Recorded { samples, reads: r.reads.into_iter().map(|(t, b)| (t, b / 2)).collect() }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // A test that failed midway leaves no parec behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Recorded {
    /// When sample 0 was played. A read arrives after its samples were played, never before, so
    /// the read that came soonest after its samples (among those within 3 s of `around`) sets the
    /// clock, and every time derived from it is, if anything, late.
    pub fn origin(&self, around: f64) -> f64 {
        self.reads
            .iter()
            .filter(|(t, _)| (t - around).abs() < 3.0)
            .map(|&(t, n)| t - n as f64 / f64::from(RATE))
            .fold(f64::INFINITY, f64::min)
    }

    /// When the sound between `from` and `to` was loud, sample by sample.
    pub fn loud_times(&self, around: f64, from: f64, to: f64) -> Vec<f64> {
        let origin = self.origin(around);
        let index = |t: f64| (((t - origin) * f64::from(RATE)).max(0.0) as usize).min(self.samples.len());
        (index(from)..index(to))
            .filter(|&i| self.samples[i].unsigned_abs() > LOUD)
            .map(|i| origin + i as f64 / f64::from(RATE))
            .collect()
    }
}
