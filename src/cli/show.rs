//! `op-dbus show SEQ|HASH`: one block as JSON; exit 1 if there is none.

use super::{existing_config, open_index, Failure, Global, ShowArgs, EXIT_PROBLEM};
use crate::index::query::{self, BlockRef};

pub(super) fn run(global: &Global, a: ShowArgs) -> Result<u8, Failure> {
    let layout = existing_config(global)?.layout();
    let index = open_index(&layout);
    let Some(r) = BlockRef::parse(&a.id) else {
        return Err(Failure::usage(anyhow::anyhow!("{:?} is neither a seq number nor a 64-digit hex hash", a.id)));
    };
    let Some(b) = query::find(&layout, index.as_ref(), r).map_err(Failure::runtime)? else {
        eprintln!("op-dbus: no block {}", a.id);
        return Ok(EXIT_PROBLEM);
    };
    let j = query::block_json(&b);
    let text = if a.json { serde_json::to_string(&j) } else { serde_json::to_string_pretty(&j) };
    println!("{}", text.map_err(Failure::runtime)?);
    Ok(0)
}
