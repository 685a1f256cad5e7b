//! Reminders and timers: `set_reminder`, `list_reminders`, `cancel_reminder`.
//!
//! Kept in a small JSON file (rewritten whole through a rename on each change) so they survive a
//! restart. A clock task, started with the tool box, sends each due reminder's text on the
//! announcements channel, which the LLM processor speaks between turns. A reminder leaves the file
//! only after its announcement was handed over: a crash in between repeats it rather than losing it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use super::{Tool, ToolError, ToolSpec, args_object, text_arg, write_atomically};

/// Announcements waiting to be spoken; the clock waits when the LLM processor is this far behind.
const ANNOUNCEMENT_QUEUE: usize = 16;
/// The clock looks again at least this often, so a changed system clock (or a suspend) delays a
/// reminder by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Why the reminders file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemindersError {
    /// Reading it failed.
    #[error("cannot read the reminders file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a reminders file.
    #[error("the reminders file {path} is damaged ({detail}); move it aside to start without reminders")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reminder {
    id: u64,
    text: String,
    /// When it is due, in milliseconds since the Unix epoch (wall clock: it survives restarts).
    due_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    next_id: u64,
    reminders: Vec<Reminder>,
}

/// The reminders of one assistant and their clock.
pub struct Reminders {
    path: PathBuf,
    state: tokio::sync::Mutex<Stored>,
    changed: Notify,
    announce: mpsc::Sender<String>,
    clock: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Reminders {
    /// Reads the file at `path` (none yet: no reminders) and returns the receiver of announcements.
    pub fn open(path: &Path) -> Result<(Arc<Self>, mpsc::Receiver<String>), RemindersError> {
        let stored = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RemindersError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(source) => return Err(RemindersError::Read { path: path.to_path_buf(), source }),
        };
        let (tx, rx) = mpsc::channel(ANNOUNCEMENT_QUEUE);
        let reminders = Arc::new(Self {
            path: path.to_path_buf(),
            state: tokio::sync::Mutex::new(stored),
            changed: Notify::new(),
            announce: tx,
            clock: std::sync::Mutex::new(None),
        });
        Ok((reminders, rx))
    }

    /// Starts the clock (once); reminders already due are announced at once.
    pub fn start_clock(self: &Arc<Self>) {
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if clock.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let this = self.clone();
        *clock = Some(tokio::spawn(async move { this.run_clock().await }));
    }

    /// Stops the clock; reminders stay in the file for the next start.
    pub fn stop_clock(&self) {
        if let Some(handle) = self.clock.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
    }

