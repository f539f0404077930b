//! What the API-backed commands print: the API's JSON as it came (`--json`, for scripts), or
//! for people a table that fits the terminal, or one record's fields, one a line.

use std::io::{IsTerminal, Write};

use serde_json::Value;

/// The text of `value` at a JSON pointer, for a cell: strings as they are, `null` or absent as
/// `-`, other values as JSON.
pub fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".to_owned(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Columns of a table: each a header and the JSON pointer of its cell in a row's object.
pub type Columns = [(&'static str, &'static str)];

/// A table of `rows`, fitted to `width` characters when there is a limit: the widest columns
/// give way first, their cells cut with `…`, except the first (the id people copy), which is
/// never cut.
pub fn table(columns: &Columns, rows: &[Value], width: Option<usize>) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, p)| one_line(&text(row, p)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (header, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    if let Some(limit) = width {
        fit(&mut widths, columns, limit);
    }
    let mut out = String::new();
    let headers: Vec<String> = columns.iter().map(|(h, _)| h.to_uppercase()).collect();
    for row in std::iter::once(&headers).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{:<w$}", cut(cell, w)))
            .collect();
        out.push_str(line.join(GAP).trim_end());
        out.push('\n');
    }
    out
}

const GAP: &str = "  ";

/// Narrows the widest column but the first, one character at a time, until the row fits
/// `limit` or every such column is down to its header (at least 8 characters).
fn fit(widths: &mut [usize], columns: &Columns, limit: usize) {
    let first = widths.first().copied().unwrap_or(0);
    let floor = |i: usize| match i {
        0 => first,
        _ => columns[i].0.len().max(8),
    };
    loop {
        let total: usize =
            widths.iter().sum::<usize>() + GAP.len() * widths.len().saturating_sub(1);
        if total <= limit {
            return;
        }
        let widest = (0..widths.len())
            .filter(|&i| widths[i] > floor(i))
            .max_by_key(|&i| widths[i]);
        match widest {
            Some(i) => widths[i] -= 1,
            None => return,
        }
    }
}

/// `s` in at most `width` characters, its end replaced by `…` when cut.
fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut kept: String = s.chars().take(width.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r', '\t'], " ")
}

/// One record: `label  value` lines, labels aligned.
pub fn record(fields: &Columns, value: &Value) -> String {
    let pad = fields.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(label, pointer)| format!("{label:<pad$}  {}\n", text(value, pointer)))
        .collect()
}

/// The width of the terminal standard output is, or `None` when it is not one (then nothing
/// is cut: a pipe gets whole lines).
pub fn terminal_width() -> Option<usize> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let columns = rustix::termios::tcgetwinsize(&stdout)
        .map(|size| usize::from(size.ws_col))
        .ok()
        .filter(|&c| c > 0);
    columns.or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
}

/// Prints `human` (for people) or, with `json`, the API's answer as it came.
pub fn print(
    json: bool,
    value: &Value,
    human: impl FnOnce(&Value) -> String,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", human(value))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COLUMNS: &Columns = &[("id", "/id"), ("name", "/name")];

    #[test]
    fn a_table_aligns_its_columns_under_upper_case_headers() {
        let rows = [
            json!({"id": "1", "name": "Alpha"}),
            json!({"id": "22", "name": null}),
        ];
        assert_eq!(table(COLUMNS, &rows, None), "ID  NAME\n1   Alpha\n22  -\n");
    }

    #[test]
    fn a_table_wider_than_the_terminal_cuts_its_widest_column() {
        let long = "x".repeat(100);
        let id = "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee";
        let rows = [json!({"id": id, "name": long})];
        let out = table(COLUMNS, &rows, Some(60));
        for line in out.lines() {
            assert!(line.chars().count() <= 60, "{line:?}");
        }
        assert!(
            out.contains(&format!("{id}  xxx")),
            "the id is whole: {out}"
        );
        assert!(out.trim_end().ends_with('…'), "{out}");
    }

    #[test]
    fn a_record_aligns_labels_and_shows_lists_joined() {
        let v = json!({"id": "1", "uris": ["a", "b"]});
        assert_eq!(
            record(&[("id", "/id"), ("redirects", "/uris")], &v),
            "id         1\nredirects  a,b\n"
        );
    }
}
