//! The client side of `org.opdbus.Chain1` ([`super::service`]): a typed
//! proxy, and blocking calls for the command line (`op-dbus submit`,
//! `op-dbus snapshot now` with a daemon running).
//!
//! The proxy's methods return the service's own error type, so a reply
//! `org.opdbus.Error.InvalidArgument` arrives as
//! `ChainError::InvalidArgument`; errors of the bus itself (no daemon, a
//! policy refusal) stay `ChainError::ZBus` and [`ClientError`] tells the two
//! apart.

use super::service::{BlockSummary, ChainError, SearchRow};
use super::{connect, BusError};
use crate::config::BusAddress;

/// `org.opdbus.Chain1` on `org.opdbus` at `/org/opdbus/Chain` (the
/// attribute must be literals; a test checks them against
/// [`SERVICE_NAME`](super::SERVICE_NAME) and friends). See
/// [`super::service`] for what each member does.
#[zbus::proxy(interface = "org.opdbus.Chain1", default_service = "org.opdbus", default_path = "/org/opdbus/Chain")]
pub(crate) trait Chain1 {
    /// The last durable block: (seq, hash).
    fn head(&self) -> Result<(u64, String), ChainError>;

    /// The block as JSON (the form `show --json` prints).
    fn get_block(&self, seq: u64) -> Result<String, ChainError>;

    /// The most recent `limit` matches, oldest first; 0 and "" mean any.
    fn query(
        &self,
        since: i64,
        until: i64,
        plugin: &str,
        operation: &str,
        limit: u32,
    ) -> Result<Vec<BlockSummary>, ChainError>;

    /// Hashes and links over `from_seq..=to_seq`: (ok, blocks, problem).
    fn verify(&self, from_seq: u64, to_seq: u64) -> Result<(bool, u64, String), ChainError>;

    /// Semantic search: (model, blocks with a vector, rows best first).
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        text: &str,
        k: u32,
        since: i64,
        until: i64,
        plugin: &str,
        operation: &str,
    ) -> Result<(String, u64, Vec<SearchRow>), ChainError>;

    /// Appends a footprint; the reply (its seq) comes once it is durable.
    fn submit(&self, plugin_id: &str, operation: &str, data_json: &str) -> Result<u64, ChainError>;

    /// Takes a snapshot now; its name, or "" when nothing is new.
    fn snapshot(&self) -> Result<String, ChainError>;

    /// The newest signed checkpoint (a signed note).
    fn get_checkpoint(&self) -> Result<String, ChainError>;

    /// A tlog-proof bundle for block `seq`.
    fn get_proof(&self, seq: u64) -> Result<String, ChainError>;

    /// A consistency proof between two checkpoint sizes (0: the newest).
    fn get_consistency(&self, old: u64, new: u64) -> Result<String, ChainError>;

    /// A new checkpoint is durable.
    #[zbus(signal)]
    fn checkpoint_signed(&self, size: u64, checkpoint: &str) -> zbus::Result<()>;

    /// New durable blocks `first_seq..=last_seq`.
    #[zbus(signal)]
    fn blocks_appended(&self, first_seq: u64, last_seq: u64, head_hash: &str) -> zbus::Result<()>;
}

/// Why a call through [`submit`] or [`snapshot`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tokio runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Connect(#[from] BusError),
    /// The daemon answered with one of `org.opdbus.Error.*`.
    #[error(transparent)]
    Refused(ChainError),
    /// The call did not get an answer from the daemon: an error of the bus
    /// (no daemon, the policy), or a reply that does not decode.
    #[error(transparent)]
    Bus(zbus::Error),
}

impl From<ChainError> for ClientError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::ZBus(e) => ClientError::Bus(e),
            e => ClientError::Refused(e),
        }
    }
}

/// Connects to `addr` and makes the proxy (no call is made until a method is).
pub async fn chain_proxy(addr: &BusAddress) -> Result<Chain1Proxy<'static>, ClientError> {
    let conn = connect(addr).await?;
    Chain1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(ClientError::Bus)
}

/// Runs one call on a runtime of its own (the command line has none).
fn blocking<T>(
    addr: &BusAddress,
    call: impl AsyncFnOnce(&Chain1Proxy<'static>) -> Result<T, ChainError>,
) -> Result<T, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ClientError::Runtime)?;
    rt.block_on(async {
        let proxy = chain_proxy(addr).await?;
        Ok(call(&proxy).await?)
    })
}

/// `Submit` to the daemon on `addr`: the footprint's seq, once durable.
pub fn submit(addr: &BusAddress, plugin_id: &str, operation: &str, data_json: &str) -> Result<u64, ClientError> {
    blocking(addr, async |p| p.submit(plugin_id, operation, data_json).await)
}

/// `Snapshot` on the daemon on `addr`: the snapshot's name, or "" when
/// nothing is new.
pub fn snapshot(addr: &BusAddress) -> Result<String, ClientError> {
    blocking(addr, async |p| p.snapshot().await)
}

#[cfg(test)]
mod tests {
    use zbus::proxy::Defaults;

    use super::*;
    use crate::bus::{SERVICE_INTERFACE, SERVICE_NAME, SERVICE_PATH};

    #[test]
    fn the_proxy_names_the_service() {
        assert_eq!(Chain1Proxy::DESTINATION.as_ref().map(|n| n.as_str()), Some(SERVICE_NAME));
        assert_eq!(Chain1Proxy::PATH.as_ref().map(|p| p.as_str()), Some(SERVICE_PATH));
        assert_eq!(Chain1Proxy::INTERFACE.as_ref().map(|i| i.as_str()), Some(SERVICE_INTERFACE));
    }

    #[test]
    fn the_service_s_errors_are_refusals_and_the_bus_s_are_not() {
        let refused = ClientError::from(ChainError::InvalidArgument("bad".into()));
        assert!(matches!(&refused, ClientError::Refused(ChainError::InvalidArgument(d)) if d == "bad"));
        assert_eq!(refused.to_string(), "org.opdbus.Error.InvalidArgument: bad");
        let bus = ClientError::from(ChainError::ZBus(zbus::Error::InvalidReply));
        assert!(matches!(bus, ClientError::Bus(zbus::Error::InvalidReply)));
    }
}
