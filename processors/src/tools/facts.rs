//! `remember`, `recall`, `forget`: facts the user asks the assistant to keep ("remember that my
//! sister's name is Ana"), per speaker, in the stateless memory database (its `facts`; see
//! [`crate::memory::store`]). The `stateless_memory` processor injects a speaker's facts into each
//! of their requests, so the model knows them without calling `recall`; `recall` finds the others
//! when there are more than a request lists.
//!
//! The database is opened on the first call, through [`MemoryDb::shared`]: by then the memory
//! processor (built at the same time, on another thread) has opened it with its settings, and
//! both use that one handle (LMDB must not open one environment twice in a process).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::OnceCell;

use super::{Tool, ToolError, ToolSpec, args_object, text_arg};
use crate::memory::{Fact, MemoryDb, MemoryError, Remembered, rank_facts, store};

/// Facts returned by one `recall` at most (a small model's context is short).
const RECALL_LIMIT: usize = 10;

/// The remembered facts of one assistant: the memory database in `path`, opened when first used.
pub struct Facts {
    path: PathBuf,
    db: OnceCell<Arc<MemoryDb>>,
}

impl Facts {
    /// Facts kept in the memory database in directory `path` (opened, or created, at first use).
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self { path, db: OnceCell::new() })
    }

    /// Runs `f` on the database on a blocking thread (LMDB calls block).
    async fn with_db<R: Send + 'static>(
        &self,
        f: impl FnOnce(&MemoryDb) -> Result<R, MemoryError> + Send + 'static,
    ) -> Result<R, ToolError> {
        let failed = |e: MemoryError| ToolError::Failed(format!("the memory database cannot be used: {e}"));
        let db = self
            .db
            .get_or_try_init(|| {
                let path = self.path.clone();
                async move {
                    tokio::task::spawn_blocking(move || MemoryDb::shared(&path, None))
                        .await
                        .map_err(|e| ToolError::Failed(e.to_string()))?
                        .map_err(failed)
                }
            })
            .await?
            .clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|e| ToolError::Failed(e.to_string()))?.map_err(failed)
    }
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
        self.call_for(crate::frame::DEFAULT_SPEAKER, args).await
    }

    async fn call_for(&self, speaker: &str, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let fact = text_arg(&args, &["fact", "text", "content", "memory", "information"])
            .ok_or_else(|| ToolError::BadArguments("`fact` is missing".into()))?;
        if fact.len() > store::MAX_FACT_BYTES {
            return Err(ToolError::BadArguments(format!("a fact is at most {} bytes", store::MAX_FACT_BYTES)));
        }
        let speaker = speaker.to_string();
        let at_ms = crate::memory::unix_now_ms();
        match self.0.with_db(move |db| db.remember_fact(&speaker, &fact, at_ms)).await? {
            Remembered::New(id) => Ok(format!("Remembered (fact {id}).")),
            Remembered::Already(id) => Ok(format!("Already remembered (fact {id}).")),
            Remembered::Full => Err(ToolError::Failed(format!(
                "{} facts are kept already; forget one first (recall lists them)",
                store::MAX_FACTS
            ))),
        }
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
        self.call_for(crate::frame::DEFAULT_SPEAKER, args).await
    }

    async fn call_for(&self, speaker: &str, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let query = text_arg(&args, &["query", "text", "fact", "topic", "about"]).unwrap_or_default();
        let speaker = speaker.to_string();
        let facts = self.0.with_db(move |db| db.facts(&speaker)).await?;
        let found = rank_facts(&facts, &query);
        if found.is_empty() {
            return Ok(if facts.is_empty() {
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
        self.call_for(crate::frame::DEFAULT_SPEAKER, args).await
    }

    async fn call_for(&self, speaker: &str, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let id = match args.get("id") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let query = text_arg(&args, &["query", "text", "fact"]);
        if id.is_none() && query.is_none() {
            return Err(ToolError::BadArguments("give the fact's `id` or words of it in `query`".into()));
        }
        let speaker = speaker.to_string();
        let removed: Vec<Fact> = self
            .0
            .with_db(move |db| {
                let ids: Vec<u64> = match (id, &query) {
                    (Some(id), _) => vec![id],
                    // Only the best match: "forget my sister's name" must not wipe every fact about family.
                    (None, Some(q)) => rank_facts(&db.facts(&speaker)?, q).first().map(|f| f.id).into_iter().collect(),
                    (None, None) => Vec::new(),
                };
                db.forget_facts(&speaker, &ids)
            })
            .await?;
        if removed.is_empty() {
            return Err(ToolError::Failed("no remembered fact matches; recall lists them".into()));
        }
        Ok(format!("Forgot: {}.", removed.iter().map(|f| f.text.as_str()).collect::<Vec<_>>().join("; ")))
    }
}
