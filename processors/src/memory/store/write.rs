//! Writing: storing exchanges (hot tier and index postings), moving full blocks to the cold tier,
//! retention, and forgetting.

use std::collections::BTreeMap;

use heed::{RoTxn, RwTxn};
use tracing::debug;

use super::env::{Dbs, MemoryDb, Retention};
use super::records::{NewExchange, SpeakerMeta, dict_key, ex_key, key_id, speaker_id};
use crate::memory::codec::{
    self, Corrupt, MAX_TEXT_BYTES, block_header, decode_block, decode_hot, dictionary_from, encode_block, encode_hot,
    find_in_block,
};
use crate::memory::index::{self, DocTerms, range};
use crate::memory::{Exchange, MemoryError};

/// Postings of a batch per (speaker, term), ids ascending.
type PendingPostings = BTreeMap<(u32, String), Vec<(u64, u8)>>;

/// Most deletions one maintenance transaction makes, so retention never holds the write lock long.
const MAX_DELETIONS_PER_STEP: usize = 4096;

/// A new compression dictionary is made after this many exchanges (64 KiB each: about 2 bytes
/// per exchange).
const DICT_REFRESH_EXCHANGES: u64 = 32_768;

impl MemoryDb {
    /// A speaker's record, or a new one with the next speaker number.
    pub(super) fn meta_or_new(txn: &mut RwTxn, dbs: &Dbs, speaker: &str) -> Result<SpeakerMeta, MemoryError> {
        if let Some(m) = Self::meta(txn, dbs, speaker)? {
            return Ok(m);
        }
        let next = match dbs.meta.get(txn, b"next_speaker")? {
            Some(v) => u32::from_le_bytes(v.try_into().map_err(|_| Corrupt("speaker counter"))?),
            None => 1,
        };
        dbs.meta.put(txn, b"next_speaker", &(next + 1).to_le_bytes())?;
        Ok(SpeakerMeta { number: next, next_id: 1, ..Default::default() })
    }

    /// Stores exchanges in one durable transaction; returns their ids, in order.
    pub fn insert(&self, batch: &[&NewExchange]) -> Result<Vec<u64>, MemoryError> {
        self.write(|txn, dbs| {
            let mut postings = PendingPostings::new();
            let ids = self.insert_in(txn, dbs, batch, &mut postings)?;
            Self::flush_postings(txn, dbs, &postings)?;
            Ok(ids)
        })
    }

    /// Puts exchanges in the hot tier and collects their postings in `postings` (appended once
    /// per term by [`MemoryDb::flush_postings`], which is much faster for large batches).
    fn insert_in(
        &self,
        txn: &mut RwTxn,
        dbs: &Dbs,
        batch: &[&NewExchange],
        postings: &mut PendingPostings,
    ) -> Result<Vec<u64>, MemoryError> {
        let mut metas: BTreeMap<&str, SpeakerMeta> = BTreeMap::new();
        let mut ids = Vec::with_capacity(batch.len());
        for new in batch {
            let name = speaker_id(&new.speaker);
            let meta = match metas.get_mut(name) {
                Some(m) => m,
                None => {
                    let m = Self::meta_or_new(txn, dbs, name)?;
                    metas.entry(name).or_insert(m)
                }
            };
            let ex = Exchange {
                id: meta.next_id,
                turn: new.turn,
                at_ms: new.at_ms,
                interrupted: new.interrupted,
                user: codec::truncate_utf8(&new.user, MAX_TEXT_BYTES).to_string(),
                assistant: codec::truncate_utf8(&new.assistant, MAX_TEXT_BYTES).to_string(),
                tools: codec::truncate_utf8(&new.tools, MAX_TEXT_BYTES).to_string(),
            };
            dbs.hot.put(txn, &ex_key(meta.number, ex.id), &encode_hot(&ex, self.options.compression))?;
            let doc = DocTerms::of(&ex.user, &ex.assistant);
            let avg = if meta.count == 0 { doc.len as f32 } else { meta.avg_len() };
            for (term, tf) in doc.counts {
                postings.entry((meta.number, term)).or_default().push((ex.id, index::impact(tf, doc.len, avg)));
            }
            ids.push(ex.id);
            meta.next_id += 1;
            meta.count += 1;
            meta.len_sum += u64::from(doc.len);
            meta.hot_count += 1;
        }
        for (name, meta) in &metas {
            dbs.speakers.put(txn, name.as_bytes(), &meta.encode())?;
        }
        Ok(ids)
    }

    fn flush_postings(txn: &mut RwTxn, dbs: &Dbs, postings: &PendingPostings) -> Result<(), MemoryError> {
        for ((speaker, term), list) in postings {
            index::add_postings(txn, dbs.postings, *speaker, term, list)?;
        }
        Ok(())
    }

