//! What `verify` checks about checkpoints (docs/FORMAT.md, "What verify
//! checks about checkpoints", points 1–5). The chain verifier hands each
//! sound block to [`Audit::observe`] in seq order; the audit grows the tree
//! in O(log n) memory, compares its root with each checkpoint's as the
//! tree reaches its size, and checks that each block was sealed in time.

use std::path::Path;

use serde::Serialize;

use super::log::{read_all, CHECKPOINTS_MAGIC, COSIGNED_MAGIC};
use super::tiles::TileReader;
use crate::layout::Layout;
use crate::merkle::{leaf_hash, Frontier, Hash};
use crate::note::checkpoint::{schedule_of, verify_checkpoint, OpCheckpoint, StartLine};
use crate::note::Verifier;

#[derive(Clone, Debug, Serialize)]
pub struct CheckpointRef {
    /// Position in its log, from 0.
    pub index: usize,
    /// `checkpoints` or `cosigned`.
    pub log: &'static str,
    /// As the checkpoint says; for one whose signature failed, what it
    /// claims (unverified).
    pub size: u64,
    pub time_ns: i64,
    pub epoch: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditFault {
    /// `bad signature`, `wrong epoch key`, `order`, `truncation`, `departs`, `hole`, `epoch gap`, `unsealed range`, `damaged log`.
    pub kind: &'static str,
    pub checkpoint: Option<CheckpointRef>,
    /// The first seq concerned, when one is known.
    pub seq: Option<u64>,
    /// When the first differing seq cannot be pinned down: the range it is in.
    pub seq_range: Option<(u64, u64)>,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub ok: bool,
    /// The identity key the checkpoints were checked against, and where it came from.
    pub identity: String,
    pub identity_source: String,
    pub checkpoints: usize,
    pub cosigned: usize,
    pub last: Option<CheckpointRef>,
    /// Durable blocks after the last checkpoint (a live writer, or the tail of a crash).
    pub unsealed_tail: u64,
    pub warnings: Vec<String>,
    pub fault: Option<AuditFault>,
}

struct Cp {
    r: CheckpointRef,
    cp: OpCheckpoint,
}

/// A range of blocks sealed late, kept to report as one warning.
struct Late {
    first: u64,
    last: u64,
    why: &'static str,
}

pub struct Audit {
    identity: Verifier,
    identity_source: String,
    /// The checkpoint log, in order, each already checked alone.
    log: Vec<Cp>,
    /// Every checkpoint (both logs) by size, for the root comparisons.
    by_size: Vec<(u64, Hash, CheckpointRef)>,
    next_root: usize,
    frontier: Frontier,
    /// Index into `log` of the checkpoint that seals the current block.
    sealer: usize,
    schedule: Option<(u64, u64)>,
    /// Size of the last checkpoint whose root matched.
    agreed: u64,
    fault: Option<AuditFault>,
    warnings: Vec<String>,
    late: Option<Late>,
    cosigned: usize,
}

impl Audit {
    /// Reads both logs and checks each checkpoint alone and against its
    /// predecessor (points 1, 2 and 4).
    pub fn load(layout: &Layout, identity: Verifier, identity_source: String) -> Audit {
        let mut a = Audit {
            identity,
            identity_source,
            log: Vec::new(),
            by_size: Vec::new(),
            next_root: 0,
            frontier: Frontier::new(),
            sealer: 0,
            schedule: None,
            agreed: 0,
            fault: None,
            warnings: Vec::new(),
            late: None,
            cosigned: 0,
        };
        for (name, magic) in [("checkpoints", CHECKPOINTS_MAGIC), ("cosigned", COSIGNED_MAGIC)] {
            let path = layout.timing.join(name);
            let records = match read_all(&path, magic) {
                Ok(r) => r,
                Err(e) => {
                    a.fail(AuditFault {
                        kind: "damaged log",
                        checkpoint: None,
                        seq: None,
                        seq_range: None,
                        detail: e.to_string(),
                    });
                    continue;
                }
            };
            if let Some((offset, reason)) = records.torn {
                a.warnings.push(format!(
                    "{}: an unfinished record at offset {offset} ({reason}); the next start cuts it",
                    path.display()
                ));
            }
            for (i, (_, note)) in records.notes.iter().enumerate() {
                a.check_one(name, i, note);
            }
        }
        a.by_size.sort_by_key(|(s, _, r)| (*s, r.log, r.index));
        a
    }