    async fn run_clock(&self) {
        loop {
            let now = now_ms();
            let (due, next) = {
                let state = self.state.lock().await;
                let due: Vec<Reminder> = state.reminders.iter().filter(|r| r.due_ms <= now).cloned().collect();
                (due, state.reminders.iter().map(|r| r.due_ms).filter(|&d| d > now).min())
            };
            if !due.is_empty() {
                for reminder in &due {
                    tracing::info!(id = reminder.id, text = %reminder.text, "reminder due");
                    if self.announce.send(format!("Reminder: {}", reminder.text)).await.is_err() {
                        // Nobody listens any more (the tool box is gone): keep them for the next start.
                        return;
                    }
                }
                let mut state = self.state.lock().await;
                state.reminders.retain(|r| !due.iter().any(|d| d.id == r.id));
                if let Err(e) = self.save(&state).await {
                    tracing::warn!(error = %e, path = %self.path.display(), "could not save the reminders");
                }
                continue;
            }
            let wait = next.map_or(MAX_SLEEP, |d| Duration::from_millis((d - now).max(0) as u64).min(MAX_SLEEP));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.changed.notified() => {}
            }
        }
    }

    async fn save(&self, state: &Stored) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        write_atomically(&self.path, bytes).await
    }

    async fn add(&self, text: String, due: DateTime<Local>) -> Result<u64, ToolError> {
        let mut state = self.state.lock().await;
        state.next_id += 1;
        let id = state.next_id;
        state.reminders.push(Reminder { id, text, due_ms: due.timestamp_millis() });
        if let Err(e) = self.save(&state).await {
            state.reminders.retain(|r| r.id != id);
            return Err(ToolError::Failed(format!("could not save the reminder: {e}")));
        }
        drop(state);
        self.changed.notify_one();
        Ok(id)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// "in 5 minutes", "in 1 hour 3 minutes", "in 40 seconds".
fn in_words(ms: i64) -> String {
    let secs = (ms.max(0) + 500) / 1000;
    let plural = |n: i64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    match secs {
        0..60 => format!("in {}", plural(secs, "second")),
        60..3600 => {
            let (m, s) = (secs / 60, secs % 60);
            if s == 0 || m >= 10 {
                format!("in {}", plural((secs + 30) / 60, "minute"))
            } else {
                format!("in {} {}", plural(m, "minute"), plural(s, "second"))
            }
        }
        _ => {
            let (h, m) = (secs / 3600, (secs % 3600 + 30) / 60);
            if m == 0 {
                format!("in {}", plural(h, "hour"))
            } else {
                format!("in {} {}", plural(h, "hour"), plural(m, "minute"))
            }
        }
    }
}

fn describe(r: &Reminder, now: i64) -> String {
    let due =
        Local.timestamp_millis_opt(r.due_ms).single().map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default();
    format!("reminder {} at {due} ({}): {}", r.id, in_words(r.due_ms - now), r.text)
}

/// A number argument given as a number or as text ("5").
fn number_arg(args: &serde_json::Map<String, serde_json::Value>, names: &[&str]) -> Result<Option<f64>, ToolError> {
    for name in names {
        match args.get(*name) {
            Some(serde_json::Value::Number(n)) => return Ok(n.as_f64()),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                return s
                    .trim()
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| ToolError::BadArguments(format!("`{name}` must be a number, got \"{s}\"")));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The delay a phrase such as "in 5 minutes", "10 seconds", "1 hour 30 minutes", "half an hour"
/// or "five minutes" gives, in seconds.
fn parse_delay(text: &str) -> Option<f64> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(
            r"(\d+(?:\.\d+)?|an?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|forty-five|fifty|sixty|ninety)\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
        )
        .expect("a valid regex")
    });
    let text = text.to_lowercase();
    if text.contains("half an hour") || text.contains("half hour") {
        return Some(1800.0);
    }
    let mut total = 0.0;
    for c in re.captures_iter(&text) {
        let n = match &c[1] {
            "a" | "an" | "one" => 1.0,
            "two" => 2.0,
            "three" => 3.0,
            "four" => 4.0,
            "five" => 5.0,
            "six" => 6.0,
            "seven" => 7.0,
            "eight" => 8.0,
            "nine" => 9.0,
            "ten" => 10.0,
            "eleven" => 11.0,
            "twelve" => 12.0,
            "fifteen" => 15.0,
            "twenty" => 20.0,
            "thirty" => 30.0,
            "forty" => 40.0,
            "forty-five" => 45.0,
            "fifty" => 50.0,
            "sixty" => 60.0,
            "ninety" => 90.0,
            digits => digits.parse().ok()?,
        };
        let unit = match c[2].chars().next()? {
            's' => 1.0,
            'm' => 60.0,
            _ => 3600.0,
        };
        total += n * unit;
    }
    (total > 0.0).then_some(total)
}

