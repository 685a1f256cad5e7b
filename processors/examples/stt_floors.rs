//! Measures Whisper on the real human recordings (tests/speech) at several floors of the `auto`
//! encoder window: per utterance the text, whether it loops, the word errors and the median time.
//!
//! `stt_floors [--model FILE] [--floors auto,256,384,512,768,0] [--runs 3] [--threads 2]
//! [--fallback] [--retry] [--noise]` (`auto` is the window sized to the audio with no floor, 0 the
//! full window; `--fallback` and `--retry` turn on those guards of [`Guards`], off by default here
//! so the floors are measured alone; `--noise` adds the non-speech clips).

#![allow(clippy::unwrap_used)] // a measuring tool built on the tests' helpers, which unwrap

#[path = "../tests/speech_in_util/mod.rs"]
mod speech_in_util;

use std::time::Duration;

use slowcat_processors::stt::{AudioCtx, Guards, WhisperEngine, repeats_itself};
use speech_in_util::human::{breath, cough, cut, human_set, pink_noise};
use speech_in_util::score::{word_errors, words};
use speech_in_util::{models_dir, noise, to_f32};

/// Short utterances cut further, to a first word (cut at the dip in level after it), and the
/// same utterance tighter or with silence around it: (name, source, from s, to s, silence
/// before s, transcript).
const VARIANTS: [(&str, &str, f32, f32, f32, &str); 8] = [
    ("go", "go-forward", 0.0, 0.22, 0.0, "go"),
    ("eight", "eight-of-spades", 0.0, 0.37, 0.0, "eight"),
    ("four", "four-of-clubs", 0.0, 0.45, 0.0, "four"),
    ("seven", "seven-of-hearts", 0.0, 0.53, 0.0, "seven"),
    ("ten", "ten-meters", 0.0, 0.56, 0.0, "ten"),
    ("hello-tight", "hello-diane", 0.10, 0.52, 0.0, "Hello?"),
    ("go-forward-tight", "go-forward", 0.03, 0.66, 0.0, "go forward"),
    ("go-forward-late", "go-forward", 0.0, 1.0, 0.6, "go forward"),
];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut model = models_dir().join("ggml-tiny.en-q8_0.bin");
    let mut floors = "auto,256,384,512,768,0".to_string();
    let (mut runs, mut threads) = (3usize, 2usize);
    let mut guards = Guards { fallback: false, retry_full: false };
    let mut with_noise = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next().expect("--model FILE").into(),
            "--floors" => floors = args.next().expect("--floors LIST"),
            "--runs" => runs = args.next().expect("--runs N").parse()?,
            "--threads" => threads = args.next().expect("--threads N").parse()?,
            "--fallback" => guards.fallback = true,
            "--retry" => guards.retry_full = true,
            "--noise" => with_noise = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let floors: Vec<Option<u32>> = floors
        .split(',')
        .map(|f| if f == "auto" { Ok(None) } else { f.parse().map(Some) })
        .collect::<Result<_, _>>()?;

    let set = human_set();
    let mut clips: Vec<(String, String, Vec<i16>)> =
        set.iter().map(|u| (u.name.clone(), u.transcript.clone(), u.samples.clone())).collect();
    for (name, source, from, to, before, transcript) in VARIANTS {
        let u = set.iter().find(|u| u.name == source).expect("variant source in the set");
        let mut samples = vec![0i16; (before * 16_000.0) as usize];
        samples.extend(cut(&u.samples, from, to));
        clips.push((name.into(), transcript.into(), samples));
    }
    if with_noise {
        clips.push(("white-30".into(), String::new(), noise(16_000, -30.0, 7)));
        clips.push(("pink-30".into(), String::new(), pink_noise(16_000, -30.0, 7)));
        clips.push(("pink-30-3s".into(), String::new(), pink_noise(48_000, -30.0, 8)));
        clips.push(("breath".into(), String::new(), breath(7)));
        clips.push(("cough".into(), String::new(), cough(7)));
    }

    let mut engine = WhisperEngine::load(&model, threads, "en", AudioCtx::Auto)?;
    engine.set_guards(guards);
    println!("{} on {threads} threads, {guards:?}, median of {runs} runs", model.display());
    println!("load average {}", slowcat_bench::host::load_average().unwrap_or_default());
    let mut summary = Vec::new();
    for floor in &floors {
        let label = floor.map_or("auto".to_string(), |f| if f == 0 { "full".into() } else { f.to_string() });
        let (mut loops, mut agains, mut errors, mut n_words, mut retried, mut invented) = (0, 0, 0, 0, 0, 0);
        let (mut short_ms, mut long_ms) = (Vec::new(), Vec::new());
        for (name, transcript, samples) in &clips {
            let audio = to_f32(samples);
            let padded = audio.len().max(16_000);
            let ctx = match floor {
                None => AudioCtx::Fixed(AudioCtx::sized(padded, 0)),
                Some(0) => AudioCtx::Fixed(0),
                Some(f) => AudioCtx::Fixed(AudioCtx::sized(padded, *f)),
            };
            let mut times = Vec::new();
            let mut first = None;
            for _ in 0..runs {
                let r = engine.transcribe_with(&audio, ctx)?;
                times.push(r.elapsed);
                first.get_or_insert(r);
            }
            let r = first.expect("at least one run");
            let median = slowcat_bench::stats::median(times).unwrap_or_default();
            let looped = repeats_itself(&r.raw);
            // Whole sentences said again (kept once by the cleaning, so not counted as errors).
            let again = !looped && words(&r.raw).len() > words(&r.text).len();
            agains += usize::from(again);
            let (e, n) = word_errors(transcript, &r.text);
            loops += usize::from(looped);
            retried += usize::from(r.retried);
            if transcript.is_empty() {
                invented += e;
            } else {
                errors += e;
                n_words += n;
            }
            let secs = samples.len() as f32 / 16_000.0;
            if secs <= 1.2 {
                short_ms.push(median)
            } else {
                long_ms.push(median)
            }
            println!(
                "{label:>5} {name:<20} {secs:>5.2}s ctx {:>4} {:>6.0} ms {} {e}/{n} nsp {:.2} p {:.2}{} {:?}",
                r.audio_ctx,
                median.as_secs_f64() * 1000.0,
                if looped {
                    "LOOP "
                } else if again {
                    "AGAIN"
                } else {
                    "ok   "
                },
                r.no_speech,
                r.confidence,
                if r.retried { " retried" } else { "" },
                r.raw
            );
        }
        let total = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() * 1000.0;
        summary.push(format!(
            "{label:>5}  {loops:>5}  {agains:>5}  {retried:>7}  {errors:>3}/{n_words:<3}  {:>6.1} %  {invented:>11}  {:>8.0}  {:>9.0}",
            100.0 * (1.0 - errors as f64 / n_words.max(1) as f64),
            total(&short_ms),
            total(&long_ms)
        ));
    }
    println!(
        "\nfloor  loops  again  retried  errors   right     noise words  short ms  longer ms  (sums of medians; short: ≤ 1.2 s)"
    );
    for line in summary {
        println!("{line}");
    }
    Ok(())
}
