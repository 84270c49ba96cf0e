//! Replication of snapshots with `btrfs send` / `btrfs receive`.
//!
//! A replica is a local folder on a BTRFS filesystem (op-dbus runs
//! `btrfs receive` into it) or a command given as an argument list that
//! reads a send stream on its standard input, for example
//! `["ssh", "backup", "btrfs", "receive", "/srv/op-dbus/{snapshot}"]`. The
//! command runs without a shell; `{snapshot}` and `{area}` in its
//! arguments are replaced by the snapshot's name and the area
//! (`@timing`, `@vectors`, `@cache`), and nothing else is interpreted.
//! (With a command, the receiving folder `{snapshot}` must exist or be
//! made by the command; op-dbus cannot make folders on another host.)
//!
//! A pass sends each replica the newest snapshot, incrementally
//! (`btrfs send -p`) from the last snapshot that replica acknowledged when
//! that one still exists, else in full. The chain is append-only, so the
//! newest snapshot holds everything: a replica that was down catches up in
//! one transfer. Progress is persisted in `replication.json` (written to a
//! temporary file, synced, renamed). The last acknowledged snapshot of
//! every replica is protected from rotation: it is the next parent.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::snapshot::{self, SnapshotMeta};
use crate::layout::{btrfs, Area, Layout};

pub const PROGRESS_FILE: &str = "replication.json";

/// One `[[replica]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    pub name: String,
    /// A folder on a BTRFS filesystem that `btrfs receive` writes into.
    pub dir: Option<PathBuf>,
    /// Or a command (argument list) that receives a send stream on stdin.
    pub command: Option<Vec<String>>,
    /// `btrfs send --compressed-data`: compressed extents go as they are.
    #[serde(default)]
    pub compressed_data: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaProgress {
    /// The last snapshot this replica received in full.
    pub(crate) acked: Option<String>,
    pub(crate) acked_head_seq: Option<u64>,
    pub(crate) acked_taken_ns: Option<i64>,
    pub(crate) bytes_sent: u64,
    pub(crate) last_error: Option<String>,
}

pub type Progress = BTreeMap<String, ReplicaProgress>;

