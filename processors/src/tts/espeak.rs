//! Text to IPA phonemes with the system libespeak-ng, for Piper.
//!
//! The library is loaded at run time (libloading) rather than linked: a pipeline without Piper
//! (OpenAI-compatible TTS, WAV output only) then runs on a machine without espeak-ng, and a
//! missing library is a clear error when a Piper voice is built instead of a loader failure
//! before `main`. Only three C functions are used. espeak-ng keeps global state and is not
//! thread-safe, so every call goes through one process-wide mutex.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::Mutex;

use super::text;

/// Why espeak-ng could not phonemize.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EspeakError {
    /// The library loaded but lacks a function slowcat calls (a version before 1.49).
    #[error("espeak-ng ({library}) lacks {function}: {reason}; install espeak-ng 1.49 or newer")]
    Symbol {
        /// The library file.
        library: &'static str,
        /// The missing function.
        function: &'static str,
        /// The loader's words.
        reason: String,
    },
    /// The library loaded but its data is missing.
    #[error(
        "espeak-ng ({0}) could not start: its data directory is missing; install the espeak-ng-data package or set \
         ESPEAK_DATA_PATH"
    )]
    NoData(&'static str),
    /// No library file loaded.
    #[error(
        "cannot load the espeak-ng library ({0}); install it (Debian: `apt-get install libespeak-ng1 espeak-ng-data`, \
         or run scripts/setup-system.sh)"
    )]
    NotInstalled(String),
    /// The voice name cannot be passed to C.
    #[error("voice name {0:?} contains a NUL byte")]
    NulInVoice(String),
    /// espeak-ng does not know the voice.
    #[error("espeak-ng has no voice {voice:?} (error {code}); `espeak-ng --voices` lists them")]
    NoVoice {
        /// The voice asked for.
        voice: String,
        /// espeak-ng's error code.
        code: c_int,
    },
}

/// `espeak_AUDIO_OUTPUT::AUDIO_OUTPUT_SYNCHRONOUS`: no audio thread, no sound device.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakINITIALIZE_DONT_EXIT`: return an error instead of exiting when the data is missing.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
/// `espeakCHARS_UTF8`.
const CHARS_UTF8: c_int = 1;
/// `espeakPHONEMES_IPA`: IPA as UTF-8 instead of espeak's ASCII phoneme names.
const PHONEMES_IPA: c_int = 0x02;

type InitializeFn = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetVoiceByNameFn = unsafe extern "C" fn(*const c_char) -> c_int;
type TextToPhonemesFn = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;

struct Api {
    set_voice_by_name: SetVoiceByNameFn,
    text_to_phonemes: TextToPhonemesFn,
    /// Keeps the functions above valid.
    _lib: libloading::Library,
}

struct State {
    api: Option<Api>,
    voice: Option<String>,
}

static ESPEAK: Mutex<State> = Mutex::new(State { api: None, voice: None });

/// File names tried in turn: the versioned name is what the runtime package installs; the bare
/// one comes with the -dev package.
const LIBRARY_NAMES: &[&str] = if cfg!(target_os = "macos") {
    &["libespeak-ng.1.dylib", "libespeak-ng.dylib", "/opt/homebrew/lib/libespeak-ng.dylib"]
} else {
    &["libespeak-ng.so.1", "libespeak-ng.so"]
};

fn load() -> Result<Api, EspeakError> {
    let mut errors = Vec::new();
    for name in LIBRARY_NAMES {
        // SAFETY: loading libespeak-ng runs no initialisation code with preconditions.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => {
                // SAFETY: the signatures match espeak-ng's speak_lib.h (1.49 to 1.52).
                let symbol = |function: &'static str| {
                    move |e: libloading::Error| EspeakError::Symbol { library: name, function, reason: e.to_string() }
                };
                let api = unsafe {
                    let initialize: InitializeFn =
                        *lib.get(b"espeak_Initialize\0").map_err(symbol("espeak_Initialize"))?;
                    let set_voice_by_name: SetVoiceByNameFn =
                        *lib.get(b"espeak_SetVoiceByName\0").map_err(symbol("espeak_SetVoiceByName"))?;
                    let text_to_phonemes: TextToPhonemesFn =
                        *lib.get(b"espeak_TextToPhonemes\0").map_err(symbol("espeak_TextToPhonemes"))?;
                    let rate = initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), INITIALIZE_DONT_EXIT);
                    if rate <= 0 {
                        return Err(EspeakError::NoData(name));
                    }
                    Api { set_voice_by_name, text_to_phonemes, _lib: lib }
                };
                return Ok(api);
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(EspeakError::NotInstalled(errors.join("; ")))
}

