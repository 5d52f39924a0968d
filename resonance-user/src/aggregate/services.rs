//! Which service a process belongs to.
//!
//! A pair is a pair of services, not of pids: short-lived processes of one
//! service fold together. Rules from the config come first; then the name
//! a broker client introduced itself with (so a service has one name
//! whether the probes see it or the broker serves it); otherwise the
//! executable's file name names the service, else the comm.

use std::collections::HashMap;

use serde::Deserialize;

use crate::aggregate::{Pattern, ProcessInfo};

/// Names the processes matching every given pattern. Patterns are globs
/// where `*` matches any run of characters.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceRule {
    /// The service name to give.
    pub name: String,
    /// cgroup v2 path, e.g. `/system.slice/nginx.service`.
    pub cgroup: Option<String>,
    /// Executable path, e.g. `/usr/sbin/php-fpm*`.
    pub exe: Option<String>,
    /// Kernel comm, e.g. `postgres*`.
    pub comm: Option<String>,
}

/// The executable this program runs from, to tell its own processes (the
/// `resonance` CLI beside the agent) from everyone else's.
#[derive(Clone, Debug, Default)]
pub struct OwnExecutable {
    path: Option<String>,
    /// The comm the kernel gives it (the file name, cut to 15 bytes), for
    /// processes that exited before /proc showed their executable.
    comm: Option<String>,
}

impl OwnExecutable {
    /// This process's executable.
    pub fn current() -> Self {
        let path = std::env::current_exe()
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned));
        let comm = path.as_deref().and_then(|p| {
            let name = p.rsplit('/').next()?;
            Some(name.chars().take(15).collect())
        });
        Self { path, comm }
    }

    /// Whether `process` runs this executable.
    pub fn runs(&self, process: &ProcessInfo) -> bool {
        match (&process.exe, &self.path) {
            (Some(exe), Some(own)) => exe == own,
            (None, _) => self.comm.as_deref() == Some(process.comm.as_str()),
            (Some(_), None) => false,
        }
    }
}

/// A rule with its patterns compiled.
#[derive(Clone, Debug)]
struct CompiledRule {
    name: String,
    cgroup: Option<Pattern>,
    exe: Option<Pattern>,
    comm: Option<Pattern>,
}

impl CompiledRule {
    fn new(rule: ServiceRule) -> Self {
        let compile = |pattern: Option<String>| pattern.as_deref().map(Pattern::new);
        Self {
            cgroup: compile(rule.cgroup),
            exe: compile(rule.exe),
            comm: compile(rule.comm),
            name: rule.name,
        }
    }

    fn matches(&self, process: &ProcessInfo) -> bool {
        let matches = |pattern: &Option<Pattern>, value: Option<&str>| match pattern {
            None => true,
            Some(pattern) => value.is_some_and(|v| pattern.matches(v)),
        };
        matches(&self.cgroup, process.cgroup.as_deref())
            && matches(&self.exe, process.exe.as_deref())
            && matches(&self.comm, Some(&process.comm))
    }
}

/// Names processes by the configured rules.
#[derive(Clone, Debug, Default)]
pub struct ServiceNamer {
    rules: Vec<CompiledRule>,
    /// Names live broker clients gave themselves, by pid.
    introduced: HashMap<u32, String>,
}

impl ServiceNamer {
    /// Uses `rules` in order.
    pub fn new(rules: Vec<ServiceRule>) -> Self {
        Self {
            rules: rules.into_iter().map(CompiledRule::new).collect(),
            introduced: HashMap::new(),
        }
    }

    /// The service `process` belongs to.
    pub fn name(&self, process: &ProcessInfo) -> String {
        if let Some(name) = self.rule_name(process) {
            return name.to_owned();
        }
        if let Some(name) = self.introduced.get(&process.pid) {
            return name.clone();
        }
        executed_name(process).to_owned()
    }

