//! The memory database: LMDB (heed) with lz4-compressed values, a hot tier and cold blocks,
//! and the two threads that write to it off the pipeline's path.
//!
//! Databases inside the environment (keys big-endian so they sort by speaker, then by time):
//! - `meta`: format version and the next speaker number.
//! - `speakers`: speaker name → [`SpeakerMeta`] (number, next id, counts, current dictionary).
//! - `hot`: speaker number + exchange id → one exchange (lz4 when it helps). Holds the newest
//!   exchanges, read every turn: between `hot_tier_size` and `hot_tier_size + block_size - 1`.
//! - `cold`: speaker number + first id → a block of `block_size` consecutive older exchanges in
//!   frames of 16, each compressed against the speaker's dictionary (see [`crate::memory::codec`]).
//! - `dicts`: speaker number + dictionary number → 64 KiB of the speaker's own earlier
//!   exchanges, what cold frames are compressed against; a new one every 32,768 exchanges.
//! - `postings`: the inverted index (see [`crate::memory::index`]).
//! - `facts`: speaker number + fact id → a fact the speaker asked to keep (see [`facts`]).
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
//!
//! The parts: [`env`] (options, opening, transactions), [`records`] (what is stored and its keys),
//! [`write`] (stores, tier moves, retention, forgetting), [`read`] (lists, search, recall) and
//! [`writer`] (the threads of [`MemoryStore`]).

mod env;
mod facts;
mod read;
mod records;
mod write;
mod writer;

pub use env::{DiskUsage, MemoryDb, Retention, StoreOptions, check_data_file};
pub use facts::{Fact, MAX_FACT_BYTES, MAX_FACTS, Remembered, rank_facts};
pub use read::Recall;
pub use records::{NewExchange, SpeakerMeta, speaker_id};
pub use writer::{MemoryStore, StoreResult};
