//! Tool calls read out of a streamed reply: the `tool_calls` deltas of the OpenAI format, put
//! together by index, and calls a small local model writes as JSON in its text
//! (`{"name": …, "arguments": {…}}`, bare, in a ```json fence or in `<tool_call>` tags), which
//! must be run and never spoken.

use super::wire::{CallDelta, ToolCall};
use crate::tools::ToolBox;

/// Held text longer than this is not a call (a call is a name and a few arguments): it is
/// spoken after all, so a reply that merely starts with `{` is never held back for long.
const MAX_HELD_BYTES: usize = 16 << 10;

/// Openers of a call written in the text, besides a bare `{`.
const OPENERS: [&str; 2] = ["<tool_call>", "```"];

/// The streamed `tool_calls` of one generation, put together by index: id, name and arguments
/// arrive in pieces, split anywhere.
#[derive(Debug, Default)]
pub(super) struct Assembler {
    calls: Vec<ToolCall>,
    indices: Vec<usize>,
}

impl Assembler {
    pub(super) fn add(&mut self, delta: CallDelta) {
        let at = match self.indices.iter().position(|&i| i == delta.index) {
            Some(at) => at,
            None => {
                self.indices.push(delta.index);
                self.calls.push(ToolCall { id: String::new(), name: String::new(), arguments: String::new() });
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[at];
        call.id.push_str(delta.id.as_deref().unwrap_or(""));
        call.name.push_str(delta.name.as_deref().unwrap_or(""));
        call.arguments.push_str(delta.arguments.as_deref().unwrap_or(""));
    }

    /// The calls in index order; a call the server gave no id gets one (the follow-up request
    /// pairs each result with its call by id).
    pub(super) fn finish(self, id_prefix: &str) -> Vec<ToolCall> {
        let mut calls: Vec<(usize, ToolCall)> = self.indices.into_iter().zip(self.calls).collect();
        calls.sort_by_key(|(i, _)| *i);
        calls
            .into_iter()
            .enumerate()
            .map(|(n, (_, mut call))| {
                if call.id.is_empty() {
                    call.id = format!("{id_prefix}{n}");
                }
                call
            })
            .collect()
    }
}

/// Decides whether the text of a reply is a call written as JSON, holding back only text that
/// may still be one: a reply that starts with `{`, "```" or `<tool_call>`. Text that cannot be
/// a call passes at once.
#[derive(Debug)]
pub(super) struct TextGate {
    state: Gate,
}

#[derive(Debug)]
enum Gate {
    /// Nothing decided yet; the text so far is held.
    Deciding(String),
    /// Not a call: text goes through.
    Passing,
    /// A call: the rest of the generation is held and never spoken.
    Call(String),
}

/// What the text so far is.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    MayBe,
    Not,
    Call,
}

impl TextGate {
    /// A gate that holds nothing back when there are no tools (a call cannot name one).
    pub(super) fn new(tools: &ToolBox) -> Self {
        Self { state: if tools.is_empty() { Gate::Passing } else { Gate::Deciding(String::new()) } }
    }

    /// Takes the next piece of text; returns what may be spoken now.
    pub(super) fn feed(&mut self, text: String, tools: &ToolBox) -> Option<String> {
        match &mut self.state {
            Gate::Passing => Some(text),
            Gate::Call(held) => {
                held.push_str(&text);
                None
            }
            Gate::Deciding(held) => {
                held.push_str(&text);
                match verdict(held, tools, false) {
                    Verdict::MayBe => None,
                    Verdict::Call => {
                        self.state = Gate::Call(std::mem::take(held));
                        None
                    }
                    Verdict::Not => {
                        let held = std::mem::take(held);
                        self.state = Gate::Passing;
                        Some(held)
                    }
                }
            }
        }
    }

