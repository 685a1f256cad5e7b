//! The set of real human recordings (tests/speech/manifest.tsv, fetched by
//! scripts/fetch-speech.sh), and made-up non-speech sounds to go with it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One recording of the set.
pub struct Utterance {
    pub name: String,
    pub category: String,
    /// The words said.
    pub transcript: String,
    /// 16 kHz mono.
    pub samples: Vec<i16>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where scripts/fetch-speech.sh puts the WAVs.
pub fn speech_dir() -> PathBuf {
    std::env::var_os("SLOWCAT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/slowcat"))
        .join("speech")
}

/// Every utterance of the set, in manifest order; runs scripts/fetch-speech.sh first when a
/// file is missing.
pub fn human_set() -> Vec<Utterance> {
    let manifest =
        std::fs::read_to_string(repo().join("tests/speech/manifest.tsv")).expect("tests/speech/manifest.tsv");
    let rows: Vec<Vec<&str>> = manifest
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("name\t"))
        .map(|l| l.split('\t').collect())
        .collect();
    let dir = speech_dir();
    if rows.iter().any(|r| !dir.join(format!("{}.wav", r[0])).is_file()) {
        let out = Command::new(repo().join("scripts/fetch-speech.sh"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/fetch-speech.sh: {e}"));
        assert!(
            out.status.success(),
            "scripts/fetch-speech.sh failed (it needs sox, apt-get and pip):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    rows.iter()
        .map(|r| {
            let path = dir.join(format!("{}.wav", r[0]));
            let samples = slowcat_processors::audio::read_wav_mono(&path, 16_000)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            Utterance { name: r[0].into(), category: r[6].into(), transcript: r[9].into(), samples }
        })
        .collect()
}

/// `samples` from `from` to `to` seconds.
pub fn cut(samples: &[i16], from: f32, to: f32) -> Vec<i16> {
    let at = |s: f32| ((s * 16_000.0) as usize).min(samples.len());
    samples[at(from)..at(to)].to_vec()
}

fn xorshift(seed: u32) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as f32 / u32::MAX as f32) * 2.0 - 1.0
    }
}

/// `x` scaled to `db` dBFS RMS.
fn at_level(x: &[f32], db: f32) -> Vec<i16> {
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt().max(1e-9);
    let gain = 32768.0 * 10f32.powf(db / 20.0) / rms;
    x.iter().map(|v| (v * gain).clamp(-32768.0, 32767.0) as i16).collect()
}

/// Pink noise (Paul Kellet's filter over white noise) at `db` dBFS RMS: a fan or a distant road.
pub fn pink_noise(n: usize, db: f32, seed: u32) -> Vec<i16> {
    let mut white = xorshift(seed);
    let mut b = [0f32; 3];
    let x: Vec<f32> = (0..n)
        .map(|_| {
            let w = white();
            b[0] = 0.99765 * b[0] + w * 0.0990460;
            b[1] = 0.96300 * b[1] + w * 0.2965164;
            b[2] = 0.57000 * b[2] + w * 1.0526913;
            b[0] + b[1] + b[2] + w * 0.1848
        })
        .collect();
    at_level(&x, db)
}

/// Noise through a one-pole band (high-pass at `low`, low-pass at `high` Hz) under a smooth
/// envelope rising over `attack` of its `secs`, scaled so its loudest 20 ms are at `peak_db`.
fn burst(secs: f32, low: f32, high: f32, attack: f32, peak_db: f32, seed: u32) -> Vec<i16> {
    let n = (secs * 16_000.0) as usize;
    let mut white = xorshift(seed);
    let a_lp = (-2.0 * std::f32::consts::PI * high / 16_000.0).exp();
    let a_hp = (-2.0 * std::f32::consts::PI * low / 16_000.0).exp();
    let (mut lp, mut hp_in, mut hp) = (0f32, 0f32, 0f32);
    let x: Vec<f32> = (0..n)
        .map(|i| {
            lp = (1.0 - a_lp) * white() + a_lp * lp;
            hp = a_hp * (hp + lp - hp_in);
            hp_in = lp;
            let t = i as f32 / n as f32;
            let env = if t < attack { (t / attack).powi(2) } else { (-(t - attack) / (1.0 - attack) * 4.0).exp() };
            hp * env
        })
        .collect();
    let peak =
        x.chunks(320).map(|c| (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32).sqrt()).fold(0f32, f32::max);
    let gain = 32768.0 * 10f32.powf(peak_db / 20.0) / peak.max(1e-9);
    x.iter().map(|v| (v * gain).clamp(-32768.0, 32767.0) as i16).collect()
}

/// A breath: 0.8 s of band-limited noise (300–2500 Hz) that swells and fades, at most -30 dBFS.
pub fn breath(seed: u32) -> Vec<i16> {
    burst(0.8, 300.0, 2500.0, 0.4, -30.0, seed)
}

/// A cough: 0.3 s of noise (200–4000 Hz) with a sharp onset and a fast decay, loud (-12 dBFS).
pub fn cough(seed: u32) -> Vec<i16> {
    burst(0.3, 200.0, 4000.0, 0.05, -12.0, seed)
}
