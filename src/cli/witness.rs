//! `op-dbus witness`: a C2SP tlog-witness for the logs it is given.

use super::{read_vkey, Failure, WitnessArgs};

pub(super) fn run(a: WitnessArgs) -> Result<u8, Failure> {
    let logs = a.logs.iter().map(|k| read_vkey("--log", k)).collect::<Result<Vec<_>, _>>()?;
    let listen: std::net::SocketAddr = a.listen.parse().map_err(|_| {
        Failure::usage(anyhow::anyhow!(
            "invalid --listen {:?}: an IP address and port, such as 127.0.0.1:7380",
            a.listen
        ))
    })?;
    let name = a.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("op-dbus-witness/{}", host.trim().replace(char::is_whitespace, "-")).trim_end_matches('/').to_string()
    });
    crate::witness::run_cli(listen, &a.dir, &name, logs).map_err(Failure::runtime)?;
    Ok(0)
}
