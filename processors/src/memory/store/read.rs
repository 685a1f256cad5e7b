//! Reading: speakers, one exchange, the newest ones, BM25 search and the recall for one LLM
//! request, export, and tier counts; each from one read transaction (a consistent snapshot).

use heed::RoTxn;

use super::env::{Dbs, MemoryDb};
use super::records::{SpeakerMeta, dict_key, ex_key, key_id, speaker_id};
use crate::memory::codec::{Corrupt, block_header, decode_block, decode_hot, find_in_block};
use crate::memory::index::{self, range};
use crate::memory::{Exchange, MemoryError};

/// The newest exchanges and the most relevant older ones, as read for one LLM request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recall {
    /// The newest exchanges, oldest first.
    pub recent: Vec<Exchange>,
    /// Exchanges relevant to the question with their BM25 scores, best first (some may also be
    /// in `recent`).
    pub relevant: Vec<(Exchange, f32)>,
    /// The speaker's remembered facts, oldest first (at most [`super::MAX_FACTS`]).
    pub facts: Vec<super::Fact>,
}

impl MemoryDb {
    /// A speaker's record, if the speaker has one.
    pub(super) fn meta(txn: &RoTxn, dbs: &Dbs, speaker: &str) -> Result<Option<SpeakerMeta>, MemoryError> {
        Ok(dbs.speakers.get(txn, speaker.as_bytes())?.map(SpeakerMeta::decode).transpose()?)
    }

    /// Every speaker with what is kept for them, by name.
    pub fn speakers(&self) -> Result<Vec<(String, SpeakerMeta)>, MemoryError> {
        self.read(|txn, dbs| {
            let mut out = Vec::new();
            for item in dbs.speakers.iter(txn)? {
                let (k, v) = item?;
                let name = String::from_utf8(k.to_vec()).map_err(|_| Corrupt("speaker name"))?;
                out.push((name, SpeakerMeta::decode(v)?));
            }
            Ok(out)
        })
    }

    /// What is kept for one speaker, if anything.
    pub fn speaker(&self, speaker: &str) -> Result<Option<SpeakerMeta>, MemoryError> {
        self.read(|txn, dbs| Self::meta(txn, dbs, speaker_id(speaker)))
    }

