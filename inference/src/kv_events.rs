//! Which KV blocks a model holds, told to whoever watches (`WatchKvBlocks`):
//! a snapshot first, then each step's changes, numbered so a watcher knows it
//! missed none.
//!
//! The scheduler thread records each step's [`KvEvent`]s here. A mirror of
//! the named blocks and the broadcast of changes sit behind one lock, so a
//! watcher's snapshot and the changes it receives after it meet exactly. A
//! watcher that falls more than the buffer behind gets a fresh snapshot
//! instead of a gap; the buffer, not the watcher, bounds memory.

use crate::kv_blocks::KvEvent;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Changes kept for watchers that are behind, per model.
pub const KV_CHANGES_BUFFERED: usize = 1024;

/// One step's net change to a model's named blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvChange {
    /// The model's change counter after this change.
    pub sequence: u64,
    /// Blocks named, in the order they were (a parent before its child).
    pub stored: Vec<u64>,
    /// Blocks evicted.
    pub removed: Vec<u64>,
}

/// Every block a model holds, at one change counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSnapshot {
    /// The counter of the last change included.
    pub sequence: u64,
    /// Every named block.
    pub blocks: Vec<u64>,
}

/// What a watcher receives next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvUpdate {
    /// Everything, replacing what the watcher knew.
    Snapshot(KvSnapshot),
    /// The next change.
    Change(Arc<KvChange>),
}

struct Mirror {
    sequence: u64,
    named: HashSet<u64>,
}

/// One model's named blocks and their changes.
pub struct KvEventLog {
    mirror: Mutex<Mirror>,
    changes: broadcast::Sender<Arc<KvChange>>,
}

impl std::fmt::Debug for KvEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvEventLog")
    }
}

impl KvEventLog {
    /// An empty log keeping `buffered` changes for watchers that are behind.
    pub fn new(buffered: usize) -> KvEventLog {
        KvEventLog {
            mirror: Mutex::new(Mirror {
                sequence: 0,
                named: HashSet::new(),
            }),
            changes: broadcast::channel(buffered.max(1)).0,
        }
    }

    /// Record one step's events as one change (nothing when they cancel out).
    pub fn record(&self, events: &[KvEvent]) {
        if events.is_empty() {
            return;
        }
        let mut mirror = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
        // Net effect per block, in the order blocks were first touched (a
        // chain's parent before its child): a block evicted and named again in
        // one step (or the reverse) may end where it started.
        let mut order = Vec::new();
        let mut ends: HashMap<u64, bool> = HashMap::new();
        for event in events {
            let (hash, present) = match *event {
                KvEvent::Stored(h) => (h, true),
                KvEvent::Removed(h) => (h, false),
            };
            if ends.insert(hash, present).is_none() {
                order.push(hash);
            }
        }
        let (mut stored, mut removed) = (Vec::new(), Vec::new());
        for hash in order {
            match (mirror.named.contains(&hash), ends[&hash]) {
                (false, true) => {
                    mirror.named.insert(hash);
                    stored.push(hash);
                }
                (true, false) => {
                    mirror.named.remove(&hash);
                    removed.push(hash);
                }
                _ => {}
            }
        }
        if stored.is_empty() && removed.is_empty() {
            return;
        }
        mirror.sequence += 1;
        let change = KvChange {
            sequence: mirror.sequence,
            stored,
            removed,
        };
        // No watcher is not an error; sent under the lock so a snapshot is
        // taken either before this change or after it, never halfway.
        let _ = self.changes.send(Arc::new(change));
    }

    /// A snapshot and the changes after it.
    pub fn watch(self: &Arc<Self>) -> KvWatch {
        let (snapshot, changes) = self.subscribe();
        KvWatch {
            log: self.clone(),
            pending: Some(snapshot),
            changes,
        }
    }

    fn subscribe(&self) -> (KvSnapshot, broadcast::Receiver<Arc<KvChange>>) {
        let mirror = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = KvSnapshot {
            sequence: mirror.sequence,
            blocks: mirror.named.iter().copied().collect(),
        };
        (snapshot, self.changes.subscribe())
    }
}

/// A watcher of one [`KvEventLog`].
pub struct KvWatch {
    log: Arc<KvEventLog>,
    pending: Option<KvSnapshot>,
    changes: broadcast::Receiver<Arc<KvChange>>,
}

impl KvWatch {
    /// The next update: the snapshot first; `None` once the log is gone.
    pub async fn next(&mut self) -> Option<KvUpdate> {
        if let Some(snapshot) = self.pending.take() {
            return Some(KvUpdate::Snapshot(snapshot));
        }
        match self.changes.recv().await {
            Ok(change) => Some(KvUpdate::Change(change)),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (snapshot, changes) = self.log.subscribe();
                self.changes = changes;
                Some(KvUpdate::Snapshot(snapshot))
            }
            // The sender lives in the log this watcher holds: never closed.
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KvEvent::{Removed, Stored};

    fn sorted(mut v: Vec<u64>) -> Vec<u64> {
        v.sort_unstable();
        v
    }

    #[tokio::test]
    async fn a_watcher_gets_a_snapshot_then_every_change_in_order() {
        let log = Arc::new(KvEventLog::new(8));
        log.record(&[Stored(1), Stored(2)]);
        let mut watch = log.watch();
        log.record(&[Removed(1), Stored(3)]);
        let Some(KvUpdate::Snapshot(s)) = watch.next().await else {
            panic!("snapshot first")
        };
        assert_eq!((s.sequence, sorted(s.blocks)), (1, vec![1, 2]));
        let Some(KvUpdate::Change(c)) = watch.next().await else {
            panic!("then the change")
        };
        assert_eq!((c.sequence, &c.stored, &c.removed), (2, &vec![3], &vec![1]));
    }

    #[tokio::test]
    async fn events_that_cancel_out_in_one_step_are_no_change() {
        let log = Arc::new(KvEventLog::new(8));
        log.record(&[Stored(1)]);
        let mut watch = log.watch();
        watch.next().await;
        // Evicted and named again; named and evicted.
        log.record(&[Removed(1), Stored(1), Stored(2), Removed(2)]);
        log.record(&[Stored(5)]);
        let Some(KvUpdate::Change(c)) = watch.next().await else {
            panic!("a change")
        };
        assert_eq!((c.sequence, &c.stored), (2, &vec![5]));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_a_fresh_snapshot_not_a_gap() {
        let log = Arc::new(KvEventLog::new(2));
        let mut watch = log.watch();
        watch.next().await;
        for h in 10..20 {
            log.record(&[Stored(h)]);
        }
        let Some(KvUpdate::Snapshot(s)) = watch.next().await else {
            panic!("a fresh snapshot")
        };
        assert_eq!(s.sequence, 10);
        assert_eq!(sorted(s.blocks), (10..20).collect::<Vec<_>>());
        log.record(&[Removed(10)]);
        let Some(KvUpdate::Change(c)) = watch.next().await else {
            panic!("then changes again")
        };
        assert_eq!(c.sequence, 11);
    }
}
