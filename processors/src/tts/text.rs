//! Speakable text: LLM replies (markdown, emoji, web addresses, prices) turned into sentences a
//! synthesizer can read aloud, cut while the reply streams so the first one is spoken early.
//!
//! Two pure steps: [`SentenceSplitter`] finds where segments end in the raw streamed text (never
//! inside "Dr.", "e.g.", "$29.99", "3.5" or "example.com"), and [`speakable`] rewrites one
//! segment into words ("8pm" → "8 pm", "C++" → "C plus plus"). Punctuation that shapes prosody
//! (", ; : . ! ?") is kept.

use std::sync::LazyLock;

use regex::{Captures, Regex};

/// Where segments are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOptions {
    /// A sentence longer than this (in characters) is cut at its last clause boundary before the
    /// limit, or at a word boundary when it has none.
    pub max_chars: usize,
    /// The first segment of a reply ends at its first clause boundary (`,` `;` `:`) once it has
    /// at least this many words, so the first audio comes sooner. 0 turns this off.
    pub first_clause_words: usize,
    /// The first segment of a reply is cut when it would grow past this many words and no
    /// sentence or clause has ended by then: at a phrase boundary (before a preposition,
    /// conjunction, article, "that", or the verb after its subject) once it has
    /// `first_clause_words` words, else after the last word that fits. 0 turns this off.
    pub first_max_words: usize,
}

impl Default for SplitOptions {
    fn default() -> Self {
        Self { max_chars: 220, first_clause_words: 3, first_max_words: 0 }
    }
}

/// Gathers streamed text chunks into segments (sentences, or clauses of a long sentence).
#[derive(Debug, Clone)]
pub struct SentenceSplitter {
    buf: String,
    first: bool,
    opts: SplitOptions,
}

/// Titles that are followed by a name, never by a new sentence.
const TITLES: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "capt", "col", "lt", "sgt", "rev", "hon", "vs", "fig",
    "approx", "dept",
];

impl SentenceSplitter {
    /// A splitter at the start of a reply.
    pub fn new(opts: SplitOptions) -> Self {
        Self { buf: String::new(), first: true, opts }
    }

    /// Forgets pending text; the next segment is the first of a new reply.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.first = true;
    }

    /// True when no text is waiting.
    pub fn is_empty(&self) -> bool {
        self.buf.trim().is_empty()
    }

    /// Adds a chunk; returns the segments it completed.
    pub fn push(&mut self, chunk: &str) -> Vec<String> {
        self.buf.push_str(chunk);
        self.drain(false)
    }

    /// End of the text: returns every remaining segment.
    pub fn flush(&mut self) -> Vec<String> {
        let out = self.drain(true);
        self.buf.clear();
        out
    }

    /// Splits a whole text at once (for `Speak` frames).
    pub fn split_all(text: &str, opts: SplitOptions) -> Vec<String> {
        let mut s = Self::new(opts);
        let mut out = s.push(text);
        out.extend(s.flush());
        out
    }

    fn drain(&mut self, last: bool) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let (region, fence) = self.scan_region(last);
            let limit = if self.first && self.opts.first_max_words > 0 {
                Limit::Words(self.opts.first_max_words)
            } else {
                Limit::Chars(self.opts.max_chars.max(20))
            };
            let clause_words = if self.first { self.opts.first_clause_words } else { 0 };
            // Nothing follows this region in the same segment: the end of the text, or a code
            // block (which is never spoken) starting right after it.
            let complete = fence || (last && region == self.buf.len());
            let cut = find_cut(&self.buf[..region], complete, clause_words, limit)
                .or_else(|| (complete && region > 0).then_some(region));
            let Some(cut) = cut else { break };
            let segment = self.buf[..cut].trim().to_string();
            self.buf.drain(..cut);
            let skip = self.buf.len() - self.buf.trim_start().len();
            self.buf.drain(..skip);
            if has_words(&segment) {
                self.first = false;
                out.push(segment);
            }
        }
        out
    }

    /// Removes complete code blocks and returns how much of the buffer may be scanned, and
    /// whether an unclosed code fence starts there (text from it on is held back, and dropped
    /// at the end).
    fn scan_region(&mut self, last: bool) -> (usize, bool) {
        while let Some(open) = self.buf.find("```") {
            match self.buf[open + 3..].find("```") {
                Some(close) => {
                    let mut end = open + 3 + close + 3;
                    // The rest of the closing fence's line goes with it.
                    if let Some(nl) = self.buf[end..].find('\n')
                        && self.buf[end..end + nl].trim().is_empty()
                    {
                        end += nl;
                    }
                    self.buf.replace_range(open..end, "\n");
                }
                None => {
                    if last {
                        self.buf.truncate(open);
                        return (self.buf.len(), false);
                    }
                    return (open, true);
                }
            }
        }
        if last {
            return (self.buf.len(), false);
        }
        // A trailing "`" or "``" may be the start of a fence still arriving.
        let ticks = self.buf.len() - self.buf.trim_end_matches('`').len();
        if ticks > 0 && ticks < 3 { (self.buf.len() - ticks, false) } else { (self.buf.len(), false) }
    }
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    Chars(usize),
    Words(usize),
}

