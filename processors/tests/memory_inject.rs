//! The memory processor rewriting LLM requests, on a real LMDB database: order, budget, no
//! duplicates, one system message, no double injection, speaker isolation, rare-word recall,
//! interrupted replies, and every frame forwarded.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod memory_util;

use std::time::Duration;

use memory_util::*;
use slowcat_bench::memory::Generator;
use slowcat_processors::harness::Harness;
use slowcat_processors::memory::{MemoryDb, NewExchange, StatelessMemorySettings, StoreOptions, estimate_tokens};
use slowcat_processors::{ChatMessage, Direction, Frame, LlmRequest, Role};

/// How many `memory_time` metrics turn `turn` has reported so far.
fn memory_times(h: &Harness, turn: u64) -> usize {
    let is_it = |f: &&Frame| matches!(f, Frame::Metrics(m) if m.name == slowcat_processors::MetricName::MemoryTime && m.turn == Some(turn));
    h.output().downstream.iter().filter(is_it).count()
}

#[tokio::test]
async fn recent_exchanges_go_in_as_pairs_in_order_before_the_question() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    let first =
        turn(&mut h, "default", 1, "my sister is called Ingrid", Some(("Nice, Ingrid is a lovely name.", false))).await;
    assert_eq!(roles(&first), [Role::System, Role::User], "the first turn has nothing to remember");
    assert!(first.memory_injected);
    turn(&mut h, "default", 2, "she lives in Bergen", Some(("Bergen is rainy but beautiful.", false))).await;
    turn(&mut h, "default", 3, "she visits in May", Some(("May is a good time for a visit.", false))).await;
    let r = turn(&mut h, "default", 4, "what is my sister called", None).await;

    assert_eq!(
        roles(&r),
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant,
            Role::User
        ]
    );
    let contents: Vec<&str> = r.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        contents[1..],
        [
            "my sister is called Ingrid",
            "Nice, Ingrid is a lovely name.",
            "she lives in Bergen",
            "Bergen is rainy but beautiful.",
            "she visits in May",
            "May is a good time for a visit.",
            "what is my sister called",
        ]
    );
    assert!(r.messages[0].content.starts_with(SYSTEM), "the original system prompt stays first");
    assert!(r.memory_injected);
    assert!(errors(&h).is_empty(), "{:?}", errors(&h));
    assert_eq!(memory_times(&h, 4), 1, "one memory_time metric per injected turn");
    h.finish(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_request_passing_twice_gets_memory_once_and_never_a_second_system_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    turn(&mut h, "default", 1, "the wifi password is hunter2", Some(("Noted, hunter2.", false))).await;
    let once = turn(&mut h, "default", 2, "what is the wifi password", None).await;
    h.send(Frame::LlmRequest(Box::new(once.clone()))).await;
    let twice = h
        .wait_for(Duration::from_secs(10), |f, d| {
            d == Direction::Downstream && matches!(f, Frame::LlmRequest(r) if r.turn == 2)
        })
        .await
        .expect("the resent request came out");
    assert_eq!(twice, Frame::LlmRequest(Box::new(once.clone())), "a second pass changes nothing");
    assert_eq!(once.messages.iter().filter(|m| m.role == Role::System).count(), 1);

    // A request with no system message gets one only when there is memory to put in it, and
    // two system messages become one.
    let mut bare = request("default", 3, "and the wifi password again?");
    bare.messages.retain(|m| m.role != Role::System);
    bare.messages.insert(0, ChatMessage::new(Role::System, "part one"));
    bare.messages.insert(1, ChatMessage::new(Role::System, "part two"));
    h.send(Frame::LlmRequest(Box::new(bare))).await;
    let Some(Frame::LlmRequest(r)) =
        h.wait_for(Duration::from_secs(10), |f, _| matches!(f, Frame::LlmRequest(r) if r.turn == 3)).await
    else {
        panic!("turn 3 request did not come out")
    };
    assert_eq!(r.messages.iter().filter(|m| m.role == Role::System).count(), 1);
    assert_eq!(r.messages[0].role, Role::System);
    assert!(r.messages[0].content.starts_with("part one\n\npart two"));
    h.finish(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn the_budget_bounds_what_is_injected_and_nothing_appears_twice() {
    let dir = tempfile::tempdir().unwrap();
    let settings = StatelessMemorySettings {
        max_context_tokens: 250,
        recent_exchanges: 6,
        relevant_exchanges: 4,
        ..settings(dir.path())
    };
    let mut h = start(dir.path(), settings).await;
    turn(
        &mut h,
        "default",
        1,
        "my dentist appointment is on the fourth",
        Some(("Noted: the dentist on the fourth.", false)),
    )
    .await;
    let mut conv = Generator::new(3);
    for t in 2..=12u64 {
        let (mut u, mut a) = (conv.user_text(), conv.assistant_text());
        while u.contains("dentist") || a.contains("dentist") {
            (u, a) = (conv.user_text(), conv.assistant_text());
        }
        turn(&mut h, "default", t, &u, Some((&a, false))).await;
    }
    let r = turn(&mut h, "default", 13, "when is the dentist appointment", None).await;
    let original = estimate_tokens(SYSTEM) + estimate_tokens(r.messages.last().unwrap().content.as_str()) + 8;
    let total: usize = r.messages.iter().map(|m| estimate_tokens(&m.content) + 4).sum();
    assert!(total - original <= 250, "memory added {} estimated tokens, budget 250", total - original);
    let pairs = r.messages.iter().filter(|m| m.role == Role::Assistant).count();
    assert!((1..6).contains(&pairs), "the budget cut the recent exchanges to {pairs} pairs");

    assert!(
        r.messages[0].content.contains("the user said \"my dentist appointment is on the fourth\""),
        "a quarter of the budget is kept for relevant exchanges:\n{}",
        r.messages[0].content
    );
    let text = all_text(&r);
    // No stored user sentence appears twice (as a pair and again in the memory section).
    for m in r.messages.iter().filter(|m| m.role == Role::User) {
        assert_eq!(text.matches(m.content.as_str()).count(), 1, "{:?} appears more than once", m.content);
    }
    h.finish(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn speakers_never_see_each_others_memories() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    turn(&mut h, "alice", 1, "my secret plan involves a zeppelin", Some(("A zeppelin plan, how bold.", false))).await;
    turn(&mut h, "bob", 2, "I like trains", Some(("Trains are great.", false))).await;
    let bob = turn(&mut h, "bob", 3, "tell me about the zeppelin", None).await;
    let text = all_text(&bob);
    assert!(!text.contains("secret plan") && !text.contains("bold"), "bob got alice's memory:\n{text}");
    assert!(text.contains("I like trains"));
    let alice = turn(&mut h, "alice", 4, "what about the zeppelin", None).await;
    let text = all_text(&alice);
    assert!(text.contains("my secret plan involves a zeppelin"));
    assert!(!text.contains("trains"), "alice got bob's memory:\n{text}");
    // An empty speaker id is the default speaker, not a third party.
    let anon = turn(&mut h, "", 5, "anything about zeppelins", None).await;
    assert!(!all_text(&anon).contains("zeppelin plan"));
    h.finish(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_old_exchange_sharing_a_rare_word_is_recalled_from_far_outside_the_recent_window() {
    let dir = tempfile::tempdir().unwrap();
    // 20,000 earlier exchanges: the one that matters is the 10th, long since compressed into
    // a cold block.
    {
        let db = MemoryDb::open(&db_path(dir.path()), StoreOptions::default()).unwrap();
        let mut conv = Generator::new(11);
        let t0 = 1_700_000_000_000u64;
        let mut batch: Vec<NewExchange> = (0..20_000).map(|i| conv.exchange("default", t0 + i * 60_000)).collect();
        batch[9].user = "I hid the spare key under the blue flowerpot named Bartholomew".into();
        batch[9].assistant = "Got it, the spare key is under Bartholomew the blue flowerpot.".into();
        db.bulk_load(&batch).unwrap();
        db.maintain().unwrap();
        let (hot, cold) = db.tier_counts("default").unwrap();
        assert!(cold > 19_000 && hot < 1000, "tiers: {hot} hot, {cold} cold");
    }
    let mut h = start(dir.path(), settings(dir.path())).await;
    let r = turn(&mut h, "default", 20_001, "where is Bartholomew again", None).await;
    let system = &r.messages[0].content;
    assert!(
        system.contains("the spare key under the blue flowerpot named Bartholomew"),
        "the old exchange was not recalled; system message:\n{system}"
    );
    // The recent window as well: with `stable_prefix` (the default) it advances six at a time,
    // so it holds six to eleven pairs.
    let pairs = r.messages.iter().filter(|m| m.role == Role::Assistant).count();
    assert!((6..=11).contains(&pairs), "{pairs} recent pairs");
    assert!(!r.messages[1..].iter().any(|m| m.content.contains("Bartholomew") && m.role == Role::Assistant));
    h.finish(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn interrupted_replies_are_stored_as_spoken_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    turn(&mut h, "default", 1, "tell me a long story", Some(("Once upon a time there", true))).await;
    turn(&mut h, "default", 2, "stop, what time is it", Some(("", true))).await;
    let r = turn(&mut h, "default", 3, "sorry, go on", None).await;
    assert_eq!(r.messages[2].content, "Once upon a time there [interrupted]");
    assert_eq!(r.messages[4].content, "[interrupted before saying anything]");
    h.finish(Duration::from_secs(10)).await;
    let db = MemoryDb::open_existing(&db_path(dir.path())).unwrap();
    let stored = db.recent("default", 10).unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|e| e.interrupted));
    assert_eq!(stored[1].assistant, "Once upon a time there", "only the spoken part is stored");
}

#[tokio::test]
async fn a_turn_without_a_spoken_reply_stores_nothing_and_the_next_turn_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    turn(&mut h, "default", 1, "what is the capital of Peru", None).await; // the LLM failed
    turn(&mut h, "default", 2, "hello again", Some(("Hello!", false))).await;
    h.send_upstream(Frame::SpokenReply(Box::new(slowcat_processors::frame::SpokenReply {
        text: "Welcome back!".into(),
        interrupted: false,
        turn: 0,
    })))
    .await; // a greeting: no user turn
    let r = turn(&mut h, "default", 3, "and the capital of Chile", None).await;
    assert_eq!(roles(&r), [Role::System, Role::User, Role::Assistant, Role::User]);
    assert_eq!(r.messages[1].content, "hello again");
    assert!(!all_text(&r).contains("Peru"), "the unanswered turn was stored");
    h.finish(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_turn_that_goes_on_is_remembered_once_whole() {
    // "Turn left." ended the turn; the user went on before the reply was heard: the reply was
    // cancelled (nothing said) and the whole command came again under the same number.
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    turn(&mut h, "default", 1, "my name is Ada", Some(("Hello Ada.", false))).await;
    turn(&mut h, "default", 2, "Turn left.", None).await;
    h.send(Frame::UserTurnResumed { turn: 2 }).await;
    h.send_upstream(Frame::SpokenReply(Box::new(slowcat_processors::frame::SpokenReply {
        text: String::new(),
        interrupted: true,
        turn: 2,
    })))
    .await;
    let r = turn(&mut h, "default", 2, "Turn left at the next corner.", Some(("OK, left at the corner.", false))).await;
    assert!(!all_text(&r).contains("[interrupted"), "the first part is no exchange: {:?}", r.messages);
    let r = turn(&mut h, "default", 3, "thanks", None).await;
    let users: Vec<&str> = r.messages.iter().filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect();
    assert_eq!(users, ["my name is Ada", "Turn left at the next corner.", "thanks"], "{:?}", r.messages);
    h.finish(Duration::from_secs(10)).await;
    let db = MemoryDb::open_existing(&db_path(dir.path())).unwrap();
    assert_eq!(db.recent("default", 10).unwrap().len(), 2, "two exchanges, the resumed turn once");
}

#[tokio::test]
async fn every_other_frame_passes_through_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    let down = [Frame::LlmText("hi".into()), Frame::UserTurnEnded, Frame::BotStartedSpeaking, Frame::Speak("x".into())];
    for f in down.iter().cloned() {
        h.send(f).await;
    }
    h.send_upstream(Frame::LlmResponseEnd).await;
    h.send_upstream(Frame::TtsStopped).await;
    h.wait_for(Duration::from_secs(5), |f, d| d == Direction::Upstream && matches!(f, Frame::TtsStopped)).await;
    let out = h.finish(Duration::from_secs(10)).await;
    for f in &down {
        assert!(out.downstream.contains(f), "{} was not forwarded downstream", f.name());
    }
    assert!(out.upstream.contains(&Frame::LlmResponseEnd) && out.upstream.contains(&Frame::TtsStopped));
}

/// Turns of a generated conversation; for each, whether its request begins exactly like the
/// previous request up to that request's question (what an LLM server's prompt cache reuses).
async fn shared_beginnings(stable_prefix: bool) -> (Vec<bool>, LlmRequest) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), StatelessMemorySettings { stable_prefix, ..settings(dir.path()) }).await;
    turn(&mut h, "default", 1, "my locker code is 4512", Some(("Locker code 4512, noted.", false))).await;
    let mut conv = Generator::new(5);
    let mut previous: Option<LlmRequest> = None;
    let mut shared = Vec::new();
    for t in 2..=30u64 {
        let (u, a) = (conv.user_text(), conv.assistant_text());
        let r = turn(&mut h, "default", t, &u, Some((&a, false))).await;
        if let Some(p) = previous {
            let before_question = &p.messages[..p.messages.len() - 1];
            shared.push(r.messages.starts_with(before_question));
        }
        previous = Some(r);
    }
    // Mid-block, a question about something far outside the window still finds it.
    let r = turn(&mut h, "default", 31, "what was my locker code", None).await;
    h.finish(Duration::from_secs(10)).await;
    (shared, r)
}

/// Replies long enough that the recent window outgrows the budget every few turns: the window is
/// then trimmed well below it, so the requests that follow keep its beginning (the LLM server
/// reads only the new messages) instead of each dropping its oldest pair, which changes every
/// request from the first message after the system message on.
#[tokio::test]
async fn a_window_over_budget_is_trimmed_so_the_next_requests_keep_its_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 1024;
    let settings = StatelessMemorySettings { max_context_tokens: budget, ..settings(dir.path()) };
    let mut h = start(dir.path(), settings).await;
    let mut conv = Generator::new(11);
    let mut previous: Option<LlmRequest> = None;
    let mut restarts = Vec::new();
    for t in 1..=30u64 {
        let u = conv.user_text();
        let a = format!("{} {} {}", conv.assistant_text(), conv.assistant_text(), conv.assistant_text());
        let r = turn(&mut h, "default", t, &u, Some((&a, false))).await;
        let added: usize = r.messages[1..r.messages.len() - 1].iter().map(|m| estimate_tokens(&m.content)).sum();
        assert!(added <= budget, "turn {t}: {added} estimated tokens of memory");
        if let Some(p) = previous
            && p.messages.len() > 2
            && r.messages.get(1) != p.messages.get(1)
        {
            restarts.push(t);
        }
        previous = Some(r);
    }
    h.finish(Duration::from_secs(10)).await;
    println!("the recent window restarted at turns {restarts:?}");
    assert!(!restarts.is_empty(), "the replies were too short to fill the budget");
    assert!(restarts.len() <= 8, "the window restarted at {} of 30 turns: {restarts:?}", restarts.len());
}

