//! `op-dbus embed --backfill`: the level's search vectors, now.

use super::{engine_config, existing, init_tracing, load_config, EmbedArgs, Failure, Global};
use crate::config::Overrides;
use crate::maintenance::{embed_backfill, EmbedError};

pub(super) fn run(global: &Global, a: EmbedArgs) -> Result<u8, Failure> {
    let flags = Overrides { vector_level: a.level.clone(), ..Default::default() };
    let cfg = existing(load_config(global, flags)?)?;
    init_tracing();
    let mut progress = |stored: u64, chain: u64| eprintln!("embedded {stored} of {chain}");
    let b =
        embed_backfill(&cfg.layout(), &engine_config(&cfg), cfg.vector.cache_entries, &mut progress).map_err(|e| {
            match e {
                EmbedError::LevelNone => Failure::usage(e),
                e => Failure::runtime(e),
            }
        })?;
    let texts = b.hits + b.misses;
    println!(
        "embedded {} blocks with {} in {:.2}s ({:.0}/s); {} of {} have vectors; cache hits {} of {texts}{}",
        b.blocks,
        b.model,
        b.seconds,
        b.blocks as f64 / b.seconds.max(1e-9),
        b.stored,
        b.chain,
        b.hits,
        if texts > 0 { format!(" ({:.1}%)", 100.0 * b.hits as f64 / texts as f64) } else { String::new() }
    );
    if let Some(reason) = &b.fallback {
        eprintln!("op-dbus: the level's model did not load, so {} vectors were used: {reason}", b.model);
    }
    Ok(0)
}
