//! CPU time spent by a benchmark's two sides, from `/proc/<pid>/stat`: the
//! server (a process and every live process whose parent chain leads to it,
//! e.g. PostgreSQL's postmaster and its backends) and the client (this
//! process, with the children it has waited for, e.g. W6's subscriber).
//!
//! Each process counts `utime + stime + cutime + cstime`: its own user and
//! system time and that of its children that exited and were reaped. A server
//! process that exits and is reaped by its parent in the tree (a PostgreSQL
//! backend of a closed connection) is therefore still counted, in the parent's
//! `cutime`/`cstime`. A figure is the difference of two samples, in clock
//! ticks (`USER_HZ`, 100 per second on Linux): 10 ms resolution per sample, so
//! a workload that uses under a second of CPU has a figure good to a few per
//! cent only.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::stats::{round, round_to};

/// The fields of one `/proc/<pid>/stat` line used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// The parent's process id.
    ppid: u32,
    /// `utime + stime + cutime + cstime`, clock ticks.
    ticks: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so the fields are
/// counted from the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = line.get(line.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), ..., utime (14), stime (15),
    // cutime (16), cstime (17), numbered as in proc(5).
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    let ppid = u32::try_from(field(4)?).ok()?;
    let ticks = field(14)? + field(15)? + field(16)? + field(17)?;
    Some(Stat { ppid, ticks })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process of the machine now, by id. Processes that exit while the
/// table is read are left out.
fn processes() -> HashMap<u32, Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            Some((pid, read_stat(pid)?))
        })
        .collect()
}

/// The ticks of `root` and of every process below it in `table`; `None` if
/// `root` is not in it.
fn tree_ticks(root: u32, table: &HashMap<u32, Stat>) -> Option<u64> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, stat) in table {
        children.entry(stat.ppid).or_default().push(pid);
    }
    let mut total = table.get(&root)?.ticks;
    let mut pending = vec![root];
    // A process is below `root` only once: each has one parent, and pid 0
    // (the parent of init) is never a root here.
    while let Some(pid) = pending.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if child != root {
                total += table[&child].ticks;
                pending.push(child);
            }
        }
    }
    Some(total)
}

/// Clock ticks to time.
fn ticks_to_duration(ticks: u64) -> Duration {
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

/// CPU time so far of process `root` and every live process below it.
pub(crate) fn tree_cpu(root: u32) -> Option<Duration> {
    tree_ticks(root, &processes()).map(ticks_to_duration)
}

/// CPU time so far of this process and of the children it has reaped.
pub(crate) fn own_cpu() -> Option<Duration> {
    read_stat(std::process::id()).map(|stat| ticks_to_duration(stat.ticks))
}

/// Where a measurement's CPU is read: the server's process (tree), if known,
/// and this process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMeter {
    /// The server's process id; `None` when it is not known (`--addr`).
    server: Option<u32>,
}

/// Both sides' CPU time at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    server: Option<Duration>,
    client: Option<Duration>,
}

impl CpuMeter {
    /// A meter for the server process `server` (with its descendants).
    pub(crate) fn new(server: Option<u32>) -> Self {
        Self { server }
    }

    /// Both sides now.
    pub(crate) fn sample(self) -> CpuSample {
        CpuSample {
            server: self.server.and_then(tree_cpu),
            client: own_cpu(),
        }
    }

    /// The CPU used since `before`, for `events` events.
    pub(crate) fn since(self, before: CpuSample, events: u64) -> CpuUse {
        before.until(self.sample(), events)
    }
}

impl CpuSample {
    /// The CPU used from this sample to `later`, for `events` events.
    pub(crate) fn until(self, later: Self, events: u64) -> CpuUse {
        let spent = |before: Option<Duration>, after: Option<Duration>| {
            Some(after?.saturating_sub(before?).as_secs_f64())
        };
        CpuUse {
            server_seconds: spent(self.server, later.server),
            client_seconds: spent(self.client, later.client),
            events,
        }
    }
}

