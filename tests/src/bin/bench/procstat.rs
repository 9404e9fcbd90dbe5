//! Memory and CPU of processes, read from `/proc` (Linux only).
//!
//! RSS comes from `/proc/<pid>/status` (`VmRSS` now, `VmHWM` the peak since the process
//! started); CPU time from fields 14 and 15 (`utime`, `stime`) of `/proc/<pid>/stat`, in clock
//! ticks. The whole machine's busy time comes from the first line of `/proc/stat`, so a report
//! can say how much of the 2 cores went to processes outside the benchmark (compilers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`; 100 on every Linux we know).
pub fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// Memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size since the process started (`VmHWM`).
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    })
}

/// CPU time (user + system) `pid` has used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (_, fields) = parse_stat(&stat).with_context(|| format!("parsing {path}"))?;
    Ok(fields.0 + fields.1)
}

/// `(comm, (utime, stime))` of one `/proc/<pid>/stat` line. `comm` is in parentheses and may
/// itself contain spaces and parentheses, so the fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<(String, (u64, u64))> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // After ")": field 3 (state) is index 0, so utime (field 14) is index 11, stime index 12.
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime = rest.get(11)?.parse().ok()?;
    let stime = rest.get(12)?.parse().ok()?;
    Some((comm, (utime, stime)))
}

/// CPU ticks used so far by every process whose name (`comm`) is `name`, summed (Postgres runs
/// one process per connection). Processes that exited are not counted.
pub fn cpu_ticks_by_name(name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat))
        .filter(|(comm, _)| comm == name)
        .map(|(_, (utime, stime))| utime + stime)
        .sum()
}

/// Busy and total ticks of the whole machine so far (first line of `/proc/stat`).
pub fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle (4th) and iowait (5th) are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The load average over 1, 5 and 15 minutes, as `/proc/loadavg` shows it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A point-in-time CPU reading of everything a report accounts for.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    /// Ticks per watched process, by label.
    pub processes: HashMap<String, u64>,
    /// Ticks of every `postgres` process.
    pub postgres: u64,
    /// Ticks of every `redis-server` process.
    pub redis: u64,
    /// Ticks of the RabbitMQ (`beam.smp`) and NATS (`nats-server`) servers.
    pub brokers: u64,
    /// Busy ticks of the whole machine.
    pub machine_busy: u64,
    /// All ticks of the whole machine (busy + idle, summed over cores).
    pub machine_total: u64,
    /// When it was taken.
    pub at: Option<std::time::Instant>,
}

/// Samples the memory of the watched processes while a benchmark runs, and takes CPU snapshots.
#[derive(Clone)]
pub struct Watch {
    processes: Arc<Mutex<Vec<(String, u32)>>>,
    samples: Arc<Mutex<HashMap<String, Vec<u64>>>>,
}

impl Watch {
    /// Starts sampling every `interval` until the returned watch is dropped by every holder
    /// (the sampling task holds only a weak reference).
    pub fn start(interval: Duration) -> Self {
        let watch = Self {
            processes: Arc::new(Mutex::new(Vec::new())),
            samples: Arc::new(Mutex::new(HashMap::new())),
        };
        let processes = Arc::downgrade(&watch.processes);
        let samples = Arc::downgrade(&watch.samples);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let (Some(processes), Some(samples)) = (processes.upgrade(), samples.upgrade())
                else {
                    return;
                };
                let watched = processes.lock().expect("watch lock").clone();
                for (label, pid) in watched {
                    if let Ok(memory) = memory(pid) {
                        samples
                            .lock()
                            .expect("watch lock")
                            .entry(label)
                            .or_default()
                            .push(memory.rss_kib);
                    }
                }
            }
        });
        watch
    }

    /// Watches `pid` under `label` from now on.
    pub fn add(&self, label: &str, pid: u32) {
        self.processes
            .lock()
            .expect("watch lock")
            .push((label.to_owned(), pid));
    }

    /// Forgets the RSS samples taken so far (to sample only the measured window).
    pub fn reset_samples(&self) {
        self.samples.lock().expect("watch lock").clear();
    }

    /// RSS samples of `label` so far, in KiB.
    pub fn rss_samples(&self, label: &str) -> Vec<u64> {
        self.samples
            .lock()
            .expect("watch lock")
            .get(label)
            .cloned()
            .unwrap_or_default()
    }

    /// The watched processes, in the order they were added.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.processes.lock().expect("watch lock").clone()
    }

    /// CPU ticks of everything now.
    pub fn cpu_snapshot(&self) -> CpuSnapshot {
        let processes = self
            .processes()
            .into_iter()
            .filter_map(|(label, pid)| Some((label, cpu_ticks(pid).ok()?)))
            .collect();
        let (machine_busy, machine_total) = machine_ticks().unwrap_or((0, 0));
        CpuSnapshot {
            processes,
            postgres: cpu_ticks_by_name("postgres"),
            redis: cpu_ticks_by_name("redis-server"),
            brokers: cpu_ticks_by_name("beam.smp") + cpu_ticks_by_name("nats-server"),
            machine_busy,
            machine_total,
            at: Some(std::time::Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_process_names_parse() {
        let line = "42 (tokio (worker) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0";
        let (comm, (utime, stime)) = parse_stat(line).expect("parses");
        assert_eq!(comm, "tokio (worker) x");
        assert_eq!((utime, stime), (250, 75));
    }
}
