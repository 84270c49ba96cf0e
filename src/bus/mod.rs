//! Everything that talks D-Bus: connecting, the monitor capture and its
//! queue, decoding bodies, name tracking, filter rules, and the
//! `org.opdbus` service. The pipeline side of capture is the
//! [`DbusIngest`](crate::actors::dbus_ingest) actor.

pub(crate) mod capture;
pub(crate) mod mapping;
pub(crate) mod names;
pub(crate) mod policy;
pub(crate) mod proxy;
pub(crate) mod rules;
pub(crate) mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::BusAddress;

/// The well-known name the service owns, its object and interface.
pub const SERVICE_NAME: &str = "org.opdbus";
pub const SERVICE_PATH: &str = "/org/opdbus/Chain";
pub const SERVICE_INTERFACE: &str = "org.opdbus.Chain1";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to the {bus} bus: {source}; {hint}")]
    Connect { bus: String, hint: &'static str, source: zbus::Error },
    #[error(
        "the {bus} bus refused BecomeMonitor ({detail}); recording a system bus needs root (or the bus's own user): run \
         op-dbus as root, or record another bus with --bus session|ADDRESS"
    )]
    MonitorDenied { bus: String, detail: String },
    #[error("BecomeMonitor failed on the {bus} bus: {source}")]
    Monitor { bus: String, source: zbus::Error },
    #[error(
        "cannot own {name} on the {bus} bus ({detail}); is another op-dbus running there, or is the bus policy \
         (config/dbus/org.opdbus.conf) not installed?"
    )]
    NameTaken { name: &'static str, bus: String, detail: String },
    #[error("D-Bus call failed: {0}")]
    Call(#[from] zbus::Error),
}

/// Opens an ordinary connection to `addr`.
pub async fn connect(addr: &BusAddress) -> Result<zbus::Connection, BusError> {
    let built = match addr {
        BusAddress::System => zbus::connection::Builder::system(),
        BusAddress::Session => zbus::connection::Builder::session(),
        // A `guid=` pins one bus instance; a restarted bus has a new one,
        // and a recorder must reconnect to it, so the pin is dropped.
        BusAddress::Address(a) => zbus::connection::Builder::address(without_guid(a).as_str()),
    };
    let hint = match addr {
        BusAddress::System => "is dbus-daemon running (apt-get install dbus)? or choose a bus with --bus",
        BusAddress::Session => "is DBUS_SESSION_BUS_ADDRESS set? or choose a bus with --bus",
        BusAddress::Address(_) => "check the address and that a bus listens there",
    };
    let err = |source| BusError::Connect { bus: addr.to_string(), hint, source };
    built.build().await.map_err(err)
}

fn without_guid(addr: &str) -> String {
    addr.split(';')
        .map(|one| match one.split_once(':') {
            Some((transport, kv)) => {
                let kept: Vec<&str> = kv.split(',').filter(|p| !p.starts_with("guid=")).collect();
                format!("{transport}:{}", kept.join(","))
            }
            None => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The unique names of op-dbus's own connections, by role, so that their
/// traffic is never recorded. A role's name is replaced when it reconnects
/// (a restarted bus hands out the same unique names again).
#[derive(Clone, Debug, Default)]
pub struct OwnNames(Arc<Mutex<HashMap<&'static str, String>>>);

impl OwnNames {
    pub fn set(&self, role: &'static str, unique: Option<&str>) {
        let mut m = self.0.lock().expect("own names lock");
        match unique {
            Some(u) => m.insert(role, u.to_string()),
            None => m.remove(role),
        };
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().expect("own names lock").values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn guid_is_dropped_from_addresses() {
        assert_eq!(super::without_guid("unix:path=/x/bus,guid=abc"), "unix:path=/x/bus");
        assert_eq!(super::without_guid("unix:guid=1,path=/a;tcp:host=h,port=1"), "unix:path=/a;tcp:host=h,port=1");
    }
}
