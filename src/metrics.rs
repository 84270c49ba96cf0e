//! Every metric op-dbus exports, with its description and unit, in one
//! place. Names follow Vector's convention `op_dbus_<name>_<unit>[_total]`;
//! labels take a handful of fixed values (stage and edge names), so the
//! label sets stay bounded. Stages emit per batch, never per event.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const STAGE_RECEIVED: &str = "op_dbus_stage_received_events_total";
pub const STAGE_SENT: &str = "op_dbus_stage_sent_events_total";
pub const QUEUE_DEPTH: &str = "op_dbus_queue_depth_batches";
pub const QUEUE_CAPACITY: &str = "op_dbus_queue_capacity_batches";
pub const QUEUE_BLOCKED: &str = "op_dbus_queue_blocked_microseconds_total";
pub const QUEUE_DROPPED: &str = "op_dbus_queue_dropped_batches_total";
pub const COMMIT_BATCH: &str = "op_dbus_commit_batch_size_events";
pub const COMMIT_DURATION: &str = "op_dbus_commit_duration_seconds";
pub const COMMIT_ERRORS: &str = "op_dbus_commit_errors_total";
pub const CHAIN_HEIGHT: &str = "op_dbus_chain_height_blocks";
pub const INDEX_HEAD: &str = "op_dbus_index_height_blocks";
pub const INDEX_LAG: &str = "op_dbus_index_lag_blocks";
pub const INDEX_DURATION: &str = "op_dbus_index_batch_duration_seconds";
pub const ACTOR_RESTARTS: &str = "op_dbus_actor_restarts_total";
pub const VECTOR_FALLBACK: &str = "op_dbus_vector_fallback_active";
pub const TRUNCATED: &str = "op_dbus_footprint_truncated_total";
pub const BUS_RECEIVED: &str = "op_dbus_bus_received_messages_total";
pub const BUS_RECORDED: &str = "op_dbus_bus_recorded_messages_total";
pub const BUS_FILTERED: &str = "op_dbus_bus_filtered_messages_total";
pub const BUS_DROPPED: &str = "op_dbus_bus_dropped_messages_total";
pub const BUS_GAPS: &str = "op_dbus_bus_gaps_total";
pub const BUS_UNDECODABLE: &str = "op_dbus_bus_undecodable_messages_total";
pub const BUS_CONNECTED: &str = "op_dbus_bus_connected";
pub const BUS_RECONNECTS: &str = "op_dbus_bus_reconnects_total";
pub const CAPTURE_DEPTH: &str = "op_dbus_capture_queue_depth_messages";
pub const CAPTURE_BYTES: &str = "op_dbus_capture_queue_depth_bytes";
pub const SNAPSHOT_DURATION: &str = "op_dbus_snapshot_duration_seconds";
pub const SNAPSHOTS_TAKEN: &str = "op_dbus_snapshots_taken_total";
pub const SNAPSHOTS_DELETED: &str = "op_dbus_snapshots_deleted_total";
pub const SNAPSHOT_ERRORS: &str = "op_dbus_snapshot_errors_total";
pub const SNAPSHOTS_KEPT: &str = "op_dbus_snapshots_kept";
pub const REPLICATION_LAG_RECORDS: &str = "op_dbus_replication_lag_records";
pub const REPLICATION_LAG_SECONDS: &str = "op_dbus_replication_lag_seconds";
pub const REPLICATION_BYTES: &str = "op_dbus_replication_sent_bytes_total";
pub const REPLICATION_ERRORS: &str = "op_dbus_replication_errors_total";
pub const FEED_SIGNALS: &str = "op_dbus_feed_signals_total";
pub const SERVICE_CALLS: &str = "op_dbus_service_calls_total";
pub const VECTOR_HEIGHT: &str = "op_dbus_vector_height_blocks";
pub const VECTOR_LAG: &str = "op_dbus_vector_lag_blocks";
pub const VECTOR_DEFERRED: &str = "op_dbus_vector_deferred";
pub const VECTOR_EMBEDDED: &str = "op_dbus_vector_embedded_total";
pub const VECTOR_DURATION: &str = "op_dbus_vector_batch_duration_seconds";
pub const VECTOR_ERRORS: &str = "op_dbus_vector_errors_total";
pub const VECTOR_CACHE_HITS: &str = "op_dbus_vector_cache_hits_total";
pub const VECTOR_CACHE_MISSES: &str = "op_dbus_vector_cache_misses_total";
pub const SEARCH_DURATION: &str = "op_dbus_search_duration_seconds";
pub const TREE_SIZE: &str = "op_dbus_tree_size_entries";
pub const TREE_LAG: &str = "op_dbus_tree_lag_entries";
pub const CHECKPOINT_SIZE: &str = "op_dbus_checkpoint_size_entries";
pub const CHECKPOINT_LAG_ENTRIES: &str = "op_dbus_checkpoint_lag_entries";
pub const CHECKPOINTS_SIGNED: &str = "op_dbus_checkpoints_signed_total";
pub const CHECKPOINT_ERRORS: &str = "op_dbus_checkpoint_errors_total";
pub const CHECKPOINT_UNSIGNED: &str = "op_dbus_checkpoint_unsigned";
pub const CLOCK_STEPS: &str = "op_dbus_clock_steps_back_total";
pub const KEYS_REMAINING: &str = "op_dbus_keys_remaining_seconds";
pub const WITNESS_LAG_ENTRIES: &str = "op_dbus_witness_lag_entries";
pub const WITNESS_LAG_SECONDS: &str = "op_dbus_witness_lag_seconds";
pub const WITNESS_COSIGNED: &str = "op_dbus_witness_cosigned_total";
pub const WITNESS_ERRORS: &str = "op_dbus_witness_errors_total";

