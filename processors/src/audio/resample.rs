//! Sample-format and sample-rate conversion shared by the audio processors (rubato's FFT
//! resampler: the ratio between two devices' nominal rates is fixed).

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};

/// Why a resampler could not be made or run.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// rubato refused the pair of rates or the chunk size.
    #[error("cannot resample from {from} Hz to {to} Hz")]
    Rates {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// rubato's reason.
        #[source]
        source: rubato::ResamplerConstructionError,
    },
    /// Resampling a clip failed.
    #[error("resampling from {from} Hz to {to} Hz failed")]
    Run {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// rubato's reason (a buffer size or a processing error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Mixes interleaved i16 samples down to mono f32 in [-1, 1].
pub fn to_mono_f32(samples: &[i16], channels: u16) -> Vec<f32> {
    let ch = usize::from(channels.max(1));
    samples
        .chunks_exact(ch)
        .map(|frame| frame.iter().map(|&s| f32::from(s)).sum::<f32>() / (ch as f32 * 32768.0))
        .collect()
}

/// Converts f32 samples in [-1, 1] to i16, clipping.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples.iter().map(|&s| (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16).collect()
}

/// Resamples a whole mono clip, with the resampler's delay trimmed so the output lines up with
/// the input.
pub fn resample_clip(mono: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    if from == to || mono.is_empty() {
        return Ok(mono.to_vec());
    }
    let mut fft = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Both)
        .map_err(|source| ResampleError::Rates { from, to, source })?;
    let data = vec![mono.to_vec()];
    let run = |e: Box<dyn std::error::Error + Send + Sync>| ResampleError::Run { from, to, source: e };
    let input = SequentialSliceOfVecs::new(&data, 1, mono.len()).map_err(|e| run(e.into()))?;
    let out = fft.process_all(&input, mono.len(), None).map_err(|e| run(e.into()))?;
    Ok(out.take_data())
}

/// Resamples a mono stream arriving in pieces of any size. Output lags input by the
/// resampler's delay (a few milliseconds).
pub struct StreamResampler {
    fft: Option<Fft<f32>>,
    pending: Vec<f32>,
    from: u32,
    to: u32,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz working in 20 ms chunks.
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        let fft = if from == to {
            None
        } else {
            let chunk = (from as usize / 50).max(1);
            Some(
                Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input)
                    .map_err(|source| ResampleError::Rates { from, to, source })?,
            )
        };
        Ok(Self { fft, pending: Vec::new(), from, to })
    }

    /// Input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Feeds samples; returns whatever output is ready.
    pub fn push(&mut self, mono: &[f32]) -> Vec<f32> {
        let Some(fft) = self.fft.as_mut() else { return mono.to_vec() };
        self.pending.extend_from_slice(mono);
        let mut out = Vec::new();
        loop {
            let need = fft.input_frames_next();
            if self.pending.len() < need {
                break;
            }
            let chunk = vec![self.pending[..need].to_vec()];
            self.pending.drain(..need);
            let Ok(input) = SequentialSliceOfVecs::new(&chunk, 1, need) else { break };
            match fft.process(&input, None) {
                Ok(o) => out.extend(o.take_data()),
                Err(e) => {
                    tracing::warn!(error = %e, "resampling failed; dropping a chunk");
                    break;
                }
            }
        }
        out
    }

    /// Drops buffered input and resets the filter state (after an interruption).
    pub fn reset(&mut self) {
        self.pending.clear();
        if let Some(fft) = self.fft.as_mut() {
            fft.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, secs: f32, hz: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| (i as f32 * hz * std::f32::consts::TAU / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn clip_resampling_keeps_length_and_pitch() {
        let x = tone(48_000, 1.0, 440.0);
        let y = resample_clip(&x, 48_000, 16_000).unwrap();
        assert!((y.len() as i64 - 16_000).abs() <= 2, "len {}", y.len());
        // 440 Hz at 16 kHz crosses zero about 880 times a second.
        let crossings = y.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!((435..=445).contains(&crossings), "crossings {crossings}");
    }

    #[test]
    fn stream_resampling_produces_the_expected_amount() {
        let x = tone(44_100, 1.0, 300.0);
        let mut r = StreamResampler::new(44_100, 16_000).unwrap();
        let mut total = 0;
        for piece in x.chunks(333) {
            total += r.push(piece).len();
        }
        assert!((15_600..=16_000).contains(&total), "total {total}");
    }

    #[test]
    fn mono_mix_averages_channels() {
        assert_eq!(to_mono_f32(&[16384, -16384, 16384, 16384], 2), vec![0.0, 0.5]);
        assert_eq!(to_i16(&[2.0, -2.0, 0.5]), vec![32767, -32768, 16384]);
    }
}
