//! Piper TTS with the real voice and the real espeak-ng: LLM text streamed in, sentences
//! synthesized as they complete, and the audio read back by Whisper.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod speech_out_util;

use std::time::Duration;

use slowcat_processors::audio::WavOutputSettings;
use slowcat_processors::frame::{Metric, SpokenReply};
use slowcat_processors::harness::Harness;
use slowcat_processors::tts::PiperSettings;
use slowcat_processors::{BoxProcessor, Direction, Frame, Settings};
use speech_out_util::*;

fn piper(settings: PiperSettings) -> BoxProcessor {
    model("en_US-joe-medium.onnx");
    settings.check_and_build(&build_context()).expect("the Piper voice builds")
}

/// Audio of each spoken segment, with its TtsStarted text, in order.
fn segments(frames: &[Frame]) -> Vec<(String, Vec<i16>)> {
    let mut out: Vec<(String, Vec<i16>)> = Vec::new();
    let mut open = false;
    for f in frames {
        match f {
            Frame::TtsStarted { text, .. } => {
                assert!(!open, "TtsStarted inside a segment");
                open = true;
                out.push((text.clone(), Vec::new()));
            }
            Frame::OutputAudio(a) => {
                assert!(open, "audio outside TtsStarted/TtsStopped");
                out.last_mut().unwrap().1.extend_from_slice(&a.samples);
            }
            Frame::TtsStopped => {
                assert!(open, "TtsStopped without TtsStarted");
                open = false;
            }
            _ => {}
        }
    }
    assert!(!open, "the last segment never stopped");
    out
}

const REPLY: &str = "Good morning! The weather today is sunny and warm. \
    I would take a long walk in the park, then have lunch with a friend. \
    Remember to drink plenty of water.";

#[tokio::test]
async fn streamed_reply_is_spoken_sentence_by_sentence_and_whisper_reads_it_back() {
    let mut whisper = whisper();
    let mut h = Harness::start(vec![piper(PiperSettings::default())]).await;
    h.send(Frame::LlmResponseStart { turn: 3 }).await;
    let tokens = tokens(REPLY);
    let (first, rest) = tokens.split_at(4);
    for t in first {
        h.send(Frame::LlmText(t.clone())).await;
    }
    // The first sentence is complete: its audio comes while the reply is still being written.
    let audio = h.wait_for(Duration::from_secs(30), |f, _| matches!(f, Frame::OutputAudio(_))).await;
    assert!(audio.is_some(), "no audio for the first sentence before the reply ended");
    for t in rest {
        h.send(Frame::LlmText(t.clone())).await;
    }
    h.send(Frame::LlmResponseEnd).await;
    let out = h.finish(Duration::from_secs(60)).await;

    let data = out.downstream_data();
    assert!(matches!(data.first(), Some(Frame::LlmResponseStart { turn: 3 })), "{:?}", data.first());
    assert!(matches!(data.last(), Some(Frame::LlmResponseEnd)), "LlmResponseEnd must follow the audio");
    for f in &data {
        match f {
            Frame::OutputAudio(a) => {
                assert_eq!((a.sample_rate, a.channels), (22_050, 1));
                assert!(a.samples.len() <= 882, "frames of at most 40 ms, got {}", a.samples.len());
            }
            Frame::TtsStarted { turn, .. } => assert_eq!(*turn, 3),
            Frame::Error(e) => panic!("error frame: {e:?}"),
            _ => {}
        }
    }
    let frames: Vec<Frame> = out.downstream.clone();
    let segs = segments(&frames);
    let texts: Vec<&str> = segs.iter().map(|(t, _)| t.as_str()).collect();
    println!("segments: {texts:?}");
    // The first sentence is short; the first long one is cut at its first clause.
    assert_eq!(texts[0], "Good morning!");
    assert_eq!(texts.join(" "), REPLY.split_whitespace().collect::<Vec<_>>().join(" "));
    let ttfb: Vec<&Metric> = out
        .downstream
        .iter()
        .filter_map(|f| match f {
            Frame::Metrics(m) if m.name == slowcat_processors::MetricName::TtsTtfb => Some(&**m),
            _ => None,
        })
        .collect();
    assert_eq!(ttfb.len(), segs.len(), "one tts_ttfb per segment");
    assert!(ttfb.iter().all(|m| m.turn == Some(3)));
    println!("tts_ttfb: {:?}", ttfb.iter().map(|m| m.value).collect::<Vec<_>>());

    let all: Vec<i16> = segs.iter().flat_map(|(_, a)| a.iter().copied()).collect();
    let heard = transcribe(&mut whisper, &all, 22_050);
    let wer = wer(REPLY, &heard);
    println!("whisper heard: {heard:?}\nWER {wer:.3}");
    assert!(wer <= 0.15, "WER {wer:.3}: Whisper heard {heard:?}");
}

