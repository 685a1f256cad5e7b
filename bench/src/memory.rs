//! `slowcat bench memory`: injection and store latency, and bytes on disk per exchange, at
//! growing numbers of stored exchanges.
//!
//! The text is generated from a fixed vocabulary and sentence templates with a seeded PRNG:
//! short everyday exchanges (about 10 words from the user, 20 from the assistant) with names,
//! places, times, numbers and, now and then, a made-up rare word (a product or pet name), so both
//! common and rare terms occur as in real conversations.
//!
//! Set `SLOWCAT_BENCH_PAGES=1` to also print the pages each database inside LMDB takes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use slowcat_processors::frame::{ChatMessage, LlmRequest, Role};
use slowcat_processors::memory::inject::{self, InjectOptions};
use slowcat_processors::memory::store::{MemoryDb, MemoryStore, NewExchange, Retention, StoreOptions};
use slowcat_processors::memory::unix_now_ms;

use crate::host::load_average;
use crate::stats::{median, percentile};

/// A small, fast, seeded PRNG (SplitMix64): the same seed gives the same conversations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize
    }

    /// Skewed towards the start of `0..n`, as word frequencies are.
    pub fn skewed(&mut self, n: usize) -> usize {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * n as f64) as usize).min(n - 1)
    }
}

const NOUNS: &[&str] = &[
    "meeting",
    "dentist",
    "car",
    "garden",
    "kitchen",
    "report",
    "email",
    "package",
    "train",
    "flight",
    "ticket",
    "dinner",
    "lunch",
    "breakfast",
    "recipe",
    "oven",
    "bike",
    "umbrella",
    "jacket",
    "keys",
    "wallet",
    "phone",
    "laptop",
    "printer",
    "password",
    "budget",
    "invoice",
    "doctor",
    "pharmacy",
    "medicine",
    "appointment",
    "birthday",
    "present",
    "party",
    "concert",
    "movie",
    "book",
    "podcast",
    "song",
    "playlist",
    "weather",
    "forecast",
    "rain",
    "snow",
    "heater",
    "window",
    "door",
    "fridge",
    "milk",
    "bread",
    "coffee",
    "tea",
    "pasta",
    "salad",
    "soup",
    "tomatoes",
    "garlic",
    "onions",
    "cheese",
    "chicken",
    "fish",
    "rice",
    "beans",
    "cake",
    "cookies",
    "apples",
    "bananas",
    "oranges",
    "lemon",
    "plants",
    "roses",
    "tulips",
    "lawn",
    "fence",
    "roof",
    "garage",
    "basement",
    "neighbor",
    "landlord",
    "plumber",
    "electrician",
    "mechanic",
    "tires",
    "brakes",
    "insurance",
    "bank",
    "loan",
    "mortgage",
    "taxes",
    "receipt",
    "contract",
    "interview",
    "project",
    "deadline",
    "presentation",
    "slides",
    "spreadsheet",
    "manager",
    "colleague",
    "team",
    "client",
    "office",
    "desk",
    "chair",
    "monitor",
    "headphones",
    "battery",
    "charger",
    "camera",
    "photos",
    "album",
    "vacation",
    "hotel",
    "beach",
    "mountains",
    "hike",
    "trail",
    "tent",
    "backpack",
    "passport",
    "visa",
    "museum",
    "gallery",
    "library",
    "school",
    "homework",
    "exam",
    "teacher",
    "piano",
    "guitar",
    "lesson",
    "practice",
    "gym",
    "yoga",
    "run",
    "marathon",
    "shoes",
    "socks",
    "laundry",
    "dishes",
    "vacuum",
    "groceries",
    "list",
    "store",
    "market",
    "bakery",
    "restaurant",
    "reservation",
    "table",
    "menu",
    "wine",
    "beer",
    "juice",
    "water",
    "bottle",
    "cup",
    "plate",
    "spoon",
    "knife",
    "sister",
    "brother",
    "mother",
    "father",
    "grandmother",
    "uncle",
    "aunt",
    "cousin",
    "friend",
    "dog",
    "cat",
    "vet",
    "walk",
    "park",
];
const VERBS: &[&str] = &[
    "call",
    "buy",
    "fix",
    "clean",
    "book",
    "cancel",
    "check",
    "send",
    "pick up",
    "drop off",
    "water",
    "cook",
    "bake",
    "read",
    "write",
    "finish",
    "start",
    "plan",
    "pay",
    "order",
    "return",
    "visit",
    "meet",
    "email",
    "text",
    "prepare",
    "pack",
    "charge",
    "paint",
    "wash",
    "find",
    "move",
    "sell",
    "rent",
    "watch",
    "listen to",
    "practice",
    "schedule",
    "renew",
    "print",
    "sign",
    "review",
    "update",
    "remember",
    "feed",
    "walk",
    "repair",
    "replace",
];
const ADJECTIVES: &[&str] = &[
    "new",
    "old",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "quiet",
    "noisy",
    "cheap",
    "expensive",
    "early",
    "late",
    "long",
    "short",
    "warm",
    "cold",
    "fresh",
    "spicy",
    "sweet",
    "broken",
    "favorite",
    "important",
    "boring",
    "funny",
    "strange",
    "nice",
    "busy",
    "empty",
    "heavy",
    "light",
    "local",
    "weekly",
    "monthly",
    "usual",
    "second",
];
const NAMES: &[&str] = &[
    "Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Hugo", "Iris", "Jack", "Kate", "Leo", "Maria", "Nina",
    "Oscar", "Paul", "Rosa", "Sam", "Tom", "Vera", "Will", "Zoe", "Alex", "Chris", "Dana", "Eli", "Fiona", "George",
    "Hannah", "Ivan", "Julia", "Karl", "Laura", "Mike", "Nora", "Omar", "Petra", "Quinn", "Ruth", "Steve",
];
const PLACES: &[&str] = &[
    "the office",
    "home",
    "the station",
    "the airport",
    "downtown",
    "the mall",
    "the park",
    "the lake",
    "the city center",
    "the hospital",
    "the school",
    "the gym",
    "the market",
    "the library",
    "the beach",
    "the village",
    "the harbor",
    "the old town",
    "the university",
    "the stadium",
];
const TIMES: &[&str] = &[
    "today",
    "tomorrow",
    "tonight",
    "this morning",
    "this afternoon",
    "this evening",
    "on Monday",
    "on Tuesday",
    "on Wednesday",
    "on Thursday",
    "on Friday",
    "on Saturday",
    "on Sunday",
    "next week",
    "next month",
    "at nine",
    "at noon",
    "at three",
    "at six thirty",
    "before lunch",
    "after work",
    "this weekend",
];
const SYLLABLES: &[&str] =
    &["ka", "lo", "mi", "ru", "zen", "tor", "vex", "qua", "bri", "sol", "dar", "nix", "pel", "gro", "fen", "yul"];
