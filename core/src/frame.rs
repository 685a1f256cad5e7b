//! The one closed type that flows between processors.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which way a frame travels: downstream goes from the microphone towards the speaker,
/// upstream goes back (for example the speaker telling memory what it actually played).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Towards the end of the pipeline.
    Downstream,
    /// Towards the start of the pipeline.
    Upstream,
}

/// How the runtime treats a frame on its way between processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// Travels on the priority lane: overtakes queued data and is never dropped by an interruption.
    System,
    /// Ordered data, dropped from queues by an interruption.
    Data,
    /// Ordered data that survives an interruption (end of stream).
    Uninterruptible,
}

/// PCM audio: interleaved signed 16-bit samples, cheap to clone.
#[derive(Clone, PartialEq)]
pub struct AudioFrame {
    /// Interleaved samples.
    pub samples: Arc<[i16]>,
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Number of interleaved channels.
    pub channels: u16,
    /// Position of the first sample on the stream's timeline.
    pub pts: Duration,
}

impl AudioFrame {
    /// Builds a frame from samples.
    pub fn new(samples: impl Into<Arc<[i16]>>, sample_rate: u32, channels: u16, pts: Duration) -> Self {
        Self { samples: samples.into(), sample_rate, channels, pts }
    }

    /// Number of samples per channel.
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// How long the frame plays.
    pub fn duration(&self) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.frames() as f64 / f64::from(self.sample_rate))
    }
}

impl fmt::Debug for AudioFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AudioFrame")
            .field("samples", &self.samples.len())
            .field("sample_rate", &self.sample_rate)
            .field("channels", &self.channels)
            .field("pts", &self.pts)
            .finish()
    }
}

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person talking to the assistant.
    User,
    /// The assistant.
    Assistant,
}

/// One message of an OpenAI-style chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// The speaker id used when the pipeline does not know who is talking.
pub const DEFAULT_SPEAKER: &str = "default";

/// A request for the LLM. Processors on its way (memory) rewrite `messages` in place.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    /// The chat to send, system message first.
    pub messages: Vec<ChatMessage>,
    /// Who is talking; memory is kept per speaker.
    pub speaker: String,
    /// The conversation turn this request answers.
    pub turn: u64,
    /// Set by the memory processor once it has injected memory, so a frame passing twice
    /// never gets memory twice.
    pub memory_injected: bool,
}

impl LlmRequest {
    /// The text of the last user message, if any.
    pub fn last_user_message(&self) -> Option<&str> {
        self.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.as_str())
    }
}

/// A transcription of the user's speech.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcription {
    /// The recognised text.
    pub text: String,
    /// Who spoke.
    pub speaker: String,
    /// The conversation turn.
    pub turn: u64,
    /// Where the speech started on the input timeline.
    pub start: Duration,
    /// Where the speech ended on the input timeline.
    pub end: Duration,
    /// How long recognition took.
    pub processing: Duration,
}

/// What the assistant actually said aloud, reported upstream by the output device so memory
/// stores the reply as heard, not as generated.
#[derive(Debug, Clone, PartialEq)]
pub struct SpokenReply {
    /// The words that were played.
    pub text: String,
    /// True when an interruption cut the reply short.
    pub interrupted: bool,
    /// The conversation turn.
    pub turn: u64,
}

/// What the LLM did in a turn besides the reply it spoke, sent upstream for memory: the tools it
/// called, and what it said aside (a filler while tools ran), which is heard but is no part of
/// the reply. One frame per tool round or aside, pushed as it happens, so an interrupted reply
/// keeps what came before the interruption.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TurnNotes {
    /// The conversation turn.
    pub turn: u64,
    /// Tool calls that ran, with their results.
    pub tools: Vec<ToolNote>,
    /// Text spoken aside, exactly as sent to speech synthesis.
    pub aside: Vec<String>,
}

/// One tool call that ran in a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolNote {
    /// The tool's name.
    pub name: String,
    /// Its arguments, as the model sent them (JSON text).
    pub arguments: String,
    /// What it returned (an error's text when it failed).
    pub result: String,
}

/// Something went wrong in a processor; the pipeline keeps running.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorFrame {
    /// Id of the processor that failed.
    pub source: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// False when the pipeline cannot go on (it is then cancelled).
    pub recoverable: bool,
}