    /// Loads many exchanges of one speaker fast: large transactions, tier moves done inline.
    /// For imports and benchmarks; the pipeline stores through [`MemoryStore`].
    pub fn bulk_load(&self, exchanges: &[NewExchange]) -> Result<(), MemoryError> {
        for chunk in exchanges.chunks(50_000) {
            let refs: Vec<&NewExchange> = chunk.iter().collect();
            let mut names: Vec<&str> = refs.iter().map(|e| speaker_id(&e.speaker)).collect();
            names.sort_unstable();
            names.dedup();
            self.write(|txn, dbs| {
                let mut postings = PendingPostings::new();
                // Moving after every block keeps the hot tier small, so the file does not keep
                // the pages of a hot tier that once held the whole batch.
                for part in refs.chunks(self.options.block_size.max(1)) {
                    self.insert_in(txn, dbs, part, &mut postings)?;
                    for name in &names {
                        while self.move_block(txn, dbs, name)? {}
                    }
                }
                Self::flush_postings(txn, dbs, &postings)
            })?;
        }
        Ok(())
    }

    /// Moves the oldest `block_size` hot exchanges of a speaker into a cold block, if the hot
    /// tier has outgrown its size. True when it moved something.
    fn move_block(&self, txn: &mut RwTxn, dbs: &Dbs, speaker: &str) -> Result<bool, MemoryError> {
        let Some(mut meta) = Self::meta(txn, dbs, speaker)? else { return Ok(false) };
        let block = self.options.block_size.max(1);
        if meta.hot_count < (self.options.hot_tier_size + block) as u64 {
            return Ok(false);
        }
        let prefix = meta.number.to_be_bytes();
        let mut moved = Vec::with_capacity(block);
        for item in dbs.hot.prefix_iter(txn, &prefix)?.take(block) {
            let (key, value) = item?;
            moved.push(decode_hot(key_id(key)?, value)?);
        }
        let Some(first) = moved.first().map(|e| e.id) else { return Ok(false) };
        let last = moved.last().map_or(first, |e| e.id);
        let dict = if self.options.compression {
            if meta.dict == 0 || first.saturating_sub(meta.dict_from) >= DICT_REFRESH_EXCHANGES {
                // The speaker's words and phrasing drift slowly; a fresh dictionary now and then
                // follows them.
                meta.dict += 1;
                meta.dict_from = first;
                dbs.dicts.put(txn, &dict_key(meta.number, meta.dict), &dictionary_from(&moved))?;
            }
            Some((meta.dict, Self::dict_bytes(txn, dbs, meta.number, meta.dict)?.to_vec()))
        } else {
            None
        };
        let value =
            encode_block(first, &moved, self.options.compression, dict.as_ref().map(|(id, d)| (*id, d.as_slice())));
        dbs.cold.put(txn, &ex_key(meta.number, first), &value)?;
        let (lo, hi) = (ex_key(meta.number, first), ex_key(meta.number, last));
        dbs.hot.delete_range(txn, &range(&lo, &hi))?;
        meta.hot_count -= moved.len() as u64;
        dbs.speakers.put(txn, speaker.as_bytes(), &meta.encode())?;
        debug!(speaker, first, last, "moved exchanges to a cold block");
        Ok(true)
    }

    /// One step of background upkeep (retention, then tier moves), in one transaction. True
    /// when it did something (call again until false).
    pub fn maintain_step(&self, now_ms: u64) -> Result<bool, MemoryError> {
        // Looked for in a read transaction first: the write lock (which stores wait for) is
        // taken only when there is something to do.
        let due = self.read(|txn, dbs| {
            for item in dbs.speakers.iter(txn)? {
                let (name, meta) = item?;
                if self.upkeep_due(txn, dbs, &SpeakerMeta::decode(meta)?, now_ms)? {
                    return Ok(Some(String::from_utf8(name.to_vec()).map_err(|_| Corrupt("speaker name"))?));
                }
            }
            Ok(None)
        })?;
        match due {
            Some(name) => self.write(|txn, dbs| self.maintain_speaker(txn, dbs, &name, now_ms)),
            None => Ok(false),
        }
    }

