//! The inverted index for relevance: BM25 over per-speaker posting lists kept in LMDB.
//!
//! Layout in the `postings` database, per speaker and term (`prefix` = speaker number, term
//! bytes, a 0 byte — terms never contain 0, so a prefix names exactly one term):
//! - `prefix + u64::MAX` → the open (newest) chunk, headed by the term's document frequency and
//!   the chunk's first and last ids. A term seen once is this one entry.
//! - `prefix + first_id` → an older, sealed chunk.
//!
//! A chunk is the postings in id order, each one varint of `(id delta << 4) | impact`. Chunks
//! stay under [`CHUNK_MAX_BYTES`] so they live inside LMDB leaf pages; appending touches only
//! the open chunk.
//!
//! Impact-quantized postings: each posting carries BM25's term-frequency part, computed with
//! the speaker's average length at indexing time and quantized to 4 bits, so a query needs no
//! per-document lookups; at query time a posting scores `idf(term) × impact`.
//!
//! Bounded cost at any size: stop words are never indexed (they are in most exchanges and carry
//! no relevance); a query uses at most [`MAX_QUERY_TERMS`] terms, rarest first, leaving out terms
//! found in more than half of the speaker's exchanges; and at most [`MAX_POSTINGS_PER_TERM`] of a
//! term's newest postings are read. So a common word finds only its most recent exchanges (the
//! likeliest to matter), while an old exchange is still found through any rarer word it shares
//! with the question: a rare word's postings are read in full.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;

use heed::types::Bytes;
use heed::{Database, RoTxn, RwTxn};

use super::MemoryError;
use super::codec::{Corrupt, get_varint, put_varint};

/// Largest posting chunk, in bytes; a new chunk starts beyond it.
pub const CHUNK_MAX_BYTES: usize = 512;
/// Most query terms looked up, rarest first.
pub const MAX_QUERY_TERMS: usize = 8;
/// Most postings read per query term, newest first.
pub const MAX_POSTINGS_PER_TERM: usize = 1024;
/// Longest indexed term, in bytes.
const MAX_TERM_BYTES: usize = 32;
/// BM25 parameters (the usual ones).
const K1: f32 = 1.2;
const B: f32 = 0.75;
const OPEN_ID: u64 = u64::MAX;

type Db = Database<'static, Bytes, Bytes>;

/// Inclusive byte range, in the form heed's range methods take for unsized keys.
pub fn range<'a>(lo: &'a [u8], hi: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(lo), Bound::Included(hi))
}

/// Words too common to tell exchanges apart; never indexed, ignored in questions.
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "couldn",
    "did",
    "didn",
    "do",
    "does",
    "doesn",
    "doing",
    "don",
    "down",
    "during",
    "each",
    "else",
    "even",
    "ever",
    "few",
    "for",
    "from",
    "further",
    "get",
    "got",
    "had",
    "hadn",
    "has",
    "hasn",
    "have",
    "haven",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "isn",
    "it",
    "its",
    "itself",
    "just",
    "let",
    "ll",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "oh",
    "ok",
    "okay",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "re",
    "really",
    "same",
    "shall",
    "she",
    "should",
    "shouldn",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "uh",
    "um",
    "under",
    "until",
    "up",
    "us",
    "ve",
    "very",
    "was",
    "wasn",
    "we",
    "well",
    "were",
    "weren",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "won",
    "would",
    "wouldn",
    "yeah",
    "yes",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

fn is_stop_word(w: &str) -> bool {
    STOP_WORDS.binary_search(&w).is_ok()
}

/// Lower-cased words of `text` without stop words, lightly stemmed (plural `s`/`ies`), cut to
/// 32 bytes: the terms indexed and queried. Numbers are kept (a locker code is a good term).
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).filter_map(|w| {
        let mut w = w.to_lowercase();
        if w.chars().count() < 2 && !w.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        if is_stop_word(&w) {
            return None;
        }
        if w.len() > 4 && w.ends_with("ies") {
            w.truncate(w.len() - 3);
            w.push('y');
        } else if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") && !w.ends_with("is") {
            w.pop();
        }
        if w.len() > MAX_TERM_BYTES {
            let cut = super::codec::truncate_utf8(&w, MAX_TERM_BYTES).len();
            w.truncate(cut);
        }
        Some(w)
    })
}

