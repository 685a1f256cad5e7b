//! `slowcat memory list|search|show|forget|export`: see and delete what is remembered.
//!
//! Each command opens the database, does one thing and closes it; it works while the assistant
//! runs (LMDB allows a second process), and never creates a database.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Exchange, MemoryDb, MemoryError, StatelessMemorySettings};
use crate::processor::BuildContext;
use crate::registry::Settings;

/// Why a `slowcat memory` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file is not TOML.
    #[error("the config is not valid TOML")]
    Toml(#[source] toml::de::Error),
    /// A memory processor's `path` is not a string.
    #[error("processors.{0}.path must be a string (a directory)")]
    PathNotString(String),
    /// The database cannot be opened or read.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// `show` was given an id the speaker does not have.
    #[error("speaker {speaker:?} has no exchange #{id}; `slowcat memory list --speaker {speaker}` shows the ids")]
    NoSuchExchange {
        /// Whose.
        speaker: String,
        /// The id asked for.
        id: u64,
    },
    /// `forget` was given both an id and `--all`.
    #[error("give either an exchange id or --all, not both")]
    IdAndAll,
    /// `forget` was given neither an id nor `--all`.
    #[error("give the id of the exchange to forget, or --all to forget everything remembered for {0:?}")]
    NothingToForget(String),
    /// `forget` was given an id the speaker does not have.
    #[error("speaker {speaker:?} has no exchange #{id}; nothing was deleted")]
    NothingForgotten {
        /// Whose.
        speaker: String,
        /// The id asked for.
        id: u64,
    },
    /// Reading or writing an export failed.
    #[error("exporting the exchanges of {speaker:?}")]
    Export {
        /// Whose.
        speaker: String,
        /// The reason.
        #[source]
        source: MemoryError,
    },
    /// The output cannot be written.
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
}

/// A `slowcat memory` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryCommand {
    /// The speakers memory knows, with how many exchanges each.
    Speakers,
    /// A speaker's newest exchanges, newest first.
    List {
        /// Whose.
        speaker: String,
        /// How many.
        limit: usize,
    },
    /// A speaker's exchanges most relevant to a query (BM25, as injection ranks them).
    Search {
        /// Whose.
        speaker: String,
        /// The words to look for.
        query: String,
        /// How many.
        limit: usize,
    },
    /// One exchange in full.
    Show {
        /// Whose.
        speaker: String,
        /// Its id (as `list` shows it).
        id: u64,
    },
    /// Deletes one exchange, or with `all` every exchange of the speaker.
    Forget {
        /// Whose.
        speaker: String,
        /// The exchange to delete.
        id: Option<u64>,
        /// Delete everything remembered for the speaker (the confirmation that this is meant).
        all: bool,
    },
    /// Every exchange as JSON lines, oldest first; all speakers when `speaker` is `None`.
    Export {
        /// Whose, or everyone's.
        speaker: Option<String>,
    },
}

#[derive(Serialize)]
struct ExportLine<'a> {
    speaker: &'a str,
    id: u64,
    turn: u64,
    at: String,
    at_ms: u64,
    interrupted: bool,
    user: &'a str,
    assistant: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tools: &'a str,
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A Unix time in milliseconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

