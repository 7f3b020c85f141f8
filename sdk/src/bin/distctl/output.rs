//! Everything distctl prints: results on stdout (tables for people, one JSON
//! document with `--json`), progress bars and the final error on stderr.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Human output, or JSON with `json`.
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// True with `--json`.
    pub fn is_json(self) -> bool {
        self.json
    }

    /// Prints a result: `doc` with `--json`, else the lines `human` makes.
    pub fn result(self, doc: &Value, human: impl FnOnce() -> Vec<String>) {
        if self.json {
            println!("{doc}");
        } else {
            for line in human() {
                println!("{line}");
            }
        }
    }

    /// Prints a table for people (ignored with `--json`: use [`Output::result`]).
    pub fn table(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == last {
                        (*c).to_owned()
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let mut out = vec![line(headers.to_vec())];
        out.extend(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        );
        out
    }
}

/// Prints the error that ends distctl as one line on stderr.
pub fn error(err: &anyhow::Error) {
    let message = format!("{err:#}");
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {one_line}");
}

/// Prints a warning on stderr (not with `--json`, whose output is stdout).
pub fn warn(message: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "warning: {message}");
}

/// Bytes for people: "12.3 MiB".
pub fn bytes(n: i64) -> String {
    HumanBytes(u64::try_from(n).unwrap_or(0)).to_string()
}

/// A protobuf timestamp as RFC 3339 (UTC, seconds), or "-" when absent.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    match ts.and_then(to_system_time) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "-".to_owned(),
    }
}

/// A protobuf timestamp as a JSON value (RFC 3339 string or null).
pub fn time_json(ts: Option<&prost_types::Timestamp>) -> Value {
    match ts.and_then(to_system_time) {
        Some(t) => Value::String(humantime::format_rfc3339_seconds(t).to_string()),
        None => Value::Null,
    }
}

fn to_system_time(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar counting bytes up to `total` (a spinner when unknown).
    pub fn bytes(message: &str, total: Option<u64>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = match total {
            Some(total) => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            }
            None => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                if let Ok(style) =
                    ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                {
                    bar.set_style(style);
                }
                bar
            }
        };
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar) }
    }

    /// Sets the position to `n` bytes.
    pub fn set(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(n);
        }
    }

    /// Sets the total once it is known, turning a spinner into a bar.
    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_but_the_last() {
        let rows = vec![vec![
            "a".to_owned(),
            "long value".to_owned(),
            "x".to_owned(),
        ]];
        let lines = Output::table(&["NAME", "V", "LAST"], &rows);
        assert_eq!(lines[0], "NAME  V           LAST");
        assert_eq!(lines[1], "a     long value  x");
    }

    #[test]
    fn timestamps_print_as_rfc3339() {
        let ts = prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(time(Some(&ts)), "1970-01-01T00:00:00Z");
        assert_eq!(time(None), "-");
    }
}
