//! The earliest-deadline queue of a worker's rooms: which room's timer is due next, without
//! scanning every room on each turn.
//!
//! A binary heap of `(deadline, slot)` with lazy deletion: each slot remembers the one deadline
//! it is queued at. Rescheduling later keeps the earlier entry (the room is then woken early
//! once, finds nothing due and is queued again at its true deadline); rescheduling earlier
//! queues a new entry and the old one is skipped when it surfaces.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Deadlines of numbered slots.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The deadline each slot is queued at (index = slot).
    queued: Vec<Option<Instant>>,
}

impl Deadlines {
    /// Makes sure `slot` is woken at `at` or earlier (`None`: the slot has no timer; an entry
    /// already queued stays and fires harmlessly).
    pub fn schedule(&mut self, slot: usize, at: Option<Instant>) {
        let Some(at) = at else {
            return;
        };
        if self.queued.len() <= slot {
            self.queued.resize(slot + 1, None);
        }
        if self.queued[slot].is_some_and(|q| q <= at) {
            return;
        }
        self.queued[slot] = Some(at);
        self.heap.push(Reverse((at, slot)));
    }

    /// Forgets `slot` (its room closed); its entries are skipped when they surface.
    pub fn remove(&mut self, slot: usize) {
        if let Some(q) = self.queued.get_mut(slot) {
            *q = None;
        }
    }

    /// The earliest deadline queued.
    pub fn earliest(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, slot))) = self.heap.peek().copied() {
            if self.queued.get(slot).copied().flatten() == Some(at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes one slot whose deadline is at or before `now`; the caller handles it and
    /// schedules it again.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        if self.earliest()? > now {
            return None;
        }
        let Reverse((_, slot)) = self.heap.pop()?;
        self.queued[slot] = None;
        Some(slot)
    }

    /// Entries in the heap (live and stale), for tests and statistics.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether the heap is empty.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_come_due_in_deadline_order_once() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Deadlines::default();
        d.schedule(0, Some(ms(30)));
        d.schedule(1, Some(ms(10)));
        d.schedule(2, Some(ms(20)));
        d.schedule(2, Some(ms(5))); // earlier: replaces
        d.schedule(1, Some(ms(50))); // later: the earlier entry stays
        d.schedule(3, None);
        assert_eq!(d.earliest(), Some(ms(5)));
        assert_eq!(d.pop_due(ms(4)), None);
        assert_eq!(d.pop_due(ms(100)), Some(2));
        assert_eq!(d.pop_due(ms(100)), Some(1));
        assert_eq!(d.pop_due(ms(100)), Some(0));
        // Slot 2's stale entry at 20 ms is skipped.
        assert_eq!(d.pop_due(ms(100)), None);
        d.schedule(4, Some(ms(1)));
        d.remove(4);
        assert_eq!(d.earliest(), None);
        assert!(d.is_empty());
    }
}