/// What a [`Metric`] measures. Durations: `stt_time`, `memory_time`, `llm_ttfb` (request to first
/// token), `tts_ttfb` (sentence complete to first audio), …. Instants on the pipeline timeline (time
/// since start): `user_speech_start_at`, `user_speech_end_at`, `user_turn_end_at`, `first_audio_at`
/// (first reply sample handed to the output device). [`MetricName::as_str`] is the name logs,
/// benchmarks and the per-turn JSON lines know it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricName {
    /// Where the user's speech began (the VAD, from the audio's timestamps).
    UserSpeechStartAt,
    /// Where the user's speech ended (the VAD; `smart_turn` when no VAD measured it).
    UserSpeechEndAt,
    /// When the turn ended (`UserTurnEnded` pushed); minus `user_speech_end_at` it is the time
    /// end-of-turn detection added.
    UserTurnEndAt,
    /// How long Smart Turn ran on the turn's audio.
    SmartTurnTime,
    /// From the stop reaching `smart_turn` to the model's verdict: the part of the inference the
    /// pause did not hide.
    SmartTurnWait,
    /// From the turn's end signal to its transcription being ready.
    SttTime,
    /// Memory injection time.
    MemoryTime,
    /// LLM request to first token.
    LlmTtfb,
    /// LLM request to its first complete sentence.
    LlmFirstSentence,
    /// Sentence complete to first synthesized audio.
    TtsTtfb,
    /// First reply sample handed to the output device.
    FirstAudioAt,
    /// From the request's arrival to the end of the first generation, the one that asked for
    /// tools (model lookup included): the LLM's first pass.
    LlmToolFirstPass,
    /// How long one round's tool calls took together (they run in parallel).
    LlmToolTime,
    /// From sending a follow-up request (with the tools' results) to its first text pushed: the
    /// LLM's second pass to its first token.
    LlmToolSecondPassTtft,
    /// The client's own time in one tool round trip, minus the tools' own time.
    LlmToolOverhead,
}

impl MetricName {
    /// Every metric, for tables and tests.
    pub const ALL: [MetricName; 15] = [
        MetricName::UserSpeechStartAt,
        MetricName::UserSpeechEndAt,
        MetricName::UserTurnEndAt,
        MetricName::SmartTurnTime,
        MetricName::SmartTurnWait,
        MetricName::SttTime,
        MetricName::MemoryTime,
        MetricName::LlmTtfb,
        MetricName::LlmFirstSentence,
        MetricName::TtsTtfb,
        MetricName::FirstAudioAt,
        MetricName::LlmToolFirstPass,
        MetricName::LlmToolTime,
        MetricName::LlmToolSecondPassTtft,
        MetricName::LlmToolOverhead,
    ];

    /// The name in logs, benchmark tables and JSON (unchanged from when names were strings).
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricName::UserSpeechStartAt => "user_speech_start_at",
            MetricName::UserSpeechEndAt => "user_speech_end_at",
            MetricName::UserTurnEndAt => "user_turn_end_at",
            MetricName::SmartTurnTime => "smart_turn_time",
            MetricName::SmartTurnWait => "smart_turn_wait",
            MetricName::SttTime => "stt_time",
            MetricName::MemoryTime => "memory_time",
            MetricName::LlmTtfb => "llm_ttfb",
            MetricName::LlmFirstSentence => "llm_first_sentence",
            MetricName::TtsTtfb => "tts_ttfb",
            MetricName::FirstAudioAt => "first_audio_at",
            MetricName::LlmToolFirstPass => "llm_tool_first_pass",
            MetricName::LlmToolTime => "llm_tool_time",
            MetricName::LlmToolSecondPassTtft => "llm_tool_second_pass_ttft",
            MetricName::LlmToolOverhead => "llm_tool_overhead",
        }
    }
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measurement, for logs and benchmarks.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Id of the processor that measured it.
    pub source: String,
    /// The conversation turn, when it belongs to one.
    pub turn: Option<u64>,
    /// What was measured.
    pub name: MetricName,
    /// The measured duration.
    pub value: Duration,
}

