use slowcat_processors::memory::{MemoryDb, StoreOptions, bench::Generator, inject, InjectOptions};
use slowcat_processors::{LlmRequest, ChatMessage, Role};
use std::time::Instant;
fn main() {
    let db = MemoryDb::open(std::path::Path::new("/tmp/mb100k"), StoreOptions::default()).unwrap();
    let mut g = Generator::new(9);
    let qs: Vec<String> = (0..1000).map(|_| g.user_text()).collect();
    let o = InjectOptions { max_context_tokens: 1024, recent_exchanges: 6, relevant_exchanges: 4 };
    for pass in 0..2 {
        let mut t: Vec<(std::time::Duration, usize)> = vec![];
        for (i, q) in qs.iter().enumerate() {
            let mut r = LlmRequest { messages: vec![ChatMessage::new(Role::System, "sys"), ChatMessage::new(Role::User, q.clone())], speaker: "bench".into(), turn: 1, memory_injected: false };
            let s = Instant::now();
            inject::apply(&db, &mut r, &o, 0).unwrap();
            t.push((s.elapsed(), i));
        }
        t.sort();
        println!("pass {pass}: p50 {:?} p99 {:?}", t[500].0, t[990].0);
        for x in t.iter().rev().take(5) { println!("  {:?} #{} {}", x.0, x.1, qs[x.1]); }
    }
}
