//! Loading ONNX Runtime (dynamically, from the library `scripts/fetch-models.sh` puts in
//! `models/`) and building sessions. Shared by Silero VAD, Smart Turn and Piper.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow};
use ort::environment::Environment;
use ort::session::Session;

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Where the ONNX Runtime library is looked for: `ORT_DYLIB_PATH` when set, else the library
/// in the models directory.
pub fn runtime_library(models_dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let name = if cfg!(target_os = "macos") { "libonnxruntime.dylib" } else { "libonnxruntime.so" };
    models_dir.join(name)
}

/// The process-wide ONNX Runtime environment, loaded on first use. The first caller's models
/// directory decides which library is loaded.
pub fn environment(models_dir: &Path) -> anyhow::Result<Environment> {
    let result = ENVIRONMENT.get_or_init(|| {
        let lib = runtime_library(models_dir);
        if !lib.exists() {
            return Err(format!(
                "the ONNX Runtime library {} does not exist; fetch it with `scripts/fetch-models.sh`",
                lib.display()
            ));
        }
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("slowcat")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    });
    result.clone().map_err(|e| anyhow!(e))
}

/// Loads an ONNX model with `threads` intra-op threads (ONNX Runtime's defaults otherwise,
/// spinning threads included).
pub fn session(models_dir: &Path, model: &Path, threads: usize) -> anyhow::Result<Session> {
    session_with(models_dir, model, &SessionOptions { threads, ..SessionOptions::default() })
}

/// What a session's idle intra-op threads do while they wait for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spin {
    /// Spin-wait, during a run and for a while after it (ONNX Runtime's default).
    Always,
    /// Spin-wait between the operators of a run, and sleep as soon as the run ends: a run keeps
    /// its cores against a lower-priority process (the LLM server), and nothing spins between runs.
    DuringRuns,
    /// Sleep at once. Each operator then wakes the threads again, and a process holding the cores
    /// in between (the LLM server) delays every wake-up.
    Never,
}

/// How a session runs; the defaults are ONNX Runtime's (one thread aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Intra-op threads.
    pub threads: usize,
    /// What idle intra-op threads do.
    pub spin: Spin,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { threads: 1, spin: Spin::Always }
    }
}

/// Loads an ONNX model with `options`.
pub fn session_with(models_dir: &Path, model: &Path, options: &SessionOptions) -> anyhow::Result<Session> {
    let env = environment(models_dir)?;
    let mut builder = Session::builder(&env).map_err(|e| anyhow!("{e}"))?;
    builder = builder
        .with_intra_threads(options.threads.max(1))
        .map_err(|e| anyhow!("{e}"))?
        .with_inter_threads(1)
        .map_err(|e| anyhow!("{e}"))?;
    builder = match options.spin {
        Spin::Always => builder,
        Spin::DuringRuns => {
            builder.with_config_entry("session.force_spinning_stop", "1").map_err(|e| anyhow!("{e}"))?
        }
        Spin::Never => builder.with_intra_op_spinning(false).map_err(|e| anyhow!("{e}"))?,
    };
    builder
        .commit_from_file(model)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot load ONNX model {}", model.display()))
}