    /// The generation finished: what is left to speak, and the calls written in the text.
    pub(super) fn finish(self, tools: &ToolBox, id_prefix: &str) -> (Option<String>, Vec<ToolCall>) {
        let held = match self.state {
            Gate::Passing => return (None, Vec::new()),
            Gate::Call(held) => held,
            Gate::Deciding(held) => {
                if verdict(&held, tools, true) != Verdict::Call {
                    return ((!held.is_empty()).then_some(held), Vec::new());
                }
                held
            }
        };
        let calls = text_calls(&held, tools)
            .into_iter()
            .enumerate()
            .map(|(n, (name, arguments))| ToolCall { id: format!("{id_prefix}{n}"), name, arguments })
            .collect();
        (None, calls)
    }

    /// Whether text is being held back now.
    pub(super) fn holding(&self) -> bool {
        matches!(&self.state, Gate::Deciding(held) if !held.is_empty()) || matches!(self.state, Gate::Call(_))
    }
}

/// Whether `text` (the start of a reply) is, may become, or cannot be a call of a tool in
/// `tools`. `ended`: no more text follows.
fn verdict(text: &str, tools: &ToolBox, ended: bool) -> Verdict {
    let t = text.trim_start();
    if t.is_empty() {
        return if ended { Verdict::Not } else { Verdict::MayBe };
    }
    let mut body = t;
    if !t.starts_with('{') {
        let Some(opener) = OPENERS.iter().find(|o| t.starts_with(**o) || o.starts_with(t)) else {
            return Verdict::Not;
        };
        if t.len() < opener.len() {
            return if ended { Verdict::Not } else { Verdict::MayBe };
        }
        body = &t[opener.len()..];
        if *opener == "```" {
            // The fence's language tag (`json`), if any.
            body = body.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
        }
        body = body.trim_start();
        if body.is_empty() {
            return if ended { Verdict::Not } else { Verdict::MayBe };
        }
        if !body.starts_with('{') {
            return Verdict::Not;
        }
    }
    // A call object begins with a key.
    let after = body[1..].trim_start();
    if after.is_empty() {
        return if ended { Verdict::Not } else { Verdict::MayBe };
    }
    if !after.starts_with('"') {
        return Verdict::Not;
    }
    match object_end(body) {
        Some(end) => match serde_json::from_str(&body[..end]).ok().and_then(|v| as_call(&v, tools)) {
            Some(_) => Verdict::Call,
            None => Verdict::Not,
        },
        None if ended || body.len() > MAX_HELD_BYTES => Verdict::Not,
        None => Verdict::MayBe,
    }
}

/// The byte length of the JSON object `s` begins with, once it is complete.
fn object_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// A call's name and arguments (JSON text) when `value` is `{"name": …, "arguments": …}` (or
/// `"parameters"`). The name need not be a tool in `tools`: an object with a call's keys and
/// nothing else is a call even of a tool that does not exist (Qwen2.5-Coder-0.5B answers "tell
/// me a joke" with `{"name": "joke", …}`); it is never said aloud, and running it tells the model
/// there is no such tool. Other JSON is text, unless it names a tool that exists.
fn as_call(value: &serde_json::Value, tools: &ToolBox) -> Option<(String, String)> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?;
    let call_keys_only = object.keys().all(|k| matches!(k.as_str(), "name" | "arguments" | "parameters"));
    if tools.get(name).is_none() && !call_keys_only {
        return None;
    }
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None | Some(serde_json::Value::Null) => "{}".to_string(),
        // Some models write the arguments as a JSON text, as the OpenAI format has them.
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some((name.to_string(), arguments))
}

