//! `resonance doctor`: one screen saying what this host offers and what
//! the agent will use, and for each missing piece what to do. Every check
//! reads the host as it is (the kernel, `/proc`, `/sys`, the sockets), and
//! with privileges each probe mode is loaded and detached again, so "loads"
//! means it loaded here, now.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    config::Config,
    observer::{Observer, ObserverOptions},
    probe::{ProbeMode, VMLINUX_BTF},
};

/// Arguments of `resonance doctor`.
#[derive(clap::Args)]
pub struct Args {
    /// Configuration file whose paths and ports are checked (default: the
    /// packaged one if present, else the embedded defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Skip loading the probes (each mode is otherwise attached and
    /// detached once).
    #[arg(long)]
    pub no_load: bool,
    /// One JSON object instead of the screen.
    #[arg(long)]
    pub json: bool,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// What the agent needs or uses is there.
    Ok,
    /// Not needed to run, but something works less well or not at all.
    Warn,
    /// The agent cannot run until this is fixed.
    Missing,
    /// Informational.
    Info,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Missing => "MISSING",
            Self::Info => "-",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub what: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do about it, when something is to be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(what: &'static str, status: Status, found: impl Into<String>) -> Check {
    Check {
        what,
        status,
        found: found.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Capabilities the agent uses, and what for.
const CAPABILITIES: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load the eBPF programs and maps"),
    (
        38,
        "CAP_PERFMON",
        "attach them to tracepoints, read kernel memory",
    ),
    (
        21,
        "CAP_SYS_ADMIN",
        "stands in for BPF and PERFMON before 5.8",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "read other users' /proc/PID/exe, borrow a pipe's descriptor",
    ),
    (2, "CAP_DAC_READ_SEARCH", "reach other users' /proc/PID"),
    (
        24,
        "CAP_SYS_RESOURCE",
        "lift RLIMIT_MEMLOCK on kernels before 5.11",
    ),
];

/// Runs the checks and prints them; fails when something the agent needs
/// is missing, so scripts can rely on the exit status.
pub fn run(args: Args) -> Result<()> {
    let config = load_config(args.config.as_deref())?;
    let checks = gather(&config, !args.no_load);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", render(&checks));
    }
    let missing: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Missing)
        .map(|c| c.what)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("the agent cannot run here yet: {}", missing.join(", "))
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path, true)?),
        None => {
            let packaged = Path::new("/etc/resonance/resonance.toml");
            Ok(Config::load(packaged, false)?)
        }
    }
}

/// The report as one screen: a column of marks, what, what was found, and
/// the fix indented under it.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.what.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:>7}  {:<width$}  {}\n",
            c.status.mark(),
            c.what,
            c.found
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:>7}  {:<width$}  -> {fix}\n", "", ""));
        }
    }
    out
}

/// Every check, in the order the agent meets them.
pub fn gather(config: &Config, load: bool) -> Vec<Check> {
    let mut checks = vec![kernel(), btf()];
    let effective = effective_capabilities();
    checks.push(privileges(effective));
    checks.push(tracefs());
    let privileged = effective.is_some_and(can_load);
    checks.extend(modes(load, privileged));
    checks.extend(pipe_limits());
    checks.push(state_dir(&config.state_dir));
    checks.push(socket("control socket", &config.control_socket));
    checks.push(socket("broker socket", &config.broker.socket));
    checks.push(metrics(config.metrics_listen));
    checks
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn kernel() -> Check {
    match read_trimmed("/proc/sys/kernel/osrelease") {
        Some(release) => check("kernel", Status::Info, release),
        None => check(
            "kernel",
            Status::Warn,
            "/proc/sys/kernel/osrelease unreadable",
        ),
    }
}

fn btf() -> Check {
    match std::fs::metadata(VMLINUX_BTF) {
        Ok(meta) => check(
            "kernel BTF",
            Status::Ok,
            format!("{VMLINUX_BTF} ({} KiB)", meta.len() / 1024),
        ),
        Err(_) => check("kernel BTF", Status::Missing, format!("no {VMLINUX_BTF}"))
            .fix("a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's are, from 5.10)"),
    }
}

/// `CapEff` of this process.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn has(effective: u64, cap: u32) -> bool {
    effective & (1u64 << cap) != 0
}

fn can_load(effective: u64) -> bool {
    has(effective, 21) || (has(effective, 39) && has(effective, 38))
}

fn privileges(effective: Option<u64>) -> Check {
    let Some(effective) = effective else {
        return check("capabilities", Status::Warn, "/proc/self/status unreadable");
    };
    let held: Vec<&str> = CAPABILITIES
        .iter()
        .filter(|(cap, _, _)| has(effective, *cap))
        .map(|(_, name, _)| *name)
        .collect();
    let found = if held.is_empty() {
        "none of the ones it uses".to_owned()
    } else {
        held.join(" ")
    };
    if can_load(effective) {
        check("capabilities", Status::Ok, found)
    } else {
        let uses: Vec<String> = CAPABILITIES
            .iter()
            .map(|(_, name, why)| format!("{name} ({why})"))
            .collect();
        check("capabilities", Status::Missing, found).fix(format!(
            "run as root or with CAP_BPF and CAP_PERFMON; the agent uses {}",
            uses.join(", ")
        ))
    }
}

