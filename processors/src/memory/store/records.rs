//! The records: an exchange to store, what is kept per speaker and its byte encoding, and the
//! keys (speaker number, then id, big-endian so they sort by speaker, then by time).

use crate::memory::codec::{self, Corrupt};

/// Longest speaker id kept (LMDB keys are short).
const MAX_SPEAKER_BYTES: usize = 128;

/// An exchange to store (its id is assigned when it is committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewExchange {
    /// Who was talking.
    pub speaker: String,
    /// The conversation turn.
    pub turn: u64,
    /// When the reply finished, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// True when the user cut the reply short.
    pub interrupted: bool,
    /// The user's final transcript.
    pub user: String,
    /// What the assistant actually said aloud.
    pub assistant: String,
    /// The tool calls of the turn with their results, short (empty: none); never spoken.
    pub tools: String,
}

/// What the database keeps per speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpeakerMeta {
    /// The speaker's number in keys.
    pub number: u32,
    /// The id the next exchange gets.
    pub next_id: u64,
    /// Exchanges stored.
    pub count: u64,
    /// Sum of their lengths in index terms (for BM25's average length).
    pub len_sum: u64,
    /// Exchanges in the hot tier.
    pub hot_count: u64,
    /// The compression dictionary new cold blocks use (0: none yet).
    pub dict: u32,
    /// The first id of the block that made that dictionary.
    pub dict_from: u64,
}

impl SpeakerMeta {
    const LEN: usize = 48;

    pub(super) fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&self.number.to_le_bytes());
        b[4..12].copy_from_slice(&self.next_id.to_le_bytes());
        b[12..20].copy_from_slice(&self.count.to_le_bytes());
        b[20..28].copy_from_slice(&self.len_sum.to_le_bytes());
        b[28..36].copy_from_slice(&self.hot_count.to_le_bytes());
        b[36..40].copy_from_slice(&self.dict.to_le_bytes());
        b[40..48].copy_from_slice(&self.dict_from.to_le_bytes());
        b
    }

    pub(super) fn decode(v: &[u8]) -> Result<Self, Corrupt> {
        let v: &[u8; Self::LEN] = v.try_into().map_err(|_| Corrupt("speaker record"))?;
        let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        Ok(Self {
            number: u32::from_le_bytes(v[0..4].try_into().expect("4 bytes")),
            next_id: u64_at(4),
            count: u64_at(12),
            len_sum: u64_at(20),
            hot_count: u64_at(28),
            dict: u32::from_le_bytes(v[36..40].try_into().expect("4 bytes")),
            dict_from: u64_at(40),
        })
    }

    pub(super) fn avg_len(&self) -> f32 {
        if self.count == 0 { 0.0 } else { self.len_sum as f32 / self.count as f32 }
    }
}

pub(super) fn ex_key(speaker: u32, id: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&speaker.to_be_bytes());
    k[4..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn dict_key(speaker: u32, id: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&speaker.to_be_bytes());
    k[4..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn key_id(key: &[u8]) -> Result<u64, Corrupt> {
    key.get(4..12).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes).ok_or(Corrupt("exchange key"))
}

/// Normalizes a speaker id: trimmed, `default` when empty, bounded in length.
pub fn speaker_id(speaker: &str) -> &str {
    let s = speaker.trim();
    if s.is_empty() { crate::frame::DEFAULT_SPEAKER } else { codec::truncate_utf8(s, MAX_SPEAKER_BYTES) }
}
