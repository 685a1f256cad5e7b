//! The LLM side of the pipeline.
//!
//! - `user_turn` ([`UserTurn`]) turns the final transcription of a user turn into an
//!   [`LlmRequest`](crate::LlmRequest): system prompt plus the user's words, no history.
//! - `openai_llm` ([`OpenAiLlm`]) streams the reply from an OpenAI-compatible server (LM Studio
//!   by default, or `scripts/llm-server.sh`): `LlmResponseStart { turn }`, one `LlmText` per
//!   streamed piece, `LlmResponseEnd`. On a fault: `Error`, `LlmResponseEnd`, then `Speak` with a
//!   short apology, and the next turn is served as usual.
//! - [`probe`] lists the models a server serves, for `slowcat check` (the benchmarks in
//!   slowcat-bench measure the client's own share of the time to first token).

//!
//! The client is split by concern: [`settings`](OpenAiLlmSettings), `error` ([`LlmError`]),
//! `http` (the one path every request takes to the server), `sse` (a streamed reply read as
//! chunks), `priming` (warm-up and read-ahead requests) and `openai_llm` (the processor).

mod aggregator;
mod calls;
mod error;
mod http;
mod openai_llm;
mod priming;
mod settings;
mod sse;
mod wire;

pub use aggregator::{DEFAULT_SYSTEM_PROMPT, UserTurn, UserTurnSettings};
pub use error::{LlmError, SetupError};
pub use http::probe;
pub use openai_llm::{OpenAiLlm, metrics};
pub use settings::{DEFAULT_BASE_URL, OpenAiLlmSettings};
/// The streamed reply's events as the client reads them (public for the time-to-first-token benchmark).
pub use wire::{CallDelta, Chunk, ChunkError, parse_chunk};
