//! Loading ONNX Runtime (dynamically, from the library `scripts/fetch-models.sh` puts in
//! `models/`) and building sessions. Shared by Silero VAD, Smart Turn and Piper.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;

/// Why ONNX Runtime or a model could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OnnxError {
    /// The runtime library is not where it is looked for.
    #[error("the ONNX Runtime library {} does not exist; fetch it with `scripts/fetch-models.sh`", .0.display())]
    MissingRuntime(PathBuf),
    /// The runtime library is there but would not load.
    #[error("cannot load ONNX Runtime from {}: {message}", .library.display())]
    LoadRuntime {
        /// The library file.
        library: PathBuf,
        /// ONNX Runtime's words.
        message: String,
    },
    /// The runtime loaded but its environment would not start.
    #[error("cannot start ONNX Runtime: {0}")]
    StartRuntime(String),
    /// Setting up a session (threads, spinning) failed.
    #[error("cannot set up an ONNX session for {}: {message}", .model.display())]
    Session {
        /// The model the session was for.
        model: PathBuf,
        /// ONNX Runtime's words.
        message: String,
    },
    /// The model file would not load.
    #[error("cannot load ONNX model {}: {message}", .model.display())]
    Model {
        /// The model file.
        model: PathBuf,
        /// ONNX Runtime's words (its errors hold the builder, so they are kept as text).
        message: String,
    },
}

// The first load's outcome, kept for every later caller: the runtime loads once per process.
static ENVIRONMENT: OnceLock<Result<Environment, OnnxError>> = OnceLock::new();

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
pub fn environment(models_dir: &Path) -> Result<Environment, OnnxError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let lib = runtime_library(models_dir);
        if !lib.exists() {
            return Err(OnnxError::MissingRuntime(lib));
        }
        ort::init_from(&lib)
            .map_err(|e| OnnxError::LoadRuntime { library: lib.clone(), message: e.to_string() })?
            .with_name("slowcat")
            .build()
            .map_err(|e| OnnxError::StartRuntime(e.to_string()))
    });
    result.clone()
}

/// Loads an ONNX model with `threads` intra-op threads (ONNX Runtime's defaults otherwise,
/// spinning threads included).
pub fn session(models_dir: &Path, model: &Path, threads: usize) -> Result<Session, OnnxError> {
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
pub fn session_with(models_dir: &Path, model: &Path, options: &SessionOptions) -> Result<Session, OnnxError> {
    let env = environment(models_dir)?;
    let setup = |e: ort::Error<_>| OnnxError::Session { model: model.to_path_buf(), message: e.to_string() };
    let mut builder = Session::builder(&env)
        .map_err(|e| OnnxError::Session { model: model.to_path_buf(), message: e.to_string() })?;
    builder =
        builder.with_intra_threads(options.threads.max(1)).map_err(setup)?.with_inter_threads(1).map_err(setup)?;
    builder = match options.spin {
        Spin::Always => builder,
        Spin::DuringRuns => builder.with_config_entry("session.force_spinning_stop", "1").map_err(setup)?,
        Spin::Never => builder.with_intra_op_spinning(false).map_err(setup)?,
    };
    builder.commit_from_file(model).map_err(|e| OnnxError::Model { model: model.to_path_buf(), message: e.to_string() })
}