const USER: &[&str] = &[
    "can you remind me to {verb} the {noun} {time}",
    "what do you think about the {adj} {noun}",
    "I talked to {name} about the {noun} at {place}",
    "how long does it take to {verb} the {noun}",
    "my {noun} code is {num} please remember that",
    "did I tell you about the {noun} {name} gave me",
    "I need to {verb} the {noun} before {name} comes {time}",
    "where did I put the {adj} {noun} yesterday",
    "what should I cook with {noun} and {noun}",
    "is it a good idea to {verb} the {noun} {time}",
    "{name} wants to meet at {place} {time}",
    "tell me something {adj} about the {noun}",
    "I bought a {adj} {noun} called {rare} at {place}",
    "remind me what {name} said about the {noun}",
    "should I {verb} the {noun} or the {noun} first",
    "the {noun} is {adj} again what can I do",
    "I am going to {place} {time} with {name}",
    "what was the name of the {noun} we talked about",
    "my {noun} {rare} needs to see the vet {time}",
    "help me plan the {noun} for {name} {time}",
];
const ASSISTANT: &[&str] = &[
    "Sure, I will remind you to {verb} the {noun} {time}.",
    "I think the {adj} {noun} is a good choice, and {name} would probably agree.",
    "That sounds {adj}. You could {verb} the {noun} at {place} {time}.",
    "It usually takes about {num} minutes to {verb} the {noun} if everything goes well.",
    "Got it, your {noun} code is {num}. I will keep that in mind.",
    "You mentioned the {noun} from {name} before, it was the {adj} one.",
    "Maybe {verb} the {noun} first, then the {noun} can wait until {time}.",
    "Last time you said the {noun} was at {place}, maybe check there.",
    "With {noun} and {noun} you could make a {adj} soup or a quick salad.",
    "If the weather is {adj} {time}, it is a good moment to {verb} the {noun}.",
    "Meeting {name} at {place} {time} sounds nice, I hope you have fun.",
    "Here is something {adj}: the {noun} was invented long before the {noun}.",
    "A {adj} {noun} called {rare} sounds great, I hope you enjoy it.",
    "{name} said the {noun} should be ready {time}, so there is no rush.",
    "I would {verb} the {noun} first because it takes longer.",
    "When the {noun} is {adj}, try to {verb} it gently and wait a bit.",
    "Have a good time at {place} with {name} {time}.",
    "We talked about the {adj} {noun} from {place}, I think.",
    "I hope {rare} feels better soon, the vet will know what to do.",
    "Let us start with a list: {noun}, {noun} and a {adj} {noun} for {name}.",
];

