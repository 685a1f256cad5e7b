//! Loading and validating config.toml. Every problem is collected and reported at once, with
//! the file, line and column it comes from, before anything starts.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_spanned::Spanned;
use slowcat_processors::audio::{MicSettings, SpeakerSettings, WavInputSettings, WavOutputSettings};
use slowcat_processors::llm::OpenAiLlmSettings;
use slowcat_processors::registry::{AnySettings, CheckedSettings, Kind, Registry, Requirement, Settings};
use slowcat_processors::{BuildContext, Problem};
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// Keys allowed at the top level of config.toml.
const TOP_LEVEL_KEYS: &[&str] = &["pipeline", "models_dir", "data_dir", "metrics_file", "processors"];

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// All the problems of one config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for d in &self.0 {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One processor of the pipeline, validated and ready to build.
pub struct ProcessorEntry {
    /// Its id (the key under `[processors]`).
    pub id: String,
    /// Its registered kind.
    pub kind: Kind,
    /// Its settings, checked.
    pub settings: CheckedSettings,
}

impl fmt::Debug for ProcessorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorEntry").field("id", &self.id).field("type", &self.kind.name).finish()
    }
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Directories the processors build against.
    pub build: BuildContext,
    /// Where per-turn metrics are appended as JSON lines, if anywhere.
    pub metrics_file: Option<PathBuf>,
    /// The processors in pipeline order.
    pub processors: Vec<ProcessorEntry>,
}

impl Config {
    /// The settings of every processor of kind `S` in the pipeline, with its id.
    pub fn settings_of<S: Settings>(&self) -> impl Iterator<Item = (&str, &S)> {
        self.processors.iter().filter_map(|e| e.settings.get::<S>().map(|s| (e.id.as_str(), s)))
    }

    /// (id, base_url, api_key_env) of every `openai_llm` processor in the pipeline, for
    /// `slowcat check --llm`.
    pub fn llm_endpoints(&self) -> Vec<(String, String, String)> {
        self.settings_of::<OpenAiLlmSettings>()
            .map(|(id, s)| (id.to_string(), s.base_url.clone(), s.api_key_env.clone()))
            .collect()
    }
}

/// The sections of a config file, parsed but not checked: for commands that read one
/// processor's settings (`slowcat memory` and its database path) without needing the rest of the
/// pipeline to be able to start (a missing Whisper model).
pub struct Sections {
    /// Directories the processors build against.
    pub build: BuildContext,
    /// Every `[processors.<id>]` section in the pipeline that parsed, in pipeline order.
    pub processors: Vec<(String, Kind, Box<dyn AnySettings>)>,
}

impl Sections {
    /// The settings of every section of kind `S` in the pipeline, with its id.
    pub fn settings_of<S: Settings>(&self) -> impl Iterator<Item = (&str, &S)> {
        self.processors.iter().filter_map(|(id, _, s)| s.as_any().downcast_ref::<S>().map(|s| (id.as_str(), s)))
    }
}

/// A change to the file's content from the command line: `KEY=VALUE` with a dotted key, e.g.
/// `processors.llm.base_url="http://127.0.0.1:8089/v1"`. The value is TOML; a bare word is
/// taken as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Dotted path.
    pub key: Vec<String>,
    /// TOML value.
    pub value: String,
}

impl std::str::FromStr for Override {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s.split_once('=').ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
        let key: Vec<String> = key.trim().split('.').map(|k| k.trim().to_string()).collect();
        if key.iter().any(|k| k.is_empty()) {
            return Err(format!("`{s}` has an empty key part"));
        }
        Ok(Self { key, value: value.trim().to_string() })
    }
}

/// Device and endpoint swaps from the command line, applied to the file before validation.
#[derive(Debug, Clone, Default)]
pub struct Rewire {
    /// Replace the input device (the first `mic` or `wav_input`) by this WAV file.
    pub input: Option<PathBuf>,
    /// Replace the output device (the last `speaker` or `wav_output`) by this WAV file.
    pub output: Option<PathBuf>,
    /// Use this base URL for every `openai_llm` processor.
    pub llm_url: Option<String>,
}

