//! Decoding the audio synthesizers hand back as a byte stream: raw 16-bit PCM, or WAV whose
//! header sizes are bogus because it was written to a pipe (espeak-ng `--stdout`, streaming
//! HTTP servers). hound wants a seekable, well-sized file, so the few header fields are read here.

/// Why a byte stream is not audio slowcat can play.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcmError {
    /// The stream does not start with a RIFF/WAVE header.
    #[error("the audio is not a WAV file (it starts with {0:?})")]
    NotWav(String),
    /// No `data` chunk within the first [`MAX_HEADER`] bytes.
    #[error("the WAV header is larger than {MAX_HEADER} bytes")]
    HeaderTooLarge,
    /// The samples begin before their format is given.
    #[error("the WAV stream has no fmt chunk before its data")]
    NoFormat,
    /// The fmt chunk is cut short.
    #[error("the WAV fmt chunk is too short")]
    ShortFormat,
    /// Another encoding than 16-bit PCM.
    #[error("the WAV audio is not 16-bit PCM (format {tag}, {bits} bits); ask for 16-bit PCM")]
    NotPcm16 {
        /// The WAV format tag.
        tag: u16,
        /// Bits per sample.
        bits: u16,
    },
    /// Zero channels or a zero rate.
    #[error("the WAV header says {channels} channels at {sample_rate} Hz")]
    BadFormat {
        /// Channels in the header.
        channels: u16,
        /// Rate in the header.
        sample_rate: u32,
    },
}

/// The format of the samples in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    /// Samples per second.
    pub sample_rate: u32,
    /// Interleaved channels (mixed down to mono).
    pub channels: u16,
}

/// Turns bytes arriving in pieces of any size into mono i16 samples.
#[derive(Debug)]
pub struct PcmStream {
    /// Known once the WAV header has been read (at once for raw PCM).
    format: Option<PcmFormat>,
    pending: Vec<u8>,
}

/// The longest WAV header accepted before the `data` chunk (servers add LIST chunks).
pub const MAX_HEADER: usize = 64 * 1024;

impl PcmStream {
    /// A stream of raw little-endian 16-bit PCM.
    pub fn raw(format: PcmFormat) -> Self {
        Self { format: Some(format), pending: Vec::new() }
    }

    /// A stream that starts with a WAV header.
    pub fn wav() -> Self {
        Self { format: None, pending: Vec::new() }
    }

    /// The format, once known.
    pub fn format(&self) -> Option<PcmFormat> {
        self.format
    }

    /// Feeds bytes; returns the mono samples now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<i16>, PcmError> {
        self.pending.extend_from_slice(bytes);
        let format = match self.format {
            Some(f) => f,
            None => match parse_header(&self.pending)? {
                Some((format, data_at)) => {
                    self.pending.drain(..data_at);
                    self.format = Some(format);
                    format
                }
                None => return Ok(Vec::new()),
            },
        };
        let ch = usize::from(format.channels.max(1));
        let frame_bytes = 2 * ch;
        let whole = self.pending.len() / frame_bytes * frame_bytes;
        let out = self.pending[..whole]
            .chunks_exact(frame_bytes)
            .map(|frame| {
                let sum: i32 = frame.chunks_exact(2).map(|b| i32::from(i16::from_le_bytes([b[0], b[1]]))).sum();
                (sum / ch as i32) as i16
            })
            .collect();
        self.pending.drain(..whole);
        Ok(out)
    }
}

/// Reads a RIFF/WAVE header: the format and where the samples start, or None when more bytes
/// are needed.
fn parse_header(b: &[u8]) -> Result<Option<(PcmFormat, usize)>, PcmError> {
    if b.len() < 12 {
        return Ok(None);
    }
    if &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(PcmError::NotWav(String::from_utf8_lossy(&b[..12]).into_owned()));
    }
    let mut at = 12;
    let mut format = None;
    loop {
        if at + 8 > b.len() {
            if at > MAX_HEADER {
                return Err(PcmError::HeaderTooLarge);
            }
            return Ok(None);
        }
        let id = &b[at..at + 4];
        let size = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]) as usize;
        let body = at + 8;
        if id == b"data" {
            let Some(format) = format else { return Err(PcmError::NoFormat) };
            return Ok(Some((format, body)));
        }
        if body + size > b.len() {
            if body + size > MAX_HEADER {
                return Err(PcmError::HeaderTooLarge);
            }
            return Ok(None);
        }
        if id == b"fmt " {
            if size < 16 {
                return Err(PcmError::ShortFormat);
            }
            let f = &b[body..body + 16];
            let tag = u16::from_le_bytes([f[0], f[1]]);
            let channels = u16::from_le_bytes([f[2], f[3]]);
            let sample_rate = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
            let bits = u16::from_le_bytes([f[14], f[15]]);
            // 0xFFFE is WAVE_FORMAT_EXTENSIBLE, which servers use for plain PCM too.
            if !matches!(tag, 1 | 0xFFFE) || bits != 16 {
                return Err(PcmError::NotPcm16 { tag, bits });
            }
            if channels == 0 || sample_rate == 0 {
                return Err(PcmError::BadFormat { channels, sample_rate });
            }
            format = Some(PcmFormat { sample_rate, channels });
        }
        // Chunks are padded to an even size.
        at = body + size + (size & 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(rate: u32, channels: u16, data_size: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend(b"RIFF");
        h.extend(0x7fff_f024u32.to_le_bytes());
        h.extend(b"WAVEfmt ");
        h.extend(16u32.to_le_bytes());
        h.extend(1u16.to_le_bytes());
        h.extend(channels.to_le_bytes());
        h.extend(rate.to_le_bytes());
        h.extend((rate * 2 * u32::from(channels)).to_le_bytes());
        h.extend((2 * channels).to_le_bytes());
        h.extend(16u16.to_le_bytes());
        h.extend(b"LIST");
        h.extend(4u32.to_le_bytes());
        h.extend(b"INFO");
        h.extend(b"data");
        h.extend(data_size.to_le_bytes());
        h
    }

    #[test]
    fn a_piped_wav_with_bogus_sizes_decodes_byte_by_byte() {
        let mut bytes = header(22_050, 1, 0x7fff_f000);
        for s in [1i16, -2, 300, -32768] {
            bytes.extend(s.to_le_bytes());
        }
        let mut stream = PcmStream::wav();
        let mut out = Vec::new();
        for b in &bytes {
            out.extend(stream.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(out, vec![1, -2, 300, -32768]);
        assert_eq!(stream.format(), Some(PcmFormat { sample_rate: 22_050, channels: 1 }));
    }

    #[test]
    fn stereo_is_mixed_down_and_non_pcm_is_refused() {
        let mut bytes = header(24_000, 2, 8);
        for s in [100i16, 300, -50, -150] {
            bytes.extend(s.to_le_bytes());
        }
        assert_eq!(PcmStream::wav().push(&bytes).unwrap(), vec![200, -100]);
        let e = PcmStream::wav().push(b"ID3\x03\x00\x00\x00\x00\x00\x00\x00\x00").unwrap_err().to_string();
        assert!(e.contains("not a WAV"), "{e}");
    }
}
