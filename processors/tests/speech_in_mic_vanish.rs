//! `mic` when the sound server is not there, and when it goes away mid-run and comes back.
//!
//! The shared PulseAudio daemon must not be killed (other tests use it), and removing a sink from
//! it does not make a capture stream fail (PulseAudio moves the stream to another source). So
//! this test runs a private daemon of its own on its own socket, and kills and restarts that.
//! One test function only: it sets `PULSE_SERVER` for this process.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod speech_in_util;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slowcat_processors::Frame;
use slowcat_processors::audio::MicSettings;
use slowcat_processors::harness::Harness;
use slowcat_processors::registry::Settings;
use speech_in_util::*;

/// A PulseAudio daemon of this test's own with one null sink; killed when dropped.
struct PrivatePulse {
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivatePulse {
    fn socket(&self) -> PathBuf {
        self.dir.join("native")
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("pulseaudio")
            .args(["-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--log-target=stderr"])
            .arg("-L")
            .arg(format!("module-native-protocol-unix auth-anonymous=1 socket={}", self.socket().display()))
            .args(["-L", "module-null-sink sink_name=vanishing"])
            .env("PULSE_RUNTIME_PATH", &self.dir)
            .env("PULSE_STATE_PATH", &self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run pulseaudio; run scripts/setup-system.sh");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let ok = Command::new("pactl")
                .arg(format!("--server=unix:{}", self.socket().display()))
                .arg("info")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the private PulseAudio daemon did not answer within 10 s");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivatePulse {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn mic_reports_a_missing_server_and_reopens_after_it_vanished() {
    let dir = tempfile::tempdir().unwrap();
    let mut pulse = PrivatePulse { dir: dir.path().to_path_buf(), child: None };
    // SAFETY: the only test in this binary; set before anything reads the environment.
    unsafe { std::env::set_var("PULSE_SERVER", format!("unix:{}", pulse.socket().display())) };

    // No server: building fails with a message that says what to do.
    let settings = MicSettings { retry_ms: 300, ..Default::default() };
    let err = settings.clone().check_and_build(&build_context()).err().expect("no sound server, no microphone");
    let msg = err.to_string();
    println!("without a server: {msg}");
    assert!(msg.contains("cannot open input device"), "{msg}");
    assert!(msg.contains("sound server") && msg.contains("Input devices that exist: "), "{msg}");
    assert!(msg.contains("pulse"), "the message lists the devices: {msg}");

    pulse.start();
    let mic = settings.check_and_build(&build_context()).expect("mic builds once the server runs");
    let t0 = Instant::now();
    let mut h = Harness::start(vec![mic]).await;
    let first = h.wait_for(Duration::from_secs(10), |f, _| matches!(f, Frame::InputAudio(_))).await;
    assert!(first.is_some(), "no audio within 10 s");

    // The server dies under the running stream.
    pulse.kill();
    let gone = t0.elapsed();
    let err = h.wait_for(Duration::from_secs(15), |f, _| matches!(f, Frame::Error(_))).await;
    let Some(Frame::Error(err)) = err else { panic!("no error frame within 15 s of the server vanishing") };
    println!("{:?} after the server vanished: {}", t0.elapsed() - gone, err.message);
    assert!(err.message.contains("input device") && err.message.contains("reopening"), "{}", err.message);
    assert!(err.recoverable);

    // It comes back: audio flows again, stamped after the outage.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pulse.start();
    let back = t0.elapsed();
    let resumed = h.wait_for(Duration::from_secs(15), |f, _| matches!(f, Frame::InputAudio(a) if a.pts > back)).await;
    assert!(resumed.is_some(), "no audio within 15 s of the server coming back");
    println!("audio again {:?} after the server came back", t0.elapsed() - back);

    let out = h.cancel().await;
    assert!(out.hung.is_empty(), "mic did not stop: {:?}", out.hung);
}