    fn fail(&mut self, f: AuditFault) {
        if self.fault.is_none() {
            self.fault = Some(f);
        }
    }

    fn check_one(&mut self, log: &'static str, index: usize, note: &[u8]) {
        let v = match verify_checkpoint(note, &self.identity) {
            Ok(v) => v,
            Err(e) => {
                let kind = if matches!(e, crate::note::checkpoint::CheckpointError::TimeOutsideEpoch { .. }) {
                    "wrong epoch key"
                } else {
                    "bad signature"
                };
                // What it claims, unverified, so that the report says
                // which checkpoint (0s when even that does not parse).
                let claimed = crate::note::Note::parse(note).ok().and_then(|n| {
                    OpCheckpoint::from_checkpoint(crate::note::checkpoint::Checkpoint::parse_text(&n.text).ok()?).ok()
                });
                let (size, time_ns, epoch) =
                    claimed.map_or((0, 0, 0), |c| (c.checkpoint.size, c.time_ns, c.epoch.epoch));
                let r = CheckpointRef { index, log, size, time_ns, epoch };
                self.fail(AuditFault { kind, checkpoint: Some(r), seq: None, seq_range: None, detail: e.to_string() });
                return;
            }
        };
        let cp = v.cp;
        let r = CheckpointRef { index, log, size: cp.checkpoint.size, time_ns: cp.time_ns, epoch: cp.epoch.epoch };
        let fault =
            |kind, detail: String| AuditFault { kind, checkpoint: Some(r.clone()), seq: None, seq_range: None, detail };
        match (schedule_of(&cp.epoch), self.schedule) {
            (None, _) => {
                return self.fail(fault("wrong epoch key", "its epoch certificate has an impossible schedule".into()))
            }
            (Some(s), None) => self.schedule = Some(s),
            (Some(s), Some(o)) if s != o => {
                return self.fail(fault(
                    "wrong epoch key",
                    format!("epoch schedule {s:?} differs from {o:?} of the checkpoints before"),
                ))
            }
            _ => {}
        }
        self.by_size.push((cp.checkpoint.size, cp.checkpoint.root, r.clone()));
        if log == "cosigned" {
            self.cosigned += 1;
            return;
        }
        if let Some(prev) = self.log.last() {
            let (p, c) = (&prev.cp, &cp);
            if c.time_ns <= p.time_ns {
                return self
                    .fail(fault("order", format!("its time is not after the previous checkpoint's ({})", p.time_ns)));
            }
            if c.checkpoint.size < p.checkpoint.size {
                return self.fail(fault(
                    "order",
                    format!("its size is below the previous checkpoint's ({})", p.checkpoint.size),
                ));
            }
            match c.start {
                Some(StartLine::After { size, time_ns }) if size == p.checkpoint.size && time_ns == p.time_ns => {}
                Some(other) => {
                    return self.fail(fault(
                        "hole",
                        format!(
                            "its start line names {other:?}, but the checkpoint before it is size {} time {}",
                            p.checkpoint.size, p.time_ns
                        ),
                    ))
                }
                None if c.epoch.epoch > p.epoch.epoch + 1 => {
                    return self.fail(fault(
                        "epoch gap",
                        format!(
                            "epoch {} follows epoch {} with no start line: the epochs between were not sealed",
                            c.epoch.epoch, p.epoch.epoch
                        ),
                    ))
                }
                None => {}
            }
        } else if let Some(StartLine::After { size, time_ns }) = cp.start {
            self.fail(fault("hole", format!("the first checkpoint says it follows one of size {size} time {time_ns}, which the log does not hold")));
        }
        self.log.push(Cp { r, cp });
    }

