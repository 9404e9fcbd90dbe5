//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), read from Linux's `/proc/self` when
//! `/metrics` is scraped, as every Prometheus client library does. Reading them costs a few
//! small file reads; nothing touches the database.

/// Clock ticks per second of the times in `/proc/<pid>/stat`: Linux fixes `USER_HZ` at 100 for
/// user space on every architecture it supports.
const USER_HZ: f64 = 100.0;

/// One reading of the process' resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time used.
    pub cpu_seconds: f64,
    /// Resident memory.
    pub resident_bytes: u64,
    /// Virtual memory.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors, when it is not unlimited.
    pub max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// The families this module writes, with their type and help text.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    ),
    (
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    ),
    (
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
    ),
    (
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
    ),
    (
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
    ),
    (
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    ),
];

/// Appends the process families to a Prometheus text exposition. They are written here rather
/// than recorded through `metrics`, whose counters hold whole numbers: CPU time needs its
/// fractions. On a system without `/proc` nothing is appended (and the failure is logged at
/// debug level).
pub fn append_to(exposition: &mut String) {
    use std::fmt::Write as _;
    let stats = match read() {
        Ok(stats) => stats,
        Err(error) => {
            tracing::debug!(error = format!("{error:#}"), "process metrics unavailable");
            return;
        }
    };
    let values = [
        stats.cpu_seconds,
        stats.resident_bytes as f64,
        stats.virtual_bytes as f64,
        stats.open_fds as f64,
        stats.max_fds.map_or(f64::INFINITY, |max| max as f64),
        stats.start_time_seconds,
    ];
    if !exposition.is_empty() && !exposition.ends_with('\n') {
        exposition.push('\n');
    }
    for (&(name, kind, help), value) in FAMILIES.iter().zip(values) {
        let value = if value.is_infinite() {
            "+Inf".to_owned()
        } else {
            value.to_string()
        };
        let _ = write!(
            exposition,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    }
}

/// Reads the process' resources from `/proc/self`.
pub fn read() -> anyhow::Result<ProcessStats> {
    use anyhow::Context as _;
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .context("reading /proc/stat")
        .and_then(|text| boot_time(&text))?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .context("listing /proc/self/fd")?
        .count() as u64;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    parse(&stat, &status, boot_time, open_fds, &limits)
}

/// Builds the reading from the texts of `/proc/self/stat` and `/proc/self/status`, the boot
/// time (seconds since the epoch), the number of open descriptors and the text of
/// `/proc/self/limits`.
fn parse(
    stat: &str,
    status: &str,
    boot_time: f64,
    open_fds: u64,
    limits: &str,
) -> anyhow::Result<ProcessStats> {
    // The command name (field 2) is in parentheses and may hold spaces: fields after it are
    // counted from the last `)`.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("/proc/self/stat has no command name"))?;
    // `fields[0]` is field 3 (state) of proc(5).
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> anyhow::Result<u64> {
        fields
            .get(number - 3)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/self/stat lacks field {number}"))
    };
    let cpu_ticks = field(14)? + field(15)?;
    let start_ticks = field(22)?;
    let max_fds = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok());
    Ok(ProcessStats {
        cpu_seconds: cpu_ticks as f64 / USER_HZ,
        resident_bytes: status_bytes(status, "VmRSS")?,
        virtual_bytes: status_bytes(status, "VmSize")?,
        open_fds,
        max_fds,
        start_time_seconds: boot_time + start_ticks as f64 / USER_HZ,
    })
}

/// The `btime` line of `/proc/stat`: when the system booted, in seconds since the epoch.
fn boot_time(proc_stat: &str) -> anyhow::Result<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/stat has no btime line"))
}

/// A `kB` line of `/proc/self/status` (`VmRSS:    1234 kB`), in bytes.
fn status_bytes(status: &str, key: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no {key} line"))
}

#[cfg(test)]
fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_in_the_name_is_read_by_field_number() {
        let stat = "4242 (hook line) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 \
                    9 0 1000 123456789 1024 18446744073709551615";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let status = "Name:\thookline\nVmSize:\t  120560 kB\nVmRSS:\t   20480 kB\n";
        let stats = parse(stat, status, 1_700_000_000.0, 12, limits).expect("parses");
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.virtual_bytes, 120_560 * 1024);
        assert_eq!(stats.resident_bytes, 20 * 1024 * 1024);
        assert_eq!(stats.open_fds, 12);
        assert_eq!(stats.max_fds, Some(1024));
        assert_eq!(stats.start_time_seconds, 1_700_000_010.0);
    }

    #[test]
    fn this_process_can_be_read_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let stats = read().expect("reads /proc/self");
        assert!(stats.resident_bytes > 0);
        assert!(stats.open_fds > 0);
        assert!(stats.start_time_seconds <= now_seconds() + 1.0);
        assert!(stats.start_time_seconds > 1_000_000_000.0);
    }
}
