//! `smart_turn` with the real Smart Turn v3.2 model and real (Piper) speech: scores of
//! complete vs cut-off sentences, end-of-turn timing on a paused clock, and barge-in decisions.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ort::session::RunOptions;

use slowcat_processors::audio::resample::{resample_clip, to_i16};
use slowcat_processors::frame::Metric;
use slowcat_processors::harness::Harness;
use slowcat_processors::tts::{Overrides, PiperVoice};
use slowcat_processors::turn::{SmartTurnModel, SmartTurnSettings};
use slowcat_processors::vad::SileroVadSettings;
use slowcat_processors::{AudioFrame, BoxProcessor, BuildContext, Frame, MetricName, PIPELINE_SAMPLE_RATE, Settings};
use tokio::time::Instant;

const FRAME: Duration = Duration::from_millis(20);
const FRAME_SAMPLES: usize = 320;

fn models_dir() -> PathBuf {
    std::env::var_os("SLOWCAT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

fn model_path() -> PathBuf {
    let path = models_dir().join("smart-turn-v3.2-cpu.onnx");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh (or set SLOWCAT_MODELS_DIR)", path.display());
    path
}

fn build(settings: impl Settings) -> BoxProcessor {
    let dir = std::env::temp_dir();
    let ctx = BuildContext { models_dir: models_dir(), data_dir: dir.clone(), config_dir: dir };
    let problems = settings.check(&ctx);
    assert!(problems.is_empty(), "{problems:?}: run scripts/fetch-models.sh");
    settings.check_and_build(&ctx).expect("the processor builds")
}

fn smart_turn(settings: SmartTurnSettings) -> BoxProcessor {
    build(settings)
}

/// The Piper voice (the assistant's own, with natural prosody), loaded once for all tests.
fn piper() -> &'static Mutex<PiperVoice> {
    static VOICE: OnceLock<Mutex<PiperVoice>> = OnceLock::new();
    VOICE.get_or_init(|| {
        let model = models_dir().join("en_US-joe-medium.onnx");
        assert!(model.is_file(), "{} is missing: run scripts/fetch-models.sh", model.display());
        let config = model.with_extension("onnx.json");
        // No voice or rhythm variation: Piper's noise is drawn afresh on every run (ONNX Runtime
        // seeds it from the clock), and with it a fragment ending on "and" scored anywhere from
        // 0.02 to 0.42 — once above the threshold. Without it the same text is the same audio.
        let still = Overrides { noise_scale: Some(0.0), noise_w: Some(0.0), ..Overrides::default() };
        let voice = PiperVoice::load(&models_dir(), &model, &config, 1, still)
            .expect("the Piper voice loads (it needs espeak-ng: scripts/setup-system.sh)");
        Mutex::new(voice)
    })
}

/// `text` spoken by Piper, as 16 kHz mono, with 200 ms of silence after it (what the VAD has
/// heard by the time it reports the stop).
fn speak(text: &str) -> Vec<i16> {
    let mut voice = piper().lock().unwrap_or_else(|e| e.into_inner());
    let audio = voice.synthesize(text, &RunOptions::new().unwrap()).expect("Piper synthesizes");
    let audio = resample_clip(&audio, voice.sample_rate(), PIPELINE_SAMPLE_RATE).unwrap();
    let mut samples = to_i16(&audio);
    samples.extend(silence(200));
    samples
}

fn silence(ms: u64) -> Vec<i16> {
    vec![0; (ms * u64::from(PIPELINE_SAMPLE_RATE) / 1000) as usize]
}

/// Feeds audio into a pipeline in 20 ms frames, at the pace of a microphone on tokio's clock.
struct Mic {
    harness: Harness,
    pts: Duration,
    sent: Vec<AudioFrame>,
    /// The VAD's number of the speech started last.
    speech: u64,
}

impl Mic {
    async fn start(processor: BoxProcessor) -> Self {
        Self::chain(vec![processor]).await
    }

    async fn chain(processors: Vec<BoxProcessor>) -> Self {
        Self { harness: Harness::start(processors).await, pts: Duration::ZERO, sent: Vec::new(), speech: 0 }
    }

    /// What the VAD sends when speech starts (here: where the audio played so far ends); it
    /// numbers each speech.
    async fn started(&mut self) {
        self.speech += 1;
        self.send(Frame::UserStartedSpeaking { turn: self.speech, at: self.pts }).await;
    }

    /// What the VAD sends when speech that ended where the audio played so far ends has been
    /// followed by its `stop_ms` of silence.
    async fn stopped(&self) {
        stop_at(self, self.pts).await;
    }

    /// Plays `samples`; returns when the first frame matching `pred` came out (then stops
    /// playing), or None after the whole clip.
    async fn play(&mut self, samples: &[i16], mut pred: impl FnMut(&Frame) -> bool) -> Option<Instant> {
        for chunk in samples.chunks(FRAME_SAMPLES) {
            let frame = AudioFrame::new(chunk.to_vec(), PIPELINE_SAMPLE_RATE, 1, self.pts);
            self.sent.push(frame.clone());
            self.pts += FRAME;
            self.harness.send(Frame::InputAudio(frame)).await;
            if self.harness.wait_for(FRAME, |f, _| pred(f)).await.is_some() {
                return Some(Instant::now());
            }
        }
        None
    }

    async fn send(&self, frame: Frame) {
        self.harness.send(frame).await;
    }

    /// Waits up to `timeout` for a frame matching `pred`.
    async fn wait(&mut self, timeout: Duration, mut pred: impl FnMut(&Frame) -> bool) -> Option<Instant> {
        self.harness.wait_for(timeout, |f, _| pred(f)).await.map(|_| Instant::now())
    }
}

fn turn_ended(f: &Frame) -> bool {
    matches!(f, Frame::UserTurnEnded)
}

fn interruption(f: &Frame) -> bool {
    matches!(f, Frame::Interruption)
}

fn count(frames: &[Frame], pred: impl Fn(&Frame) -> bool) -> usize {
    frames.iter().filter(|f| pred(f)).count()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

const COMPLETE: &str = "What is the weather going to be like in Paris tomorrow?";
const CUT_OFF: &str = "I was wondering if you could um";

#[test]
fn complete_sentences_score_high_and_cut_off_ones_low() {
    let mut model = SmartTurnModel::load(&models_dir(), &model_path(), 1).unwrap();
    // Piper says some fragments ("Can you remind me to call my") with a sentence-final melody,
    // and the model then calls them complete; these cut-offs end on a word that cannot end a
    // sentence.
    let pairs = [
        (COMPLETE, "What is the weather going to be like in"),
        ("Tell me a joke.", CUT_OFF),
        ("Can you remind me to call my mother tonight?", "So what I wanted to ask is"),
        ("What time is it in Tokyo?", "I would like to book a table for two people and"),
    ];
    let threshold = SmartTurnSettings::default().threshold;
    for (complete, cut) in pairs {
        let p_complete = model.predict(&speak(complete)).unwrap();
        let p_cut = model.predict(&speak(cut)).unwrap();
        println!("complete {p_complete:.3} {complete:?}\ncut-off  {p_cut:.3} {cut:?}");
        assert!(p_complete >= threshold, "{complete:?} scored {p_complete:.3}: its turn would not end at once");
        assert!(p_cut < threshold, "{cut:?} scored {p_cut:.3}: the user would be cut off mid-sentence");
    }
}

#[test]
fn a_model_that_is_not_smart_turn_is_refused_with_a_clear_message() {
    let silero = models_dir().join("silero_vad.onnx");
    assert!(silero.is_file(), "{} is missing: run scripts/fetch-models.sh", silero.display());
    let err = SmartTurnModel::load(&models_dir(), &silero, 1).err().expect("silero is not a turn model").to_string();
    assert!(err.contains("is not a Smart Turn v3 model") && err.contains("smart-turn-v3.2-cpu.onnx"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_complete_sentence_ends_the_turn_right_after_the_user_stops() {
    let speech = speak(COMPLETE);
    let mut mic = Mic::start(smart_turn(SmartTurnSettings::default())).await;
    mic.started().await;
    assert!(mic.play(&speech, turn_ended).await.is_none(), "the turn ended while the user was talking");
    mic.stopped().await;
    let stopped = Instant::now();
    let ended = mic.wait(Duration::from_secs(1), turn_ended).await.expect("no UserTurnEnded after a complete sentence");
    assert!(ended - stopped <= FRAME, "the turn ended {} ms after the stop, not at once", ms(ended - stopped));

    let sent = std::mem::take(&mut mic.sent);
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    assert_eq!(count(&out.downstream, turn_ended), 1);
    let audio: Vec<&AudioFrame> =
        out.downstream.iter().filter_map(|f| if let Frame::InputAudio(a) = f { Some(a) } else { None }).collect();
    assert_eq!(audio.len(), sent.len(), "every input frame goes on to speech-to-text");
    assert!(audio.iter().zip(&sent).all(|(a, b)| *a == b), "input audio is forwarded unchanged and in order");
    let metric = |name: &str| {
        out.downstream.iter().any(|f| matches!(f, Frame::Metrics(m) if m.name.as_str() == name && m.turn.is_none()))
    };
    // The VAD's stop says where the speech ended (the VAD reports that metric, not smart_turn).
    assert!(!metric("user_speech_end_at"), "the end of speech is reported twice");
    assert!(metric("user_turn_end_at"));
    assert!(metric("smart_turn_time"));
    // The stop, then the end of the turn, in that order.
    let pos = |pred: fn(&Frame) -> bool| out.downstream.iter().position(pred).unwrap();
    assert!(pos(|f| matches!(f, Frame::UserStoppedSpeaking { .. })) < pos(turn_ended));
}

#[tokio::test(start_paused = true)]
async fn the_vads_end_of_speech_is_not_reported_twice() {
    let mut mic = Mic::start(smart_turn(SmartTurnSettings::default())).await;
    mic.started().await;
    mic.play(&speak(COMPLETE), turn_ended).await;
    let vad_end = Duration::from_millis(1234);
    let metric = Metric { source: "vad".into(), turn: None, name: MetricName::UserSpeechEndAt, value: vad_end };
    mic.send(Frame::Metrics(Box::new(metric))).await;
    stop_at(&mic, vad_end).await;
    mic.wait(Duration::from_secs(1), turn_ended).await.expect("the turn ends");
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    let ends: Vec<Duration> = out
        .downstream
        .iter()
        .filter_map(|f| match f {
            Frame::Metrics(m) if m.name == slowcat_processors::MetricName::UserSpeechEndAt => Some(m.value),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [vad_end], "one end of speech per turn, the VAD's");
}

/// The default pipeline's front: Silero VAD (stop after 200 ms of silence), then smart_turn.
#[tokio::test(start_paused = true)]
async fn behind_silero_vad_a_question_is_one_turn_ending_soon_after_the_speech() {
    let mut mic = Mic::chain(vec![build(SileroVadSettings::default()), smart_turn(SmartTurnSettings::default())]).await;
    assert!(mic.play(&silence(500), turn_ended).await.is_none());
    let speech = speak(COMPLETE);
    assert!(mic.play(&speech[..speech.len() - 3200], turn_ended).await.is_none(), "the turn ended mid-sentence");
    let speech_end = Instant::now();
    let ended = mic.play(&silence(3000), turn_ended).await.expect("the question never ended the turn");
    println!("behind silero_vad: the turn ended {} ms after the speech", ms(ended - speech_end));
    // The VAD's 200 ms of silence (Piper's clip ends with some of it) plus its 32 ms windows; the
    // model adds no wait.
    assert!(ended - speech_end <= Duration::from_millis(300), "{} ms", ms(ended - speech_end));
    mic.play(&silence(1000), turn_ended).await;
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    assert_eq!(count(&out.downstream, |f| matches!(f, Frame::UserStartedSpeaking { .. })), 1);
    assert_eq!(count(&out.downstream, turn_ended), 1);
}

/// The VAD's pause after speech that ended at `at` (its stop comes after 224 ms of silence).
fn paused(at: Duration) -> Frame {
    Frame::UserSpeechPaused { turn: 1, at, stop_after: Duration::from_millis(224) }
}

/// The VAD's stop for the speech started last, which ended at `at`.
async fn stop_at(mic: &Mic, at: Duration) {
    mic.send(Frame::UserStoppedSpeaking { turn: mic.speech, at }).await;
}

fn smart_turn_wait(frames: &[Frame]) -> Vec<Duration> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Metrics(m) if m.name == slowcat_processors::MetricName::SmartTurnWait => Some(m.value),
            _ => None,
        })
        .collect()
}

/// The VAD's stop confirms its pause: the verdict the model reached on the audio up to the pause
/// ends the turn. (Here the input goes on with the words of a cut-off sentence that the VAD, as
/// far as the test tells smart_turn, heard as silence: the turn ends at once all the same, which
/// only the verdict from the pause can do.)
#[tokio::test(start_paused = true)]
async fn the_verdict_started_at_the_pause_ends_the_turn_at_the_stop() {
    let settings = SmartTurnSettings { incomplete_timeout_ms: 2000, ..SmartTurnSettings::default() };
    let mut mic = Mic::start(smart_turn(settings)).await;
    mic.started().await;
    let question = speak(COMPLETE);
    // The speech and the VAD's first silent window (`speak` adds 200 ms of silence).
    let speech = question.len() - silence(200).len();
    let speech_end = mic.pts + Duration::from_secs_f64(speech as f64 / f64::from(PIPELINE_SAMPLE_RATE));
    assert!(mic.play(&question[..speech + silence(32).len()], turn_ended).await.is_none());
    mic.send(paused(speech_end)).await;
    // The model has the verdict by the time the stop comes, as it does on a 2-core machine.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(mic.play(&speak(CUT_OFF), turn_ended).await.is_none(), "the turn ended before the stop");
    stop_at(&mic, speech_end).await;
    let stopped = Instant::now();
    let ended = mic.wait(Duration::from_secs(1), turn_ended).await.expect("the stop did not end the turn");
    assert!(ended - stopped <= FRAME, "the turn ended {} ms after the stop, not at once", ms(ended - stopped));
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    assert_eq!(count(&out.downstream, turn_ended), 1);
    let waits = smart_turn_wait(&out.downstream);
    assert_eq!(waits.len(), 1);
    assert!(waits[0] < Duration::from_millis(50), "the stop waited {} ms for the model", ms(waits[0]));
}

/// The user pauses after a complete sentence and goes on with an unfinished one: the verdict on
/// the sentence before the pause does not end the turn; the stop's own does not either, and the
/// turn waits for the timeout.
#[tokio::test(start_paused = true)]
async fn a_pause_the_user_talks_on_after_does_not_end_the_turn() {
    let (mut mic, stopped) = {
        let settings = SmartTurnSettings { incomplete_timeout_ms: 2000, ..SmartTurnSettings::default() };
        let mut mic = Mic::start(smart_turn(settings)).await;
        mic.started().await;
        let question = speak(COMPLETE);
        assert!(mic.play(&question, turn_ended).await.is_none());
        let first_end = mic.pts - Duration::from_millis(200);
        mic.send(paused(first_end)).await;
        std::thread::sleep(Duration::from_millis(1500));
        assert!(mic.play(&speak(CUT_OFF), turn_ended).await.is_none(), "the turn ended while the user was talking");
        let second_end = mic.pts - Duration::from_millis(200);
        mic.send(paused(second_end)).await;
        stop_at(&mic, second_end).await;
        (mic, Instant::now())
    };
    let ended = mic.play(&silence(4000), turn_ended).await.expect("the fallback timeout never ended the turn");
    ended_once_at_the_timeout(mic, ended - stopped, 2 * FRAME).await;
}

/// The model's "incomplete" at the pause is asked again on the audio the stop gives: it swings
/// with the length of the silence, and a wrong one would keep the user waiting for the timeout.
/// (The test's input goes on with a complete sentence the VAD reports as silence, so the two
/// verdicts differ.)
#[tokio::test(start_paused = true)]
async fn an_incomplete_verdict_at_the_pause_is_checked_again_at_the_stop() {
    // The model hears exactly the complete sentence at the stop, as in the scoring test above.
    let complete = speak(COMPLETE);
    let max_duration_s = complete.len() as f32 / PIPELINE_SAMPLE_RATE as f32;
    let settings = SmartTurnSettings { incomplete_timeout_ms: 2000, max_duration_s, ..SmartTurnSettings::default() };
    let mut mic = Mic::start(smart_turn(settings)).await;
    mic.started().await;
    assert!(mic.play(&speak(CUT_OFF), turn_ended).await.is_none());
    let speech_end = mic.pts - Duration::from_millis(200);
    mic.send(paused(speech_end)).await;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(mic.play(&complete, turn_ended).await.is_none());
    stop_at(&mic, speech_end).await;
    let stopped = Instant::now();
    let ended = mic.wait(Duration::from_secs(3), turn_ended).await.expect("the turn did not end");
    assert!(
        ended - stopped < Duration::from_millis(1000),
        "the turn ended {} ms after the stop: the pause's verdict was not checked again",
        ms(ended - stopped)
    );
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    assert_eq!(count(&out.downstream, turn_ended), 1);
}

/// A cut-off sentence said to a smart_turn with a 2000 ms fallback timeout, up to the VAD's stop:
/// the microphone, and the instant the stop was sent.
async fn cut_off_sentence_then_stop() -> (Mic, Instant) {
    let speech = speak(CUT_OFF);
    let settings = SmartTurnSettings { incomplete_timeout_ms: 2000, ..SmartTurnSettings::default() };
    let mut mic = Mic::start(smart_turn(settings)).await;
    mic.started().await;
    assert!(mic.play(&speech, turn_ended).await.is_none());
    mic.stopped().await;
    (mic, Instant::now())
}

/// Checks the turn ended at the 2000 ms timeout (within `slack`), and only once.
async fn ended_once_at_the_timeout(mic: Mic, waited: Duration, slack: Duration) {
    assert!(waited >= Duration::from_millis(2000), "ended after {} ms, before the 2000 ms timeout", ms(waited));
    assert!(waited <= Duration::from_millis(2000) + slack, "ended {} ms after the stop", ms(waited));
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    assert_eq!(count(&out.downstream, turn_ended), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_sentence_waits_for_the_timeout() {
    let (mut mic, stopped) = cut_off_sentence_then_stop().await;
    let ended = mic.play(&silence(4000), turn_ended).await.expect("the fallback timeout never ended the turn");
    println!("cut-off sentence: turn ended {} ms after the stop", ms(ended - stopped));
    ended_once_at_the_timeout(mic, ended - stopped, 2 * FRAME).await;
}

/// Input that sends nothing while the turn waits (a WAV file read as fast as possible, a stalled
/// device) still gets its turn ended by the fallback timeout.
#[tokio::test(start_paused = true)]
async fn the_fallback_timeout_ends_the_turn_when_no_audio_arrives() {
    let (mut mic, stopped) = cut_off_sentence_then_stop().await;
    let ended = mic.wait(Duration::from_secs(5), turn_ended).await.expect("the turn never ended without audio");
    ended_once_at_the_timeout(mic, ended - stopped, Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn resuming_after_a_pause_keeps_the_turn_open() {
    let settings = SmartTurnSettings { incomplete_timeout_ms: 2000, ..SmartTurnSettings::default() };
    let mut mic = Mic::start(smart_turn(settings)).await;
    mic.started().await;
    assert!(mic.play(&speak(CUT_OFF), turn_ended).await.is_none());
    mic.stopped().await;
    // A thinking pause shorter than the timeout.
    assert!(mic.play(&silence(1500), turn_ended).await.is_none(), "the turn ended during a pause");
    mic.started().await;
    assert!(mic.play(&speak("tell me what time it is in Tokyo."), turn_ended).await.is_none());
    mic.stopped().await;
    // Whatever the model makes of the whole utterance, the turn ends once: now or at the timeout.
    assert!(mic.play(&silence(2500), turn_ended).await.is_some(), "the resumed turn never ended");
    assert!(mic.play(&silence(3000), turn_ended).await.is_none());
    // The next turn, 3 s after the first ended (past the merge window).
    mic.started().await;
    mic.play(&speak("Thanks."), turn_ended).await;
    mic.stopped().await;
    assert!(mic.play(&silence(3000), turn_ended).await.is_some(), "the next turn never ended");
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    assert_eq!(count(&out.downstream, turn_ended), 2, "one utterance with a pause is one turn, then the next");
    // The VAD numbered three speeches; the two of the first turn go on as turn 1, and the next
    // turn is turn 2, not 3.
    let numbers: Vec<u64> = numbered(&out.downstream).iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers, [1, 1, 1, 1, 2, 2], "{:?}", numbered(&out.downstream));
}

#[tokio::test(start_paused = true)]
async fn end_of_stream_ends_an_open_turn_so_its_words_are_transcribed() {
    let settings = SmartTurnSettings { incomplete_timeout_ms: 5000, ..SmartTurnSettings::default() };
    let mut mic = Mic::start(smart_turn(settings)).await;
    mic.started().await;
    mic.play(&speak(CUT_OFF), turn_ended).await;
    mic.stopped().await;
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    let ended = out.downstream.iter().position(turn_ended).expect("End flushed no UserTurnEnded");
    let end = out.downstream.iter().position(|f| matches!(f, Frame::End)).unwrap();
    assert!(ended < end);
}

/// The assistant speaks (the speaker reports it upstream) while the user talks for `talk_ms`.
async fn talk_over_bot(
    settings: SmartTurnSettings,
    bot_speaking: bool,
    talk_ms: u64,
) -> (Option<Duration>, Vec<Frame>) {
    let mut mic = Mic::start(smart_turn(settings)).await;
    if bot_speaking {
        mic.harness.send_upstream(Frame::BotStartedSpeaking).await;
    } else {
        mic.harness.send_upstream(Frame::BotStartedSpeaking).await;
        mic.harness.send_upstream(Frame::BotStoppedSpeaking).await;
    }
    mic.play(&silence(200), interruption).await;
    mic.started().await;
    let started = Instant::now();
    let interrupted = mic.play(&silence(talk_ms), interruption).await.map(|t| t - started);
    mic.stopped().await;
    mic.play(&silence(500), interruption).await;
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    assert!(
        out.upstream.iter().any(|f| matches!(f, Frame::BotStartedSpeaking)),
        "the speaker's events travel on upstream"
    );
    (interrupted, out.downstream)
}

#[tokio::test(start_paused = true)]
async fn talking_over_the_assistant_interrupts_it_after_the_minimum() {
    let (after, out) = talk_over_bot(SmartTurnSettings::default(), true, 1000).await;
    let after = after.expect("a second of speech over the assistant did not interrupt it");
    println!("interruption {} ms after the user started", ms(after));
    assert!(after >= Duration::from_millis(300) - FRAME, "interrupted after {} ms, before 300 ms of speech", ms(after));
    assert!(after <= Duration::from_millis(300) + FRAME, "interrupted only after {} ms", ms(after));
    assert_eq!(count(&out, interruption), 1, "one stretch of speech interrupts once");
}

#[tokio::test(start_paused = true)]
async fn a_short_sound_does_not_interrupt() {
    let (after, out) = talk_over_bot(SmartTurnSettings::default(), true, 200).await;
    assert_eq!(after, None);
    assert_eq!(count(&out, interruption), 0, "a 200 ms blip interrupted the assistant");
}

#[tokio::test(start_paused = true)]
async fn speech_while_the_assistant_is_silent_does_not_interrupt() {
    let (after, out) = talk_over_bot(SmartTurnSettings::default(), false, 1000).await;
    assert_eq!(after, None);
    assert_eq!(count(&out, interruption), 0);
}

#[tokio::test(start_paused = true)]
async fn barge_in_can_be_switched_off() {
    let settings = SmartTurnSettings { barge_in: false, ..SmartTurnSettings::default() };
    let (_, out) = talk_over_bot(settings, true, 1000).await;
    assert_eq!(count(&out, interruption), 0);
}

#[tokio::test(start_paused = true)]
async fn the_minimum_is_configurable() {
    let settings = SmartTurnSettings { barge_in_min_ms: 600, ..SmartTurnSettings::default() };
    let (after, _) = talk_over_bot(settings.clone(), true, 500).await;
    assert_eq!(after, None, "500 ms interrupted with a 600 ms minimum");
    let (after, _) = talk_over_bot(settings, true, 1000).await;
    assert!(after.is_some_and(|d| d >= Duration::from_millis(580)), "{after:?}");
}

#[test]
fn the_kind_is_registered() {
    let kind = slowcat_processors::registry::registry().find("smart_turn").expect("smart_turn is in kinds()");
    assert!(kind.about.contains("Smart Turn"));
}

/// The first part of a command said with a pause, as Smart Turn may hear it: complete.
const FIRST_PART: &str = "Turn left.";
const SECOND_PART: &str = "at the next corner.";

/// A turn ended on `FIRST_PART` (every verdict counts as complete), then the user speaks again
/// after `gap_ms`, with `reply_heard` deciding whether the reply became audible in between.
async fn speak_again_after_the_turn_ended(settings: SmartTurnSettings, gap_ms: u64, reply_heard: bool) -> Vec<Frame> {
    let settings = SmartTurnSettings { threshold: 0.0, ..settings };
    let mut mic = Mic::start(smart_turn(settings)).await;
    mic.started().await;
    mic.play(&speak(FIRST_PART), turn_ended).await;
    mic.stopped().await;
    let ended = mic.play(&silence(600), turn_ended).await;
    assert!(ended.is_some(), "the first part must end the turn for this test");
    mic.play(&silence(gap_ms.saturating_sub(600)), |_| false).await;
    if reply_heard {
        mic.harness.send_upstream(Frame::BotStartedSpeaking).await;
        mic.play(&silence(100), |_| false).await;
        // Heard for longer than anyone takes to react to it (the pipeline's clock is the wall's,
        // which tokio's paused clock does not move).
        std::thread::sleep(Duration::from_millis(600));
        mic.harness.send_upstream(Frame::BotStoppedSpeaking).await;
    }
    mic.started().await;
    mic.play(&speak(SECOND_PART), turn_ended).await;
    mic.stopped().await;
    assert!(mic.play(&silence(1000), turn_ended).await.is_some(), "the second part never ended a turn");
    mic.harness.finish(Duration::from_secs(10)).await.downstream
}

fn resumed(f: &Frame) -> bool {
    matches!(f, Frame::UserTurnResumed { .. })
}

/// The speaking events and resumptions smart_turn sent on, with their turn numbers.
fn numbered(frames: &[Frame]) -> Vec<(&'static str, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::UserStartedSpeaking { turn, .. }
            | Frame::UserSpeechPaused { turn, .. }
            | Frame::UserStoppedSpeaking { turn, .. }
            | Frame::UserTurnResumed { turn } => Some((f.name(), *turn)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn speech_after_the_turn_ended_but_before_its_reply_is_heard_continues_the_turn() {
    let out = speak_again_after_the_turn_ended(SmartTurnSettings::default(), 600, false).await;
    assert_eq!(count(&out, resumed), 1, "the turn goes on");
    // The reply to the first part is cancelled, right behind the resumption.
    let names: Vec<&str> = out.iter().map(|f| f.name()).filter(|n| *n != "InputAudio" && *n != "Metrics").collect();
    let at = names.iter().position(|n| *n == "UserTurnResumed").unwrap();
    assert_eq!(&names[at - 1..=at + 1], ["UserStartedSpeaking", "UserTurnResumed", "Interruption"], "{names:?}");
    assert_eq!(count(&out, interruption), 1, "{names:?}");
    assert_eq!(count(&out, turn_ended), 2, "each part ends once; speech-to-text joins them: {names:?}");
    // The VAD numbered the two parts 1 and 2; they are one turn, and go on as turn 1.
    let turn1 = [("UserStartedSpeaking", 1), ("UserStoppedSpeaking", 1)];
    let resumed1 = [("UserStartedSpeaking", 1), ("UserTurnResumed", 1), ("UserStoppedSpeaking", 1)];
    assert_eq!(numbered(&out), [&turn1[..], &resumed1[..]].concat());
}

#[tokio::test(start_paused = true)]
async fn speech_after_the_reply_was_heard_or_after_the_merge_window_is_a_new_turn() {
    let out = speak_again_after_the_turn_ended(SmartTurnSettings::default(), 600, true).await;
    assert_eq!((count(&out, resumed), count(&out, interruption)), (0, 0), "the reply was heard: a new turn");
    let two_turns = [
        ("UserStartedSpeaking", 1),
        ("UserStoppedSpeaking", 1),
        ("UserStartedSpeaking", 2),
        ("UserStoppedSpeaking", 2),
    ];
    assert_eq!(numbered(&out), two_turns, "the new turn has the next number");
    let out = speak_again_after_the_turn_ended(SmartTurnSettings::default(), 2600, false).await;
    assert_eq!((count(&out, resumed), count(&out, interruption)), (0, 0), "2.6 s later: a new turn");
    let off = SmartTurnSettings { merge_window_ms: 0, ..SmartTurnSettings::default() };
    let out = speak_again_after_the_turn_ended(off, 600, false).await;
    assert_eq!((count(&out, resumed), count(&out, interruption)), (0, 0), "merging switched off");
}

/// Whisper's early transcript of the speech that ended at `end`, on its way upstream.
fn heard(end: Duration, text: &str) -> Frame {
    Frame::InterimTranscription(Box::new(slowcat_processors::Transcription {
        text: text.into(),
        speaker: "default".into(),
        turn: 1,
        start: Duration::ZERO,
        end,
        processing: Duration::ZERO,
    }))
}

/// Says `audio` and stops; whisper's transcript of it, `words`, comes `late_ms` after the stop.
/// Returns how long after the words the turn ended (with a 2000 ms fallback).
async fn turn_end_with_words(audio: Vec<i16>, words: &str, late_ms: u64) -> Duration {
    let settings = SmartTurnSettings { incomplete_timeout_ms: 2000, ..SmartTurnSettings::default() };
    let mut mic = Mic::start(smart_turn(settings)).await;
    mic.started().await;
    assert!(mic.play(&audio, turn_ended).await.is_none());
    let end = mic.pts - Duration::from_millis(200);
    stop_at(&mic, end).await;
    if late_ms > 0 {
        assert!(mic.play(&silence(late_ms), turn_ended).await.is_none(), "the turn ended before the words came");
    }
    mic.harness.send_upstream(heard(end, words)).await;
    let words_came = Instant::now();
    let ended = mic.play(&silence(4000), turn_ended).await.expect("the turn never ended");
    let out = mic.harness.finish(Duration::from_secs(10)).await;
    assert_eq!(count(&out.downstream, turn_ended), 1);
    assert!(
        out.upstream.iter().any(|f| matches!(f, Frame::InterimTranscription(_))),
        "the transcript goes on upstream"
    );
    ended - words_came
}

#[tokio::test(start_paused = true)]
async fn a_question_that_sounds_unfinished_ends_soon_when_its_words_are_complete() {
    // The model finds the cut-off recording unfinished; the words say the question is complete.
    let waited = turn_end_with_words(speak(CUT_OFF), "What time is it in Tokyo?", 0).await;
    println!("ended {} ms after the stop", ms(waited));
    assert!(waited < Duration::from_millis(1000), "waited {} ms: the words did not count", ms(waited));
}

#[tokio::test(start_paused = true)]
async fn a_sentence_that_sounds_complete_waits_when_its_words_end_on_and() {
    let waited = turn_end_with_words(speak(COMPLETE), "What is the weather going to be like in Paris and", 0).await;
    println!("ended {} ms after the stop", ms(waited));
    assert!(waited >= Duration::from_millis(2000), "ended after {} ms on a dangling 'and'", ms(waited));
}

/// Whisper's words can come late (a transcript that looped is decoded again): the user has been
/// silent since the stop, and the short wait for complete words counts from there, so the turn
/// ends as soon as the late words say the question is complete, not 400 ms after them.
#[tokio::test(start_paused = true)]
async fn complete_words_that_come_late_end_the_turn_at_once() {
    let waited = turn_end_with_words(speak(CUT_OFF), "What time is it in Tokyo?", 600).await;
    println!("ended {} ms after the words", ms(waited));
    assert!(waited < Duration::from_millis(150), "waited {} ms after the words", ms(waited));
}
