//! Turn-taking: end-of-turn detection with Smart Turn v3.2 (`smart_turn`) and barge-in
//! (interruption) decisions, plus the Whisper log-mel features the model reads.

pub mod mel;
mod smart_turn;

pub use smart_turn::{SmartTurn, SmartTurnModel, SmartTurnSettings, TurnError, WINDOW_SAMPLES};
