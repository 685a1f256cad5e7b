//! The settings of `openai_llm`: what config.toml may say, its defaults, and the check that
//! runs before anything starts.

use serde::Deserialize;

use super::error::LlmError;
use super::http::{Endpoint, probe};
use super::openai_llm::OpenAiLlm;
use crate::processor::{BoxProcessor, BuildContext};
use crate::registry::{BuildError, Problem, Settings};
use crate::tools::ToolsSettings;

/// LM Studio's local server.
pub const DEFAULT_BASE_URL: &str = "http://localhost:1234/v1";

/// A turn that needs more tool rounds than this is a model going round in circles.
const MAX_TOOL_ROUNDS: u32 = 16;

/// Settings of `openai_llm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiLlmSettings {
    /// The server's OpenAI-compatible API root (LM Studio: `http://localhost:1234/v1`; the local
    /// test server of `scripts/llm-server.sh`: `http://127.0.0.1:8089/v1`). Plain http only.
    pub base_url: String,
    /// The model id to ask for. Empty: the first chat model the server lists at `/models`, or the
    /// server's own choice when it lists none. Set it when the server serves several models.
    pub model: String,
    /// Sampling temperature, 0 to 2.
    pub temperature: f32,
    /// The longest reply, in tokens.
    pub max_tokens: u32,
    /// Sampling seed, so the same conversation gets the same replies (benchmarks, bug reports):
    /// turn n's request carries seed + n. (One seed for every request would draw the same random
    /// numbers every turn, and a small model then says the same thing over and over.) None: the
    /// server's own choice (usually a new random one).
    pub seed: Option<u64>,
    /// Extra instructions put in front of the request's system message (or as the system message
    /// when the request has none). Usually empty: the system prompt belongs to `user_turn`; this
    /// is for instructions that go with one model, whatever built the request.
    pub system_prompt: String,
    /// How long connecting to the server may take.
    pub connect_timeout_ms: u64,
    /// How long the first piece of text may take to arrive once the request is sent. Retries
    /// (each with this bound) happen only before the first piece of text.
    pub first_token_timeout_ms: u64,
    /// How long a whole reply may take, retries included.
    pub total_timeout_ms: u64,
    /// The name of an environment variable holding an API key, sent as a bearer token. Empty: no
    /// key (LM Studio and llama.cpp need none). The key itself is never logged.
    pub api_key_env: String,
    /// How many times to retry a request that failed before any text arrived (connection
    /// refused or dropped, HTTP 429 or 5xx).
    pub retries: u32,
    /// The wait before the first retry; it doubles each retry, up to 2 s.
    pub retry_backoff_ms: u64,
    /// Send a one-token request at start so the server has the model loaded before the first
    /// turn. Failing is only a warning.
    pub warmup: bool,
    /// After each complete reply, send the chat as the next turn will begin it (this reply, then
    /// an empty user message) with a one-token budget, so that a server with a prompt cache
    /// (llama.cpp, LM Studio) has read it before the user speaks again: the next reply's first
    /// token comes a few prompt tokens sooner. Failing is only logged.
    pub prefill_next_turn: bool,
    /// When the user has stopped speaking and the end of the turn is still being decided
    /// ([`Frame::LlmReadAhead`], from the transcript so far), send the request the turn will
    /// make, in full: the server reads the question and starts the reply while the turn ends.
    /// When the turn's request is the same (the user said nothing more), that reply is the
    /// turn's, sooner by the head start; otherwise it is dropped (its connection closed, so the
    /// server stops) and the turn sends its own. Before the model is known (no warm-up yet), and
    /// for the read-ahead at start, the request goes out for one token, so the server reads it.
    pub read_ahead_turn: bool,
    /// The tools offered to the model (`[processors.<id>.tools]`): built-in ones and MCP servers.
    /// None by default: the model is offered no tools and replies stream as before.
    pub tools: ToolsSettings,
    /// How many times one turn may go to the tools and back. After that the model is asked once
    /// more without tools, so a model that keeps calling still ends its turn.
    pub max_tool_rounds: u32,
    /// How long one tool call may take; a call that takes longer gets an error as its result
    /// and the model answers with what it has.
    pub tool_timeout_ms: u64,
    /// When tools take longer than this, `tool_filler` is said once, so the user knows the
    /// assistant is still at it.
    pub tool_filler_after_ms: u64,
    /// What is said while tools take long (empty: nothing).
    pub tool_filler: String,
}

