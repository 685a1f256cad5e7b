//! The memory database on disk: persistence across restarts, tier moves, retention, map growth,
//! file modes, damaged and unusable paths, a full disk, and the `memory` commands.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod memory_util;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use memory_util::*;
use slowcat_bench::memory::Generator;
use slowcat_processors::memory::cli::{self, MemoryCommand};
use slowcat_processors::memory::{
    MemoryDb, MemoryStore, NewExchange, Retention, StatelessMemorySettings, StoreOptions,
};
use slowcat_processors::{BuildContext, Role, Settings};

const T0: u64 = 1_700_000_000_000;

fn small_tiers() -> StoreOptions {
    StoreOptions { hot_tier_size: 8, block_size: 16, ..StoreOptions::default() }
}

fn exchange(speaker: &str, i: u64, user: &str) -> NewExchange {
    NewExchange {
        speaker: speaker.into(),
        turn: i,
        at_ms: T0 + i * 1000,
        interrupted: false,
        user: user.into(),
        assistant: format!("reply number {i}"),
        tools: String::new(),
    }
}

#[tokio::test]
async fn memory_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    turn(&mut h, "default", 1, "my cat is called Miso", Some(("Miso is a cute name.", false))).await;
    turn(&mut h, "default", 2, "she is three years old", Some(("A young cat then.", false))).await;
    h.finish(Duration::from_secs(10)).await;

    let mut h = start(dir.path(), settings(dir.path())).await;
    let r = turn(&mut h, "default", 1, "what is my cat called", None).await;
    assert_eq!(roles(&r), [Role::System, Role::User, Role::Assistant, Role::User, Role::Assistant, Role::User]);
    assert_eq!(r.messages[1].content, "my cat is called Miso");
    assert_eq!(r.messages[4].content, "A young cat then.");
    h.finish(Duration::from_secs(10)).await;
}

#[test]
fn the_directory_is_private_and_the_files_are_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/memory");
    let db = MemoryDb::open(&path, StoreOptions::default()).unwrap();
    db.insert(&[&exchange("default", 1, "hello")]).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    assert_eq!(mode(&path.join("data.mdb")), 0o600);
    assert_eq!(mode(&path.join("lock.mdb")), 0o600);
}

#[test]
fn tier_moves_run_in_the_background_and_keep_everything_retrievable() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(MemoryDb::open(dir.path(), small_tiers()).unwrap());
    let store = MemoryStore::start(db.clone()).unwrap();
    let mut ids = Vec::new();
    for i in 1..=300u64 {
        let word = if i == 7 { "the quokka escaped".to_string() } else { format!("ordinary words {i}") };
        ids.push(store.store_blocking(exchange("default", i, &word)).unwrap());
    }
    assert!(store.settle(Duration::from_secs(30)), "upkeep did not catch up");
    assert_eq!(ids, (1..=300).collect::<Vec<_>>(), "ids count up per speaker from 1");
    let (hot, cold) = db.tier_counts("default").unwrap();
    assert_eq!(hot + cold, 300);
    assert!((8..8 + 16).contains(&hot), "the hot tier keeps 8 to 23 exchanges, has {hot}");
    for id in 1..=300 {
        let ex = db.get("default", id).unwrap().unwrap_or_else(|| panic!("exchange {id} is gone"));
        assert_eq!(ex.assistant, format!("reply number {id}"));
    }
    let newest: Vec<u64> = db.recent("default", 30).unwrap().iter().map(|e| e.id).collect();
    assert_eq!(newest, (271..=300).rev().collect::<Vec<_>>(), "recency reads across hot and cold tiers");
    let found = db.search("default", "where did the quokka go", 3).unwrap();
    assert_eq!(found.first().map(|(e, _)| e.id), Some(7), "a cold exchange is found by relevance");
    store.close();
}

