//! `fetch_web_page` (a page's readable text) and `web_search` (a configured search endpoint).
//!
//! The model picks the URL, so a page fetch is guarded: http and https only; every address the
//! host resolves to must be public unless `allow_private_addresses` (a page must not reach the
//! machine itself or the local network: a router's admin page, a cloud metadata service); the
//! connection goes to the addresses that were checked (no second DNS lookup to rebind), and each
//! redirect is checked again. Both tools stop at a size and a time limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use serde_json::json;

use super::{Tool, ToolError, ToolSpec, args_object, text_arg};

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;
/// Line width html2text lays text out in; long enough that sentences are rarely cut.
const TEXT_WIDTH: usize = 200;

/// How much a fetch may take.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The whole fetch, redirects included.
    pub timeout: Duration,
    /// Bytes of the body read at most.
    pub max_bytes: u64,
    /// Characters of text given to the model at most.
    pub max_chars: usize,
    /// Loopback, private and link-local addresses allowed.
    pub allow_private: bool,
}

/// Whether a search URL template can work: http(s) and a `{query}` placeholder.
pub fn check_search_url(template: &str) -> Result<(), String> {
    if !template.contains("{query}") {
        return Err(format!("`{template}` has no `{{query}}` where the search words go"));
    }
    let url =
        Url::parse(&template.replace("{query}", "test")).map_err(|e| format!("`{template}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{template}` must be an http or https URL"));
    }
    Ok(())
}

/// True for addresses on the public internet; false for loopback, private, link-local, shared
/// (CGNAT), documentation, multicast and reserved ones, and IPv6 forms of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b && !is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32)))
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

/// A fetched body.
struct Fetched {
    url: Url,
    content_type: String,
    body: Vec<u8>,
    truncated: bool,
}

/// The addresses to connect to for `url`, each checked unless private ones are allowed.
async fn resolve(url: &Url, allow_private: bool) -> Result<Vec<SocketAddr>, ToolError> {
    let host = url.host_str().ok_or_else(|| ToolError::BadArguments(format!("`{url}` has no host")))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host_for_lookup, port))
        .await
        .map_err(|e| ToolError::Failed(format!("cannot find the host `{host}`: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(ToolError::Failed(format!("the host `{host}` has no address")));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(ToolError::Failed(format!(
            "refused: `{host}` is a local or private address ({}); only public web pages can be fetched",
            bad.ip()
        )));
    }
    Ok(addrs)
}

/// GETs `url`, following redirects by hand so each hop's address is checked when `guard`.
async fn fetch(url: Url, limits: &Limits, guard: bool) -> Result<Fetched, ToolError> {
    let work = async {
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ToolError::BadArguments(format!(
                    "only http and https pages can be fetched, not `{}:`",
                    url.scheme()
                )));
            }
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("slowcat/", env!("CARGO_PKG_VERSION")));
            if guard {
                // A proxy would connect to whatever the name resolves to there, unchecked.
                builder = builder.no_proxy();
                let addrs = resolve(&url, limits.allow_private).await?;
                if let Some(host) = url.host_str() {
                    // Connect to exactly the addresses just checked: no second lookup to rebind.
                    builder = builder.resolve_to_addrs(host, &addrs);
                }
            }
            let client = builder.build().map_err(|e| ToolError::Failed(format!("HTTP client: {e}")))?;
            let mut response = client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "text/html, text/plain, application/json;q=0.9, */*;q=0.5")
                .send()
                .await
                .map_err(|e| ToolError::Failed(format!("cannot fetch {url}: {}", error_chain(&e))))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| ToolError::Failed(format!("{url} redirects without a location")))?;
                url = url
                    .join(location)
                    .map_err(|e| ToolError::Failed(format!("{url} redirects to a bad location: {e}")))?;
                continue;
            }
            if !status.is_success() {
                return Err(ToolError::Failed(format!("{url} answered {status}")));
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let mut body = Vec::new();
            let mut truncated = false;
            while let Some(chunk) =
                response.chunk().await.map_err(|e| ToolError::Failed(format!("reading {url}: {}", error_chain(&e))))?
            {
                let room = limits.max_bytes.saturating_sub(body.len() as u64) as usize;
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Fetched { url, content_type, body, truncated });
        }
        Err(ToolError::Failed(format!("more than {MAX_REDIRECTS} redirects")))
    };
    tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| ToolError::Failed(format!("the page took longer than {:.0} s", limits.timeout.as_secs_f64())))?
}

