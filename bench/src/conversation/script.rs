//! The scripted input of the whole-assistant benchmarks: what the user says, spoken by Piper or
//! recorded from real people, and the text turns of the history benchmark.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use slowcat_processors::audio::WavOutputSettings;
use slowcat_processors::harness::Harness;
use slowcat_processors::tts::PiperSettings;
use slowcat_processors::{BuildContext, Frame, Settings as _};

/// The spoken questions: short, varied, each a complete sentence (so Smart Turn ends the turn
/// without waiting for its timeout). The second names the user and the last asks for it back.
pub const QUESTIONS: &[&str] = &[
    "What is the capital of France?",
    "My name is Alice, and I live in a small town by the sea.",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "How do bees make honey?",
    "What is two plus two?",
    "Tell me a fun fact about the moon.",
    "How far away is the sun from the earth?",
    "Recommend a good book for a rainy afternoon.",
    "Do you remember what my name is?",
];

/// The spoken questions of `slowcat bench tools`: each makes a model that calls tools call one.
pub const TOOL_QUESTIONS: &[&str] =
    &["What is 1234 times 5678?", "What time is it in Tokyo?", "What is 15 percent of 80?", "What day is it today?"];

/// What the user says in `slowcat bench conversation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Speech {
    /// [`QUESTIONS`], spoken by the assistant's own Piper voice.
    Piper,
    /// Recordings of real people: the set in tests/speech (scripts/fetch-speech.sh).
    Human,
}

/// The human speech set's recordings that make a turn each, with what is said in them, in the
/// order of tests/speech/manifest.tsv (fetched into the cache by scripts/fetch-speech.sh when it
/// is not there yet).
pub fn human_utterances() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let repo = repo_dir();
    let manifest = repo.join("tests/speech/manifest.tsv");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {} (the human speech set's list)", manifest.display()))?;
    let dir = slowcat_cache().join("speech");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("name\t") && !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(name), Some(words)) = (cols.first(), cols.last()) else { continue };
        out.push((dir.join(format!("{name}.wav")), words.to_string()));
    }
    if out.iter().any(|(p, _)| !p.is_file()) {
        let script = repo.join("scripts/fetch-speech.sh");
        eprintln!("fetching the human speech set with {}", script.display());
        let status = std::process::Command::new(&script).status().context("cannot run scripts/fetch-speech.sh")?;
        if !status.success() {
            bail!("scripts/fetch-speech.sh failed ({status}); see its output above");
        }
    }
    Ok(out)
}

/// The repository: the speech set's list and its fetch script are there. The current directory
/// when it is a checkout (a binary built elsewhere, CI's clone, still finds them), else the one
/// this crate was built from.
fn repo_dir() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir()
        && cwd.join("tests/speech/manifest.tsv").is_file()
    {
        return cwd;
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_path_buf()
}

/// Where generated test speech is kept: `$SLOWCAT_CACHE/bench` or `~/.cache/slowcat/bench`.
pub fn cache_dir() -> PathBuf {
    slowcat_cache().join("bench")
}

/// slowcat's cache directory: `SLOWCAT_CACHE`, else `~/.cache/slowcat`.
fn slowcat_cache() -> PathBuf {
    std::env::var_os("SLOWCAT_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/slowcat")))
        .unwrap_or_else(|| std::env::temp_dir().join("slowcat"))
}

/// FNV-1a: a stable file name for a text (std's hasher may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The questions as 16 kHz WAV files, spoken by Piper (the default voice) the first time and
/// cached in [`cache_dir`].
pub async fn spoken_questions(models_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    spoken(models_dir, QUESTIONS).await
}

/// `texts` as 16 kHz WAV files spoken by Piper, made once and cached in [`cache_dir`].
pub async fn spoken(models_dir: &Path, texts: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
    let voice = PiperSettings::default().model;
    let mut paths = Vec::with_capacity(texts.len());
    for text in texts {
        let path = dir.join(format!("q-{:016x}.wav", fnv1a(&format!("{}\n{text}", voice.display()))));
        if !path.is_file() {
            eprintln!("speaking {text:?} with Piper into {}", path.display());
            say(models_dir, text, &path).await.with_context(|| format!("cannot speak {text:?} with Piper"))?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Speaks `text` with Piper into a 16 kHz WAV file (written aside, then renamed, so an
/// interrupted run never leaves half a question in the cache).
async fn say(models_dir: &Path, text: &str, path: &Path) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let partial = path.with_extension("partial.wav");
    let ctx = BuildContext {
        models_dir: models_dir.to_path_buf(),
        data_dir: scratch.path().to_path_buf(),
        config_dir: scratch.path().to_path_buf(),
    };
    let out = WavOutputSettings { path: partial.clone(), ..WavOutputSettings::default() };
    let (piper, out) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((PiperSettings::default().check_and_build(&ctx)?, out.check_and_build(&ctx)?))
    })
    .await??;
    let h = Harness::start(vec![piper, out]).await;
    h.send(Frame::Speak(text.to_string())).await;
    let output = h.finish(Duration::from_secs(60)).await;
    if let Some(Frame::Error(e)) = output.downstream.iter().find(|f| matches!(f, Frame::Error(_))) {
        bail!("{}: {}", e.source, e.message);
    }
    std::fs::rename(&partial, path).with_context(|| format!("cannot move {} into place", partial.display()))?;
    Ok(())
}

/// The user's words in turn `n` of the history benchmark: a name first, then questions on many
/// topics (none repeats within 200 turns).
pub fn history_message(n: usize) -> String {
    const TOPICS: [&str; 25] = [
        "the moon",
        "volcanoes",
        "honey bees",
        "the Roman empire",
        "jazz music",
        "black holes",
        "coffee",
        "ocean tides",
        "penguins",
        "rainbows",
        "chess",
        "the human heart",
        "electric cars",
        "the Sahara desert",
        "green tea",
        "lightning",
        "the printing press",
        "octopuses",
        "glaciers",
        "the piano",
        "baking bread",
        "sleep",
        "the internet",
        "Mount Everest",
        "whales",
    ];
    const ASKS: [&str; 8] = [
        "Tell me one fact about {}.",
        "What is the most surprising thing about {}?",
        "Why do people like {}?",
        "Explain {} to a child.",
        "What should I know about {}?",
        "Give me a tip related to {}.",
        "How old is the idea of {}?",
        "What is a common myth about {}?",
    ];
    if n <= 1 {
        return "Hi, my name is Sam, and I live in Lisbon.".into();
    }
    let i = n - 2;
    ASKS[(i / TOPICS.len()) % ASKS.len()].replace("{}", TOPICS[i % TOPICS.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_messages_do_not_repeat_within_200_turns() {
        let all: std::collections::HashSet<String> = (1..=200).map(history_message).collect();
        assert_eq!(all.len(), 200);
        assert!(history_message(1).contains("Sam"));
    }
}
