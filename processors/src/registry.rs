//! The one list of processor kinds: each registers under its `type` name with one line.

pub use slowcat_core::settings::*;

/// Registers every processor kind of this crate, in the order `slowcat check` lists them.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    registry
        .register::<crate::audio::WavInputSettings>()
        .register::<crate::audio::WavOutputSettings>()
        .register::<crate::basic::PassthroughSettings>()
        .register::<crate::audio::MicSettings>()
        .register::<crate::vad::SileroVadSettings>()
        .register::<crate::vad::WebRtcVadSettings>()
        .register::<crate::stt::WhisperSttSettings>()
        .register::<crate::llm::UserTurnSettings>()
        .register::<crate::memory::StatelessMemorySettings>()
        .register::<crate::llm::OpenAiLlmSettings>()
        .register::<crate::turn::SmartTurnSettings>()
        .register::<crate::tts::PiperSettings>()
        .register::<crate::tts::EspeakTtsSettings>()
        .register::<crate::tts::OpenAiTtsSettings>()
        .register::<crate::audio::SpeakerSettings>()
}

/// A registry holding every processor kind of this crate.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register_all(&mut r);
    r
}
