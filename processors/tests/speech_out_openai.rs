//! `openai_tts` against a local OpenAI-compatible `/v1/audio/speech` server. Real ones (Kokoro
//! servers) fetch their weights from a model hub at start, which this machine cannot reach, so
//! the server here is a small stand-in that speaks the protocol and answers with real Piper
//! speech — and fails on purpose where the test needs it.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod speech_out_util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use slowcat_processors::audio::resample::{resample_clip, to_i16};
use slowcat_processors::harness::Harness;
use slowcat_processors::tts::{OpenAiTtsSettings, Overrides, Piper, PiperVoice, ResponseFormat};
use slowcat_processors::{Frame, Settings};
use speech_out_util::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `/v1/audio/speech`; returns its base URL and the request bodies it received.
async fn serve(piper: Arc<Piper>) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let piper = piper.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let (head_end, length) = loop {
                    let n = sock.read(&mut tmp).await.unwrap();
                    assert!(n > 0, "client closed early");
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        assert!(head.starts_with("post /v1/audio/speech "), "{head}");
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().unwrap())
                            .unwrap();
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + length {
                    let n = sock.read(&mut tmp).await.unwrap();
                    buf.extend_from_slice(&tmp[..n]);
                }
                let mut body: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
                // The Authorization header, kept with the body for the tests to read.
                let auth = String::from_utf8_lossy(&buf[..head_end])
                    .lines()
                    .find_map(|l| l.to_lowercase().strip_prefix("authorization:").map(|v| v.trim().to_string()));
                body["_authorization"] = auth.map_or(Value::Null, Value::String);
                seen.lock().unwrap().push(body.clone());
                let input = body["input"].as_str().unwrap().to_string();
                if input.contains("broken") {
                    let msg = r#"{"error":"voice af_heart is not loaded"}"#;
                    let reply = format!(
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                        msg.len()
                    );
                    sock.write_all(reply.as_bytes()).await.unwrap();
                    return;
                }
                let clip = piper.synthesize_clip(&input).await.unwrap();
                let f: Vec<f32> = clip.iter().map(|&s| f32::from(s) / 32768.0).collect();
                let mut bytes = Vec::new();
                if body["response_format"] == "wav" {
                    // As a streaming server writes it: sizes unknown, so set to the maximum.
                    bytes.extend(b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00");
                    bytes.extend(22_050u32.to_le_bytes());
                    bytes.extend(44_100u32.to_le_bytes());
                    bytes.extend(b"\x02\x00\x10\x00data\xff\xff\xff\xff");
                    bytes.extend(clip.iter().flat_map(|s| s.to_le_bytes()));
                } else {
                    let pcm = to_i16(&resample_clip(&f, 22_050, 24_000).unwrap());
                    bytes.extend(pcm.iter().flat_map(|s| s.to_le_bytes()));
                }
                sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                // Streamed in pieces of odd sizes, as a synthesizing server sends them.
                for piece in bytes.chunks(4801) {
                    sock.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.unwrap();
                    sock.write_all(piece).await.unwrap();
                    sock.write_all(b"\r\n").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                sock.write_all(b"0\r\n\r\n").await.unwrap();
            });
        }
    });
    (base, requests)
}

fn piper() -> Arc<Piper> {
    let model = model("en_US-joe-medium.onnx");
    Arc::new(Piper::new(
        PiperVoice::load(&models_dir(), &model, &model.with_extension("onnx.json"), 2, Overrides::default()).unwrap(),
    ))
}

