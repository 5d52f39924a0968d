//! Who may register and open which service.
//!
//! [`Policy`] checks a connection's [`Identity`] (from `SO_PEERCRED`, plus
//! its systemd unit when a rule needs it) against the config's rules.
//! Defaults: a service is registered by one uid at a time, and opening is
//! allowed within the registrant's uid; rules allow more (and, for
//! `register`, restrict who may serve a named service at all).

use crate::{
    aggregate::Pattern,
    config::{PolicyAction, PolicyRule},
    sys::{self, Cred},
};

/// A connection's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `SO_PEERCRED` at connect time.
    pub cred: Cred,
    /// systemd unit, read lazily only when a rule names units.
    pub unit: Option<String>,
}

impl Identity {
    /// The identity of a peer, reading its unit if `with_unit`.
    pub fn of(cred: Cred, with_unit: bool) -> Self {
        let unit = if with_unit {
            sys::systemd_unit(cred.pid)
        } else {
            None
        };
        Self { cred, unit }
    }
}

/// The rules.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Each rule with its service pattern compiled.
    rules: Vec<(PolicyRule, Pattern)>,
}

impl Policy {
    /// A policy from config rules.
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        let rules = rules
            .into_iter()
            .map(|rule| {
                let pattern = Pattern::new(&rule.service);
                (rule, pattern)
            })
            .collect();
        Self { rules }
    }

    /// Whether any rule names a systemd unit (then identities need it).
    pub fn needs_units(&self) -> bool {
        self.rules.iter().any(|(r, _)| r.unit.is_some())
    }

    fn matching(&self, action: PolicyAction, service: &str) -> impl Iterator<Item = &PolicyRule> {
        self.rules
            .iter()
            .filter(move |(r, pattern)| r.action == action && pattern.matches(service))
            .map(|(r, _)| r)
    }

    fn allows(rule: &PolicyRule, who: &Identity) -> bool {
        rule.uid.is_none_or(|uid| uid == who.cred.uid)
            && rule.gid.is_none_or(|gid| gid == who.cred.gid)
            && rule
                .unit
                .as_ref()
                .is_none_or(|unit| who.unit.as_ref() == Some(unit))
    }

    /// May `who` serve `service`, currently registered by `owner` (a uid)?
    pub fn check_register(
        &self,
        who: &Identity,
        service: &str,
        owner: Option<u32>,
    ) -> Result<(), String> {
        if let Some(owner) = owner
            && owner != who.cred.uid
        {
            return Err(format!(
                "uid {} may not register service {service:?}: uid {owner} serves it",
                who.cred.uid
            ));
        }
        let mut rules = self.matching(PolicyAction::Register, service).peekable();
        if rules.peek().is_some() && !rules.any(|r| Self::allows(r, who)) {
            return Err(format!(
                "uid {} gid {} may not register service {service:?}: no policy rule allows it",
                who.cred.uid, who.cred.gid
            ));
        }
        Ok(())
    }

    /// May `who` open channels to `service`, registered by uid `owner`?
    pub fn check_open(&self, who: &Identity, service: &str, owner: u32) -> Result<(), String> {
        if who.cred.uid == owner
            || self
                .matching(PolicyAction::Open, service)
                .any(|r| Self::allows(r, who))
        {
            return Ok(());
        }
        Err(format!(
            "uid {} may not open channels to service {service:?} (served by uid {owner}) and no policy rule allows it",
            who.cred.uid
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(uid: u32) -> Identity {
        Identity {
            cred: Cred {
                pid: 1,
                uid,
                gid: uid,
            },
            unit: None,
        }
    }

    #[test]
    fn defaults_keep_services_within_one_uid() {
        let p = Policy::default();
        assert!(p.check_register(&id(1), "db", None).is_ok());
        assert!(p.check_register(&id(1), "db", Some(1)).is_ok());
        assert!(p.check_register(&id(2), "db", Some(1)).is_err());
        assert!(p.check_open(&id(1), "db", 1).is_ok());
        assert!(p.check_open(&id(2), "db", 1).is_err());
    }

    #[test]
    fn rules_allow_and_restrict() {
        let p = Policy::new(vec![
            PolicyRule {
                action: PolicyAction::Open,
                service: "db*".into(),
                uid: Some(2),
                gid: None,
                unit: None,
            },
            PolicyRule {
                action: PolicyAction::Register,
                service: "web".into(),
                uid: None,
                gid: Some(33),
                unit: None,
            },
        ]);
        assert!(p.check_open(&id(2), "db-main", 1).is_ok());
        assert!(p.check_open(&id(3), "db-main", 1).is_err());
        assert!(p.check_register(&id(1), "web", None).is_err());
        assert!(p.check_register(&id(33), "web", None).is_ok());
    }
}
