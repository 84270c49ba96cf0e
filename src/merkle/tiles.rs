//! C2SP tlog-tiles: tile names and contents, and a [`NodeSource`] over
//! tiles. A tile at level L holds up to 256 consecutive nodes of tree level
//! 8·L; tile N of level L starts at node N·256. Nodes at levels between
//! multiples of 8 are hashed from the tile below them.

use std::cell::RefCell;
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

/// The root of a complete run of 2^k hashes.
fn perfect_root(hashes: &[Hash]) -> Hash {
    if hashes.len() == 1 {
        return hashes[0];
    }
    let (l, r) = hashes.split_at(hashes.len() / 2);
    node_hash(&perfect_root(l), &perfect_root(r))
}

/// A fetched tile: (level, index) and its hashes.
type CachedTile = ((u8, u64), Arc<Vec<Hash>>);

/// Nodes of a tree of `size` leaves, read from tiles with `fetch(level,
/// n, min_width)`, which returns tile (level, n) holding at least
/// `min_width` hashes. The last `cache` tiles fetched are kept.
pub struct TileSource<F> {
    size: u64,
    fetch: F,
    cache: RefCell<Vec<CachedTile>>,
    capacity: usize,
}

impl<F> TileSource<F>
where
    F: Fn(u8, u64, u64) -> Result<Arc<Vec<Hash>>, ProofError>,
{
    pub fn new(size: u64, fetch: F, cache: usize) -> TileSource<F> {
        TileSource { size, fetch, cache: RefCell::new(Vec::new()), capacity: cache.max(1) }
    }

    fn tile(&self, level: u8, n: u64, min_width: u64) -> Result<Arc<Vec<Hash>>, ProofError> {
        {
            let c = self.cache.borrow();
            if let Some((_, t)) = c.iter().find(|(k, t)| *k == (level, n) && t.len() as u64 >= min_width) {
                return Ok(t.clone());
            }
        }
        let t = (self.fetch)(level, n, min_width)?;
        if (t.len() as u64) < min_width {
            return Err(ProofError::Missing { level: level * TILE_HEIGHT, index: n * TILE_WIDTH + t.len() as u64 });
        }
        let mut c = self.cache.borrow_mut();
        c.retain(|(k, _)| *k != (level, n));
        if c.len() >= self.capacity {
            c.remove(0);
        }
        c.push(((level, n), t.clone()));
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
        let at = (first % TILE_WIDTH) as usize;
        let t = self.tile(tile_level, n, at as u64 + count)?;
        Ok(perfect_root(&t[at..at + count as usize]))
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
