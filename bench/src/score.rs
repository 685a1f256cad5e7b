//! Scoring a transcript against what was said, for benchmarks and tests of speech to text.

/// Number words and their digits: "ten" and "10" are the same answer.
const NUMBERS: [(&str, &str); 28] = [
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("seventy", "70"),
    ("eighty", "80"),
    ("ninety", "90"),
];

/// A spelled number word's value: "seven" 7, "twenty" 20.
fn number_value(w: &str) -> Option<u64> {
    NUMBERS.iter().find(|(word, _)| *word == w).and_then(|(_, digits)| digits.parse().ok())
}

/// The words of `text` for comparison: lower case, without punctuation (a hyphen or a comma
/// separates words, an apostrophe does not), "mr" spelled out, and numbers as digits, one token
/// per digit, so "two nine three four zero", "29340" and "2-9-3-4-0" read the same, and so do
/// "twenty one" and "21" or "three hundred" and "300". Both sides of a comparison go through
/// it: nothing here knows what the set's recordings say.
pub fn words(text: &str) -> Vec<String> {
    let spaced: String =
        text.chars().map(|c| if c.is_alphanumeric() || c == '\'' || c == '’' { c } else { ' ' }).collect();
    let mut out = Vec::new();
    // A number being spelled out in words ("twenty" waiting for its "one").
    let mut spelled: Option<u64> = None;
    let digits = |n: u64, out: &mut Vec<String>| out.extend(n.to_string().chars().map(String::from));
    for w in spaced.split_whitespace() {
        let w: String = w.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect();
        let value = number_value(&w);
        spelled = match (spelled, value, w.as_str()) {
            // "twenty one", "two hundred five": a unit or tens after a round number adds to it.
            (Some(n), Some(v), _)
                if (n % 10 == 0 && n % 100 >= 20 && v < 10 && v > 0) || (n % 100 == 0 && n >= 100 && v < 100) =>
            {
                Some(n + v)
            }
            (Some(n), None, "hundred") if n < 100 => Some(n * 100),
            (Some(n), None, "thousand") if n < 1000 => Some(n * 1000),
            (pending, Some(v), _) => {
                if let Some(n) = pending {
                    digits(n, &mut out);
                }
                Some(v)
            }
            (pending, None, _) => {
                if let Some(n) = pending {
                    digits(n, &mut out);
                }
                let w = if w == "mr" { "mister".to_string() } else { w };
                if w.chars().all(|c| c.is_ascii_digit()) {
                    out.extend(w.chars().map(String::from));
                } else if !w.is_empty() {
                    out.push(w);
                }
                None
            }
        };
    }
    if let Some(n) = spelled {
        digits(n, &mut out);
    }
    out
}

/// Word errors (substitutions, insertions and deletions) in `hyp` against `reference`, and the
/// number of reference words, both counted on [`words`].
pub fn word_errors(reference: &str, hyp: &str) -> (usize, usize) {
    let r = words(reference);
    let h = words(hyp);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}
