//! `op-dbus dbus-policy`: the bus policy for the configured groups.

use super::{load_config, Failure, Global};
use crate::config::Overrides;

pub(super) fn run(global: &Global) -> Result<u8, Failure> {
    let cfg = load_config(global, Overrides::default())?;
    print!("{}", crate::bus::policy::render(&cfg.service));
    Ok(0)
}
