//! Turn-taking: end-of-turn detection with Smart Turn v3.2 (`smart_turn`) and barge-in
//! (interruption) decisions, plus the Whisper log-mel features the model reads, and the
//! start-on-the-pause, confirm-on-the-stop bookkeeping end-of-turn work shares ([`PauseWork`]).

pub mod mel;
mod pause;
mod smart_turn;

pub use pause::{Abandon, PauseWork};
pub use smart_turn::{SmartTurn, SmartTurnModel, SmartTurnSettings, TurnError, WINDOW_SAMPLES};
