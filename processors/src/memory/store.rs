//! The memory database: LMDB (heed) with lz4-compressed values, a hot tier and cold blocks,
//! and the two threads that write to it off the pipeline's path.
//!
//! Databases inside the environment (keys big-endian so they sort by speaker, then by time):
//! - `meta`: format version and the next speaker number.
//! - `speakers`: speaker name → [`SpeakerMeta`] (number, next id, counts, current dictionary).
//! - `hot`: speaker number + exchange id → one exchange (lz4 when it helps). Holds the newest
//!   exchanges, read every turn: between `hot_tier_size` and `hot_tier_size + block_size - 1`.
//! - `cold`: speaker number + first id → a block of `block_size` consecutive older exchanges in
//!   frames of 16, each compressed against the speaker's dictionary (see [`super::codec`]).
//! - `dicts`: speaker number + dictionary number → 64 KiB of the speaker's own earlier
//!   exchanges, what cold frames are compressed against; a new one every 32,768 exchanges.
//! - `postings`: the inverted index (see [`super::index`]).
//!
//! Ids are a per-speaker counter kept in `speakers` and bumped inside the write transaction that
//! stores the exchange, so they never collide (not even across processes: LMDB serializes
//! writers) and never repeat after a deletion.
//!
//! Who writes: [`MemoryStore`] runs a writer thread that commits queued stores (several at once
//! when they queue up) and acknowledges each after its commit, and an upkeep thread that moves
//! full blocks from the hot to the cold tier and applies retention, one short transaction at a
//! time, never inside a store.
//!
//! Durability: default LMDB flags, so every commit is flushed to disk before it returns. The map
//! starts small and doubles when a write hits `MDB_MAP_FULL` (the write is then retried), under a
//! lock that keeps every transaction of this process out while the map is resized, as LMDB
//! requires; a map grown by another process (`slowcat memory forget` while the assistant runs)
//! is adopted on `MDB_MAP_RESIZED`.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, MdbError, RoTxn, RwTxn};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::codec::{
    self, Corrupt, MAX_TEXT_BYTES, block_header, decode_block, decode_hot, dictionary_from, encode_block, encode_hot,
    find_in_block,
};
use super::index::{self, DocTerms, range};
use super::{Exchange, MemoryError};

type Db = Database<'static, Bytes, Bytes>;
/// Postings of a batch per (speaker, term), ids ascending.
type PendingPostings = BTreeMap<(u32, String), Vec<(u64, u8)>>;

/// Version of the byte layout; a database written by a newer layout is refused, not misread.
const FORMAT_VERSION: u8 = 1;
const DATA_FILE: &str = "data.mdb";
const LMDB_MAGIC: u32 = 0xBEEF_C0DE;
/// Most deletions one maintenance transaction makes, so retention never holds the write lock long.
const MAX_DELETIONS_PER_STEP: usize = 4096;
/// Stores the writer commits together when they queue up.
const MAX_GROUP_COMMIT: usize = 64;
/// Capacity of the writer's queue; a full queue makes the sender wait.
const WRITER_QUEUE: usize = 256;
/// A new compression dictionary is made after this many exchanges (64 KiB each: about 2 bytes
/// per exchange).
const DICT_REFRESH_EXCHANGES: u64 = 32_768;
/// Longest speaker id kept (LMDB keys are short).
const MAX_SPEAKER_BYTES: usize = 128;

/// How many exchanges (per speaker) to keep, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Oldest exchanges beyond this many are deleted (0: no limit).
    pub max_exchanges: u64,
    /// Exchanges older than this are deleted (0: no limit).
    pub max_age_days: u32,
}