/// Generates everyday exchanges.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    turn: u64,
}

impl Generator {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self { rng: Rng::new(seed), turn: 0 }
    }

    /// A made-up rare word.
    pub fn rare_word(&mut self) -> String {
        let n = 2 + self.rng.below(2);
        let mut w: String = (0..n).map(|_| SYLLABLES[self.rng.below(SYLLABLES.len())]).collect();
        if let Some(first) = w.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        w
    }

    fn fill(&mut self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = open + rest[open..].find('}').unwrap_or(0);
            let slot = &rest[open + 1..close];
            let r = &mut self.rng;
            match slot {
                "noun" => out.push_str(NOUNS[r.skewed(NOUNS.len())]),
                "verb" => out.push_str(VERBS[r.skewed(VERBS.len())]),
                "adj" => out.push_str(ADJECTIVES[r.skewed(ADJECTIVES.len())]),
                "name" => out.push_str(NAMES[r.skewed(NAMES.len())]),
                "place" => out.push_str(PLACES[r.skewed(PLACES.len())]),
                "time" => out.push_str(TIMES[r.skewed(TIMES.len())]),
                "num" => out.push_str(&(10 + r.below(9990)).to_string()),
                _ => out.push_str(&self.rare_word()),
            }
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// A user question of about ten words.
    pub fn user_text(&mut self) -> String {
        let t = USER[self.rng.skewed(USER.len())];
        self.fill(t)
    }

    /// An assistant reply of about twenty words.
    pub fn assistant_text(&mut self) -> String {
        let a = ASSISTANT[self.rng.below(ASSISTANT.len())];
        let mut text = self.fill(a);
        if self.rng.below(3) > 0 {
            let b = ASSISTANT[self.rng.below(ASSISTANT.len())];
            text.push(' ');
            text.push_str(&self.fill(b));
        }
        text
    }

    /// The next exchange of `speaker`, `gap_ms` after `at_ms`.
    pub fn exchange(&mut self, speaker: &str, at_ms: u64) -> NewExchange {
        self.turn += 1;
        let interrupted = self.rng.below(20) == 0;
        let mut assistant = self.assistant_text();
        if interrupted {
            let words: Vec<&str> = assistant.split(' ').collect();
            assistant = words[..words.len() / 2].join(" ");
        }
        NewExchange {
            speaker: speaker.to_string(),
            turn: self.turn,
            at_ms,
            interrupted,
            user: self.user_text(),
            assistant,
            tools: String::new(),
        }
    }
}

/// What `slowcat bench memory` measures.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where to build the database (a fresh temporary directory when `None`; it must not hold
    /// a memory database already).
    pub dir: Option<PathBuf>,
    /// Stored exchanges to measure at, ascending.
    pub sizes: Vec<u64>,
    /// Injections timed per run.
    pub injections: usize,
    /// Runs per figure; the table shows the median of the runs' percentiles.
    pub runs: usize,
    /// Stores timed at each size.
    pub stores: usize,
    /// Seed of the generated conversations.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            dir: None,
            sizes: vec![100, 10_000, 100_000, 1_000_000],
            injections: 2000,
            runs: 5,
            stores: 200,
            seed: 42,
        }
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

const SPEAKER: &str = "bench";
const SYSTEM_PROMPT: &str = "You are a helpful voice assistant. Answer briefly, in plain spoken sentences.";

/// Times `injections` injections (read + rewrite, as the processor does them) per run; returns
/// the median over runs of p50 and p99.
fn time_injections(
    db: &MemoryDb,
    conv: &mut Generator,
    options: &InjectOptions,
    opts: &BenchOptions,
) -> anyhow::Result<(Duration, Duration)> {
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let questions: Vec<String> = (0..opts.injections).map(|_| conv.user_text()).collect();
    let now = unix_now_ms();
    for _ in 0..opts.runs.max(1) {
        let mut times = Vec::with_capacity(questions.len());
        for q in &questions {
            let mut request = LlmRequest {
                messages: vec![ChatMessage::new(Role::System, SYSTEM_PROMPT), ChatMessage::new(Role::User, q.clone())],
                speaker: SPEAKER.into(),
                turn: 1,
                memory_injected: false,
            };
            let started = Instant::now();
            inject::apply(db, &mut request, options, now)?;
            times.push(started.elapsed());
            std::hint::black_box(&request);
        }
        times.sort_unstable();
        p50s.push(percentile(&times, 0.5).unwrap_or_default());
        p99s.push(percentile(&times, 0.99).unwrap_or_default());
    }
    Ok((median(p50s).unwrap_or_default(), median(p99s).unwrap_or_default()))
}

