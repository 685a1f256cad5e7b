//! Building the processors of a validated config and running the pipeline until end of
//! stream, a fatal error, or Ctrl-C.

use std::time::Duration;

use anyhow::{Context as _, bail};
use slowcat_processors::error::ErrorChain;
use slowcat_processors::{BoxProcessor, Direction, Frame, Pipeline, PipelineOptions};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::metrics::{TurnMetrics, TurnTracker};

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunReport {
    /// True when the user stopped it (Ctrl-C or SIGTERM).
    pub interrupted_by_user: bool,
    /// Processors that did not stop in time.
    pub hung: Vec<String>,
    /// Error frames that reached the end of the pipeline.
    pub errors: Vec<String>,
    /// Metrics of the turns that completed.
    pub turns: Vec<TurnMetrics>,
}

/// Builds every processor (on blocking threads, models load in parallel) and reports all
/// failures at once.
pub async fn build_processors(config: Config) -> anyhow::Result<Vec<(String, BoxProcessor)>> {
    let mut handles = Vec::new();
    for entry in config.processors {
        let ctx = config.build.clone();
        let id = entry.id.clone();
        let ty = entry.kind.name;
        handles.push((id, ty, tokio::task::spawn_blocking(move || entry.settings.build(&ctx))));
    }
    let mut built = Vec::new();
    let mut failures = Vec::new();
    for (id, ty, handle) in handles {
        match handle.await {
            Ok(Ok(p)) => built.push((id, p)),
            Ok(Err(e)) => failures.push(format!("  [processors.{id}] ({ty}): {}", ErrorChain(&e))),
            Err(e) => failures.push(format!("  [processors.{id}] ({ty}): panicked while starting: {e}")),
        }
    }
    if !failures.is_empty() {
        bail!("{} processor(s) could not start:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(built)
}

/// Resolves when the user asks the program to stop (Ctrl-C, or SIGTERM on Unix).
pub(crate) async fn stop_requested() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs a validated config to the end.
pub async fn run(config: Config) -> anyhow::Result<RunReport> {
    let metrics_file = config.metrics_file.clone();
    let ids: Vec<String> = config.processors.iter().map(|p| format!("{}({})", p.id, p.kind.name)).collect();
    info!(pipeline = %ids.join(" → "), "starting");
    let processors = tokio::select! {
        built = build_processors(config) => built?,
        _ = stop_requested() => return Ok(RunReport { interrupted_by_user: true, ..RunReport::default() }),
    };
    run_processors(processors, metrics_file).await
}

/// Runs already built processors until end of stream, a fatal error, or a stop request.
pub async fn run_processors(
    processors: Vec<(String, BoxProcessor)>,
    metrics_file: Option<std::path::PathBuf>,
) -> anyhow::Result<RunReport> {
    let mut pipeline = Pipeline::spawn(processors, PipelineOptions::default());
    pipeline.start().await;
    let mut report = RunReport::default();
    let mut tracker = TurnTracker::new(metrics_file);
    let stop = stop_requested();
    tokio::pin!(stop);
    enum Ending {
        EndOfStream,
        Fatal,
        User,
        Closed,
    }
    let ending = loop {
        tokio::select! {
            _ = &mut stop => break Ending::User,
            out = pipeline.recv() => {
                let Some((frame, dir)) = out else { break Ending::Closed };
                match handle_output(frame, dir, &mut report, &mut tracker) {
                    Some(e) => break e,
                    None => continue,
                }
            }
        }
    };
    fn handle_output(
        frame: Frame,
        dir: Direction,
        report: &mut RunReport,
        tracker: &mut TurnTracker,
    ) -> Option<Ending> {
        match frame {
            Frame::End if dir == Direction::Downstream => return Some(Ending::EndOfStream),
            Frame::Error(e) => {
                report.errors.push(format!("{}: {}", e.source, e.message));
                if e.recoverable {
                    warn!(processor = %e.source, "{}", e.message);
                } else {
                    error!(processor = %e.source, "{}", e.message);
                    return Some(Ending::Fatal);
                }
            }
            Frame::Metrics(m) => {
                tracker.record(&m);
            }
            Frame::Transcription(t) => {
                info!(turn = t.turn, speaker = %t.speaker, text = %t.text, "user said");
                tracker.said(t.turn, &t.text);
            }
            Frame::SpokenReply(r) if dir == Direction::Upstream => {
                tracker.spoken(&r);
            }
            Frame::UserTurnResumed { .. } => tracker.resumed(),
            _ => {}
        }
        None
    }
    let shutdown = match ending {
        Ending::EndOfStream => {
            info!("end of stream; stopping");
            pipeline.finish().await
        }
        Ending::Fatal | Ending::Closed => pipeline.cancel().await,
        Ending::User => {
            info!("stop requested; cancelling");
            report.interrupted_by_user = true;
            pipeline.cancel().await
        }
    };
    for (frame, _) in shutdown.frames {
        match frame {
            Frame::Error(e) => report.errors.push(format!("{}: {}", e.source, e.message)),
            Frame::Metrics(m) => {
                tracker.record(&m);
            }
            Frame::SpokenReply(r) => {
                tracker.spoken(&r);
            }
            _ => {}
        }
    }
    tracker.finish();
    for id in &shutdown.hung {
        error!(processor = %id, "did not stop within the shutdown bound and was abandoned");
    }
    report.hung = shutdown.hung;
    report.turns = std::mem::take(&mut tracker.completed);
    if matches!(ending, Ending::Fatal) {
        let last = report.errors.last().cloned().unwrap_or_default();
        return Err(anyhow::anyhow!("the pipeline stopped on a fatal error: {last}"));
    }
    Ok(report)
}

/// The binary's runtime: the one all of slowcat runs on (see `slowcat_core::runtime` for why one
/// thread routes every frame; `slowcat bench pipeline` measures it).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    slowcat_processors::runtime::build().context("cannot start the async runtime")
}

/// The bound on the whole shutdown after a stop request.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

/// `slowcat check --llm`: whether the LLM server of every `openai_llm` processor answers, and
/// which models it serves. Exit status 3 when one does not answer.
pub async fn check_llm(config: &Config) -> std::process::ExitCode {
    let mut ok = true;
    let mut any = false;
    for (id, url, key_env) in &config.llm_endpoints() {
        any = true;
        let key = (!key_env.is_empty()).then(|| std::env::var(key_env).ok()).flatten();
        match slowcat_processors::llm::probe(url, key.as_deref()).await {
            Ok(models) => println!("[processors.{id}] LLM at {url} answers; models: {}", models.join(", ")),
            Err(e) => {
                ok = false;
                println!("[processors.{id}] LLM at {url} does not answer: {e}");
            }
        }
    }
    if !any {
        println!("no openai_llm processor in the pipeline");
    }
    if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(3) }
}
