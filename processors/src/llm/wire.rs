//! The OpenAI chat-completions wire format, as far as slowcat reads and writes it.
//!
//! Hand-written serde types rather than a full OpenAI client crate: slowcat sends one request
//! shape and reads three fields of the reply, and the full type crates pull in TLS stacks and
//! dozens of request types a local voice assistant never uses.

use serde::{Deserialize, Serialize};

use crate::frame::ChatMessage;
use crate::tools::ToolSpec;

/// The body of `POST {base_url}/chat/completions`; `M` is [`ChatMessage`] or, within a turn
/// that calls tools, [`Message`].
#[derive(Debug, Serialize)]
pub(crate) struct ChatRequest<'a, M: Serialize = ChatMessage> {
    /// Omitted when unknown: the server then answers with the model it has loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub messages: &'a [M],
    pub stream: bool,
    pub temperature: f32,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The tools offered, in OpenAI's function format; omitted when none are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDef<'a>>>,
}

/// One tool offered to the model: `{"type": "function", "function": {name, description, parameters}}`.
#[derive(Debug, Serialize)]
pub(crate) struct ToolDef<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDef<'a>,
}

#[derive(Debug, Serialize)]
struct FunctionDef<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a serde_json::Value,
}

impl<'a> ToolDef<'a> {
    pub(crate) fn new(spec: &'a ToolSpec) -> Self {
        Self {
            kind: "function",
            function: FunctionDef { name: &spec.name, description: &spec.description, parameters: &spec.parameters },
        }
    }
}

/// A message of a turn that calls tools: the chat as built for the turn, the assistant's calls,
/// and their results. These exist only within one turn: the next turn's request is built from
/// its own `LlmRequest` again, so it never carries a call of this one.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Message {
    /// A message of the request.
    Chat(ChatMessage),
    /// The assistant's reply that asked for tools.
    Calls { role: &'static str, content: String, tool_calls: Vec<CallOut> },
    /// One call's result.
    Result { role: &'static str, tool_call_id: String, content: String },
}

impl Message {
    /// The assistant's `calls`, after the text it said before them.
    pub(crate) fn calls(content: String, calls: &[ToolCall]) -> Self {
        let tool_calls = calls
            .iter()
            .map(|c| CallOut {
                id: c.id.clone(),
                kind: "function",
                function: CallFunction { name: c.name.clone(), arguments: c.arguments.clone() },
            })
            .collect();
        Message::Calls { role: "assistant", content, tool_calls }
    }

    /// The result of the call `id`.
    pub(crate) fn result(id: &str, content: String) -> Self {
        Message::Result { role: "tool", tool_call_id: id.to_string(), content }
    }
}

/// A call as the assistant message of the follow-up request carries it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CallOut {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallFunction,
}

#[derive(Debug, Clone, Serialize)]
struct CallFunction {
    name: String,
    /// The arguments as the model wrote them: a JSON text, as the OpenAI format has it.
    arguments: String,
}

/// A complete tool call the model made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text (empty when the model gave none).
    pub arguments: String,
}

/// A piece of a streamed tool call: the call at `index` gets these pieces appended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallDelta {
    /// Which call of the reply the pieces belong to.
    pub index: usize,
    /// The call's id, in its first piece.
    pub id: Option<String>,
    /// The function's name, in its first piece.
    pub name: Option<String>,
    /// A piece of the arguments' JSON text.
    pub arguments: Option<String>,
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
    /// A piece of a reply that calls tools (`delta.tool_calls`), with any text beside it.
    Calls {
        /// Text to add to the reply.
        content: String,
        /// Pieces of the calls.
        calls: Vec<CallDelta>,
        /// The server gave a finish reason: no more follows.
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
    #[serde(default)]
    tool_calls: Option<Vec<RawCallDelta>>,
}

#[derive(Deserialize)]
struct RawCallDelta {
    /// Some servers leave it out when there is one call; the position stands in.
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<RawFunction>,
}