/// reqwest's error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The readable text of a fetched body, cut to `max_chars`.
fn readable_text(fetched: &Fetched, max_chars: usize) -> Result<String, ToolError> {
    let ct = fetched.content_type.as_str();
    let looks_html = ct.contains("html")
        || (ct.is_empty()
            && fetched
                .body
                .iter()
                .take(512)
                .copied()
                .collect::<Vec<_>>()
                .to_ascii_lowercase()
                .windows(5)
                .any(|w| w == b"<html"));
    let text = if looks_html {
        html2text::config::plain_no_decorate()
            .link_footnotes(false)
            .string_from_read(&fetched.body[..], TEXT_WIDTH)
            .map_err(|e| ToolError::Failed(format!("cannot read the page: {e}")))?
    } else if ct.is_empty() || ct.starts_with("text/") || ct.contains("json") || ct.contains("xml") {
        String::from_utf8_lossy(&fetched.body).into_owned()
    } else {
        return Err(ToolError::Failed(format!("{} is not a text page ({ct})", fetched.url)));
    };
    // Blank lines and runs of spaces cost tokens and say nothing.
    let mut text = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n");
    let mut cut = fetched.truncated;
    if let Some((i, _)) = text.char_indices().nth(max_chars) {
        text.truncate(i);
        cut = true;
    }
    if cut {
        text.push_str("\n[the rest of the page was cut]");
    }
    Ok(text)
}

/// The `fetch_web_page` tool.
pub struct FetchPage {
    limits: Limits,
}

impl FetchPage {
    /// A fetcher with these limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }
}

#[async_trait]
impl Tool for FetchPage {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "fetch_web_page".into(),
            description: "Get the readable text of a web page (http or https URL), to read or summarise it.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"url": {"type": "string", "description": "The page's address"}},
                "required": ["url"]
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let raw = text_arg(&args, &["url", "address", "link", "page"])
            .ok_or_else(|| ToolError::BadArguments("`url` is missing".into()))?;
        // "example.org" alone is what people say; give it a scheme.
        let with_scheme = if raw.contains("://") { raw.clone() } else { format!("https://{raw}") };
        let url =
            Url::parse(&with_scheme).map_err(|e| ToolError::BadArguments(format!("`{raw}` is not a URL: {e}")))?;
        let fetched = fetch(url, &self.limits, true).await?;
        let text = readable_text(&fetched, self.limits.max_chars)?;
        Ok(format!("Text of {}:\n{text}", fetched.url))
    }
}

/// The `web_search` tool: a GET to the configured endpoint.
pub struct Search {
    template: String,
    limits: Limits,
}

impl Search {
    /// `template` has `{query}` where the URL-encoded words go (checked by `ToolsSettings::check`).
    pub fn new(template: &str, limits: Limits) -> Self {
        Self { template: template.to_string(), limits }
    }
}

/// SearXNG's JSON (`results: [{title, url, content}]`) as a short numbered list.
fn search_results(body: &[u8], max_chars: usize) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let results = value.get("results")?.as_array()?;
    let mut text = String::new();
    for (i, r) in results.iter().take(8).enumerate() {
        let field = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").trim().to_string();
        text.push_str(&format!("{}. {} ({})\n{}\n", i + 1, field("title"), field("url"), field("content")));
    }
    if text.is_empty() {
        text = "No results.".into();
    }
    Some(text.chars().take(max_chars).collect())
}

#[async_trait]
impl Tool for Search {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "web_search".into(),
            description: "Search the web for current information; returns titles, addresses and snippets.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to search for"}},
                "required": ["query"]
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let query = text_arg(&args, &["query", "q", "text", "search"])
            .ok_or_else(|| ToolError::BadArguments("`query` is missing".into()))?;
        let encoded: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let url = Url::parse(&self.template.replace("{query}", &encoded))
            .map_err(|e| ToolError::Failed(format!("the search URL is not valid: {e}")))?;
        // The endpoint is the user's choice (often a SearXNG on this machine): not guarded.
        let fetched = fetch(url, &self.limits, false).await?;
        match search_results(&fetched.body, self.limits.max_chars) {
            Some(text) => Ok(text),
            None => readable_text(&fetched, self.limits.max_chars),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
    }

    #[test]
    fn a_search_url_needs_its_placeholder() {
        assert!(check_search_url("https://searx.example/search?q={query}&format=json").is_ok());
        assert!(check_search_url("https://searx.example/search").is_err());
        assert!(check_search_url("ftp://x/{query}").is_err());
    }
}