#[tokio::test]
async fn with_a_stable_prefix_most_requests_begin_like_the_previous_one() {
    let (stable, r) = shared_beginnings(true).await;
    let (sliding, _) = shared_beginnings(false).await;
    let count = |v: &[bool]| v.iter().filter(|&&b| b).count();
    println!(
        "requests beginning like the previous one: {} of {} stable, {} sliding",
        count(&stable),
        stable.len(),
        count(&sliding)
    );
    // The window advances every 6 turns; the memory section changes now and then besides.
    assert!(
        count(&stable) * 2 >= stable.len(),
        "only {} of {} requests share the previous beginning",
        count(&stable),
        stable.len()
    );
    assert!(count(&sliding) < count(&stable));
    assert!(
        all_text(&r).contains("my locker code is 4512"),
        "the memory section must still take a later question's best match:\n{}",
        r.messages[0].content
    );
}

/// Memory a read-ahead (the request the turn will make with the words heard when the user stopped) gets,
/// once it came out of the processor.
async fn read_ahead(h: &mut Harness, turn: u64, user: &str) -> LlmRequest {
    let before = h.output().downstream.len();
    h.send(Frame::LlmReadAhead(Box::new(request("default", turn, user)))).await;
    h.wait_for(Duration::from_secs(10), |f, d| d == Direction::Downstream && matches!(f, Frame::LlmReadAhead(_)))
        .await
        .expect("the read-ahead came out of the memory processor");
    let out = h.output().downstream[before..].iter().rev().find_map(|f| match f {
        Frame::LlmReadAhead(r) => Some((**r).clone()),
        _ => None,
    });
    out.expect("a read-ahead in the output")
}

