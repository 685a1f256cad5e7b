//! What can go wrong talking to the LLM server, typed so that each fault keeps its kind up to
//! where it is reported: the retry decision and the spoken apology both read the kind, never a
//! string.

use eventsource_stream::EventStreamError;

use super::sse::BodyError;
use super::wire::ChunkError;

/// Why talking to the LLM server failed. Each names the server's URL; none contains the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// `base_url` is not a usable URL.
    #[error("base_url {url:?} is not usable: {reason}")]
    InvalidUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting failed: nothing listens there, or it is too slow to accept.
    #[error(
        "cannot reach the LLM server at {url} ({reason}). Start LM Studio's local server (Developer tab, \
         or `lms server start`), or run `scripts/llm-server.sh start`, which serves http://127.0.0.1:8089/v1 (set base_url to it)"
    )]
    Unreachable {
        /// The configured base URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("the LLM server at {url} answered HTTP {status}: {body}")]
    Http {
        /// The configured base URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the reply's body.
        body: String,
    },
    /// Nothing arrived within a time bound.
    #[error("no answer from the LLM server at {url} within {ms} ms ({setting})")]
    Timeout {
        /// The configured base URL.
        url: String,
        /// The bound.
        ms: u64,
        /// Where the bound comes from (the setting that holds it).
        setting: &'static str,
    },
    /// The reply did not finish within `total_timeout_ms`.
    #[error("the reply from the LLM server at {url} did not finish within {ms} ms (`total_timeout_ms`)")]
    TooSlow {
        /// The configured base URL.
        url: String,
        /// The bound.
        ms: u64,
    },
    /// The reply is not an OpenAI chat-completion stream.
    #[error("malformed reply from the LLM server at {url}: {detail}")]
    Malformed {
        /// The configured base URL.
        url: String,
        /// What could not be understood.
        detail: String,
    },
    /// The server reported an error in a successful reply.
    #[error("the LLM server at {url} reported an error: {message}")]
    Server {
        /// The configured base URL.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The connection broke before the reply was complete.
    #[error("the LLM server at {url} closed the connection before the reply was complete ({reason})")]
    Disconnected {
        /// The configured base URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
}

impl LlmError {
    /// A short sentence the assistant can say instead of the reply.
    pub fn apology(&self) -> &'static str {
        match self {
            LlmError::InvalidUrl { .. } | LlmError::Unreachable { .. } => {
                "Sorry, I can't reach my language model right now."
            }
            LlmError::Http { .. } | LlmError::Server { .. } => "Sorry, my language model ran into an error.",
            LlmError::Timeout { .. } | LlmError::TooSlow { .. } => {
                "Sorry, my language model is taking too long to answer."
            }
            LlmError::Malformed { .. } => "Sorry, I got a garbled answer from my language model.",
            LlmError::Disconnected { .. } => "Sorry, I lost the connection to my language model.",
        }
    }

    /// Whether sending the same request again may work (only ever done before the first token).
    pub(super) fn retryable(&self) -> bool {
        match self {
            LlmError::Unreachable { .. } | LlmError::Disconnected { .. } => true,
            LlmError::Http { status, .. } => *status == 429 || *status >= 500,
            // A slow server gets slower with more requests; the other faults repeat themselves.
            _ => false,
        }
    }
}

/// Why the processor could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `base_url` is not a usable URL.
    #[error("base_url {url:?}: {reason}")]
    InvalidUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be created (no usable TLS or resolver configuration).
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(String),
    /// The environment variable named by `api_key_env` is not set.
    #[error("environment variable {0} (api_key_env) is not set")]
    MissingApiKey(String),
}

/// How a bounded wait on the server ended when it did not succeed: out of time (the caller
/// knows which bound, so it names the setting), or with an error.
#[derive(Debug)]
pub(super) enum Fault {
    /// The deadline passed first.
    Timeout,
    /// The request or the read failed.
    Failed(LlmError),
}

impl Fault {
    /// The error, naming the caller's bound when the deadline passed.
    pub(super) fn or_timeout(self, timeout: impl FnOnce() -> LlmError) -> LlmError {
        match self {
            Fault::Timeout => timeout(),
            Fault::Failed(e) => e,
        }
    }
}

/// A failure before any response arrived.
pub(super) fn request_error(url: &str, e: &reqwest::Error) -> LlmError {
    let reason = root_cause(e);
    if e.is_connect() {
        LlmError::Unreachable { url: url.into(), reason }
    } else {
        // Connected, then the connection broke before a response (server crashed or restarted).
        LlmError::Disconnected { url: url.into(), reason }
    }
}

/// The innermost cause of an error: reqwest's own message only repeats the URL.
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

pub(super) fn stream_error(url: &str, e: EventStreamError<BodyError>) -> LlmError {
    let url = url.to_string();
    match e {
        EventStreamError::Transport(BodyError::Transport(e)) => LlmError::Disconnected { url, reason: root_cause(&e) },
        EventStreamError::Transport(e @ (BodyError::TooLarge(_) | BodyError::LineTooLong(_))) => {
            LlmError::Malformed { url, detail: e.to_string() }
        }
        EventStreamError::Utf8(e) => LlmError::Malformed { url, detail: format!("the stream is not UTF-8 ({e})") },
        EventStreamError::Parser(e) => {
            LlmError::Malformed { url, detail: format!("the stream is not server-sent events ({e:?})") }
        }
    }
}

pub(super) fn chunk_error(url: &str, e: ChunkError) -> LlmError {
    match e {
        ChunkError::Server(message) => LlmError::Server { url: url.into(), message },
        e @ ChunkError::Malformed { .. } => LlmError::Malformed { url: url.into(), detail: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_faults_are_retried() {
        let url = String::new();
        assert!(LlmError::Http { url: url.clone(), status: 503, body: String::new() }.retryable());
        assert!(!LlmError::Http { url: url.clone(), status: 400, body: String::new() }.retryable());
        assert!(!LlmError::Malformed { url, detail: String::new() }.retryable());
    }
}
