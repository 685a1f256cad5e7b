//! `espeak_tts`: the espeak-ng fallback voice, read back by Whisper.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod speech_out_util;

use slowcat_processors::harness::Harness;
use slowcat_processors::tts::EspeakTtsSettings;
use slowcat_processors::{Frame, Settings};
use speech_out_util::*;

#[tokio::test]
async fn espeak_speaks_each_sentence() {
    let settings = EspeakTtsSettings::default();
    assert!(settings.check(&build_context()).is_empty(), "espeak-ng missing: run scripts/setup-system.sh");
    let tts = settings.check_and_build(&build_context()).unwrap();
    let out = Harness::run(
        vec![tts],
        vec![
            Frame::LlmResponseStart { turn: 1 },
            Frame::LlmText("Good morning, this is the backup voice speaking. The number is 42.".into()),
            Frame::LlmResponseEnd,
        ],
    )
    .await;
    let mut segs: Vec<(String, Vec<i16>)> = Vec::new();
    for f in &out.downstream {
        match f {
            Frame::TtsStarted { text, turn } => {
                assert_eq!(*turn, 1);
                segs.push((text.clone(), Vec::new()));
            }
            Frame::OutputAudio(a) => {
                assert_eq!((a.sample_rate, a.channels), (22_050, 1));
                assert!(a.samples.len() <= 882);
                segs.last_mut().unwrap().1.extend_from_slice(&a.samples);
            }
            Frame::Error(e) => panic!("{e:?}"),
            _ => {}
        }
    }
    let texts: Vec<&str> = segs.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(texts, vec!["Good morning, this is the backup voice speaking.", "The number is 42."]);
    let mut whisper = whisper();
    let heard: Vec<String> = segs.iter().map(|(_, a)| transcribe(&mut whisper, a, 22_050).to_lowercase()).collect();
    println!("heard {heard:?}");
    // The robotic voice is harder for Whisper tiny than Piper's: most words, not all.
    let wer = wer("Good morning, this is the backup voice speaking.", &heard[0]);
    assert!(wer <= 0.5, "WER {wer:.2}: {heard:?}");
    assert!(heard[1].contains("42") || heard[1].contains("forty"), "{heard:?}");
}

#[test]
fn an_unknown_voice_is_refused_at_build() {
    let settings = EspeakTtsSettings { voice: "xx-nowhere".into(), ..EspeakTtsSettings::default() };
    let e = match settings.check_and_build(&build_context()) {
        Ok(_) => panic!("built with a voice espeak-ng does not have"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("xx-nowhere") && e.contains("--voices"), "{e}");
    let missing = EspeakTtsSettings { command: "/no/such/espeak-ng".into(), ..EspeakTtsSettings::default() };
    assert!(missing.check(&build_context()).iter().any(|p| p.key == Some("command")));
}