/// Where the default data directory is: `$XDG_DATA_HOME/slowcat` or `~/.local/share/slowcat`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("slowcat");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/slowcat"),
        None => PathBuf::from(".slowcat"),
    }
}

/// Reads and validates a config file: syntax, keys, types, processor kinds and settings, model
/// files. `check_files` = false skips the checks that look at the disk (for `--help` output and
/// tests of parsing alone).
pub fn load(path: &Path, overrides: &[Override], rewire: &Rewire) -> Result<Config, ConfigErrors> {
    parse(path, &read(path)?, overrides, rewire)
}

/// Reads a config file's sections without checking them (see [`Sections`]), with `--set`
/// changes applied; syntax, keys and types are still validated.
pub fn load_sections(path: &Path, overrides: &[Override]) -> Result<Sections, ConfigErrors> {
    let source = read(path)?;
    let registry = slowcat_processors::registry::registry();
    let mut v = Validator { file: path.to_path_buf(), source: &source, diags: Vec::new() };
    let rewire = Rewire::default();
    let Some(doc) = v.document(overrides, &rewire) else { return Err(ConfigErrors(v.diags)) };
    let mut processors = Vec::new();
    for id in &doc.pipeline {
        if let Some(table) = doc.processors.get(id.get_ref().as_str())
            && let Some(settings) = v.parse_only(id.get_ref(), table, &registry)
        {
            processors.push((id.get_ref().clone(), settings.0, settings.1));
        }
    }
    if v.diags.is_empty() { Ok(Sections { build: doc.build, processors }) } else { Err(ConfigErrors(v.diags)) }
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![Diagnostic {
            file: path.to_path_buf(),
            position: None,
            message: format!(
                "cannot read the configuration: {e}. Pass another file with --config, or copy config.toml from the slowcat repository"
            ),
        }])
    })
}

/// Validates configuration text that came from `path`, with every processor kind of
/// slowcat-processors.
pub fn parse(path: &Path, source: &str, overrides: &[Override], rewire: &Rewire) -> Result<Config, ConfigErrors> {
    parse_with(&slowcat_processors::registry::registry(), path, source, overrides, rewire)
}

/// Validates configuration text that came from `path` against the kinds of `registry` (a test
/// registers its own kinds).
pub fn parse_with(
    registry: &Registry,
    path: &Path,
    source: &str,
    overrides: &[Override],
    rewire: &Rewire,
) -> Result<Config, ConfigErrors> {
    let mut v = Validator { file: path.to_path_buf(), source, diags: Vec::new() };
    let Some(doc) = v.document(overrides, rewire) else { return Err(ConfigErrors(v.diags)) };
    let Document { build, metrics_file, pipeline, processors, pipeline_span } = doc;
    let kinds = registry.kinds();
    let mut entries = Vec::new();
    let mut flow: Vec<(String, Kind, Vec<Requirement>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for id in &pipeline {
        if !seen.insert(id.get_ref().clone()) {
            v.error(Some(id.span()), format!("processor `{}` appears twice in the pipeline", id.get_ref()));
            continue;
        }
        let Some((_, table)) = processors.get_key_value(id.get_ref().as_str()) else {
            let ids: Vec<&str> = processors.keys().map(|k| k.get_ref().as_ref()).collect();
            v.error(
                Some(id.span()),
                format!(
                    "the pipeline names `{}` but there is no [processors.{}] section{}",
                    id.get_ref(),
                    id.get_ref(),
                    suggest(id.get_ref(), &ids)
                ),
            );
            continue;
        };
        if let Some((kind, requires, entry)) = v.processor(id.get_ref(), table, registry, &build) {
            flow.push((id.get_ref().clone(), kind, requires));
            entries.extend(entry);
        }
    }
    // Frames must be able to flow: something produces them, and each processor's needs come
    // earlier. Judged on every section that parsed, also those whose settings have problems.
    if !flow.is_empty() {
        if !flow.iter().any(|(_, kind, _)| kind.source) {
            let sources: Vec<&str> = kinds.iter().filter(|k| k.source).map(|k| k.name).collect();
            v.error(
                pipeline_span,
                format!("nothing in the pipeline produces frames: start it with one of {}", sources.join(", ")),
            );
        }
        for (i, (id, kind, requires)) in flow.iter().enumerate() {
            for req in requires {
                if !flow[..i].iter().any(|(_, before, _)| req.any_of.contains(&before.name)) {
                    let span = pipeline.iter().find(|p| p.get_ref() == id).map(|p| p.span());
                    v.error(
                        span,
                        format!(
                            "`{}` ({}) needs one of {} earlier in the pipeline{}: {}",
                            id,
                            kind.name,
                            req.any_of.join(", "),
                            req.key.map(|k| format!(" (because of `{k}`)")).unwrap_or_default(),
                            req.why
                        ),
                    );
                }
            }
        }
    }
    // Sections not in the pipeline are kept as alternatives, but their keys are still checked so
    // a typo is found before the user swaps them in.
    for (id, table) in processors.iter() {
        if !pipeline.iter().any(|p| p.get_ref() == id.get_ref().as_ref()) {
            v.parse_only(id.get_ref(), table, registry);
        }
    }

    if v.diags.is_empty() {
        Ok(Config {
            path: path.to_path_buf(),
            build,
            metrics_file: metrics_file.filter(|p| !p.as_os_str().is_empty()),
            processors: entries,
        })
    } else {
        v.diags.sort_by_key(|d| d.position);
        Err(ConfigErrors(v.diags))
    }
}

/// The parts of a config file every command needs: directories, the pipeline's ids and the
/// processor sections, after overrides and rewiring.
struct Document<'a> {
    build: BuildContext,
    metrics_file: Option<PathBuf>,
    pipeline: Vec<Spanned<String>>,
    pipeline_span: Option<Range<usize>>,
    processors: DeTable<'a>,
}

