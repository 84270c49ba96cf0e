//! `op-dbus submit PLUGIN OPERATION JSON`: through the daemon's `Submit`;
//! prints the seq once durable. Exit 1 when the daemon finds the
//! footprint invalid, 3 on any other failure.

use zbus::DBusError as _;

use super::{load_config, parse_bus, Failure, Global, SubmitArgs, EXIT_FAILURE, EXIT_PROBLEM};
use crate::bus::proxy::{self, ClientError};
use crate::config::Overrides;

pub(super) fn run(global: &Global, a: SubmitArgs) -> Result<u8, Failure> {
    let cfg = load_config(global, Overrides::default())?;
    let addr = match &a.bus {
        Some(b) => parse_bus(b)?,
        None => cfg.service.address.clone().unwrap_or_else(|| cfg.bus.address.clone()),
    };
    let refused = |name: &str, detail: &str| {
        eprintln!("op-dbus: Submit failed: {name}: {detail}");
        Ok(if name.ends_with("InvalidArgument") { EXIT_PROBLEM } else { EXIT_FAILURE })
    };
    match proxy::submit(&addr, &a.plugin_id, &a.operation, &a.data_json) {
        Ok(seq) => {
            println!("{seq}");
            Ok(0)
        }
        Err(ClientError::Refused(e)) => refused(e.name().as_str(), e.description().unwrap_or_default()),
        Err(ClientError::Bus(zbus::Error::MethodError(name, detail, _))) => {
            refused(name.as_str(), detail.as_deref().unwrap_or_default())
        }
        Err(ClientError::Bus(zbus::Error::FDO(e))) => {
            eprintln!("op-dbus: Submit failed: {e}");
            Ok(EXIT_FAILURE)
        }
        Err(ClientError::Bus(e @ (zbus::Error::SignatureMismatch(..) | zbus::Error::IncorrectType))) => {
            Err(Failure::runtime(anyhow::Error::from(e).context("unexpected reply to Submit")))
        }
        Err(ClientError::Bus(e)) => Err(Failure::runtime(anyhow::Error::from(e).context("Submit failed"))),
        Err(e) => Err(Failure::runtime(e)),
    }
}