    /// A speaker's compression dictionary (empty for id 0).
    pub(super) fn dict_bytes<'t>(txn: &'t RoTxn, dbs: &Dbs, speaker: u32, id: u32) -> Result<&'t [u8], MemoryError> {
        if id == 0 {
            return Ok(&[]);
        }
        dbs.dicts.get(txn, &dict_key(speaker, id))?.ok_or_else(|| Corrupt("compression dictionary (missing)").into())
    }

    /// The block holding `id`, if any: its first key id and value.
    pub(super) fn block_of<'t>(
        txn: &'t RoTxn,
        dbs: &Dbs,
        speaker: u32,
        id: u64,
    ) -> Result<Option<(u64, &'t [u8])>, MemoryError> {
        let (lo, hi) = (ex_key(speaker, 0), ex_key(speaker, id));
        let Some((key, value)) = dbs.cold.rev_range(txn, &range(&lo, &hi))?.next().transpose()? else {
            return Ok(None);
        };
        let first = key_id(key)?;
        if block_header(first, value)?.last_id < id {
            return Ok(None);
        }
        Ok(Some((first, value)))
    }

    /// All exchanges of a block, oldest first.
    fn decode_block_in(
        txn: &RoTxn,
        dbs: &Dbs,
        speaker: u32,
        first: u64,
        value: &[u8],
    ) -> Result<Vec<Exchange>, MemoryError> {
        let dict = Self::dict_bytes(txn, dbs, speaker, block_header(first, value)?.dict)?;
        Ok(decode_block(first, value, dict)?)
    }

    fn get_in(txn: &RoTxn, dbs: &Dbs, speaker: u32, id: u64) -> Result<Option<Exchange>, MemoryError> {
        if let Some(v) = dbs.hot.get(txn, &ex_key(speaker, id))? {
            return Ok(Some(decode_hot(id, v)?));
        }
        let Some((first, value)) = Self::block_of(txn, dbs, speaker, id)? else { return Ok(None) };
        let dict = Self::dict_bytes(txn, dbs, speaker, block_header(first, value)?.dict)?;
        Ok(find_in_block(first, value, dict, id)?)
    }

    /// One exchange of a speaker.
    pub fn get(&self, speaker: &str, id: u64) -> Result<Option<Exchange>, MemoryError> {
        self.read(|txn, dbs| {
            let Some(meta) = Self::meta(txn, dbs, speaker_id(speaker))? else { return Ok(None) };
            Self::get_in(txn, dbs, meta.number, id)
        })
    }

    /// The newest `n` exchanges, newest first: the hot tier, then cold blocks if it runs short.
    fn recent_in(txn: &RoTxn, dbs: &Dbs, speaker: u32, n: usize) -> Result<Vec<Exchange>, MemoryError> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return Ok(out);
        }
        let prefix = speaker.to_be_bytes();
        for item in dbs.hot.rev_prefix_iter(txn, &prefix)?.take(n) {
            let (key, value) = item?;
            out.push(decode_hot(key_id(key)?, value)?);
        }
        if out.len() < n {
            for item in dbs.cold.rev_prefix_iter(txn, &prefix)? {
                let (key, value) = item?;
                let block = Self::decode_block_in(txn, dbs, speaker, key_id(key)?, value)?;
                out.extend(block.into_iter().rev().take(n - out.len()));
                if out.len() >= n {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest `n` exchanges of a speaker, newest first.
    pub fn recent(&self, speaker: &str, n: usize) -> Result<Vec<Exchange>, MemoryError> {
        self.read(|txn, dbs| {
            let Some(meta) = Self::meta(txn, dbs, speaker_id(speaker))? else { return Ok(Vec::new()) };
            Self::recent_in(txn, dbs, meta.number, n)
        })
    }

    /// The exchanges most relevant to `query` (BM25), best first, with their scores.
    pub fn search(&self, speaker: &str, query: &str, limit: usize) -> Result<Vec<(Exchange, f32)>, MemoryError> {
        self.read(|txn, dbs| {
            let Some(meta) = Self::meta(txn, dbs, speaker_id(speaker))? else { return Ok(Vec::new()) };
            Self::fetch_ranked(txn, dbs, &meta, query, limit, &[])
        })
    }

    /// The `limit` best matches for `query` outside `known` (whose matches come along too,
    /// without being read again), best first.
    fn fetch_ranked(
        txn: &RoTxn,
        dbs: &Dbs,
        meta: &SpeakerMeta,
        query: &str,
        limit: usize,
        known: &[Exchange],
    ) -> Result<Vec<(Exchange, f32)>, MemoryError> {
        // A few spare hits cover postings whose exchange a concurrent deletion just removed.
        let ranked = index::search(
            txn,
            dbs.postings,
            meta.number,
            meta.count,
            meta.next_id.saturating_sub(1),
            query,
            limit + known.len() + 4,
        )?;
        let mut out = Vec::with_capacity(limit + known.len());
        let mut fetched = 0;
        for (id, score) in ranked {
            if fetched == limit {
                break;
            }
            if let Some(ex) = known.iter().find(|e| e.id == id) {
                out.push((ex.clone(), score));
            } else if let Some(ex) = Self::get_in(txn, dbs, meta.number, id)? {
                out.push((ex, score));
                fetched += 1;
            }
        }
        Ok(out)
    }

    /// What one LLM request needs, from one snapshot: the newest `recent` exchanges and the
    /// `relevant` best older matches for `query`, plus the newest that match (the rewrite
    /// leaves out those it inserts as pairs, and budget permitting inserts them all), and the
    /// speaker's facts.
    pub fn recall(
        &self,
        speaker: &str,
        query: Option<&str>,
        recent: usize,
        relevant: usize,
    ) -> Result<Recall, MemoryError> {
        self.read(|txn, dbs| {
            let Some(meta) = Self::meta(txn, dbs, speaker_id(speaker))? else { return Ok(Recall::default()) };
            let mut newest = Self::recent_in(txn, dbs, meta.number, recent)?;
            let relevant = match query {
                Some(q) if relevant > 0 => Self::fetch_ranked(txn, dbs, &meta, q, relevant, &newest)?,
                _ => Vec::new(),
            };
            newest.reverse();
            let facts = Self::facts_in(txn, dbs, meta.number)?;
            Ok(Recall { recent: newest, relevant, facts })
        })
    }

    /// Calls `f` on every exchange of a speaker, oldest first, from one snapshot.
    pub fn for_each(
        &self,
        speaker: &str,
        mut f: impl FnMut(&Exchange) -> std::io::Result<()>,
    ) -> Result<u64, MemoryError> {
        self.read(|txn, dbs| {
            let Some(meta) = Self::meta(txn, dbs, speaker_id(speaker))? else { return Ok(0) };
            let prefix = meta.number.to_be_bytes();
            let mut n = 0u64;
            for item in dbs.cold.prefix_iter(txn, &prefix)? {
                let (key, value) = item?;
                for ex in Self::decode_block_in(txn, dbs, meta.number, key_id(key)?, value)? {
                    f(&ex).map_err(MemoryError::Output)?;
                    n += 1;
                }
            }
            for item in dbs.hot.prefix_iter(txn, &prefix)? {
                let (key, value) = item?;
                f(&decode_hot(key_id(key)?, value)?).map_err(MemoryError::Output)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Exchanges per tier for a speaker: (hot, cold), counted from the database itself.
    pub fn tier_counts(&self, speaker: &str) -> Result<(u64, u64), MemoryError> {
        self.read(|txn, dbs| {
            let Some(meta) = Self::meta(txn, dbs, speaker_id(speaker))? else { return Ok((0, 0)) };
            let prefix = meta.number.to_be_bytes();
            let hot = dbs.hot.prefix_iter(txn, &prefix)?.count() as u64;
            let mut cold = 0;
            for item in dbs.cold.prefix_iter(txn, &prefix)? {
                let (k, v) = item?;
                cold += block_header(key_id(k)?, v)?.count;
            }
            Ok((hot, cold))
        })
    }
}