impl<'s> Validator<'s> {
    /// Syntax, overrides, rewiring, top-level keys, directories and the pipeline list; `None` when
    /// the TOML itself does not parse.
    fn document<'a>(&mut self, overrides: &'a [Override], rewire: &'a Rewire) -> Option<Document<'a>>
    where
        's: 'a,
    {
        let v = self;
        let path = v.file.clone();
        let source = v.source;
        let (doc, errors) = DeTable::parse_recoverable(source);
        for e in errors {
            v.error(e.span(), format!("invalid TOML: {}", e.message()));
        }
        if !v.diags.is_empty() {
            return None;
        }
        let doc_span = doc.span();
        let mut doc = doc.into_inner();
        for o in overrides {
            if let Err(msg) = apply_override(&mut doc, o) {
                v.diags.push(Diagnostic { file: path.clone(), position: None, message: msg });
            }
        }

        apply_rewire(&mut doc, rewire);

        for (key, _) in doc.iter() {
            if !TOP_LEVEL_KEYS.contains(&key.get_ref().as_ref()) {
                v.error(
                    Some(key.span()),
                    format!("unknown key `{}`{}", key.get_ref(), suggest(key.get_ref(), TOP_LEVEL_KEYS)),
                );
            }
        }

        let config_dir =
            path.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| ".".into());
        let dir_key = |v: &mut Validator, key: &str, default: PathBuf| -> PathBuf {
            match doc.get(key) {
                None => default,
                Some(val) => match val.get_ref().as_str() {
                    Some(s) => BuildContext {
                        models_dir: PathBuf::new(),
                        data_dir: config_dir.clone(),
                        config_dir: config_dir.clone(),
                    }
                    .data_path(s),
                    None => {
                        v.error(Some(val.span()), format!("`{key}` must be a string (a directory path)"));
                        default
                    }
                },
            }
        };
        let models_dir = match std::env::var_os("SLOWCAT_MODELS_DIR") {
            Some(d) if !doc.contains_key("models_dir") => PathBuf::from(d),
            _ => dir_key(v, "models_dir", config_dir.join("models")),
        };
        let data_dir = dir_key(v, "data_dir", default_data_dir());
        let metrics_file = doc.get("metrics_file").map(|_| dir_key(v, "metrics_file", PathBuf::new()));
        let build = BuildContext { models_dir, data_dir, config_dir: config_dir.clone() };

