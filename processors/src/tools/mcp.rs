//! MCP servers' tools, through the official Rust SDK (`rmcp`).
//!
//! The servers come from an `mcp.json` in the format LM Studio, Claude Desktop and the Python bot
//! use: `{"mcpServers": {name: {"command", "args", "env"}}}` for a child process speaking stdio,
//! `{"url"}` for streamable HTTP. Each server gets one session for the life of the tool box:
//! started by [`super::ToolBox::start`], ended by `stop`. A server that does not start is a
//! warning and offers no tools; one that dies later keeps its tools listed, and they answer
//! [`ToolError::Unavailable`] (a call in flight when it dies too) while every other tool works.
//! When a server says its tool list changed, its tools are listed again.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::{CallToolRequestParams, ContentBlock};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService, ServiceError};
use rmcp::{ClientHandler, ServiceExt};
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use super::{SharedTools, Tool, ToolError, ToolSpec};

/// How long `stop` waits for one server to end (rmcp closes its stdin, then signals, then kills).
const STOP_TIMEOUT: Duration = Duration::from_secs(8);
/// Lines of a server's stderr kept to explain why it died.
const STDERR_LINES: usize = 5;

/// Why an `mcp.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum McpConfigError {
    /// It cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It does not parse, or a server entry is incomplete.
    #[error(
        "{path} is not a valid mcp.json ({detail}); expected {{\"mcpServers\": {{\"name\": {{\"command\": \"...\", \"args\": [...]}}}}}}"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// One server's entry. Keys other clients add (`type`, `disabled`, ...) are tolerated: the same
/// file serves several applications.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServerConfig {
    /// The program to run (a stdio server).
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables added to slowcat's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A streamable HTTP server's endpoint, instead of a command.
    pub url: Option<String>,
    /// Claude Desktop's switch to keep an entry without starting it.
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct McpFile {
    mcp_servers: BTreeMap<String, ServerConfig>,
}

/// The servers of one `mcp.json`, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct McpConfig {
    /// Where it was read from.
    pub path: PathBuf,
    /// The servers, by name.
    pub servers: BTreeMap<String, ServerConfig>,
}

impl McpConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, McpConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| McpConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses the text of an `mcp.json` read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, McpConfigError> {
        let invalid = |detail: String| McpConfigError::Invalid { path: path.to_path_buf(), detail };
        let file: McpFile = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (name, server) in &file.mcp_servers {
            match (&server.command, &server.url) {
                (Some(_), Some(_)) => return Err(invalid(format!("server `{name}` has both `command` and `url`"))),
                (None, None) => return Err(invalid(format!("server `{name}` has neither `command` nor `url`"))),
                (None, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(invalid(format!("server `{name}`: `url` must be http or https, got `{url}`")));
                }
                _ => {}
            }
        }
        Ok(Self { path: path.to_path_buf(), servers: file.mcp_servers })
    }
}

/// What `ToolBox::start` will start.
#[derive(Debug)]
pub struct Pending {
    /// The servers.
    pub config: McpConfig,
    /// How long one may take to start and list its tools.
    pub start_timeout: Duration,
}

/// The client side of one session: it hears that the server's tool list changed.
#[derive(Clone)]
struct Handler {
    changed: Arc<tokio::sync::Notify>,
}

impl ClientHandler for Handler {
    fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) -> impl Future<Output = ()> + Send + '_ {
        self.changed.notify_one();
        std::future::ready(())
    }
}

/// What the tools of one server share.
struct Link {
    name: String,
    peer: Peer<RoleClient>,
    /// Cancelled when the session has ended (the server died, or `stop`).
    ended: CancellationToken,
    /// The last lines the server wrote on stderr.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Link {
    fn gone(&self) -> ToolError {
        let tail = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).back().cloned();
        ToolError::Unavailable(match tail {
            Some(line) => format!("the MCP server `{}` has stopped (its last words: {line})", self.name),
            None => format!("the MCP server `{}` has stopped", self.name),
        })
    }
}

