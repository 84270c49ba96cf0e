//! `op-dbus status`: chain, index, vectors and storage of a state dir.

use super::{existing_config, open_index, Failure, Global, JsonArg};

pub(super) fn run(global: &Global, a: JsonArg) -> Result<u8, Failure> {
    let cfg = existing_config(global)?;
    let layout = cfg.layout();
    let index = open_index(&layout);
    let s = crate::status::read(&layout, index.as_ref(), cfg.vector_level).map_err(Failure::runtime)?;
    if a.json {
        println!("{}", serde_json::to_string(&s).map_err(Failure::runtime)?);
        return Ok(0);
    }
    println!("state dir   {} ({}; storage: {})", s.state_dir.display(), s.filesystem, s.storage);
    println!("writer      {}", s.writer_pid.as_ref().map_or("none running".into(), |p| format!("pid {p}")));
    let head = match (s.chain.head_seq, &s.chain.head_hash) {
        (Some(seq), Some(hash)) => format!("seq {seq} hash {hash}"),
        _ => "none".into(),
    };
    println!(
        "chain       {} blocks in {} segments, {} bytes; head {head}",
        s.chain.blocks, s.chain.segments, s.chain.bytes
    );
    match (s.index.blocks, s.index.lag) {
        (Some(n), Some(lag)) => println!("index       {n} blocks ({lag} behind), {} bytes", s.index.bytes),
        _ => println!("index       absent (run `op-dbus reindex`)"),
    }
    let v = &s.vectors;
    match (&v.model, &v.level) {
        (Some(model), Some(level)) => {
            println!("vectors     level {level}: {model}, {} blocks searchable ({} behind)", v.stored, v.lag);
            if let Some(reason) = &v.fallback {
                println!("            FALLBACK: the level's model did not load: {reason}");
            }
        }
        _ => println!("vectors     level {} (no search vectors yet)", s.vector_level),
    }
    let p = &s.proof;
    match &p.identity {
        None => println!("proof       no keys yet (`op-dbus keys init`, or the first start makes them)"),
        Some(id) => {
            let until = p.provisioned_until.unwrap_or(0);
            let left = until as i64 - crate::codec::now_ns() / 1_000_000_000;
            println!(
                "proof       identity {id}; epoch keys until {} ({}; renew before with `op-dbus keys renew`){}",
                super::keys::time(until),
                super::keys::left_text(left),
                if p.identity_secret_on_host { "; the identity secret is on this host: move it off" } else { "" }
            );
        }
    }
    match p.last_checkpoint_size {
        Some(size) => println!("checkpoint  size {size}, {} blocks not yet sealed", p.unsealed),
        None => println!("checkpoint  none yet"),
    }
    if let Some(e) = &p.error {
        println!("            ERROR: {e}");
    }
    Ok(0)
}