        // The pipeline: a non-empty list of processor ids.
        let mut pipeline: Vec<Spanned<String>> = Vec::new();
        match doc.get("pipeline") {
            None => v.error(
                Some(doc_span.start..doc_span.start),
                "missing `pipeline`: the list of processor ids to run, in order, e.g. pipeline = [\"input\", \"output\"]"
                    .into(),
            ),
            Some(p) => match p.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        match item.get_ref().as_str() {
                            Some(s) => pipeline.push(Spanned::new(item.span(), s.to_string())),
                            None => v.error(Some(item.span()), "pipeline entries must be processor ids (strings)".into()),
                        }
                    }
                    if items.is_empty() {
                        v.error(Some(p.span()), "the pipeline is empty: list the processors to run, in order".into());
                    }
                }
                _ => v.error(Some(p.span()), "`pipeline` must be a list of processor ids".into()),
            },
        }

        let empty = DeTable::new();
        let processors = match doc.get("processors") {
            Some(t) => match t.get_ref() {
                DeValue::Table(t) => t.clone(),
                _ => {
                    v.error(Some(t.span()), "`processors` must be a table of `[processors.<id>]` sections".into());
                    empty
                }
            },
            None => empty,
        };
        let pipeline_span = doc.get("pipeline").map(|p| p.span());
        Some(Document { build, metrics_file, pipeline, pipeline_span, processors })
    }
}

struct Validator<'s> {
    file: PathBuf,
    source: &'s str,
    diags: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let position = span.map(|s| line_col(self.source, s.start));
        self.diags.push(Diagnostic { file: self.file.clone(), position, message });
    }

    /// The kind named by a section's `type`, reporting what is wrong with it.
    fn kind_of<'a>(
        &mut self,
        id: &str,
        table: &Spanned<DeValue<'a>>,
        registry: &Registry,
    ) -> Option<(Kind, DeTable<'a>)> {
        let known: Vec<&str> = registry.kinds().iter().map(|k| k.name).collect();
        let DeValue::Table(t) = table.get_ref() else {
            self.error(Some(table.span()), format!("`processors.{id}` must be a table"));
            return None;
        };
        let Some(ty) = t.get("type") else {
            self.error(
                Some(table.span()),
                format!("[processors.{id}] has no `type`; known types: {}", known.join(", ")),
            );
            return None;
        };
        let Some(name) = ty.get_ref().as_str() else {
            self.error(Some(ty.span()), "`type` must be a string".into());
            return None;
        };
        let Some(kind) = registry.find(name) else {
            self.error(
                Some(ty.span()),
                format!("unknown processor type `{name}`{}; known types: {}", suggest(name, &known), known.join(", ")),
            );
            return None;
        };
        let mut settings = t.clone();
        settings.remove("type");
        Some((kind, settings))
    }

    fn parse_settings(
        &mut self,
        kind: &Kind,
        span: Range<usize>,
        settings: DeTable<'_>,
    ) -> Option<Box<dyn AnySettings>> {
        let value = Spanned::new(span, DeValue::Table(settings));
        match kind.parse(ValueDeserializer::from(value)) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(e.span(), e.message().trim_end_matches('\n').to_string());
                None
            }
        }
    }

    /// Parses and checks one processor's section: its kind and what it needs before it (when it
    /// parsed), with its entry when the settings passed their check; problems are reported.
    fn processor(
        &mut self,
        id: &str,
        table: &Spanned<DeValue<'_>>,
        registry: &Registry,
        build: &BuildContext,
    ) -> Option<(Kind, Vec<Requirement>, Option<ProcessorEntry>)> {
        let (kind, settings) = self.kind_of(id, table, registry)?;
        let key_spans: Vec<(String, Range<usize>)> =
            settings.iter().map(|(k, v)| (k.get_ref().to_string(), k.span().start..v.span().end)).collect();
        let parsed = self.parse_settings(&kind, table.span(), settings)?;
        let requires = parsed.requires();
        match CheckedSettings::check(parsed, build) {
            Ok(settings) => Some((kind, requires, Some(ProcessorEntry { id: id.to_string(), kind, settings }))),
            Err(problems) => {
                for problem in problems {
                    self.problem(id, table, &key_spans, problem);
                }
                Some((kind, requires, None))
            }
        }
    }

    fn problem(&mut self, id: &str, table: &Spanned<DeValue<'_>>, key_spans: &[(String, Range<usize>)], p: Problem) {
        let span = p
            .key
            .and_then(|key| key_spans.iter().find(|(k, _)| k == key).map(|(_, s)| s.clone()))
            .unwrap_or_else(|| table.span());
        self.error(Some(span), format!("[processors.{id}] {}", p.message));
    }

    /// Parses one processor's section without checking it.
    fn parse_only(
        &mut self,
        id: &str,
        table: &Spanned<DeValue<'_>>,
        registry: &Registry,
    ) -> Option<(Kind, Box<dyn AnySettings>)> {
        let (kind, settings) = self.kind_of(id, table, registry)?;
        self.parse_settings(&kind, table.span(), settings).map(|s| (kind, s))
    }
}