/// A read-ahead is rewritten exactly as the turn's request with the same words, and leaves no
/// trace: one made with words the user then did not end the turn with (they went on talking)
/// changes neither the turn's request nor what is stored.
#[tokio::test]
async fn a_read_ahead_gets_the_turns_memory_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    turn(&mut h, "default", 1, "my locker code is 4512", Some(("Locker code 4512, noted.", false))).await;
    let mut conv = Generator::new(7);
    // Thirteen exchanges: the recent window (advancing six at a time) then starts after the first.
    for t in 2..=13u64 {
        let (u, a) = (conv.user_text(), conv.assistant_text());
        turn(&mut h, "default", t, &u, Some((&a, false))).await;
    }
    let (question, answer) = (conv.user_text(), conv.assistant_text());

    let abandoned = read_ahead(&mut h, 14, "what was my locker code").await;
    assert!(abandoned.memory_injected);
    assert!(all_text(&abandoned).contains("4512"), "the read-ahead gets relevant memory too");
    let ahead = read_ahead(&mut h, 14, &question).await;
    let asked = turn(&mut h, "default", 14, &question, Some((&answer, false))).await;
    assert_eq!(ahead, asked, "read ahead exactly as the turn then asks");
    assert!(
        !all_text(&asked).contains("4512"),
        "the abandoned read-ahead changed the layout:\n{}",
        asked.messages[0].content
    );
    assert_eq!(memory_times(&h, 14), 1, "read-aheads are not the turn's memory time");
    h.finish(Duration::from_secs(10)).await;

    let db = MemoryDb::open_existing(&db_path(dir.path())).unwrap();
    let stored = db.recent("default", 1).unwrap();
    assert_eq!((stored[0].user.as_str(), stored[0].assistant.as_str()), (question.as_str(), answer.as_str()));
    assert_eq!(db.recent("default", 100).unwrap().len(), 14, "one exchange per turn");
}

