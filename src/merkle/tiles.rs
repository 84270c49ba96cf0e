//! C2SP tlog-tiles: tile names and contents, and a [`NodeSource`] over
//! tiles. A tile at level L holds up to 256 consecutive nodes of tree level
//! 8·L; tile N of level L starts at node N·256. Nodes at levels between
//! multiples of 8 are hashed from the tile below them.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{node_hash, Hash, NodeSource, ProofError};

/// Tile height (levels per tile), fixed by tlog-tiles.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// The tlog-tiles encoding of a tile index: groups of three digits, all but
/// the last prefixed with `x` (1234067 → `x001/x234/067`).
fn index_path(mut n: u64) -> String {
    let mut s = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        s = format!("x{:03}/{s}", n % 1000);
    }
    s
}

fn width_suffix(width: u64) -> String {
    if width == TILE_WIDTH {
        String::new()
    } else {
        format!(".p/{width}")
    }
}

/// `tile/<L>/<N>[.p/<W>]`.
pub fn tile_path(level: u8, n: u64, width: u64) -> String {
    format!("tile/{level}/{}{}", index_path(n), width_suffix(width))
}

/// `tile/entries/<N>[.p/<W>]`.
pub fn entries_path(n: u64, width: u64) -> String {
    format!("tile/entries/{}{}", index_path(n), width_suffix(width))
}

/// A hash tile: 1 to 256 concatenated hashes.
pub fn parse_hash_tile(b: &[u8]) -> Result<Vec<Hash>, ProofError> {
    if b.is_empty() || !b.len().is_multiple_of(32) || b.len() as u64 > TILE_WIDTH * 32 {
        return Err(ProofError::BadTile(format!("{} bytes is not 1 to 256 hashes", b.len())));
    }
    Ok(b.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect())
}

/// A fetched tile with the nodes above its hashes: `levels[0]` is the
/// tile, `levels[k]` the complete subtrees of 2^k of its hashes, so that
/// any node the tile covers is one lookup once the tile is cached.
struct Expanded {
    levels: Vec<Vec<Hash>>,
}

impl Expanded {
    fn new(tile: &[Hash]) -> Expanded {
        let mut levels = vec![tile.to_vec()];
        while levels.last().is_some_and(|l| l.len() >= 2) {
            let below = levels.last().expect("a level");
            let above = below.chunks_exact(2).map(|p| node_hash(&p[0], &p[1])).collect();
            levels.push(above);
        }
        Expanded { levels }
    }

    fn width(&self) -> u64 {
        self.levels[0].len() as u64
    }
}

/// Tiles fetched, by (level, index), with the order they came in (the
/// oldest is evicted first).
#[derive(Default)]
struct Cache {
    tiles: HashMap<(u8, u64), Arc<Expanded>>,
    order: VecDeque<(u8, u64)>,
}

/// Nodes of a tree of `size` leaves, read from tiles with `fetch(level,
/// n, min_width)`, which returns tile (level, n) holding at least
/// `min_width` hashes. The last `cache` tiles fetched are kept, with their
/// interior nodes.
pub struct TileSource<F> {
    size: u64,
    fetch: F,
    cache: RefCell<Cache>,
    capacity: usize,
}

impl<F> TileSource<F>
where
    F: Fn(u8, u64, u64) -> Result<Arc<Vec<Hash>>, ProofError>,
{
    pub fn new(size: u64, fetch: F, cache: usize) -> TileSource<F> {
        TileSource { size, fetch, cache: RefCell::new(Cache::default()), capacity: cache.max(1) }
    }

    fn tile(&self, level: u8, n: u64, min_width: u64) -> Result<Arc<Expanded>, ProofError> {
        if let Some(t) = self.cache.borrow().tiles.get(&(level, n)) {
            if t.width() >= min_width {
                return Ok(t.clone());
            }
        }
        let t = (self.fetch)(level, n, min_width)?;
        if (t.len() as u64) < min_width {
            return Err(ProofError::Missing { level: level * TILE_HEIGHT, index: n * TILE_WIDTH + t.len() as u64 });
        }
        let t = Arc::new(Expanded::new(&t));
        let mut c = self.cache.borrow_mut();
        if c.tiles.insert((level, n), t.clone()).is_none() {
            c.order.push_back((level, n));
        }
        while c.order.len() > self.capacity {
            let old = c.order.pop_front().expect("not empty");
            c.tiles.remove(&old);
        }
        Ok(t)
    }
}

impl<F> NodeSource for TileSource<F>
where
    F: Fn(u8, u64, u64) -> Result<Arc<Vec<Hash>>, ProofError>,
{
    fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        let missing = ProofError::Missing { level, index };
        // Only complete subtrees of this tree exist.
        let end =
            index.checked_add(1).and_then(|i| i.checked_mul(1u64.checked_shl(level as u32)?)).ok_or(missing.clone())?;
        if level >= 64 || end > self.size {
            return Err(missing);
        }
        let tile_level = level / TILE_HEIGHT;
        let rise = level % TILE_HEIGHT;
        let first = index << rise; // among the nodes of level 8·tile_level
        let count = 1u64 << rise;
        let n = first / TILE_WIDTH;
        let at = first % TILE_WIDTH;
        let t = self.tile(tile_level, n, at + count)?;
        // The run `at..at + count` is complete (the width covers it), so the
        // level above holds its root.
        t.levels.get(rise as usize).and_then(|l| l.get((at >> rise) as usize)).copied().ok_or(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_tlog_tiles() {
        assert_eq!(tile_path(0, 0, 256), "tile/0/000");
        assert_eq!(tile_path(1, 1234067, 256), "tile/1/x001/x234/067");
        assert_eq!(tile_path(0, 5, 17), "tile/0/005.p/17");
        assert_eq!(entries_path(1000, 256), "tile/entries/x001/000");
        assert_eq!(entries_path(3, 1), "tile/entries/003.p/1");
        // The same names as an independent implementation (whose paths
        // carry the height: tile/8/…).
        for (level, n, w) in [(0u8, 0u64, 256u32), (2, 999, 3), (1, 1_000_000, 256), (3, 12_345_678_901, 255)] {
            let theirs = tlog_tiles::tile::Tile::new(8, level, n, w, false).path();
            assert_eq!(theirs.replacen("tile/8/", "tile/", 1), tile_path(level, n, w as u64));
        }
    }

    #[test]
    fn bad_tiles_are_refused() {
        assert!(parse_hash_tile(&[]).is_err());
        assert!(parse_hash_tile(&[0; 33]).is_err());
        assert!(parse_hash_tile(&[0; 257 * 32]).is_err());
        assert_eq!(parse_hash_tile(&[7; 64]).unwrap(), vec![[7; 32], [7; 32]]);
    }
}
