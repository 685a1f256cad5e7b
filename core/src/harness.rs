//! Runs one processor or a chain with frames in, and collects the frames out in both
//! directions. It drives the same [`Pipeline`] the binary runs.

use std::time::Duration;

use crate::frame::{Direction, Frame};
use crate::pipeline::{Pipeline, PipelineOptions, Shutdown};
use crate::processor::BoxProcessor;

/// Frames that came out of a pipeline, per direction, lifecycle frames included.
#[derive(Debug, Default)]
pub struct Output {
    /// Out of the last processor, in order.
    pub downstream: Vec<Frame>,
    /// Out of the first processor, in order.
    pub upstream: Vec<Frame>,
    /// Processors that did not stop in time.
    pub hung: Vec<String>,
}

impl Output {
    fn push(&mut self, frame: Frame, dir: Direction) {
        match dir {
            Direction::Downstream => self.downstream.push(frame),
            Direction::Upstream => self.upstream.push(frame),
        }
    }

    /// Downstream frames other than lifecycle and metrics frames.
    pub fn downstream_data(&self) -> Vec<&Frame> {
        self.downstream
            .iter()
            .filter(|f| !matches!(f, Frame::Start | Frame::End | Frame::Cancel | Frame::Metrics(_)))
            .collect()
    }
}

/// A started pipeline under test.
pub struct Harness {
    pipeline: Option<Pipeline>,
    output: Output,
}

impl Harness {
    /// Spawns the processors (ids `p0`, `p1`, …) and sends `Start`.
    pub async fn start(processors: Vec<BoxProcessor>) -> Self {
        let named = processors.into_iter().enumerate().map(|(i, p)| (format!("p{i}"), p)).collect();
        Self::start_with(named, PipelineOptions::default()).await
    }

    /// Spawns named processors with the given options and sends `Start`.
    pub async fn start_with(processors: Vec<(String, BoxProcessor)>, options: PipelineOptions) -> Self {
        let pipeline = Pipeline::spawn(processors, options);
        pipeline.start().await;
        Self { pipeline: Some(pipeline), output: Output::default() }
    }

    /// Runs the processors over `frames`: Start, the frames downstream, End; waits for End to
    /// come out and for the pipeline to stop, and returns everything that came out.
    pub async fn run(processors: Vec<BoxProcessor>, frames: Vec<Frame>) -> Output {
        let h = Self::start(processors).await;
        for f in frames {
            h.send(f).await;
        }
        h.finish(Duration::from_secs(30)).await
    }

    fn pipeline(&self) -> &Pipeline {
        self.pipeline.as_ref().expect("harness already stopped")
    }

    /// Feeds a frame downstream into the first processor.
    pub async fn send(&self, frame: Frame) {
        self.pipeline().send(frame).await;
    }

    /// Feeds a frame upstream into the last processor.
    pub async fn send_upstream(&self, frame: Frame) {
        self.pipeline().send_upstream(frame).await;
    }

    /// Waits up to `timeout` for a frame out of the pipeline matching `pred`; everything that
    /// comes out meanwhile is kept in the output. Returns the matching frame.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Frame, Direction) -> bool,
    ) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pipeline = self.pipeline.as_mut().expect("harness already stopped");
        while let Ok(Some((frame, dir))) = tokio::time::timeout_at(deadline, pipeline.recv()).await {
            let hit = pred(&frame, dir);
            self.output.push(frame.clone(), dir);
            if hit {
                return Some(frame);
            }
        }
        None
    }

    /// Everything that came out so far.
    pub fn output(&self) -> &Output {
        &self.output
    }

    /// Sends End, waits up to `timeout` for it to come out downstream, then stops the pipeline.
    pub async fn finish(mut self, timeout: Duration) -> Output {
        self.send(Frame::End).await;
        self.wait_for(timeout, |f, d| matches!(f, Frame::End) && d == Direction::Downstream).await;
        let shutdown = self.pipeline.take().expect("harness already stopped").finish().await;
        self.absorb(shutdown)
    }

    /// Cancels the pipeline and returns everything that came out.
    pub async fn cancel(mut self) -> Output {
        let shutdown = self.pipeline.take().expect("harness already stopped").cancel().await;
        self.absorb(shutdown)
    }

    fn absorb(mut self, shutdown: Shutdown) -> Output {
        for (f, d) in shutdown.frames {
            self.output.push(f, d);
        }
        self.output.hung = shutdown.hung;
        self.output
    }
}
