//! Where a run happened: date, CPU, memory, kernel, and the filesystem under the
//! data directory (a benchmark on tmpfs measures nothing durable).

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// A description of the machine and the data directory's filesystem.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// UTC date and time of the run, `YYYY-MM-DD HH:MM:SS UTC`.
    pub(crate) date: String,
    /// CPUs this process may use.
    pub(crate) cpus: usize,
    /// CPU model name, if the kernel says.
    pub(crate) cpu_model: Option<String>,
    /// Total memory, GiB.
    pub(crate) memory_gib: Option<f64>,
    /// Kernel release.
    pub(crate) kernel: Option<String>,
    /// Filesystem type, device and mount point holding the data directory.
    pub(crate) filesystem: Option<(String, String, String)>,
}

impl Machine {
    /// Describes this machine, with the filesystem that holds `dir`.
    pub(crate) fn describe(dir: &Path) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            date: utc_now(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: field(&cpuinfo, "model name"),
            memory_gib: field(&meminfo, "MemTotal")
                .and_then(|total| total.trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kib| kib / (1024.0 * 1024.0)),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_owned()),
            filesystem: filesystem_of(dir),
        }
    }

    /// Whether the data directory is on a memory filesystem, where fsync is free.
    pub(crate) fn on_memory_fs(&self) -> bool {
        self.filesystem
            .as_ref()
            .is_some_and(|(kind, _, _)| kind == "tmpfs" || kind == "ramfs")
    }

    /// One line for the report header.
    pub(crate) fn summary(&self) -> String {
        let mut parts = vec![format!("{} CPUs", self.cpus)];
        if let Some(model) = &self.cpu_model {
            parts.push(model.clone());
        }
        if let Some(gib) = self.memory_gib {
            parts.push(format!("{gib:.1} GiB RAM"));
        }
        if let Some(kernel) = &self.kernel {
            parts.push(format!("Linux {kernel}"));
        }
        parts.join(", ")
    }

    /// The filesystem as text, e.g. `ext4 on /dev/vda (mounted at /)`.
    pub(crate) fn filesystem_summary(&self) -> String {
        match &self.filesystem {
            Some((kind, device, mount)) => format!("{kind} on {device} (mounted at {mount})"),
            None => "unknown".to_owned(),
        }
    }

    /// The description as a JSON object.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "date": self.date,
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "memory_gib": self.memory_gib.map(|gib| (gib * 10.0).round() / 10.0),
            "kernel": self.kernel,
            "filesystem": self.filesystem_summary(),
        })
    }
}

/// The value of the first `name : value` line of a /proc file.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    })
}

/// The longest mount point in /proc/mounts that contains `dir`.
fn filesystem_of(dir: &Path) -> Option<(String, String, String)> {
    let dir = dir.canonicalize().ok()?;
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            // /proc/mounts escapes spaces in paths as \040.
            let mount = fields.next()?.replace("\\040", " ");
            let kind = fields.next()?;
            dir.starts_with(&mount)
                .then(|| (kind.to_owned(), device.to_owned(), mount))
        })
        .max_by_key(|(_, _, mount)| mount.len())
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (year, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let time = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3_600,
        time % 3_600 / 60,
        time % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
    }

    #[test]
    fn proc_fields() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n";
        assert_eq!(
            field(text, "model name").as_deref(),
            Some("Some CPU @ 2.0GHz")
        );
        assert_eq!(field(text, "absent"), None);
    }
}
