//! The one way a request reaches the LLM server: the server's URLs, its HTTP client and API key,
//! and [`Server::send`], which every request goes through (the streamed reply, the model list,
//! the warm-up and read-ahead requests) so that connecting, time bounds and error statuses are
//! handled in one place.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use tokio::time::{Instant as Deadline, timeout_at};
use tracing::debug;

use super::error::{Fault, LlmError, chunk_error, request_error, root_cause};
use super::settings::DEFAULT_BASE_URL;
use super::wire::{parse_models, truncate};

/// A whole reply larger than this is refused as malformed: a voice reply is a few KiB, and a
/// server that never stops must not fill memory.
pub(super) const MAX_REPLY_BYTES: usize = 8 << 20;
/// How much of an error reply's body is read to show it.
const MAX_ERROR_BODY_BYTES: usize = 4096;
/// How long an error body may take to arrive once the status is known.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(2);
/// How long an idle connection is kept for the next request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Bounds of `probe`, which must answer quickly for `slowcat check`.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The URLs of one server.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// `base_url` without a trailing slash, for messages.
    pub base: String,
    pub chat: reqwest::Url,
    pub models: reqwest::Url,
    /// Loopback servers are reached directly, whatever proxy the environment names.
    pub loopback: bool,
}

impl Endpoint {
    pub(super) fn parse(base_url: &str) -> Result<Self, String> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base).map_err(|e| format!("{e}; expected e.g. {DEFAULT_BASE_URL}"))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err("https is not supported by this build (it has no TLS, since local servers speak \
                            plain http); use an http:// URL"
                    .into());
            }
            other => return Err(format!("scheme {other:?} is not http; expected e.g. {DEFAULT_BASE_URL}")),
        }
        let host = url.host_str().ok_or_else(|| format!("no host; expected e.g. {DEFAULT_BASE_URL}"))?;
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let join = |path: &str| reqwest::Url::parse(&format!("{base}/{path}")).map_err(|e| e.to_string());
        Ok(Self { chat: join("chat/completions")?, models: join("models")?, base, loopback })
    }
}

/// An API key; its `Debug` never shows it.
#[derive(Clone)]
pub(super) struct ApiKey(pub String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

pub(super) fn http_client(connect_timeout: Duration, loopback: bool) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Servers drop idle keep-alive connections after about 5 s (uvicorn, Node): giving them up
        // first avoids sending a turn's request on a connection the server is just closing.
        .pool_idle_timeout(POOL_IDLE_TIMEOUT);
    if loopback {
        builder = builder.no_proxy();
    }
    builder.build()
}

/// What is asked of the server.
pub(super) enum Call {
    /// `POST /chat/completions` with this JSON body; `stream` asks for server-sent events.
    Chat { body: Bytes, stream: bool },
    /// `GET /models`.
    Models,
}

/// One server: its URLs, a pooled HTTP client and the API key. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Server {
    pub client: reqwest::Client,
    pub endpoint: Endpoint,
    pub api_key: Option<ApiKey>,
}

impl Server {
    /// The base URL, for messages.
    pub(super) fn url(&self) -> &str {
        &self.endpoint.base
    }

