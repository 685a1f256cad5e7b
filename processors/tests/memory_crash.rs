//! kill -9 while storing: every exchange acknowledged as stored is there afterwards, and the
//! database opens. The child is this test binary itself, run with `--ignored crash_child`.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slowcat_bench::memory::Generator;
use slowcat_processors::memory::{MemoryDb, MemoryStore, StoreOptions};

const SEED: u64 = 99;

/// Small tiers so tier moves (and their commits) happen all the time while the child is killed.
fn options() -> StoreOptions {
    StoreOptions { hot_tier_size: 8, block_size: 16, initial_map_size: 512 * 1024, ..StoreOptions::default() }
}

/// The exchange stored as number `i` (0-based) across all child runs.
fn nth(i: u64) -> slowcat_processors::memory::NewExchange {
    let mut conv = Generator::new(SEED ^ i);
    conv.exchange("default", 1_700_000_000_000 + i * 1000)
}

#[test]
#[ignore = "child process of kill_9_while_storing_loses_no_acknowledged_exchange"]
fn crash_child() {
    let dir = std::path::PathBuf::from(std::env::var("SLOWCAT_MEMORY_CRASH_DIR").expect("run by the parent test"));
    let db = Arc::new(MemoryDb::open(&dir, options()).expect("the database opens after a kill -9"));
    let start = db.speaker("default").unwrap().map_or(0, |m| m.next_id - 1);
    println!("READY {start}");
    let store = MemoryStore::start(db).unwrap();
    for i in start..start + 100_000 {
        let id = store.store_blocking(nth(i)).expect("store");
        assert_eq!(id, i + 1);
        println!("STORED {id}");
    }
}

#[test]
fn kill_9_while_storing_loses_no_acknowledged_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("SLOWCAT_MEMORY_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this_round = 0;
        let started = Instant::now();
        let mut killed = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("STORED ") {
                acknowledged.push(id.parse::<u64>().unwrap());
                this_round += 1;
            }
            // Killed at a different point each round, while stores and tier moves are in flight.
            if this_round == 120 + round * 37 {
                child.kill().unwrap(); // SIGKILL
                killed = true;
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "the child is too slow");
        }
        // Lines the child finished writing before it died still count as acknowledged.
        for line in lines.map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("STORED ") {
                acknowledged.push(id.parse::<u64>().unwrap());
            }
        }
        let status = child.wait().unwrap();
        assert!(killed && !status.success(), "round {round}: the child ended by itself ({status})");
    }

    let db = MemoryDb::open(dir.path(), options()).expect("the database opens after kill -9");
    assert!(acknowledged.len() >= 3 * 120);
    for &id in &acknowledged {
        let ex = db.get("default", id).unwrap().unwrap_or_else(|| panic!("acknowledged exchange {id} was lost"));
        let expected = nth(id - 1);
        assert_eq!((ex.user.as_str(), ex.assistant.as_str()), (expected.user.as_str(), expected.assistant.as_str()));
    }
    // Ids stay dense: nothing acknowledged is missing and the counter never went back.
    let meta = db.speaker("default").unwrap().unwrap();
    assert!(meta.count >= acknowledged.len() as u64);
    assert_eq!(meta.next_id - 1, meta.count, "no id was skipped or reused");
    db.maintain().expect("upkeep works after the crashes");
    let (hot, cold) = db.tier_counts("default").unwrap();
    assert_eq!(hot + cold, meta.count);
}