    fn epoch_of(&self, t_ns: i64) -> Option<u64> {
        let (t0, len) = self.schedule?;
        let t = u64::try_from(t_ns).ok()? / 1_000_000_000;
        t.checked_sub(t0).map(|d| d / len)
    }

    /// One sound block, in seq order from 0 (points 3 and 5).
    pub fn observe(&mut self, seq: u64, hash: &Hash, timestamp_ns: i64) {
        debug_assert_eq!(seq, self.frontier.size());
        self.frontier.push(leaf_hash(hash), |_, _, _| {});
        // 5. Sealing: the first checkpoint of the log whose size exceeds seq.
        while self.sealer < self.log.len() && self.log[self.sealer].cp.checkpoint.size <= seq {
            self.sealer += 1;
        }
        if let Some(k) = self.log.get(self.sealer) {
            let e = k.cp.epoch.epoch;
            let block_epoch = self.epoch_of(timestamp_ns);
            let timely = block_epoch.is_some_and(|b| e <= b + 1);
            if !timely {
                let prev = self.sealer.checked_sub(1).map(|i| &self.log[i].cp);
                let len_ns = self.schedule.map_or(0, |(_, l)| l as i64 * 1_000_000_000);
                let why = match (k.cp.start, prev) {
                    (Some(StartLine::After { .. }), Some(p)) if timestamp_ns < p.time_ns + len_ns => Some("committed within an epoch of the checkpoint before and sealed by the next start (an unclean stop, or a stop in an epoch whose key was already erased)"),
                    (Some(StartLine::None), None) if block_epoch.is_none() => Some("older than the keys, sealed by the first checkpoint"),
                    _ => None,
                };
                match why {
                    Some(why) => match &mut self.late {
                        Some(l) if l.last + 1 == seq && l.why == why => l.last = seq,
                        _ => {
                            self.flush_late();
                            self.late = Some(Late { first: seq, last: seq, why });
                        }
                    },
                    None => {
                        let r = k.r.clone();
                        self.fail(AuditFault {
                            kind: "unsealed range",
                            checkpoint: Some(r),
                            seq: Some(seq),
                            seq_range: None,
                            detail: format!(
                                "seq {seq} was committed in epoch {} but first sealed by a checkpoint of epoch {e}",
                                block_epoch.map_or("before the keys".to_string(), |b| b.to_string())
                            ),
                        });
                    }
                }
            }
        }
        // 3. Roots, as the tree reaches each checkpoint's size.
        let size = self.frontier.size();
        while let Some((s, root, r)) = self.by_size.get(self.next_root) {
            if *s > size {
                break;
            }
            if *s == size || *s == 0 {
                let ours = if *s == 0 { crate::merkle::empty_root() } else { self.frontier.root() };
                if ours == *root {
                    self.agreed = self.agreed.max(*s);
                } else {
                    let (r, agreed) = (r.clone(), self.agreed);
                    self.fail(AuditFault {
                        kind: "departs",
                        checkpoint: Some(r),
                        seq: None,
                        seq_range: Some((agreed, s - 1)),
                        detail: format!("the chain's tree of size {s} has another root than the checkpoint signed"),
                    });
                }
            }
            self.next_root += 1;
        }
    }

    fn flush_late(&mut self) {
        if let Some(l) = self.late.take() {
            self.warnings.push(format!("seqs {}..={} were sealed late: {}", l.first, l.last, l.why));
        }
    }