    /// Sends `call` and waits until `deadline` for a successful status. An error status becomes
    /// [`LlmError::Http`] with the start of its body.
    pub(super) async fn send(&self, call: Call, deadline: Deadline) -> Result<reqwest::Response, Fault> {
        let url = self.url();
        let (mut request, status_url) = match call {
            Call::Chat { body, stream } => {
                let accept = if stream { "text/event-stream" } else { "application/json" };
                let request = self
                    .client
                    .post(self.endpoint.chat.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .header(ACCEPT, accept)
                    .body(body);
                (request, url.to_string())
            }
            Call::Models => (
                self.client.get(self.endpoint.models.clone()).header(ACCEPT, "application/json"),
                format!("{url}/models"),
            ),
        };
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(&key.0);
        }
        let response = match timeout_at(deadline, request.send()).await {
            Err(_) => return Err(Fault::Timeout),
            Ok(Err(e)) => return Err(Fault::Failed(request_error(url, &e))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let body = read_error_body(response, deadline).await;
            return Err(Fault::Failed(LlmError::Http { url: status_url, status: status.as_u16(), body }));
        }
        Ok(response)
    }

    /// [`Server::send`], then the whole (non-streamed) body, all before `deadline`.
    pub(super) async fn fetch(&self, call: Call, deadline: Deadline) -> Result<Vec<u8>, Fault> {
        let response = self.send(call, deadline).await?;
        read_body(response, deadline, self.url()).await
    }

    /// The model ids the server serves, within `limit`. `what` names the caller in logs and
    /// says which bound a timeout is.
    pub(super) async fn list_models(&self, limit: Duration, what: &'static str) -> Result<Vec<String>, LlmError> {
        let url = self.url();
        let timeout = || LlmError::Timeout {
            url: url.to_string(),
            ms: limit.as_millis() as u64,
            setting: if what == "probe" { "the limit of a probe" } else { "setting `first_token_timeout_ms`" },
        };
        let body = self.fetch(Call::Models, Deadline::now() + limit).await.map_err(|f| f.or_timeout(timeout))?;
        let models = parse_models(&body).map_err(|e| chunk_error(&format!("{url}/models"), e))?;
        debug!(what, ?models, "models listed");
        Ok(models)
    }
}

/// The first model that is not an embedding model (LM Studio lists those too), else the first.
pub(super) fn pick_model(models: &[String]) -> Option<String> {
    models.iter().find(|m| !m.to_ascii_lowercase().contains("embed")).or(models.first()).cloned()
}

/// Reads the model ids the server serves (`GET {base_url}/models`), for `slowcat check`.
/// `api_key` is sent as a bearer token when given. Bounded: answers within about 5 s.
pub async fn probe(base_url: &str, api_key: Option<&str>) -> Result<Vec<String>, LlmError> {
    let endpoint = Endpoint::parse(base_url).map_err(|reason| LlmError::InvalidUrl { url: base_url.into(), reason })?;
    let client = http_client(PROBE_CONNECT_TIMEOUT, endpoint.loopback)
        .map_err(|e| LlmError::InvalidUrl { url: base_url.into(), reason: root_cause(&e) })?;
    let server = Server { client, endpoint, api_key: api_key.map(|k| ApiKey(k.to_string())) };
    server.list_models(PROBE_TIMEOUT, "probe").await
}

/// A whole (non-streamed) reply body, bounded in size and time.
pub(super) async fn read_body(
    mut response: reqwest::Response,
    deadline: Deadline,
    url: &str,
) -> Result<Vec<u8>, Fault> {
    let mut body = Vec::new();
    loop {
        match timeout_at(deadline, response.chunk()).await {
            Err(_) => return Err(Fault::Timeout),
            Ok(Err(e)) => {
                return Err(Fault::Failed(LlmError::Disconnected { url: url.into(), reason: root_cause(&e) }));
            }
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(chunk))) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_REPLY_BYTES {
                    return Err(Fault::Failed(LlmError::Malformed {
                        url: url.into(),
                        detail: format!("the reply is larger than {MAX_REPLY_BYTES} bytes"),
                    }));
                }
            }
        }
    }
}

/// The start of an error reply's body, on one line, for the error message.
async fn read_error_body(mut response: reqwest::Response, deadline: Deadline) -> String {
    let deadline = deadline.min(Deadline::now() + ERROR_BODY_WAIT);
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    let text = String::from_utf8_lossy(&body);
    if text.trim().is_empty() { "(empty body)".into() } else { truncate(&text, 500) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_joins_paths_and_spots_loopback() {
        let e = Endpoint::parse("http://localhost:1234/v1/").unwrap();
        assert_eq!(e.chat.as_str(), "http://localhost:1234/v1/chat/completions");
        assert_eq!(e.models.as_str(), "http://localhost:1234/v1/models");
        assert_eq!(e.base, "http://localhost:1234/v1");
        assert!(e.loopback);
        assert!(!Endpoint::parse("http://192.168.1.5:1234/v1").unwrap().loopback);
        assert!(Endpoint::parse("ftp://x/v1").is_err());
        assert!(Endpoint::parse("localhost:1234").is_err());
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", Some(ApiKey("sk-secret".into()))), "Some(ApiKey(<redacted>))");
    }

    #[test]
    fn pick_model_skips_embedding_models() {
        let models = vec!["text-embedding-nomic-embed-text-v1.5".to_string(), "qwen3-4b".to_string()];
        assert_eq!(pick_model(&models).as_deref(), Some("qwen3-4b"));
        assert_eq!(pick_model(&[]), None);
    }
}