/// CPU spent by the server and the client over a workload.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CpuUse {
    /// Server CPU seconds (user + system), if its process is known.
    pub(crate) server_seconds: Option<f64>,
    /// Client CPU seconds (user + system).
    pub(crate) client_seconds: Option<f64>,
    /// The events the CPU is divided by.
    pub(crate) events: u64,
}

impl CpuUse {
    fn per_event(&self, seconds: Option<f64>) -> Option<f64> {
        let seconds = seconds?;
        (self.events > 0).then(|| seconds * 1e6 / self.events as f64)
    }

    /// Server CPU µs per event.
    pub(crate) fn server_us_per_event(&self) -> Option<f64> {
        self.per_event(self.server_seconds)
    }

    /// Client CPU µs per event.
    pub(crate) fn client_us_per_event(&self) -> Option<f64> {
        self.per_event(self.client_seconds)
    }

    /// A µs-per-event figure for a table: one decimal, `-` when unknown.
    pub(crate) fn cell(us: Option<f64>) -> String {
        us.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"))
    }

    /// The fields this adds to a workload's JSON object.
    pub(crate) fn json_fields(&self) -> serde_json::Map<String, Value> {
        let fields = json!({
            "server_cpu_seconds": self.server_seconds.map(|s| round_to(s, 2)),
            "client_cpu_seconds": self.client_seconds.map(|s| round_to(s, 2)),
            "server_cpu_us_per_event": self.server_us_per_event().map(round),
            "client_cpu_us_per_event": self.client_us_per_event().map(round),
        });
        match fields {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// `figures` (a workload's JSON object) with `cpu`'s fields added.
pub(crate) fn with_cpu(mut figures: Value, cpu: Option<&CpuUse>) -> Value {
    if let (Some(object), Some(cpu)) = (figures.as_object_mut(), cpu) {
        object.extend(cpu.json_fields());
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_names() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime ...
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 10 0 0 0 150 25 7 3 20 0 4 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 17,
                ticks: 150 + 25 + 7 + 3
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 17"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn a_tree_sums_every_descendant_and_nothing_else() {
        let stat = |ppid, ticks| Stat { ppid, ticks };
        let table: HashMap<u32, Stat> = [
            (1, stat(0, 1_000)),
            (10, stat(1, 5)), // the root
            (11, stat(10, 7)),
            (12, stat(11, 11)), // a grandchild
            (13, stat(10, 13)),
            (20, stat(1, 100)), // a sibling: not counted
            (21, stat(20, 200)),
        ]
        .into_iter()
        .collect();
        assert_eq!(tree_ticks(10, &table), Some(5 + 7 + 11 + 13));
        assert_eq!(tree_ticks(12, &table), Some(11));
        assert_eq!(tree_ticks(99, &table), None);
    }

    #[test]
    fn a_live_child_is_part_of_this_process_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let table = processes();
        let own = std::process::id();
        let listed = table.get(&child.id()).map(|stat| stat.ppid);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(listed, Some(own));
        assert!(tree_ticks(own, &table) >= table.get(&own).map(|stat| stat.ticks));
    }

    #[test]
    fn work_shows_as_client_cpu() {
        let meter = CpuMeter::new(None);
        let before = meter.sample();
        // Spin until the kernel has charged at least two ticks (20 ms).
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while own_cpu()
            .zip(before.client)
            .is_none_or(|(now, then)| now.saturating_sub(then) < Duration::from_millis(20))
            && start.elapsed() < Duration::from_secs(10)
        {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let used = meter.since(before, 1_000);
        assert_eq!(used.server_seconds, None);
        assert!(used.client_seconds.is_some_and(|s| s >= 0.02), "{used:?}");
        assert!(used.client_us_per_event().is_some_and(|us| us >= 20.0));
        let none = CpuUse { events: 0, ..used };
        assert_eq!(none.client_us_per_event(), None);
        assert_eq!(CpuUse::cell(None), "-");
        assert_eq!(CpuUse::cell(Some(12.345)), "12.3");
    }

    #[test]
    fn ticks_become_time() {
        let per_second = rustix::param::clock_ticks_per_second();
        assert_eq!(ticks_to_duration(per_second * 3), Duration::from_secs(3));
        assert_eq!(ticks_to_duration(0), Duration::ZERO);
    }
}
