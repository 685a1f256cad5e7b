//! [`MemoryStore`]: the database with its writer thread (queued stores, committed in groups and
//! acknowledged after the commit) and its upkeep thread (tier moves and retention).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::env::MemoryDb;
use super::records::NewExchange;
use crate::memory::MemoryError;

/// Stores the writer commits together when they queue up.
const MAX_GROUP_COMMIT: usize = 64;
/// Capacity of the writer's queue; a full queue makes the sender wait.
const WRITER_QUEUE: usize = 256;

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
            match db.maintain_step(crate::memory::unix_now_ms()) {
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
