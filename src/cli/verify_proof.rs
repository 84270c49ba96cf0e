//! `op-dbus verify-proof FILE --key KEY`: checks a bundle offline, with
//! public keys only; exit 0 when it proves what it says, 1 when not.

use std::io::Read;

use super::{read_vkey, Failure, VerifyProofArgs, EXIT_PROBLEM};
use crate::proof::bundle::{verify_bundle, MAX_BUNDLE_BYTES};

pub(super) fn run(a: VerifyProofArgs) -> Result<u8, Failure> {
    let identity = read_vkey("--key", &a.key)?;
    let witnesses = a.witnesses.iter().map(|w| read_vkey("--witness", w)).collect::<Result<Vec<_>, _>>()?;
    if a.min_witnesses > witnesses.len() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--min-witnesses {} but only {} --witness keys given",
            a.min_witnesses,
            witnesses.len()
        )));
    }
    let mut bytes = Vec::new();
    let limit = MAX_BUNDLE_BYTES as u64 + 1;
    let read = if a.file.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(&a.file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| Failure::usage(anyhow::anyhow!("{}: {e}", a.file.display())))?;
    match verify_bundle(&bytes, &identity, &witnesses, a.min_witnesses) {
        Ok(p) => {
            if a.json {
                println!("{}", serde_json::to_string(&p).map_err(Failure::runtime)?);
            } else {
                let names: Vec<_> = p.witnesses.iter().map(|(n, _)| n.as_str()).collect();
                match (&p.block, p.old_size) {
                    (Some(b), _) => println!(
                        "ok: block {} is entry {} of {}'s checkpoint of size {} (time {}), cosigned by {} witness(es){}",
                        b["hash"].as_str().unwrap_or("?"),
                        b["seq"],
                        p.origin,
                        p.checkpoint_size,
                        p.checkpoint_time_ns,
                        names.len(),
                        if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) }
                    ),
                    (None, Some(old)) => println!(
                        "ok: {}'s tree of size {old} is a prefix of its tree of size {} (time {}), cosigned by {} witness(es)",
                        p.origin,
                        p.checkpoint_size,
                        p.checkpoint_time_ns,
                        names.len()
                    ),
                    _ => println!("ok"),
                }
                if let Some(b) = &p.block {
                    println!("{}", serde_json::to_string_pretty(b).map_err(Failure::runtime)?);
                }
            }
            Ok(0)
        }
        Err(e) => {
            if a.json {
                println!("{}", serde_json::json!({"ok": false, "error": e.to_string()}));
            } else {
                println!("FAILED: {e}");
            }
            Ok(EXIT_PROBLEM)
        }
    }
}
