//! Processor settings and the registry of processor kinds.
//!
//! A processor kind is a [`Settings`] type: plain serde data that [`Settings::check`] validates once
//! and [`Settings::build`] turns into the running processor. Kinds are registered by value in a
//! [`Registry`] (the processors crate fills one with its `register_all` list; a test can register
//! its own kinds): no link-time magic, and an unknown type is an error that lists the known ones.

use std::any::Any;

use serde::de::DeserializeOwned;

use crate::processor::{BoxProcessor, BuildContext};

/// A problem with a processor's settings that can be seen before anything starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The settings key at fault, to point at its line in config.toml.
    pub key: Option<&'static str>,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    /// A problem with one key.
    pub fn at(key: &'static str, message: impl Into<String>) -> Self {
        Self { key: Some(key), message: message.into() }
    }

    /// A model file named by `key` is missing: say where it was looked for and how to fetch it.
    pub fn missing_model(key: &'static str, path: &std::path::Path) -> Self {
        Self::at(key, format!("model file {} does not exist; fetch it with `scripts/fetch-models.sh`", path.display()))
    }

    /// The environment variable an `api_key_env` setting names is not set (none when the setting
    /// is empty: local servers need no key).
    pub fn unset_api_key_env(var: &str) -> Option<Self> {
        (!var.is_empty() && std::env::var_os(var).is_none()).then(|| {
            Self::at(
                "api_key_env",
                format!(
                    "environment variable {var} (named by `api_key_env`) is not set; export it, or set \
                     api_key_env = \"\" for a server that needs no key"
                ),
            )
        })
    }
}

/// The API key an `api_key_env` setting names: the variable's value, or none when the setting is
/// empty or the variable unset.
pub fn api_key_from_env(var: &str) -> Option<String> {
    (!var.is_empty()).then(|| std::env::var(var).ok()).flatten()
}

/// Something that must come earlier in the pipeline for a processor's frames to flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Any one of these processor types must come before it.
    pub any_of: &'static [&'static str],
    /// The settings key that creates the need, if one does.
    pub key: Option<&'static str>,
    /// Why, and what to do.
    pub why: &'static str,
}

/// Why a processor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The settings cannot work: the problems [`Settings::check`] found, one per line.
    #[error("{0}")]
    Invalid(String),
    /// Loading a model, opening a device or a database failed.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl BuildError {
    /// A failure to load or open something, keeping its causes (`.map_err(BuildError::other)?`).
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Other(e.into())
    }
}

/// A processor's settings in config.toml: plain serde data (`deny_unknown_fields`, defaults in
/// one place) that `build` validates and turns into the running processor.
pub trait Settings: DeserializeOwned + Send + 'static {
    /// The `type` name in config.toml.
    const TYPE: &'static str;
    /// One line for `slowcat check` and error messages.
    const ABOUT: &'static str;
    /// True for processors that produce frames on their own (a microphone, a WAV reader): a
    /// pipeline without one has nothing to flow.
    const SOURCE: bool = false;

    /// Problems visible without loading anything (missing model files, bad ranges). Runs once,
    /// before [`Settings::build`]; every problem is reported, not only the first.
    fn check(&self, _ctx: &BuildContext) -> Vec<Problem> {
        Vec::new()
    }

    /// Processor types that must come earlier in the pipeline for this one to receive what it
    /// needs (a speech-to-text needs voice activity events).
    fn requires(&self) -> Vec<Requirement> {
        Vec::new()
    }

    /// Loads models, opens files and returns the running processor. Runs on a blocking thread,
    /// and only with settings whose [`Settings::check`] found nothing: `passed` is the proof, which
    /// only this crate can make (call [`Settings::check_and_build`] or build a [`CheckedSettings`]).
    fn build(self, ctx: &BuildContext, passed: Passed) -> Result<BoxProcessor, BuildError>;

    /// Checks the settings and, when they pass, builds the processor; the problems otherwise,
    /// one per line. For callers that hold typed settings (tests, benchmarks).
    fn check_and_build(self, ctx: &BuildContext) -> Result<BoxProcessor, BuildError>
    where
        Self: Sized,
    {
        let problems = Settings::check(&self, ctx);
        if !problems.is_empty() {
            return Err(BuildError::Invalid(describe(&problems)));
        }
        self.build(ctx, Passed(()))
    }
}

