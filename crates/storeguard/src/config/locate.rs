//! Maps config field paths (`cameras[2].url`) to source positions and back.
//!
//! serde reports type errors with a byte span but no field path; our semantic checks
//! know the field path but not the span. One index of every key in the parsed document
//! answers both questions, so every problem can be printed as `file:line:col: path: msg`.

use std::ops::Range;
use toml_edit::{Item, Table, Value};

#[derive(Debug, Default)]
pub struct SpanIndex {
    /// (path, span of the value or table header, span from the key to the value's end)
    entries: Vec<(String, Range<usize>, Range<usize>)>,
    line_starts: Vec<usize>,
}

impl SpanIndex {
    pub fn build(text: &str, doc: &toml_edit::Document<&str>) -> Self {
        let mut idx = SpanIndex {
            entries: Vec::new(),
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        };
        idx.walk_table(doc.as_table(), "");
        idx
    }

    /// 1-based (line, column) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        (line.max(1), offset - start + 1)
    }

    /// Span for a field path; falls back to the nearest enclosing path that has one
    /// (a missing field is reported at its table).
    pub fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut p = path.to_string();
        loop {
            if let Some((_, s, _)) = self.entries.iter().find(|(k, _, _)| *k == p) {
                return Some(s.clone());
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }

    /// The most specific field whose span contains `offset`.
    pub fn path_at(&self, offset: usize) -> Option<&str> {
        self.entries
            .iter()
            .filter(|(_, _, s)| s.start <= offset && offset < s.end.max(s.start + 1))
            .min_by_key(|(_, _, s)| s.end - s.start)
            .map(|(k, _, _)| k.as_str())
    }

    fn push(&mut self, path: String, span: Option<Range<usize>>, key: Option<Range<usize>>) {
        if let Some(s) = span {
            let whole = key
                .map(|k| k.start.min(s.start)..s.end.max(k.end))
                .unwrap_or(s.clone());
            self.entries.push((path, s, whole));
        }
    }

    fn walk_table(&mut self, t: &Table, prefix: &str) {
        for (k, item) in t.iter() {
            let path = join(prefix, k);
            let key_span = t.key(k).and_then(|k| k.span());
            self.walk_item(item, path, key_span);
        }
    }

    fn walk_item(&mut self, item: &Item, path: String, key_span: Option<Range<usize>>) {
        match item {
            Item::Table(t) => {
                self.push(path.clone(), t.span().or(key_span.clone()), key_span);
                self.walk_table(t, &path);
            }
            Item::ArrayOfTables(a) => {
                self.push(path.clone(), a.span().or(key_span.clone()), key_span);
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.push(p.clone(), t.span(), None);
                    self.walk_table(t, &p);
                }
            }
            Item::Value(v) => self.walk_value(v, path, key_span),
            Item::None => {}
        }
    }

    fn walk_value(&mut self, v: &Value, path: String, key_span: Option<Range<usize>>) {
        // Point at the value: that is what is wrong, and the key is on the same line.
        self.push(path.clone(), v.span().or(key_span.clone()), key_span);
        match v {
            Value::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    self.walk_value(e, format!("{path}[{i}]"), None);
                }
            }
            Value::InlineTable(t) => {
                for (k, e) in t.iter() {
                    let ks = t.key(k).and_then(|k| k.span());
                    self.walk_value(e, join(&path, k), ks);
                }
            }
            _ => {}
        }
    }
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}