#[tokio::test]
async fn tricky_text_is_spoken_as_words() {
    let mut whisper = whisper();
    let text = "Dr. Smith paid $29.99 for it. Go to example.com at 8pm. I like C++.";
    // Whole sentences, so each is checked on its own (the first one's early cut has its own
    // tests in tts::text and the round trip above).
    let settings = PiperSettings { first_max_words: 0, ..PiperSettings::default() };
    let out = Harness::run(vec![piper(settings)], vec![Frame::Speak(text.into())]).await;
    let segs = segments(&out.downstream);
    let shown: Vec<&str> = segs.iter().map(|(t, _)| t.as_str()).collect();
    // Shown and remembered as written; spoken as words.
    assert_eq!(shown, vec!["Dr. Smith paid $29.99 for it.", "Go to example.com at 8pm.", "I like C++."]);
    let mut heard = Vec::new();
    for (_, audio) in &segs {
        heard.push(transcribe(&mut whisper, audio, 22_050).to_lowercase());
    }
    println!("heard: {heard:?}");
    assert!(heard[0].contains("smith") && heard[0].contains("29"), "{:?}", heard[0]);
    assert!(heard[1].contains("example") && heard[1].contains('8'), "{:?}", heard[1]);
    // Whisper writes what it heard as "C++" (or spells it out): either way not "Cplusplus".
    assert!(heard[2].contains("c++") || heard[2].contains("c plus plus"), "{:?}", heard[2]);
}

#[tokio::test]
async fn an_interruption_drops_the_reply_and_the_next_one_is_spoken() {
    let mut h = Harness::start(vec![piper(PiperSettings::default())]).await;
    h.send(Frame::LlmResponseStart { turn: 1 }).await;
    h.send(Frame::LlmText("This is the first sentence of a long answer. ".into())).await;
    h.send(Frame::LlmText("This second sentence is being synthesized when the user speaks. ".into())).await;
    h.send(Frame::LlmText("And this one is still pending".into())).await;
    let first = h.wait_for(Duration::from_secs(30), |f, _| matches!(f, Frame::OutputAudio(_))).await;
    assert!(first.is_some(), "no audio");
    h.send(Frame::Interruption).await;
    h.wait_for(Duration::from_secs(5), |f, d| matches!(f, Frame::Interruption) && d == Direction::Downstream)
        .await
        .expect("the interruption comes out");
    let seen = h.output().downstream.len();
    // The pending text was cleared: ending the reply speaks nothing more of it.
    h.send(Frame::LlmResponseEnd).await;
    h.send(Frame::LlmResponseStart { turn: 2 }).await;
    h.send(Frame::LlmText("Hello again. ".into())).await;
    h.send(Frame::LlmResponseEnd).await;
    let out = h.finish(Duration::from_secs(30)).await;
    let after: Vec<&Frame> = out.downstream[seen..].iter().collect();
    let started: Vec<(&str, u64)> = after
        .iter()
        .filter_map(|f| match f {
            Frame::TtsStarted { text, turn } => Some((text.as_str(), *turn)),
            _ => None,
        })
        .collect();
    assert_eq!(started, vec![("Hello again.", 2)], "only the new reply is spoken after the interruption");
    let first_new = after.iter().position(|f| matches!(f, Frame::LlmResponseStart { turn: 2 })).unwrap();
    assert!(
        !after[..first_new].iter().any(|f| matches!(f, Frame::OutputAudio(_))),
        "audio of the interrupted reply came out after the interruption"
    );
    assert!(after[first_new..].iter().any(|f| matches!(f, Frame::OutputAudio(_))));
}

