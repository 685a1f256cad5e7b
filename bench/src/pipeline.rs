//! `slowcat bench pipeline`: the cost of the runtime itself, with pass-through processors.

use std::time::{Duration, Instant};

use slowcat_processors::basic::Passthrough;
use slowcat_processors::{BoxProcessor, Direction, Frame, Pipeline, PipelineOptions};

use crate::host::{load_average, thread_cpu_time};
use crate::stats::percentile;

fn chain(n: usize) -> Pipeline {
    let procs: Vec<(String, BoxProcessor)> =
        (0..n).map(|i| (format!("pass{i}"), Box::new(Passthrough) as BoxProcessor)).collect();
    Pipeline::spawn(procs, PipelineOptions::default())
}

/// Frames per second through `n` processors, of wall-clock time and of on-CPU time: a producer
/// task sends `frames` data frames while the output is drained.
async fn throughput(n: usize, frames: usize) -> (f64, Option<f64>) {
    let mut p = chain(n);
    p.start().await;
    let _ = p.recv().await; // Start
    let started = Instant::now();
    let cpu_started = thread_cpu_time();
    let head = p.sender_for_bench();
    let producer = tokio::spawn(async move {
        let text: std::sync::Arc<str> = "x".into();
        for _ in 0..frames {
            head.downstream(Frame::LlmText(text.to_string())).await;
        }
    });
    let mut got = 0;
    while got < frames {
        match p.recv().await {
            Some((Frame::LlmText(_), Direction::Downstream)) => got += 1,
            Some(_) => {}
            None => break,
        }
    }
    let elapsed = started.elapsed();
    let cpu = thread_cpu_time().zip(cpu_started).map(|(end, start)| end.saturating_sub(start));
    let _ = producer.await;
    let _ = p.cancel().await;
    (got as f64 / elapsed.as_secs_f64(), cpu.map(|c| got as f64 / c.as_secs_f64()))
}

/// One frame at a time through `n` processors: p50 and p99 of the round trip.
async fn latency(n: usize, samples: usize) -> (Duration, Duration) {
    let mut p = chain(n);
    p.start().await;
    let _ = p.recv().await;
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 {
        let t = Instant::now();
        p.send(Frame::LlmText(String::new())).await;
        while !matches!(p.recv().await, Some((Frame::LlmText(_), _)) | None) {}
        if i >= samples / 10 {
            times.push(t.elapsed());
        }
    }
    let _ = p.cancel().await;
    times.sort();
    (percentile(&times, 0.5).unwrap_or_default(), percentile(&times, 0.99).unwrap_or_default())
}

/// Prints throughput and latency for chains of 1, 6 and 20 pass-through processors.
pub async fn pipeline(frames: usize, samples: usize) {
    println!("slowcat bench pipeline: {frames} frames per throughput run, {samples} latency samples");
    if let Some(load) = load_average() {
        println!("load average at start: {load} (on-CPU: frames per second the routing thread ran)");
    }
    println!("{:>10} {:>14} {:>16} {:>12} {:>12}", "processors", "frames/s", "on-CPU frames/s", "p50 µs", "p99 µs");
    for n in [1, 6, 20] {
        let (fps, cpu_fps) = throughput(n, frames).await;
        let (p50, p99) = latency(n, samples).await;
        let cpu_fps = cpu_fps.map_or_else(|| "-".to_string(), |f| format!("{f:.0}"));
        println!(
            "{:>10} {:>14.0} {:>16} {:>12.1} {:>12.1}",
            n,
            fps,
            cpu_fps,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
}
