//! The KV cache of a CPU model, in blocks shared by prefix.
//!
//! Keys and values live in fixed-size blocks of [`KV_BLOCK_TOKENS`] positions
//! (every layer of those positions in one block). A sequence's cache is a list
//! of blocks; a block that is full is named by the hash chain of
//! [`gantry_proto::prefix`] and registered here, so a later sequence whose
//! prompt starts with the same tokens takes the block instead of computing it:
//! its prefill starts after the longest run of named blocks it matches.
//!
//! Blocks are reference-counted while sequences use them; when the last user
//! leaves, a named block is *kept* (evictable, least recently used first) and
//! an unnamed one (a partly filled tail, or a duplicate of a block already
//! named) is freed. Kept blocks are bounded twice: by `prefix_cache_bytes` on
//! their own and, with in-use blocks, by the model's `kv_cache_budget_bytes`.
//! A block in use is never evicted, whatever the bounds say: admission has
//! already reserved room for every running sequence.
//!
//! Every block named and every block evicted is also recorded as a
//! [`KvEvent`], which the scheduler publishes for routers that place
//! requests where their prefix already is.

use gantry_proto::prefix::KV_BLOCK_TOKENS;
use std::collections::{BTreeMap, HashMap};

/// Index of a block in its [`KvBlocks`].
pub type BlockId = u32;

/// The shape of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Transformer layers.
    pub n_layer: usize,
    /// Floats of one position's keys in one layer (`n_kv_head × head_dim`).
    pub kv_width: usize,
}

impl BlockLayout {
    /// Floats of keys (or values) of one layer in one block.
    fn layer_len(&self) -> usize {
        KV_BLOCK_TOKENS * self.kv_width
    }

    /// Bytes of one block (keys and values of every layer).
    pub fn block_bytes(&self) -> usize {
        2 * self.n_layer * self.layer_len() * std::mem::size_of::<f32>()
    }
}

/// How much the cache may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Blocks in use and kept together, bytes (`kv_cache_budget_bytes`): kept
    /// blocks are evicted to stay under it. `None`: no joint bound.
    pub total_bytes: Option<u64>,
    /// Kept blocks alone, bytes (`prefix_cache_bytes`); 0 keeps none (no reuse).
    pub kept_bytes: u64,
}

impl KvLimits {
    /// No joint bound and nothing kept: every block is freed when released.
    pub const NO_REUSE: KvLimits = KvLimits {
        total_bytes: None,
        kept_bytes: 0,
    };
}

/// A change to the set of named blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvEvent {
    /// A block was named: a prompt with this prefix can reuse it.
    Stored(u64),
    /// A named block was evicted.
    Removed(u64),
}

struct Block {
    /// `[layer][position][kv_width]`.
    keys: Vec<f32>,
    values: Vec<f32>,
    /// Sequences using it.
    refs: u32,
    /// Its name once full and registered.
    hash: Option<u64>,
    /// Its key in `evictable` while unused.
    released_at: u64,
}

/// The blocks of one model, the index of named ones, and their LRU order.
pub struct KvBlocks {
    layout: BlockLayout,
    limits: KvLimits,
    blocks: Vec<Option<Block>>,
    /// Ids of empty slots in `blocks`.
    vacant: Vec<BlockId>,
    /// Named blocks, used or kept.
    named: HashMap<u64, BlockId>,
    /// Named blocks no sequence uses, oldest release first.
    evictable: BTreeMap<u64, BlockId>,
    clock: u64,
    /// Blocks allocated (used or kept).
    live: usize,
    events: Vec<KvEvent>,
}

impl std::fmt::Debug for KvBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBlocks")
            .field("layout", &self.layout)
            .field("live", &self.live)
            .field("kept", &self.evictable.len())
            .finish()
    }
}

impl KvBlocks {
    /// An empty cache.
    pub fn new(layout: BlockLayout, limits: KvLimits) -> KvBlocks {
        KvBlocks {
            layout,
            limits,
            blocks: Vec::new(),
            vacant: Vec::new(),
            named: HashMap::new(),
            evictable: BTreeMap::new(),
            clock: 0,
            live: 0,
            events: Vec::new(),
        }
    }

    /// Whether blocks are kept for reuse at all.
    pub fn reuses(&self) -> bool {
        self.limits.kept_bytes >= self.layout.block_bytes() as u64
    }

    /// Bytes of blocks some sequence uses.
    pub fn used_bytes(&self) -> usize {
        (self.live - self.evictable.len()) * self.layout.block_bytes()
    }

    /// Bytes of blocks kept for reuse.
    pub fn kept_bytes(&self) -> usize {
        self.evictable.len() * self.layout.block_bytes()
    }

