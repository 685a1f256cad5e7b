//! Facts: what a speaker asked the assistant to keep ("remember that my sister's name is Ana"),
//! stored by the `remember` tool and injected into every request of that speaker.
//!
//! A fact is not an exchange: it is short, written by the model on the user's request, kept until
//! the user has it forgotten (retention never deletes it), and all of a speaker's facts are read
//! for each request. They live in the `facts` database: key speaker number + fact id
//! (big-endian, so a speaker's facts are one range in id order), value the time (varint) and the
//! text. Fact ids count per speaker (the counter is in `meta`) and are never reused.

use super::env::{Dbs, MemoryDb};
use super::records::{ex_key, key_id, speaker_id};
use crate::memory::MemoryError;
use crate::memory::codec::{Corrupt, get_varint, put_varint, truncate_utf8};
use crate::memory::index::range;

/// Longest fact kept, in bytes.
pub const MAX_FACT_BYTES: usize = 1000;
/// Most facts kept per speaker: every request reads them all, so their number is bounded.
pub const MAX_FACTS: usize = 500;

/// One remembered fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// Per-speaker id, increasing with time, never reused.
    pub id: u64,
    /// When it was remembered, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The fact, as the model wrote it.
    pub text: String,
}

/// What [`MemoryDb::remember_fact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    /// Stored under this id.
    New(u64),
    /// The same text was already kept, under this id.
    Already(u64),
    /// The speaker has [`MAX_FACTS`] facts already; nothing was stored.
    Full,
}

fn counter_key(speaker: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..9].copy_from_slice(b"next_fact");
    k[9..].copy_from_slice(&speaker.to_be_bytes());
    k
}

fn encode(at_ms: u64, text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 8);
    put_varint(&mut v, at_ms);
    v.extend_from_slice(text.as_bytes());
    v
}

fn decode(key: &[u8], value: &[u8]) -> Result<Fact, Corrupt> {
    let mut pos = 0;
    let at_ms = get_varint(value, &mut pos)?;
    let text = std::str::from_utf8(&value[pos..]).map_err(|_| Corrupt("fact text"))?.to_string();
    Ok(Fact { id: key_id(key)?, at_ms, text })
}

impl MemoryDb {
    /// A speaker's facts, oldest first, from an open transaction.
    pub(super) fn facts_in(txn: &heed::RoTxn, dbs: &Dbs, speaker: u32) -> Result<Vec<Fact>, MemoryError> {
        let mut out = Vec::new();
        for item in dbs.facts.prefix_iter(txn, &speaker.to_be_bytes())? {
            let (k, v) = item?;
            out.push(decode(k, v)?);
        }
        Ok(out)
    }

    /// A speaker's facts, oldest first.
    pub fn facts(&self, speaker: &str) -> Result<Vec<Fact>, MemoryError> {
        self.read(|txn, dbs| match Self::meta(txn, dbs, speaker_id(speaker))? {
            Some(meta) => Self::facts_in(txn, dbs, meta.number),
            None => Ok(Vec::new()),
        })
    }

    /// Keeps a fact for a speaker (cut to [`MAX_FACT_BYTES`]); a text already kept (ignoring
    /// case and surrounding space) is not stored twice.
    pub fn remember_fact(&self, speaker: &str, text: &str, at_ms: u64) -> Result<Remembered, MemoryError> {
        let name = speaker_id(speaker);
        let text = truncate_utf8(text.trim(), MAX_FACT_BYTES);
        self.write(|txn, dbs| {
            let meta = Self::meta_or_new(txn, dbs, name)?;
            let facts = Self::facts_in(txn, dbs, meta.number)?;
            if let Some(same) = facts.iter().find(|f| f.text.trim().to_lowercase() == text.to_lowercase()) {
                return Ok(Remembered::Already(same.id));
            }
            if facts.len() >= MAX_FACTS {
                return Ok(Remembered::Full);
            }
            let counter = counter_key(meta.number);
            let id = match dbs.meta.get(txn, &counter)? {
                Some(v) => u64::from_le_bytes(v.try_into().map_err(|_| Corrupt("fact counter"))?),
                None => 1,
            };
            dbs.meta.put(txn, &counter, &(id + 1).to_le_bytes())?;
            dbs.facts.put(txn, &ex_key(meta.number, id), &encode(at_ms, text))?;
            // A new speaker gets its record here (an existing one is written back unchanged).
            dbs.speakers.put(txn, name.as_bytes(), &meta.encode())?;
            Ok(Remembered::New(id))
        })
    }

    /// Deletes a speaker's facts with these ids; returns those deleted.
    pub fn forget_facts(&self, speaker: &str, ids: &[u64]) -> Result<Vec<Fact>, MemoryError> {
        let name = speaker_id(speaker);
        self.write(|txn, dbs| {
            let Some(meta) = Self::meta(txn, dbs, name)? else { return Ok(Vec::new()) };
            let mut removed = Vec::new();
            for &id in ids {
                let key = ex_key(meta.number, id);
                if let Some(v) = dbs.facts.get(txn, &key)? {
                    removed.push(decode(&key, v)?);
                    dbs.facts.delete(txn, &key)?;
                }
            }
            Ok(removed)
        })
    }

    /// Deletes every fact of speaker number `speaker` in `txn` (forgetting everything of a speaker).
    pub(super) fn clear_facts(txn: &mut heed::RwTxn, dbs: &Dbs, speaker: u32) -> Result<(), MemoryError> {
        let (lo, hi) = (ex_key(speaker, 0), ex_key(speaker, u64::MAX));
        dbs.facts.delete_range(txn, &range(&lo, &hi))?;
        Ok(())
    }
}

/// Lower-case words of at least 3 letters, minus the commonest ones: what a query and a fact
/// must share.
fn words(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "the", "and", "for", "that", "this", "with", "what", "who", "whom", "which", "was", "were", "are", "is", "has",
        "have", "had", "you", "your", "about", "from", "did", "does", "remember", "know", "tell",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .map(|w| w.to_lowercase())
        .filter(|w| w.chars().count() >= 3 && !STOP.contains(&w.as_str()))
        .collect()
}

/// The facts that share words with `query`, most shared first, newest first among equals; all
/// of them, newest first, when the query has no words to look for.
pub fn rank_facts<'a>(facts: &'a [Fact], query: &str) -> Vec<&'a Fact> {
    let q = words(query);
    if q.is_empty() {
        return facts.iter().rev().collect();
    }
    let mut scored: Vec<(usize, &Fact)> = facts
        .iter()
        .map(|f| {
            let w = words(&f.text);
            // A query word matches a fact word that starts with it ("sister" finds "sister's").
            (q.iter().filter(|q| w.iter().any(|w| w.starts_with(q.as_str()))).count(), f)
        })
        .filter(|(score, _)| *score > 0)
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.id.cmp(&a.1.id)));
    scored.into_iter().map(|(_, f)| f).collect()
}
