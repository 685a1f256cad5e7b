//! `slowcat bench llm`: what the client itself adds to the time to first token, and the
//! timestamping TCP proxy that tells the client's time from the server's.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use slowcat_processors::frame::{ChatMessage, DEFAULT_SPEAKER, Frame, LlmRequest, Role};
use slowcat_processors::llm::{Chunk, OpenAiLlm, OpenAiLlmSettings, parse_chunk, probe};
use slowcat_processors::pipeline::{Pipeline, PipelineOptions};

use crate::stats::percentile;

/// At most this many events are kept; more are counted in [`TapProxy::dropped`] instead, so a
/// forgotten proxy cannot fill memory.
const MAX_TAP_EVENTS: usize = 100_000;

/// What the proxy saw, and when.
#[derive(Debug, Clone)]
pub struct TapEvent {
    /// When the proxy saw it.
    pub at: Instant,
    /// Which accepted connection (numbered from 0).
    pub conn: u64,
    /// What happened.
    pub kind: TapKind,
}

/// One thing a [`TapProxy`] saw on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapKind {
    /// A client connected (and the proxy connected on to the server).
    Opened,
    /// Bytes from the client, forwarded to the server.
    FromClient(Bytes),
    /// Bytes from the server, forwarded to the client.
    FromServer(Bytes),
    /// The client closed the connection (or it broke); the server side is closed with it.
    ClientClosed,
    /// The server closed the connection (or it broke); the client side is closed with it.
    ServerClosed,
}

#[derive(Default)]
struct TapLog {
    events: Vec<TapEvent>,
    dropped: usize,
}

/// A TCP proxy on 127.0.0.1 that forwards every connection to `upstream` and timestamps what
/// passes, for benchmarks (the server's own time to first byte) and tests (when the client
/// closed its connection). Stops when dropped.
pub struct TapProxy {
    addr: SocketAddr,
    log: Arc<Mutex<TapLog>>,
    task: JoinHandle<()>,
}

impl TapProxy {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(TapLog::default()));
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when the proxy is dropped) aborts every connection.
            let mut connections = JoinSet::new();
            let mut next_conn = 0u64;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        connections.spawn(relay(next_conn, client, upstream, task_log.clone()));
                        next_conn += 1;
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Ok(Self { addr, log, task })
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything seen so far, oldest first.
    pub fn events(&self) -> Vec<TapEvent> {
        self.log.lock().map(|l| l.events.clone()).unwrap_or_default()
    }

    /// Everything seen so far, leaving the log empty.
    pub fn take_events(&self) -> Vec<TapEvent> {
        self.log.lock().map(|mut l| std::mem::take(&mut l.events)).unwrap_or_default()
    }

    /// Events not kept because the log was full.
    pub fn dropped(&self) -> usize {
        self.log.lock().map(|l| l.dropped).unwrap_or_default()
    }
}

impl Drop for TapProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(log: &Mutex<TapLog>, conn: u64, kind: TapKind) {
    let at = Instant::now();
    if let Ok(mut log) = log.lock() {
        if log.events.len() < MAX_TAP_EVENTS {
            log.events.push(TapEvent { at, conn, kind });
        } else {
            log.dropped += 1;
        }
    }
}

async fn relay(conn: u64, client: TcpStream, upstream: SocketAddr, log: Arc<Mutex<TapLog>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        record(&log, conn, TapKind::ServerClosed);
        return;
    };
    record(&log, conn, TapKind::Opened);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match client_rx.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    record(&log, conn, TapKind::FromClient(Bytes::copy_from_slice(&buf[..n])));
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        record(&log, conn, TapKind::ServerClosed);
                        return;
                    }
                }
                _ => {
                    record(&log, conn, TapKind::ClientClosed);
                    return;
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match server_rx.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    record(&log, conn, TapKind::FromServer(Bytes::copy_from_slice(&buf[..n])));
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        record(&log, conn, TapKind::ClientClosed);
                        return;
                    }
                }
                _ => {
                    record(&log, conn, TapKind::ServerClosed);
                    return;
                }
            }
        }
    };
    // HTTP clients never half-close: either side going away ends the connection, and dropping
    // both halves closes the other side, as a direct connection would.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// When one request left the client and when its first piece of text left the server, as seen
/// by the proxy.
#[derive(Debug, Clone, Copy)]
struct ServerTiming {
    request_at: Instant,
    first_token_at: Instant,
}

