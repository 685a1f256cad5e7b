//! A kind registered by a test drives a pipeline built from config text, the way config.toml
//! drives the assistant: the registry is a value, not a fixed list.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use async_trait::async_trait;
use serde::Deserialize;
use slowcat::config::{self, Rewire};
use slowcat_processors::harness::Harness;
use slowcat_processors::registry::{Passed, Problem, Registry, Settings, register_all};
use slowcat_processors::{
    BoxProcessor, BuildContext, BuildError, Direction, Frame, ProcessError, Processor, ProcessorContext,
};

/// `shout`: says every sentence louder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShoutSettings {
    suffix: String,
}

impl Settings for ShoutSettings {
    const TYPE: &'static str = "shout";
    const ABOUT: &'static str = "upper-cases what the assistant says";

    fn check(&self, _ctx: &BuildContext) -> Vec<Problem> {
        if self.suffix.len() > 3 { vec![Problem::at("suffix", "at most 3 characters")] } else { Vec::new() }
    }

    fn build(self, _ctx: &BuildContext, _: Passed) -> Result<BoxProcessor, BuildError> {
        Ok(Box::new(Shout(self.suffix)))
    }
}

struct Shout(String);

#[async_trait]
impl Processor for Shout {
    fn accepts(&self) -> slowcat_processors::processor::Accepts {
        |frame, _| matches!(frame, Frame::Speak(_))
    }

    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        let frame = match frame {
            Frame::Speak(text) => Frame::Speak(format!("{}{}", text.to_uppercase(), self.0)),
            other => other,
        };
        ctx.push(frame, dir).await;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    register_all(&mut r).register::<ShoutSettings>();
    r
}

const CONFIG: &str = r#"pipeline = ["in", "shout"]
[processors.in]
type = "wav_input"
path = "in.wav"
[processors.shout]
type = "shout"
suffix = "!"
"#;

fn write_wav(path: &std::path::Path) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for _ in 0..1600 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
}

#[tokio::test]
async fn a_kind_a_test_registers_is_checked_and_runs_from_config_text() {
    let dir = tempfile::tempdir().unwrap();
    write_wav(&dir.path().join("in.wav"));
    let path = dir.path().join("config.toml");

    // Without the kind, `shout` is unknown and the known kinds are listed.
    let mut plain = Registry::new();
    register_all(&mut plain);
    let err = config::parse_with(&plain, &path, CONFIG, &[], &Rewire::default()).unwrap_err().to_string();
    assert!(err.contains("unknown processor type `shout`") && err.contains("wav_input"), "{err}");

    // Its check runs once, at validation, and points at the key's line.
    let bad = CONFIG.replace("suffix = \"!\"", "suffix = \"!!!!\"");
    let err = config::parse_with(&registry(), &path, &bad, &[], &Rewire::default()).unwrap_err().to_string();
    assert!(err.contains("config.toml:7:1: [processors.shout] at most 3 characters"), "{err}");

    let cfg = config::parse_with(&registry(), &path, CONFIG, &[], &Rewire::default()).expect("the config is valid");
    let processors = slowcat::app::build_processors(cfg).await.expect("both build");
    let mut harness = Harness::start_with(processors, Default::default()).await;
    harness.send(Frame::Speak("hello".into())).await;
    harness
        .wait_for(std::time::Duration::from_secs(5), |f, _| matches!(f, Frame::Speak(t) if t == "HELLO!"))
        .await
        .expect("the scripted kind turned `hello` into `HELLO!`");
    harness.cancel().await;
}
