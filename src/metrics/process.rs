//! What the process uses, read from `/proc/self` at each scrape: the standard `process_*`
//! series every Prometheus client library exposes (CPU time, memory, file descriptors,
//! threads, start time), without their prefix so existing dashboards find them.
//!
//! Read by hand rather than through a crate: it is a few text files of a documented format
//! (proc(5)), and the crates that do it bring a second metrics library or `unsafe` libc
//! calls. Where `/proc` is missing (not Linux) or a file does not parse, that series is
//! left out of the scrape rather than reported as 0.

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of the times in `/proc/<pid>/stat`: the kernel reports them in
/// `USER_HZ`, which Linux fixes at 100 on every architecture (it is `sysconf(_SC_CLK_TCK)`,
/// not the kernel's internal `HZ`).
const USER_HZ: f64 = 100.0;

/// One reading of the process; each part is `None` when it could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessSample {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Threads of the process.
    pub threads: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessSample {
    /// Reads `/proc/self` now.
    pub fn read() -> Self {
        Self::read_from(Path::new("/proc"), Path::new("/proc/self"))
    }

    /// Reads the files of `proc_root` (for `/proc/stat`) and `process` (a `/proc/<pid>`).
    pub fn read_from(proc_root: &Path, process: &Path) -> Self {
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        let stat = read(&process.join("stat")).and_then(|s| parse_stat(&s));
        let status = read(&process.join("status"));
        let kib = |key: &str| {
            status
                .as_deref()
                .and_then(|s| status_value(s, key))
                .map(|kib| kib.saturating_mul(1024))
        };
        let boot_time = read(&proc_root.join("stat")).and_then(|s| boot_time(&s));
        Self {
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / USER_HZ),
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: kib("VmSize:"),
            open_fds: std::fs::read_dir(process.join("fd"))
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: read(&process.join("limits")).and_then(|s| max_open_files(&s)),
            threads: status.as_deref().and_then(|s| status_value(s, "Threads:")),
            start_time_seconds: match (stat, boot_time) {
                (Some(s), Some(boot)) => Some(boot as f64 + s.start_ticks as f64 / USER_HZ),
                _ => None,
            },
        }
    }
}

/// Encodes the `process_*` series from a fresh `ProcessSample` at each scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = ProcessSample::read();
        fn put(
            encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, unit: Option<Unit>,
            metric: &impl EncodeMetric,
        ) -> Result<(), std::fmt::Error> {
            let descriptor =
                encoder.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?;
            metric.encode(descriptor)
        }
        let e = &mut encoder;
        if let Some(v) = s.cpu_seconds {
            put(
                e,
                "process_cpu",
                "Total user and system CPU time spent",
                Some(Unit::Seconds),
                &ConstCounter::new(v),
            )?;
        }
        if let Some(v) = s.resident_bytes {
            put(
                e,
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                &ConstGauge::new(v),
            )?;
        }
        if let Some(v) = s.virtual_bytes {
            put(
                e,
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                &ConstGauge::new(v),
            )?;
        }
        if let Some(v) = s.open_fds {
            put(
                e,
                "process_open_fds",
                "Open file descriptors",
                None,
                &ConstGauge::new(v),
            )?;
        }
        if let Some(v) = s.max_fds {
            put(
                e,
                "process_max_fds",
                "Limit on open file descriptors",
                None,
                &ConstGauge::new(v),
            )?;
        }
        if let Some(v) = s.threads {
            put(
                e,
                "process_threads",
                "Threads of the process",
                None,
                &ConstGauge::new(v),
            )?;
        }
        if let Some(v) = s.start_time_seconds {
            put(
                e,
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                &ConstGauge::new(v),
            )?;
        }
        Ok(())
    }
}

/// The fields of `/proc/<pid>/stat` the sample uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; fields are 1-based in proc(5).
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
    })
}

/// The number after `key` in `/proc/<pid>/status` (`VmRSS:   1234 kB`, `Threads: 7`).
fn status_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The boot time (`btime`, seconds since the epoch) in `/proc/stat`.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`None` when unlimited).
fn max_open_files(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may choose.
        let line = "4242 (pii vault) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    250 50 0 0 20 0 9 0 123456 104857600 2560 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 250,
                stime: 50,
                start_ticks: 123456
            })
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
    }

    #[test]
    fn a_fake_proc_tree_is_read_into_a_sample() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let root = dir.path();
        let me = root.join("self");
        std::fs::create_dir_all(me.join("fd")).expect("mkdir");
        for fd in ["0", "1", "2"] {
            std::fs::write(me.join("fd").join(fd), "").expect("fd");
        }
        std::fs::write(
            root.join("stat"),
            "cpu 1 2 3\nbtime 1700000000\nprocesses 9\n",
        )
        .expect("stat");
        std::fs::write(
            me.join("stat"),
            "7 (pii-vault) S 1 7 7 0 -1 0 0 0 0 0 300 100 0 0 20 0 5 0 1000 0 0",
        )
        .expect("stat");
        std::fs::write(
            me.join("status"),
            "Name:\tpii-vault\nVmSize:\t  20480 kB\nVmRSS:\t    512 kB\nThreads:\t5\n",
        )
        .expect("status");
        std::fs::write(
            me.join("limits"),
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max open files            1024                 524288               files\n",
        )
        .expect("limits");
        let sample = ProcessSample::read_from(root, &me);
        assert_eq!(
            sample,
            ProcessSample {
                cpu_seconds: Some(4.0),
                resident_bytes: Some(512 * 1024),
                virtual_bytes: Some(20480 * 1024),
                open_fds: Some(3),
                max_fds: Some(1024),
                threads: Some(5),
                start_time_seconds: Some(1_700_000_010.0),
            }
        );
        // Nothing there: every part is missing, none is made up.
        assert_eq!(
            ProcessSample::read_from(&root.join("none"), &root.join("none")),
            ProcessSample::default()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read() {
        let s = ProcessSample::read();
        assert!(s.resident_bytes.is_some_and(|b| b > 0), "{s:?}");
        assert!(s.threads.is_some_and(|t| t >= 1), "{s:?}");
        assert!(s.open_fds.is_some_and(|n| n >= 1), "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let start = s.start_time_seconds.expect("start time");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}
