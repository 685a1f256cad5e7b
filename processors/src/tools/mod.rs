//! Tools the LLM can call: built-in ones (time, calculator, reminders, memory, web pages, web
//! search) and those of MCP servers, gathered in one [`ToolBox`] that `openai_llm` offers to the
//! model and runs calls through.
//!
//! The contract between the two sides:
//! - `openai_llm` puts [`ToolBox::specs`] in the request's `tools`, assembles the calls the model
//!   makes (streamed `tool_calls`, or JSON written in the text) and runs each with
//!   [`ToolBox::call`] under its own timeout; dropping that future cancels the call (barge-in).
//! - A tool never blocks the async threads: blocking work goes on `spawn_blocking`.

use std::sync::Arc;

use async_trait::async_trait;

/// What the model is told about one tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The function name the model calls (`[A-Za-z0-9_-]`, at most 64 characters).
    pub name: String,
    /// One or two sentences: when to use it.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
    /// Where it comes from, for `slowcat tools list` and clash reports: `builtin` or `mcp:<server>`.
    pub source: String,
}

/// Why a tool call failed. The text goes back to the model as the call's result, so it says what
/// was wrong in words the model can act on.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// No tool of that name.
    #[error("there is no tool named `{0}`")]
    Unknown(String),
    /// The arguments do not fit the tool's schema.
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
    /// The tool's server is gone (an MCP server that died).
    #[error("tool unavailable: {0}")]
    Unavailable(String),
}

/// One callable tool.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Its name, description and argument schema.
    fn spec(&self) -> ToolSpec;
    /// Runs it with the model's arguments (a JSON object); the result is text for the model.
    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError>;
}

/// Which tools the assistant offers: the `tools` table of `openai_llm` in config.toml.
/// (Skeleton of the contract: the tools work fills in the fields.)
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsSettings {}

impl ToolsSettings {
    /// Problems visible before anything starts (an `mcp.json` that does not parse).
    pub fn check(&self, _ctx: &crate::processor::BuildContext) -> Vec<crate::registry::Problem> {
        Vec::new()
    }

    /// The built-in tools the settings switch on; MCP servers join in [`ToolBox::start`].
    pub fn build(&self, _ctx: &crate::processor::BuildContext) -> Result<ToolBox, crate::registry::BuildError> {
        Ok(ToolBox::new())
    }
}

/// The tools one assistant offers, by name.
#[derive(Default)]
pub struct ToolBox {
    tools: Vec<Arc<dyn Tool>>,
    announcements: Option<tokio::sync::mpsc::Receiver<String>>,
}

impl std::fmt::Debug for ToolBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.iter().map(|t| t.spec().name)).finish()
    }
}

impl ToolBox {
    /// An empty tool box: the model is offered no tools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts what runs beside the tools (MCP server sessions, the reminder clock), called from
    /// the LLM processor's `start`. Returns warnings to log: a server that failed to start leaves
    /// the assistant working without its tools.
    pub async fn start(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// Stops what [`ToolBox::start`] started (MCP server processes), called from `stop`.
    pub async fn stop(&mut self) {}

    /// Text the assistant must say on its own, between turns (a reminder that is due). The LLM
    /// processor takes the receiver once, at start, and speaks what arrives.
    pub fn take_announcements(&mut self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        self.announcements.take()
    }

    /// Adds a tool. A name already taken is refused and the clash returned, so the caller can
    /// report it (the first one registered stays).
    pub fn add(&mut self, tool: Arc<dyn Tool>) -> Result<(), ToolSpec> {
        let spec = tool.spec();
        if self.tools.iter().any(|t| t.spec().name == spec.name) {
            return Err(spec);
        }
        self.tools.push(tool);
        Ok(())
    }

    /// True when there is no tool.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Every tool's spec, in the order they were added.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| t.spec()).collect()
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.iter().find(|t| t.spec().name == name).cloned()
    }

    /// Runs the tool named `name`.
    pub async fn call(&self, name: &str, args: serde_json::Value) -> Result<String, ToolError> {
        match self.get(name) {
            Some(tool) => tool.call(args).await,
            None => Err(ToolError::Unknown(name.to_string())),
        }
    }
}