pub fn load_progress(layout: &Layout) -> Progress {
    fs::read_to_string(layout.state_dir.join(PROGRESS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub fn save_progress(layout: &Layout, p: &Progress) -> io::Result<()> {
    let path = layout.state_dir.join(PROGRESS_FILE);
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(p).expect("serializable").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(&layout.state_dir)?.sync_all()
}

/// Snapshot names no rotation may delete: each replica's next parent.
pub fn protected(layout: &Layout) -> Vec<String> {
    load_progress(layout).into_values().filter_map(|p| p.acked).collect()
}

#[derive(Debug)]
pub struct Sent {
    pub(crate) snapshot: String,
    pub incremental: bool,
    pub bytes: u64,
}

/// Why a replica did not get the newest snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("replication needs BTRFS: these snapshots are copies on a plain filesystem")]
    NotBtrfs,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{area}: {source}")]
    Transfer { area: Area, source: TransferError },
    #[error("refused: snapshot {snapshot} is not consistent with the replica's last checkpoint ({replica_snapshot}: size {size}, time {time_ns}): the history was rewritten")]
    Rewritten { snapshot: String, replica_snapshot: String, size: u64, time_ns: i64 },
    #[error("cannot check the snapshot against the replica's last checkpoint: {0}")]
    Check(String),
}

/// Why one area's `send | receive` failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("btrfs send: {0}")]
    StartSend(io::Error),
    #[error("cannot start the receiver {program:?}: {source}")]
    StartReceiver { program: std::ffi::OsString, source: io::Error },
    #[error("reading the send stream: {0}")]
    Read(io::Error),
    #[error("{0}")]
    Wait(io::Error),
    #[error("the receiver failed ({status}): {stderr}")]
    Receiver { status: std::process::ExitStatus, stderr: String },
    #[error("btrfs send failed ({status}): {stderr}")]
    Send { status: std::process::ExitStatus, stderr: String },
}

/// Sends the newest snapshot to `replica`, if it does not have it yet.
/// Updates `progress` (the caller persists it). `Ok(None)`: up to date.
pub fn replicate_one(
    layout: &Layout,
    replica: &ReplicaConfig,
    progress: &mut ReplicaProgress,
) -> Result<Option<Sent>, ReplicateError> {
    let all = snapshot::list(layout);
    let Some(newest) = all.last() else { return Ok(None) };
    if progress.acked.as_deref() == Some(newest.name.as_str()) {
        return Ok(None);
    }
    if newest.kind != "btrfs" {
        return Err(ReplicateError::NotBtrfs);
    }
    let parent: Option<&SnapshotMeta> =
        progress.acked.as_ref().and_then(|a| all.iter().find(|s| &s.name == a && s.kind == "btrfs"));
    let mut bytes = 0;
    if let Some(dir) = &replica.dir {
        let target = dir.join(&newest.name);
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| ReplicateError::Io { path, source }
        };
        check_consistent(dir, &snapshot::path_of(layout, &newest.name), &newest.name)?;
        fs::create_dir_all(&target).map_err(io(&target))?;
        // Left by an attempt that failed half-way: receive again.
        for area in Area::ALL {
            let dest = target.join(area.dir_name());
            if btrfs::is_subvolume(&dest) {
                btrfs::delete_subvolume(&dest).map_err(io(&dest))?;
            }
        }
    }
    for area in Area::ALL {
        let src = snapshot::path_of(layout, &newest.name).join(area.dir_name());
        let mut send = Command::new("btrfs");
        send.arg("send").arg("-q");
        if replica.compressed_data {
            send.arg("--compressed-data");
        }
        if let Some(p) = parent {
            send.arg("-p").arg(snapshot::path_of(layout, &p.name).join(area.dir_name()));
        }
        send.arg(&src);
        let receive = receiver(replica, &newest.name, area.dir_name());
        bytes += pipe(send, receive).map_err(|source| ReplicateError::Transfer { area, source })?;
    }
    progress.acked = Some(newest.name.clone());
    progress.acked_head_seq = Some(newest.head_seq);
    progress.acked_taken_ns = Some(newest.taken_ns);
    progress.bytes_sent += bytes;
    progress.last_error = None;
    Ok(Some(Sent { snapshot: newest.name.clone(), incremental: parent.is_some(), bytes }))
}

/// Before a transfer to a folder replica: the newest snapshot the replica
/// holds has a last checkpoint; the snapshot about to be sent must have the
/// same tree at that size, computed from its own chain. A rewritten history
/// (a root on the source that changed old blocks and re-signed) is refused
/// here, before the replica acknowledges anything. (A command replica is
/// out of reach; its receiving side can run `op-dbus verify --key`.)
fn check_consistent(
    replica_dir: &std::path::Path,
    snapshot: &std::path::Path,
    name: &str,
) -> Result<(), ReplicateError> {
    let mut held: Vec<_> = fs::read_dir(replica_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("@timing/checkpoints").is_file())
        .collect();
    held.sort();
    let Some(last) = held.pop() else { return Ok(()) };
    let replica_layout = Layout::new(&last, None);
    let check = |e: crate::proof::checkpointer::ProofStartError| ReplicateError::Check(e.to_string());
    let Some(cp) = crate::proof::checkpointer::last_checkpoint(&replica_layout).map_err(check)? else { return Ok(()) };
    let size = cp.checkpoint.size;
    let root = crate::proof::checkpointer::chain_root_at(&Layout::new(snapshot, None), size).map_err(check)?;
    if root != Some(cp.checkpoint.root) {
        return Err(ReplicateError::Rewritten {
            snapshot: name.to_string(),
            replica_snapshot: last.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            size,
            time_ns: cp.time_ns,
        });
    }
    Ok(())
}

