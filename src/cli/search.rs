//! `op-dbus search TEXT`: the blocks whose search vectors are nearest.

use std::io::Write;

use super::{engine_config, existing, load_config, open_index, Failure, Global, SearchArgs};
use crate::config::Overrides;
use crate::ml::search::{search_state, SearchError, SearchRequest};

pub(super) fn run(global: &Global, a: SearchArgs) -> Result<u8, Failure> {
    let flags = Overrides { vector_level: a.level.clone(), ..Default::default() };
    let cfg = existing(load_config(global, flags)?)?;
    let layout = cfg.layout();
    let filter = a.filter.filter(None)?;
    let index = open_index(&layout);
    let req = SearchRequest {
        text: &a.text,
        k: a.k,
        filter: &filter,
        engine: &engine_config(&cfg),
        cache_entries: cfg.vector.cache_entries,
        recorded_model: a.level.is_none(),
    };
    let o = search_state(&layout, index.as_ref(), &req).map_err(|e| match e {
        SearchError::BadK | SearchError::LevelNone => Failure::usage(e),
        e => Failure::runtime(e),
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&o).map_err(Failure::runtime)?);
        return Ok(0);
    }
    let r = &o.result;
    if r.vectors < o.chain {
        eprintln!(
            "op-dbus: {} of {} blocks have {} vectors; the rest are not searched yet (the daemon fills them, or `op-dbus embed --backfill`)",
            r.vectors, o.chain, r.model
        );
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for h in &r.hits {
        let line = format!("{:>8} {:.3} {} {} {} {}", h.seq, h.score, h.time, h.plugin, h.operation, h.summary);
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    let _ = out.flush();
    Ok(0)
}