/// Small talk repeats itself: a question asked again and again takes one line of the memory
/// section, not all of them, so an older fact still finds room when the user asks about it.
#[tokio::test]
async fn a_repeated_question_takes_one_line_of_the_memory_section() {
    let dir = tempfile::tempdir().unwrap();
    let settings = StatelessMemorySettings { recent_exchanges: 4, ..settings(dir.path()) };
    let mut h = start(dir.path(), settings).await;
    turn(&mut h, "default", 1, "Hello! My name is Margaret and I grow tomatoes.", Some(("Hi Margaret!", false))).await;
    let small_talk = ["What a lovely morning it is.", "Do you like music?", "How far away is the moon?"];
    for t in 2..=29u64 {
        let answer = format!("Answer number {t}.");
        turn(&mut h, "default", t, small_talk[t as usize % small_talk.len()], Some((&answer, false))).await;
    }
    let r = turn(&mut h, "default", 30, "Do you remember my name?", None).await;
    h.finish(Duration::from_secs(10)).await;
    let system = &r.messages[0].content;
    for q in small_talk {
        let lines = system.matches(&format!("the user said \"{q}\"")).count();
        assert!(lines <= 1, "{q:?} takes {lines} lines:\n{system}");
    }
    assert!(system.contains("Margaret"), "no room was left for the name:\n{system}");
}

