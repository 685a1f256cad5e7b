//! Barge-in end to end, with every real part: Silero VAD, Smart Turn, Whisper tiny.en, stateless
//! memory, the local llama.cpp server, Piper, and the `speaker` on a PulseAudio null sink.
//!
//! The test is the user at an open microphone: it speaks Piper-made utterances into the pipeline
//! as 20 ms frames paced in real time (silence in between), and listens to what the null sink
//! plays by recording its monitor with `parec`; a thread also watches the speaker's counter of
//! audio handed to the device. The sink is one of the test's own, so that other tests playing
//! on `slowcat_null` at the same time (a shared machine) neither disturb it nor are disturbed.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pulse::{PrivateSink, Recorder, require_pulse, secs};
use common::{build, build_ctx, llm_url, say};
use slowcat_processors::audio::{Speaker, SpeakerSettings, SpeakerStats, read_wav_mono};
use slowcat_processors::frame::SpokenReply;
use slowcat_processors::harness::Harness;
use slowcat_processors::llm::{OpenAiLlmSettings, UserTurnSettings};
use slowcat_processors::memory::{MemoryDb, StatelessMemorySettings};
use slowcat_processors::stt::WhisperSttSettings;
use slowcat_processors::tts::PiperSettings;
use slowcat_processors::turn::SmartTurnSettings;
use slowcat_processors::vad::SileroVadSettings;
use slowcat_processors::{
    AudioFrame, BoxProcessor, Direction, Frame, LlmRequest, PipelineOptions, ProcessError, Processor, ProcessorContext,
    Role,
};

/// The microphone: 16 kHz mono in 20 ms frames.
const RATE: u32 = 16_000;
const FRAME: Duration = Duration::from_millis(20);
const FRAME_SAMPLES: usize = 320;
/// Speech the VAD needs before `UserStartedSpeaking` (silero_vad's `start_ms`, as in config.toml).
const VAD_START_MS: u64 = 200;
/// How long the user must talk over the assistant to interrupt it (smart_turn, as in config.toml).
const BARGE_IN_MIN_MS: u64 = 300;
/// The target is silence within 50 ms of the VAD event; that is a benchmark figure, printed.
/// What is asserted is what cannot flake on this loaded machine: one chunk in the speaker's ring
/// (40 ms), a device period and PulseAudio's buffer, and the scheduling of the frame hops.
const SILENCE_BOUND: Duration = Duration::from_millis(150);
/// No audio for this long means the assistant fell silent (Piper's pauses between words are shorter).
const QUIET: f64 = 0.3;

/// Watches the speaker's counter of frames handed to the device, noting when it moved.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<f64>>>,
}

impl Sampler {
    fn start(stats: SpeakerStats, t0: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut moved = Vec::new();
            let mut last = stats.played_frames();
            while !flag.load(Ordering::Acquire) {
                let now = stats.played_frames();
                if now != last {
                    moved.push(secs(t0, Instant::now()));
                    last = now;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            moved
        });
        Self { stop, handle: Some(handle) }
    }

