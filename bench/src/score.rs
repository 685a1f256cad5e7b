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

/// What one heard turn is compared with, once the turns of a run are lined up with the
/// utterances played ([`align_turns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paired {
    /// What was said in it (two utterances joined when one turn heard both), and the word
    /// errors against it.
    Said { said: String, errors: usize },
    /// The second turn of an utterance heard as two: counted with the turn before.
    SplitFrom,
    /// Nobody said it (every word is an error).
    Extra { errors: usize },
}

/// The turns of a run lined up with the utterances played.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alignment {
    /// One per heard turn, in order.
    pub turns: Vec<Paired>,
    /// Utterances (indices into `said`) heard as no turn; their words count as errors.
    pub lost: Vec<usize>,
    /// Word errors in all, and the words of the utterances played.
    pub errors: usize,
    pub words: usize,
}

/// Lines up the turns heard in one run (`heard`, in order) with the utterances said (`said`,
/// in the order played) at the fewest word errors, as a word error rate lines up words: a turn
/// is one utterance, two utterances heard as one turn, one half of an utterance heard as two
/// turns, or said by nobody; an utterance can be heard as no turn. So one lost or split
/// recording costs its own words, not the pairs of every turn after it. Utterances after the
/// last one lined up count as not played (a run that stopped after its turns).
pub fn align_turns(said: &[&str], heard: &[&str]) -> Alignment {
    let (ns, nh) = (said.len(), heard.len());
    let said_len: Vec<usize> = said.iter().map(|t| words(t).len()).collect();
    let heard_len: Vec<usize> = heard.iter().map(|t| words(t).len()).collect();
    const INF: usize = usize::MAX / 4;
    // cost[i][j]: fewest errors lining up heard[..i] with said[..j]; step[i][j]: the last move.
    let mut cost = vec![vec![INF; ns + 1]; nh + 1];
    let mut step = vec![vec![Move::Start; ns + 1]; nh + 1];
    cost[0][0] = 0;
    for i in 0..=nh {
        for j in 0..=ns {
            let here = cost[i][j];
            if here >= INF {
                continue;
            }
            // Errors count double, and joining two utterances or two turns one more: of two
            // line-ups with as many errors, the one that pairs turns one to one wins.
            let mut relax = |i2: usize, j2: usize, errors: usize, m: Move| {
                let c = 2 * errors + usize::from(matches!(m, Move::Merged | Move::Split));
                if here + c < cost[i2][j2] {
                    cost[i2][j2] = here + c;
                    step[i2][j2] = m;
                }
            };
            if j < ns {
                relax(i, j + 1, said_len[j], Move::Lost);
            }
            if i < nh {
                relax(i + 1, j, heard_len[i], Move::Extra);
            }
            if i < nh && j < ns {
                relax(i + 1, j + 1, word_errors(said[j], heard[i]).0, Move::Pair);
            }
            if i < nh && j + 1 < ns {
                let both = format!("{} {}", said[j], said[j + 1]);
                relax(i + 1, j + 2, word_errors(&both, heard[i]).0, Move::Merged);
            }
            if i + 1 < nh && j < ns {
                let both = format!("{} {}", heard[i], heard[i + 1]);
                relax(i + 2, j + 1, word_errors(said[j], &both).0, Move::Split);
            }
        }
    }
    // Unplayed utterances at the end are free: end where the heard turns end, at any utterance.
    let mut j = (0..=ns).min_by_key(|&j| (cost[nh][j], std::cmp::Reverse(j))).unwrap_or(0);
    let played = j;
    let mut i = nh;
    let mut turns = Vec::new();
    let mut lost = Vec::new();
    while i > 0 || j > 0 {
        match step[i][j] {
            Move::Start => break,
            Move::Lost => {
                j -= 1;
                lost.push(j);
            }
            Move::Extra => {
                i -= 1;
                turns.push(Paired::Extra { errors: heard_len[i] });
            }
            Move::Pair => {
                (i, j) = (i - 1, j - 1);
                turns.push(Paired::Said { said: said[j].to_string(), errors: word_errors(said[j], heard[i]).0 });
            }
            Move::Merged => {
                (i, j) = (i - 1, j - 2);
                let both = format!("{} {}", said[j], said[j + 1]);
                let errors = word_errors(&both, heard[i]).0;
                turns.push(Paired::Said { said: both, errors });
            }
            Move::Split => {
                (i, j) = (i - 2, j - 1);
                let both = format!("{} {}", heard[i], heard[i + 1]);
                turns.push(Paired::SplitFrom);
                turns.push(Paired::Said { said: said[j].to_string(), errors: word_errors(said[j], &both).0 });
            }
        }
    }
    turns.reverse();
    lost.reverse();
    let errors = turns
        .iter()
        .map(|t| match t {
            Paired::Said { errors, .. } | Paired::Extra { errors } => *errors,
            Paired::SplitFrom => 0,
        })
        .sum::<usize>()
        + lost.iter().map(|&j| said_len[j]).sum::<usize>();
    let words = said_len[..played].iter().sum();
    Alignment { turns, lost, errors, words }
}

#[derive(Debug, Clone, Copy)]
enum Move {
    Start,
    Lost,
    Extra,
    Pair,
    Merged,
    Split,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_utterance_costs_its_own_words_only() {
        let said = ["go forward", "ten meters", "hello", "this is Diane in New Jersey"];
        let heard = ["go forward.", "hello?", "This is Diane in New Jersey."];
        let a = align_turns(&said, &heard);
        assert_eq!(a.lost, vec![1]);
        assert_eq!((a.errors, a.words), (3, 12));
        assert!(a.turns.iter().all(|t| matches!(t, Paired::Said { errors: 0, .. })), "{:?}", a.turns);
    }

    #[test]
    fn split_and_merged_utterances_and_unplayed_ones_line_up() {
        let said = ["go forward ten meters", "seven of clubs", "five five", "hello", "not played"];
        let heard = ["go forward", "ten meters", "seven of clubs five five", "hello", "uh"];
        let a = align_turns(&said, &heard);
        assert_eq!(a.turns[0], Paired::Said { said: said[0].into(), errors: 0 });
        assert_eq!(a.turns[1], Paired::SplitFrom);
        assert_eq!(a.turns[2], Paired::Said { said: "seven of clubs five five".into(), errors: 0 });
        assert_eq!(a.turns[4], Paired::Extra { errors: 1 });
        assert_eq!((a.errors, a.words, a.lost.len()), (1, 11, 0));
        // Heard in order, word for word: no errors, nothing lost.
        let b = align_turns(&said[..2], &["Go forward 10 meters.", "7 of clubs"]);
        assert_eq!((b.errors, b.words), (0, 8));
    }
}