/// How the database is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Compress values with lz4.
    pub compression: bool,
    /// Newest exchanges per speaker kept as single records (read every turn).
    pub hot_tier_size: usize,
    /// Exchanges per cold block (bigger compresses better; a block is decompressed to read one).
    pub block_size: usize,
    /// What to delete, and when.
    pub retention: Retention,
    /// Map size to start with; it doubles whenever it fills.
    pub initial_map_size: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            compression: true,
            hot_tier_size: 64,
            block_size: 256,
            retention: Retention { max_exchanges: 1_000_000, max_age_days: 0 },
            initial_map_size: 64 << 20,
        }
    }
}

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

    fn encode(&self) -> [u8; Self::LEN] {
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

    fn decode(v: &[u8]) -> Result<Self, Corrupt> {
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

    fn avg_len(&self) -> f32 {
        if self.count == 0 { 0.0 } else { self.len_sum as f32 / self.count as f32 }
    }
}

/// The newest exchanges and the most relevant older ones, as read for one LLM request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recall {
    /// The newest exchanges, oldest first.
    pub recent: Vec<Exchange>,
    /// Exchanges relevant to the question with their BM25 scores, best first (some may also be
    /// in `recent`).
    pub relevant: Vec<(Exchange, f32)>,
}

/// Bytes the database takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Size of the data file.
    pub file_bytes: u64,
    /// Bytes in pages holding live data (the rest of the file is free pages LMDB reuses).
    pub used_bytes: u64,
}

#[derive(Clone, Copy)]
struct Dbs {
    meta: Db,
    speakers: Db,
    hot: Db,
    cold: Db,
    dicts: Db,
    postings: Db,
}

/// The memory database, opened. Thread-safe; every call is blocking (call it from
/// `spawn_blocking` or a thread, never from async code).
pub struct MemoryDb {
    env: Env,
    dbs: Dbs,
    /// Held (shared) by every transaction and (exclusively) while the map is resized.
    map_lock: RwLock<()>,
    path: PathBuf,
    options: StoreOptions,
}

impl std::fmt::Debug for MemoryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDb").field("path", &self.path).field("options", &self.options).finish()
    }
}

fn ex_key(speaker: u32, id: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&speaker.to_be_bytes());
    k[4..].copy_from_slice(&id.to_be_bytes());
    k
}

fn dict_key(speaker: u32, id: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&speaker.to_be_bytes());
    k[4..].copy_from_slice(&id.to_be_bytes());
    k
}

fn key_id(key: &[u8]) -> Result<u64, Corrupt> {
    key.get(4..12).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes).ok_or(Corrupt("exchange key"))
}

/// Normalizes a speaker id: trimmed, `default` when empty, bounded in length.
pub fn speaker_id(speaker: &str) -> &str {
    let s = speaker.trim();
    if s.is_empty() { crate::frame::DEFAULT_SPEAKER } else { codec::truncate_utf8(s, MAX_SPEAKER_BYTES) }
}

fn is_map_full(e: &MemoryError) -> bool {
    matches!(e, MemoryError::Lmdb(heed::Error::Mdb(MdbError::MapFull)))
}

/// Creates the directory (and missing parents) as 0700 and tightens an existing one to 0700.
fn private_dir(path: &Path) -> Result<(), MemoryError> {
    let io = |source| MemoryError::Path { path: path.to_path_buf(), source };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => {
            return Err(io(std::io::Error::new(std::io::ErrorKind::NotADirectory, "it exists and is not a directory")));
        }
        Ok(m) => {
            if m.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io)?;
        }
        Err(e) => return Err(io(e)),
    }
    Ok(())
}

/// Checks that an existing data file looks like an LMDB database, so a damaged or foreign file
/// gets a clear message instead of whatever LMDB makes of it.
pub fn check_data_file(dir: &Path) -> Result<(), MemoryError> {
    use std::io::Read;
    let file = dir.join(DATA_FILE);
    let corrupt = |detail: String| MemoryError::CorruptFile { path: file.clone(), detail };
    let mut f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(MemoryError::Path { path: file.clone(), source: e }),
    };
    let len = f.metadata().map_err(|e| MemoryError::Path { path: file.clone(), source: e })?.len();
    if len == 0 {
        // LMDB creates the file before writing its first pages; an empty file is a fresh start.
        return Ok(());
    }
    let mut head = [0u8; 20];
    if f.read_exact(&mut head).is_err() {
        return Err(corrupt(format!("the file is only {len} bytes long")));
    }
    let magic = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    if magic != LMDB_MAGIC {
        return Err(corrupt("it does not start with an LMDB header".into()));
    }
    Ok(())
}

