//! Where the machine's CPU went during one run (`--only`): read from `/proc/stat` (the whole
//! machine, with the time the hypervisor took, "steal") and `/proc/self/stat` (this
//! process: the load generator and the vault in it), before and after.

/// Counters at one moment, in clock ticks (`USER_HZ`, 100 a second on Linux).
pub struct CpuSample {
    /// user, nice, system, idle, iowait, irq, softirq, steal, for all CPUs together.
    machine: [u64; 8],
    switches: u64,
    process: u64,
}

impl CpuSample {
    /// `None` where `/proc` cannot be read (not Linux): the run then prints no CPU line.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
        let mut machine = [0u64; 8];
        for (slot, value) in machine.iter_mut().zip(cpu.split_whitespace().skip(1)) {
            *slot = value.parse().ok()?;
        }
        let switches = stat
            .lines()
            .find_map(|l| l.strip_prefix("ctxt "))?
            .trim()
            .parse()
            .ok()?;
        // Fields after the command name (which is in parentheses and may hold spaces):
        // utime and stime are the 12th and 13th of them.
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_name = own.rsplit_once(')')?.1;
        let mut fields = after_name.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(Self {
            machine,
            switches,
            process: utime + stime,
        })
    }

    /// One line: where the CPU went between `self` and `later`, and per request.
    pub fn report(&self, later: &Self, requests: u64) -> String {
        let d: Vec<f64> = self
            .machine
            .iter()
            .zip(&later.machine)
            .map(|(a, b)| b.saturating_sub(*a) as f64)
            .collect();
        let total: f64 = d.iter().sum::<f64>().max(1.0);
        let share = |i: usize| 100.0 * d[i] / total;
        let busy = 100.0 - share(3) - share(4) - share(7);
        let process = later.process.saturating_sub(self.process) as f64;
        let requests = requests.max(1) as f64;
        // Ticks are hundredths of a second: 10,000 µs each.
        format!(
            "machine busy {busy:.0}% (user {:.0}, system {:.0}, softirq {:.0}), idle {:.0}%, \
             iowait {:.0}%, steal {:.0}%; this process {:.0} µs CPU per request; \
             {:.1} context switches per request",
            share(0) + share(1),
            share(2) + share(5),
            share(6),
            share(3),
            share(4),
            share(7),
            process * 10_000.0 / requests,
            later.switches.saturating_sub(self.switches) as f64 / requests,
        )
    }
}