fn has_words(s: &str) -> bool {
    s.chars().any(char::is_alphanumeric)
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | ')' | ']' | '*' | '_' | '»')
}

/// The byte index where the first segment of `text` ends, if one has ended. `complete` says no
/// more text follows this region, so an end of sentence at its very end counts.
fn find_cut(text: &str, complete: bool, clause_words: usize, limit: Limit) -> Option<usize> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut words = 0usize;
    let mut in_word = false;
    let mut last_clause: Option<usize> = None;
    let mut last_space: Option<usize> = None;
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if c.is_whitespace() {
            if in_word {
                in_word = false;
                last_space = Some(at);
            }
        } else if !in_word {
            in_word = true;
            words += 1;
        }
        let over = match limit {
            Limit::Chars(n) => i >= n,
            Limit::Words(n) => words > n,
        };
        if over {
            let phrase = match limit {
                Limit::Words(_) => phrase_cut(&text[..at], clause_words),
                Limit::Chars(_) => None,
            };
            return last_clause.or(phrase).or(last_space).or(Some(at)).filter(|&p| p > 0);
        }
        match c {
            '\n' if has_words(&text[..at]) => return Some(at),
            '.' | '!' | '?' | '…' => {
                let mut j = i + 1;
                while j < chars.len() && (matches!(chars[j].1, '.' | '!' | '?' | '…') || is_closer(chars[j].1)) {
                    j += 1;
                }
                let end = chars.get(j).map_or(text.len(), |&(p, _)| p);
                match sentence_end(text, &chars, i, j, complete) {
                    Decision::End => return Some(end),
                    Decision::Wait => return None,
                    Decision::No => {}
                }
                i = j;
                continue;
            }
            ',' | ';' | ':' => {
                let next = chars.get(i + 1).map(|&(_, c)| c);
                if next.is_some_and(char::is_whitespace) {
                    let end = at + c.len_utf8();
                    last_clause = Some(end);
                    if clause_words > 0 && words >= clause_words {
                        return Some(end);
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Words a phrase starts with, so a pause before them sounds natural ("the weather | with a
/// light breeze", "I would take | a long walk", "the weather | will be sunny").
const PHRASE_STARTS: &[&str] = &[
    // prepositions ("of" is left out: "a cup | of tea" sounds broken)
    "about", "after", "against", "along", "around", "at", "before", "behind", "below", "beside", "between", "by",
    "during", "for", "from", "in", "inside", "into", "near", "on", "onto", "over", "through", "to", "toward",
    "towards", "under", "until", "with", "within", "without", // conjunctions and relatives
    "and", "but", "or", "nor", "so", "yet", "because", "although", "though", "while", "whereas", "unless", "if",
    "when", "whenever", "where", "since", "than", "that", "which", "who", "whose", "whom",
    // articles and determiners
    "a", "an", "the", "this", "these", "those", "my", "your", "our", "their", "his", "its", "some", "every", "each",
    // auxiliaries: the verb after its subject
    "will", "would", "can", "could", "should", "shall", "may", "might", "must", "is", "are", "was", "were", "has",
    "have", "had",
];

/// Words that bind to the word after them: no pause right after one ("in | the park", "it | is").
const BINDS_FORWARD: &[&str] = &[
    "i", "you", "we", "they", "he", "she", "it", "there", "her", "not", "be", "been", "being", "do", "does", "did",
    "of", "very", "too", "quite", "really", "just", "also", "more", "most", "less", "such", "what", "how", "why",
];

fn bare_word(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()
}

/// Where a first segment that must end within `text` ends best: before the earliest
/// phrase-starting word with at least `min_words` words before it; else after the last word (from
/// the `min_words`th on) that does not bind to the next one; else `None`.
fn phrase_cut(text: &str, min_words: usize) -> Option<usize> {
    let words: Vec<(usize, &str)> =
        text.split_whitespace().map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w)).collect();
    let binds = |w: &str| {
        let bare = bare_word(w);
        PHRASE_STARTS.contains(&bare.as_str()) || BINDS_FORWARD.contains(&bare.as_str())
    };
    let first = min_words.max(1);
    let phrase = (first..words.len()).find(|&k| {
        let (prev, word) = (words[k - 1].1, words[k].1);
        PHRASE_STARTS.contains(&bare_word(word).as_str())
            && !binds(prev)
            && prev.ends_with(char::is_alphanumeric)
            && word.starts_with(char::is_alphanumeric)
    });
    let loose = || (first..=words.len()).rev().find(|&k| !binds(words[k - 1].1));
    phrase.or_else(loose).map(|k| words[k - 1].0 + words[k - 1].1.len())
}

enum Decision {
    End,
    No,
    Wait,
}

/// Decides whether the punctuation run `chars[i..j]` ends a sentence.
fn sentence_end(text: &str, chars: &[(usize, char)], i: usize, j: usize, complete: bool) -> Decision {
    let Some(&(_, next)) = chars.get(j) else {
        return if complete { Decision::End } else { Decision::Wait };
    };
    if !next.is_whitespace() {
        // "3.5", "example.com", "e.g", "$29.99", "Hi!!" still arriving: never a sentence end.
        return Decision::No;
    }
    let run: String = chars[i..j].iter().map(|&(_, c)| c).collect();
    if run.contains(['!', '?']) {
        return Decision::End;
    }
    // A period: look at the word before it and the word after it.
    let start = chars[i].0;
    let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
    let token_start = text[..start].rfind(char::is_whitespace).map_or(0, |p| p + 1).max(line_start);
    let token = text[token_start..start].trim_start_matches(['(', '"', '\'', '*', '_', '[']);
    let lower = token.to_lowercase();
    if TITLES.contains(&lower.as_str()) {
        return Decision::No;
    }
    // An initial ("J. R. R. Tolkien").
    if token.chars().count() == 1 && token.chars().all(|c| c.is_alphabetic()) && run == "." {
        return Decision::No;
    }
    // An ordered list marker at the start of a line: "1. Preheat the oven".
    if !token.is_empty() && token.chars().all(|c| c.is_ascii_digit()) && text[line_start..token_start].trim().is_empty()
    {
        return Decision::No;
    }
    // Sentences start with a capital or a digit: "e.g. this", "etc. and", "a.m. tomorrow" go on.
    let mut k = j;
    while k < chars.len() && chars[k].1.is_whitespace() {
        if chars[k].1 == '\n' {
            return Decision::End;
        }
        k += 1;
    }
    match chars.get(k) {
        None if complete => Decision::End,
        None => Decision::Wait,
        Some(&(_, c)) if c.is_lowercase() => Decision::No,
        Some(_) => Decision::End,
    }
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("the patterns in this file are valid")
}

macro_rules! regex {
    ($name:ident, $pattern:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| re($pattern));
    };
}

regex!(CODE_BLOCK, r"(?s)```.*?(?:```|$)");
regex!(IMAGE, r"!\[([^\]]*)\]\([^)]*\)");
regex!(LINK, r"\[([^\]]+)\]\(([^)\s]*)\)");
regex!(INLINE_CODE, r"`+([^`]*)`+");
regex!(HEADER, r"(?m)^[ \t]*#{1,6}[ \t]+");
regex!(BULLET, r"(?m)^[ \t]*(?:[-*+•]|>+)[ \t]+");
regex!(RULE, r"(?m)^[ \t]*(?:[-*_=][ \t]*){3,}$");
regex!(TABLE_RULE, r"(?m)^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$");
regex!(TABLE_EDGE, r"(?m)^[ \t]*\||\|[ \t]*$");
regex!(STRONG, r"\*\*|__|~~");
regex!(TIMES_STAR, r"(\d)\s*\*\s*(\d)");
regex!(UNDERSCORE_EDGE, r"(^|[^\w])_+|_+([^\w]|$)");
regex!(EMAIL, r"\b([\w.+-]+)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)");
regex!(URL, r"(?i)\b(?:https?://|www\.)[^\s<>()]+|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?:/[^\s<>()]*)?");
regex!(MONEY, r"(?i)([$€£])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(\s?(?:thousand|million|billion|trillion|[kmb])\b)?");
regex!(TIME, r"(?i)\b(\d{1,2}(?::\d{2})?)\s?([ap])\.?m\b\.?");
regex!(CPLUS, r"(?i)\b([a-z])\+\+");
regex!(CSHARP, r"\b([CF])#");
regex!(NUMBER_SIGN, r"#\s?(\d)");
regex!(PERCENT, r"(\d)\s?%");
regex!(DEGREES, r"(\d)\s?°\s?([CF])\b");
regex!(PLUS, r"(\d)\s?\+\s?(\d)|\s\+\s");
regex!(EQUALS, r"\s?=\s?");
regex!(TILDE_NUMBER, r"~\s?(\d)");
regex!(DASH, r"(\S)\s*(?:—|\s[-–]+\s)\s*(\S)");
regex!(ARROW, r"\s?(?:->|→|=>)\s?");
regex!(SPACE_BEFORE_PUNCT, r"\s+([,;:.!?])");
regex!(REPEATED_COMMA, r"([,;:])(?:\s*[,;:])+");
regex!(SPACES, r"[ \t]+");
regex!(LINES, r"\s*\n\s*");

/// Abbreviations read as words: (abbreviation, words, is a title). A title is followed by a name
/// and never ends a sentence; the others give back their period when it also ended the sentence.
const ABBREVIATIONS: &[(&str, &str, bool)] = &[
    ("e.g.", "for example", false),
    ("i.e.", "that is", false),
    ("etc.", "et cetera", false),
    ("vs.", "versus", false),
    ("approx.", "approximately", false),
    ("Dr.", "Doctor", true),
    ("Mr.", "Mister", true),
    ("Mrs.", "Missus", true),
    ("Ms.", "Miz", true),
    ("Prof.", "Professor", true),
];

static ABBREVIATION_RES: LazyLock<Vec<(Regex, &'static str, bool)>> = LazyLock::new(|| {
    ABBREVIATIONS
        .iter()
        .map(|&(abbr, words, title)| {
            // Titles are matched as written ("ms." is milliseconds); the rest in any case.
            let case = if title { "" } else { "(?i)" };
            (re(&format!(r"{case}(^|[^\w.]){}", regex::escape(abbr))), words, title)
        })
        .collect()
});

fn is_emoji(c: char) -> bool {
    matches!(u32::from(c),
        0x1F000..=0x1FAFF // pictographs, emoticons, transport, flags, symbols
        | 0x2600..=0x27BF // misc symbols, dingbats
        | 0x2B00..=0x2BFF // arrows and stars used as emoji
        | 0xFE00..=0xFE0F // variation selectors
        | 0x200D          // zero-width joiner
        | 0x20E3          // combining keycap
        | 0xE0020..=0xE007F // tag characters (flag sequences)
    )
}

/// The segment as it should be shown and remembered: markdown, code blocks and emoji removed,
/// whitespace collapsed, words and symbols untouched.
pub fn display_text(text: &str) -> String {
    let t = CODE_BLOCK.replace_all(text, " ");
    let t = IMAGE.replace_all(&t, "$1");
    let t = LINK.replace_all(&t, "$1");
    let t = INLINE_CODE.replace_all(&t, "$1");
    let t = TABLE_RULE.replace_all(&t, "");
    let t = RULE.replace_all(&t, "");
    let t = HEADER.replace_all(&t, "");
    let t = BULLET.replace_all(&t, "");
    let t = STRONG.replace_all(&t, "");
    let t = TIMES_STAR.replace_all(&t, "$1 times $2");
    let t: String = t.chars().filter(|&c| c != '*' && !is_emoji(c)).collect();
    let t = UNDERSCORE_EDGE.replace_all(&t, "$1$2");
    let t = TABLE_EDGE.replace_all(&t, "");
    let t = t.replace('|', ", ");
    let t = LINES.replace_all(&t, " ");
    let t = SPACES.replace_all(&t, " ");
    let t = SPACE_BEFORE_PUNCT.replace_all(&t, "$1");
    let t = REPEATED_COMMA.replace_all(&t, "$1");
    t.trim().trim_start_matches([',', ';', ':']).trim().to_string()
}

/// Reads a web address aloud: "https://www.example.com/docs?q=1" → "example dot com slash docs".
fn speak_url(url: &str) -> String {
    let mut u = url;
    for prefix in ["https://", "http://", "HTTPS://", "HTTP://"] {
        u = u.strip_prefix(prefix).unwrap_or(u);
    }
    u = u.strip_prefix("www.").or_else(|| u.strip_prefix("WWW.")).unwrap_or(u);
    let u = u.split(['?', '#']).next().unwrap_or(u).trim_end_matches('/');
    let mut out = String::new();
    for c in u.chars() {
        match c {
            '.' => out.push_str(" dot "),
            '/' => out.push_str(" slash "),
            '_' => out.push_str(" underscore "),
            '-' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn speak_money(c: &Captures) -> String {
    let unit = match &c[1] {
        "€" => ("euro", "euros", "cent", "cents"),
        "£" => ("pound", "pounds", "penny", "pence"),
        _ => ("dollar", "dollars", "cent", "cents"),
    };
    let whole = c[2].replace(',', "");
    let fraction = c.get(3).map(|m| m.as_str());
    if let Some(scale) = c.get(4) {
        let scale = match scale.as_str().trim().to_lowercase().as_str() {
            "k" => "thousand".to_string(),
            "m" => "million".to_string(),
            "b" => "billion".to_string(),
            s => s.to_string(),
        };
        let number = fraction.map_or(whole.clone(), |f| format!("{whole}.{f}"));
        return format!("{number} {scale} {}", unit.1);
    }
    match fraction {
        Some(f) if f.len() == 2 => {
            let cents: u32 = f.parse().unwrap_or(0);
            let cents_word = if cents == 1 { unit.2 } else { unit.3 };
            if whole == "0" {
                format!("{cents} {cents_word}")
            } else if cents == 0 {
                format!("{whole} {}", if whole == "1" { unit.0 } else { unit.1 })
            } else {
                format!("{whole} {} and {cents} {cents_word}", if whole == "1" { unit.0 } else { unit.1 })
            }
        }
        Some(f) => format!("{whole}.{f} {}", unit.1),
        None => format!("{whole} {}", if whole == "1" { unit.0 } else { unit.1 }),
    }
}

/// Replaces every match, calling `f` with the captures and whether the match ends the text
/// (so a period eaten with an abbreviation can be put back).
fn replace_keeping_end(text: &str, re: &Regex, f: impl Fn(&Captures) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for c in re.captures_iter(text) {
        let m = c.get(0).expect("group 0 always matches");
        out.push_str(&text[last..m.start()]);
        out.push_str(&f(&c));
        if m.as_str().ends_with('.') && ends_sentence(&text[m.end()..]) {
            out.push('.');
        }
        last = m.end();
    }
    out.push_str(&text[last..]);
    out
}

/// True when what follows a period leaves it ending a sentence (nothing, or a capitalised word).
fn ends_sentence(rest: &str) -> bool {
    let rest = rest.trim_start_matches(is_closer);
    match rest.trim_start().chars().next() {
        None => true,
        Some(c) => rest.starts_with(char::is_whitespace) && c.is_uppercase(),
    }
}

fn expand_abbreviations(text: &str) -> String {
    let mut t = text.to_string();
    for (re, words, title) in ABBREVIATION_RES.iter() {
        t = if *title {
            re.replace_all(&t, |c: &Captures| format!("{}{words}", &c[1])).into_owned()
        } else {
            replace_keeping_end(&t, re, |c| format!("{}{words}", &c[1]))
        };
    }
    t
}

/// A segment rewritten for a synthesizer: [`display_text`], then web addresses, e-mail addresses,
/// prices, times, abbreviations and symbols spelled out as words.
pub fn speakable(text: &str) -> String {
    let t = display_text(text);
    let t = EMAIL.replace_all(&t, |c: &Captures| format!("{} at {}", c[1].replace('.', " dot "), speak_url(&c[2])));
    let t = URL.replace_all(&t, |c: &Captures| {
        let m = &c[0];
        // Sentence punctuation right after an address is not part of it.
        let url = m.trim_end_matches(['.', ',', ';', ':', '!', '?', '\'', '"']);
        format!("{}{}", speak_url(url), &m[url.len()..])
    });
    let t = MONEY.replace_all(&t, speak_money);
    let t = replace_keeping_end(&t, &TIME, |c| format!("{} {}m", &c[1], c[2].to_lowercase()));
    let t = expand_abbreviations(&t);
    let t = CPLUS.replace_all(&t, "$1 plus plus");
    let t = CSHARP.replace_all(&t, "$1 sharp");
    let t = NUMBER_SIGN.replace_all(&t, "number $1");
    let t = DEGREES.replace_all(&t, |c: &Captures| {
        format!("{} degrees {}", &c[1], if &c[2] == "C" { "Celsius" } else { "Fahrenheit" })
    });
    let t = t.replace('°', " degrees");
    let t = PERCENT.replace_all(&t, "$1 percent");
    let t = PLUS.replace_all(&t, |c: &Captures| match (c.get(1), c.get(2)) {
        (Some(a), Some(b)) => format!("{} plus {}", a.as_str(), b.as_str()),
        _ => " plus ".to_string(),
    });
    let t = ARROW.replace_all(&t, " to ");
    let t = EQUALS.replace_all(&t, " equals ");
    let t = TILDE_NUMBER.replace_all(&t, "about $1");
    let t = DASH.replace_all(&t, |c: &Captures| {
        let (a, b) = (&c[1], &c[2]);
        let digit = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        if digit(a) && digit(b) { format!("{a} minus {b}") } else { format!("{a}, {b}") }
    });
    let t = t.replace('&', " and ").replace('@', " at ").replace(['#', '~', '^', '\\'], " ");
    let t = SPACES.replace_all(&t, " ");
    let t = SPACE_BEFORE_PUNCT.replace_all(&t, "$1");
    let t = REPEATED_COMMA.replace_all(&t, "$1");
    t.trim().trim_start_matches([',', ';', ':']).trim().to_string()
}

/// Splits a segment into clauses at `, ; : . ! ?` (followed by a space or the end), each with
/// the punctuation that closed it: phonemizers drop punctuation, so it is put back after each
/// clause's phonemes.
pub fn clauses(text: &str) -> Vec<(String, Option<char>)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let is_mark = |c: char| matches!(c, ',' | ';' | ':' | '.' | '!' | '?' | '…');
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if !is_mark(c) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < chars.len() && (is_mark(chars[j].1) || is_closer(chars[j].1)) {
            j += 1;
        }
        let run: String = chars[i..j].iter().map(|&(_, c)| c).filter(|&c| is_mark(c)).collect();
        let boundary =
            chars.get(j).is_none_or(|&(_, n)| n.is_whitespace()) && !(run == "." && is_abbreviation_before(text, at));
        if boundary {
            let clause = text[start..at].trim().trim_start_matches(is_closer).trim();
            let punct = if run.contains('?') {
                '?'
            } else if run.contains('!') {
                '!'
            } else if run.starts_with('…') {
                '.'
            } else {
                run.chars().next().unwrap_or('.')
            };
            if has_words(clause) {
                out.push((clause.to_string(), Some(punct)));
            }
            start = chars.get(j).map_or(text.len(), |&(p, _)| p);
        }
        i = j;
    }
    let rest = text[start..].trim().trim_start_matches(is_closer).trim();
    if has_words(rest) {
        out.push((rest.to_string(), None));
    }
    out
}

fn is_abbreviation_before(text: &str, at: usize) -> bool {
    let token_start = text[..at].rfind(char::is_whitespace).map_or(0, |p| p + 1);
    let token = text[token_start..at].trim_start_matches(['(', '"', '\'']).to_lowercase();
    TITLES.contains(&token.as_str()) || (token.chars().count() == 1 && token.chars().all(char::is_alphabetic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&str], opts: SplitOptions) -> Vec<String> {
        let mut s = SentenceSplitter::new(opts);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.flush());
        out
    }

    fn plain() -> SplitOptions {
        SplitOptions { max_chars: 220, first_clause_words: 0, first_max_words: 0 }
    }

    #[test]
    fn sentence_table() {
        let cases: &[(&str, &[&str])] = &[
            ("Hello there. How are you? Fine!", &["Hello there.", "How are you?", "Fine!"]),
            ("Ask Dr. Smith about it. Then rest.", &["Ask Dr. Smith about it.", "Then rest."]),
            ("Use a tool, e.g. a hammer. Done.", &["Use a tool, e.g. a hammer.", "Done."]),
            ("It costs $29.99 today. Buy it.", &["It costs $29.99 today.", "Buy it."]),
            ("Pi is about 3.14 or so. Yes.", &["Pi is about 3.14 or so.", "Yes."]),
            (
                "Visit example.com for more. Or https://a.b.org/x.html now.",
                &["Visit example.com for more.", "Or https://a.b.org/x.html now."],
            ),
            ("Meet at 8 a.m. tomorrow. Bye.", &["Meet at 8 a.m. tomorrow.", "Bye."]),
            ("Steps:\n1. Preheat the oven.\n2. Bake it.", &["Steps:", "1. Preheat the oven.", "2. Bake it."]),
            ("- apples\n- pears\n", &["- apples", "- pears"]),
            ("Wait... what? \"Really.\" Yes.", &["Wait... what?", "\"Really.\"", "Yes."]),
            ("J. R. R. Tolkien wrote it. True.", &["J. R. R. Tolkien wrote it.", "True."]),
            ("Run this:\n```\nls -la. rm x.\n```\nThat lists files.", &["Run this:", "That lists files."]),
            ("No code ```never closed. at all", &["No code"]),
            ("**Bold.** Next one.", &["**Bold.**", "Next one."]),
        ];
        for (text, want) in cases {
            // Whole, and streamed a few characters at a time.
            assert_eq!(SentenceSplitter::split_all(text, plain()), *want, "whole: {text:?}");
            let pieces: Vec<String> = text.chars().collect::<Vec<_>>().chunks(3).map(|c| c.iter().collect()).collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(split(&refs, plain()), *want, "streamed: {text:?}");
        }
    }

    #[test]
    fn a_sentence_is_emitted_as_soon_as_the_next_one_starts() {
        let mut s = SentenceSplitter::new(plain());
        assert!(s.push("Hello there").is_empty());
        assert!(s.push(".").is_empty(), "could be an abbreviation or a decimal");
        assert_eq!(s.push(" How"), vec!["Hello there."]);
        assert!(s.push("?").is_empty());
        assert_eq!(s.push(" I"), vec!["How?"]);
        assert_eq!(s.flush(), vec!["I"]);
    }

    #[test]
    fn long_sentences_are_cut_at_clauses_then_words() {
        let opts = SplitOptions { max_chars: 40, first_clause_words: 0, first_max_words: 0 };
        let text = "This sentence goes on for a while, and then some more, and it keeps going until the end.";
        let out = SentenceSplitter::split_all(text, opts.clone());
        assert_eq!(
            out,
            vec!["This sentence goes on for a while,", "and then some more,", "and it keeps going until the end."]
        );
        let words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";
        let out = SentenceSplitter::split_all(words, opts);
        assert!(out.iter().all(|s| s.len() <= 40), "{out:?}");
        assert_eq!(out.join(" "), words);
    }

    #[test]
    fn the_first_segment_ends_at_its_first_clause() {
        let opts = SplitOptions { max_chars: 220, first_clause_words: 3, first_max_words: 6 };
        let out = SentenceSplitter::split_all(
            "Well, the weather today, as you asked, is sunny. It is warm, too.",
            opts.clone(),
        );
        assert_eq!(out, vec!["Well, the weather today,", "as you asked, is sunny.", "It is warm, too."]);
        // Over the word limit with a clause boundary before it: cut there, comma kept.
        let out = SentenceSplitter::split_all("Sorry, I could not reach the language model now.", opts.clone());
        assert_eq!(out, vec!["Sorry,", "I could not reach the language model now."]);
        assert_eq!(speakable("Sorry,"), "Sorry,");
        let out = SentenceSplitter::split_all("The quick brown fox jumps over the lazy dog today. Yes.", opts);
        // No clause: before the phrase that starts within the limit.
        assert_eq!(out, vec!["The quick brown fox jumps", "over the lazy dog today.", "Yes."]);
    }

    #[test]
    fn a_long_first_sentence_is_cut_at_a_phrase_boundary() {
        let opts = SplitOptions { max_chars: 220, first_clause_words: 3, first_max_words: 5 };
        let cases: &[(&str, &[&str])] = &[
            (
                "Tomorrow the weather will be sunny with a light breeze.",
                &["Tomorrow the weather", "will be sunny with a light breeze."],
            ),
            (
                "I would take a long walk in the park, then have lunch.",
                &["I would take", "a long walk in the park, then have lunch."],
            ),
            ("It is going to rain later in the afternoon.", &["It is going", "to rain later in the afternoon."]),
            ("My favourite colour has always been green.", &["My favourite colour", "has always been green."]),
            ("Rust programs compile into fast native code.", &["Rust programs compile", "into fast native code."]),
            // No phrase start: after the last word that does not lean on the next one.
            (
                "Paris is the capital of France and its largest city.",
                &["Paris is the capital", "of France and its largest city."],
            ),
            (
                "Supercalifragilistic expialidocious words keep coming along here.",
                &["Supercalifragilistic expialidocious words keep coming", "along here."],
            ),
            // A sentence that fits, or a clause that ends first, is not cut further.
            ("The weather today is sunny. It is warm.", &["The weather today is sunny.", "It is warm."]),
            (
                "Well, the weather today, as you asked, is sunny.",
                &["Well, the weather today,", "as you asked, is sunny."],
            ),
            (
                "Sorry, I could not reach the language model now.",
                &["Sorry,", "I could not reach the language model now."],
            ),
            // Only the first segment is cut early.
            (
                "Yes. The big brown dog ran quickly into the old barn.",
                &["Yes.", "The big brown dog ran quickly into the old barn."],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(SentenceSplitter::split_all(text, opts.clone()), *want, "whole: {text:?}");
            let pieces: Vec<String> = text.chars().collect::<Vec<_>>().chunks(4).map(|c| c.iter().collect()).collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(split(&refs, opts.clone()), *want, "streamed: {text:?}");
        }
    }

    #[test]
    fn speakable_table() {
        let cases = [
            ("Dinner is at 8pm.", "Dinner is at 8 pm."),
            ("Meet me at 8:30 PM tomorrow", "Meet me at 8:30 pm tomorrow"),
            ("Help;", "Help;"),
            ("Look at the top: it is red.", "Look at the top: it is red."),
            ("Go to example.com now.", "Go to example dot com now."),
            ("I like C++ and C#.", "I like C plus plus and C sharp."),
            ("It costs $29.99.", "It costs 29 dollars and 99 cents."),
            ("Only $1 or $5, or £3.50.", "Only 1 dollar or 5 dollars, or 3 pounds and 50 pence."),
            ("They raised $3.5 million.", "They raised 3.5 million dollars."),
            ("Version 3.5 is out.", "Version 3.5 is out."),
            ("Fruit, e.g. apples.", "Fruit, for example apples."),
            ("Ask Dr. Smith.", "Ask Doctor Smith."),
            ("See https://www.rust-lang.org/learn?x=1 for more.", "See rust lang dot org slash learn for more."),
            ("Write to jane.doe@mail.example.com today.", "Write to jane dot doe at mail dot example dot com today."),
            ("This is **bold** and *italic* and __strong__.", "This is bold and italic and strong."),
            ("Run `ls` first.", "Run ls first."),
            ("Like this: ```rust\nfn main() {}\n``` done.", "Like this: done."),
            ("- list items", "list items"),
            ("# Headers", "Headers"),
            ("Great job! 🎉👍", "Great job!"),
            ("It's 20°C and 50% humid.", "It's 20 degrees Celsius and 50 percent humid."),
            ("Tom & Jerry", "Tom and Jerry"),
            ("2 + 2 = 4", "2 plus 2 equals 4"),
            ("Read [the docs](https://docs.rs) first.", "Read the docs first."),
            ("Apples, pears, etc.", "Apples, pears, et cetera."),
            ("Wait — really?", "Wait, really?"),
            ("snake_case names", "snake_case names"),
            ("| Mon | sunny |", "Mon, sunny"),
            ("Mr. and Mrs. Smith", "Mister and Missus Smith"),
            ("It took 5 ms. Then", "It took 5 ms. Then"),
            ("at 10 a.m. sharp", "at 10 am sharp"),
            ("Node.js, e.g., is fast.", "Node dot js, for example, is fast."),
            ("5 - 3 = 2", "5 minus 3 equals 2"),
        ];
        for (input, want) in cases {
            assert_eq!(speakable(input), want, "input {input:?}");
        }
    }

    #[test]
    fn display_text_keeps_words_and_symbols() {
        assert_eq!(display_text("**Visit** example.com for $29.99! 😀"), "Visit example.com for $29.99!");
        assert_eq!(display_text("```\ncode\n```"), "");
    }

    #[test]
    fn clauses_keep_their_punctuation() {
        assert_eq!(
            clauses("Hello, world. How are you?"),
            vec![
                ("Hello".to_string(), Some(',')),
                ("world".to_string(), Some('.')),
                ("How are you".to_string(), Some('?')),
            ]
        );
        assert_eq!(
            clauses("Help; top: it costs 3.5 dollars"),
            vec![
                ("Help".to_string(), Some(';')),
                ("top".to_string(), Some(':')),
                ("it costs 3.5 dollars".to_string(), None),
            ]
        );
        assert_eq!(clauses("Ask Dr. Smith!"), vec![("Ask Dr. Smith".to_string(), Some('!'))]);
    }
}