/// Every call object in `text`, in order (several `<tool_call>` blocks, or objects one after
/// the other); what is not a call is skipped.
fn text_calls(text: &str, tools: &ToolBox) -> Vec<(String, String)> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let object = &rest[start..];
        let Some(end) = object_end(object) else { break };
        if let Some(call) = serde_json::from_str(&object[..end]).ok().and_then(|v| as_call(&v, tools)) {
            calls.push(call);
        }
        rest = &object[end..];
    }
    calls
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tools::{Tool, ToolError, ToolSpec};

    struct Named(&'static str);

    #[async_trait::async_trait]
    impl Tool for Named {
        fn spec(&self) -> ToolSpec {
            ToolSpec {
                name: self.0.into(),
                description: String::new(),
                parameters: serde_json::json!({"type": "object"}),
                source: "test".into(),
            }
        }
        async fn call(&self, _args: serde_json::Value) -> Result<String, ToolError> {
            Ok(String::new())
        }
    }

    fn tools() -> ToolBox {
        let mut tools = ToolBox::new();
        tools.add(Arc::new(Named("get_time"))).unwrap();
        tools
    }

    /// Feeds `text` one character at a time; returns what was let through and the calls.
    fn run(text: &str) -> (String, Vec<ToolCall>) {
        let tools = tools();
        let mut gate = TextGate::new(&tools);
        let mut spoken = String::new();
        for c in text.chars() {
            spoken.extend(gate.feed(c.to_string(), &tools));
        }
        let (rest, calls) = gate.finish(&tools, "call_");
        spoken.extend(rest);
        (spoken, calls)
    }

    #[test]
    fn calls_written_as_text_are_recognised_in_each_shape_and_never_let_through() {
        let expected = vec![ToolCall {
            id: "call_0".into(),
            name: "get_time".into(),
            arguments: r#"{"zone":"Asia/Tokyo"}"#.into(),
        }];
        for text in [
            r#"{"name": "get_time", "arguments": {"zone": "Asia/Tokyo"}}"#,
            "```json\n{\"name\": \"get_time\", \"parameters\": {\"zone\": \"Asia/Tokyo\"}}\n```",
            "<tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{\\\"zone\\\":\\\"Asia/Tokyo\\\"}\"}\n</tool_call>",
        ] {
            assert_eq!(run(text), (String::new(), expected.clone()), "{text}");
        }
    }

    #[test]
    fn a_call_of_a_tool_that_does_not_exist_is_a_call_and_never_said() {
        for text in [r#"{"name": "joke", "arguments": {}}"#, r#"<tool_call>{"name": "joke"}</tool_call>"#] {
            let (spoken, calls) = run(text);
            assert_eq!(spoken, "", "{text}");
            assert_eq!(calls.len(), 1, "{text}");
            assert_eq!(calls[0].name, "joke");
        }
    }

    #[test]
    fn text_that_cannot_be_a_call_passes_at_once() {
        let tools = tools();
        let mut gate = TextGate::new(&tools);
        assert_eq!(gate.feed("Paris".into(), &tools).as_deref(), Some("Paris"));
        let mut gate = TextGate::new(&tools);
        assert_eq!(gate.feed("{".into(), &tools), None);
        assert_eq!(gate.feed(" 1".into(), &tools).as_deref(), Some("{ 1"));
        // JSON that is not shaped as a call is said (a name among other keys, no name).
        let person = r#"{"name": "Ada", "born": 1815}"#;
        assert_eq!(run(person), (person.to_string(), Vec::new()));
        assert_eq!(run(r#"{"title": "x"}"#).0, r#"{"title": "x"}"#);
        assert_eq!(run("``` not json").0, "``` not json");
        // No tools: nothing is held.
        let mut gate = TextGate::new(&ToolBox::new());
        assert_eq!(gate.feed("{".into(), &ToolBox::new()).as_deref(), Some("{"));
    }

    #[test]
    fn streamed_calls_are_put_together_by_index() {
        let mut a = Assembler::default();
        let pieces = [
            (1, None, Some("get_"), None),
            (0, Some("x"), Some("get_time"), Some("{}")),
            (1, None, Some("time"), Some("{\"zo")),
            (1, None, None, Some("ne\":1}")),
        ];
        for (index, id, name, arguments) in pieces {
            a.add(CallDelta {
                index,
                id: id.map(Into::into),
                name: name.map(Into::into),
                arguments: arguments.map(Into::into),
            });
        }
        let calls = a.finish("c");
        assert_eq!(calls[0], ToolCall { id: "x".into(), name: "get_time".into(), arguments: "{}".into() });
        assert_eq!(calls[1], ToolCall { id: "c1".into(), name: "get_time".into(), arguments: "{\"zone\":1}".into() });
    }
}
