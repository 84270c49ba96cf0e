//! Who sent a message: the well-known names each unique name owns (kept
//! current from `NameOwnerChanged`, in stream order, so a signal is
//! attributed to the names its sender owned when it was sent), and each
//! sender's credentials, looked up once per unique name.

use std::collections::HashMap;

use crate::codec::Credentials;

/// Bounds the credentials cache; past it the cache starts over (entries
/// are also removed when their connection leaves the bus).
const MAX_CREDS: usize = 65_536;

#[derive(Debug, Default)]
pub struct Names {
    /// unique name -> well-known names, in the order acquired.
    owned: HashMap<String, Vec<String>>,
    creds: HashMap<String, Credentials>,
}

impl Names {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `NameOwnerChanged(name, old_owner, new_owner)`.
    pub fn owner_changed(&mut self, name: &str, old: &str, new: &str) {
        if name.starts_with(':') {
            // A connection joined or left; when it leaves, forget it.
            if new.is_empty() {
                self.owned.remove(name);
                self.creds.remove(name);
            }
            return;
        }
        if !old.is_empty() {
            if let Some(v) = self.owned.get_mut(old) {
                v.retain(|n| n != name);
                if v.is_empty() {
                    self.owned.remove(old);
                }
            }
        }
        if !new.is_empty() {
            let v = self.owned.entry(new.to_string()).or_default();
            if !v.iter().any(|n| n == name) {
                v.push(name.to_string());
            }
        }
    }

    /// The well-known names `unique` owns, first acquired first.
    pub fn names_of(&self, unique: &str) -> &[String] {
        self.owned.get(unique).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The plugin id for a sender: its first well-known name, if any.
    pub fn plugin_of(&self, unique: &str) -> Option<&str> {
        self.names_of(unique).first().map(String::as_str)
    }

    pub fn creds(&self, unique: &str) -> Option<&Credentials> {
        self.creds.get(unique)
    }

    pub fn has_creds(&self, unique: &str) -> bool {
        self.creds.contains_key(unique)
    }

    pub fn set_creds(&mut self, unique: &str, c: Credentials) {
        if self.creds.len() >= MAX_CREDS {
            self.creds.clear();
        }
        self.creds.insert(unique.to_string(), c);
    }
}

/// The systemd unit a process runs in, from its cgroup (`0::/system.slice/foo.service`).
pub fn unit_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    unit_from_cgroup(path)
}

fn unit_from_cgroup(path: &str) -> Option<String> {
    // The innermost .service or .scope component names the unit.
    path.split('/').rev().find(|c| c.ends_with(".service") || c.ends_with(".scope")).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_owner_changes() {
        let mut n = Names::new();
        n.owner_changed("org.a", "", ":1.5");
        n.owner_changed("org.b", "", ":1.5");
        assert_eq!(n.plugin_of(":1.5"), Some("org.a"));
        n.owner_changed("org.a", ":1.5", ":1.9");
        assert_eq!(n.plugin_of(":1.5"), Some("org.b"));
        assert_eq!(n.plugin_of(":1.9"), Some("org.a"));
        n.owner_changed("org.b", ":1.5", "");
        assert_eq!(n.plugin_of(":1.5"), None);
        n.set_creds(":1.9", Credentials { uid: Some(0), pid: Some(1), unit: None });
        n.owner_changed(":1.9", ":1.9", "");
        assert!(!n.has_creds(":1.9"));
        assert_eq!(n.plugin_of(":1.9"), None);
    }

    #[test]
    fn unit_from_cgroup_path() {
        assert_eq!(unit_from_cgroup("/system.slice/NetworkManager.service").as_deref(), Some("NetworkManager.service"));
        assert_eq!(unit_from_cgroup("/user.slice/user-1000.slice/session-2.scope").as_deref(), Some("session-2.scope"));
        assert_eq!(unit_from_cgroup("/"), None);
    }
}