pub fn describe() {
    describe_gauge!(TREE_SIZE, Unit::Count, "entries (blocks) in the Merkle tiles");
    describe_gauge!(TREE_LAG, Unit::Count, "durable blocks not yet in the Merkle tiles");
    describe_gauge!(CHECKPOINT_SIZE, Unit::Count, "tree size of the newest signed checkpoint");
    describe_gauge!(CHECKPOINT_LAG_ENTRIES, Unit::Count, "durable blocks no signed checkpoint covers yet");
    describe_counter!(CHECKPOINTS_SIGNED, Unit::Count, "checkpoints signed and made durable");
    describe_counter!(CHECKPOINT_ERRORS, Unit::Count, "checkpoints that could not be signed or written");
    describe_gauge!(
        CHECKPOINT_UNSIGNED,
        Unit::Count,
        "1 while no checkpoint can be signed (keys not provisioned, damaged, or erased)"
    );
    describe_counter!(CLOCK_STEPS, Unit::Count, "times the clock was found behind the last checkpoint's time");
    describe_gauge!(KEYS_REMAINING, Unit::Seconds, "time left in the provisioned epoch keys");
    describe_gauge!(WITNESS_LAG_ENTRIES, Unit::Count, "entries signed but not yet cosigned, per witness");
    describe_gauge!(WITNESS_LAG_SECONDS, Unit::Seconds, "age of the newest checkpoint not yet cosigned, per witness");
    describe_counter!(WITNESS_COSIGNED, Unit::Count, "cosignatures received, per witness");
    describe_counter!(WITNESS_ERRORS, Unit::Count, "failed pushes to a witness, per witness");
    describe_counter!(STAGE_RECEIVED, Unit::Count, "events taken from a stage's inbox");
    describe_counter!(STAGE_SENT, Unit::Count, "events a stage passed downstream");
    describe_gauge!(QUEUE_DEPTH, Unit::Count, "batches waiting in an edge's queue");
    describe_gauge!(QUEUE_CAPACITY, Unit::Count, "capacity of an edge's queue, in batches");
    describe_counter!(QUEUE_BLOCKED, Unit::Microseconds, "time a stage waited on a full downstream queue");
    describe_counter!(
        QUEUE_DROPPED,
        Unit::Count,
        "notifications not delivered to a derived-data stage because its queue was full (it catches up from the chain)"
    );
    describe_histogram!(COMMIT_BATCH, Unit::Count, "blocks per durable commit");
    describe_histogram!(COMMIT_DURATION, Unit::Seconds, "time to write and fdatasync one commit");
    describe_counter!(COMMIT_ERRORS, Unit::Count, "commits that failed and were retried after a restart");
    describe_gauge!(CHAIN_HEIGHT, Unit::Count, "number of durable blocks in the chain");
    describe_gauge!(INDEX_HEAD, Unit::Count, "number of blocks in the LMDB index");
    describe_gauge!(INDEX_LAG, Unit::Count, "durable blocks not yet indexed");
    describe_histogram!(INDEX_DURATION, Unit::Seconds, "time to index one batch");
    describe_counter!(ACTOR_RESTARTS, Unit::Count, "actor restarts after a failure");
    describe_gauge!(
        VECTOR_FALLBACK,
        Unit::Count,
        "1 when the configured vector level could not load and heuristic vectors are used"
    );
    describe_counter!(TRUNCATED, Unit::Count, "footprints whose data was above the size cap and stored truncated");
    describe_counter!(BUS_RECEIVED, Unit::Count, "messages read from the monitor connection");
    describe_counter!(BUS_RECORDED, Unit::Count, "bus messages handed to the pipeline as footprints");
    describe_counter!(
        BUS_FILTERED,
        Unit::Count,
        "bus messages skipped by the filter rules or as op-dbus's own traffic"
    );
    describe_counter!(
        BUS_DROPPED,
        Unit::Count,
        "bus messages dropped because the capture queue was full (each run is a gap record)"
    );
    describe_counter!(BUS_GAPS, Unit::Count, "gap records written (queue overflow or bus outage)");
    describe_counter!(BUS_UNDECODABLE, Unit::Count, "bus messages whose body could not be decoded (stored raw)");
    describe_gauge!(BUS_CONNECTED, Unit::Count, "1 while the monitor connection is up");
    describe_counter!(BUS_RECONNECTS, Unit::Count, "monitor reconnections after the bus went away");
    describe_gauge!(CAPTURE_DEPTH, Unit::Count, "messages waiting in the capture queue");
    describe_gauge!(CAPTURE_BYTES, Unit::Bytes, "bytes of messages waiting in the capture queue");
    describe_histogram!(SNAPSHOT_DURATION, Unit::Seconds, "time to take one snapshot (the writer pauses meanwhile)");
    describe_counter!(SNAPSHOTS_TAKEN, Unit::Count, "snapshots taken");
    describe_counter!(SNAPSHOTS_DELETED, Unit::Count, "snapshots deleted by rotation");
    describe_counter!(SNAPSHOT_ERRORS, Unit::Count, "snapshots that failed (said in the log)");
    describe_gauge!(SNAPSHOTS_KEPT, Unit::Count, "snapshots on disk after rotation");
    describe_gauge!(REPLICATION_LAG_RECORDS, Unit::Count, "durable blocks a replica does not have yet");
    describe_gauge!(
        REPLICATION_LAG_SECONDS,
        Unit::Seconds,
        "age of the newest data a lagging replica has (0 when current)"
    );
    describe_counter!(REPLICATION_BYTES, Unit::Bytes, "send-stream bytes delivered to a replica");
    describe_counter!(REPLICATION_ERRORS, Unit::Count, "replication attempts that failed (retried with backoff)");
    describe_counter!(FEED_SIGNALS, Unit::Count, "BlocksAppended signals emitted");
    describe_counter!(SERVICE_CALLS, Unit::Count, "org.opdbus.Chain1 method calls, by method and outcome");
    describe_gauge!(VECTOR_HEIGHT, Unit::Count, "blocks with a search vector of the active model");
    describe_gauge!(VECTOR_LAG, Unit::Count, "durable blocks without a search vector yet (the vector worker's lag)");
    describe_gauge!(VECTOR_DEFERRED, "1 while the model waits for a burst on the chain to pass");
    describe_counter!(VECTOR_EMBEDDED, Unit::Count, "search vectors stored, by model");
    describe_histogram!(VECTOR_DURATION, Unit::Seconds, "time to embed and store one batch of search vectors");
    describe_counter!(VECTOR_ERRORS, Unit::Count, "vector worker batches that failed (retried)");
    describe_counter!(VECTOR_CACHE_HITS, Unit::Count, "texts found in the embedding cache (or repeated in a batch)");
    describe_counter!(VECTOR_CACHE_MISSES, Unit::Count, "texts the model had to embed");
    describe_histogram!(SEARCH_DURATION, Unit::Seconds, "time to answer one search (query vector and scan)");
}