/// Everything that flows between processors.
///
/// # Turn numbers
/// Every frame of one user turn carries the same number, from 1: the speaking events, the
/// interim and final transcriptions, the `LlmRequest`, the reply's `LlmResponseStart`, `TtsStarted`
/// and `SpokenReply`, and the metrics that belong to the turn. The number is given where the speech
/// starts, before a word is transcribed:
/// - The VAD numbers each speech it hears (`UserStartedSpeaking`), and its pause and stop carry the
///   same number. Without an end-of-turn detector each speech is a turn, and this is its number.
/// - An end-of-turn detector (`smart_turn`) decides, when a speech starts, whether it opens a new
///   turn or goes on with the current one (the user paused within the turn, or resumed it before
///   its reply was heard: [`Frame::UserTurnResumed`]). It forwards the speaking events with the
///   turn's number: the earlier turn's for a speech that goes on with it, the next one after the
///   last turn for a new turn. The VAD cannot decide this itself (it is the detector's decision,
///   made as the speech starts), and an upstream notice would race the next speech; renumbering
///   where the decision is made keeps the numbers of a turn equal and consecutive.
/// - Speech-to-text and everything after it take the number from these events.
///
/// A turn in which no words are heard (a cough the VAD took for speech) spends its number: the next
/// turn's transcription is not numbered on from the last transcription, but from the last turn.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Frame {
    /// The pipeline is starting; reaches every processor before any data.
    Start,
    /// End of stream: processors finish their work in order and the pipeline stops.
    End,
    /// Stop now, dropping whatever is queued.
    Cancel,
    /// Audio from the microphone or an input file (16 kHz mono in the default pipeline).
    InputAudio(AudioFrame),
    /// Audio to play.
    OutputAudio(AudioFrame),
    /// Voice activity started: the user's speech began `at` (on the input timeline; the VAD
    /// reports it once the speech has lasted its `start_ms`). Opens turn `turn`, or continues it
    /// (see [`Frame`] on turn numbers).
    UserStartedSpeaking {
        /// The user turn this speech belongs to.
        turn: u64,
        /// Start of the first speech window.
        at: Duration,
    },
    /// The user fell silent: speech ended `at` (on the input timeline), and the VAD reports
    /// `UserStoppedSpeaking` once the silence lasts `stop_after`. Sent once the silence has lasted
    /// the VAD's `pause_ms` (by default at its first silent window), so end-of-turn work can start
    /// before the stop; it is not withdrawn when the user goes on.
    /// That work is still valid at the stop if the stop's `at` equals this `at` (see
    /// `slowcat_processors::turn::PauseWork`).
    UserSpeechPaused {
        /// The user turn the speech belongs to.
        turn: u64,
        /// End of the last speech window.
        at: Duration,
        /// Silence the VAD will have heard when it reports `UserStoppedSpeaking` (its `stop_ms`,
        /// rounded up to its detector's windows).
        stop_after: Duration,
    },
    /// Voice activity stopped: the speech ended `at` (on the input timeline; the VAD reports it
    /// once the silence has lasted its `stop_ms`).
    UserStoppedSpeaking {
        /// The user turn the speech belongs to.
        turn: u64,
        /// End of the last speech window.
        at: Duration,
    },
    /// The user's turn is over (after end-of-turn detection); speech-to-text transcribes now.
    UserTurnEnded,
    /// The turn that just ended goes on: the user spoke again before its reply was heard (a pause
    /// between words taken for the end of the turn). Sent by `smart_turn` right after
    /// `UserStartedSpeaking`, and followed by an `Interruption` that cancels the reply in
    /// progress: speech-to-text transcribes the two parts as one turn with the same number, and
    /// memory forgets the first part, so one reply answers the whole utterance.
    UserTurnResumed {
        /// The turn that goes on: the new speech keeps its number.
        turn: u64,
    },
    /// The assistant's audio started playing.
    BotStartedSpeaking,
    /// The assistant's audio stopped playing.
    BotStoppedSpeaking,
    /// Partial transcription while the user speaks: from `whisper_stt`, the turn as it stood at a
    /// pause (sent once transcribed, while the user pauses or speaks on) and when the user stopped
    /// speaking, before the end of the turn is decided.
    InterimTranscription(Box<Transcription>),
    /// Final transcription of a user turn.
    Transcription(Box<Transcription>),
    /// A chat request for the LLM.
    LlmRequest(Box<LlmRequest>),
    /// The request the turn will make if it ends with the words heard so far (made from an
    /// [`Frame::InterimTranscription`], while the user pauses and while the end of the turn is
    /// decided): the LLM sends it ahead, and answers the turn with that reply when the turn's
    /// [`Frame::LlmRequest`] is the same; nothing else answers it. Memory rewrites it as it would
    /// the request.
    LlmReadAhead(Box<LlmRequest>),
    /// The LLM started answering turn `turn`.
    LlmResponseStart {
        /// The conversation turn being answered.
        turn: u64,
    },
    /// A piece of the LLM's answer, as it streams.
    LlmText(String),
    /// The LLM finished answering.
    LlmResponseEnd,
    /// Text to speak directly, without the LLM (apologies, greetings).
    Speak(String),
    /// Speech synthesis of `text` is starting; its audio follows as `OutputAudio`.
    TtsStarted {
        /// The sentence being synthesized.
        text: String,
        /// The conversation turn it answers (0 when unknown, e.g. a greeting).
        turn: u64,
    },
    /// Speech synthesis of the current sentence finished.
    TtsStopped,
    /// What the assistant actually said (upstream, from the output device).
    SpokenReply(Box<SpokenReply>),
    /// What the LLM did in a turn besides speaking (upstream, from the LLM to memory).
    TurnNotes(Box<TurnNotes>),
    /// The user barged in: queued data is dropped and in-flight work cancelled.
    Interruption,
    /// A processor failed.
    Error(Box<ErrorFrame>),
    /// A measurement.
    Metrics(Box<Metric>),
}

