//! A streamed reply: the response body read as server-sent events, each `data:` event parsed
//! into a [`Chunk`], with bounds on the body's size and on the length of one line.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};

use super::error::{LlmError, chunk_error, stream_error};
use super::http::MAX_REPLY_BYTES;
use super::wire::{Chunk, parse_chunk, truncate};

/// The longest line of a streamed reply: one event's JSON is well under 1 KiB.
const MAX_LINE_BYTES: usize = 256 << 10;
/// How long the end of a finished reply's body may take to arrive for the connection to be reused.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error(transparent)]
    Transport(reqwest::Error),
    #[error("the reply is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the reply has a line longer than {0} bytes")]
    LineTooLong(usize),
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<BodyError>>> + Send>>;

/// The chunks of one streamed reply.
pub(super) struct Chunks {
    events: EventStream,
    url: String,
    content_type: String,
    seen: usize,
}

impl Chunks {
    /// Reads `response`'s body as events; `url` names the server in errors.
    pub(super) fn new(response: reqwest::Response, url: &str, content_type: String) -> Self {
        let events = limited(response.bytes_stream(), MAX_REPLY_BYTES).eventsource();
        Self { events: Box::pin(events), url: url.to_string(), content_type, seen: 0 }
    }

    /// The next chunk; `None` when the body ended (see [`Chunks::ended_early`]).
    pub(super) async fn next(&mut self) -> Option<Result<Chunk, LlmError>> {
        let event = match self.events.next().await? {
            Ok(event) => event,
            Err(e) => return Some(Err(stream_error(&self.url, e))),
        };
        self.seen += 1;
        if event.event == "error" {
            return Some(Err(LlmError::Server { url: self.url.clone(), message: truncate(&event.data, 500) }));
        }
        Some(parse_chunk(&event.data).map_err(|e| chunk_error(&self.url, e)))
    }

    /// The error of a body that ended before the reply was complete.
    pub(super) fn ended_early(&self) -> LlmError {
        let url = self.url.clone();
        if self.seen == 0 {
            let content_type = if self.content_type.is_empty() { "none" } else { &self.content_type };
            LlmError::Malformed {
                url,
                detail: format!("the reply held no server-sent events (content type {content_type:?})"),
            }
        } else {
            LlmError::Disconnected { url, reason: "the stream ended without [DONE]".into() }
        }
    }

    /// Reads what follows `[DONE]` (the end of the chunked body) off the reply path, so the
    /// connection goes back to the pool instead of being closed, and the next request skips a
    /// connect. Bounded in time; the reply's end is not held up by it.
    pub(super) fn drain_in_background(self) {
        let mut events = self.events;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DRAIN_LIMIT, async { while events.next().await.is_some() {} }).await;
        });
    }
}

/// The body's bytes, failing once more than `max` have arrived or a line grows longer than
/// `MAX_LINE_BYTES`. The line bound matters as much: the SSE parser rescans an unfinished line
/// each time bytes arrive, so one endless line would cost time quadratic in its length.
fn limited(
    stream: impl Stream<Item = reqwest::Result<Bytes>>,
    max: usize,
) -> impl Stream<Item = Result<Bytes, BodyError>> {
    let mut seen = 0usize;
    let mut line = 0usize;
    stream.map(move |chunk| {
        let chunk = chunk.map_err(BodyError::Transport)?;
        seen += chunk.len();
        line = match chunk.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            Some(at) => chunk.len() - at - 1,
            None => line + chunk.len(),
        };
        if seen > max {
            Err(BodyError::TooLarge(max))
        } else if line > MAX_LINE_BYTES {
            Err(BodyError::LineTooLong(MAX_LINE_BYTES))
        } else {
            Ok(chunk)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endless_lines_and_endless_replies_are_cut_off() {
        let chunks = |sizes: Vec<(usize, u8)>| {
            futures::stream::iter(sizes.into_iter().map(|(n, b)| Ok::<_, reqwest::Error>(Bytes::from(vec![b; n]))))
        };
        let results: Vec<_> = limited(chunks(vec![(200 << 10, b'x'), (100 << 10, b'x')]), 1 << 20).collect().await;
        assert!(matches!(results[1], Err(BodyError::LineTooLong(_))));
        let lines = (0..20).map(|_| (100 << 10, b'\n')).collect();
        let results: Vec<_> = limited(chunks(lines), 1 << 20).collect().await;
        assert!(results[..10].iter().all(|r| r.is_ok()));
        assert!(matches!(results[10], Err(BodyError::TooLarge(_))));
    }
}