/// Installs the global recorder. Histograms are exported as summaries with
/// fixed quantiles (no per-bucket series).
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe();
    Ok(handle)
}

/// Serves `GET /metrics` (Prometheus text) and `GET /health` on `listener`, forever.
/// A deliberately tiny HTTP/1.0 responder: one request per connection, no
/// keep-alive, which is all a scraper and a health probe need.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, health: impl Fn() -> (bool, String) + 'static) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics and /health");
    }
    // Without an HTTP listener of its own the exporter does no upkeep, and
    // histogram samples would pile up between scrapes without bound.
    let upkeep = handle.clone();
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        // Read the whole request head before answering: closing a socket
        // with unread bytes makes the kernel send a reset, and the client
        // loses the response.
        let mut buf = Vec::with_capacity(1024);
        let read_head = async {
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(2), read_head).await.is_err() {
            continue;
        }
        let request = String::from_utf8_lossy(&buf);
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let (status, ctype, body) = match path {
            "/metrics" => ("200 OK", "text/plain; version=0.0.4", handle.render()),
            "/health" => {
                let (ok, body) = health();
                (if ok { "200 OK" } else { "503 Service Unavailable" }, "application/json", body)
            }
            _ => ("404 Not Found", "text/plain", "try /metrics or /health\n".to_string()),
        };
        let response = format!(
            "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // A client that does not read must not stall the next scrape.
        let write = async {
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), write).await;
    }
}