/// The indexed terms of one exchange with their frequencies, and its length in terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocTerms {
    /// Distinct terms, sorted, with how often each occurs.
    pub counts: Vec<(String, u32)>,
    /// Number of indexed terms (BM25's document length).
    pub len: u32,
}

impl DocTerms {
    /// The terms of an exchange: what the user said and what the assistant answered.
    pub fn of(user: &str, assistant: &str) -> Self {
        let mut all: Vec<String> = terms(user).chain(terms(assistant)).collect();
        let len = all.len() as u32;
        all.sort_unstable();
        let mut counts: Vec<(String, u32)> = Vec::with_capacity(all.len());
        for t in all {
            match counts.last_mut() {
                Some((last, n)) if *last == t => *n += 1,
                _ => counts.push((t, 1)),
            }
        }
        Self { counts, len }
    }
}

/// BM25's term-frequency part, quantized to 1..=15.
pub fn impact(tf: u32, doc_len: u32, avg_len: f32) -> u8 {
    let tf = tf as f32;
    let norm = if avg_len > 0.0 { doc_len as f32 / avg_len } else { 1.0 };
    let part = tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * norm));
    ((part / (K1 + 1.0) * 15.0).round() as u8).clamp(1, 15)
}

fn impact_weight(q: u8) -> f32 {
    f32::from(q) / 15.0 * (K1 + 1.0)
}

/// BM25's inverse document frequency (the non-negative variant).
pub fn idf(docs: u64, df: u64) -> f32 {
    let (n, df) = (docs.max(df) as f32, df as f32);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// The key prefix of one speaker's term.
pub fn term_prefix(speaker: u32, term: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + term.len() + 9);
    k.extend_from_slice(&speaker.to_be_bytes());
    k.extend_from_slice(term.as_bytes());
    k.push(0);
    k
}

fn chunk_key(prefix: &[u8], first_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&first_id.to_be_bytes());
    k
}

fn key_id(key: &[u8]) -> Result<u64, Corrupt> {
    let tail = key.len().checked_sub(8).ok_or(Corrupt("posting key"))?;
    Ok(u64::from_be_bytes(key[tail..].try_into().map_err(|_| Corrupt("posting key"))?))
}

/// The open (newest) chunk of a term, stored under `prefix + u64::MAX` with its header: the
/// term's document frequency, the chunk's first id and its last id. A rare term is this one
/// entry; older, full chunks are sealed under `prefix + first id`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Open {
    df: u64,
    first: u64,
    last: u64,
    bytes: Vec<u8>,
}

impl Open {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.bytes.len() + 12);
        put_varint(&mut v, self.df);
        put_varint(&mut v, self.first);
        put_varint(&mut v, self.last);
        v.extend_from_slice(&self.bytes);
        v
    }

    /// The header and where the postings start.
    fn header(v: &[u8]) -> Result<(u64, u64, u64, usize), Corrupt> {
        let mut pos = 0;
        let df = get_varint(v, &mut pos)?;
        let first = get_varint(v, &mut pos)?;
        let last = get_varint(v, &mut pos)?;
        Ok((df, first, last, pos))
    }

    fn decode(v: &[u8]) -> Result<Self, Corrupt> {
        let (df, first, last, pos) = Self::header(v)?;
        Ok(Self { df, first, last, bytes: v[pos..].to_vec() })
    }
}

fn decode_chunk(first_id: u64, bytes: &[u8], out: &mut Vec<(u64, u8)>) -> Result<(), Corrupt> {
    let (mut pos, mut id) = (0, first_id);
    while pos < bytes.len() {
        let v = get_varint(bytes, &mut pos)?;
        id = id.checked_add(v >> 4).ok_or(Corrupt("posting id"))?;
        out.push((id, (v & 15) as u8));
    }
    Ok(())
}

