//! Which service a process belongs to.
//!
//! A pair is a pair of services, not of pids: short-lived processes of one
//! service fold together. Rules from the config come first; otherwise the
//! executable's file name names the service, else the comm.

use crate::{aggregate::ProcessInfo, config::ServiceRule};

/// Names processes by the configured rules.
#[derive(Clone, Debug, Default)]
pub struct ServiceNamer {
    rules: Vec<ServiceRule>,
}

impl ServiceNamer {
    /// Uses `rules` in order.
    pub fn new(rules: Vec<ServiceRule>) -> Self {
        Self { rules }
    }

    /// The service `process` belongs to.
    pub fn name(&self, process: &ProcessInfo) -> String {
        for rule in &self.rules {
            let matches = |pattern: &Option<String>, value: Option<&str>| match pattern {
                None => true,
                Some(pattern) => value.is_some_and(|v| glob(pattern, v)),
            };
            if matches(&rule.cgroup, process.cgroup.as_deref())
                && matches(&rule.exe, process.exe.as_deref())
                && matches(&rule.comm, Some(&process.comm))
            {
                return rule.name.clone();
            }
        }
        process
            .exe
            .as_deref()
            .and_then(|exe| exe.rsplit('/').next())
            .map(|name| name.trim_end_matches(" (deleted)"))
            .filter(|name| !name.is_empty())
            .unwrap_or(&process.comm)
            .to_owned()
    }
}

/// `*` matches any run of characters (including `/`); everything else is
/// literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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
            cgroup: cgroup.map(Into::into),
            exited_ns: None,
        }
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob(
            "/system.slice/*.service",
            "/system.slice/nginx.service"
        ));
        assert!(glob("postgres*", "postgres"));
        assert!(glob("*fpm*", "php-fpm8.2"));
        assert!(!glob("postgres*", "pg_ctl"));
        assert!(!glob("a*b*c", "abx"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
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
}