impl MemoryDb {
    /// Opens the database in directory `path`, creating it (mode 0700, files 0600) if needed.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, MemoryError> {
        private_dir(path)?;
        Self::open_dir(path, options)
    }

    /// Opens an existing database (for the `memory` commands): never creates one.
    pub fn open_existing(path: &Path) -> Result<Self, MemoryError> {
        if !path.join(DATA_FILE).is_file() {
            return Err(MemoryError::Missing(path.to_path_buf()));
        }
        Self::open_dir(path, StoreOptions::default())
    }

    fn open_dir(path: &Path, options: StoreOptions) -> Result<Self, MemoryError> {
        check_data_file(path)?;
        let page = 4096usize;
        let map_size = options.initial_map_size.max(page).div_ceil(page) * page;
        // Read transactions keep a reader slot per thread that ever read, and tokio's blocking
        // pool may run many threads: room for 1024 (64 bytes each in lock.mdb).
        // SAFETY: the environment is opened with default (safe) flags, and heed refuses to
        // open the same path twice in this process.
        let env = unsafe { EnvOpenOptions::new().map_size(map_size).max_dbs(8).max_readers(1024).open(path) }.map_err(
            |e| match e {
                heed::Error::EnvAlreadyOpened => MemoryError::AlreadyOpen(path.to_path_buf()),
                heed::Error::Mdb(MdbError::Invalid) | heed::Error::Mdb(MdbError::Corrupted) => {
                    MemoryError::CorruptFile { path: path.join(DATA_FILE), detail: e.to_string() }
                }
                heed::Error::Mdb(MdbError::VersionMismatch) => MemoryError::CorruptFile {
                    path: path.join(DATA_FILE),
                    detail: "it was written by an incompatible LMDB version".into(),
                },
                heed::Error::Io(source) => MemoryError::Path { path: path.to_path_buf(), source },
                other => MemoryError::Lmdb(other),
            },
        )?;
        for name in [DATA_FILE, "lock.mdb"] {
            let file = path.join(name);
            if let Ok(m) = std::fs::metadata(&file)
                && m.permissions().mode() & 0o077 != 0
            {
                let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
            }
        }
        let wtxn = env.write_txn()?;
        let dbs = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                Ok(heed::CommitOrAbort::<_, ()>::Commit((
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("meta"))?,
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("speakers"))?,
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("hot"))?,
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("cold"))?,
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("dicts"))?,
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("postings"))?,
                )))
            })
            .map_err(|e| match e {
                heed::Error::Mdb(MdbError::Invalid | MdbError::Corrupted | MdbError::Incompatible) => {
                    MemoryError::CorruptFile { path: path.join(DATA_FILE), detail: e.to_string() }
                }
                other => MemoryError::Lmdb(other),
            })?
            .unwrap_commit();
        let (meta, speakers, hot, cold, dicts, postings) = dbs;
        let db = Self {
            env,
            dbs: Dbs { meta, speakers, hot, cold, dicts, postings },
            map_lock: RwLock::new(()),
            path: path.to_path_buf(),
            options,
        };
        db.check_format()?;
        Ok(db)
    }

    fn check_format(&self) -> Result<(), MemoryError> {
        let found = self.read(|txn, dbs| Ok(dbs.meta.get(txn, b"format")?.and_then(|v| v.first().copied())))?;
        match found {
            Some(v) if v > FORMAT_VERSION => Err(MemoryError::Format { path: self.path.clone(), found: v }),
            Some(_) => Ok(()),
            None => self.write(|txn, dbs| Ok(dbs.meta.put(txn, b"format", &[FORMAT_VERSION])?)),
        }
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the database is kept.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Runs `f` in a read transaction (a consistent snapshot).
    fn read<R>(&self, mut f: impl FnMut(&RoTxn, &Dbs) -> Result<R, MemoryError>) -> Result<R, MemoryError> {
        loop {
            let guard = self.map_lock.read().unwrap_or_else(|p| p.into_inner());
            match self.env.read_txn() {
                Ok(txn) => return f(&txn, &self.dbs),
                Err(heed::Error::Mdb(MdbError::MapResized)) => {
                    drop(guard);
                    self.adopt_map_size()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs `f` in a write transaction and commits it durably. When the map is full the
    /// transaction is dropped, the map grown and `f` run again from scratch.
    fn write<R>(&self, mut f: impl FnMut(&mut RwTxn, &Dbs) -> Result<R, MemoryError>) -> Result<R, MemoryError> {
        loop {
            let guard = self.map_lock.read().unwrap_or_else(|p| p.into_inner());
            let size = self.env.info().map_size;
            let mut txn = match self.env.write_txn() {
                Ok(txn) => txn,
                Err(heed::Error::Mdb(MdbError::MapResized)) => {
                    drop(guard);
                    self.adopt_map_size()?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let result = f(&mut txn, &self.dbs).and_then(|r| txn.commit().map(|()| r).map_err(MemoryError::from));
            match result {
                Err(e) if is_map_full(&e) => {
                    drop(guard);
                    self.grow_map(size)?;
                }
                other => return other,
            }
        }
    }

    fn grow_map(&self, seen: usize) -> Result<(), MemoryError> {
        let _excl = self.map_lock.write().unwrap_or_else(|p| p.into_inner());
        let current = self.env.info().map_size;
        if current > seen {
            return Ok(()); // another writer grew it meanwhile
        }
        let grown = current.saturating_add(current.min(2 << 30)).div_ceil(4096) * 4096;
        info!(path = %self.path.display(), from = current, to = grown, "memory database map full; growing it");
        // SAFETY: the exclusive map lock guarantees no transaction of this process is active.
        unsafe { self.env.resize(grown) }?;
        Ok(())
    }

    /// Another process grew the map: adopt its size (LMDB's documented answer to MAP_RESIZED).
    fn adopt_map_size(&self) -> Result<(), MemoryError> {
        let _excl = self.map_lock.write().unwrap_or_else(|p| p.into_inner());
        // SAFETY: as in `grow_map`; size 0 means "the size the file now has".
        unsafe { self.env.resize(0) }?;
        Ok(())
    }

    fn meta(txn: &RoTxn, dbs: &Dbs, speaker: &str) -> Result<Option<SpeakerMeta>, MemoryError> {
        Ok(dbs.speakers.get(txn, speaker.as_bytes())?.map(SpeakerMeta::decode).transpose()?)
    }

    fn meta_or_new(txn: &mut RwTxn, dbs: &Dbs, speaker: &str) -> Result<SpeakerMeta, MemoryError> {
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
        while self.maintain_step(super::unix_now_ms())? {}
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
    fn dict_bytes<'t>(txn: &'t RoTxn, dbs: &Dbs, speaker: u32, id: u32) -> Result<&'t [u8], MemoryError> {
        if id == 0 {
            return Ok(&[]);
        }
        dbs.dicts.get(txn, &dict_key(speaker, id))?.ok_or_else(|| Corrupt("compression dictionary (missing)").into())
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

    /// The block holding `id`, if any: its first key id and value.
    fn block_of<'t>(txn: &'t RoTxn, dbs: &Dbs, speaker: u32, id: u64) -> Result<Option<(u64, &'t [u8])>, MemoryError> {
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
    /// leaves out those it inserts as pairs, and budget permitting inserts them all).
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
            Ok(Recall { recent: newest, relevant })
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

    /// Deletes everything kept for a speaker; returns how many exchanges that was. Ids are not
    /// reused afterwards.
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
            let n = meta.count;
            meta = SpeakerMeta { number: meta.number, next_id: meta.next_id, ..Default::default() };
            dbs.speakers.put(txn, name.as_bytes(), &meta.encode())?;
            Ok(n)
        })
    }

    /// Size of the data file and of the pages live data takes (the rest are pages freed by
    /// earlier transactions, which later writes reuse).
    pub fn disk_usage(&self) -> Result<DiskUsage, MemoryError> {
        let file = self.path.join(DATA_FILE);
        let file_bytes =
            std::fs::metadata(&file).map_err(|source| MemoryError::Path { path: file.clone(), source })?.len();
        let pages = |s: &heed::DatabaseStat| (s.leaf_pages + s.branch_pages + s.overflow_pages) as u64;
        let main = self.env.unnamed_database_stat();
        let named: u64 = self.page_stats()?.iter().map(|(_, s)| pages(s)).sum();
        // Two meta pages head every LMDB file.
        let used_bytes = (named + pages(&main) + 2) * u64::from(main.page_size);
        Ok(DiskUsage { file_bytes, used_bytes })
    }

    /// Pages and entries of each database inside the environment, by name.
    pub fn page_stats(&self) -> Result<Vec<(&'static str, heed::DatabaseStat)>, MemoryError> {
        self.read(|txn, dbs| {
            let mut out = Vec::new();
            for (name, db) in [
                ("meta", dbs.meta),
                ("speakers", dbs.speakers),
                ("hot", dbs.hot),
                ("cold", dbs.cold),
                ("dicts", dbs.dicts),
                ("postings", dbs.postings),
            ] {
                out.push((name, db.stat(txn)?));
            }
            Ok(out)
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

/// A store the writer failed; the error is shared by every exchange of the failed commit.
pub type StoreResult = Result<u64, Arc<MemoryError>>;

struct Job {
    exchange: NewExchange,
    ack: oneshot::Sender<StoreResult>,
}

#[derive(Default)]
struct MaintenanceState {
    kicks: u64,
    done: u64,
    stop: bool,
    last_error: Option<String>,
}

#[derive(Default)]
struct Maintenance {
    state: Mutex<MaintenanceState>,
    changed: Condvar,
}

impl Maintenance {
    fn lock(&self) -> std::sync::MutexGuard<'_, MaintenanceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick(&self) -> u64 {
        let mut s = self.lock();
        s.kicks += 1;
        self.changed.notify_all();
        s.kicks
    }
}

/// The database with its writer thread (stores, committed in order, acknowledged after the
/// commit) and its maintenance thread (tier moves and retention, never on the store path).
pub struct MemoryStore {
    db: Arc<MemoryDb>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    mover: Option<JoinHandle<()>>,
    maintenance: Arc<Maintenance>,
}

/// How often upkeep runs when nothing is stored (age-based retention of an idle assistant).
const IDLE_UPKEEP: Duration = Duration::from_secs(3600);

impl MemoryStore {
    /// Starts the writer and maintenance threads on an opened database.
    pub fn start(db: Arc<MemoryDb>) -> Result<Self, MemoryError> {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let maintenance = Arc::new(Maintenance::default());
        let spawn_err = |e| MemoryError::Path { path: db.path.clone(), source: e };
        let writer = {
            let (db, m) = (db.clone(), maintenance.clone());
            std::thread::Builder::new().name("memory-writer".into()).spawn(move || writer_loop(&db, rx, &m))
        }
        .map_err(spawn_err)?;
        let mover = {
            let (db, m) = (db.clone(), maintenance.clone());
            std::thread::Builder::new().name("memory-upkeep".into()).spawn(move || upkeep_loop(&db, &m))
        }
        .map_err(spawn_err)?;
        maintenance.kick();
        Ok(Self { db, jobs: Some(tx), writer: Some(writer), mover: Some(mover), maintenance })
    }

    /// The database, for reads.
    pub fn db(&self) -> &Arc<MemoryDb> {
        &self.db
    }

    /// Queues an exchange without waiting; the receiver yields its id once it is committed.
    /// Errors when the queue is full (the disk is stalled) or the writer has stopped.
    pub fn submit(&self, exchange: NewExchange) -> Result<oneshot::Receiver<StoreResult>, MemoryError> {
        let (ack, rx) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(MemoryError::Stopped)?;
        jobs.try_send(Job { exchange, ack }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => MemoryError::Busy,
            mpsc::error::TrySendError::Closed(_) => MemoryError::Stopped,
        })?;
        Ok(rx)
    }

    /// Stores an exchange and waits until it is committed; returns its id.
    pub async fn store(&self, exchange: NewExchange) -> Result<u64, Arc<MemoryError>> {
        let (ack, rx) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(MemoryError::Stopped)?;
        jobs.send(Job { exchange, ack }).await.map_err(|_| MemoryError::Stopped)?;
        rx.await.map_err(|_| MemoryError::Stopped)?
    }

    /// [`MemoryStore::store`] for threads outside the async runtime.
    pub fn store_blocking(&self, exchange: NewExchange) -> Result<u64, Arc<MemoryError>> {
        let (ack, rx) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(MemoryError::Stopped)?;
        jobs.blocking_send(Job { exchange, ack }).map_err(|_| MemoryError::Stopped)?;
        rx.blocking_recv().map_err(|_| MemoryError::Stopped)?
    }

    /// Waits (blocking) until upkeep has caught up with everything stored so far; false on timeout.
    pub fn settle(&self, timeout: Duration) -> bool {
        let target = self.maintenance.kick();
        let deadline = Instant::now() + timeout;
        let mut s = self.maintenance.lock();
        while s.done < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self.maintenance.changed.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// The last upkeep failure not reported yet.
    pub fn take_upkeep_error(&self) -> Option<String> {
        self.maintenance.lock().last_error.take()
    }

    /// Commits what is queued, stops both threads and waits for them (blocking; bounded by one
    /// commit and one upkeep step).
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        {
            let mut s = self.maintenance.lock();
            s.stop = true;
            self.maintenance.changed.notify_all();
        }
        if let Some(m) = self.mover.take() {
            let _ = m.join();
        }
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        // Not joined here (drop may run on an async thread): the threads finish their current
        // commit and stop on their own.
        self.jobs = None;
        let mut s = self.maintenance.lock();
        s.stop = true;
        self.maintenance.changed.notify_all();
    }
}

fn writer_loop(db: &MemoryDb, mut rx: mpsc::Receiver<Job>, maintenance: &Maintenance) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP_COMMIT {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let batch: Vec<&NewExchange> = jobs.iter().map(|j| &j.exchange).collect();
        match db.insert(&batch) {
            Ok(ids) => {
                for (job, id) in jobs.into_iter().zip(ids) {
                    let _ = job.ack.send(Ok(id));
                }
            }
            Err(e) => {
                warn!(path = %db.path.display(), error = %e, stores = jobs.len(), "memory store failed");
                let e = Arc::new(e);
                for job in jobs {
                    let _ = job.ack.send(Err(e.clone()));
                }
            }
        }
        maintenance.kick();
    }
    debug!("memory writer stopped");
}

fn upkeep_loop(db: &MemoryDb, maintenance: &Maintenance) {
    let mut handled = 0u64;
    loop {
        let target = {
            let mut s = maintenance.lock();
            while !s.stop && s.kicks == handled {
                let (g, timeout) = maintenance.changed.wait_timeout(s, IDLE_UPKEEP).unwrap_or_else(|p| p.into_inner());
                s = g;
                if timeout.timed_out() {
                    break;
                }
            }
            if s.stop {
                break;
            }
            s.kicks
        };
        loop {
            match db.maintain_step(super::unix_now_ms()) {
                Ok(true) if !maintenance.lock().stop => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(path = %db.path.display(), error = %e, "memory upkeep failed; will retry after the next store");
                    maintenance.lock().last_error = Some(e.to_string());
                    break;
                }
            }
        }
        handled = target;
        let mut s = maintenance.lock();
        s.done = s.done.max(target);
        maintenance.changed.notify_all();
    }
    debug!("memory upkeep stopped");
}