impl Frame {
    /// How the runtime treats this frame.
    pub fn class(&self) -> FrameClass {
        match self {
            Frame::Start
            | Frame::Cancel
            | Frame::InputAudio(_)
            | Frame::UserStartedSpeaking { .. }
            | Frame::UserSpeechPaused { .. }
            | Frame::UserStoppedSpeaking { .. }
            | Frame::UserTurnResumed { .. }
            | Frame::BotStartedSpeaking
            | Frame::BotStoppedSpeaking
            | Frame::InterimTranscription(_)
            | Frame::LlmReadAhead(_)
            | Frame::Interruption
            | Frame::Error(_)
            | Frame::Metrics(_) => FrameClass::System,
            Frame::End | Frame::SpokenReply(_) | Frame::TurnNotes(_) => FrameClass::Uninterruptible,
            Frame::OutputAudio(_)
            | Frame::UserTurnEnded
            | Frame::Transcription(_)
            | Frame::LlmRequest(_)
            | Frame::LlmResponseStart { .. }
            | Frame::LlmText(_)
            | Frame::LlmResponseEnd
            | Frame::Speak(_)
            | Frame::TtsStarted { .. }
            | Frame::TtsStopped => FrameClass::Data,
        }
    }

    /// True for frames that travel on the priority lane.
    pub fn is_system(&self) -> bool {
        self.class() == FrameClass::System
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Start => "Start",
            Frame::End => "End",
            Frame::Cancel => "Cancel",
            Frame::InputAudio(_) => "InputAudio",
            Frame::OutputAudio(_) => "OutputAudio",
            Frame::UserStartedSpeaking { .. } => "UserStartedSpeaking",
            Frame::UserSpeechPaused { .. } => "UserSpeechPaused",
            Frame::UserStoppedSpeaking { .. } => "UserStoppedSpeaking",
            Frame::UserTurnEnded => "UserTurnEnded",
            Frame::UserTurnResumed { .. } => "UserTurnResumed",
            Frame::BotStartedSpeaking => "BotStartedSpeaking",
            Frame::BotStoppedSpeaking => "BotStoppedSpeaking",
            Frame::InterimTranscription(_) => "InterimTranscription",
            Frame::Transcription(_) => "Transcription",
            Frame::LlmRequest(_) => "LlmRequest",
            Frame::LlmReadAhead(_) => "LlmReadAhead",
            Frame::LlmResponseStart { .. } => "LlmResponseStart",
            Frame::LlmText(_) => "LlmText",
            Frame::LlmResponseEnd => "LlmResponseEnd",
            Frame::Speak(_) => "Speak",
            Frame::TtsStarted { .. } => "TtsStarted",
            Frame::TtsStopped => "TtsStopped",
            Frame::SpokenReply(_) => "SpokenReply",
            Frame::TurnNotes(_) => "TurnNotes",
            Frame::Interruption => "Interruption",
            Frame::Error(_) => "Error",
            Frame::Metrics(_) => "Metrics",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_take_the_priority_lane_and_end_survives_interruption() {
        assert!(Frame::Interruption.is_system());
        assert!(Frame::Cancel.is_system());
        assert!(Frame::UserStartedSpeaking { turn: 1, at: Duration::ZERO }.is_system());
        assert_eq!(Frame::End.class(), FrameClass::Uninterruptible);
        assert_eq!(Frame::LlmText("hi".into()).class(), FrameClass::Data);
    }

    #[test]
    fn frames_stay_small_so_a_hop_moves_few_bytes() {
        // Every hop moves the frame several times (into the lane, out of it, into the processor's
        // boxed future): large payloads live behind a Box. 112 bytes before they did cost a
        // quarter of the pipeline's throughput (`slowcat bench pipeline`).
        assert!(std::mem::size_of::<Frame>() <= 48, "Frame is {} bytes", std::mem::size_of::<Frame>());
    }

    #[test]
    fn metric_names_keep_the_strings_logs_and_benchmarks_know() {
        let names: Vec<&str> = MetricName::ALL.iter().map(|m| m.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "two metrics share a name: {names:?}");
        assert_eq!(MetricName::UserSpeechEndAt.to_string(), "user_speech_end_at");
    }

    #[test]
    fn audio_duration_counts_frames_not_samples() {
        let a = AudioFrame::new(vec![0i16; 640], 16_000, 2, Duration::ZERO);
        assert_eq!(a.frames(), 320);
        assert_eq!(a.duration(), Duration::from_millis(20));
    }
}
