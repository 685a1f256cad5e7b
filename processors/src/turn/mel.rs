//! Whisper-style log-mel spectrogram, as Whisper's `log_mel_spectrogram` and Hugging Face's
//! `WhisperFeatureExtractor` compute it: reflect-padded STFT with a periodic Hann window of
//! 400 samples and a hop of 160, power spectrum, 80 Slaney mel filters
//! (`librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)`), `log10(max(x, 1e-10))`, clamped to
//! the maximum − 8, then `(x + 4) / 4`.
//!
//! Everything is computed in f64 like the numpy reference the models were trained with; only
//! the result is f32.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the features are defined for.
pub const SAMPLE_RATE: u32 = 16_000;
/// FFT size (25 ms).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Number of mel bands.
pub const N_MELS: usize = 80;
const N_BINS: usize = N_FFT / 2 + 1;
const MEL_FLOOR: f64 = 1e-10;
/// Variance guard of Hugging Face's `zero_mean_unit_var_norm`.
const NORM_EPS: f64 = 1e-7;

/// A log-mel spectrogram, band-major: `data[mel * n_frames + frame]`, which is the layout of
/// Whisper's `[80, frames]` input.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMel {
    /// Frames per band.
    pub n_frames: usize,
    /// `N_MELS * n_frames` values.
    pub data: Vec<f32>,
}

impl LogMel {
    /// The value of band `mel` at frame `frame`.
    pub fn at(&self, mel: usize, frame: usize) -> f32 {
        self.data[mel * self.n_frames + frame]
    }
}

/// One triangular mel filter: its weights over the FFT bins `first..first + weights.len()`
/// (the others are zero).
#[derive(Debug, Clone)]
struct MelFilter {
    first: usize,
    weights: Vec<f64>,
}

/// Computes Whisper log-mel spectrograms; holds the FFT plan, window, filterbank and buffers so
/// repeated calls allocate only their output.
pub struct MelSpectrogram {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    filters: Vec<MelFilter>,
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

impl Default for MelSpectrogram {
    fn default() -> Self {
        Self::new()
    }
}

impl MelSpectrogram {
    /// Plans the FFT and builds the filterbank.
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        // Periodic Hann (torch.hann_window's default), not the symmetric one.
        let window =
            (0..N_FFT).map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()).collect();
        Self {
            fft,
            window,
            filters: slaney_filterbank(),
            frame: vec![0.0; N_FFT],
            spectrum,
            scratch,
            power: vec![0.0; N_BINS],
        }
    }

    /// The log-mel spectrogram of 16 kHz mono `audio` in [-1, 1]: `audio.len() / 160` frames
    /// (the STFT's last frame is dropped, as Whisper does).
    pub fn compute(&mut self, audio: &[f32]) -> LogMel {
        let n_frames = audio.len() / HOP_LENGTH;
        let mut data = vec![0f32; N_MELS * n_frames];
        if n_frames == 0 {
            return LogMel { n_frames, data };
        }
        let pad = (N_FFT / 2) as isize;
        let mut log_spec = vec![0f64; N_MELS * n_frames];
        let mut max = f64::NEG_INFINITY;
        for t in 0..n_frames {
            let start = (t * HOP_LENGTH) as isize - pad;
            for (k, slot) in self.frame.iter_mut().enumerate() {
                *slot = f64::from(audio[reflect(start + k as isize, audio.len())]) * self.window[k];
            }
            // The only error is a buffer of the wrong length, which the plan made itself.
            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch)
                .expect("FFT buffers come from the plan");
            for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
                *p = c.norm_sqr();
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let bins = &self.power[filter.first..filter.first + filter.weights.len()];
                let energy: f64 = bins.iter().zip(&filter.weights).map(|(p, w)| p * w).sum();
                let v = energy.max(MEL_FLOOR).log10();
                max = max.max(v);
                log_spec[m * n_frames + t] = v;
            }
        }
        let floor = max - 8.0;
        for (out, v) in data.iter_mut().zip(&log_spec) {
            *out = ((v.max(floor) + 4.0) / 4.0) as f32;
        }
        LogMel { n_frames, data }
    }
}

/// Index into a signal of length `len` with numpy's `reflect` padding (the edge sample is not
/// repeated), for any offset.
fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let j = i.rem_euclid(period);
    (if j >= len as isize { period - j } else { j }) as usize
}

/// Normalizes `audio` to zero mean and unit variance in place, as Hugging Face's
/// `WhisperFeatureExtractor(do_normalize=True)` does before the spectrogram.
pub fn normalize(audio: &mut [f32]) {
    if audio.is_empty() {
        return;
    }
    let n = audio.len() as f64;
    let mean = audio.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = audio.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
    let scale = 1.0 / (var + NORM_EPS).sqrt();
    for x in audio.iter_mut() {
        *x = ((f64::from(*x) - mean) * scale) as f32;
    }
}