    fn upkeep_due(&self, txn: &RoTxn, dbs: &Dbs, meta: &SpeakerMeta, now_ms: u64) -> Result<bool, MemoryError> {
        let Retention { max_exchanges, max_age_days } = self.options.retention;
        if (max_exchanges > 0 && meta.count > max_exchanges)
            || meta.hot_count >= (self.options.hot_tier_size + self.options.block_size.max(1)) as u64
        {
            return Ok(true);
        }
        if max_age_days == 0 || meta.count == 0 {
            return Ok(false);
        }
        let cutoff = now_ms.saturating_sub(u64::from(max_age_days) * 86_400_000);
        let prefix = meta.number.to_be_bytes();
        let oldest = match dbs.cold.prefix_iter(txn, &prefix)?.next().transpose()? {
            Some((key, value)) => {
                let first = key_id(key)?;
                let header = block_header(first, value)?;
                let dict = Self::dict_bytes(txn, dbs, meta.number, header.dict)?;
                find_in_block(first, value, dict, header.first_id())?
            }
            None => match dbs.hot.prefix_iter(txn, &prefix)?.next().transpose()? {
                Some((key, value)) => Some(decode_hot(key_id(key)?, value)?),
                None => None,
            },
        };
        Ok(oldest.is_some_and(|e| e.at_ms < cutoff))
    }

    /// Runs upkeep until there is nothing left to do.
    pub fn maintain(&self) -> Result<(), MemoryError> {
        while self.maintain_step(crate::memory::unix_now_ms())? {}
        Ok(())
    }

    fn maintain_speaker(&self, txn: &mut RwTxn, dbs: &Dbs, name: &str, now_ms: u64) -> Result<bool, MemoryError> {
        let Some(meta) = Self::meta(txn, dbs, name)? else { return Ok(false) };
        let Retention { max_exchanges, max_age_days } = self.options.retention;
        if max_exchanges > 0 && meta.count > max_exchanges {
            let excess = (meta.count - max_exchanges).min(MAX_DELETIONS_PER_STEP as u64) as usize;
            self.delete_oldest(txn, dbs, name, meta, excess, None)?;
            return Ok(true);
        }
        if max_age_days > 0 {
            let cutoff = now_ms.saturating_sub(u64::from(max_age_days) * 86_400_000);
            if self.delete_oldest(txn, dbs, name, meta, MAX_DELETIONS_PER_STEP, Some(cutoff))? > 0 {
                return Ok(true);
            }
        }
        self.move_block(txn, dbs, name)
    }

