//! Tools the LLM can call: built-in ones (time, calculator, reminders, memory, web pages, web
//! search) and those of MCP servers, gathered in one [`ToolBox`] that `openai_llm` offers to the
//! model and runs calls through.
//!
//! The contract between the two sides:
//! - `openai_llm` puts [`ToolBox::specs`] in the request's `tools`, assembles the calls the model
//!   makes (streamed `tool_calls`, or JSON written in the text) and runs each with
//!   [`ToolBox::call`] under its own timeout; dropping that future cancels the call (barge-in).
//! - A tool never blocks the async threads: blocking work goes on `spawn_blocking`.
//! - [`ToolBox::specs`] keeps one order (built-ins, then each MCP server's tools), so the tools
//!   part of the prompt stays the same from turn to turn and the server's prompt cache holds it.
//! - Due reminders arrive on [`ToolBox::take_announcements`] as `Reminder: <text>`, at their time
//!   whether a turn runs or not, once [`ToolBox::start`] has run (overdue ones right then).

pub mod calc;
pub mod facts;
pub mod mcp;
pub mod reminders;
pub mod time;
pub mod web;

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

    /// Runs it for `speaker` (the one talking in the turn): tools that keep something per person
    /// (remembered facts) override this; the others ignore who asks.
    async fn call_for(&self, speaker: &str, args: serde_json::Value) -> Result<String, ToolError> {
        let _ = speaker;
        self.call(args).await
    }
}

/// Which tools the assistant offers: the `tools` table of `openai_llm` in config.toml.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsSettings {
    /// `current_time`: the date and time now, in any IANA time zone or a city's.
    pub time: bool,
    /// The zone `current_time` answers in when the model names none: an IANA name such as
    /// `Europe/Paris`; empty means the system's own zone.
    pub time_zone: String,
    /// `calculate`: arithmetic with a safe expression evaluator (numbers, operators, math functions).
    pub calculator: bool,
    /// `set_reminder`, `list_reminders`, `cancel_reminder`: the assistant speaks up when one is due.
    pub reminders: bool,
    /// Where reminders are kept so they survive a restart (relative paths are under the data dir).
    pub reminders_file: String,
    /// `remember`, `recall`, `forget`: facts the user asks the assistant to keep, per speaker.
    pub memory: bool,
    /// The memory database they are kept in: the `path` of the `stateless_memory` processor, which
    /// injects them into every request (relative paths are under the data dir).
    pub memory_path: String,
    /// `fetch_web_page`: the readable text of an http(s) page.
    pub web_fetch: bool,
    /// Lets `fetch_web_page` reach loopback, private and link-local addresses (off: a page the
    /// model picks never reaches the machine itself or the local network).
    pub allow_private_addresses: bool,
    /// `web_search`: the search endpoint, with `{query}` where the URL-encoded query goes (e.g. a
    /// SearXNG `https://searx.example/search?q={query}&format=json`); empty: no search tool, and
    /// nothing is sent anywhere.
    pub search_url: String,
    /// Seconds a page fetch or a search may take, all of it.
    pub fetch_timeout_secs: f64,
    /// Bytes of a page or search reply read at most; the rest is not downloaded.
    pub fetch_max_bytes: u64,
    /// Characters of page or search text given to the model at most (a small model's context is short).
    pub max_text_chars: usize,
    /// An `mcp.json` (`{"mcpServers": {name: {command, args, env} or {url}}}`) whose servers' tools
    /// join the built-in ones; relative to config.toml's directory; empty: no MCP servers.
    pub mcp_config: String,
    /// Seconds an MCP server may take to start and list its tools (`npx -y` may download it first).
    pub mcp_start_timeout_secs: f64,
}

impl Default for ToolsSettings {
    fn default() -> Self {
        Self {
            time: true,
            time_zone: String::new(),
            calculator: true,
            reminders: true,
            reminders_file: "tools/reminders.json".into(),
            memory: true,
            memory_path: "memory".into(),
            web_fetch: true,
            allow_private_addresses: false,
            search_url: String::new(),
            fetch_timeout_secs: 10.0,
            fetch_max_bytes: 2_000_000,
            max_text_chars: 4000,
            mcp_config: String::new(),
            mcp_start_timeout_secs: 60.0,
        }
    }
}

/// The key every problem points at: the tools table of the LLM processor.
const KEY: &str = "tools";