fn hz_to_mel(hz: f64) -> f64 {
    // Slaney: linear below 1 kHz, logarithmic above.
    if hz >= 1000.0 { 15.0 + (hz / 1000.0).ln() * 27.0 / 6.4f64.ln() } else { hz * 3.0 / 200.0 }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= 15.0 { 1000.0 * (6.4f64.ln() / 27.0 * (mel - 15.0)).exp() } else { mel * 200.0 / 3.0 }
}

/// `librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)`: Slaney mel scale and Slaney area
/// normalization, stored sparsely.
fn slaney_filterbank() -> Vec<MelFilter> {
    let top = hz_to_mel(f64::from(SAMPLE_RATE) / 2.0);
    let edges: Vec<f64> = (0..N_MELS + 2).map(|i| mel_to_hz(top * i as f64 / (N_MELS + 1) as f64)).collect();
    let bin_hz = f64::from(SAMPLE_RATE) / N_FFT as f64;
    (0..N_MELS)
        .map(|m| {
            let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
            let norm = 2.0 / (hi - lo);
            let all: Vec<f64> = (0..N_BINS)
                .map(|k| {
                    let f = k as f64 * bin_hz;
                    ((f - lo) / (mid - lo)).min((hi - f) / (hi - mid)).max(0.0) * norm
                })
                .collect();
            let first = all.iter().position(|&w| w > 0.0).unwrap_or(0);
            let last = all.iter().rposition(|&w| w > 0.0).map_or(first, |i| i + 1);
            MelFilter { first, weights: all[first..last].to_vec() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 440 Hz tone plus a chirp sweeping 100 Hz → 8 kHz per second, so every band gets energy
    /// at some frame.
    fn tone_and_chirp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(SAMPLE_RATE);
                let tau = 2.0 * std::f64::consts::PI;
                (0.3 * (tau * 440.0 * t).sin() + 0.2 * (tau * (100.0 * t + 3950.0 * t * t)).sin()) as f32
            })
            .collect()
    }

    /// Values from a numpy reference (`np.fft.rfft`, own Slaney filterbank; that reference
    /// matches transformers' `WhisperFeatureExtractor` to 4e-7).
    #[test]
    fn log_mel_of_a_tone_and_chirp_matches_the_numpy_reference() {
        let mel = MelSpectrogram::new().compute(&tone_and_chirp(16_000));
        assert_eq!(mel.n_frames, 100);
        let expected = [
            (0, 0, 1.186249),
            (11, 1, 1.324836),
            (12, 50, 1.182599),
            (30, 20, -0.633474),
            (79, 99, 0.931925),
            (23, 10, 1.195727),
            (22, 10, 1.151551),
            (49, 30, 1.139063),
            (48, 30, 0.816746),
            (62, 50, 1.108744),
            (61, 50, 0.701019),
            (77, 90, 1.047788),
            (76, 90, 0.365075),
        ];
        for (m, f, want) in expected {
            let got = mel.at(m, f);
            assert!((got - want).abs() < 1e-3, "mel {m} frame {f}: got {got}, numpy says {want}");
        }
    }

    #[test]
    fn filterbank_is_slaney_normalized_and_covers_the_spectrum() {
        let filters = slaney_filterbank();
        assert_eq!(filters.len(), N_MELS);
        // librosa.filters.mel: band 0 has one non-zero bin (40 Hz) of weight 0.02486259, band 79
        // spans bins 186..=199.
        assert_eq!((filters[0].first, filters[0].weights.len()), (1, 1));
        assert!((filters[0].weights[0] - 0.024_862_59).abs() < 1e-7, "{}", filters[0].weights[0]);
        assert_eq!((filters[79].first, filters[79].weights.len()), (186, 14));
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(-2, 5), 2);
        assert_eq!(reflect(5, 5), 3);
        assert_eq!(reflect(6, 5), 2);
        assert_eq!(reflect(2, 5), 2);
    }

    #[test]
    fn normalize_gives_zero_mean_unit_variance() {
        let mut x = tone_and_chirp(4000);
        x.iter_mut().for_each(|v| *v = *v * 0.1 + 0.05);
        normalize(&mut x);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-3, "mean {mean} var {var}");
    }

    #[test]
    fn short_or_empty_audio_does_not_panic() {
        let mut mel = MelSpectrogram::new();
        assert_eq!(mel.compute(&[]).n_frames, 0);
        assert_eq!(mel.compute(&[0.1; 100]).n_frames, 0);
        assert_eq!(mel.compute(&[0.1; 170]).n_frames, 1);
    }
}