/// Parses a standalone TOML value.
fn parse_value(text: &str) -> Option<DeValue<'_>> {
    DeValue::parse(text).ok().map(Spanned::into_inner)
}

fn apply_override<'a>(doc: &mut DeTable<'a>, o: &'a Override) -> Result<(), String> {
    let value = parse_value(&o.value).unwrap_or_else(|| DeValue::String(std::borrow::Cow::Borrowed(&o.value)));
    let (last, parents) = o.key.split_last().expect("override keys are non-empty");
    let mut table = doc;
    for part in parents {
        let entry = table
            .entry(Spanned::new(0..0, std::borrow::Cow::Owned(part.clone())))
            .or_insert_with(|| Spanned::new(0..0, DeValue::Table(DeTable::new())));
        match entry.get_mut() {
            DeValue::Table(t) => table = t,
            _ => return Err(format!("--set {}: `{part}` is not a table", o.key.join("."))),
        }
    }
    table.insert(Spanned::new(0..0, std::borrow::Cow::Owned(last.clone())), Spanned::new(0..0, value));
    Ok(())
}

fn string_value(s: &str) -> Spanned<DeValue<'_>> {
    Spanned::new(0..0, DeValue::String(std::borrow::Cow::Borrowed(s)))
}

fn key(s: &'static str) -> Spanned<std::borrow::Cow<'static, str>> {
    Spanned::new(0..0, std::borrow::Cow::Borrowed(s))
}

fn replace_with_wav<'a>(
    procs: &mut DeTable<'a>,
    id: &str,
    ty: &'static str,
    path: &'a Path,
    extra: Option<(&'static str, bool)>,
) {
    let mut t = DeTable::new();
    t.insert(key("type"), string_value(ty));
    t.insert(key("path"), string_value(path.to_str().unwrap_or_default()));
    if let Some((k, v)) = extra {
        t.insert(key(k), Spanned::new(0..0, DeValue::Boolean(v)));
    }
    if let Some(slot) = procs.get_mut(id) {
        *slot = Spanned::new(slot.span(), DeValue::Table(t));
    }
}

/// Swaps devices for WAV files and points LLM processors at another server.
fn apply_rewire<'a>(doc: &mut DeTable<'a>, rewire: &'a Rewire) {
    let order: Vec<String> = match doc.get("pipeline").map(|p| p.get_ref()) {
        Some(DeValue::Array(items)) => items.iter().filter_map(|i| i.get_ref().as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    let Some(DeValue::Table(procs)) = doc.get_mut("processors").map(|p| p.get_mut()) else { return };
    let type_of = |procs: &DeTable<'_>, id: &str| -> Option<String> {
        match procs.get(id)?.get_ref() {
            DeValue::Table(t) => t.get("type")?.get_ref().as_str().map(str::to_string),
            _ => None,
        }
    };
    if let Some(input) = &rewire.input
        && let Some(id) = order
            .iter()
            .find(|id| matches!(type_of(procs, id).as_deref(), Some(MicSettings::TYPE | WavInputSettings::TYPE)))
    {
        replace_with_wav(procs, id, WavInputSettings::TYPE, input, None);
    }
    if let Some(output) = &rewire.output
        && let Some(id) = order
            .iter()
            .rev()
            .find(|id| matches!(type_of(procs, id).as_deref(), Some(SpeakerSettings::TYPE | WavOutputSettings::TYPE)))
    {
        replace_with_wav(procs, id, WavOutputSettings::TYPE, output, Some(("record_input", false)));
    }
    if let Some(url) = &rewire.llm_url {
        for (_, v) in procs.iter_mut() {
            if let DeValue::Table(t) = v.get_mut()
                && t.get("type").and_then(|t| t.get_ref().as_str()) == Some(OpenAiLlmSettings::TYPE)
            {
                t.insert(key("base_url"), string_value(url));
            }
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// " (did you mean `x`?)" when a known name is close to `name`.
fn suggest(name: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        match parse(Path::new("test.toml"), src, &[], &Rewire::default()) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let src = r#"pipeline = ["input", "pass", "output"]

[processors.input]
type = "wav_input"
path = "does-not-exist.wav"

[processors.pass]
type = "passthru"

[processors.output]
type = "wav_output"
path = "out.wav"
sampel_rate = 16000
"#;
        let errs = errors(src);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs.iter().any(|e| e.starts_with("test.toml:5:1:") && e.contains("does-not-exist.wav")), "{errs:#?}");
        assert!(
            errs.iter().any(|e| e.starts_with("test.toml:8:8:") && e.contains("passthru") && e.contains("passthrough")),
            "{errs:#?}"
        );
        assert!(errs.iter().any(|e| e.starts_with("test.toml:13:1:") && e.contains("sampel_rate")), "{errs:#?}");
    }

    #[test]
    fn wrong_value_types_and_empty_pipelines_are_errors() {
        let errs = errors("pipeline = []\n");
        assert!(errs[0].contains("empty"), "{errs:?}");
        let src =
            "pipeline = [\"o\"]\n[processors.o]\ntype = \"wav_output\"\npath = \"x.wav\"\nsample_rate = \"fast\"\n";
        let errs = errors(src);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("test.toml:5:") && e.contains("sample_rate") || e.contains("invalid type")),
            "{errs:?}"
        );
        let errs = errors("pipelin = [\"a\"]\n");
        assert!(errs.iter().any(|e| e.contains("did you mean `pipeline`")), "{errs:?}");
    }

    #[test]
    fn a_pipeline_without_a_source_cannot_flow() {
        let src = "pipeline = [\"p\"]\n[processors.p]\ntype = \"passthrough\"\n";
        let errs = errors(src);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("test.toml:1:") && e.contains("produces frames") && e.contains("wav_input")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_processor_without_what_it_needs_before_it_is_refused_naming_both() {
        let src = "pipeline = [\"in\", \"stt\", \"out\"]\n[processors.in]\ntype = \"wav_input\"\npath = \"in.wav\"\n\
                   [processors.stt]\ntype = \"whisper_stt\"\n[processors.out]\ntype = \"wav_output\"\npath = \"o.wav\"\n";
        let errs = errors(src);
        assert!(
            errs.iter().any(|e| e.starts_with("test.toml:1:")
                && e.contains("`stt` (whisper_stt)")
                && e.contains("silero_vad")
                && e.contains("webrtc_vad")),
            "{errs:#?}"
        );
        let src = "pipeline = [\"in\", \"llm\"]\n[processors.in]\ntype = \"wav_input\"\npath = \"in.wav\"\n\
                   [processors.llm]\ntype = \"openai_llm\"\n";
        let errs = errors(src);
        assert!(errs.iter().any(|e| e.contains("`llm` (openai_llm)") && e.contains("user_turn")), "{errs:#?}");
    }

    #[test]
    fn overrides_change_values_before_validation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.wav"), b"").unwrap();
        let cfg = dir.path().join("t.toml");
        let src = "pipeline = [\"i\", \"o\"]\n[processors.i]\ntype = \"wav_input\"\npath = \"in.wav\"\n[processors.o]\ntype = \"wav_output\"\npath = \"x.wav\"\n";
        let o: Override = "processors.o.sample_rate=\"fast\"".parse().unwrap();
        let err = parse(&cfg, src, std::slice::from_ref(&o), &Rewire::default()).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let ok: Override = "processors.o.sample_rate=22050".parse().unwrap();
        let cfg = parse(&cfg, src, std::slice::from_ref(&ok), &Rewire::default()).unwrap();
        assert_eq!(cfg.processors.len(), 2);
    }
}