    /// The report, after the last block. A departure is narrowed to one
    /// seq with the tiles when they still hash to the checkpoint's root.
    pub fn finish(mut self, layout: &Layout) -> AuditReport {
        self.flush_late();
        let height = self.frontier.size();
        // Checkpoints of the empty tree (an empty chain has no block to observe).
        while let Some((0, root, r)) = self.by_size.get(self.next_root) {
            if *root != crate::merkle::empty_root() {
                let r = r.clone();
                self.fail(AuditFault {
                    kind: "departs",
                    checkpoint: Some(r),
                    seq: None,
                    seq_range: None,
                    detail: "a checkpoint of the empty tree with another root".into(),
                });
            }
            self.next_root += 1;
        }
        if let Some((s, _, r)) = self.by_size.get(self.next_root) {
            let r = r.clone();
            let s = *s;
            self.fail(AuditFault {
                kind: "truncation",
                checkpoint: Some(r),
                seq: Some(height),
                seq_range: None,
                detail: format!("a checkpoint signed a tree of {s} blocks; the chain has {height}"),
            });
        }
        if let Some(f) = &mut self.fault {
            if let (Some((lo, hi)), Some(c)) = (f.seq_range, &f.checkpoint) {
                if let Some(seq) = pin_down(layout, lo, hi + 1, c.size, &self.by_size) {
                    f.seq = Some(seq);
                    f.seq_range = None;
                    f.detail = format!(
                        "{}; seq {seq} differs from the block the checkpoint signed (the tiles still hold it)",
                        f.detail
                    );
                }
            }
        }
        let last = self.log.last().map(|c| c.r.clone());
        AuditReport {
            ok: self.fault.is_none(),
            identity: self.identity.to_vkey(),
            identity_source: self.identity_source,
            checkpoints: self.log.len(),
            cosigned: self.cosigned,
            unsealed_tail: height.saturating_sub(last.as_ref().map_or(0, |c| c.size)),
            last,
            warnings: self.warnings,
            fault: self.fault,
        }
    }
}

/// The first seq in `lo..hi` whose chain block differs from the tiles'
/// leaf, if the tiles hash to the root a checkpoint of `size` signed.
fn pin_down(layout: &Layout, lo: u64, hi: u64, size: u64, signed: &[(u64, Hash, CheckpointRef)]) -> Option<u64> {
    let reader = TileReader::new(&layout.cache.join("tiles"));
    let src = reader.source(size);
    let root = crate::merkle::root(size, &src).ok()?;
    if !signed.iter().any(|(s, r, _)| *s == size && *r == root) {
        return None;
    }
    let mut found = None;
    let mut seq = 0u64;
    let _ = crate::chain::reader::scan_from(layout, lo, |_, _, _, b| {
        seq = b.body.seq;
        if seq >= hi {
            return false;
        }
        let tile_leaf = crate::merkle::NodeSource::node(&src, 0, seq).ok();
        if tile_leaf != Some(leaf_hash(&b.hash)) {
            found = Some(seq);
            return false;
        }
        true
    });
    found
}

/// The identity key to check against: `--key` (a vkey or a file holding
/// one), else the state dir's own `keys/identity.pub`.
pub fn identity_key(layout: &Layout, key: Option<&str>) -> Result<(Verifier, String), String> {
    let read = |p: &Path| -> Result<Verifier, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        Verifier::parse_vkey(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    if let Some(k) = key {
        let v = if Path::new(k).is_file() {
            read(Path::new(k))?
        } else {
            Verifier::parse_vkey(k).map_err(|e| format!("--key: {e}"))?
        };
        return Ok((v, "--key".into()));
    }
    let on_host = super::keys::keys_dir(&layout.state_dir).join("identity.pub");
    let carried = layout.timing.join(super::keys::CARRIED_IDENTITY);
    // The host's own copy first; a snapshot or a replica has no `keys/`
    // and is checked against the copy the chain's area carries.
    let (p, what) = if on_host.exists() || !carried.exists() {
        (on_host, "on the host being verified")
    } else {
        (carried, "carried with the chain being verified")
    };
    let v = read(&p)?;
    Ok((v, format!("{} ({what}: pass --key to check against a copy kept elsewhere)", p.display())))
}