#[tokio::test]
async fn other_frames_pass_both_ways_and_speak_frames_are_spoken() {
    let h = Harness::start(vec![piper(PiperSettings::default())]).await;
    h.send(Frame::UserTurnEnded).await;
    h.send(Frame::Speak("Sorry, I could not reach the language model.".into())).await;
    let reply = SpokenReply { text: "hi".into(), interrupted: false, turn: 4 };
    h.send_upstream(Frame::SpokenReply(Box::new(reply.clone()))).await;
    let out = h.finish(Duration::from_secs(30)).await;
    assert!(out.upstream.contains(&Frame::SpokenReply(Box::new(reply))));
    let data = out.downstream_data();
    assert!(matches!(data[0], Frame::UserTurnEnded));
    assert!(data.iter().any(|f| matches!(f, Frame::TtsStarted { text, turn: 0 } if text.starts_with("Sorry"))));
    assert!(data.iter().filter(|f| matches!(f, Frame::OutputAudio(_))).count() > 10);
}

#[tokio::test]
async fn a_wav_output_after_piper_reports_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("reply.wav");
    let out_settings: WavOutputSettings =
        toml::from_str(&format!("path = {:?}\nrecord_input = false", wav.display().to_string())).unwrap();
    let wav_out = out_settings.check_and_build(&build_context()).unwrap();
    let out = Harness::run(
        vec![piper(PiperSettings::default()), wav_out],
        vec![
            Frame::LlmResponseStart { turn: 9 },
            Frame::LlmText("Hello there. How are you?".into()),
            Frame::LlmResponseEnd,
        ],
    )
    .await;
    let replies: Vec<&Frame> = out.upstream.iter().filter(|f| matches!(f, Frame::SpokenReply(_))).collect();
    assert_eq!(
        replies,
        vec![&Frame::SpokenReply(Box::new(SpokenReply {
            text: "Hello there. How are you?".into(),
            interrupted: false,
            turn: 9
        }))]
    );
    let mut whisper = whisper();
    let samples = slowcat_processors::audio::read_wav_mono(&wav, 16_000).unwrap();
    let heard = transcribe(&mut whisper, &samples, 16_000);
    assert!(wer("Hello there. How are you?", &heard) <= 0.2, "{heard:?}");
}

#[test]
fn missing_voice_files_and_bad_settings_are_reported_before_start() {
    let ctx = build_context();
    let s: PiperSettings = toml::from_str("model = \"no-such-voice.onnx\"\nspeed = 9.0").unwrap();
    let problems = s.check(&ctx);
    let text = format!("{problems:?}");
    assert!(text.contains("no-such-voice.onnx") && text.contains("fetch-models.sh"), "{text}");
    assert!(problems.iter().any(|p| p.key == Some("speed")), "{text}");
    assert!(toml::from_str::<PiperSettings>("modle = \"x\"").is_err(), "unknown keys are refused");
}

#[test]
fn a_voice_whose_language_espeak_lacks_is_a_clear_build_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(model("en_US-joe-medium.onnx.json")).unwrap();
    let config = config.replace("\"voice\": \"en-us\"", "\"voice\": \"xx-nowhere\"");
    std::fs::write(dir.path().join("voice.onnx.json"), config).unwrap();
    let s = PiperSettings {
        model: model("en_US-joe-medium.onnx"),
        config: dir.path().join("voice.onnx.json"),
        ..PiperSettings::default()
    };
    let e = match s.check_and_build(&build_context()) {
        Ok(_) => panic!("built a voice espeak cannot phonemize"),
        Err(e) => slowcat_processors::error::ErrorChain(&e).to_string(),
    };
    assert!(e.contains("xx-nowhere"), "{e}");
}