fn segment_audio(frames: &[Frame]) -> Vec<(String, u32, Vec<i16>)> {
    let mut out: Vec<(String, u32, Vec<i16>)> = Vec::new();
    for f in frames {
        match f {
            Frame::TtsStarted { text, .. } => out.push((text.clone(), 0, Vec::new())),
            Frame::OutputAudio(a) => {
                let last = out.last_mut().unwrap();
                last.1 = a.sample_rate;
                last.2.extend_from_slice(&a.samples);
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn sentences_are_requested_one_by_one_and_a_failing_one_does_not_stop_the_rest() {
    let (base, requests) = serve(piper()).await;
    let settings = OpenAiTtsSettings { base_url: base.clone(), ..OpenAiTtsSettings::default() };
    assert!(settings.check(&build_context()).is_empty());
    let tts = settings.check_and_build(&build_context()).unwrap();
    let out = Harness::run(
        vec![tts],
        vec![
            Frame::LlmResponseStart { turn: 2 },
            Frame::LlmText("Good evening, my friend. This sentence is broken on the server. ".into()),
            Frame::LlmText("It costs $5 at example.com today.".into()),
            Frame::LlmResponseEnd,
        ],
    )
    .await;
    let bodies = requests.lock().unwrap().clone();
    let inputs: Vec<&str> = bodies.iter().map(|b| b["input"].as_str().unwrap()).collect();
    assert_eq!(
        inputs,
        vec![
            "Good evening, my friend.",
            "This sentence is broken on the server.",
            "It costs 5 dollars at example dot com today."
        ]
    );
    for b in &bodies {
        assert_eq!((b["model"].as_str(), b["voice"].as_str()), (Some("kokoro"), Some("af_heart")));
        assert_eq!(b["response_format"], "pcm");
    }
    let errors: Vec<String> = out
        .downstream
        .iter()
        .filter_map(|f| match f {
            Frame::Error(e) => Some(e.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("500") && errors[0].contains("not loaded") && errors[0].contains(&base),
        "{}",
        errors[0]
    );
    let segs = segment_audio(&out.downstream);
    assert_eq!(segs.len(), 3);
    assert!(segs[1].2.is_empty(), "no audio for the failed sentence");
    let mut whisper = whisper();
    let heard: Vec<String> = [0, 2]
        .iter()
        .map(|&i| {
            assert_eq!(segs[i].1, 24_000, "pcm is 24 kHz");
            transcribe(&mut whisper, &segs[i].2, 24_000)
        })
        .collect();
    println!("heard {heard:?}");
    assert!(wer("Good evening, my friend.", &heard[0]) <= 0.25, "{heard:?}");
    assert!(heard[1].to_lowercase().contains("example"), "{heard:?}");
}

#[tokio::test]
async fn wav_responses_are_decoded_at_their_own_rate() {
    let (base, _) = serve(piper()).await;
    let settings =
        OpenAiTtsSettings { base_url: base, response_format: ResponseFormat::Wav, ..OpenAiTtsSettings::default() };
    let out = Harness::run(
        vec![settings.check_and_build(&build_context()).unwrap()],
        vec![Frame::Speak("See you tomorrow.".into())],
    )
    .await;
    let segs = segment_audio(&out.downstream);
    assert!(!out.downstream.iter().any(|f| matches!(f, Frame::Error(_))), "{:?}", out.downstream_data());
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].1, 22_050);
    let mut w = whisper();
    let heard = transcribe(&mut w, &segs[0].2, 22_050);
    println!("heard {heard:?}");
    assert!(wer("See you tomorrow.", &heard) <= 0.34, "{heard:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_naming_it() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = OpenAiTtsSettings {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        timeout_secs: 2.0,
        ..OpenAiTtsSettings::default()
    };
    let out =
        Harness::run(vec![settings.check_and_build(&build_context()).unwrap()], vec![Frame::Speak("Hello.".into())])
            .await;
    let e = out.downstream.iter().find_map(|f| match f {
        Frame::Error(e) => Some(e.message.clone()),
        _ => None,
    });
    let e = e.expect("an error frame");
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("cannot reach"), "{e}");
    let bad = OpenAiTtsSettings { base_url: "localhost:8880".into(), ..OpenAiTtsSettings::default() };
    assert!(bad.check(&build_context()).iter().any(|p| p.key == Some("base_url")));
}

#[tokio::test]
async fn the_api_key_comes_from_the_named_environment_variable() {
    let (base, requests) = serve(piper()).await;
    let var = "SLOWCAT_TEST_OPENAI_TTS_KEY";
    let settings = OpenAiTtsSettings { base_url: base, api_key_env: var.into(), ..OpenAiTtsSettings::default() };
    // Not set: a config problem naming the variable, before anything starts.
    // SAFETY: no other test of this file reads or writes this variable.
    unsafe { std::env::remove_var(var) };
    let problems = settings.check(&build_context());
    assert!(problems.iter().any(|p| p.message.contains(var)), "{problems:?}");
    // Set: sent as a bearer token.
    unsafe { std::env::set_var(var, "s3cret") };
    assert!(settings.check(&build_context()).is_empty());
    let tts = settings.check_and_build(&build_context()).unwrap();
    let out = Harness::run(vec![tts], vec![Frame::Speak("Hello there.".into())]).await;
    assert!(!out.downstream.iter().any(|f| matches!(f, Frame::Error(_))), "{:?}", out.downstream_data());
    let bodies = requests.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["_authorization"].as_str(), Some("bearer s3cret"));
}