    /// The name the first configured rule matching `process` gives it.
    pub fn rule_name(&self, process: &ProcessInfo) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| rule.matches(process))
            .map(|rule| rule.name.as_str())
    }

    /// Replaces the names broker clients introduced themselves with, by
    /// pid: a process no rule names is known by that name on the probes'
    /// side too.
    pub fn set_introduced(&mut self, introduced: HashMap<u32, String>) {
        self.introduced = introduced;
    }
}

/// The name of the file the process was started as. The kernel sets the
/// comm from it at exec (cut to 15 bytes), while `/proc/PID/exe` has the
/// symlinks resolved: Debian's `redis-server` is a link to
/// `redis-check-rdb`, busybox's applets are all `busybox`. So the
/// executable's file name serves only where the comm is its beginning (the
/// comm was cut short); otherwise the comm is what was executed.
fn executed_name(process: &ProcessInfo) -> &str {
    let comm = process.main_comm.as_deref().unwrap_or(&process.comm);
    let exe_name = process
        .exe
        .as_deref()
        .and_then(|exe| exe.rsplit('/').next())
        .map(|name| name.trim_end_matches(" (deleted)"))
        .filter(|name| !name.is_empty());
    match exe_name {
        Some(name) if comm.is_empty() || name.starts_with(comm) => name,
        _ => comm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(comm: &str, exe: Option<&str>, cgroup: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid: 1,
            ppid: 0,
            comm: comm.into(),
            exe: exe.map(Into::into),
            main_comm: exe.map(|_| comm.into()),
            cgroup: cgroup.map(Into::into),
            exited_ns: None,
        }
    }

    #[test]
    fn rules_win_then_the_executable_then_the_comm() {
        let namer = ServiceNamer::new(vec![ServiceRule {
            name: "web".into(),
            cgroup: Some("/system.slice/nginx*".into()),
            exe: None,
            comm: None,
        }]);
        let nginx = process(
            "nginx",
            Some("/usr/sbin/nginx"),
            Some("/system.slice/nginx.service"),
        );
        assert_eq!(namer.name(&nginx), "web");
        let psql = process(
            "psql",
            Some("/usr/lib/postgresql/15/bin/psql"),
            Some("/user.slice"),
        );
        assert_eq!(namer.name(&psql), "psql");
        let gone = process("head", None, None);
        assert_eq!(namer.name(&gone), "head");
    }

    /// The name a sysadmin typed, not the file a symlink leads to; the
    /// whole file name where the comm was cut to 15 bytes.
    #[test]
    fn services_are_named_as_they_were_executed() {
        let namer = ServiceNamer::default();
        let redis = process("redis-server", Some("/usr/bin/redis-check-rdb"), None);
        assert_eq!(namer.name(&redis), "redis-server");
        let applet = process("sh", Some("/bin/busybox"), None);
        assert_eq!(namer.name(&applet), "sh");
        let long = process("postgres_export", Some("/opt/postgres_exporter_v2"), None);
        assert_eq!(namer.name(&long), "postgres_exporter_v2");
        let plain = process("cat", Some("/usr/bin/cat"), None);
        assert_eq!(namer.name(&plain), "cat");
        // A thread that named itself does not rename its process.
        let mut worker = process("requester", Some("/srv/bin/requester"), None);
        worker.comm = "tokio-runtime-w".into();
        assert_eq!(namer.name(&worker), "requester");
    }

    /// A broker client's own name reaches the probes' side, below the
    /// configured rules.
    #[test]
    fn an_introduced_name_beats_the_executable_but_not_a_rule() {
        let mut namer = ServiceNamer::new(vec![ServiceRule {
            name: "web".into(),
            cgroup: None,
            exe: None,
            comm: Some("nginx".into()),
        }]);
        let script = process("python3", Some("/usr/bin/python3.11"), None);
        let nginx = process("nginx", Some("/usr/sbin/nginx"), None);
        namer.set_introduced(HashMap::from([(1, "billing".to_owned())]));
        assert_eq!(namer.name(&script), "billing");
        assert_eq!(namer.name(&nginx), "web");
        namer.set_introduced(HashMap::new());
        assert_eq!(namer.name(&script), "python3.11");
    }
}
