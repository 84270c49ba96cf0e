//! `op-dbus log`: the blocks a filter matches, oldest first.

use std::io::Write;

use super::{existing_config, open_index, Failure, Global, LogArgs};
use crate::index::query;

pub(super) fn run(global: &Global, a: LogArgs) -> Result<u8, Failure> {
    let layout = existing_config(global)?.layout();
    let filter = a.filter.filter(a.limit)?;
    let index = open_index(&layout);
    let blocks = query::query(&layout, index.as_ref(), &filter).map_err(Failure::runtime)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for b in &blocks {
        let line = if a.json {
            serde_json::to_string(&query::block_json(b)).map_err(Failure::runtime)?
        } else {
            query::block_line(b)
        };
        if writeln!(out, "{line}").is_err() {
            break; // stdout closed (e.g. piped into head)
        }
    }
    let _ = out.flush();
    Ok(0)
}