/// The time a clock time means: "14:30", "6 pm", "6:30pm" (today, or tomorrow once passed),
/// "2026-01-05 09:00", or RFC 3339.
fn parse_at(at: &str, now: DateTime<Local>) -> Option<DateTime<Local>> {
    static CLOCK: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let at = at.trim();
    let at = at.strip_prefix("at ").unwrap_or(at).trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(at) {
        return Some(t.with_timezone(&Local));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(at, format) {
            return Local.from_local_datetime(&t).earliest();
        }
    }
    let clock = CLOCK.get_or_init(|| {
        regex::Regex::new(r"^(\d{1,2})(?:[:.h](\d{2}))?(?::(\d{2}))?\s*([ap]\.?m\.?)?$").expect("a valid regex")
    });
    let lower = at.to_lowercase();
    let c = clock.captures(&lower)?;
    let mut hour: u32 = c[1].parse().ok()?;
    let minute: u32 = c.get(2).map_or(Some(0), |m| m.as_str().parse().ok())?;
    let second: u32 = c.get(3).map_or(Some(0), |m| m.as_str().parse().ok())?;
    match c.get(4).map(|m| m.as_str().starts_with('p')) {
        Some(pm) if (1..=12).contains(&hour) => hour = hour % 12 + if pm { 12 } else { 0 },
        Some(_) => return None,
        // A bare "10" is no clock time: it is more likely a delay with its unit missing.
        None if c.get(2).is_none() => return None,
        None => {}
    }
    let time = NaiveTime::from_hms_opt(hour, minute, second)?;
    let today: NaiveDate = now.date_naive();
    let mut when = Local.from_local_datetime(&today.and_time(time)).earliest()?;
    if when <= now {
        when = Local.from_local_datetime(&today.succ_opt()?.and_time(time)).earliest()?;
    }
    Some(when)
}

/// The three reminder tools, sharing one store.
pub fn tools(reminders: &Arc<Reminders>) -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(SetReminder(reminders.clone())),
        Arc::new(ListReminders(reminders.clone())),
        Arc::new(CancelReminder(reminders.clone())),
    ]
}

struct SetReminder(Arc<Reminders>);

#[async_trait]
impl Tool for SetReminder {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "set_reminder".into(),
            description: "Set a reminder or timer: when it is due, the assistant says the text aloud.".into(),
            // One phrase for the time rather than numbers per unit: small models fill it far more
            // reliably. No concrete example times: small models copy examples into their calls.
            parameters: json!({
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "What to remind the user of"},
                    "when": {"type": "string", "description": "A delay such as \"in 5 minutes\" or \"in 30 seconds\", or a clock time such as \"at 14:30\""}
                },
                "required": ["text", "when"]
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let text = text_arg(&args, &["text", "message", "reminder", "what", "task", "note"])
            .unwrap_or_else(|| "your timer is done".to_string());
        let now = Local::now();
        // Numbers per unit are accepted too (models and people send them).
        let mut secs = number_arg(&args, &["in_seconds", "seconds", "delay_seconds"])?.unwrap_or(0.0)
            + 60.0 * number_arg(&args, &["in_minutes", "minutes", "delay_minutes"])?.unwrap_or(0.0)
            + 3600.0 * number_arg(&args, &["in_hours", "hours", "delay_hours"])?.unwrap_or(0.0);
        let when = text_arg(&args, &["when", "at", "time", "delay", "in"]);
        if secs <= 0.0 {
            secs = when.as_deref().and_then(parse_delay).unwrap_or(0.0);
        }
        // A delay wins over a clock time: a small model sends both, the time copied from somewhere.
        let due = if secs > 0.0 && secs < 10.0 * 365.0 * 86400.0 {
            now + chrono::Duration::milliseconds((secs * 1000.0) as i64)
        } else if let Some(when) = &when {
            parse_at(when, now).ok_or_else(|| {
                ToolError::BadArguments(format!(
                    "cannot read the time `{when}`: say \"in 5 minutes\", \"in 30 seconds\" or \"at 14:30\""
                ))
            })?
        } else {
            return Err(ToolError::BadArguments("say when, e.g. `when`: \"in 5 minutes\" or \"at 14:30\"".into()));
        };
        let id = self.0.add(text.clone(), due).await?;
        let r = Reminder { id, text, due_ms: due.timestamp_millis() };
        Ok(format!("Set {}.", describe(&r, now.timestamp_millis())))
    }
}

struct ListReminders(Arc<Reminders>);