/// Proof that a processor's settings passed [`Settings::check`]; only this crate makes one.
#[derive(Debug)]
pub struct Passed(());

/// The problems of one processor's settings as lines: `key: message`.
fn describe(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| match p.key {
            Some(k) => format!("`{k}`: {}", p.message),
            None => p.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Settings with the type erased, as the runtime holds them between parsing and build.
pub trait AnySettings: Send {
    /// See [`Settings::check`].
    fn check(&self, ctx: &BuildContext) -> Vec<Problem>;
    /// See [`Settings::requires`].
    fn requires(&self) -> Vec<Requirement>;
    /// The typed settings, for the runtime to read (the endpoints of the LLM processors).
    fn as_any(&self) -> &dyn Any;
    /// See [`Settings::build`].
    fn build(self: Box<Self>, ctx: &BuildContext, passed: Passed) -> Result<BoxProcessor, BuildError>;
}

impl<S: Settings> AnySettings for S {
    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        Settings::check(self, ctx)
    }
    fn requires(&self) -> Vec<Requirement> {
        Settings::requires(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn build(self: Box<Self>, ctx: &BuildContext, passed: Passed) -> Result<BoxProcessor, BuildError> {
        Settings::build(*self, ctx, passed)
    }
}

/// Parsed settings whose [`Settings::check`] found nothing: ready to build.
pub struct CheckedSettings(Box<dyn AnySettings>);

impl CheckedSettings {
    /// Checks parsed settings: these settings ready to build, or every problem found.
    pub fn check(settings: Box<dyn AnySettings>, ctx: &BuildContext) -> Result<Self, Vec<Problem>> {
        let problems = settings.check(ctx);
        if problems.is_empty() { Ok(Self(settings)) } else { Err(problems) }
    }

    /// Processor types that must come earlier in the pipeline (see [`Settings::requires`]).
    pub fn requires(&self) -> Vec<Requirement> {
        self.0.requires()
    }

    /// The typed settings, when they are of type `S`.
    pub fn get<S: Settings>(&self) -> Option<&S> {
        self.0.as_any().downcast_ref::<S>()
    }

    /// Loads models, opens devices: the running processor. Runs on a blocking thread.
    pub fn build(self, ctx: &BuildContext) -> Result<BoxProcessor, BuildError> {
        self.0.build(ctx, Passed(()))
    }
}

type ParseFn = fn(toml::de::ValueDeserializer<'_>) -> Result<Box<dyn AnySettings>, toml::de::Error>;

/// One registered processor kind.
#[derive(Clone, Copy)]
pub struct Kind {
    /// The `type` name in config.toml.
    pub name: &'static str,
    /// What it does, in one line.
    pub about: &'static str,
    /// Produces frames on its own.
    pub source: bool,
    parse: ParseFn,
}

impl Kind {
    /// The kind for a settings type.
    pub fn of<S: Settings>() -> Self {
        fn parse<S: Settings>(de: toml::de::ValueDeserializer<'_>) -> Result<Box<dyn AnySettings>, toml::de::Error> {
            let settings: S = serde::Deserialize::deserialize(de)?;
            Ok(Box::new(settings))
        }
        Self { name: S::TYPE, about: S::ABOUT, source: S::SOURCE, parse: parse::<S> }
    }

    /// Deserializes this kind's settings; errors keep their position in the file.
    pub fn parse(&self, de: toml::de::ValueDeserializer<'_>) -> Result<Box<dyn AnySettings>, toml::de::Error> {
        (self.parse)(de)
    }
}

/// The processor kinds a runtime knows, by `type` name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: Vec<Kind>,
}

impl Registry {
    /// A registry with no kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the kind of settings type `S` under `S::TYPE`; a later registration of the same
    /// name replaces the earlier one (a test swapping in its own kind).
    pub fn register<S: Settings>(&mut self) -> &mut Self {
        let kind = Kind::of::<S>();
        match self.kinds.iter_mut().find(|k| k.name == kind.name) {
            Some(slot) => *slot = kind,
            None => self.kinds.push(kind),
        }
        self
    }

    /// Every kind, in the order registered (the order `slowcat check` lists them).
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The kind registered under `name`.
    pub fn find(&self, name: &str) -> Option<Kind> {
        self.kinds.iter().find(|k| k.name == name).copied()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.iter().map(|k| k.name)).finish()
    }
}
