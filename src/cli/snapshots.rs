//! `op-dbus snapshots list|verify|restore`.

use super::{existing_config, open_index, Failure, Global, SnapshotsCmd, EXIT_PROBLEM};
use crate::storage::snapshot::{self, SnapshotError};

pub(super) fn run(global: &Global, c: SnapshotsCmd) -> Result<u8, Failure> {
    let layout = existing_config(global)?.layout();
    match c {
        SnapshotsCmd::List(a) => {
            let all = snapshot::list(&layout);
            if a.json {
                for s in &all {
                    println!("{}", serde_json::to_string(s).map_err(Failure::runtime)?);
                }
            } else {
                for s in &all {
                    let uuids: Vec<String> = s.areas.iter().filter_map(|a| a.uuid.clone()).collect();
                    println!(
                        "{}  {}  head seq {}  {}{}",
                        s.name,
                        s.kind,
                        s.head_seq,
                        &s.head_hash[..16],
                        if uuids.is_empty() { String::new() } else { format!("  {}", uuids.join(" ")) }
                    );
                }
                if all.is_empty() {
                    println!("no snapshots in {}", snapshot::snapshots_dir(&layout).display());
                }
            }
            Ok(0)
        }
        SnapshotsCmd::Verify { name, json } => {
            let index = open_index(&layout);
            let checks = snapshot::verify_named(&layout, index.as_ref(), name.as_deref()).map_err(|e| match e {
                SnapshotError::NotFound(_) => Failure::usage(anyhow::anyhow!("{e}; see `op-dbus snapshots list`")),
            })?;
            let mut bad = 0;
            for c in checks {
                bad += usize::from(!c.ok);
                if json {
                    println!("{}", serde_json::to_string(&c).map_err(Failure::runtime)?);
                } else {
                    match &c.problem {
                        None => println!("ok: {} matches the live chain up to seq {}", c.name, c.head_seq),
                        Some(p) => println!("FAILED: {}: {p}", c.name),
                    }
                }
            }
            Ok(if bad == 0 { 0 } else { EXIT_PROBLEM })
        }
        SnapshotsCmd::Restore { name, to } => {
            snapshot::restore(&layout, &name, &to).map_err(|e| {
                Failure::runtime(
                    anyhow::Error::from(e).context(format!("cannot restore snapshot {name} to {}", to.display())),
                )
            })?;
            println!(
                "restored {name} to {}; verify it with: op-dbus --state-dir {} verify",
                to.display(),
                to.display()
            );
            Ok(0)
        }
    }
}
