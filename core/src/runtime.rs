//! The one async runtime slowcat runs on: the binary, the benchmarks and the tests.
//!
//! One thread routes every frame. Frame handling is light, and on one thread each hop between
//! processors is a local wake instead of a cross-thread one (`slowcat bench pipeline` measures
//! both). The price is a rule every processor keeps: nothing heavy runs on this thread. Inference
//! (Whisper, ONNX models), disk (LMDB) and anything else that blocks goes to tokio's blocking pool
//! (`spawn_blocking`) or a thread of its own, and reports back with a frame or
//! [`ProcessorContext::waker`](crate::ProcessorContext::waker).
//!
//! `#[tokio::test]` builds exactly this runtime (current thread, I/O and time enabled), so tests
//! run the scheduling that ships; tests must not ask for another flavour.

/// Builds the runtime.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Runs a future to completion on a new runtime (for benchmarks and `main`).
pub fn block_on<F: std::future::Future>(future: F) -> std::io::Result<F::Output> {
    Ok(build()?.block_on(future))
}