impl ToolsSettings {
    /// Problems visible before anything starts (an `mcp.json` that does not parse).
    pub fn check(&self, ctx: &crate::processor::BuildContext) -> Vec<crate::registry::Problem> {
        use crate::registry::Problem;
        let mut problems = Vec::new();
        if !self.time_zone.is_empty() && self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            problems.push(Problem::at(
                KEY,
                format!("tools.time_zone `{}` is not an IANA time zone (like `Europe/Paris`); leave it empty for the system's zone", self.time_zone),
            ));
        }
        if !self.search_url.is_empty()
            && let Err(why) = web::check_search_url(&self.search_url)
        {
            problems.push(Problem::at(KEY, format!("tools.search_url: {why}")));
        }
        if !(self.fetch_timeout_secs > 0.0 && self.fetch_timeout_secs <= 600.0) {
            problems.push(Problem::at(KEY, "tools.fetch_timeout_secs must be more than 0 and at most 600"));
        }
        if self.fetch_max_bytes == 0 || self.max_text_chars == 0 {
            problems.push(Problem::at(KEY, "tools.fetch_max_bytes and tools.max_text_chars must be more than 0"));
        }
        if self.memory
            && let Some(why) = crate::memory::path_problem(&ctx.data_path(&self.memory_path))
        {
            problems.push(Problem::at(KEY, format!("tools.memory_path: {why}")));
        }
        if !(self.mcp_start_timeout_secs > 0.0 && self.mcp_start_timeout_secs <= 3600.0) {
            problems.push(Problem::at(KEY, "tools.mcp_start_timeout_secs must be more than 0 and at most 3600"));
        }
        if !self.mcp_config.is_empty() {
            let path = ctx.config_path(&self.mcp_config);
            if let Err(e) = mcp::McpConfig::load(&path) {
                problems.push(Problem::at(KEY, format!("tools.mcp_config: {e}")));
            }
        }
        problems
    }

    /// The built-in tools the settings switch on; MCP servers join in [`ToolBox::start`].
    pub fn build(&self, ctx: &crate::processor::BuildContext) -> Result<ToolBox, crate::registry::BuildError> {
        use crate::registry::BuildError;
        let invalid = |problems: Vec<crate::registry::Problem>| {
            BuildError::Invalid(problems.into_iter().map(|p| p.message).collect::<Vec<_>>().join("; "))
        };
        let problems = self.check(ctx);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let mut tools = ToolBox::new();
        let mut builtin: Vec<Arc<dyn Tool>> = Vec::new();
        let mut add = |tool: Arc<dyn Tool>| builtin.push(tool);
        if self.time {
            add(Arc::new(time::CurrentTime::new(&self.time_zone)));
        }
        if self.calculator {
            add(Arc::new(calc::Calculator));
        }
        if self.reminders {
            let path = ctx.data_path(&self.reminders_file);
            let (reminders, rx) = reminders::Reminders::open(&path).map_err(|e| BuildError::Invalid(e.to_string()))?;
            reminders::tools(&reminders).into_iter().for_each(&mut add);
            tools.reminders = Some(reminders);
            tools.announcements = Some(rx);
        }
        if self.memory {
            let facts = facts::Facts::new(ctx.data_path(&self.memory_path));
            facts::tools(&facts).into_iter().for_each(&mut add);
        }
        let limits = web::Limits {
            timeout: std::time::Duration::from_secs_f64(self.fetch_timeout_secs),
            max_bytes: self.fetch_max_bytes,
            max_chars: self.max_text_chars,
            allow_private: self.allow_private_addresses,
        };
        if self.web_fetch {
            add(Arc::new(web::FetchPage::new(limits.clone())));
        }
        if !self.search_url.is_empty() {
            add(Arc::new(web::Search::new(&self.search_url, limits)));
        }
        for tool in builtin {
            // Built-in names are distinct by construction.
            let _ = tools.add(tool);
        }
        if !self.mcp_config.is_empty() {
            let path = ctx.config_path(&self.mcp_config);
            let config = mcp::McpConfig::load(&path).map_err(|e| BuildError::Invalid(e.to_string()))?;
            tools.mcp_pending = Some(mcp::Pending {
                config,
                start_timeout: std::time::Duration::from_secs_f64(self.mcp_start_timeout_secs),
            });
        }
        Ok(tools)
    }
}

/// The tools one assistant offers, by name.
#[derive(Default)]
pub struct ToolBox {
    /// Shared with the MCP sessions, which replace their server's tools when its list changes.
    tools: SharedTools,
    announcements: Option<tokio::sync::mpsc::Receiver<String>>,
    reminders: Option<Arc<reminders::Reminders>>,
    mcp_pending: Option<mcp::Pending>,
    mcp: Vec<mcp::Session>,
}

/// The tool list, behind a lock held only to read or replace entries (never across an await).
pub(crate) type SharedTools = Arc<std::sync::RwLock<Vec<Arc<dyn Tool>>>>;