    /// Deletes up to `max` of the oldest exchanges (only those older than `cutoff_ms` if given).
    fn delete_oldest(
        &self,
        txn: &mut RwTxn,
        dbs: &Dbs,
        name: &str,
        mut meta: SpeakerMeta,
        max: usize,
        cutoff_ms: Option<u64>,
    ) -> Result<usize, MemoryError> {
        let expired = |e: &Exchange| cutoff_ms.is_none_or(|c| e.at_ms < c);
        let prefix = meta.number.to_be_bytes();
        let mut removed: Vec<Exchange> = Vec::new();
        let mut from_hot = 0u64;
        'blocks: while removed.len() < max {
            let first = dbs.cold.prefix_iter(txn, &prefix)?.next().transpose()?.map(|(k, v)| (k.to_vec(), v.to_vec()));
            let Some((key, value)) = first else { break };
            let first_id = key_id(&key)?;
            let dict_id = block_header(first_id, &value)?.dict;
            let dict = Self::dict_bytes(txn, dbs, meta.number, dict_id)?.to_vec();
            let mut all = decode_block(first_id, &value, &dict)?;
            let take = all.iter().take(max - removed.len()).take_while(|e| expired(e)).count();
            if take == 0 {
                break 'blocks;
            }
            let rest = all.split_off(take);
            removed.append(&mut all);
            if rest.is_empty() {
                dbs.cold.delete(txn, &key)?;
            } else {
                let value = encode_block(first_id, &rest, self.options.compression, Some((dict_id, &dict)));
                dbs.cold.put(txn, &key, &value)?;
                break 'blocks;
            }
        }
        if removed.len() < max && dbs.cold.prefix_iter(txn, &prefix)?.next().is_none() {
            let mut doomed = Vec::new();
            for item in dbs.hot.prefix_iter(txn, &prefix)?.take(max - removed.len()) {
                let (key, value) = item?;
                let ex = decode_hot(key_id(key)?, value)?;
                if !expired(&ex) {
                    break;
                }
                doomed.push(ex);
            }
            for ex in &doomed {
                dbs.hot.delete(txn, &ex_key(meta.number, ex.id))?;
            }
            from_hot = doomed.len() as u64;
            removed.extend(doomed);
        }
        let len = self.unindex(txn, dbs, meta.number, &removed)?;
        Self::prune_dicts(txn, dbs, &meta)?;
        meta.count = meta.count.saturating_sub(removed.len() as u64);
        meta.len_sum = meta.len_sum.saturating_sub(len);
        meta.hot_count = meta.hot_count.saturating_sub(from_hot);
        dbs.speakers.put(txn, name.as_bytes(), &meta.encode())?;
        if !removed.is_empty() {
            debug!(speaker = name, removed = removed.len(), "retention deleted old exchanges");
        }
        Ok(removed.len())
    }

    /// Removes exchanges from the index; returns the sum of their lengths.
    fn unindex(&self, txn: &mut RwTxn, dbs: &Dbs, speaker: u32, removed: &[Exchange]) -> Result<u64, MemoryError> {
        let mut by_term: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut len = 0u64;
        for ex in removed {
            let doc = DocTerms::of(&ex.user, &ex.assistant);
            len += u64::from(doc.len);
            for (term, _) in doc.counts {
                by_term.entry(term).or_default().push(ex.id);
            }
        }
        for (term, mut ids) in by_term {
            ids.sort_unstable();
            index::remove_postings(txn, dbs.postings, speaker, &term, &ids)?;
        }
        Ok(len)
    }

    /// Deletes dictionaries no block uses any more (older than the oldest block's and the current one).
    fn prune_dicts(txn: &mut RwTxn, dbs: &Dbs, meta: &SpeakerMeta) -> Result<(), MemoryError> {
        let prefix = meta.number.to_be_bytes();
        let oldest = match dbs.cold.prefix_iter(txn, &prefix)?.next().transpose()? {
            Some((k, v)) => block_header(key_id(k)?, v)?.dict,
            None => meta.dict,
        };
        let keep = oldest.min(meta.dict);
        if keep > 1 {
            let (lo, hi) = (dict_key(meta.number, 0), dict_key(meta.number, keep - 1));
            dbs.dicts.delete_range(txn, &range(&lo, &hi))?;
        }
        Ok(())
    }

    /// Deletes one exchange; false when there is no such exchange.
    pub fn forget(&self, speaker: &str, id: u64) -> Result<bool, MemoryError> {
        let name = speaker_id(speaker);
        self.write(|txn, dbs| {
            let Some(mut meta) = Self::meta(txn, dbs, name)? else { return Ok(false) };
            let key = ex_key(meta.number, id);
            let removed = if let Some(v) = dbs.hot.get(txn, &key)? {
                let ex = decode_hot(id, v)?;
                dbs.hot.delete(txn, &key)?;
                meta.hot_count = meta.hot_count.saturating_sub(1);
                ex
            } else if let Some((first, value)) = Self::block_of(txn, dbs, meta.number, id)? {
                let dict_id = block_header(first, value)?.dict;
                let dict = Self::dict_bytes(txn, dbs, meta.number, dict_id)?.to_vec();
                let mut exs = decode_block(first, value, &dict)?;
                let Ok(i) = exs.binary_search_by_key(&id, |e| e.id) else { return Ok(false) };
                let ex = exs.remove(i);
                let block_key = ex_key(meta.number, first);
                if exs.is_empty() {
                    dbs.cold.delete(txn, &block_key)?;
                } else {
                    let value = encode_block(first, &exs, self.options.compression, Some((dict_id, &dict)));
                    dbs.cold.put(txn, &block_key, &value)?;
                }
                ex
            } else {
                return Ok(false);
            };
            let len = self.unindex(txn, dbs, meta.number, std::slice::from_ref(&removed))?;
            meta.count = meta.count.saturating_sub(1);
            meta.len_sum = meta.len_sum.saturating_sub(len);
            dbs.speakers.put(txn, name.as_bytes(), &meta.encode())?;
            Ok(true)
        })
    }

    /// Deletes everything kept for a speaker (exchanges and facts); returns how many exchanges
    /// that was. Ids are not reused afterwards.
    pub fn forget_all(&self, speaker: &str) -> Result<u64, MemoryError> {
        let name = speaker_id(speaker);
        self.write(|txn, dbs| {
            let Some(mut meta) = Self::meta(txn, dbs, name)? else { return Ok(0) };
            let (lo, hi) = (ex_key(meta.number, 0), ex_key(meta.number, u64::MAX));
            dbs.hot.delete_range(txn, &range(&lo, &hi))?;
            dbs.cold.delete_range(txn, &range(&lo, &hi))?;
            let (dlo, dhi) = (dict_key(meta.number, 0), dict_key(meta.number, u32::MAX));
            dbs.dicts.delete_range(txn, &range(&dlo, &dhi))?;
            index::clear_speaker(txn, dbs.postings, meta.number)?;
            Self::clear_facts(txn, dbs, meta.number)?;
            let n = meta.count;
            meta = SpeakerMeta { number: meta.number, next_id: meta.next_id, ..Default::default() };
            dbs.speakers.put(txn, name.as_bytes(), &meta.encode())?;
            Ok(n)
        })
    }
}