/// One tool of an MCP server.
struct McpTool {
    link: Arc<Link>,
    spec: ToolSpec,
    /// The name the server knows it by (the spec's may be cleaned up for the model).
    remote: String,
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        if self.link.ended.is_cancelled() || self.link.peer.is_transport_closed() {
            return Err(self.link.gone());
        }
        let args = super::args_object(args)?;
        let params = CallToolRequestParams::new(self.remote.clone()).with_arguments(args);
        // A server that dies mid-call may leave the request unanswered: the end of the session
        // answers for it.
        let result = tokio::select! {
            r = self.link.peer.call_tool(params) => r,
            _ = self.link.ended.cancelled() => return Err(self.link.gone()),
        };
        let result = match result {
            Ok(result) => result,
            Err(ServiceError::McpError(e)) => return Err(ToolError::Failed(e.message.to_string())),
            Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) => return Err(self.link.gone()),
            Err(e) => return Err(ToolError::Failed(format!("the MCP server `{}`: {e}", self.link.name))),
        };
        let mut text: Vec<String> = result
            .content
            .iter()
            .map(|block| match block {
                ContentBlock::Text(t) => t.text.clone(),
                ContentBlock::Image(_) => "[an image]".to_string(),
                ContentBlock::Audio(_) => "[a sound]".to_string(),
                _ => "[other content]".to_string(),
            })
            .collect();
        if text.is_empty()
            && let Some(structured) = &result.structured_content
        {
            text.push(structured.to_string());
        }
        let text = text.join("\n");
        if result.is_error == Some(true) {
            return Err(ToolError::Failed(if text.is_empty() { "the tool failed".into() } else { text }));
        }
        Ok(text)
    }
}

/// A running session with one server.
pub struct Session {
    link: Arc<Link>,
    /// Ends the session: rmcp then closes the child's stdin, waits, signals, kills.
    cancel: Option<rmcp::service::RunningServiceCancellationToken>,
    /// Ends when the session has.
    monitor: tokio::task::JoinHandle<()>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Ends the session and the server's process.
    pub async fn stop(mut self) {
        self.refresher.abort();
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel();
        }
        if tokio::time::timeout(STOP_TIMEOUT, &mut self.monitor).await.is_err() {
            tracing::warn!(server = %self.link.name, "the MCP server did not stop in time");
            self.monitor.abort();
        }
        self.link.ended.cancel();
    }
}

/// A tool name the model accepts: `[A-Za-z0-9_-]`, at most 64 characters.
fn model_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(64)
        .collect();
    if clean.is_empty() { "tool".into() } else { clean }
}

fn tool_of(link: &Arc<Link>, tool: rmcp::model::Tool) -> Arc<dyn Tool> {
    let remote = tool.name.to_string();
    let description = tool.description.as_deref().or(tool.title.as_deref()).unwrap_or("").to_string();
    let spec = ToolSpec {
        name: model_name(&remote),
        description,
        parameters: serde_json::Value::Object((*tool.input_schema).clone()),
        source: format!("mcp:{}", link.name),
    };
    Arc::new(McpTool { link: link.clone(), spec, remote })
}

/// Adds the server's tools to the list (replacing those it had); returns the clash warnings.
fn install(tools: &SharedTools, link: &Arc<Link>, listed: Vec<rmcp::model::Tool>) -> Vec<String> {
    let source = format!("mcp:{}", link.name);
    super::write(tools).retain(|t| t.spec().source != source);
    let mut warnings = Vec::new();
    for tool in listed {
        if let Err(kept) = super::add_to(tools, tool_of(link, tool)) {
            let taken_by = super::read(tools)
                .iter()
                .find(|t| t.spec().name == kept.name)
                .map(|t| t.spec().source)
                .unwrap_or_default();
            warnings.push(format!(
                "MCP server `{}`: its tool `{}` has the name of a tool from {taken_by}, which is kept; the server's one is not offered",
                link.name, kept.name
            ));
        }
    }
    warnings
}

type Client = RunningService<RoleClient, Handler>;

