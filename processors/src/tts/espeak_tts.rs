//! `espeak_tts`: the espeak-ng voice, a light fallback that needs no model file.
//!
//! Synthesis runs the `espeak-ng --stdout` command, one process per segment: it is a few
//! milliseconds of work, the process is killed when an interruption drops the synthesis, and the
//! library's synthesis API (callbacks into global state) stays out of this process.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::TtsError;
use super::pcm::PcmStream;
use super::piper::check_stream;
use super::stream::{AudioOut, StreamOptions, StreamingTts, Synthesizer};
use super::text::SplitOptions;
use crate::processor::{BoxProcessor, BuildContext};
use crate::registry::{BuildError, Problem, Settings};

/// Settings of `espeak_tts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EspeakTtsSettings {
    /// The espeak-ng voice (`espeak-ng --voices` lists them), e.g. `en-us`, `en-gb`, `de`.
    pub voice: String,
    /// Speaking rate in words per minute (espeak's `-s`, 80 to 450).
    pub rate: u32,
    /// Pitch, 0 to 99 (espeak's `-p`).
    pub pitch: u32,
    /// The espeak-ng program: a name looked up in PATH, or a path.
    pub command: PathBuf,
    /// A sentence longer than this many characters is cut at a clause boundary.
    pub max_chars: usize,
    /// Longest audio frame pushed, in milliseconds.
    pub chunk_ms: u32,
}

impl Default for EspeakTtsSettings {
    fn default() -> Self {
        Self {
            voice: "en-us".into(),
            rate: 175,
            pitch: 50,
            command: PathBuf::from("espeak-ng"),
            max_chars: SplitOptions::default().max_chars,
            chunk_ms: 40,
        }
    }
}

/// Finds a program the way the shell would.
fn find_program(command: &Path) -> Option<PathBuf> {
    if command.components().count() > 1 {
        return command.is_file().then(|| command.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(command)).find(|p| p.is_file())
}

impl Settings for EspeakTtsSettings {
    const TYPE: &'static str = "espeak_tts";
    const ABOUT: &'static str = "speaks LLM text sentence by sentence with espeak-ng (robotic, tiny, no model file)";

    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if find_program(&ctx.config_path(&self.command)).is_none() && find_program(&self.command).is_none() {
            problems.push(Problem::at(
                "command",
                format!(
                    "{} not found; install espeak-ng (Debian: `apt-get install espeak-ng`, or scripts/setup-system.sh)",
                    self.command.display()
                ),
            ));
        }
        if !(80..=450).contains(&self.rate) {
            problems.push(Problem::at("rate", "`rate` must be between 80 and 450 words per minute"));
        }
        if self.pitch > 99 {
            problems.push(Problem::at("pitch", "`pitch` must be between 0 and 99"));
        }
        if self.voice.trim().is_empty() || self.voice.starts_with('-') {
            problems.push(Problem::at("voice", "`voice` must name an espeak-ng voice, e.g. \"en-us\""));
        }
        problems.extend(check_stream(self.max_chars, self.chunk_ms));
        problems
    }

    fn build(self, ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        let command = find_program(&ctx.config_path(&self.command))
            .or_else(|| find_program(&self.command))
            .ok_or_else(|| BuildError::Invalid(format!("{} not found; install espeak-ng", self.command.display())))?;
        // Fail now, not at the first reply, when the voice does not exist.
        let out = std::process::Command::new(&command)
            .args(["-q", "-v", &self.voice, "x"])
            .output()
            .map_err(|source| BuildError::other(TtsError::Run { program: command.clone(), source }))?;
        if !out.status.success() {
            return Err(BuildError::Invalid(format!(
                "espeak-ng cannot use voice {:?}: {}; `espeak-ng --voices` lists them",
                self.voice,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let opts = StreamOptions {
            split: SplitOptions { max_chars: self.max_chars, first_clause_words: 0, first_max_words: 0 },
            chunk_ms: self.chunk_ms,
        };
        let synth = Espeak { command, voice: self.voice, rate: self.rate, pitch: self.pitch };
        Ok(Box::new(StreamingTts::new(synth, opts)))
    }
}

/// The espeak-ng synthesizer.
pub struct Espeak {
    command: PathBuf,
    voice: String,
    rate: u32,
    pitch: u32,
}

#[async_trait]
impl Synthesizer for Espeak {
    async fn synthesize(&mut self, text: &str, out: &mut AudioOut<'_>) -> Result<(), TtsError> {
        let pipe = |source| TtsError::Pipe { program: self.command.clone(), source };
        let mut child = tokio::process::Command::new(&self.command)
            .args(["--stdout", "-v", &self.voice, "-s", &self.rate.to_string(), "-p", &self.pitch.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // An interruption drops this future: the process goes with it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| TtsError::Run { program: self.command.clone(), source })?;
        // Text on stdin, so a segment starting with "-" is never read as an option.
        // Both are piped above, so they are there.
        let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(pipe(std::io::Error::other("espeak-ng's stdin or stdout is not piped")));
        };
        stdin.write_all(text.as_bytes()).await.map_err(pipe)?;
        drop(stdin);
        let mut pcm = PcmStream::wav();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = stdout.read(&mut buf).await.map_err(pipe)?;
            if n == 0 {
                break;
            }
            let samples = pcm.push(&buf[..n])?;
            if let Some(format) = pcm.format()
                && !samples.is_empty()
            {
                out.push(&samples, format.sample_rate).await;
            }
        }
        let result = child.wait_with_output().await.map_err(pipe)?;
        if !result.status.success() {
            let stderr = String::from_utf8_lossy(&result.stderr).trim().to_string();
            return Err(TtsError::EspeakFailed { status: result.status, stderr });
        }
        Ok(())
    }
}
