//! What the client commands print, in one of two forms chosen by `--format`:
//! - `table` (the default): text for people, lists as aligned columns under a header;
//! - `json`: JSON Lines, one JSON object per line, for programs (`jq` reads it as is).
//!   A command with one result prints one line; a list or a stream prints one per item.
//!
//! Every command builds its result as JSON once; the table is drawn from the same values,
//! so the two forms never disagree. Times are RFC 3339 in both. Progress and hints go to
//! stderr, never into the output.
//!
//! The columns are aligned here rather than by a table crate: a header and padded cells
//! are all the CLI needs.

use std::time::Duration;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people; lists as aligned columns.
    Table,
    /// JSON Lines: one JSON object per line.
    Json,
}

/// The printer of a command's results.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub format: Format,
}

impl Out {
    /// One result, or one item of a stream as it arrives: a JSON line, or `text`.
    pub fn one(&self, value: &Value, text: impl FnOnce() -> String) {
        match self.format {
            Format::Json => println!("{value}"),
            Format::Table => println!("{}", text()),
        }
    }

    /// A list: JSON lines, or a table of `columns` (JSON keys, shown upper-cased) drawn
    /// from the same values.
    pub fn table(&self, columns: &[&str], rows: &[Value]) {
        match self.format {
            Format::Json => rows.iter().for_each(|r| println!("{r}")),
            Format::Table => print!("{}", render(columns, rows)),
        }
    }
}

/// The text of one table cell: strings as they are, lists comma-separated, nothing as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn render(columns: &[&str], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// A protobuf time as RFC 3339 (`2026-12-04T01:02:03Z`), or null.
pub fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// Unix seconds as RFC 3339.
pub fn unix_time(seconds: u64) -> String {
    prost_types::Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
    .to_string()
}

/// A progress bar on stderr of `total` steps. indicatif draws it only when stderr is a
/// terminal: in a pipe or a log file nothing of it appears.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} ({{percent}}%) {{msg}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// A spinner on stderr with a changing message, for a job of unknown length; drawn only
/// on a terminal, like `progress_bar`.
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_table_aligns_columns_under_a_header_and_shows_nothing_as_a_dash() {
        let rows = [
            json!({"tenant": "acme", "key_version": 2, "created_at": "2026-12-04T01:00:00Z"}),
            json!({"tenant": "a-much-longer-name", "key_version": 10, "created_at": null}),
        ];
        let text = render(&["tenant", "key_version", "created_at"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "TENANT              KEY_VERSION  CREATED_AT");
        assert_eq!(
            lines[1],
            "acme                2            2026-12-04T01:00:00Z"
        );
        assert_eq!(lines[2], "a-much-longer-name  10           -");
    }

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix_time(1_796_346_000), "2026-12-04T01:00:00Z");
    }
}
