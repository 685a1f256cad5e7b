//! The LMDB environment: how the database is kept (options, retention), opening it (a private
//! directory, a check of the data file, the format version), and the read and write transactions
//! that grow the map when it fills.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, MdbError, RoTxn, RwTxn};
use tracing::info;

use crate::memory::MemoryError;

type Db = Database<'static, Bytes, Bytes>;

/// Version of the byte layout; a database written by a newer layout is refused, not misread.
const FORMAT_VERSION: u8 = 1;
const DATA_FILE: &str = "data.mdb";
const LMDB_MAGIC: u32 = 0xBEEF_C0DE;

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

/// Bytes the database takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Size of the data file.
    pub file_bytes: u64,
    /// Bytes in pages holding live data (the rest of the file is free pages LMDB reuses).
    pub used_bytes: u64,
}

/// The named databases inside the environment (see the [`super`] module doc).
#[derive(Clone, Copy)]
pub(super) struct Dbs {
    pub(super) meta: Db,
    pub(super) speakers: Db,
    pub(super) hot: Db,
    pub(super) cold: Db,
    pub(super) dicts: Db,
    pub(super) postings: Db,
    pub(super) facts: Db,
}

/// The memory database, opened. Thread-safe; every call is blocking (call it from
/// `spawn_blocking` or a thread, never from async code).
pub struct MemoryDb {
    env: Env,
    dbs: Dbs,
    /// Held (shared) by every transaction and (exclusively) while the map is resized.
    map_lock: RwLock<()>,
    pub(super) path: PathBuf,
    pub(super) options: StoreOptions,
}

impl std::fmt::Debug for MemoryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDb").field("path", &self.path).field("options", &self.options).finish()
    }
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

    /// The database in directory `path` as this process shares it: the memory processor (which
    /// stores exchanges) and the memory tools (which store facts) use one handle, since LMDB must
    /// not open one environment twice in a process (heed refuses with `EnvAlreadyOpened`, keyed by
    /// canonical path, until the last handle of the first open is dropped). Opened, and created
    /// if needed, on the first call; later calls for the same directory get the same handle while
    /// one is alive.
    ///
    /// `options` matter to whoever stores exchanges (the memory processor): `None` takes the
    /// handle as it is (or opens it with the defaults), and `Some` must match the options it was
    /// opened with, so two processors cannot keep one database two ways.
    pub fn shared(path: &Path, options: Option<StoreOptions>) -> Result<Arc<Self>, MemoryError> {
        static SHARED: LazyLock<Mutex<HashMap<PathBuf, Weak<MemoryDb>>>> = LazyLock::new(Default::default);
        private_dir(path)?;
        let key = path.canonicalize().map_err(|source| MemoryError::Path { path: path.to_path_buf(), source })?;
        // Held while opening, so two first calls cannot both open the environment.
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        shared.retain(|_, db| db.strong_count() > 0);
        if let Some(db) = shared.get(&key).and_then(Weak::upgrade) {
            return match options {
                Some(o) if o != db.options => Err(MemoryError::OpenedOtherwise(path.to_path_buf())),
                _ => Ok(db),
            };
        }
        let options = options.unwrap_or_default();
        let db = match Self::open_dir(&key, options.clone()) {
            // The last handle is being dropped on another thread: wait for heed to close it.
            Err(MemoryError::AlreadyOpen(_)) => {
                if let Some(closing) = heed::env_closing_event(&key) {
                    closing.wait_timeout(Duration::from_secs(5));
                }
                Self::open_dir(&key, options)
            }
            other => other,
        }?;
        let db = Arc::new(db);
        shared.insert(key, Arc::downgrade(&db));
        Ok(db)
    }

    fn open_dir(path: &Path, options: StoreOptions) -> Result<Self, MemoryError> {
        check_data_file(path)?;
        let page = 4096usize;
        let map_size = options.initial_map_size.max(page).div_ceil(page) * page;
        // Read transactions keep a reader slot per thread that ever read, and tokio's blocking
        // pool may run many threads: room for 1024 (64 bytes each in lock.mdb).
        // SAFETY: the environment is opened with default (safe) flags, and heed refuses to
        // open the same path twice in this process ([`MemoryDb::shared`] shares one handle).
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
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("facts"))?,
                )))
            })
            .map_err(|e| match e {
                heed::Error::Mdb(MdbError::Invalid | MdbError::Corrupted | MdbError::Incompatible) => {
                    MemoryError::CorruptFile { path: path.join(DATA_FILE), detail: e.to_string() }
                }
                other => MemoryError::Lmdb(other),
            })?
            .unwrap_commit();
        let (meta, speakers, hot, cold, dicts, postings, facts) = dbs;
        let db = Self {
            env,
            dbs: Dbs { meta, speakers, hot, cold, dicts, postings, facts },
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
    pub(super) fn read<R>(&self, mut f: impl FnMut(&RoTxn, &Dbs) -> Result<R, MemoryError>) -> Result<R, MemoryError> {
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
    pub(super) fn write<R>(
        &self,
        mut f: impl FnMut(&mut RwTxn, &Dbs) -> Result<R, MemoryError>,
    ) -> Result<R, MemoryError> {
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
                ("facts", dbs.facts),
            ] {
                out.push((name, db.stat(txn)?));
            }
            Ok(out)
        })
    }
}
