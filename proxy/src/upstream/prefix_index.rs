//! Which KV blocks one inference backend holds, per model, as its
//! `WatchKvBlocks` stream tells: a snapshot, then numbered changes.
//!
//! Blocks are named as the backend names them ([`gantry_proto::prefix`]), so
//! the gateway can tell how long a prefix of a prompt a backend already has
//! computed by walking the prompt's block names until the first it lacks.
//!
//! Bounded: only models the pool is configured with are indexed (a backend
//! cannot add entries for others), and at most `max_blocks` names per backend
//! and model; names past the bound are dropped, which only makes the index
//! answer "not held" for them. A change that does not follow the last one
//! (a gap) empties the model's entry: the caller resubscribes for a snapshot.
//! When the stream ends (the backend restarted or is gone), [`Self::clear`]
//! empties everything, so nothing stale steers a request.

use gantry_proto::KvBlocksUpdate;
use std::collections::{HashMap, HashSet};

/// Why an update was not applied in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexProblem {
    /// A change's number did not follow the last one: changes were missed.
    Gap,
    /// More names than `max_blocks`: the rest were dropped.
    OverLimit,
}

impl IndexProblem {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            IndexProblem::Gap => "gap",
            IndexProblem::OverLimit => "over_limit",
        }
    }
}

#[derive(Debug, Default)]
struct ModelBlocks {
    /// The number of the last snapshot or change applied.
    sequence: u64,
    blocks: HashSet<u64>,
}

/// One backend's named blocks, per model.
#[derive(Debug, Default)]
pub struct BackendBlocks {
    models: HashMap<String, ModelBlocks>,
}

impl BackendBlocks {
    /// Apply one update for a model in `models`, holding at most `max_blocks`
    /// names for it. Updates for other models are ignored.
    pub fn apply(
        &mut self,
        update: KvBlocksUpdate,
        models: &[String],
        max_blocks: usize,
    ) -> Result<(), IndexProblem> {
        if !models.contains(&update.model) {
            return Ok(());
        }
        let entry = self.models.entry(update.model).or_default();
        if update.snapshot {
            entry.blocks.clear();
        } else if update.sequence != entry.sequence + 1 {
            entry.blocks.clear();
            entry.sequence = 0;
            return Err(IndexProblem::Gap);
        } else {
            for hash in &update.removed {
                entry.blocks.remove(hash);
            }
        }
        entry.sequence = update.sequence;
        let mut dropped = false;
        for hash in update.stored {
            if entry.blocks.len() >= max_blocks {
                dropped = true;
                break;
            }
            entry.blocks.insert(hash);
        }
        if dropped {
            Err(IndexProblem::OverLimit)
        } else {
            Ok(())
        }
    }

    /// Forget everything (the backend's stream ended).
    pub fn clear(&mut self) {
        self.models.clear();
    }

    /// How many of `hashes` (a prompt's block names, first first) this backend
    /// holds for `model` without a break from the first.
    pub fn matched_blocks(&self, model: &str, hashes: &[u64]) -> usize {
        self.models.get(model).map_or(0, |m| {
            hashes.iter().take_while(|h| m.blocks.contains(h)).count()
        })
    }

    /// Names held for `model`.
    pub fn len(&self, model: &str) -> usize {
        self.models.get(model).map_or(0, |m| m.blocks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<String> {
        vec!["m".to_string()]
    }

    fn update(sequence: u64, snapshot: bool, stored: &[u64], removed: &[u64]) -> KvBlocksUpdate {
        KvBlocksUpdate {
            model: "m".into(),
            sequence,
            snapshot,
            block_tokens: 16,
            stored: stored.to_vec(),
            removed: removed.to_vec(),
        }
    }

    #[test]
    fn a_snapshot_then_changes_give_the_leading_match() {
        let mut b = BackendBlocks::default();
        b.apply(update(4, true, &[1, 2], &[]), &models(), 100)
            .unwrap();
        b.apply(update(5, false, &[3], &[]), &models(), 100)
            .unwrap();
        assert_eq!(b.matched_blocks("m", &[1, 2, 3, 9]), 3);
        b.apply(update(6, false, &[], &[2]), &models(), 100)
            .unwrap();
        assert_eq!(
            b.matched_blocks("m", &[1, 2, 3]),
            1,
            "a break ends the match"
        );
        assert_eq!(b.matched_blocks("other", &[1]), 0);
    }

    #[test]
    fn a_gap_empties_the_model_until_the_next_snapshot() {
        let mut b = BackendBlocks::default();
        b.apply(update(1, true, &[1], &[]), &models(), 100).unwrap();
        assert_eq!(
            b.apply(update(3, false, &[2], &[]), &models(), 100),
            Err(IndexProblem::Gap)
        );
        assert_eq!(b.len("m"), 0);
        b.apply(update(3, true, &[1, 2], &[]), &models(), 100)
            .unwrap();
        assert_eq!(b.matched_blocks("m", &[1, 2]), 2);
    }

    #[test]
    fn unconfigured_models_and_names_past_the_bound_are_not_held() {
        let mut b = BackendBlocks::default();
        let mut other = update(1, true, &[1, 2, 3], &[]);
        other.model = "not-in-the-pool".into();
        b.apply(other, &models(), 100).unwrap();
        assert_eq!(b.len("not-in-the-pool"), 0);
        assert_eq!(
            b.apply(update(1, true, &[1, 2, 3], &[]), &models(), 2),
            Err(IndexProblem::OverLimit)
        );
        assert_eq!(b.len("m"), 2);
        // Random churn never grows past the bound.
        let mut seq = 1;
        for i in 0..1000u64 {
            seq += 1;
            let _ = b.apply(update(seq, false, &[i * 7, i * 7 + 1], &[i]), &models(), 2);
            assert!(b.len("m") <= 2);
        }
    }

    #[test]
    fn clearing_forgets_every_model() {
        let mut b = BackendBlocks::default();
        b.apply(update(1, true, &[1], &[]), &models(), 100).unwrap();
        b.clear();
        assert_eq!(b.matched_blocks("m", &[1]), 0);
    }
}
