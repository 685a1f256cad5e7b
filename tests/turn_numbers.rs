//! Turn numbers through the whole assistant, with every real part (Silero VAD, Smart Turn,
//! Whisper tiny.en, stateless memory, the local llama.cpp server, Piper, a WAV file as speaker) on
//! recordings of a real person: every frame of a turn carries the turn's number, from the speaking
//! events to the spoken reply, and a turn the user goes on with keeps its number.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{build, build_ctx, human_speech, llm_url};
use slowcat_processors::audio::{WavOutputSettings, read_wav_mono};
use slowcat_processors::harness::Harness;
use slowcat_processors::llm::{OpenAiLlmSettings, UserTurnSettings};
use slowcat_processors::memory::StatelessMemorySettings;
use slowcat_processors::processor::Accepts;
use slowcat_processors::stt::WhisperSttSettings;
use slowcat_processors::tts::PiperSettings;
use slowcat_processors::turn::SmartTurnSettings;
use slowcat_processors::vad::SileroVadSettings;
use slowcat_processors::{
    AudioFrame, BoxProcessor, Direction, Frame, PIPELINE_SAMPLE_RATE, ProcessError, Processor, ProcessorContext,
};

const FRAME: Duration = Duration::from_millis(20);
const FRAME_SAMPLES: usize = 320;

/// The frames the taps saw, in order: which tap (0 is the first), which way, what.
type Seen = Arc<Mutex<Vec<(usize, Direction, Frame)>>>;

/// Notes every frame passing by (audio aside), both ways, and forwards it.
struct Tap(usize, Seen);

#[async_trait::async_trait]
impl Processor for Tap {
    fn accepts(&self) -> Accepts {
        |frame, _| !matches!(frame, Frame::InputAudio(_) | Frame::OutputAudio(_))
    }

    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        self.1.lock().unwrap().push((self.0, dir, frame.clone()));
        ctx.push(frame, dir).await;
        Ok(())
    }
}

/// The user at the microphone: 20 ms frames at the pace of a real one, silence between words.
struct Mic {
    h: Harness,
    pts: Duration,
    due: tokio::time::Instant,
}

impl Mic {
    /// Plays `samples`, in real time when `paced`, else as fast as they go.
    async fn play(&mut self, samples: &[i16], paced: bool) {
        for chunk in samples.chunks(FRAME_SAMPLES) {
            let frame = AudioFrame::new(chunk.to_vec(), PIPELINE_SAMPLE_RATE, 1, self.pts);
            self.pts += FRAME;
            self.h.send(Frame::InputAudio(frame)).await;
            if paced {
                self.due += FRAME;
                tokio::time::sleep_until(self.due).await;
            } else {
                self.due = tokio::time::Instant::now();
            }
        }
    }

    /// Plays silence in real time until the first tap (the last on the way up) saw a frame
    /// matching `pred`, at most `limit`.
    async fn silence_until(&mut self, seen: &Seen, limit: Duration, pred: impl Fn(&Frame, Direction) -> bool) {
        let until = Instant::now() + limit;
        while !seen.lock().unwrap().iter().any(|(tap, d, f)| *tap == 0 && pred(f, *d)) {
            let seen = names(&seen.lock().unwrap());
            assert!(Instant::now() < until, "nothing came within {limit:?}: {seen:#?}");
            self.play(&[0; FRAME_SAMPLES], true).await;
        }
    }
}

/// What the taps saw, one line each: tap, frame, its turn number, ↑ for upstream.
fn names(seen: &[(usize, Direction, Frame)]) -> Vec<String> {
    seen.iter()
        .map(|(tap, d, f)| {
            let n = number(f).map(|n| format!(" {n}")).unwrap_or_default();
            let up = if *d == Direction::Upstream { " ↑" } else { "" };
            format!("{tap}: {}{n}{up}", f.name())
        })
        .collect()
}

/// The user turn a frame carries the number of, if any (0 is no user turn's: the LLM's priming
/// read-ahead at start, a greeting).
fn number(f: &Frame) -> Option<u64> {
    let n = match f {
        Frame::UserStartedSpeaking { turn, .. }
        | Frame::UserSpeechPaused { turn, .. }
        | Frame::UserStoppedSpeaking { turn, .. }
        | Frame::UserTurnResumed { turn }
        | Frame::LlmResponseStart { turn }
        | Frame::TtsStarted { turn, .. } => Some(*turn),
        Frame::InterimTranscription(t) | Frame::Transcription(t) => Some(t.turn),
        Frame::LlmRequest(r) | Frame::LlmReadAhead(r) => Some(r.turn),
        Frame::SpokenReply(r) => Some(r.turn),
        Frame::Metrics(m) => m.turn,
        _ => None,
    };
    n.filter(|&n| n != 0)
}

fn spoken(turn: u64) -> impl Fn(&Frame, Direction) -> bool {
    move |f, d| d == Direction::Upstream && matches!(f, Frame::SpokenReply(r) if r.turn == turn && !r.interrupted)
}