/// "Stop." can end its turn as it interrupts the reply, and its request reach memory before the
/// output's report of what was heard of that reply: the request waits for the report (briefly),
/// so it carries the interrupted reply; with no report coming it goes on after a short wait.
#[tokio::test]
async fn a_request_right_after_an_interruption_waits_for_the_report_of_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path(), settings(dir.path())).await;
    turn(&mut h, "default", 1, "tell me a long story", None).await;
    interrupt(&mut h).await;
    let is_turn = |n: u64| {
        move |f: &Frame, d: Direction| d == Direction::Downstream && matches!(f, Frame::LlmRequest(r) if r.turn == n)
    };
    h.send(Frame::LlmRequest(Box::new(request("default", 2, "Stop.")))).await;
    assert!(h.wait_for(Duration::from_millis(100), is_turn(2)).await.is_none(), "it did not wait for the report");
    h.send_upstream(Frame::SpokenReply(Box::new(slowcat_processors::frame::SpokenReply {
        text: "Once upon a time".into(),
        interrupted: true,
        turn: 1,
    })))
    .await;
    let Some(Frame::LlmRequest(r)) = h.wait_for(Duration::from_secs(5), is_turn(2)).await else {
        panic!("the request never came out")
    };
    assert!(all_text(&r).contains("Once upon a time [interrupted]"), "{:?}", r.messages);
    // No report comes (nothing was played): the request goes on after the wait.
    interrupt(&mut h).await;
    let started = std::time::Instant::now();
    turn(&mut h, "default", 3, "hello", None).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(2), "waited {waited:?}");
    h.finish(Duration::from_secs(10)).await;
}

/// Sends an interruption and waits until it has passed (it drops data queued behind it).
async fn interrupt(h: &mut Harness) {
    h.send(Frame::Interruption).await;
    h.wait_for(Duration::from_secs(5), |f, _| matches!(f, Frame::Interruption)).await.expect("the interruption passed");
}