#[async_trait]
impl Tool for ListReminders {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "list_reminders".into(),
            description: "List the reminders and timers that are set, with their ids and times.".into(),
            parameters: json!({"type": "object", "properties": {}}),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        args_object(args)?;
        let state = self.0.state.lock().await;
        if state.reminders.is_empty() {
            return Ok("No reminders are set.".into());
        }
        let now = now_ms();
        let mut list = state.reminders.clone();
        list.sort_by_key(|r| r.due_ms);
        Ok(list.iter().map(|r| describe(r, now)).collect::<Vec<_>>().join("\n"))
    }
}

struct CancelReminder(Arc<Reminders>);

#[async_trait]
impl Tool for CancelReminder {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "cancel_reminder".into(),
            description: "Cancel a reminder or timer, by its id (from list_reminders) or by words of its text.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "description": "The reminder's id"},
                    "text": {"type": "string", "description": "Words of the reminder's text, when the id is not known"}
                }
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let id = number_arg(&args, &["id", "reminder_id"])?.map(|n| n as u64);
        let text = text_arg(&args, &["text", "message", "reminder"]).map(|t| t.to_lowercase());
        if id.is_none() && text.is_none() {
            return Err(ToolError::BadArguments("give the reminder's `id` or words of its `text`".into()));
        }
        let mut state = self.0.state.lock().await;
        let matches = |r: &Reminder| match (&id, &text) {
            (Some(id), _) => r.id == *id,
            (None, Some(t)) => r.text.to_lowercase().contains(t.as_str()),
            (None, None) => false,
        };
        let cancelled: Vec<Reminder> = state.reminders.iter().filter(|r| matches(r)).cloned().collect();
        if cancelled.is_empty() {
            return Err(ToolError::Failed("no reminder matches; list_reminders shows them".into()));
        }
        state.reminders.retain(|r| !matches(r));
        self.0.save(&state).await.map_err(|e| ToolError::Failed(format!("could not save the reminders: {e}")))?;
        drop(state);
        self.0.changed.notify_one();
        let now = now_ms();
        Ok(format!("Cancelled {}.", cancelled.iter().map(|r| describe(r, now)).collect::<Vec<_>>().join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_said_in_words() {
        assert_eq!(in_words(300_000), "in 5 minutes");
        assert_eq!(in_words(2_000), "in 2 seconds");
        assert_eq!(in_words(90_000), "in 1 minute 30 seconds");
        assert_eq!(in_words(3_600_000 + 180_000), "in 1 hour 3 minutes");
    }

    #[test]
    fn a_clock_time_already_past_today_means_tomorrow() {
        let now = Local
            .from_local_datetime(&NaiveDate::from_ymd_opt(2025, 3, 3).unwrap().and_hms_opt(15, 0, 0).unwrap())
            .unwrap();
        let at = parse_at("14:30", now).unwrap();
        assert_eq!(at.format("%Y-%m-%d %H:%M").to_string(), "2025-03-04 14:30");
        let at = parse_at("4:15 pm", now).unwrap();
        assert_eq!(at.format("%Y-%m-%d %H:%M").to_string(), "2025-03-03 16:15");
        let at = parse_at("at 6 pm", now).unwrap();
        assert_eq!(at.format("%Y-%m-%d %H:%M").to_string(), "2025-03-03 18:00");
        assert!(parse_at("10", now).is_none() && parse_at("25:00", now).is_none() && parse_at("13 pm", now).is_none());
    }

    #[test]
    fn delays_are_read_from_phrases() {
        assert_eq!(parse_delay("in 5 minutes"), Some(300.0));
        assert_eq!(parse_delay("five minutes"), Some(300.0));
        assert_eq!(parse_delay("10 seconds"), Some(10.0));
        assert_eq!(parse_delay("in 1 hour 30 minutes"), Some(5400.0));
        assert_eq!(parse_delay("in half an hour"), Some(1800.0));
        assert_eq!(parse_delay("2h"), Some(7200.0));
        assert_eq!(parse_delay("at 14:30"), None);
        assert_eq!(parse_delay("soon"), None);
    }
}