#[tokio::test]
async fn every_frame_of_a_turn_carries_its_number_and_a_resumed_turn_keeps_it() {
    let set = human_speech();
    let recording = |name: &str| {
        let u = set.iter().find(|u| u.name == name).unwrap();
        read_wav_mono(&u.path, PIPELINE_SAMPLE_RATE).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let ctx = build_ctx(dir.path());
    let seen: Seen = Arc::default();
    let tap = |n| Box::new(Tap(n, seen.clone())) as BoxProcessor;
    let out = dir.path().join("out.wav");
    let processors: Vec<BoxProcessor> = vec![
        build::<SileroVadSettings>(&ctx, ""),
        // Every verdict counts as complete: "go forward" ends its turn, so the user can resume it.
        build::<SmartTurnSettings>(&ctx, "threshold = 0.0"),
        build::<WhisperSttSettings>(&ctx, ""),
        tap(0),
        build::<UserTurnSettings>(&ctx, ""),
        build::<StatelessMemorySettings>(&ctx, ""),
        tap(1),
        build::<OpenAiLlmSettings>(&ctx, &format!("base_url = {:?}\nmax_tokens = 8\nwarmup = false", llm_url())),
        build::<PiperSettings>(&ctx, ""),
        tap(2),
        build::<WavOutputSettings>(&ctx, &format!("path = {:?}", out.to_str().unwrap())),
    ];
    let mut mic = Mic { h: Harness::start(processors).await, pts: Duration::ZERO, due: tokio::time::Instant::now() };
    let silence = |ms: usize| vec![0i16; ms * 16];

    // Turn 1: "go forward", which ends the turn; then "ten meters" before the reply is heard (said
    // at once: the reply must not be audible before the VAD hears it).
    mic.play(&silence(500), true).await;
    mic.play(&recording("go-forward"), true).await;
    mic.silence_until(&seen, Duration::from_secs(20), |f, _| matches!(f, Frame::UserTurnEnded)).await;
    mic.play(&recording("ten-meters"), false).await;
    mic.silence_until(&seen, Duration::from_secs(90), spoken(1)).await;
    let turn2 = seen.lock().unwrap().len();
    // Turn 2: a question of its own, after the reply was heard.
    mic.play(&silence(1000), true).await;
    mic.play(&recording("this-is-diane"), true).await;
    mic.silence_until(&seen, Duration::from_secs(90), spoken(2)).await;
    mic.h.finish(Duration::from_secs(60)).await;

    let seen = seen.lock().unwrap().clone();
    let all = names(&seen);
    println!("{}", all.join("\n"));
    let numbers =
        |range: &[(usize, Direction, Frame)]| -> Vec<u64> { range.iter().filter_map(|(_, _, f)| number(f)).collect() };
    // Everything of the command, both parts, is turn 1; everything after it, turn 2.
    let (first, second) = seen.split_at(turn2);
    assert!(numbers(first).iter().all(|&n| n == 1), "a frame of turn 1 has another number: {all:#?}");
    assert!(numbers(second).iter().all(|&n| n == 2), "a frame of turn 2 has another number: {all:#?}");
    let count = |range: &[(usize, Direction, Frame)], pred: fn(&Frame) -> bool| {
        range.iter().filter(|(_, _, f)| pred(f)).count()
    };
    // The second part resumed turn 1 (smart_turn said so, once).
    let resumed = first.iter().filter(|(tap, _, f)| *tap == 0 && matches!(f, Frame::UserTurnResumed { .. })).count();
    assert_eq!(resumed, 1, "{all:#?}");
    // What there is of each turn: the user's speech, its words, the request, the reply spoken.
    for (turn, range) in [(1, first), (2, second)] {
        assert!(count(range, |f| matches!(f, Frame::UserStartedSpeaking { .. })) >= 1, "turn {turn}: {all:#?}");
        assert!(count(range, |f| matches!(f, Frame::UserStoppedSpeaking { .. })) >= 1, "turn {turn}: {all:#?}");
        assert!(count(range, |f| matches!(f, Frame::Transcription(_))) >= 1, "turn {turn}: {all:#?}");
        assert!(count(range, |f| matches!(f, Frame::LlmRequest(_))) >= 1, "turn {turn}: {all:#?}");
        assert!(count(range, |f| matches!(f, Frame::TtsStarted { .. })) >= 1, "turn {turn}: {all:#?}");
        assert!(count(range, |f| matches!(f, Frame::SpokenReply(_))) >= 1, "turn {turn}: {all:#?}");
    }
    // The command's last transcript holds both parts.
    let command = first
        .iter()
        .rev()
        .find_map(|(_, _, f)| if let Frame::Transcription(t) = f { Some(t.text.to_lowercase()) } else { None })
        .unwrap();
    assert!(command.contains("forward") && (command.contains("ten") || command.contains("10")), "{command:?}");
}