fn snippet(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

fn summary(out: &mut dyn Write, ex: &Exchange, score: Option<f32>) -> std::io::Result<()> {
    let mut head = format!("#{}  {}  turn {}", ex.id, utc(ex.at_ms), ex.turn);
    if ex.interrupted {
        head.push_str("  (interrupted)");
    }
    if let Some(s) = score {
        head.push_str(&format!("  score {s:.2}"));
    }
    writeln!(out, "{head}")?;
    writeln!(out, "    user:      {}", snippet(&ex.user, 100))?;
    writeln!(out, "    assistant: {}", snippet(&ex.assistant, 100))?;
    if !ex.tools.is_empty() {
        writeln!(out, "    tools:     {}", snippet(&ex.tools, 100))?;
    }
    Ok(())
}

/// The database directories of the `stateless_memory` processors in a config file's text, by
/// processor id, resolved as the processor resolves them (`ctx` is the config's build context).
pub fn db_paths_in_config(source: &str, ctx: &BuildContext) -> Result<Vec<(String, PathBuf)>, CliError> {
    let doc: toml::Table = toml::from_str(source).map_err(CliError::Toml)?;
    let mut out = Vec::new();
    let Some(processors) = doc.get("processors").and_then(toml::Value::as_table) else { return Ok(out) };
    for (id, table) in processors {
        if table.get("type").and_then(toml::Value::as_str) != Some(StatelessMemorySettings::TYPE) {
            continue;
        }
        let default = StatelessMemorySettings::default().path;
        let path = match table.get("path") {
            None => default,
            Some(v) => PathBuf::from(v.as_str().ok_or_else(|| CliError::PathNotString(id.clone()))?),
        };
        out.push((id.clone(), ctx.data_path(path)));
    }
    Ok(out)
}

/// Runs one command on the database in `db_path`, printing to `out`.
pub fn run(db_path: &Path, command: MemoryCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let db = MemoryDb::open_existing(db_path)?;
    match command {
        MemoryCommand::Speakers => {
            let speakers = db.speakers()?;
            if speakers.is_empty() {
                writeln!(out, "nothing remembered yet in {}", db_path.display())?;
            }
            for (name, meta) in speakers {
                let facts = db.facts(&name)?.len();
                writeln!(out, "{name}: {} exchanges, {facts} facts", meta.count)?;
            }
        }
        MemoryCommand::List { speaker, limit } => {
            let recent = db.recent(&speaker, limit)?;
            let facts = db.facts(&speaker)?;
            if recent.is_empty() && facts.is_empty() {
                writeln!(out, "nothing remembered for speaker {speaker:?}")?;
            }
            if !facts.is_empty() {
                writeln!(out, "facts (kept with `remember`, injected into every request):")?;
                for f in &facts {
                    writeln!(out, "  fact {}  {}  {}", f.id, utc(f.at_ms), f.text)?;
                }
            }
            for ex in &recent {
                summary(out, ex, None)?;
            }
        }
        MemoryCommand::Search { speaker, query, limit } => {
            let hits = db.search(&speaker, &query, limit)?;
            if hits.is_empty() {
                writeln!(out, "no exchange of speaker {speaker:?} matches {query:?}")?;
            }
            for (ex, score) in &hits {
                summary(out, ex, Some(*score))?;
            }
        }
        MemoryCommand::Show { speaker, id } => {
            let Some(ex) = db.get(&speaker, id)? else {
                return Err(CliError::NoSuchExchange { speaker, id });
            };
            writeln!(
                out,
                "#{}  {}  turn {}{}",
                ex.id,
                utc(ex.at_ms),
                ex.turn,
                if ex.interrupted { "  (interrupted)" } else { "" }
            )?;
            writeln!(out, "user: {}", ex.user)?;
            writeln!(out, "assistant: {}", ex.assistant)?;
            if !ex.tools.is_empty() {
                writeln!(out, "tools: {}", ex.tools)?;
            }
        }
        MemoryCommand::Forget { speaker, id, all } => match (id, all) {
            (Some(_), true) => return Err(CliError::IdAndAll),
            (None, false) => return Err(CliError::NothingToForget(speaker)),
            (Some(id), false) => {
                if !db.forget(&speaker, id)? {
                    return Err(CliError::NothingForgotten { speaker, id });
                }
                writeln!(out, "forgot exchange #{id} of {speaker:?}")?;
            }
            (None, true) => {
                let n = db.forget_all(&speaker)?;
                writeln!(out, "forgot all {n} exchanges and every fact of {speaker:?}")?;
            }
        },
        MemoryCommand::Export { speaker } => {
            let speakers = match speaker {
                Some(s) => vec![s],
                None => db.speakers()?.into_iter().map(|(name, _)| name).collect(),
            };
            for name in speakers {
                let written = db.for_each(&name, |ex| {
                    let line = ExportLine {
                        speaker: &name,
                        id: ex.id,
                        turn: ex.turn,
                        at: utc(ex.at_ms),
                        at_ms: ex.at_ms,
                        interrupted: ex.interrupted,
                        user: &ex.user,
                        assistant: &ex.assistant,
                        tools: &ex.tools,
                    };
                    serde_json::to_writer(&mut *out, &line)?;
                    writeln!(out)
                });
                match written {
                    // The reader (`| head`) has seen enough.
                    Err(MemoryError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    other => other.map_err(|source| CliError::Export { speaker: name.clone(), source })?,
                };
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_right_around_leap_years() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_709_251_199_000), "2024-02-29T23:59:59Z");
        assert_eq!(utc(4_102_444_800_000), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn database_paths_come_from_the_config_as_the_processor_resolves_them() {
        let ctx = BuildContext::for_dir("/conf");
        let source = r#"
            pipeline = ["a", "m"]
            [processors.a]
            type = "passthrough"
            [processors.m]
            type = "stateless_memory"
            [processors.other]
            type = "stateless_memory"
            path = "/elsewhere/mem"
        "#;
        let paths = db_paths_in_config(source, &ctx).unwrap();
        assert_eq!(
            paths,
            [("m".to_string(), PathBuf::from("/conf/data/memory")), ("other".into(), PathBuf::from("/elsewhere/mem"))]
        );
    }

    #[test]
    fn snippets_cut_at_characters() {
        assert_eq!(snippet("héllo wörld", 6), "héllo…");
        assert_eq!(snippet(" short ", 10), "short");
    }
}
