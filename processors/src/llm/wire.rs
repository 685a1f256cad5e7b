//! The OpenAI chat-completions wire format, as far as slowcat reads and writes it.
//!
//! Hand-written serde types rather than a full OpenAI client crate: slowcat sends one request
//! shape and reads three fields of the reply, and the full type crates pull in TLS stacks and
//! dozens of request types a local voice assistant never uses.

use serde::{Deserialize, Serialize};

use crate::frame::ChatMessage;

/// The body of `POST {base_url}/chat/completions`.
#[derive(Debug, Serialize)]
pub(crate) struct ChatRequest<'a> {
    /// Omitted when unknown: the server then answers with the model it has loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub messages: &'a [ChatMessage],
    pub stream: bool,
    pub temperature: f32,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// What one server-sent event of a streamed reply means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// `data: [DONE]`: the reply is complete.
    Done,
    /// A piece of the reply; `content` is empty for role-only and bookkeeping chunks.
    Delta {
        /// Text to add to the reply.
        content: String,
        /// The server gave a finish reason: no more text follows.
        finished: bool,
    },
}

/// Why an event could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The data is not the JSON of a completion chunk.
    #[error("event data is not a chat completion chunk ({reason}): {snippet}")]
    Malformed { reason: String, snippet: String },
    /// The server reported an error inside the stream.
    #[error("{0}")]
    Server(String),
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    // Reasoning models also stream `reasoning_content`; it is deliberately not read, since
    // thinking out loud is not something to speak.
    #[serde(default)]
    content: Option<String>,
}

/// Interprets the data of one event of a streamed reply.
pub fn parse_chunk(data: &str) -> Result<Chunk, ChunkError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let chunk: StreamChunk = serde_json::from_str(data)
        .map_err(|e| ChunkError::Malformed { reason: e.to_string(), snippet: truncate(data, 200) })?;
    if let Some(error) = chunk.error {
        return Err(ChunkError::Server(error_text(&error)));
    }
    // slowcat asks for one choice; any others are ignored.
    let Some(choice) = chunk.choices.into_iter().next() else {
        return Ok(Chunk::Delta { content: String::new(), finished: false });
    };
    let content = choice.delta.and_then(|d| d.content).unwrap_or_default();
    Ok(Chunk::Delta { content, finished: choice.finish_reason.is_some() })
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<CompletionChoice>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    message: CompletionMessage,
}

#[derive(Deserialize)]
struct CompletionMessage {
    #[serde(default)]
    content: Option<String>,
}

/// The text of a non-streamed completion (a server that ignores `stream: true`).
pub(crate) fn parse_completion(body: &[u8]) -> Result<String, ChunkError> {
    let completion: Completion = serde_json::from_slice(body).map_err(|e| ChunkError::Malformed {
        reason: e.to_string(),
        snippet: truncate(&String::from_utf8_lossy(body), 200),
    })?;
    Ok(completion.choices.into_iter().next().and_then(|c| c.message.content).unwrap_or_default())
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

/// The model ids of a `GET /models` reply, in the server's order.
pub(crate) fn parse_models(body: &[u8]) -> Result<Vec<String>, ChunkError> {
    let list: ModelList = serde_json::from_slice(body).map_err(|e| ChunkError::Malformed {
        reason: e.to_string(),
        snippet: truncate(&String::from_utf8_lossy(body), 200),
    })?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}

/// The readable part of an OpenAI-style error object (`{"message": ...}`, or a bare string).
fn error_text(error: &serde_json::Value) -> String {
    match error {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => match o.get("message") {
            Some(serde_json::Value::String(m)) => m.clone(),
            _ => truncate(&error.to_string(), 300),
        },
        other => truncate(&other.to_string(), 300),
    }
}

/// At most `max` characters of `s` on one line, with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let one_line: String = s.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_deltas_role_chunks_and_done_are_told_apart() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#;
        assert_eq!(parse_chunk(role), Ok(Chunk::Delta { content: String::new(), finished: false }));
        let text = r#"{"choices": [{"delta": {"content": " there"}, "finish_reason": null}]}"#;
        assert_eq!(parse_chunk(text), Ok(Chunk::Delta { content: " there".into(), finished: false }));
        let last = r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(parse_chunk(last), Ok(Chunk::Delta { content: String::new(), finished: true }));
        assert_eq!(parse_chunk(" [DONE] "), Ok(Chunk::Done));
        // A usage-only chunk has no choices.
        assert_eq!(
            parse_chunk(r#"{"choices":[],"usage":{"total_tokens":3}}"#),
            Ok(Chunk::Delta { content: String::new(), finished: false })
        );
    }

    #[test]
    fn bad_json_and_in_stream_errors_are_errors() {
        assert!(matches!(parse_chunk("{not json"), Err(ChunkError::Malformed { .. })));
        assert!(matches!(parse_chunk("[1,2]"), Err(ChunkError::Malformed { .. })));
        assert_eq!(
            parse_chunk(r#"{"error":{"message":"context length exceeded","code":400}}"#),
            Err(ChunkError::Server("context length exceeded".into()))
        );
    }

    #[test]
    fn models_and_plain_completions_are_read() {
        let models = br#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"}]}"#;
        assert_eq!(parse_models(models).unwrap(), vec!["a".to_string(), "b".to_string()]);
        let done = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi."}}]}"#;
        assert_eq!(parse_completion(done).unwrap(), "Hi.");
    }

    #[test]
    fn truncation_keeps_one_line_and_marks_the_cut() {
        assert_eq!(truncate("  short\nbody ", 50), "short body");
        assert_eq!(truncate("ééééé", 3), "ééé…");
    }
}