#[test]
fn retention_by_count_deletes_the_oldest_and_their_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { retention: Retention { max_exchanges: 50, max_age_days: 0 }, ..small_tiers() };
    let db = Arc::new(MemoryDb::open(dir.path(), options).unwrap());
    let store = MemoryStore::start(db.clone()).unwrap();
    for i in 1..=200u64 {
        let word = if i == 3 { "a wombat named Kevin".to_string() } else { format!("plain talk {i}") };
        store.store_blocking(exchange("default", i, &word)).unwrap();
    }
    assert!(store.settle(Duration::from_secs(30)));
    store.close();
    let meta = db.speaker("default").unwrap().unwrap();
    assert_eq!(meta.count, 50);
    assert!(db.get("default", 150).unwrap().is_none(), "exchange 150 is beyond the newest 50");
    assert!(db.get("default", 151).unwrap().is_some());
    assert!(db.search("default", "wombat Kevin", 5).unwrap().is_empty(), "a deleted exchange is not found");
    let (hot, cold) = db.tier_counts("default").unwrap();
    assert_eq!(hot + cold, 50);
}

#[test]
fn retention_by_age_deletes_old_exchanges() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { retention: Retention { max_exchanges: 0, max_age_days: 30 }, ..small_tiers() };
    let db = MemoryDb::open(dir.path(), options).unwrap();
    let now = slowcat_processors::memory::unix_now_ms();
    let day = 86_400_000;
    let batch: Vec<NewExchange> = (0..100u64)
        .map(|i| NewExchange {
            at_ms: now - (100 - i) * day / 2 - day / 4,
            ..exchange("default", i, &format!("day talk {i}"))
        })
        .collect();
    db.bulk_load(&batch).unwrap();
    db.maintain().unwrap();
    let left = db.recent("default", 1000).unwrap();
    assert!(!left.is_empty() && left.iter().all(|e| e.at_ms >= now - 30 * day), "only the last 30 days are kept");
    assert_eq!(left.len(), 59);
}

#[test]
fn the_map_grows_when_it_fills() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { initial_map_size: 256 * 1024, ..StoreOptions::default() };
    let db = MemoryDb::open(dir.path(), options).unwrap();
    let mut conv = Generator::new(5);
    for chunk in 0..10u64 {
        let batch: Vec<NewExchange> =
            (0..500).map(|i| conv.exchange("default", T0 + (chunk * 500 + i) * 1000)).collect();
        let refs: Vec<&NewExchange> = batch.iter().collect();
        db.insert(&refs).unwrap();
    }
    db.maintain().unwrap();
    assert_eq!(db.speaker("default").unwrap().unwrap().count, 5000);
    assert!(db.disk_usage().unwrap().file_bytes > 256 * 1024, "the data outgrew the first map");
    assert_eq!(db.recent("default", 5000).unwrap().len(), 5000);
}

/// Child half of `a_map_grown_by_another_process_is_adopted`: fills the shared database.
#[test]
#[ignore = "run by a_map_grown_by_another_process_is_adopted in a child process"]
fn map_growing_child() {
    let dir = std::path::PathBuf::from(std::env::var("SLOWCAT_MEMORY_GROW_DIR").expect("run by the parent test"));
    let db = MemoryDb::open(&dir, StoreOptions { initial_map_size: 256 * 1024, ..StoreOptions::default() }).unwrap();
    let mut conv = Generator::new(8);
    let batch: Vec<NewExchange> = (0..3000).map(|i| conv.exchange("default", T0 + 10_000 + i)).collect();
    db.insert(&batch.iter().collect::<Vec<_>>()).unwrap();
    println!("GREW {}", db.disk_usage().unwrap().file_bytes);
}

#[test]
fn a_map_grown_by_another_process_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let db =
        MemoryDb::open(dir.path(), StoreOptions { initial_map_size: 256 * 1024, ..StoreOptions::default() }).unwrap();
    db.insert(&[&exchange("default", 1, "before the other process")]).unwrap();
    // `slowcat memory` (or anything else) writing while the assistant holds the database open.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "map_growing_child", "--ignored", "--nocapture"])
        .env("SLOWCAT_MEMORY_GROW_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let grown: u64 = stdout.lines().find_map(|l| l.strip_prefix("GREW ")).unwrap().parse().unwrap();
    assert!(grown > 256 * 1024, "the child did not need a bigger map ({grown} bytes)");
    // Reads and writes here pick up the bigger map instead of failing.
    assert_eq!(db.recent("default", 5000).unwrap().len(), 3001);
    assert_eq!(db.insert(&[&exchange("default", 2, "after the other process")]).unwrap(), [3002]);
}

