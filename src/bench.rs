//! The assistant `slowcat bench conversation` and `soak` measure: config.toml as the runtime
//! loads it, its microphone and speaker swapped for the benchmark's WAV files. The benchmarks
//! themselves are in slowcat-bench, which asks for the assistant through
//! [`Assistant`](slowcat_bench::conversation::Assistant) since it cannot read config.toml itself.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use slowcat_bench::conversation::{Assistant, Prepared, Rewiring};
use slowcat_processors::Settings as _;
use slowcat_processors::audio::{WavInputSettings, WavOutputSettings};

use crate::config::{self, Override, Rewire};

/// The assistant to measure: a config file, changes to it, and optionally another LLM server.
#[derive(Debug, Clone)]
pub struct AssistantConfig {
    /// config.toml.
    pub config: PathBuf,
    /// `--set` changes.
    pub overrides: Vec<Override>,
    /// Base URL for every `openai_llm` processor.
    pub llm_url: Option<String>,
}

impl AssistantConfig {
    /// The config with its microphone and speaker replaced as `run` says, its data in
    /// `run.data_dir`, plus `extra` changes (before the user's own).
    fn load(&self, run: &Rewiring, extra: &[Override]) -> anyhow::Result<config::Config> {
        let mut overrides: Vec<Override> =
            vec![format!("data_dir={:?}", run.data_dir.to_string_lossy()).parse().map_err(anyhow::Error::msg)?];
        overrides.extend_from_slice(extra);
        overrides.extend_from_slice(&self.overrides);
        let rewire = Rewire {
            input: Some(run.input.paths.first().cloned().context("no spoken question to play")?),
            output: Some(run.output.path.clone()),
            llm_url: self.llm_url.clone(),
        };
        let mut cfg = config::load(&self.config, &overrides, &rewire).map_err(|e| anyhow!("{e}"))?;
        let name = self.config.display();
        let input_at = cfg
            .processors
            .iter()
            .position(|p| p.kind.name == WavInputSettings::TYPE)
            .with_context(|| format!("{name} has no `mic` (or `wav_input`) for the spoken questions to replace"))?;
        let output_at = cfg
            .processors
            .iter()
            .rposition(|p| p.kind.name == WavOutputSettings::TYPE)
            .with_context(|| format!("{name} has no `speaker` (or `wav_output`) for a WAV file to replace"))?;
        // Rewire gives one input file and an output that reports "stopped speaking" as soon as the
        // reply is written; the benchmarks need the scripted list and, in real time, a
        // loudspeaker's timing.
        let checked = |s: Box<dyn slowcat_processors::registry::AnySettings>,
                       build: &slowcat_processors::BuildContext| {
            slowcat_processors::CheckedSettings::check(s, build).map_err(|problems| {
                let lines: Vec<String> = problems.into_iter().map(|p| p.message).collect();
                anyhow!("{}", lines.join("; "))
            })
        };
        cfg.processors[input_at].settings = checked(Box::new(run.input.clone()), &cfg.build)?;
        cfg.processors[output_at].settings = checked(Box::new(run.output.clone()), &cfg.build)?;
        Ok(cfg)
    }
}

impl Assistant for AssistantConfig {
    fn config_path(&self) -> &Path {
        &self.config
    }

    fn llm_url(&self) -> Option<&str> {
        self.llm_url.as_deref()
    }

    /// The models directory the config names (loaded with its devices as they are).
    fn models_dir(&self) -> anyhow::Result<PathBuf> {
        let cfg = config::load(&self.config, &self.overrides, &Rewire::default()).map_err(|e| anyhow!("{e}"))?;
        Ok(cfg.build.models_dir)
    }

    fn prepare(&self, run: &Rewiring) -> anyhow::Result<Prepared> {
        let extra: Vec<Override> = match run.max_tokens {
            None => Vec::new(),
            // The LLM processors' ids are the config's: load it once to learn them.
            Some(max_tokens) => self
                .load(run, &[])?
                .llm_endpoints()
                .iter()
                .map(|(id, _, _)| {
                    format!("processors.{id}.max_tokens={max_tokens}").parse().map_err(anyhow::Error::msg)
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let cfg = self.load(run, &extra)?;
        let ids: Vec<String> = cfg.processors.iter().map(|p| format!("{}({})", p.id, p.kind.name)).collect();
        Ok(Prepared { description: ids.join(" → "), build: Box::pin(crate::app::build_processors(cfg)) })
    }
}
