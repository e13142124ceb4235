//! Shared queues: named FIFO queues of byte strings between a plugin's
//! instances (`proxy_register_shared_queue` and friends).
//!
//! A plugin's queues are its own (other plugins cannot resolve them). Any
//! instance may register, resolve, enqueue and dequeue; an enqueue marks the
//! queue ready, and the plugin's background instance, the owner when its
//! first instance registered a queue, gets `proxy_on_queue_ready` for it
//! (see [`crate::background`]). Everything held (queue names, items, and
//! [`SHARED_QUEUE_ENTRY_BYTES`] per queue and per item) counts against
//! `shared_queue_bytes`; an enqueue past it is refused, never waited for.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

/// Bytes of bookkeeping counted per queue and per queued item.
pub const SHARED_QUEUE_ENTRY_BYTES: usize = 64;

/// Why a queue call was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No queue has this token.
    NotFound,
    /// `shared_queue_bytes` would be exceeded.
    Full,
}

/// One plugin's queues.
#[derive(Debug)]
pub(crate) struct Queues {
    inner: Mutex<Inner>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Token (index + 1) by name.
    tokens: HashMap<String, u32>,
    /// By token − 1.
    items: Vec<VecDeque<Vec<u8>>>,
    bytes: usize,
    /// Queues enqueued to since the owner last heard.
    ready: BTreeSet<u32>,
}

impl Queues {
    /// No queues, holding at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Queues {
            inner: Mutex::default(),
            limit,
        }
    }

    /// The token of the queue `name`, made if new.
    pub(crate) fn register(&self, name: &str) -> Result<u32, Refused> {
        let mut q = self.inner.lock().expect("queues lock");
        if let Some(&token) = q.tokens.get(name) {
            return Ok(token);
        }
        let bytes = q.bytes + name.len() + SHARED_QUEUE_ENTRY_BYTES;
        if bytes > self.limit {
            return Err(Refused::Full);
        }
        q.bytes = bytes;
        q.items.push(VecDeque::new());
        let token = q.items.len() as u32;
        q.tokens.insert(name.to_string(), token);
        Ok(token)
    }

    /// The token of the queue `name`, if registered.
    pub(crate) fn resolve(&self, name: &str) -> Option<u32> {
        self.inner
            .lock()
            .expect("queues lock")
            .tokens
            .get(name)
            .copied()
    }

    /// Add `item` at the back of queue `token`, and mark it ready.
    pub(crate) fn enqueue(&self, token: u32, item: Vec<u8>) -> Result<(), Refused> {
        let mut q = self.inner.lock().expect("queues lock");
        let bytes = q.bytes + item.len() + SHARED_QUEUE_ENTRY_BYTES;
        let Inner { items, ready, .. } = &mut *q;
        let queue = slot(items, token).ok_or(Refused::NotFound)?;
        if bytes > self.limit {
            return Err(Refused::Full);
        }
        queue.push_back(item);
        ready.insert(token);
        q.bytes = bytes;
        Ok(())
    }

    /// Take the item at the front of queue `token` (`None`: empty).
    pub(crate) fn dequeue(&self, token: u32) -> Result<Option<Vec<u8>>, Refused> {
        let mut q = self.inner.lock().expect("queues lock");
        let queue = slot(&mut q.items, token).ok_or(Refused::NotFound)?;
        let item = queue.pop_front();
        if let Some(item) = &item {
            q.bytes -= item.len() + SHARED_QUEUE_ENTRY_BYTES;
        }
        Ok(item)
    }

    /// The queues marked ready, unmarked.
    pub(crate) fn take_ready(&self) -> Vec<u32> {
        let mut q = self.inner.lock().expect("queues lock");
        std::mem::take(&mut q.ready).into_iter().collect()
    }

    /// Mark `token` ready again (its delivery has to wait).
    pub(crate) fn mark_ready(&self, token: u32) {
        self.inner.lock().expect("queues lock").ready.insert(token);
    }

    /// Whether some queue waits for its owner to hear of it.
    pub(crate) fn any_ready(&self) -> bool {
        !self.inner.lock().expect("queues lock").ready.is_empty()
    }

    /// Bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.inner.lock().expect("queues lock").bytes
    }
}

fn slot(items: &mut [VecDeque<Vec<u8>>], token: u32) -> Option<&mut VecDeque<Vec<u8>>> {
    items.get_mut((token as usize).checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_hold_items_in_order_within_their_bytes() {
        let q = Queues::new(2 * SHARED_QUEUE_ENTRY_BYTES + 10);
        let t = q.register("jobs").unwrap();
        assert_eq!(q.register("jobs"), Ok(t), "the same queue");
        assert_eq!(q.resolve("jobs"), Some(t));
        assert_eq!(q.resolve("other"), None);
        q.enqueue(t, b"abc".to_vec()).unwrap();
        assert_eq!(q.enqueue(t, b"d".to_vec()), Err(Refused::Full));
        assert_eq!(q.take_ready(), vec![t]);
        assert!(q.take_ready().is_empty());
        assert_eq!(q.dequeue(t), Ok(Some(b"abc".to_vec())));
        assert_eq!(q.dequeue(t), Ok(None));
        assert_eq!(q.bytes(), 4 + SHARED_QUEUE_ENTRY_BYTES, "the name's");
        assert_eq!(q.enqueue(t + 1, Vec::new()), Err(Refused::NotFound));
        assert_eq!(q.dequeue(0), Err(Refused::NotFound));
    }
}