impl std::fmt::Debug for ToolBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.specs().into_iter().map(|s| s.name)).finish()
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
        let mut warnings = Vec::new();
        if let Some(reminders) = &self.reminders {
            // Overdue reminders (due while slowcat was not running) are announced at once.
            reminders.start_clock();
        }
        if let Some(pending) = self.mcp_pending.take() {
            let (sessions, mut w) = mcp::start_all(pending, self.tools.clone()).await;
            self.mcp = sessions;
            warnings.append(&mut w);
        }
        warnings
    }

    /// Stops what [`ToolBox::start`] started (MCP server processes), called from `stop`.
    pub async fn stop(&mut self) {
        if let Some(reminders) = &self.reminders {
            reminders.stop_clock();
        }
        let sessions = std::mem::take(&mut self.mcp);
        futures::future::join_all(sessions.into_iter().map(|s| s.stop())).await;
        // Their tools stay listed but answer `Unavailable`: a call after stop finds no server.
    }

    /// Text the assistant must say on its own, between turns (a reminder that is due). The LLM
    /// processor takes the receiver once, at start, and speaks what arrives.
    pub fn take_announcements(&mut self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        self.announcements.take()
    }

    /// Adds a tool. A name already taken is refused and the clash returned, so the caller can
    /// report it (the first one registered stays).
    pub fn add(&mut self, tool: Arc<dyn Tool>) -> Result<(), ToolSpec> {
        add_to(&self.tools, tool)
    }

    /// True when there is no tool.
    pub fn is_empty(&self) -> bool {
        read(&self.tools).is_empty()
    }

    /// Every tool's spec, in the order they were added.
    pub fn specs(&self) -> Vec<ToolSpec> {
        read(&self.tools).iter().map(|t| t.spec()).collect()
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        read(&self.tools).iter().find(|t| t.spec().name == name).cloned()
    }

    /// Runs the tool named `name` for the default speaker.
    pub async fn call(&self, name: &str, args: serde_json::Value) -> Result<String, ToolError> {
        self.call_for(crate::frame::DEFAULT_SPEAKER, name, args).await
    }

    /// Runs the tool named `name` for `speaker`, the one talking in the turn.
    pub async fn call_for(&self, speaker: &str, name: &str, args: serde_json::Value) -> Result<String, ToolError> {
        match self.get(name) {
            Some(tool) => tool.call_for(speaker, args).await,
            None => Err(ToolError::Unknown(name.to_string())),
        }
    }
}

impl Drop for ToolBox {
    fn drop(&mut self) {
        // The clock task holds the reminders: without this it would outlive a box never stopped.
        if let Some(reminders) = &self.reminders {
            reminders.stop_clock();
        }
    }
}

fn read(tools: &SharedTools) -> std::sync::RwLockReadGuard<'_, Vec<Arc<dyn Tool>>> {
    // A panic while holding the lock cannot leave the list half-changed (pushes and retains only).
    tools.read().unwrap_or_else(|e| e.into_inner())
}

fn write(tools: &SharedTools) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<dyn Tool>>> {
    tools.write().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn add_to(tools: &SharedTools, tool: Arc<dyn Tool>) -> Result<(), ToolSpec> {
    let spec = tool.spec();
    let mut tools = write(tools);
    if tools.iter().any(|t| t.spec().name == spec.name) {
        return Err(spec);
    }
    tools.push(tool);
    Ok(())
}

/// The arguments object the model sent, tolerating `null` or a JSON string holding the object
/// (small models send both).
pub(crate) fn args_object(args: serde_json::Value) -> Result<serde_json::Map<String, serde_json::Value>, ToolError> {
    match args {
        serde_json::Value::Object(map) => Ok(map),
        serde_json::Value::Null => Ok(serde_json::Map::new()),
        serde_json::Value::String(text) if text.trim().is_empty() => Ok(serde_json::Map::new()),
        serde_json::Value::String(text) => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(ToolError::BadArguments(format!("expected a JSON object, got the text `{text}`"))),
        },
        other => Err(ToolError::BadArguments(format!("expected a JSON object, got `{other}`"))),
    }
}

/// The first of `names` present in `args` as text (numbers are turned into text): models do not
/// always use the schema's own key.
pub(crate) fn text_arg(args: &serde_json::Map<String, serde_json::Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match args.get(*n)? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Writes `contents` to `path` through a temporary file and a rename, so a crash mid-write never
/// leaves a truncated store behind.
pub(crate) async fn write_atomically(path: &std::path::Path, contents: Vec<u8>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    tokio::fs::write(&tmp, contents).await?;
    tokio::fs::rename(&tmp, path).await
}