/// Finds, in the proxy's log of one request, when the request arrived and when the bytes that
/// complete the first server-sent event with text arrived.
fn server_timing(events: &[TapEvent]) -> Option<ServerTiming> {
    let (conn, request_at) = events.iter().find_map(|e| match e.kind {
        TapKind::FromClient(_) => Some((e.conn, e.at)),
        _ => None,
    })?;
    let reads: Vec<(Instant, &Bytes)> = events
        .iter()
        .filter(|e| e.conn == conn && e.at >= request_at)
        .filter_map(|e| if let TapKind::FromServer(b) = &e.kind { Some((e.at, b)) } else { None })
        .collect();
    let raw: Vec<u8> = reads.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let end = first_token_end(&raw)?;
    let mut read_end = 0usize;
    for (at, bytes) in reads {
        read_end += bytes.len();
        if read_end >= end {
            return Some(ServerTiming { request_at, first_token_at: at });
        }
    }
    None
}

/// The offset in a raw HTTP/1.1 response just past the first server-sent event carrying text.
fn first_token_end(raw: &[u8]) -> Option<usize> {
    let (body, raw_index) = http_body(raw)?;
    let mut data = String::new();
    let mut line_start = 0usize;
    for (i, &b) in body.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = String::from_utf8_lossy(&body[line_start..i]);
        let line = line.trim_end_matches('\r');
        line_start = i + 1;
        if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
            data.push('\n');
        } else if line.is_empty() && !data.is_empty() {
            if let Ok(Chunk::Delta { content, .. }) = parse_chunk(&data)
                && !content.is_empty()
            {
                return Some(raw_index[i] + 1);
            }
            data.clear();
        }
    }
    None
}

/// The body of a raw HTTP/1.1 response, de-chunked, with each body byte's offset in `raw`.
fn http_body(raw: &[u8]) -> Option<(Vec<u8>, Vec<usize>)> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let header_end = find(raw, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..header_end]).to_ascii_lowercase();
    if !head.contains("transfer-encoding: chunked") {
        return Some((raw[header_end..].to_vec(), (header_end..raw.len()).collect()));
    }
    let (mut body, mut index) = (Vec::new(), Vec::new());
    let mut pos = header_end;
    while let Some(eol) = find(&raw[pos..], b"\r\n") {
        let size_line = std::str::from_utf8(&raw[pos..pos + eol]).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        let start = pos + eol + 2;
        if size == 0 {
            break;
        }
        let end = (start + size).min(raw.len());
        body.extend_from_slice(&raw[start..end]);
        index.extend(start..end);
        pos = end + 2;
        if pos >= raw.len() {
            break;
        }
    }
    Some((body, index))
}

/// Questions of a voice assistant's kind, varied so no two requests in a row are identical.
const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Tell me a fun fact about cats.",
    "How do I boil an egg?",
    "What's a good name for a dog?",
    "Why is the sky blue?",
];
/// Unmeasured requests first: the first requests after a server starts are slow.
const WARMUP_REQUESTS: usize = 3;