    fn stop(mut self) -> Vec<f64> {
        self.stop.store(true, Ordering::Release);
        self.handle.take().expect("running").join().expect("the sampler thread")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Given the sorted times of activity: the last one at or after `from` before the first `QUIET`
/// stretch without any (`from` itself when there was none: already silent), and the first one
/// after that stretch (None when there was none).
fn activity_after(times: &[f64], from: f64) -> (f64, Option<f64>) {
    let mut last = from;
    for &t in times.iter().filter(|&&t| t >= from) {
        if t - last >= QUIET {
            return (last, Some(t));
        }
        last = t;
    }
    (last, None)
}

fn active_around(times: &[f64], at: f64) -> bool {
    times.iter().any(|&t| t > at - 0.1 && t <= at)
}

/// Records every LLM request passing by.
struct Capture(Arc<Mutex<Vec<LlmRequest>>>);

#[async_trait::async_trait]
impl Processor for Capture {
    fn accepts(&self) -> slowcat_processors::processor::Accepts {
        |frame, _| matches!(frame, Frame::LlmRequest(_))
    }

    async fn process(&mut self, frame: Frame, dir: Direction, ctx: &ProcessorContext) -> Result<(), ProcessError> {
        if let Frame::LlmRequest(r) = &frame {
            self.0.lock().unwrap().push(*r.clone());
        }
        ctx.push(frame, dir).await;
        Ok(())
    }
}

/// A frame out of the pipeline (audio aside), and when it came (seconds since t0).
struct Event {
    at: f64,
    dir: Direction,
    frame: Frame,
}

/// The user at an open microphone: 20 ms frames on the clock, silence unless speaking; every
/// frame out of the pipeline is noted with its arrival time.
struct User {
    h: Harness,
    t0: Instant,
    events: Vec<Event>,
    /// When each microphone frame was sent.
    sent: Vec<f64>,
    due: tokio::time::Instant,
    pts0: Duration,
}

impl User {
    async fn start(processors: Vec<(String, BoxProcessor)>, t0: Instant) -> Self {
        let h = Harness::start_with(processors, PipelineOptions::default()).await;
        Self { h, t0, events: Vec::new(), sent: Vec::new(), due: tokio::time::Instant::now(), pts0: t0.elapsed() }
    }

    fn now(&self) -> f64 {
        secs(self.t0, Instant::now())
    }

    /// Notes what comes out until the next frame is due, then sends it.
    async fn frame(&mut self, samples: &[i16]) {
        let (t0, events) = (self.t0, &mut self.events);
        let wait = self.due.saturating_duration_since(tokio::time::Instant::now());
        self.h
            .wait_for(wait, |f, dir| {
                if !matches!(f, Frame::InputAudio(_) | Frame::OutputAudio(_)) {
                    events.push(Event { at: secs(t0, Instant::now()), dir, frame: f.clone() });
                }
                false
            })
            .await;
        let mut chunk = samples.to_vec();
        chunk.resize(FRAME_SAMPLES, 0);
        let pts = self.pts();
        self.h.send(Frame::InputAudio(AudioFrame::new(chunk, RATE, 1, pts))).await;
        self.sent.push(self.now());
        self.due += FRAME;
    }

    async fn say(&mut self, samples: &[i16]) {
        for chunk in samples.chunks(FRAME_SAMPLES) {
            self.frame(chunk).await;
        }
    }

    async fn silence(&mut self, d: Duration) {
        for _ in 0..d.as_millis() / FRAME.as_millis() {
            self.frame(&[]).await;
        }
    }

    /// Where the next frame lies on the pipeline timeline.
    fn pts(&self) -> Duration {
        self.pts0 + FRAME * self.sent.len() as u32
    }

    /// When the microphone delivered the audio at `pts` on the pipeline timeline.
    fn delivered(&self, pts: Duration) -> f64 {
        let frame = (pts.saturating_sub(self.pts0).as_secs_f64() / FRAME.as_secs_f64()).ceil() as usize;
        self.sent[frame.saturating_sub(1).min(self.sent.len() - 1)]
    }

    fn find(&self, from: usize, pred: impl Fn(&Frame, Direction) -> bool) -> Option<usize> {
        self.events[from..].iter().position(|e| pred(&e.frame, e.dir)).map(|i| from + i)
    }

    /// Keeps the microphone open until a frame matching `pred` has come out (searching from event
    /// `from` on); returns its index.
    async fn until(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Frame, Direction) -> bool,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.find(from, &pred) {
                return i;
            }
            if Instant::now() > deadline {
                panic!("{what} did not happen within {timeout:?}; what came out since:\n{}", self.describe(from));
            }
            self.frame(&[]).await;
        }
    }