fn receiver(replica: &ReplicaConfig, snapshot: &str, area: &str) -> Command {
    match (&replica.dir, &replica.command) {
        (Some(dir), _) => {
            let mut c = Command::new("btrfs");
            c.arg("receive").arg("-q").arg(dir.join(snapshot));
            c
        }
        (None, Some(argv)) => {
            let args: Vec<String> =
                argv.iter().map(|a| a.replace("{snapshot}", snapshot).replace("{area}", area)).collect();
            let mut c = Command::new(&args[0]);
            c.args(&args[1..]);
            c
        }
        (None, None) => unreachable!("validated: a replica has a dir or a command"),
    }
}

/// Runs `send | receive`, counting the bytes in between; both must succeed.
fn pipe(mut send: Command, mut receive: Command) -> Result<u64, TransferError> {
    let mut tx = send.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(TransferError::StartSend)?;
    let mut rx = match receive.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn() {
        Ok(rx) => rx,
        Err(e) => {
            let _ = tx.kill();
            let _ = tx.wait();
            return Err(TransferError::StartReceiver { program: receive.get_program().to_os_string(), source: e });
        }
    };
    let mut out = tx.stdout.take().expect("piped");
    let mut inp = rx.stdin.take().expect("piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let mut write_error = None;
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(TransferError::Read(e)),
        };
        if let Err(e) = inp.write_all(&buf[..n]) {
            write_error = Some(e);
            break;
        }
        bytes += n as u64;
    }
    drop(inp);
    if write_error.is_some() {
        let _ = tx.kill();
    }
    let tx_out = tx.wait_with_output().map_err(TransferError::Wait)?;
    let rx_out = rx.wait_with_output().map_err(TransferError::Wait)?;
    if !rx_out.status.success() || write_error.is_some() {
        let stderr = String::from_utf8_lossy(&rx_out.stderr).trim().to_string();
        return Err(TransferError::Receiver { status: rx_out.status, stderr });
    }
    if !tx_out.status.success() {
        let stderr = String::from_utf8_lossy(&tx_out.stderr).trim().to_string();
        return Err(TransferError::Send { status: tx_out.status, stderr });
    }
    Ok(bytes)
}

/// One pass over every replica (`op-dbus replicate`, and the Replicator's
/// tick): sends what each lacks, persists progress after each replica.
/// Returns per replica what happened.
pub fn pass(
    layout: &Layout,
    replicas: &[ReplicaConfig],
    only: Option<&str>,
) -> Vec<(String, Result<Option<Sent>, ReplicateError>)> {
    let mut progress = load_progress(layout);
    let mut out = Vec::new();
    for r in replicas.iter().filter(|r| only.is_none_or(|n| n == r.name)) {
        let p = progress.entry(r.name.clone()).or_default();
        let result = replicate_one(layout, r, p);
        if let Err(e) = &result {
            p.last_error = Some(e.to_string());
        }
        out.push((r.name.clone(), result));
        if let Err(e) = save_progress(layout, &progress) {
            tracing::error!(error = %e, "cannot save replication progress");
        }
    }
    out
}

/// What one replica got in a pass.
#[derive(Debug)]
pub struct ReplicaOutcome {
    pub(crate) name: String,
    /// `Ok(None)`: it was up to date; `Err`: what failed (also kept in
    /// `replication.json` as its `last_error`).
    pub(crate) result: Result<Option<Sent>, ReplicateError>,
}

/// A replication request that cannot be served as asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaChoiceError {
    #[error("no [[replica]] in the configuration")]
    NoReplicas,
    #[error("no replica named {0:?} in the configuration")]
    UnknownReplica(String),
}

/// `op-dbus replicate`: one [`pass`] over the configured replicas (or only
/// the one called `only`), refusing a configuration without them.
pub fn replicate(
    layout: &Layout,
    replicas: &[ReplicaConfig],
    only: Option<&str>,
) -> Result<Vec<ReplicaOutcome>, ReplicaChoiceError> {
    if replicas.is_empty() {
        return Err(ReplicaChoiceError::NoReplicas);
    }
    if let Some(n) = only {
        if !replicas.iter().any(|r| r.name == n) {
            return Err(ReplicaChoiceError::UnknownReplica(n.to_string()));
        }
    }
    Ok(pass(layout, replicas, only).into_iter().map(|(name, result)| ReplicaOutcome { name, result }).collect())
}
