//! The report: a Markdown table for people and a JSON document for tools.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::BoxError;
use crate::disk::SyncRate;
use crate::machine::Machine;
use crate::stats::{round, round_to};
use crate::storage::{CaseResult, sync_ratio};

/// Everything one run measured.
#[derive(Debug)]
pub(crate) struct Report {
    /// Where it ran.
    pub(crate) machine: Machine,
    /// The directory the stores were created in.
    pub(crate) dir: PathBuf,
    /// The disk's fdatasync rate before the cases.
    pub(crate) fsync_before: SyncRate,
    /// And after them.
    pub(crate) fsync_after: SyncRate,
    /// The cases, in run order.
    pub(crate) results: Vec<CaseResult>,
}

impl Report {
    /// The fdatasync rate durable figures are compared with: the mean of the
    /// probes before and after (the disk's rate drifts).
    fn fsync_reference(&self) -> SyncRate {
        let mut reference = self.fsync_before;
        reference.per_second = (self.fsync_before.per_second + self.fsync_after.per_second) / 2.0;
        reference
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The first lines of a server benchmark's report: its name and date, the
/// machine, and the server's version, durability and filesystem.
pub(crate) fn server_header(
    benchmark: &str,
    machine: &Machine,
    info: &cairn_client::ServerInfo,
) -> String {
    format!(
        "{benchmark}, {}\nmachine: {}\nserver: cairn {}, durability {}; data on {}\n",
        machine.date,
        machine.summary(),
        info.version,
        info.durability,
        machine.filesystem_summary()
    )
}

/// Writes a server benchmark's figures to `path` as pretty JSON: what ran
/// (`benchmark`, the command line), where (machine, `dir`), the server
/// (version and durability from `Server.Info`, `address`), then the fields of
/// `figures` (an object).
pub(crate) fn write_server_json(
    path: &Path,
    benchmark: &str,
    (machine, dir): (&Machine, &Path),
    (info, address): (&cairn_client::ServerInfo, &str),
    figures: Value,
) -> Result<(), BoxError> {
    let mut document = json!({
        "benchmark": benchmark,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine.to_json(),
        "dir": dir.display().to_string(),
        "server": { "version": info.version, "durability": info.durability, "address": address },
    });
    if let (Some(document), Value::Object(figures)) = (document.as_object_mut(), figures) {
        document.extend(figures);
    }
    std::fs::write(path, serde_json::to_string_pretty(&document)? + "\n")?;
    eprintln!("figures written to {}", path.display());
    Ok(())
}

/// A Markdown table: the first column aligned left, the others (numbers) right;
/// ends with a newline.
pub(crate) fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    markdown_table_with(header, rows, &[0])
}

/// A Markdown table whose columns listed in `left` (text) align left and the
/// others (numbers) right; ends with a newline.
pub(crate) fn markdown_table_with(header: &[&str], rows: &[Vec<String>], left: &[usize]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row.get(column).map_or(0, |cell| cell.chars().count()))
                .chain([header[column].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(column, &width)| {
                let cell = cells.get(column).map_or("", String::as_str);
                if left.contains(&column) {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|cell| (*cell).to_owned()).collect();
    let _ = writeln!(out, "{}", line(&header));
    // Each cell is its text plus one space either side; numbers align right.
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(column, width)| {
            if left.contains(&column) {
                "-".repeat(width + 2)
            } else {
                format!("{}:", "-".repeat(width + 1))
            }
        })
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for row in rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

/// The report as text: a header and a Markdown table.
pub(crate) fn table(report: &Report) -> String {
    let reference = report.fsync_reference();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "cairn-bench storage, {}", report.machine.date);
    let _ = writeln!(out, "machine: {}", report.machine.summary());
    let _ = writeln!(
        out,
        "stores in: {} ({})",
        report.dir.display(),
        report.machine.filesystem_summary()
    );
    let _ = writeln!(
        out,
        "fdatasync (4 KiB append + fdatasync): {} /s before (p50 {:.2} ms), {} /s after (p50 {:.2} ms)",
        thousands(report.fsync_before.per_second),
        report.fsync_before.latency.p50_us / 1_000.0,
        thousands(report.fsync_after.per_second),
        report.fsync_after.latency.p50_us / 1_000.0,
    );
    let _ = writeln!(out);

    let header = [
        "case",
        "events",
        "s",
        "ev/s",
        "p50 ms",
        "p99 ms",
        "groups",
        "ev/group",
        "groups/s",
        "ev/s ÷ fsync/s",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for result in &report.results {
        let groups = result.groups.filter(|&groups| groups > 0);
        rows.push(vec![
            format!(
                "{}{}",
                result.spec.name,
                if result.capped { " (capped)" } else { "" }
            ),
            thousands(result.events as f64),
            format!("{:.2}", result.seconds),
            thousands(result.events_per_second()),
            format!("{:.3}", result.latency.p50_us / 1_000.0),
            format!("{:.3}", result.latency.p99_us / 1_000.0),
            groups.map_or_else(|| "-".to_owned(), |groups| thousands(groups as f64)),
            groups.map_or_else(
                || "-".to_owned(),
                |groups| format!("{:.1}", result.events as f64 / groups as f64),
            ),
            groups.map_or_else(
                || "-".to_owned(),
                |groups| thousands(groups as f64 / result.seconds.max(f64::MIN_POSITIVE)),
            ),
            sync_ratio(result, &reference)
                .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}x")),
        ]);
    }
    out.push_str(&markdown_table(&header, &rows));
    let _ = write!(
        out,
        "\nlatency: per append (building its events included) until acknowledged. groups: committed \
         write groups, one WAL write + one fdatasync each in durable mode. ev/s ÷ fsync/s: against \
         the mean of the two fdatasync probes ({:.0}/s).",
        reference.per_second
    );
    out
}

/// The report as JSON.
pub(crate) fn json(report: &Report) -> Value {
    let reference = report.fsync_reference();
    let cases: Vec<Value> = report
        .results
        .iter()
        .map(|result| {
            let durability = match result.spec.durability {
                None => "none (null loop)",
                Some(cairn_storage::Durability::Sync) => "sync",
                Some(cairn_storage::Durability::Unsynced) => "unsynced",
            };
            json!({
                "case": result.spec.name,
                "durability": durability,
                "writers": result.spec.writers,
                "events_per_append": result.spec.batch,
                "streams_per_writer": result.spec.streams_per_writer,
                "events": result.events,
                "appends": result.appends,
                "seconds": round_to(result.seconds, 3),
                "events_per_second": round(result.events_per_second()),
                "latency": result.latency.to_json(),
                "groups": result.groups,
                "events_per_group": result.groups.filter(|&g| g > 0).map(|g| round(result.events as f64 / g as f64)),
                "ratio_to_fsync_rate": sync_ratio(result, &reference).map(|ratio| round_to(ratio, 2)),
                "capped": result.capped,
            })
        })
        .collect();
    json!({
        "benchmark": "cairn-bench storage",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": report.machine.to_json(),
        "dir": report.dir.display().to_string(),
        "fdatasync_before": report.fsync_before.to_json(),
        "fdatasync_after": report.fsync_after.to_json(),
        "fdatasync_reference_per_second": round(reference.per_second),
        "cases": cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn table_alignment() {
        let table = markdown_table(
            &["case", "ev/s"],
            &[vec!["a".to_owned(), "1,000".to_owned()]],
        );
        assert_eq!(
            table,
            "| case |  ev/s |\n|------|------:|\n| a    | 1,000 |\n"
        );
    }
}
