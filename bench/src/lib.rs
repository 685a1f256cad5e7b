//! slowcat's benchmarks, run by `slowcat bench …`: figures, not tests (run them on an idle
//! machine).
//!
//! Each module is one benchmark; [`stats`] holds the statistics they all print, [`score`] the
//! counting of words heard right (shared with the speech tests), and [`host`] the machine's state
//! printed beside them. Dependencies point one way: this crate uses
//! slowcat-processors and slowcat-core, and the binary calls into it. Loading config.toml is the
//! runtime's work, so the whole-assistant benchmarks ([`conversation`]) get the assistant's
//! pipeline from the binary through [`conversation::Assistant`].

pub mod conversation;
pub mod host;
pub mod llm;
pub mod memory;
pub mod pipeline;
pub mod score;
pub mod stats;
pub mod stt;
pub mod tts;
pub mod turn;