fn encode_chunk(first_id: u64, postings: &[(u64, u8)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(postings.len() * 2);
    let mut prev = first_id;
    for &(id, q) in postings {
        put_varint(&mut out, ((id - prev) << 4) | u64::from(q));
        prev = id;
    }
    out
}

/// Document frequency of a speaker's term (0 when unknown).
pub fn doc_freq(txn: &RoTxn, db: Db, speaker: u32, term: &str) -> Result<u64, MemoryError> {
    let key = chunk_key(&term_prefix(speaker, term), OPEN_ID);
    Ok(match db.get(txn, &key)? {
        Some(v) => Open::header(v)?.0,
        None => 0,
    })
}

/// Appends postings (ids ascending, newer than any the term has) to a speaker's term.
pub fn add_postings(txn: &mut RwTxn, db: Db, speaker: u32, term: &str, new: &[(u64, u8)]) -> Result<(), MemoryError> {
    let Some(&(first_new, _)) = new.first() else { return Ok(()) };
    let prefix = term_prefix(speaker, term);
    let open_key = chunk_key(&prefix, OPEN_ID);
    let mut open = match db.get(txn, &open_key)? {
        Some(v) => Open::decode(v)?,
        None => Open { df: 0, first: first_new, last: first_new, bytes: Vec::new() },
    };
    if !open.bytes.is_empty() && open.last >= first_new {
        return Err(Corrupt("posting order").into());
    }
    let mut scratch = Vec::with_capacity(10);
    for &(id, q) in new {
        if open.bytes.is_empty() {
            open.first = id;
            open.last = id;
        }
        scratch.clear();
        put_varint(&mut scratch, ((id - open.last) << 4) | u64::from(q));
        if !open.bytes.is_empty() && open.bytes.len() + scratch.len() > CHUNK_MAX_BYTES {
            db.put(txn, &chunk_key(&prefix, open.first), &open.bytes)?;
            open.bytes.clear();
            open.first = id;
            scratch.clear();
            put_varint(&mut scratch, u64::from(q));
        }
        open.bytes.extend_from_slice(&scratch);
        open.last = id;
        open.df += 1;
    }
    db.put(txn, &open_key, &open.encode())?;
    Ok(())
}

/// Removes postings (ids ascending) from a speaker's term; ids it does not hold are ignored.
pub fn remove_postings(txn: &mut RwTxn, db: Db, speaker: u32, term: &str, ids: &[u64]) -> Result<(), MemoryError> {
    let prefix = term_prefix(speaker, term);
    let open_key = chunk_key(&prefix, OPEN_ID);
    let Some(mut open) = db.get(txn, &open_key)?.map(Open::decode).transpose()? else { return Ok(()) };
    let mut postings = Vec::new();
    let mut removed = 0u64;

    // Ids in the open chunk.
    let split = ids.partition_point(|&id| id < open.first);
    if split < ids.len() {
        decode_chunk(open.first, &open.bytes, &mut postings)?;
        let before = postings.len();
        postings.retain(|p| ids[split..].binary_search(&p.0).is_err());
        removed += (before - postings.len()) as u64;
        open.bytes = encode_chunk(open.first, &postings);
        open.last = postings.last().map_or(open.first, |p| p.0);
    }

    // Ids in sealed chunks: find the chunk with the greatest first id at or below each.
    let ids = &ids[..split];
    let mut i = 0;
    while i < ids.len() {
        let lo = chunk_key(&prefix, 0);
        let hi = chunk_key(&prefix, ids[i]);
        let found = db.rev_range(txn, &range(&lo, &hi))?.next().transpose()?;
        let Some((key, value)) = found else {
            i += 1;
            continue;
        };
        let first = key_id(key)?;
        postings.clear();
        decode_chunk(first, value, &mut postings)?;
        let chunk_last = postings.last().map_or(first, |p| p.0);
        let start = i;
        while i < ids.len() && ids[i] <= chunk_last {
            i += 1;
        }
        if i == start {
            i += 1;
            continue;
        }
        let doomed = &ids[start..i];
        let before = postings.len();
        postings.retain(|p| doomed.binary_search(&p.0).is_err());
        removed += (before - postings.len()) as u64;
        let key = chunk_key(&prefix, first);
        if postings.is_empty() {
            db.delete(txn, &key)?;
        } else if postings.len() != before {
            db.put(txn, &key, &encode_chunk(first, &postings))?;
        }
    }

    open.df = open.df.saturating_sub(removed);
    if open.bytes.is_empty() {
        // The open chunk emptied: the newest sealed chunk, if any, becomes the open one.
        let lo = chunk_key(&prefix, 0);
        let hi = chunk_key(&prefix, OPEN_ID - 1);
        let newest = db.rev_range(txn, &range(&lo, &hi))?.next().transpose()?.map(|(k, v)| (k.to_vec(), v.to_vec()));
        match newest {
            Some((key, bytes)) => {
                let first = key_id(&key)?;
                postings.clear();
                decode_chunk(first, &bytes, &mut postings)?;
                db.delete(txn, &key)?;
                open.first = first;
                open.last = postings.last().map_or(first, |p| p.0);
                open.bytes = bytes;
            }
            None => {
                db.delete(txn, &open_key)?;
                return Ok(());
            }
        }
    }
    db.put(txn, &open_key, &open.encode())?;
    Ok(())
}

/// Removes every posting of a speaker.
pub fn clear_speaker(txn: &mut RwTxn, db: Db, speaker: u32) -> Result<(), MemoryError> {
    let lo = speaker.to_be_bytes();
    let hi = speaker.checked_add(1).map(u32::to_be_bytes);
    let upper = match &hi {
        Some(h) => Bound::Excluded(&h[..]),
        None => Bound::Unbounded,
    };
    let deleted = db.delete_range(txn, &(Bound::Included(&lo[..]), upper))?;
    tracing::debug!(speaker, deleted, "postings cleared");
    Ok(())
}

/// A fast hasher for exchange ids, which are already well spread counters.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Ids scored by relevance.
pub type Scores = HashMap<u64, f32, BuildHasherDefault<IdHasher>>;

/// The ids of a speaker's exchanges most relevant to `query` by BM25, best first (newer first
/// on equal scores). `docs` is the speaker's number of exchanges and `newest` its newest id.
pub fn search(
    txn: &RoTxn,
    db: Db,
    speaker: u32,
    docs: u64,
    newest: u64,
    query: &str,
    limit: usize,
) -> Result<Vec<(u64, f32)>, MemoryError> {
    if limit == 0 || docs == 0 {
        return Ok(Vec::new());
    }
    let mut words: Vec<String> = terms(query).collect();
    words.sort_unstable();
    words.dedup();
    let mut weighted = Vec::with_capacity(words.len());
    for w in words {
        let df = doc_freq(txn, db, speaker, &w)?;
        // A term in most of the speaker's exchanges tells none of them apart.
        if df > 0 && df <= docs / 2 + 1 {
            weighted.push((df, w));
        }
    }
    weighted.sort_unstable();
    weighted.truncate(MAX_QUERY_TERMS);

    ACCUMULATOR.with_borrow_mut(|acc| {
        acc.reset(newest);
        accumulate(txn, db, speaker, docs, &weighted, acc)?;
        // Top `limit` in one pass: most candidates fall below the current last place at once.
        let better = |a: &(u64, f32), b: &(u64, f32)| a.1 > b.1 || (a.1 == b.1 && a.0 > b.0);
        let mut top: Vec<(u64, f32)> = Vec::with_capacity(limit + 1);
        acc.for_each(|id, score| {
            let c = (id, score);
            if top.len() == limit && !better(&c, &top[limit - 1]) {
                return;
            }
            let at = top.partition_point(|t| better(t, &c));
            top.insert(at, c);
            top.truncate(limit);
        });
        Ok(top)
    })
}

fn accumulate(
    txn: &RoTxn,
    db: Db,
    speaker: u32,
    docs: u64,
    weighted: &[(u64, String)],
    scores: &mut Accumulator,
) -> Result<(), MemoryError> {
    let mut chunk = Vec::with_capacity(512);
    for (df, term) in weighted {
        let weight = idf(docs, *df);
        let prefix = term_prefix(speaker, term);
        let mut read = 0usize;
        for item in db.rev_prefix_iter(txn, &prefix)? {
            let (key, value) = item?;
            let first = key_id(key)?;
            chunk.clear();
            if first == OPEN_ID {
                let (_, open_first, _, pos) = Open::header(value)?;
                decode_chunk(open_first, &value[pos..], &mut chunk)?;
            } else {
                decode_chunk(first, value, &mut chunk)?;
            }
            for &(id, q) in chunk.iter().rev().take(MAX_POSTINGS_PER_TERM - read) {
                scores.add(id, weight * impact_weight(q));
            }
            read += chunk.len();
            if read >= MAX_POSTINGS_PER_TERM {
                break;
            }
        }
    }
    Ok(())
}

/// Ids within this distance of the newest get a slot in the dense score array.
const WINDOW: usize = 1 << 16;

/// Sums scores per id: a dense array for the newest [`WINDOW`] ids, where nearly all postings a
/// query reads fall (it reads the newest ones), and a hash map for older ids. One per thread,
/// reused, so a query allocates nothing and resets only the slots it touched.
struct Accumulator {
    newest: u64,
    dense: Vec<f32>,
    touched: Vec<u32>,
    sparse: Scores,
}

thread_local! {
    static ACCUMULATOR: std::cell::RefCell<Accumulator> = std::cell::RefCell::new(Accumulator {
        newest: 0,
        dense: Vec::new(),
        touched: Vec::new(),
        sparse: Scores::default(),
    });
}

impl Accumulator {
    fn reset(&mut self, newest: u64) {
        if self.dense.is_empty() {
            self.dense = vec![0.0; WINDOW];
        }
        for &i in &self.touched {
            self.dense[i as usize] = 0.0;
        }
        self.touched.clear();
        self.sparse.clear();
        self.newest = newest;
    }

    /// Adds a (positive) score to an id.
    #[inline]
    fn add(&mut self, id: u64, score: f32) {
        let offset = self.newest.wrapping_sub(id);
        if offset < WINDOW as u64 {
            let slot = &mut self.dense[offset as usize];
            if *slot == 0.0 {
                self.touched.push(offset as u32);
            }
            *slot += score;
        } else {
            *self.sparse.entry(id).or_insert(0.0) += score;
        }
    }

    fn for_each(&self, mut f: impl FnMut(u64, f32)) {
        for &offset in &self.touched {
            let score = self.dense[offset as usize];
            if score > 0.0 {
                f(self.newest - u64::from(offset), score);
            }
        }
        for (&id, &score) in &self.sparse {
            f(id, score);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]), "STOP_WORDS must stay sorted");
    }

    #[test]
    fn terms_drop_stop_words_keep_numbers_and_stem_plurals() {
        let t: Vec<String> = terms("The cats' bakeries, and MY locker code is 4512! I'm x").collect();
        assert_eq!(t, ["cat", "bakery", "locker", "code", "4512"]);
        assert_eq!(terms("glass bus this").collect::<Vec<_>>(), ["glass", "bus"]);
    }

    #[test]
    fn doc_terms_count_repeats() {
        let d = DocTerms::of("zebra zebra lion", "the lion sleeps");
        assert_eq!(d.len, 5);
        assert_eq!(d.counts, vec![("lion".into(), 2), ("sleep".into(), 1), ("zebra".into(), 2)]);
    }

    #[test]
    fn impact_rewards_repeats_and_short_documents() {
        assert!(impact(3, 10, 10.0) > impact(1, 10, 10.0));
        assert!(impact(1, 5, 10.0) > impact(1, 40, 10.0));
        assert!((1..=15).contains(&impact(100, 1, 10.0)));
        assert!(idf(1000, 1) > idf(1000, 500));
        assert!(idf(10, 10) > 0.0);
    }

    #[test]
    fn chunks_round_trip() {
        let p = vec![(10, 3), (11, 15), (400, 1), (1_000_000, 7)];
        let mut out = Vec::new();
        decode_chunk(10, &encode_chunk(10, &p), &mut out).unwrap();
        assert_eq!(out, p);
    }
}
