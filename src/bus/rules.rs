//! Which messages are recorded: the message types enabled in `[bus]`,
//! then include rules (any may match; none means all), then exclude rules
//! (none may match). Type rules also go to the bus as the monitor's match
//! rules, so dbus-daemon does not even send what no rule can record.

use crate::config::{BusConfig, MatchRule};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    MethodCall,
    MethodReturn,
    Error,
    Signal,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MethodCall => "method_call",
            Kind::MethodReturn => "method_return",
            Kind::Error => "error",
            Kind::Signal => "signal",
        }
    }
}

/// The header fields a rule can look at.
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    pub(crate) kind: Kind,
    pub(crate) interface: Option<&'a str>,
    pub(crate) member: Option<&'a str>,
    pub(crate) path: Option<&'a str>,
    /// The sender's unique name.
    pub(crate) sender: Option<&'a str>,
}

const NAME_OWNER_CHANGED: &str =
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'";

#[derive(Clone, Debug)]
pub struct Filter {
    kinds: Vec<Kind>,
    include: Vec<MatchRule>,
    exclude: Vec<MatchRule>,
}

impl Filter {
    pub fn new(cfg: &BusConfig) -> Filter {
        let mut kinds = Vec::new();
        for (on, k) in [
            (cfg.signals, Kind::Signal),
            (cfg.method_calls, Kind::MethodCall),
            (cfg.method_returns, Kind::MethodReturn),
            (cfg.errors, Kind::Error),
        ] {
            if on {
                kinds.push(k);
            }
        }
        Filter { kinds, include: cfg.include.clone(), exclude: cfg.exclude.clone() }
    }

    /// The match rules for `BecomeMonitor`: one per enabled type, and
    /// `NameOwnerChanged` always. (An empty list would mean "everything".)
    pub fn monitor_rules(&self) -> Vec<String> {
        // Name ownership is always needed (plugin ids, credentials), whether
        // signals are recorded or not; `accepts` decides what is recorded.
        let mut rules = vec![NAME_OWNER_CHANGED.to_string()];
        rules.extend(self.kinds.iter().filter(|k| **k != Kind::Signal).map(|k| format!("type='{}'", k.as_str())));
        if self.kinds.contains(&Kind::Signal) {
            rules = self.kinds.iter().map(|k| format!("type='{}'", k.as_str())).collect();
        }
        rules
    }

    /// Whether to record `m`, whose sender owns `names` (well-known names).
    pub fn accepts(&self, m: &Meta<'_>, names: &[String]) -> bool {
        self.kinds.contains(&m.kind)
            && (self.include.is_empty() || self.include.iter().any(|r| rule_matches(r, m, names)))
            && !self.exclude.iter().any(|r| rule_matches(r, m, names))
    }
}

fn rule_matches(r: &MatchRule, m: &Meta<'_>, names: &[String]) -> bool {
    fn eq(want: &Option<String>, got: Option<&str>) -> bool {
        want.as_deref().is_none_or(|w| got == Some(w))
    }
    r.kind.as_deref().is_none_or(|k| k == m.kind.as_str())
        && eq(&r.interface, m.interface)
        && eq(&r.member, m.member)
        && eq(&r.path, m.path)
        && r.path_namespace.as_deref().is_none_or(|ns| {
            m.path.is_some_and(|p| {
                p == ns || ns == "/" || (p.starts_with(ns) && p.as_bytes().get(ns.len()) == Some(&b'/'))
            })
        })
        && r.sender.as_deref().is_none_or(|s| m.sender == Some(s) || names.iter().any(|n| n == s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(kind: Kind, iface: &'a str, member: &'a str, path: &'a str) -> Meta<'a> {
        Meta { kind, interface: Some(iface), member: Some(member), path: Some(path), sender: Some(":1.7") }
    }

    #[test]
    fn types_includes_and_excludes() {
        let mut cfg = BusConfig::default();
        let f = Filter::new(&cfg);
        assert!(f.accepts(&meta(Kind::Signal, "a.B", "C", "/x"), &[]));
        assert!(!f.accepts(&meta(Kind::MethodCall, "a.B", "C", "/x"), &[]));
        assert_eq!(f.monitor_rules(), vec!["type='signal'".to_string()]);
        let calls_only = Filter::new(&BusConfig { signals: false, method_calls: true, ..Default::default() });
        assert_eq!(calls_only.monitor_rules(), vec![NAME_OWNER_CHANGED.to_string(), "type='method_call'".to_string()]);

        cfg.method_calls = true;
        cfg.include = vec![MatchRule { interface: Some("a.B".into()), ..Default::default() }];
        cfg.exclude =
            vec![MatchRule { member: Some("Noisy".into()), sender: Some("org.noisy".into()), ..Default::default() }];
        let f = Filter::new(&cfg);
        assert!(f.accepts(&meta(Kind::MethodCall, "a.B", "C", "/x"), &[]));
        assert!(!f.accepts(&meta(Kind::Signal, "a.Other", "C", "/x"), &[]));
        // Excluded only when both fields match; the sender by well-known name.
        assert!(f.accepts(&meta(Kind::Signal, "a.B", "Noisy", "/x"), &[]));
        assert!(!f.accepts(&meta(Kind::Signal, "a.B", "Noisy", "/x"), &["org.noisy".into()]));
    }

    #[test]
    fn path_namespace_matches_the_path_and_below_only() {
        let cfg = BusConfig {
            include: vec![MatchRule { path_namespace: Some("/org/a".into()), ..Default::default() }],
            ..Default::default()
        };
        let f = Filter::new(&cfg);
        assert!(f.accepts(&meta(Kind::Signal, "i.I", "M", "/org/a"), &[]));
        assert!(f.accepts(&meta(Kind::Signal, "i.I", "M", "/org/a/b"), &[]));
        assert!(!f.accepts(&meta(Kind::Signal, "i.I", "M", "/org/ab"), &[]));
    }

    #[test]
    fn no_type_enabled_asks_the_bus_for_nothing() {
        let cfg = BusConfig { signals: false, ..Default::default() };
        let f = Filter::new(&cfg);
        assert_eq!(f.monitor_rules(), vec![NAME_OWNER_CHANGED.to_string()]);
        assert!(!f.accepts(&meta(Kind::Signal, "a.B", "C", "/x"), &[]));
    }
}
