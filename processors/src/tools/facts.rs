//! `remember`, `recall`, `forget`: facts the user asks the assistant to keep ("remember that my
//! sister's name is Ana").
//!
//! A small JSON file of its own rather than the stateless memory store: that store keeps
//! exchanges (a user turn and its reply, per speaker) in an LMDB environment the
//! `stateless_memory` processor opens, and LMDB refuses a second open of one environment in the
//! same process (`MemoryError::AlreadyOpen`); a fact is a different thing from an exchange, and a
//! few hundred facts need no index.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Tool, ToolError, ToolSpec, args_object, text_arg, write_atomically};

/// Facts returned by one `recall` at most (a small model's context is short).
const RECALL_LIMIT: usize = 10;
/// Longest fact kept.
const MAX_FACT_CHARS: usize = 1000;

/// Why the facts file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// Reading it failed.
    #[error("cannot read the remembered facts file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a facts file.
    #[error("the remembered facts file {path} is damaged ({detail}); move it aside to start with no facts")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fact {
    id: u64,
    text: String,
    /// When it was remembered, milliseconds since the Unix epoch.
    at_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    next_id: u64,
    facts: Vec<Fact>,
}

/// The remembered facts of one assistant.
pub struct Facts {
    path: PathBuf,
    state: tokio::sync::Mutex<Stored>,
}

impl Facts {
    /// Reads the file at `path` (none yet: nothing remembered).
    pub fn open(path: &Path) -> Result<Arc<Self>, FactsError> {
        let stored = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| FactsError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(source) => return Err(FactsError::Read { path: path.to_path_buf(), source }),
        };
        Ok(Arc::new(Self { path: path.to_path_buf(), state: tokio::sync::Mutex::new(stored) }))
    }

    async fn save(&self, state: &Stored) -> Result<(), ToolError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| ToolError::Failed(e.to_string()))?;
        write_atomically(&self.path, bytes).await.map_err(|e| ToolError::Failed(format!("could not save: {e}")))
    }
}

/// Lower-case words of at least 3 letters, minus the commonest ones: what a query and a fact
/// must share.
fn words(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "the", "and", "for", "that", "this", "with", "what", "who", "whom", "which", "was", "were", "are", "is", "has",
        "have", "had", "you", "your", "about", "from", "did", "does", "remember", "know", "tell",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .map(|w| w.to_lowercase())
        .filter(|w| w.chars().count() >= 3 && !STOP.contains(&w.as_str()))
        .collect()
}

/// The facts that share the most words with `query`, best first (all of them, newest first,
/// when the query is empty).
fn matching<'a>(facts: &'a [Fact], query: &str) -> Vec<&'a Fact> {
    let q = words(query);
    if q.is_empty() {
        return facts.iter().rev().collect();
    }
    let mut scored: Vec<(usize, &Fact)> = facts
        .iter()
        .map(|f| {
            let w = words(&f.text);
            // A query word matches a fact word that starts with it ("sister" finds "sister's").
            (q.iter().filter(|q| w.iter().any(|w| w.starts_with(q.as_str()))).count(), f)
        })
        .filter(|(score, _)| *score > 0)
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.id.cmp(&a.1.id)));
    scored.into_iter().map(|(_, f)| f).collect()
}

/// The three memory tools, sharing one store.
pub fn tools(facts: &Arc<Facts>) -> Vec<Arc<dyn Tool>> {
    vec![Arc::new(Remember(facts.clone())), Arc::new(Recall(facts.clone())), Arc::new(Forget(facts.clone()))]
}

struct Remember(Arc<Facts>);

#[async_trait]
impl Tool for Remember {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "remember".into(),
            // No example fact: small models store the example instead of what the user said.
            description: "Store a fact the user wants kept for later conversations.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"fact": {"type": "string", "description": "The fact, as a full sentence"}},
                "required": ["fact"]
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let fact = text_arg(&args, &["fact", "text", "content", "memory", "information"])
            .ok_or_else(|| ToolError::BadArguments("`fact` is missing".into()))?;
        if fact.chars().count() > MAX_FACT_CHARS {
            return Err(ToolError::BadArguments(format!("a fact is at most {MAX_FACT_CHARS} characters")));
        }
        let mut state = self.0.state.lock().await;
        if let Some(same) = state.facts.iter().find(|f| f.text.eq_ignore_ascii_case(&fact)) {
            return Ok(format!("Already remembered (fact {}).", same.id));
        }
        state.next_id += 1;
        let id = state.next_id;
        state.facts.push(Fact { id, text: fact, at_ms: chrono::Utc::now().timestamp_millis() });
        if let Err(e) = self.0.save(&state).await {
            state.facts.retain(|f| f.id != id);
            return Err(e);
        }
        Ok(format!("Remembered (fact {id})."))
    }
}

struct Recall(Arc<Facts>);

#[async_trait]
impl Tool for Recall {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "recall".into(),
            description: "Look up facts stored with remember. Give words of what you look for, or nothing to \
                          list the latest facts."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "Words to look for"}}
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let query = text_arg(&args, &["query", "text", "fact", "topic", "about"]).unwrap_or_default();
        let state = self.0.state.lock().await;
        let found = matching(&state.facts, &query);
        if found.is_empty() {
            return Ok(if state.facts.is_empty() {
                "Nothing has been remembered yet.".into()
            } else {
                format!("No remembered fact matches \"{query}\".")
            });
        }
        Ok(found.iter().take(RECALL_LIMIT).map(|f| format!("fact {}: {}", f.id, f.text)).collect::<Vec<_>>().join("\n"))
    }
}

struct Forget(Arc<Facts>);

#[async_trait]
impl Tool for Forget {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "forget".into(),
            description: "Delete a remembered fact, by its id (from recall) or by words of it.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "description": "The fact's id"},
                    "query": {"type": "string", "description": "Words of the fact, when the id is not known"}
                }
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let id = match args.get("id") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let query = text_arg(&args, &["query", "text", "fact"]);
        let mut state = self.0.state.lock().await;
        let ids: Vec<u64> = match (id, &query) {
            (Some(id), _) => state.facts.iter().filter(|f| f.id == id).map(|f| f.id).collect(),
            // Only the best match: "forget my sister's name" must not wipe every fact about family.
            (None, Some(q)) => matching(&state.facts, q).first().map(|f| f.id).into_iter().collect(),
            (None, None) => {
                return Err(ToolError::BadArguments("give the fact's `id` or words of it in `query`".into()));
            }
        };
        if ids.is_empty() {
            return Err(ToolError::Failed("no remembered fact matches; recall lists them".into()));
        }
        let removed: Vec<Fact> = state.facts.iter().filter(|f| ids.contains(&f.id)).cloned().collect();
        state.facts.retain(|f| !ids.contains(&f.id));
        self.0.save(&state).await?;
        Ok(format!("Forgot: {}.", removed.iter().map(|f| f.text.as_str()).collect::<Vec<_>>().join("; ")))
    }
}