fn tracefs() -> Check {
    let events = Path::new(crate::probe::TRACEFS).join("events");
    if events.is_dir() {
        check("tracefs", Status::Ok, crate::probe::TRACEFS)
    } else {
        check("tracefs", Status::Warn, "not mounted")
            .fix("the agent mounts it at start; or: mount -t tracefs tracefs /sys/kernel/tracing")
    }
}

fn modes(load: bool, privileged: bool) -> Vec<Check> {
    if !load {
        return vec![check("probe modes", Status::Info, "not loaded (--no-load)")];
    }
    if !privileged {
        return vec![
            check("probe modes", Status::Info, "not tried without privileges")
                .fix("run resonance doctor as root to load each mode once"),
        ];
    }
    let mut first_loading = None;
    let mut checks = Vec::new();
    for mode in ProbeMode::PREFERENCE {
        let options = ObserverOptions {
            mode: Some(mode),
            ..ObserverOptions::default()
        };
        let what = match mode {
            ProbeMode::TpBtf => "mode tp_btf",
            ProbeMode::RawTp => "mode raw_tp",
            ProbeMode::Tracepoint => "mode tracepoint",
        };
        match Observer::start(&options) {
            Ok(observer) => {
                let hooks = observer.attached();
                drop(observer);
                let used = first_loading.is_none();
                first_loading.get_or_insert(mode);
                let found = if used {
                    format!("loads ({hooks} hooks); the agent uses this one")
                } else {
                    format!("loads ({hooks} hooks)")
                };
                checks.push(check(what, Status::Ok, found));
            }
            Err(error) => {
                checks.push(check(what, Status::Warn, format!("refused: {error}")));
            }
        }
    }
    if first_loading.is_none() {
        checks.push(
            check("probe modes", Status::Missing, "no mode loads")
                .fix("see the errors above; docs/kernels.md lists what each mode needs"),
        );
    }
    checks
}

fn pipe_limits() -> Vec<Check> {
    let page = crate::sys::page_size().unwrap_or(0);
    let max = read_trimmed("/proc/sys/fs/pipe-max-size").unwrap_or_else(|| "?".into());
    let soft = read_trimmed("/proc/sys/fs/pipe-user-pages-soft").unwrap_or_else(|| "?".into());
    let hard = read_trimmed("/proc/sys/fs/pipe-user-pages-hard").unwrap_or_else(|| "?".into());
    let pages = |text: &str| {
        text.parse::<u64>().map_or_else(
            |_| text.to_owned(),
            |n| {
                if n == 0 {
                    "none".to_owned()
                } else {
                    format!("{n} pages ({} MiB)", n * page / (1 << 20))
                }
            },
        )
    };
    vec![check(
        "pipe limits",
        Status::Info,
        format!(
            "largest pipe {max} bytes; per user: soft {}, hard {}; page {page} bytes",
            pages(&soft),
            pages(&hard)
        ),
    )]
}

fn state_dir(dir: &Path) -> Check {
    let found = dir.display().to_string();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let probe = dir.join(format!(".doctor-{}", std::process::id()));
            match std::fs::write(&probe, b"") {
                Ok(()) => {
                    let _ = std::fs::remove_file(&probe);
                    check("state directory", Status::Ok, format!("{found} (writable)"))
                }
                Err(error) => check(
                    "state directory",
                    Status::Missing,
                    format!("{found}: {error}"),
                )
                .fix("the agent keeps its store there: make it writable by the user it runs as"),
            }
        }
        Ok(_) => check(
            "state directory",
            Status::Missing,
            format!("{found} is not a folder"),
        )
        .fix("remove it or point --state-dir elsewhere"),
        Err(_) => check(
            "state directory",
            Status::Info,
            format!("{found} (created at start)"),
        ),
    }
}

fn socket(what: &'static str, path: &Path) -> Check {
    let found = path.display().to_string();
    if !path.exists() {
        return check(what, Status::Info, format!("{found} (no agent listening)"));
    }
    match UnixStream::connect(path) {
        Ok(_) => check(what, Status::Ok, format!("{found} (an agent answers)")),
        Err(error) => check(what, Status::Warn, format!("{found}: {error}"))
            .fix("a stale socket of an agent that died; the next start replaces it"),
    }
}

fn metrics(address: SocketAddr) -> Check {
    match TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
        Ok(_) => check(
            "metrics",
            Status::Ok,
            format!("http://{address}/metrics answers"),
        ),
        Err(_) => check(
            "metrics",
            Status::Info,
            format!("http://{address}/metrics (nothing listening)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_puts_each_fix_under_its_check() {
        let checks = [
            check("kernel BTF", Status::Missing, "no BTF").fix("rebuild"),
            check("metrics", Status::Ok, "answers"),
        ];
        let screen = render(&checks);
        let lines: Vec<&str> = screen.lines().collect();
        assert_eq!(lines.len(), 3, "{screen}");
        assert!(lines[0].contains("MISSING") && lines[0].contains("no BTF"));
        assert!(lines[1].trim_start().starts_with("-> rebuild"), "{screen}");
        assert!(lines[2].contains("ok") && lines[2].contains("answers"));
    }

    #[test]
    fn capabilities_name_what_is_held_and_what_is_missing() {
        let bpf_perfmon = (1u64 << 39) | (1u64 << 38);
        let ok = privileges(Some(bpf_perfmon));
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.found, "CAP_BPF CAP_PERFMON");
        let none = privileges(Some(0));
        assert_eq!(none.status, Status::Missing);
        assert!(none.fix.unwrap().contains("CAP_SYS_PTRACE"));
    }
}