fn with_voice<T>(voice: &str, f: impl FnOnce(&Api) -> Result<T, EspeakError>) -> Result<T, EspeakError> {
    // A panic inside espeak would already have aborted; a poisoned lock holds valid state.
    let mut state = ESPEAK.lock().unwrap_or_else(|p| p.into_inner());
    if state.api.is_none() {
        state.api = Some(load()?);
    }
    let State { api, voice: current } = &mut *state;
    let api = api.as_ref().expect("loaded above");
    if current.as_deref() != Some(voice) {
        let name = CString::new(voice).map_err(|_| EspeakError::NulInVoice(voice.to_string()))?;
        // SAFETY: a valid C string; the library is initialised and the lock is held.
        let err = unsafe { (api.set_voice_by_name)(name.as_ptr()) };
        if err != 0 {
            // espeak may have half-switched; make the next call set the voice again.
            *current = None;
            return Err(EspeakError::NoVoice { voice: voice.to_string(), code: err });
        }
        *current = Some(voice.to_string());
    }
    f(api)
}

/// Checks that the library loads and knows `voice`.
pub fn check_voice(voice: &str) -> Result<(), EspeakError> {
    with_voice(voice, |_| Ok(()))
}

/// IPA phonemes of a text without punctuation marks of its own, as espeak-ng gives them (it
/// splits at punctuation and drops it; clauses come back separated by spaces).
pub fn phonemes_raw(text: &str, voice: &str) -> Result<String, EspeakError> {
    let input = CString::new(text.replace('\0', " ")).expect("NUL bytes were replaced");
    with_voice(voice, |api| {
        let mut out = String::new();
        let mut ptr: *const c_void = input.as_ptr().cast();
        // espeak advances `ptr` clause by clause and sets it to NULL at the end; the bound is
        // a guard against a library that never does.
        for _ in 0..=text.len() {
            if ptr.is_null() {
                break;
            }
            // SAFETY: `ptr` points into `input`, which outlives the loop; the lock is held.
            let phonemes = unsafe { (api.text_to_phonemes)(&mut ptr, CHARS_UTF8, PHONEMES_IPA) };
            if phonemes.is_null() {
                break;
            }
            // SAFETY: espeak returns a NUL-terminated string valid until its next call.
            let piece = unsafe { CStr::from_ptr(phonemes) }.to_string_lossy();
            let piece = piece.trim();
            if !piece.is_empty() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(piece);
            }
        }
        Ok(strip_language_switches(&out))
    })
}

/// espeak marks words it reads with another language's rules, e.g. "(fr)"; Piper voices have no
/// such phonemes.
fn strip_language_switches(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('(') {
        out.push_str(&rest[..open]);
        match rest[open..].find(')') {
            Some(close) if rest[open + 1..open + close].chars().all(|c| c.is_ascii_alphabetic() || c == '-') => {
                rest = &rest[open + close + 1..];
            }
            _ => {
                out.push('(');
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// IPA phonemes of a segment with its punctuation kept: split into clauses, each clause
/// phonemized, and its closing mark put back ("həlˈoʊ, wˈɜːld.").
pub fn phonemize(text: &str, voice: &str) -> Result<String, EspeakError> {
    let mut out = String::new();
    for (clause, punct) in text::clauses(text) {
        let phonemes = phonemes_raw(&clause, voice)?;
        if phonemes.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&phonemes);
        if let Some(p) = punct {
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_survives_phonemization() {
        let p = phonemize("Hello, world. How are you? Help; top: fine!", "en-us").expect("espeak-ng is installed");
        assert_eq!(p.matches(',').count(), 1, "{p}");
        assert!(p.contains("wˈɜːld."), "{p}");
        assert!(p.ends_with('!'), "{p}");
        assert!(p.contains('?') && p.contains(';') && p.contains(':'), "{p}");
    }

    #[test]
    fn an_unknown_voice_is_a_clear_error() {
        let e = phonemes_raw("hello", "no-such-voice").unwrap_err().to_string();
        assert!(e.contains("no-such-voice") && e.contains("--voices"), "{e}");
        // The library is still usable afterwards.
        assert!(phonemes_raw("hello", "en-us").unwrap().contains("həl"));
    }

    #[test]
    fn language_switch_marks_are_removed() {
        assert_eq!(strip_language_switches("a (fr)bɔ̃ʒuʁ(en) b (x y)"), "a bɔ̃ʒuʁ b (x y)");
    }
}
