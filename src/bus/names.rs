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
}

/// Credentials per unique name, shared by the capture thread (which asks
/// the moment a connection joins, so that a sender that lives for a few
/// milliseconds is still there to be asked) and DbusIngest (which asks for
/// senders it has no answer for, and forgets those that left).
#[derive(Clone, Debug, Default)]
pub struct CredsCache(std::sync::Arc<std::sync::Mutex<HashMap<String, Credentials>>>);

impl CredsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Credentials>> {
        self.0.lock().expect("creds cache lock")
    }

    pub fn get(&self, unique: &str) -> Option<Credentials> {
        self.lock().get(unique).cloned()
    }

    pub fn contains(&self, unique: &str) -> bool {
        self.lock().contains_key(unique)
    }

    pub fn insert(&self, unique: &str, c: Credentials) {
        let mut m = self.lock();
        if m.len() >= MAX_CREDS {
            m.clear();
        }
        m.insert(unique.to_string(), c);
    }

    pub fn remove(&self, unique: &str) {
        self.lock().remove(unique);
    }

    /// A new bus instance reuses unique names: forget them all.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// Asks the bus for a connection's uid and pid, and its unit. `None` when
/// the bus did not answer in time (ask again later); a connection that is
/// gone gets empty credentials (there is nothing more to learn).
pub async fn lookup(
    proxy: &zbus::fdo::DBusProxy<'_>,
    unique: &str,
    timeout: std::time::Duration,
) -> Option<Credentials> {
    let name = zbus::names::BusName::try_from(unique).ok()?;
    match tokio::time::timeout(timeout, proxy.get_connection_credentials(name)).await {
        Err(_) => None,
        Ok(Err(_)) => Some(Credentials { uid: None, pid: None, unit: None }),
        Ok(Ok(c)) => {
            let pid = c.process_id();
            Some(Credentials { uid: c.unix_user_id(), pid, unit: pid.and_then(unit_of_pid) })
        }
    }
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
        n.owner_changed(":1.9", ":1.9", "");
        assert_eq!(n.plugin_of(":1.9"), None);
    }

    #[test]
    fn unit_from_cgroup_path() {
        assert_eq!(unit_from_cgroup("/system.slice/NetworkManager.service").as_deref(), Some("NetworkManager.service"));
        assert_eq!(unit_from_cgroup("/user.slice/user-1000.slice/session-2.scope").as_deref(), Some("session-2.scope"));
        assert_eq!(unit_from_cgroup("/"), None);
    }
}