#[test]
fn a_damaged_database_is_a_clear_error_in_check_and_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("data.mdb"), vec![0x42u8; 64 * 1024]).unwrap();
    let settings = StatelessMemorySettings { path: path.clone(), ..Default::default() };
    let ctx = BuildContext::for_dir(dir.path());
    let problems = settings.check(&ctx);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, Some("path"));
    assert!(
        problems[0].message.contains("damaged") && problems[0].message.contains("data.mdb"),
        "{}",
        problems[0].message
    );
    let err = settings.check_and_build(&ctx).err().expect("a damaged database must not build").to_string();
    assert!(err.contains("damaged") && err.contains("move its directory aside"), "{err}");
    let err = cli::run(&path, MemoryCommand::Speakers, &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("damaged"), "{err}");
}

#[test]
fn an_unusable_path_is_a_clear_error_in_check_and_build() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let settings = StatelessMemorySettings { path: file.join("memory"), ..Default::default() };
    let ctx = BuildContext::for_dir(dir.path());
    let problems = settings.check(&ctx);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("is not a directory"), "{}", problems[0].message);
    let err = settings.clone().check_and_build(&ctx).err().expect("must not build").to_string();
    assert!(err.contains("a-file/memory") && err.contains("memory database"), "{err}");

    let bad = StatelessMemorySettings { recent_exchanges: 10, hot_tier_size: 4, ..settings.clone() };
    assert!(bad.check(&ctx).iter().any(|p| p.key == Some("hot_tier_size")));
}

/// Child half of `a_full_disk_gives_an_error_frame_and_the_pipeline_goes_on`: runs under a file
/// size limit (prlimit), so writes past it fail as on a full disk.
#[tokio::test]
#[ignore = "run by a_full_disk_gives_an_error_frame_and_the_pipeline_goes_on in a child process"]
async fn full_disk_child() {
    let dir = std::path::PathBuf::from(std::env::var("SLOWCAT_MEMORY_FULL_DIR").expect("run by the parent test"));
    let mut h = start(&dir, settings(&dir)).await;
    // Random letters: lz4 cannot shrink them, so the file grows by about 20 kB per turn.
    let mut rng = slowcat_bench::memory::Rng::new(1);
    let mut noise = || -> String {
        (0..2000).map(|i| if i % 6 == 5 { ' ' } else { char::from(b'a' + rng.below(26) as u8) }).collect()
    };
    let mut failed_at = None;
    for t in 1..=40u64 {
        let (user, reply) = (format!("question {t} {}", noise()), noise());
        let r = turn(&mut h, "default", t, &user, Some((&reply, false))).await;
        assert!(r.memory_injected || !errors(&h).is_empty());
        if failed_at.is_none() && !errors(&h).is_empty() {
            failed_at = Some(t);
        }
    }
    // The turn after the failures still gets its request through.
    let r = turn(&mut h, "default", 41, "are you still there", None).await;
    assert_eq!(r.messages.last().unwrap().content, "are you still there");
    let errs = errors(&h);
    println!("FAILED_AT {failed_at:?}");
    println!("ERROR {}", errs.first().cloned().unwrap_or_default());
    h.finish(Duration::from_secs(10)).await;
}

#[test]
fn a_full_disk_gives_an_error_frame_and_the_pipeline_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // SIGXFSZ is ignored so the write fails with EFBIG instead of killing the process; the
    // ignored disposition survives exec.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; exec prlimit --fsize=400000 "$0" --exact full_disk_child --ignored --nocapture"#)
        .arg(&exe)
        .env("SLOWCAT_MEMORY_FULL_DIR", dir.path())
        .output()
        .expect("prlimit (util-linux) is needed for this test: apt-get install util-linux");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let error = stdout.lines().find_map(|l| l.strip_prefix("ERROR ")).unwrap_or_default();
    assert!(stdout.contains("FAILED_AT Some("), "the file limit was never hit:\n{stdout}");
    assert!(
        error.contains("not stored") && error.contains("disk is full") && error.contains("free some disk space"),
        "unclear error: {error}"
    );
    // What was stored before the disk filled is intact.
    let db = MemoryDb::open_existing(&db_path(dir.path())).unwrap();
    let kept = db.recent("default", 100).unwrap();
    assert!(!kept.is_empty());
    assert!(kept.iter().all(|e| e.user.starts_with("question ")));
}