#[derive(Deserialize)]
struct RawFunction {
    #[serde(default)]
    name: Option<String>,
    /// A JSON text by the format; a server that sends an object gets it read as its text.
    #[serde(default)]
    arguments: Option<serde_json::Value>,
}

impl RawCallDelta {
    fn into_delta(self, position: usize) -> CallDelta {
        let (name, arguments) = match self.function {
            Some(f) => (
                f.name,
                f.arguments.map(|a| match a {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                }),
            ),
            None => (None, None),
        };
        CallDelta { index: self.index.unwrap_or(position), id: self.id, name, arguments }
    }
}

fn call_deltas(raw: Option<Vec<RawCallDelta>>) -> Vec<CallDelta> {
    raw.unwrap_or_default().into_iter().enumerate().map(|(i, c)| c.into_delta(i)).collect()
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
    let finished = choice.finish_reason.is_some();
    let (content, calls) = match choice.delta {
        Some(d) => (d.content.unwrap_or_default(), call_deltas(d.tool_calls)),
        None => (String::new(), Vec::new()),
    };
    if calls.is_empty() {
        Ok(Chunk::Delta { content, finished })
    } else {
        Ok(Chunk::Calls { content, calls, finished })
    }
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
    #[serde(default)]
    tool_calls: Option<Vec<RawCallDelta>>,
}

/// The text of a non-streamed completion (a server that ignores `stream: true`).
#[cfg(test)]
pub(crate) fn parse_completion(body: &[u8]) -> Result<String, ChunkError> {
    parse_completion_message(body).map(|(text, _)| text)
}

/// The text and tool calls of a non-streamed completion (a server that ignores `stream: true`).
pub(crate) fn parse_completion_message(body: &[u8]) -> Result<(String, Vec<CallDelta>), ChunkError> {
    let completion: Completion = serde_json::from_slice(body).map_err(|e| ChunkError::Malformed {
        reason: e.to_string(),
        snippet: truncate(&String::from_utf8_lossy(body), 200),
    })?;
    Ok(match completion.choices.into_iter().next() {
        Some(c) => (c.message.content.unwrap_or_default(), call_deltas(c.message.tool_calls)),
        None => (String::new(), Vec::new()),
    })
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
    fn tool_call_deltas_are_read_with_their_index() {
        let first = r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"c1","type":"function","function":{"name":"get_time","arguments":""}}]},"finish_reason":null}]}"#;
        let Ok(Chunk::Calls { calls, finished: false, .. }) = parse_chunk(first) else { panic!("{first}") };
        assert_eq!(
            calls,
            [CallDelta {
                index: 1,
                id: Some("c1".into()),
                name: Some("get_time".into()),
                arguments: Some(String::new())
            }]
        );
        let piece = r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"zo"}}]}}]}"#;
        let Ok(Chunk::Calls { calls, .. }) = parse_chunk(piece) else { panic!("{piece}") };
        assert_eq!(calls, [CallDelta { index: 0, arguments: Some("{\"zo".into()), ..Default::default() }]);
    }

    #[test]
    fn tools_are_offered_in_the_openai_function_format() {
        let spec = ToolSpec {
            name: "get_time".into(),
            description: "The time.".into(),
            parameters: serde_json::json!({"type": "object"}),
            source: "builtin".into(),
        };
        let json = serde_json::to_value(ToolDef::new(&spec)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "function", "function": {"name": "get_time", "description": "The time.", "parameters": {"type": "object"}}})
        );
        let call = ToolCall { id: "c1".into(), name: "get_time".into(), arguments: "{}".into() };
        let json = serde_json::to_value([Message::calls(String::new(), &[call]), Message::result("c1", "noon".into())]);
        assert_eq!(
            json.unwrap(),
            serde_json::json!([
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "noon"},
            ])
        );
    }

    #[test]
    fn truncation_keeps_one_line_and_marks_the_cut() {
        assert_eq!(truncate("  short\nbody ", 50), "short body");
        assert_eq!(truncate("ééééé", 3), "ééé…");
    }
}
