//! The fixture's stand-in for a backend's prefix cache: it remembers the whole
//! blocks of the prompts it has seen (named as `gantry.inference.v1` names KV
//! blocks, [`gantry_proto::prefix`]), reports the prefix a new prompt shares
//! with them as `cached_tokens`, and tells watchers (`WatchKvBlocks`) what it
//! holds, so the gateway's prefix-aware routing can be tested without a model.
//!
//! Its tokens: token ids as given; text through its own prompt format
//! ([`format`]): one token per byte, and a chat rendered as `role: content`
//! lines, which it hands to the gateway (`GetPromptFormat`) like a real backend.

use gantry_prompt::{PromptEncoder, PromptFormat, PromptText};
use gantry_proto::prefix::{block_hashes, KV_BLOCK_TOKENS};
use gantry_proto::{self as pb};
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Changes kept for a watcher that is behind (then it gets a fresh snapshot).
const CHANGES_BUFFERED: usize = 256;

/// The fixture's chat template.
const TEMPLATE: &str =
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:";

/// The fixture's prompt format: a byte-level tokenizer (one token per byte,
/// no merges) and [`TEMPLATE`].
pub fn format() -> PromptFormat {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut bytes: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    bytes.sort_unstable();
    let vocab: tokenizers::models::bpe::Vocab = bytes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .expect("a byte-level vocabulary");
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    PromptFormat {
        tokenizer_json: tokenizer.to_string(false).expect("serializable"),
        chat_template: Some(TEMPLATE.into()),
        bos_token: String::new(),
        eos_token: String::new(),
    }
}

/// A prompt's token ids as the fixture counts them.
pub fn token_ids(encoder: &PromptEncoder, input: &Option<pb::generate_request::Input>) -> Vec<u32> {
    match input {
        Some(pb::generate_request::Input::TokenIds(t)) => t.ids.clone(),
        Some(input) => PromptText::from_input(input)
            .and_then(|text| encoder.encode_now(&text).ok())
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

struct Held {
    sequence: u64,
    blocks: HashSet<u64>,
    /// Oldest first, evicted past the bound.
    order: VecDeque<u64>,
}

/// One model's remembered blocks.
pub struct PrefixCache {
    model: String,
    max_blocks: usize,
    held: Mutex<Held>,
    changes: broadcast::Sender<pb::KvBlocksUpdate>,
}

impl PrefixCache {
    /// Remember at most `max_blocks` blocks for `model` (0: none, no reuse).
    pub fn new(model: &str, max_blocks: usize) -> PrefixCache {
        PrefixCache {
            model: model.to_string(),
            max_blocks,
            held: Mutex::new(Held {
                sequence: 0,
                blocks: HashSet::new(),
                order: VecDeque::new(),
            }),
            changes: broadcast::channel(CHANGES_BUFFERED).0,
        }
    }

    /// A prompt arrives: the tokens it reuses (whole blocks before its last
    /// token, as the real backend counts them); its blocks are remembered.
    pub fn admit(&self, ids: &[u32]) -> u32 {
        if self.max_blocks == 0 || ids.is_empty() {
            return 0;
        }
        let reusable = block_hashes(&ids[..ids.len() - 1]);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let hit = reusable
            .iter()
            .take_while(|h| held.blocks.contains(h))
            .count();
        let (mut stored, mut removed) = (Vec::new(), Vec::new());
        for hash in block_hashes(ids) {
            if held.blocks.insert(hash) {
                held.order.push_back(hash);
                stored.push(hash);
            }
        }
        while held.order.len() > self.max_blocks {
            let old = held.order.pop_front().expect("non-empty");
            held.blocks.remove(&old);
            match stored.iter().position(|h| *h == old) {
                Some(i) => {
                    stored.remove(i);
                }
                None => removed.push(old),
            }
        }
        if !stored.is_empty() || !removed.is_empty() {
            held.sequence += 1;
            let _ = self.changes.send(pb::KvBlocksUpdate {
                model: self.model.clone(),
                sequence: held.sequence,
                snapshot: false,
                block_tokens: KV_BLOCK_TOKENS as u32,
                stored,
                removed,
            });
        }
        (hit * KV_BLOCK_TOKENS) as u32
    }

    /// A snapshot and the changes after it.
    pub fn subscribe(&self) -> (pb::KvBlocksUpdate, broadcast::Receiver<pb::KvBlocksUpdate>) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = pb::KvBlocksUpdate {
            model: self.model.clone(),
            sequence: held.sequence,
            snapshot: true,
            block_tokens: KV_BLOCK_TOKENS as u32,
            stored: held.order.iter().copied().collect(),
            removed: Vec::new(),
        };
        (snapshot, self.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_prompt_reuses_its_whole_blocks_and_the_bound_holds() {
        let cache = PrefixCache::new("m", 4);
        let ids: Vec<u32> = (0..40).collect();
        assert_eq!(cache.admit(&ids), 0);
        assert_eq!(cache.admit(&ids), 32);
        let other: Vec<u32> = (100..200).collect();
        cache.admit(&other);
        let (snapshot, _) = cache.subscribe();
        assert_eq!(snapshot.stored.len(), 4, "bounded");
        assert_eq!(cache.admit(&ids), 0, "evicted oldest first");
    }
}
