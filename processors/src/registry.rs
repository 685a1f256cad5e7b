//! The registry of processor kinds: each kind registers under its `type` name with one line in
//! [`kinds`]. No link-time magic: an unknown type is an error that lists these.

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
    /// The settings cannot work (checked in `build`, after deserialization).
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

    /// Problems visible without loading anything (missing model files, bad ranges).
    fn check(&self, _ctx: &BuildContext) -> Vec<Problem> {
        Vec::new()
    }

    /// Processor types that must come earlier in the pipeline for this one to receive what it
    /// needs (a speech-to-text needs voice activity events).
    fn requires(&self) -> Vec<Requirement> {
        Vec::new()
    }

    /// Loads models, opens files and returns the running processor. Runs on a blocking thread.
    fn build(self, ctx: &BuildContext) -> Result<BoxProcessor, BuildError>;
}

/// Settings with the type erased, as the runtime holds them between validation and build.
pub trait AnySettings: Send {
    /// See [`Settings::check`].
    fn check(&self, ctx: &BuildContext) -> Vec<Problem>;
    /// See [`Settings::requires`].
    fn requires(&self) -> Vec<Requirement>;
    /// See [`Settings::build`].
    fn build(self: Box<Self>, ctx: &BuildContext) -> Result<BoxProcessor, BuildError>;
}

impl<S: Settings> AnySettings for S {
    fn check(&self, ctx: &BuildContext) -> Vec<Problem> {
        Settings::check(self, ctx)
    }
    fn requires(&self) -> Vec<Requirement> {
        Settings::requires(self)
    }
    fn build(self: Box<Self>, ctx: &BuildContext) -> Result<BoxProcessor, BuildError> {
        Settings::build(*self, ctx)
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

/// Every processor kind, in the order `slowcat check` lists them.
pub fn kinds() -> Vec<Kind> {
    vec![
        Kind::of::<crate::audio::WavInputSettings>(),
        Kind::of::<crate::audio::WavOutputSettings>(),
        Kind::of::<crate::basic::PassthroughSettings>(),
        Kind::of::<crate::audio::MicSettings>(),
        Kind::of::<crate::vad::SileroVadSettings>(),
        Kind::of::<crate::vad::WebRtcVadSettings>(),
        Kind::of::<crate::stt::WhisperSttSettings>(),
        Kind::of::<crate::llm::UserTurnSettings>(),
        Kind::of::<crate::memory::StatelessMemorySettings>(),
        Kind::of::<crate::llm::OpenAiLlmSettings>(),
        Kind::of::<crate::turn::SmartTurnSettings>(),
        Kind::of::<crate::tts::PiperSettings>(),
        Kind::of::<crate::tts::EspeakTtsSettings>(),
        Kind::of::<crate::tts::OpenAiTtsSettings>(),
        Kind::of::<crate::audio::SpeakerSettings>(),
    ]
}

/// The kind registered under `name`.
pub fn find(name: &str) -> Option<Kind> {
    kinds().into_iter().find(|k| k.name == name)
}