impl Default for OpenAiLlmSettings {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            model: String::new(),
            temperature: 0.7,
            max_tokens: 256,
            seed: None,
            system_prompt: String::new(),
            connect_timeout_ms: 2_000,
            first_token_timeout_ms: 15_000,
            total_timeout_ms: 60_000,
            api_key_env: String::new(),
            retries: 2,
            retry_backoff_ms: 250,
            warmup: true,
            prefill_next_turn: true,
            read_ahead_turn: true,
            tools: ToolsSettings::default(),
            max_tool_rounds: 4,
            tool_timeout_ms: 10_000,
            tool_filler_after_ms: 1_500,
            tool_filler: "One moment.".into(),
        }
    }
}

impl Settings for OpenAiLlmSettings {
    const TYPE: &'static str = "openai_llm";
    const ABOUT: &'static str =
        "streams replies from an OpenAI-compatible server (LM Studio, llama.cpp) as text chunks";

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(reason) = Endpoint::parse(&self.base_url) {
            problems.push(Problem::at("base_url", reason));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            problems.push(Problem::at("temperature", "`temperature` must be between 0 and 2"));
        }
        if self.max_tokens == 0 {
            problems.push(Problem::at("max_tokens", "`max_tokens` must be at least 1"));
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_token_timeout_ms", self.first_token_timeout_ms),
            ("total_timeout_ms", self.total_timeout_ms),
        ] {
            if value == 0 {
                problems.push(Problem::at(key, format!("`{key}` must be more than 0")));
            }
        }
        if self.first_token_timeout_ms > self.total_timeout_ms {
            problems.push(Problem::at(
                "first_token_timeout_ms",
                "`first_token_timeout_ms` must not exceed `total_timeout_ms`",
            ));
        }
        if self.retries > 10 {
            problems.push(Problem::at("retries", "`retries` must be at most 10"));
        }
        problems.extend(Problem::unset_api_key_env(&self.api_key_env));
        if self.max_tool_rounds > MAX_TOOL_ROUNDS {
            problems
                .push(Problem::at("max_tool_rounds", format!("`max_tool_rounds` must be at most {MAX_TOOL_ROUNDS}")));
        }
        if self.tool_timeout_ms == 0 {
            problems.push(Problem::at("tool_timeout_ms", "`tool_timeout_ms` must be more than 0"));
        }
        problems.extend(self.tools.check(ctx));
        problems
    }

    fn requires(&self) -> Vec<crate::registry::Requirement> {
        vec![crate::registry::Requirement {
            any_of: &[crate::llm::UserTurnSettings::TYPE],
            key: None,
            why: "it answers the LLM requests user_turn makes; put user_turn before it",
        }]
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let tools = self.tools.build(ctx)?;
        let llm = OpenAiLlm::new(self).map_err(|e| BuildError::Invalid(e.to_string()))?;
        Ok(Box::new(llm.with_tools(tools)))
    }
}

impl OpenAiLlmSettings {
    /// [`probe`] with these settings' URL and API key.
    pub async fn probe(&self) -> Result<Vec<String>, LlmError> {
        let key = crate::registry::api_key_from_env(&self.api_key_env);
        probe(&self.base_url, key.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_from_toml_with_defaults_and_reject_unknown_keys() {
        assert!(crate::registry::registry().find("openai_llm").is_some());
        let s: OpenAiLlmSettings = toml::from_str("max_tokens = 64").unwrap();
        assert_eq!(s.base_url, DEFAULT_BASE_URL);
        assert_eq!(s.max_tokens, 64);
        assert!(toml::from_str::<OpenAiLlmSettings>("max_token = 64").is_err());
    }

    #[test]
    fn check_names_each_bad_key() {
        let ctx = BuildContext::for_dir("/tmp");
        let s = OpenAiLlmSettings {
            base_url: "https://api.example.com/v1".into(),
            temperature: 3.0,
            max_tokens: 0,
            first_token_timeout_ms: 90_000,
            api_key_env: "SLOWCAT_TEST_SURELY_UNSET_KEY".into(),
            ..Default::default()
        };
        let keys: Vec<_> = s.check(&ctx).into_iter().filter_map(|p| p.key).collect();
        assert_eq!(keys, ["base_url", "temperature", "max_tokens", "first_token_timeout_ms", "api_key_env"]);
        assert!(OpenAiLlmSettings::default().check(&ctx).is_empty());
    }
}