/// Runs the benchmark and prints a table to `out`.
pub fn run(opts: &BenchOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let store_options =
        StoreOptions { retention: Retention { max_exchanges: 0, max_age_days: 0 }, ..StoreOptions::default() };
    let db =
        Arc::new(MemoryDb::open(&dir, store_options.clone()).with_context(|| format!("opening {}", dir.display()))?);
    anyhow::ensure!(
        db.speaker(SPEAKER)?.is_none(),
        "{} already holds a benchmark database; give an empty directory",
        dir.display()
    );
    let mut conv = Generator::new(opts.seed);
    let mut queries = Generator::new(opts.seed ^ 0x5eed);
    let start_ms = unix_now_ms() - 400 * 86_400_000;
    let mut at = start_ms;
    let mut stored = 0u64;
    let recency = InjectOptions { max_context_tokens: 1024, recent_exchanges: 6, relevant_exchanges: 0, facts: 0 };
    let relevance = InjectOptions { relevant_exchanges: 4, ..recency };

    writeln!(
        out,
        "memory benchmark: stateless_memory in {} (release build: {})",
        dir.display(),
        !cfg!(debug_assertions)
    )?;
    writeln!(
        out,
        "median of {} runs; {} injections per run; {} stores per size; hot tier {}, blocks of {}",
        opts.runs, opts.injections, opts.stores, store_options.hot_tier_size, store_options.block_size
    )?;
    writeln!(
        out,
        "injection = read + rewrite of one request (6 recent; relevance adds up to 4 older, BM25); store = queued to \
         the writer thread until its durable commit (fsync); B/exch = data file and live pages per exchange"
    )?;
    if let Some(load) = load_average() {
        writeln!(out, "load average at start: {load} (figures are wall-clock)")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>9} {:>9} | {:>8}",
        "exchanges",
        "recent p50",
        "recent p99",
        "relev. p50",
        "relev. p99",
        "store p50",
        "store p99",
        "B/exch",
        "B/exch",
        "load s"
    )?;
    writeln!(
        out,
        "{:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>9} {:>9} | {:>8}",
        "", "µs", "µs", "µs", "µs", "µs", "µs", "file", "live", ""
    )?;
    for &size in &opts.sizes {
        let load_started = Instant::now();
        while stored < size {
            let n = (size - stored).min(50_000);
            let batch: Vec<NewExchange> = (0..n)
                .map(|_| {
                    at += 20_000 + conv.rng.below(40_000) as u64;
                    conv.exchange(SPEAKER, at)
                })
                .collect();
            db.bulk_load(&batch)?;
            stored += n;
        }
        db.maintain()?;
        let load = load_started.elapsed();
        let usage = db.disk_usage()?;
        let (r50, r99) = time_injections(&db, &mut queries, &recency, opts)?;
        let (q50, q99) = time_injections(&db, &mut queries, &relevance, opts)?;

        let store = MemoryStore::start(db.clone())?;
        let mut times = Vec::with_capacity(opts.stores);
        for _ in 0..opts.stores {
            at += 30_000;
            let ex = conv.exchange(SPEAKER, at);
            let started = Instant::now();
            store.store_blocking(ex).map_err(|e| anyhow::anyhow!("store failed: {e}"))?;
            times.push(started.elapsed());
        }
        store.settle(Duration::from_secs(30));
        store.close();
        stored += opts.stores as u64;
        times.sort_unstable();
        writeln!(
            out,
            "{:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>9.1} {:>9.1} | {:>8.1}",
            size,
            us(r50),
            us(r99),
            us(q50),
            us(q99),
            us(percentile(&times, 0.5).unwrap_or_default()),
            us(percentile(&times, 0.99).unwrap_or_default()),
            usage.file_bytes as f64 / size as f64,
            usage.used_bytes as f64 / size as f64,
            load.as_secs_f64()
        )?;
        if std::env::var_os("SLOWCAT_BENCH_PAGES").is_some() {
            for (name, st) in db.page_stats()? {
                writeln!(
                    out,
                    "    {name:>9}: {} entries, {} leaf + {} branch + {} overflow pages",
                    st.entries, st.leaf_pages, st.branch_pages, st.overflow_pages
                )?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

/// A temporary directory removed on drop (no extra crate for one directory).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        let dir = base.join(format!("slowcat-memory-bench-{}-{}", std::process::id(), unix_now_ms()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