/// Measures the client's overhead on the time to first token: request frame into `openai_llm`
/// → first `LlmText` frame out of it, minus the server's own time from the request's bytes to
/// the bytes of its first token, as timestamped by a [`TapProxy`] between the two. Sends `n`
/// requests (after a few unmeasured ones) to the server at `base_url` and prints p50/p99.
pub async fn bench(base_url: &str, n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(n > 0, "the number of requests must be at least 1");
    let url = reqwest::Url::parse(base_url).with_context(|| format!("base URL {base_url:?}"))?;
    let host = url.host_str().context("the base URL has no host")?;
    let port = url.port_or_known_default().context("the base URL has no port")?;
    let upstream = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))?;
    let models = probe(base_url, None).await?;
    let model = models.first().cloned().context("the server lists no models")?;

    let proxy = TapProxy::start(upstream).await.context("cannot start the timestamping proxy")?;
    let mut proxied = url.clone();
    proxied.set_host(Some("127.0.0.1")).context("proxy URL")?;
    proxied.set_port(Some(proxy.addr().port())).map_err(|()| anyhow::anyhow!("proxy URL"))?;
    let settings = OpenAiLlmSettings {
        base_url: proxied.to_string(),
        model: model.clone(),
        temperature: 0.0,
        max_tokens: 8,
        retries: 0,
        warmup: false,
        ..Default::default()
    };
    let llm = OpenAiLlm::new(settings)?;
    let mut pipeline = Pipeline::spawn(vec![("llm".into(), Box::new(llm))], PipelineOptions::default());
    pipeline.start().await;

    let mut client_ttfb = Vec::with_capacity(n);
    let mut server_ttfb = Vec::with_capacity(n);
    let mut overhead = Vec::with_capacity(n);
    let mut request_path = Vec::with_capacity(n);
    let mut response_path = Vec::with_capacity(n);
    let mut connections = 0usize;
    for i in 0..WARMUP_REQUESTS + n {
        // Let the previous reply's last bytes and bookkeeping pass before the clock starts.
        tokio::time::sleep(Duration::from_millis(20)).await;
        proxy.take_events();
        let request = LlmRequest {
            messages: vec![
                ChatMessage::new(Role::System, "Answer in one short sentence."),
                ChatMessage::new(Role::User, PROMPTS[i % PROMPTS.len()]),
            ],
            speaker: DEFAULT_SPEAKER.into(),
            turn: i as u64,
            memory_injected: false,
        };
        let sent = Instant::now();
        pipeline.send(Frame::LlmRequest(Box::new(request))).await;
        let mut first_text = None;
        loop {
            let (frame, _) = tokio::time::timeout(Duration::from_secs(60), pipeline.recv())
                .await
                .with_context(|| format!("request {i}: no reply within 60 s"))?
                .context("the pipeline stopped")?;
            match frame {
                Frame::LlmText(_) if first_text.is_none() => first_text = Some(Instant::now()),
                Frame::LlmResponseEnd => break,
                Frame::Error(e) => bail!("request {i}: {}", e.message),
                _ => {}
            }
        }
        let Some(first_text) = first_text else { bail!("request {i}: the reply had no text") };
        let events = proxy.events();
        let timing = server_timing(&events)
            .with_context(|| format!("request {i}: the proxy saw no first token (is the reply streamed?)"))?;
        if i < WARMUP_REQUESTS {
            continue;
        }
        connections += events.iter().filter(|e| e.kind == TapKind::Opened).count();
        let client = first_text - sent;
        let server = timing.first_token_at.saturating_duration_since(timing.request_at);
        client_ttfb.push(client);
        server_ttfb.push(server);
        overhead.push(client.saturating_sub(server));
        request_path.push(timing.request_at.saturating_duration_since(sent));
        response_path.push(first_text.saturating_duration_since(timing.first_token_at));
    }
    let _ = pipeline.cancel().await;

    println!("slowcat bench llm: {n} streamed requests to {base_url} (model {model}, max_tokens 8),");
    println!("through a timestamping TCP proxy on {}", proxy.addr());
    println!("{:<44} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    let row = |name: &str, v: &mut Vec<Duration>| {
        v.sort();
        let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
        let pct = |p| percentile(v, p).unwrap_or_default();
        println!("{name:<44} {:>10} {:>10} {:>10}", ms(pct(0.50)), ms(pct(0.99)), ms(pct(1.0)));
    };
    row("time to first token, request frame → LlmText", &mut client_ttfb);
    row("server's own (request bytes → token bytes)", &mut server_ttfb);
    row("client overhead (target ≤ 1 ms)", &mut overhead);
    row("  of which: frame → request bytes at proxy", &mut request_path);
    row("  of which: token bytes at proxy → LlmText", &mut response_path);
    println!("(the overhead includes the proxy's own forwarding, one hop each way)");
    println!("new connections during the {n} measured requests: {connections}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(events: &[&str]) -> Vec<u8> {
        let mut raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n".to_vec();
        for e in events {
            raw.extend_from_slice(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        raw
    }

    #[test]
    fn the_first_event_with_text_is_found_through_chunked_encoding() {
        let role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\n";
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n";
        let raw = chunked(&[role, text, "data: [DONE]\r\n\r\n"]);
        let end = first_token_end(&raw).expect("found");
        let text_at = raw.windows(text.len()).position(|w| w == text.as_bytes()).unwrap();
        assert_eq!(end, text_at + text.len());
        assert_eq!(first_token_end(&chunked(&[role, "data: [DONE]\n\n"])), None);
    }

    #[test]
    fn the_read_that_completes_the_first_token_gives_its_time() {
        let raw = chunked(&["data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"]);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let ev = |ms, kind| TapEvent { at: at(ms), conn: 0, kind };
        let (a, b) = raw.split_at(raw.len() - 12);
        let events = vec![
            ev(0, TapKind::FromClient(Bytes::from_static(b"POST / HTTP/1.1\r\n\r\n"))),
            ev(40, TapKind::FromServer(Bytes::copy_from_slice(a))),
            ev(55, TapKind::FromServer(Bytes::copy_from_slice(b))),
        ];
        let timing = server_timing(&events).unwrap();
        assert_eq!(timing.first_token_at - timing.request_at, Duration::from_millis(55));
    }
}
