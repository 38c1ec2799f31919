//! Holding one in-process vault node to a CPU budget, as if it were a process on a machine
//! of its own: every thread of the node's runtime joins a cgroup with a CPU quota when it
//! starts (threads a node thread creates, such as the PostgreSQL store's, join with it).
//!
//! - With a writable cgroup v1 `cpu` controller (`/sys/fs/cgroup/cpu`, as root), each node
//!   gets a group of its own with `cpu.cfs_quota_us` set to its share of a core.
//! - Otherwise each node's threads are pinned to one core of their own with `taskset`, and
//!   the budget is a whole core.

use std::path::PathBuf;

/// How a node's threads are held.
#[derive(Clone, Debug)]
pub enum Confine {
    /// A cgroup v1 `cpu` group (its directory).
    Cgroup(PathBuf),
    /// Pinned to this core.
    Core(usize),
}

const CPU_CONTROLLER: &str = "/sys/fs/cgroup/cpu";
const PERIOD_MICROS: u64 = 100_000;

impl Confine {
    /// The budget of node `n` (from 0): `cpus` of a core in a cgroup, if one can be made,
    /// else core `n`.
    pub fn node(n: usize, cpus: f64) -> Self {
        match Self::cgroup(n, cpus) {
            Ok(dir) => Self::Cgroup(dir),
            Err(why) => {
                if n == 0 {
                    println!("# no CPU quota ({why}): each node is pinned to a core of its own");
                }
                let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
                Self::Core(n % cores)
            }
        }
    }

    fn cgroup(n: usize, cpus: f64) -> Result<PathBuf, String> {
        let dir = PathBuf::from(CPU_CONTROLLER)
            .join(format!("pii-vault-bench-{}-node{n}", std::process::id()));
        let quota = (cpus * PERIOD_MICROS as f64).round() as u64;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let set = |file: &str, value: u64| {
            std::fs::write(dir.join(file), value.to_string())
                .map_err(|e| format!("{}/{file}: {e}", dir.display()))
        };
        set("cpu.cfs_period_us", PERIOD_MICROS)?;
        set("cpu.cfs_quota_us", quota)?;
        Ok(dir)
    }

    /// What the budget is, for the report.
    pub fn describe(&self, cpus: f64) -> String {
        match self {
            Self::Cgroup(_) => format!("cgroup cpu quota of {cpus:.2} core"),
            Self::Core(core) => format!("pinned to core {core}"),
        }
    }

    /// Puts the calling thread under the budget (called as each of the node's threads
    /// starts). A thread that cannot join runs unconfined, and says so once.
    pub fn enter(&self) {
        let joined = match (self, this_thread()) {
            (Self::Cgroup(dir), Some(tid)) => std::fs::write(dir.join("tasks"), tid).is_ok(),
            (Self::Core(core), Some(tid)) => std::process::Command::new("taskset")
                .args(["-p", "-c", &core.to_string(), &tid])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            (_, None) => false,
        };
        if !joined {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!("a node thread could not be confined: {self:?}"));
        }
    }

    /// Removes the cgroup once its threads are gone (waits a few seconds for them; says so
    /// if one stays).
    pub fn remove(&self) {
        if let Self::Cgroup(dir) = self {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            eprintln!("could not remove {}", dir.display());
        }
    }
}

/// The calling thread's id, from `/proc/thread-self` (a link to `<pid>/task/<tid>`).
fn this_thread() -> Option<String> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    Some(link.file_name()?.to_str()?.to_owned())
}
