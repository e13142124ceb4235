//! How the backend and the gateway name a prompt's KV blocks, so the gateway's
//! index of "which backend holds which prefix" speaks the backend's language.
//!
//! A sequence's tokens are cut into blocks of [`KV_BLOCK_TOKENS`]; only whole
//! blocks are named. Each block's hash covers its own token ids *and* its
//! parent's hash, so equal hashes mean equal prefixes up to and including that
//! block, never merely equal blocks at different places. The hash is XXH3-64
//! (a published, seedable, platform-independent function) over the parent's
//! hash and the ids, all little-endian: another implementation can reproduce
//! it from this description.

/// Tokens in one KV block.
pub const KV_BLOCK_TOKENS: usize = 16;

/// The parent of a sequence's first block.
const ROOT: u64 = 0x6761_6e74_7279_6b76; // "gantrykv"

/// The hash of one block of `tokens` (exactly [`KV_BLOCK_TOKENS`] of them)
/// following the block hashed `parent` (`None` for a sequence's first block).
pub fn block_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut bytes = [0u8; 8 + 4 * KV_BLOCK_TOKENS];
    bytes[..8].copy_from_slice(&parent.unwrap_or(ROOT).to_le_bytes());
    for (slot, id) in bytes[8..].chunks_exact_mut(4).zip(tokens) {
        slot.copy_from_slice(&id.to_le_bytes());
    }
    let len = 8 + 4 * tokens.len().min(KV_BLOCK_TOKENS);
    xxhash_rust::xxh3::xxh3_64(&bytes[..len])
}

/// The hashes of every whole block of `tokens`, first block first.
pub fn block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(tokens.len() / KV_BLOCK_TOKENS);
    extend_block_hashes(&mut hashes, tokens);
    hashes
}

/// Extend `hashes` (the chain of `tokens`' first `hashes.len()` blocks) with
/// the hashes of the whole blocks of `tokens` after them.
pub fn extend_block_hashes(hashes: &mut Vec<u64>, tokens: &[u32]) {
    let whole = tokens.len() / KV_BLOCK_TOKENS;
    for i in hashes.len()..whole {
        let block = &tokens[i * KV_BLOCK_TOKENS..(i + 1) * KV_BLOCK_TOKENS];
        let parent = hashes.last().copied();
        hashes.push(block_hash(parent, block));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: u32) -> Vec<u32> {
        (0..n).map(|i| i * 7 + 3).collect()
    }

    #[test]
    fn only_whole_blocks_are_named() {
        let t = tokens(KV_BLOCK_TOKENS as u32 * 2 + 5);
        assert_eq!(block_hashes(&t).len(), 2);
        assert!(block_hashes(&t[..KV_BLOCK_TOKENS - 1]).is_empty());
    }

    #[test]
    fn a_block_hash_depends_on_everything_before_it() {
        let a = tokens(KV_BLOCK_TOKENS as u32 * 2);
        let mut b = a.clone();
        b[0] += 1; // the first block differs, the second does not
        let (ha, hb) = (block_hashes(&a), block_hashes(&b));
        assert_ne!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1], "same tokens after a different prefix");
        assert_eq!(a[KV_BLOCK_TOKENS..], b[KV_BLOCK_TOKENS..]);
    }

    #[test]
    fn a_chain_extended_block_by_block_equals_the_whole() {
        let t = tokens(KV_BLOCK_TOKENS as u32 * 5 + 3);
        let mut chain = Vec::new();
        for end in 0..=t.len() {
            extend_block_hashes(&mut chain, &t[..end]);
        }
        assert_eq!(chain, block_hashes(&t));
    }

    #[test]
    fn the_hash_is_the_documented_function() {
        // XXH3-64 over the root's 8 bytes and 16 ids, little-endian: pinned so a
        // change of function (which would empty every index) is seen.
        let t: Vec<u32> = (1..=KV_BLOCK_TOKENS as u32).collect();
        let mut bytes = ROOT.to_le_bytes().to_vec();
        for id in &t {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(block_hash(None, &t), xxhash_rust::xxh3::xxh3_64(&bytes));
    }
}