#[test]
fn the_memory_commands_list_search_show_forget_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let db = MemoryDb::open(dir.path(), small_tiers()).unwrap();
    let batch: Vec<NewExchange> = (1..=40u64)
        .map(|i| {
            let user = if i == 5 { "my passport number ends in 7731".to_string() } else { format!("chat {i}") };
            exchange(if i % 2 == 0 { "bob" } else { "alice" }, i, &user)
        })
        .collect();
    db.bulk_load(&batch).unwrap();
    drop(db);
    let run = |cmd| {
        let mut out = Vec::new();
        cli::run(dir.path(), cmd, &mut out).map(|()| String::from_utf8(out).unwrap())
    };

    let speakers = run(MemoryCommand::Speakers).unwrap();
    assert!(speakers.contains("alice: 20 exchanges") && speakers.contains("bob: 20 exchanges"), "{speakers}");

    let list = run(MemoryCommand::List { speaker: "alice".into(), limit: 3 }).unwrap();
    assert!(list.starts_with("#20 "), "newest first: {list}");
    assert_eq!(list.matches("    user:").count(), 3);
    assert!(!list.contains("chat 40"), "bob's exchanges are not alice's");

    let search = run(MemoryCommand::Search { speaker: "alice".into(), query: "passport".into(), limit: 5 }).unwrap();
    assert!(search.starts_with("#3 ") && search.contains("7731"), "{search}");
    assert!(
        run(MemoryCommand::Search { speaker: "bob".into(), query: "passport".into(), limit: 5 })
            .unwrap()
            .contains("no exchange")
    );

    let show = run(MemoryCommand::Show { speaker: "alice".into(), id: 3 }).unwrap();
    assert!(
        show.contains("user: my passport number ends in 7731") && show.contains("assistant: reply number 5"),
        "{show}"
    );

    let export = run(MemoryCommand::Export { speaker: None }).unwrap();
    let lines: Vec<serde_json::Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 40);
    assert_eq!(lines[0]["speaker"], "alice");
    assert_eq!(lines[0]["id"], 1);
    assert_eq!(lines[2]["user"], "my passport number ends in 7731");
    assert!(lines[2]["at"].as_str().unwrap().ends_with('Z'));

    let err = run(MemoryCommand::Forget { speaker: "alice".into(), id: None, all: false }).unwrap_err().to_string();
    assert!(err.contains("--all"), "{err}");
    assert!(
        run(MemoryCommand::Forget { speaker: "alice".into(), id: Some(3), all: false }).unwrap().contains("forgot")
    );
    assert!(run(MemoryCommand::Show { speaker: "alice".into(), id: 3 }).is_err(), "a forgotten exchange is gone");
    assert!(
        run(MemoryCommand::Search { speaker: "alice".into(), query: "passport".into(), limit: 5 })
            .unwrap()
            .contains("no exchange")
    );
    let all = run(MemoryCommand::Forget { speaker: "bob".into(), id: None, all: true }).unwrap();
    assert!(all.contains("forgot all 20 exchanges"), "{all}");
    assert!(run(MemoryCommand::List { speaker: "bob".into(), limit: 5 }).unwrap().contains("nothing remembered"));
    assert_eq!(run(MemoryCommand::Export { speaker: None }).unwrap().lines().count(), 19);

    // New exchanges after forgetting never reuse an id.
    let db = MemoryDb::open(dir.path(), small_tiers()).unwrap();
    let ids = db.insert(&[&exchange("bob", 99, "back again")]).unwrap();
    assert_eq!(ids, [21]);

    let missing = cli::run(&dir.path().join("nowhere"), MemoryCommand::Speakers, &mut Vec::new()).unwrap_err();
    assert!(missing.to_string().contains("no memory database"), "{missing}");
}
