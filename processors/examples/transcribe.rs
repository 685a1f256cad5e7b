//! Transcribes WAV files with Whisper as `whisper_stt` does: `transcribe MODEL THREADS CTX FILE...`
//! (CTX: `auto`, a number of encoder frames, or 0 for the full window).

use std::path::Path;

use slowcat_processors::audio::read_wav_mono;
use slowcat_processors::audio::resample::to_mono_f32;
use slowcat_processors::stt::{AudioCtx, WhisperEngine};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 4, "usage: transcribe MODEL THREADS CTX FILE...");
    let ctx: AudioCtx = toml::Value::try_from(if args[2] == "auto" {
        toml::Value::String("auto".into())
    } else {
        toml::Value::Integer(args[2].parse()?)
    })?
    .try_into()?;
    let mut engine = WhisperEngine::load(Path::new(&args[0]), args[1].parse()?, "en", ctx)?;
    for file in &args[3..] {
        let samples = read_wav_mono(Path::new(file), 16_000)?;
        let audio = to_mono_f32(&samples, 1);
        let r = engine.transcribe(&audio)?;
        println!(
            "{:.2}s ctx {} {} ms: {:?}",
            audio.len() as f64 / 16_000.0,
            r.audio_ctx,
            r.elapsed.as_millis(),
            r.text
        );
    }
    Ok(())
}