    /// Named blocks (used or kept).
    pub fn named_blocks(&self) -> usize {
        self.named.len()
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    /// The named blocks of the longest prefix of `hashes` held here, each now
    /// used once more by the caller (who releases them with [`Self::release`]).
    pub fn take_prefix(&mut self, hashes: &[u64]) -> Vec<BlockId> {
        let mut taken = Vec::new();
        for hash in hashes {
            let Some(&id) = self.named.get(hash) else {
                break;
            };
            let block = self.block_mut(id);
            block.refs += 1;
            if block.refs == 1 {
                let at = block.released_at;
                self.evictable.remove(&at);
            }
            taken.push(id);
        }
        taken
    }

    /// A new block for the caller alone, evicting kept blocks to stay within
    /// the joint budget (none in use is ever evicted).
    pub fn allocate(&mut self) -> BlockId {
        let bytes = self.layout.block_bytes() as u64;
        let mut reused = None;
        if let Some(total) = self.limits.total_bytes {
            while (self.live as u64 + 1) * bytes > total {
                match self.evict_oldest() {
                    Some(block) => reused = Some(block),
                    None => break,
                }
            }
        }
        let len = self.layout.n_layer * self.layout.layer_len();
        let (keys, values) = match reused {
            Some(b) => (b.keys, b.values),
            None => (vec![0.0; len], vec![0.0; len]),
        };
        let block = Block {
            keys,
            values,
            refs: 1,
            hash: None,
            released_at: 0,
        };
        self.live += 1;
        match self.vacant.pop() {
            Some(id) => {
                self.blocks[id as usize] = Some(block);
                id
            }
            None => {
                self.blocks.push(Some(block));
                (self.blocks.len() - 1) as BlockId
            }
        }
    }

    /// Name a full block the caller uses: from now on a prompt with this
    /// prefix can take it. A block already named (the same prefix computed by
    /// two sequences at once) stays unnamed and is freed when released.
    pub fn name(&mut self, id: BlockId, hash: u64) {
        if !self.reuses() || self.named.contains_key(&hash) {
            return;
        }
        self.block_mut(id).hash = Some(hash);
        self.named.insert(hash, id);
        self.events.push(KvEvent::Stored(hash));
    }

    /// The caller no longer uses `ids` (a sequence's blocks, first block
    /// first). Named blocks nobody uses are kept, the deepest of a chain the
    /// first to go; the rest are freed.
    pub fn release(&mut self, ids: &[BlockId]) {
        for &id in ids.iter().rev() {
            let block = self.block_mut(id);
            block.refs -= 1;
            if block.refs > 0 {
                continue;
            }
            if block.hash.is_some() {
                self.clock += 1;
                let at = self.clock;
                self.block_mut(id).released_at = at;
                self.evictable.insert(at, id);
            } else {
                self.free(id);
            }
        }
        let bytes = self.layout.block_bytes() as u64;
        while self.evictable.len() as u64 * bytes > self.limits.kept_bytes {
            self.evict_oldest();
        }
    }

    /// Keys and values of `layer` in block `id`: `[position][kv_width]` each.
    pub fn layer(&self, id: BlockId, layer: usize) -> (&[f32], &[f32]) {
        let n = self.layout.layer_len();
        let block = self.blocks[id as usize].as_ref().expect("live block");
        (
            &block.keys[layer * n..(layer + 1) * n],
            &block.values[layer * n..(layer + 1) * n],
        )
    }

    /// Keys and values of `layer` in block `id`, to write.
    pub fn layer_mut(&mut self, id: BlockId, layer: usize) -> (&mut [f32], &mut [f32]) {
        let n = self.layout.layer_len();
        let block = self.block_mut(id);
        (
            &mut block.keys[layer * n..(layer + 1) * n],
            &mut block.values[layer * n..(layer + 1) * n],
        )
    }

    fn block_mut(&mut self, id: BlockId) -> &mut Block {
        self.blocks[id as usize].as_mut().expect("live block")
    }

    /// Evict the kept block released longest ago; its storage, if any was kept.
    fn evict_oldest(&mut self) -> Option<Block> {
        let (_, id) = self.evictable.pop_first()?;
        let block = self.free(id);
        if let Some(hash) = block.hash {
            self.named.remove(&hash);
            self.events.push(KvEvent::Removed(hash));
        }
        Some(block)
    }

    fn free(&mut self, id: BlockId) -> Block {
        let block = self.blocks[id as usize].take().expect("live block");
        self.vacant.push(id);
        self.live -= 1;
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: BlockLayout = BlockLayout {
        n_layer: 2,
        kv_width: 4,
    };

    fn blocks(total: Option<u64>, kept: u64) -> KvBlocks {
        let b = LAYOUT.block_bytes() as u64;
        KvBlocks::new(
            LAYOUT,
            KvLimits {
                total_bytes: total.map(|n| n * b),
                kept_bytes: kept * b,
            },
        )
    }

    /// A sequence of `n` full blocks named 1..=n (as a chain would be).
    fn sequence(kv: &mut KvBlocks, first_hash: u64, n: u64) -> Vec<BlockId> {
        (0..n)
            .map(|i| {
                let id = kv.allocate();
                kv.name(id, first_hash + i);
                id
            })
            .collect()
    }

    #[test]
    fn a_released_named_block_is_kept_and_taken_again() {
        let mut kv = blocks(None, 8);
        let ids = sequence(&mut kv, 1, 3);
        kv.layer_mut(ids[0], 1).0[0] = 7.0;
        kv.release(&ids);
        assert_eq!(kv.kept_bytes(), 3 * LAYOUT.block_bytes());
        // A prompt sharing the first two blocks, then diverging.
        let taken = kv.take_prefix(&[1, 2, 99]);
        assert_eq!(taken, ids[..2]);
        assert_eq!(kv.layer(taken[0], 1).0[0], 7.0, "the same keys");
        assert_eq!(kv.kept_bytes(), LAYOUT.block_bytes());
        assert_eq!(
            kv.take_events(),
            vec![KvEvent::Stored(1), KvEvent::Stored(2), KvEvent::Stored(3)]
        );
    }

    #[test]
    fn unnamed_and_duplicate_blocks_are_freed_on_release() {
        let mut kv = blocks(None, 8);
        let first = sequence(&mut kv, 1, 1);
        let tail = kv.allocate();
        let duplicate = sequence(&mut kv, 1, 1);
        kv.release(&[first[0], tail]);
        kv.release(&duplicate);
        assert_eq!(kv.kept_bytes(), LAYOUT.block_bytes(), "one copy kept");
        assert_eq!(kv.used_bytes(), 0);
        assert_eq!(kv.take_prefix(&[1]), first);
    }

    #[test]
    fn kept_blocks_past_their_bound_go_deepest_and_oldest_first() {
        let mut kv = blocks(None, 3);
        let a = sequence(&mut kv, 10, 2);
        kv.release(&a);
        let b = sequence(&mut kv, 20, 2);
        kv.release(&b);
        // Four kept, room for three: the oldest release goes, which is a's
        // deepest block (a chain is released tail first).
        assert_eq!(kv.kept_bytes(), 3 * LAYOUT.block_bytes());
        assert_eq!(kv.take_prefix(&[10, 11]).len(), 1);
        assert_eq!(kv.take_events().last(), Some(&KvEvent::Removed(11)));
    }

    #[test]
    fn eviction_under_a_tiny_budget_never_frees_a_block_in_use() {
        // Room for four blocks in all.
        let mut kv = blocks(Some(4), 100);
        let used = sequence(&mut kv, 1, 3);
        let kept = sequence(&mut kv, 100, 1);
        kv.release(&kept);
        for (i, &id) in used.iter().enumerate() {
            kv.layer_mut(id, 0).0[0] = i as f32 + 1.0;
        }
        // Two more blocks wanted: the kept one goes, then the budget is
        // overrun rather than a used block taken.
        let more = [kv.allocate(), kv.allocate()];
        assert!(!more.iter().any(|id| used.contains(id)));
        for (i, &id) in used.iter().enumerate() {
            assert_eq!(kv.layer(id, 0).0[0], i as f32 + 1.0);
        }
        assert_eq!(kv.take_prefix(&[1, 2, 3]), used);
        assert!(kv.take_prefix(&[100]).is_empty(), "the kept block went");
        assert_eq!(kv.used_bytes(), 5 * LAYOUT.block_bytes());
    }

    #[test]
    fn a_zero_byte_prefix_cache_names_nothing() {
        let mut kv = blocks(None, 0);
        let ids = sequence(&mut kv, 1, 2);
        kv.release(&ids);
        assert_eq!(kv.kept_bytes(), 0);
        assert!(kv.take_events().is_empty());
        assert!(kv.take_prefix(&[1]).is_empty());
    }

    #[test]
    fn random_churn_stays_within_the_kept_bound_and_frees_everything() {
        let mut kv = blocks(Some(64), 10);
        let mut state = 0x2545_f491_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut running: Vec<Vec<BlockId>> = Vec::new();
        for _ in 0..2000 {
            if running.len() < 6 && next() % 2 == 0 {
                // A new sequence: a prefix from a small set, then its own blocks.
                let family = next() % 4 * 1000;
                let depth = next() % 4;
                let hashes: Vec<u64> = (0..depth).map(|i| family + i).collect();
                let mut ids = kv.take_prefix(&hashes);
                for i in ids.len() as u64..depth + 1 {
                    let id = kv.allocate();
                    if i < depth {
                        kv.name(id, family + i);
                    }
                    ids.push(id);
                }
                running.push(ids);
            } else if !running.is_empty() {
                let i = (next() % running.len() as u64) as usize;
                let ids = running.swap_remove(i);
                kv.release(&ids);
            }
            assert!(kv.kept_bytes() <= 10 * LAYOUT.block_bytes());
        }
        for ids in running.drain(..) {
            kv.release(&ids);
        }
        assert_eq!(kv.used_bytes(), 0);
    }
}