async fn connect(
    name: &str,
    server: &ServerConfig,
    handler: Handler,
    stderr: &Arc<Mutex<VecDeque<String>>>,
) -> Result<Client, String> {
    if let Some(url) = &server.url {
        let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.as_str());
        return handler.serve(transport).await.map_err(|e| format!("cannot connect to {url}: {e}"));
    }
    let program = server.command.as_deref().unwrap_or_default();
    let mut command = tokio::process::Command::new(program);
    command.args(&server.args).envs(&server.env);
    let (transport, err) = rmcp::transport::TokioChildProcess::builder(command)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}; check `command` in the mcp.json"))?;
    if let Some(err) = err {
        // Read all of it (a full pipe would block the server); keep the last lines.
        let stderr = stderr.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(server = %name, "{line}");
                let mut tail = stderr.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
    }
    handler.serve(transport).await.map_err(|e| {
        let tail = stderr.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>().join(" | ");
        if tail.is_empty() {
            format!("`{program}` did not start an MCP session: {e}")
        } else {
            format!("`{program}` did not start an MCP session: {e} (stderr: {tail})")
        }
    })
}

/// Starts one server and lists its tools.
async fn start_one(
    name: String,
    server: ServerConfig,
    tools: SharedTools,
    timeout: Duration,
) -> Result<(Session, Vec<String>), String> {
    let changed = Arc::new(tokio::sync::Notify::new());
    let stderr = Arc::new(Mutex::new(VecDeque::new()));
    let handler = Handler { changed: changed.clone() };
    let work = async {
        let client = connect(&name, &server, handler, &stderr).await?;
        let listed = client.peer().list_all_tools().await.map_err(|e| format!("cannot list its tools: {e}"))?;
        Ok::<_, String>((client, listed))
    };
    let (client, listed) = tokio::time::timeout(timeout, work).await.map_err(|_| {
        format!("it did not start within {:.0} s (tools.mcp_start_timeout_secs)", timeout.as_secs_f64())
    })??;
    let link =
        Arc::new(Link { name: name.clone(), peer: client.peer().clone(), ended: CancellationToken::new(), stderr });
    let mut warnings = install(&tools, &link, listed);
    if super::read(&tools).iter().all(|t| t.spec().source != format!("mcp:{name}")) {
        warnings.push(format!("MCP server `{name}` offers no tools"));
    }
    let cancel = Some(client.cancellation_token());
    let monitor = {
        let link = link.clone();
        tokio::spawn(async move {
            let reason = client.waiting().await;
            if !link.ended.is_cancelled() {
                tracing::warn!(server = %link.name, reason = ?reason, "{}", link.gone());
            }
            link.ended.cancel();
        })
    };
    let refresher = {
        let link = link.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = link.ended.cancelled() => return,
                }
                match link.peer.list_all_tools().await {
                    Ok(listed) => {
                        let n = listed.len();
                        for warning in install(&tools, &link, listed) {
                            tracing::warn!("{warning}");
                        }
                        tracing::info!(server = %link.name, tools = n, "MCP tool list refreshed");
                    }
                    Err(e) => tracing::warn!(server = %link.name, error = %e, "could not list the changed tools"),
                }
            }
        })
    };
    Ok((Session { link, cancel, monitor, refresher }, warnings))
}

/// Starts every server of `pending` at once; their tools join `tools`.
pub async fn start_all(pending: Pending, tools: SharedTools) -> (Vec<Session>, Vec<String>) {
    let starts = pending.config.servers.into_iter().filter(|(_, s)| !s.disabled).map(|(name, server)| {
        let tools = tools.clone();
        async move {
            let result = start_one(name.clone(), server, tools, pending.start_timeout).await;
            (name, result)
        }
    });
    let mut sessions = Vec::new();
    let mut warnings = Vec::new();
    for (name, result) in futures::future::join_all(starts).await {
        match result {
            Ok((session, mut w)) => {
                tracing::info!(server = %name, "MCP server started");
                sessions.push(session);
                warnings.append(&mut w);
            }
            Err(why) => warnings
                .push(format!("MCP server `{name}` is not available, the assistant works without its tools: {why}")),
        }
    }
    (sessions, warnings)
}
