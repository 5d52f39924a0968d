//! Who a pid is: comm, parent, executable and cgroup.
//!
//! The kernel gives pid, parent and comm with every flow and event; the
//! executable and cgroup come from `/proc` the first time a pid shows up,
//! which is usually while it is still alive. Short-lived processes that are
//! gone by then keep what the kernel told us.

use std::{collections::HashMap, fs};

/// One process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id (0 = unknown).
    pub ppid: u32,
    /// The kernel's comm.
    pub comm: String,
    /// Executable path, when /proc still had it.
    pub exe: Option<String>,
    /// The process's own comm (its main thread's, from /proc), when /proc
    /// still had it: `comm` is that of whichever thread the kernel saw,
    /// which may have named itself (`tokio-runtime-w`).
    pub main_comm: Option<String>,
    /// cgroup v2 path, when /proc still had it.
    pub cgroup: Option<String>,
    /// Monotonic ns of its exit, if seen.
    pub exited_ns: Option<u64>,
}

impl ProcessInfo {
    /// What `/proc` says of a live `pid`, with the kernel's `comm` (which
    /// thread the kernel saw) and `ppid`; what `/proc` no longer has stays
    /// unknown.
    pub fn read(pid: u32, ppid: u32, comm: &str) -> Self {
        Self {
            pid,
            ppid,
            comm: comm.to_owned(),
            exe: read_exe(pid),
            main_comm: read_comm(pid),
            cgroup: read_cgroup(pid),
            exited_ns: None,
        }
    }
}

/// Every pid seen so far.
#[derive(Debug, Default)]
pub struct ProcessTable {
    by_pid: HashMap<u32, ProcessInfo>,
}

impl ProcessTable {
    /// Notes a pid; reads /proc only the first time (or after the pid was
    /// reused by a process with another comm).
    pub fn see(&mut self, pid: u32, ppid: u32, comm: &str) -> &ProcessInfo {
        let stale = self
            .by_pid
            .get(&pid)
            .is_some_and(|known| known.comm != comm && !comm.is_empty());
        if stale || !self.by_pid.contains_key(&pid) {
            self.by_pid.insert(pid, ProcessInfo::read(pid, ppid, comm));
        }
        let info = self.by_pid.entry(pid).or_default();
        if info.ppid == 0 {
            info.ppid = ppid;
        }
        info
    }

    /// Marks a pid as exited.
    pub fn exited(&mut self, pid: u32, ppid: u32, comm: &str, ts_ns: u64) {
        self.see(pid, ppid, comm);
        if let Some(info) = self.by_pid.get_mut(&pid) {
            info.exited_ns = Some(ts_ns);
        }
    }

    /// What we know of `pid`.
    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.by_pid.get(&pid)
    }

    /// Forgets processes that exited before `cutoff_ns` (bounded memory for
    /// a long-running agent).
    pub fn forget_exited_before(&mut self, cutoff_ns: u64) {
        self.by_pid
            .retain(|_, info| info.exited_ns.is_none_or(|exited| exited >= cutoff_ns));
    }

    /// Number of processes known.
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    /// Whether no process is known.
    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

fn read_exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|path| path.to_string_lossy().into_owned())
}

fn read_comm(pid: u32) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_owned()).filter(|c| !c.is_empty())
}

/// The cgroup v2 line (`0::/system.slice/nginx.service`).
fn read_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_gets_its_executable_and_cgroup() {
        let mut table = ProcessTable::default();
        let me = std::process::id();
        let info = table.see(me, 0, "test").clone();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.exe.as_deref(), Some(exe.to_string_lossy().as_ref()));
        assert!(info.cgroup.as_deref().is_some_and(|c| c.starts_with('/')));
    }

    #[test]
    fn exited_processes_are_forgotten_after_the_cutoff() {
        let mut table = ProcessTable::default();
        table.exited(999_999_999, 1, "gone", 10);
        table.see(999_999_998, 1, "alive");
        table.forget_exited_before(20);
        assert!(table.get(999_999_999).is_none());
        assert_eq!(table.len(), 1);
    }
}