    /// Keeps the microphone open until the assistant is speaking, both as far as the pipeline
    /// knows and audibly (the speaker hands audio to the device).
    async fn until_speaking(&mut self, stats: &SpeakerStats, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let played = stats.played_frames();
            self.silence(Duration::from_millis(100)).await;
            if self.bot_speaking() && stats.played_frames() > played {
                return;
            }
            if Instant::now() > deadline {
                panic!("the assistant was not speaking for {timeout:?}:\n{}", self.describe(0));
            }
        }
    }

    /// True when the assistant is speaking as far as the pipeline knows (the last upstream
    /// speaking event is a start).
    fn bot_speaking(&self) -> bool {
        self.events
            .iter()
            .rev()
            .filter(|e| e.dir == Direction::Upstream)
            .find_map(|e| match e.frame {
                Frame::BotStartedSpeaking => Some(true),
                Frame::BotStoppedSpeaking => Some(false),
                _ => None,
            })
            .unwrap_or(false)
    }

    /// Seconds since the assistant's last reply ended, when nothing has happened since: no reply
    /// started and the user has not spoken. None while a turn is under way.
    fn idle_since_reply(&self) -> Option<f64> {
        let last = self.events.iter().rposition(|e| upstream_spoken(&e.frame, e.dir).is_some())?;
        let busy = self.events[last + 1..].iter().any(|e| {
            matches!(e.frame, Frame::LlmResponseStart { .. } | Frame::UserStartedSpeaking { .. } | Frame::UserTurnEnded)
        });
        (!busy).then(|| self.now() - self.events[last].at)
    }

    fn describe(&self, from: usize) -> String {
        self.events[from.min(self.events.len())..]
            .iter()
            .filter(|e| !matches!(e.frame, Frame::Error(_)))
            .map(|e| format!("{:8.3} {:?} {:?}", e.at, e.dir, e.frame))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn upstream_spoken(f: &Frame, d: Direction) -> Option<&SpokenReply> {
    match f {
        Frame::SpokenReply(r) if d == Direction::Upstream => Some(r),
        _ => None,
    }
}

/// Piper speaking `text`, as 16 kHz samples without the silence around it.
async fn speech(dir: &Path, name: &str, text: &str) -> Vec<i16> {
    let path = dir.join(format!("{name}.wav"));
    say(dir, text, &path).await;
    let samples = read_wav_mono(&path, RATE).expect("Piper wrote a WAV file");
    let first = samples.iter().position(|s| s.unsigned_abs() > 300).expect("Piper said something");
    let last = samples.iter().rposition(|s| s.unsigned_abs() > 300).expect("Piper said something");
    samples[first..=last].to_vec()
}

/// The first `ms` of `samples`, faded out over its last 10 ms.
fn cut(samples: &[i16], ms: usize) -> Vec<i16> {
    let n = (ms * RATE as usize / 1000).min(samples.len());
    let fade = RATE as usize / 100;
    let mut out = samples[..n].to_vec();
    for (i, s) in out.iter_mut().rev().take(fade).enumerate() {
        *s = (f32::from(*s) * i as f32 / fade as f32) as i16;
    }
    out
}

/// The whole assistant as config.toml builds it, with the LLM requests captured on their way
/// and the speaker's counters kept.
fn assistant(dir: &Path, requests: &Arc<Mutex<Vec<LlmRequest>>>) -> (Vec<(String, BoxProcessor)>, SpeakerStats) {
    let ctx = build_ctx(dir);
    let speaker = Speaker::open(SpeakerSettings::default()).expect("the default output device (the null sink) opens");
    let stats = speaker.stats();
    let turn = format!("barge_in = true\nbarge_in_min_ms = {BARGE_IN_MIN_MS}");
    // Long replies (60 tokens, 10–20 s of speech), so there is something to interrupt.
    let llm = format!("base_url = {:?}\nmax_tokens = 60", llm_url());
    let processors = vec![
        ("vad".into(), build::<SileroVadSettings>(&ctx, &format!("start_ms = {VAD_START_MS}\nstop_ms = 200"))),
        ("turn".into(), build::<SmartTurnSettings>(&ctx, &turn)),
        ("stt".into(), build::<WhisperSttSettings>(&ctx, "")),
        ("user_turn".into(), build::<UserTurnSettings>(&ctx, "")),
        ("memory".into(), build::<StatelessMemorySettings>(&ctx, "")),
        ("capture".into(), Box::new(Capture(requests.clone())) as BoxProcessor),
        ("llm".into(), build::<OpenAiLlmSettings>(&ctx, &llm)),
        ("tts".into(), build::<PiperSettings>(&ctx, "")),
        ("speaker".into(), Box::new(speaker) as BoxProcessor),
    ];
    (processors, stats)
}

/// One test at a time: each makes its own sink the process's default.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running assistant, the user at its microphone, and the ears on its speaker.
struct Conversation {
    sink: PrivateSink,
    dir: tempfile::TempDir,
    user: User,
    recorder: Recorder,
    sampler: Sampler,
    stats: SpeakerStats,
    requests: Arc<Mutex<Vec<LlmRequest>>>,
    /// The request for a long story, as spoken.
    story: Vec<i16>,
    interruption: Vec<i16>,
    /// Two backchannels: a "mm" too short for the VAD, and an "uh-huh" the VAD hears as speech
    /// but that overlaps the assistant for less than `barge_in_min_ms` (the VAD's 200 ms of
    /// hangover count as overlap).
    backchannels: [Vec<i16>; 2],
    /// The event where the first reply started playing, as `started` asked.
    bot1: usize,
}

/// Starts the assistant, asks it for a long story and waits until its reply is playing:
/// `started` says where `BotStartedSpeaking` is awaited (upstream out of the head: the pipeline
/// knows; downstream out of the tail: the speaker has started).
async fn ask_for_a_long_reply(started: Direction) -> Conversation {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    require_pulse();
    let dir = tempfile::tempdir().unwrap();
    let question = speech(dir.path(), "question", "Please tell me a long story about dragons.").await;
    let interruption = speech(dir.path(), "interruption", "Wait, stop, tell me something else instead.").await;
    let mm = cut(&speech(dir.path(), "mm", "Mm.").await, 150);
    let uh_huh = cut(&speech(dir.path(), "uh_huh", "Uh-huh.").await, 230);
    let requests = Arc::new(Mutex::new(Vec::new()));
    let sink = PrivateSink::load("barge_in");
    // SAFETY: set before the speaker opens, while this test (the only one running: see
    // ONE_AT_A_TIME) has no other thread of its own reading the environment.
    unsafe { std::env::set_var("PULSE_SINK", sink.name()) };
    let (processors, stats) = assistant(dir.path(), &requests);
    let t0 = Instant::now();
    let recorder = Recorder::start(&sink.monitor(), t0);
    let sampler = Sampler::start(stats.clone(), t0);
    let mut user = User::start(processors, t0).await;

    user.silence(Duration::from_secs(1)).await;
    user.say(&question).await;
    let bot1 = user
        .until(0, Duration::from_secs(120), "the assistant starting to answer", |f, d| {
            matches!(f, Frame::BotStartedSpeaking) && d == started
        })
        .await;
    Conversation {
        sink,
        dir,
        user,
        recorder,
        sampler,
        stats,
        requests,
        story: question,
        interruption,
        backchannels: [mm, uh_huh],
        bot1,
    }
}

#[tokio::test]
async fn talking_over_the_assistant_silences_it_at_once_and_the_next_turn_is_answered() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let c = ask_for_a_long_reply(Direction::Upstream).await;
    let Conversation {
        sink: _sink,
        dir,
        mut user,
        recorder,
        sampler,
        stats,
        requests,
        story,
        interruption,
        backchannels,
        bot1,
    } = c;
    let [mm, uh_huh] = backchannels;

    // The user talks over the assistant. On this loaded machine Piper can fall seconds behind
    // between sentences and the assistant pauses meanwhile: the user talks while it is audibly
    // speaking, and says it again if a pause swallowed the first attempt.
    user.silence(Duration::from_millis(500)).await;
    let utterance_start = user.pts();
    let mut interrupted = None;
    for _ in 0..3 {
        user.until_speaking(&stats, Duration::from_secs(60)).await;
        // A person reacts to what they hear after a few hundred ms; speech sooner than smart_turn's
        // reaction time is the user going on with their turn (the reply, sent ahead, can be
        // audible 0.3 s after the question).
        user.silence(Duration::from_millis(600)).await;
        let from = user.events.len();
        user.say(&interruption).await;
        user.silence(Duration::from_millis(1500)).await;
        interrupted = user.find(from, |f, d| matches!(f, Frame::Interruption) && d == Direction::Downstream);
        if interrupted.is_some() {
            break;
        }
        println!("the assistant paused while the user talked over it; the user says it again");
    }
    let int = interrupted
        .unwrap_or_else(|| panic!("talking over the assistant never interrupted it:\n{}", user.describe(bot1)));
    let t_int = user.events[int].at;
    let discarded = stats.discarded_frames();
    // The reply that was cut: the speaker reports what it said of it.
    let cut_at = user
        .until(int, Duration::from_secs(10), "the interrupted reply reported", |f, d| {
            upstream_spoken(f, d).is_some_and(|r| r.interrupted)
        })
        .await;
    let partial = upstream_spoken(&user.events[cut_at].frame, Direction::Upstream).cloned().expect("matched above");
    let turn1 = partial.turn;

    // The first reply after the interruption. (Smart Turn may have cut the question in two, and
    // the reply to its second half come only now.)
    let next_turn = user
        .until(
            int,
            Duration::from_secs(120),
            "a reply after the interruption",
            |f, _| matches!(f, Frame::LlmResponseStart { turn } if *turn > turn1),
        )
        .await;
    user.until(next_turn, Duration::from_secs(60), "the next reply playing", |f, d| {
        matches!(f, Frame::BotStartedSpeaking) && d == Direction::Upstream
    })
    .await;
    // The turn of what the user said over the assistant. (Smart Turn and Whisper may make two
    // turns of "Wait, stop, | tell me something else instead.": either counts.)
    let said_over = user
        .until(
            int,
            Duration::from_secs(120),
            "what the user said over the assistant transcribed",
            |f, _| matches!(f, Frame::Transcription(t) if t.end > utterance_start),
        )
        .await;
    let Frame::Transcription(said_over) = user.events[said_over].frame.clone() else { unreachable!() };

    // Backchannels while it speaks must not interrupt it. That needs the assistant speaking
    // throughout; Piper may fall behind between sentences on a loaded machine, so try again then.
    // When the reply ends before that (the 135M model may answer in one short sentence, and with
    // the earlier turns in memory it did so three times in a row once), the user asks for the
    // story again, as often as the deadline allows.
    let mut blips = None;
    let mut asked_again = 0;
    let deadline = Instant::now() + Duration::from_secs(150);
    while Instant::now() < deadline {
        let played = stats.played_frames();
        user.silence(Duration::from_millis(300)).await;
        if !user.bot_speaking() || stats.played_frames() == played {
            if user.idle_since_reply().is_some_and(|s| s > 1.0) && asked_again < 8 {
                println!("the reply ended before the backchannels; the user asks for the story again");
                user.say(&story).await;
                asked_again += 1;
            }
            continue;
        }
        let from = user.events.len();
        let played = stats.played_frames();
        user.say(&mm).await;
        user.silence(Duration::from_millis(400)).await;
        user.say(&uh_huh).await;
        // The VAD's hangover (200 ms) and smart_turn's counting are over by then.
        user.silence(Duration::from_millis(500)).await;
        assert!(
            user.find(from, |f, _| matches!(f, Frame::Interruption)).is_none() && stats.discarded_frames() == discarded,
            "a 150 ms \"mm\" and a 230 ms \"uh-huh\" interrupted the assistant:\n{}",
            user.describe(int)
        );
        let paused = user.find(from, |f, d| matches!(f, Frame::BotStoppedSpeaking) && d == Direction::Upstream);
        if paused.is_none() && stats.played_frames() > played {
            blips = Some(from);
            break;
        }
    }
    let blips = blips.unwrap_or_else(|| {
        panic!("the assistant never spoke long enough for the backchannel check:\n{}", user.describe(int))
    });

    // The next turn works: its reply plays out in full.
    let done = user
        .until(next_turn, Duration::from_secs(150), "the reply to it played out", |f, d| {
            upstream_spoken(f, d)
                .is_some_and(|r| r.turn >= said_over.turn && !r.interrupted && !r.text.trim().is_empty())
        })
        .await;
    let answer = upstream_spoken(&user.events[done].frame, Direction::Upstream).cloned().expect("matched above");
    let moved = sampler.stop();
    let recorded = recorder.stop();
    // The VAD event: the interrupting speech had lasted the VAD's start_ms plus barge_in_min_ms
    // (where it started is measured on the audio's own timeline).
    let speech_start = user.events[..int]
        .iter()
        .rev()
        .find_map(|e| match &e.frame {
            Frame::Metrics(m) if m.name == slowcat_processors::MetricName::UserSpeechStartAt => Some(m.value),
            _ => None,
        })
        .expect("the VAD measured where the interrupting speech started");
    let t_vad = user.delivered(speech_start + Duration::from_millis(VAD_START_MS + BARGE_IN_MIN_MS));
    let log = user.describe(0);
    println!("the interruption and what came before it:\n{}", {
        let around = user.events[..=int].iter().rposition(|e| e.at < user.events[int].at - 3.0).unwrap_or(0);
        user.events[around..=int]
            .iter()
            .map(|e| format!("{:8.3} {:?} {:?}", e.at, e.dir, e.frame))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let events = std::mem::take(&mut user.events);
    // Turns the backchannels may have made would be answered next: not waited for.
    let out = user.h.cancel().await;

    // How fast the speaker fell silent.
    let t_next = events[next_turn].at;
    let (handed_end, handed_next) = activity_after(&moved, t_int);
    let loud = recorded.loud_times(t_int, t_int - 1.0, f64::INFINITY);
    let (heard_end, heard_next) = activity_after(&loud, t_int);
    // The same, counted from the VAD event (the sound went on until the interruption anyway).
    let handed_after_vad = activity_after(&moved, t_vad).0 - t_vad;
    let heard_after_vad = activity_after(&loud, t_vad).0 - t_vad;
    let ms = |s: f64| s * 1000.0;
    println!(
        "barge-in: the interruption reached the speaker {:.0} ms after the VAD event; audio handed to the device \
         stopped {:.0} ms after the VAD event ({:.0} ms after the interruption); the null sink fell silent {:.0} ms \
         after the VAD event ({:.0} ms after the interruption) (device {} / null sink {} at the interruption)",
        ms(t_int - t_vad),
        ms(handed_after_vad),
        ms(handed_end - t_int),
        ms(heard_after_vad),
        ms(heard_end - t_int),
        if active_around(&moved, t_int) { "playing" } else { "idle" },
        if active_around(&loud, t_int) { "sounding" } else { "silent" },
    );
    let bound = SILENCE_BOUND.as_secs_f64();
    assert!(
        handed_end - t_int <= bound,
        "the speaker handed audio to the device {:.0} ms after the interruption (bound {SILENCE_BOUND:?})",
        ms(handed_end - t_int)
    );
    assert!(
        heard_end - t_int <= bound,
        "the null sink played the interrupted reply {:.0} ms after the interruption (bound {SILENCE_BOUND:?})",
        ms(heard_end - t_int)
    );
    // Nothing of the interrupted reply plays after that: the next sound is the next reply, which
    // cannot start before its LlmResponseStart has passed the speaker.
    for (what, next) in [("handed to the device", handed_next), ("played on the null sink", heard_next)] {
        let next = next.unwrap_or_else(|| {
            panic!(
                "no audio of the next reply was {what} (interruption at {t_int:.3} s, next reply at {t_next:.3} s, \
                 silent from {heard_end:.3} s; recorded {:.3} s in {} reads from {:?} to {:?}; last sound at {:?}):\n{log}",
                recorded.samples.len() as f64 / f64::from(RATE),
                recorded.reads.len(),
                recorded.reads.first(),
                recorded.reads.last(),
                loud.last(),
            )
        });
        assert!(
            next >= t_next - 0.05,
            "audio was {what} at {next:.3} s, after the interruption ({t_int:.3} s) and before the next reply started \
             ({t_next:.3} s):\n{log}"
        );
    }

    // Synthesis and the LLM stream were cancelled: nothing more of the interrupted reply.
    assert!(
        !events[int..].iter().any(|e| matches!(e.frame, Frame::TtsStarted { turn, .. } if turn == turn1)),
        "a sentence of the interrupted reply was synthesized after the interruption:\n{log}"
    );
    assert!(
        !events[int..next_turn].iter().any(|e| matches!(e.frame, Frame::LlmResponseEnd)),
        "the interrupted reply ran to its end:\n{log}"
    );

    // What the assistant said of the interrupted reply: the start of what was synthesized, no more.
    // A turn the user went on with keeps its number: the reply to its first part, cancelled before
    // it was heard (it may have been synthesized already), is not this one.
    let resumed = events[..int]
        .iter()
        .rposition(|e| matches!(e.frame, Frame::UserTurnResumed { turn } if turn == turn1))
        .map_or(0, |i| i + 1);
    let synthesized: Vec<&str> = events[resumed..int]
        .iter()
        .filter_map(|e| match &e.frame {
            Frame::TtsStarted { text, turn } if *turn == turn1 => Some(text.as_str()),
            _ => None,
        })
        .flat_map(str::split_whitespace)
        .collect();
    println!("interrupted reply: said {:?} of {:?}", partial.text, synthesized.join(" "));
    assert!(partial.interrupted, "{partial:?}");
    let said: Vec<&str> = partial.text.split_whitespace().collect();
    // Cut while a sentence was playing, it keeps fewer words than were synthesized; cut in a pause
    // while Piper was still synthesizing the next sentence, it may keep them all.
    let fewer = if active_around(&moved, t_int) { said.len() < synthesized.len() } else { true };
    assert!(
        !said.is_empty() && fewer && synthesized.starts_with(&said),
        "the interrupted reply must be reported as the part that was played: said {said:?} of {synthesized:?}"
    );

    // Memory keeps what was said: the next request carries it, and so does the database.
    let request = requests.lock().unwrap().iter().find(|r| r.turn == answer.turn).cloned();
    let request = request.expect("the next turn's request was captured");
    let remembered: Vec<&str> =
        request.messages.iter().filter(|m| m.role == Role::Assistant).map(|m| m.content.as_str()).collect();
    assert!(
        remembered.iter().any(|m| m.starts_with(partial.text.trim()) && m.contains("interrupted")),
        "the next request must carry the interrupted reply as it was said ({:?}), marked as interrupted: {remembered:?}",
        partial.text
    );
    let stored = remembered_exchanges(&dir.path().join("data/memory"));
    let exchange = stored.iter().find(|e| e.turn == turn1).expect("the interrupted exchange is stored");
    assert!(exchange.interrupted && exchange.assistant == partial.text, "{exchange:?}");

    // The next turn works: it answers what the user said over the assistant, and was heard.
    let asked = events.iter().find_map(|e| match &e.frame {
        Frame::Transcription(t) if t.turn == answer.turn => Some(t.clone()),
        _ => None,
    });
    let asked = asked.expect("the next turn was transcribed");
    println!("next turn {}: heard {:?}, answered {:?}", answer.turn, asked.text, answer.text);
    assert!(
        asked.end > utterance_start,
        "the next reply must answer what the user said over the assistant (from {utterance_start:?}): {asked:?}"
    );
    let answer_start = events
        .iter()
        .find(|e| matches!(e.frame, Frame::LlmResponseStart { turn } if turn == answer.turn))
        .map(|e| e.at)
        .expect("the reply started");
    assert!(loud.iter().any(|&t| t > answer_start), "the null sink never played the next reply:\n{log}");
    let vad_heard = events[blips..].iter().filter(|e| matches!(e.frame, Frame::UserStartedSpeaking { .. })).count();
    println!("backchannels: the VAD heard {vad_heard} of 2 as speech; neither interrupted the reply");

    // How long the speaking event took to travel upstream past the busy processors.
    if let Some(down) =
        events.iter().find(|e| matches!(e.frame, Frame::BotStartedSpeaking) && e.dir == Direction::Downstream)
    {
        println!(
            "the first reply's BotStartedSpeaking reached the head of the pipeline {:.0} ms after the speaker sent it",
            ms(events[bot1].at - down.at)
        );
    }
    let errors = events.iter().map(|e| &e.frame).chain(&out.downstream).filter(|f| matches!(f, Frame::Error(_)));
    println!("{} error frames (output device under- and overruns on this loaded machine)", errors.count());
}

/// The user talks over the first second of a reply, as soon as the speaker has started it.
///
/// `BotStartedSpeaking` travels upstream from the speaker through Piper, the LLM, memory and
/// Whisper to smart_turn. Those processors bypass upstream frames, so the event passes them even
/// while Piper synthesizes the next sentence or the LLM streams (it used to wait seconds for each
/// call, and the start of every reply could not be interrupted).
#[tokio::test]
async fn talking_over_the_first_second_of_a_reply_interrupts_it_too() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let c = ask_for_a_long_reply(Direction::Downstream).await;
    let Conversation { sink: _sink, mut user, recorder, sampler, bot1, interruption, .. } = c;
    user.silence(Duration::from_millis(500)).await;
    let from = user.events.len();
    let started = user.now();
    user.say(&interruption).await;
    let finished = user.now();
    user.silence(Duration::from_secs(5)).await;
    let int = user.find(from, |f, d| matches!(f, Frame::Interruption) && d == Direction::Downstream);
    let head_knew = user.find(bot1, |f, d| matches!(f, Frame::BotStartedSpeaking) && d == Direction::Upstream);
    let (t0_audio, at) = (user.events[bot1].at, |i: Option<usize>| i.map(|i| user.events[i].at));
    println!(
        "speaker started at {t0_audio:.3} s; the head knew at {:?} s; the user spoke from {started:.3} s to \
         {finished:.3} s; interruption at {:?} s",
        at(head_knew),
        at(int)
    );
    let log = user.describe(bot1);
    let _ = (sampler.stop(), recorder.stop(), user.h.cancel().await);
    assert!(
        at(int).is_some_and(|t| t <= finished),
        "talking over the start of a reply did not interrupt it while the user spoke:\n{log}"
    );
}

/// The exchanges in the memory database, newest first. The pipeline has just been stopped; its
/// store may take a moment to close.
fn remembered_exchanges(path: &Path) -> Vec<slowcat_processors::memory::Exchange> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match MemoryDb::open_existing(path).and_then(|db| db.recent("default", 50)) {
            Ok(exchanges) => return exchanges,
            Err(e) if Instant::now() > deadline => panic!("cannot read the memory database {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
