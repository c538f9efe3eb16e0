//! Sequence-number bookkeeping: duplicate detection for measurements (reliable, resent after a
//! reconnection) and gap/late detection for waveforms (datagrams).

use std::collections::BTreeSet;

/// What [`SeqWindow::insert`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// First time seen: deliver it.
    New,
    /// Already delivered: drop it (and acknowledge again).
    Duplicate,
}

/// The set of delivered sequence numbers of one channel, in bounded memory: everything up to
/// `contiguous` plus at most `window` numbers above it. A number far ahead slides the window:
/// the numbers it skips are given up (counted) and refused as duplicates if they come later.
#[derive(Debug, Clone)]
pub struct SeqWindow {
    contiguous: u64,
    above: BTreeSet<u64>,
    window: u64,
    skipped: u64,
}

impl SeqWindow {
    /// A window remembering up to `window` out-of-order numbers.
    pub fn new(window: u64) -> Self {
        SeqWindow {
            contiguous: 0,
            above: BTreeSet::new(),
            window: window.max(1),
            skipped: 0,
        }
    }

    /// Records `seq` (≥ 1).
    pub fn insert(&mut self, seq: u64) -> Insert {
        if seq <= self.contiguous || self.above.contains(&seq) {
            return Insert::Duplicate;
        }
        if seq - self.contiguous > self.window {
            // Give up the oldest missing numbers so `seq` fits in the window.
            let new_base = seq - self.window;
            let kept_below = self.above.range(..=new_base).count() as u64;
            self.skipped += new_base - self.contiguous - kept_below;
            self.above = self.above.split_off(&(new_base + 1));
            self.contiguous = new_base;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        Insert::New
    }

    /// Every number up to this one is delivered (or given up): the cumulative ack.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// Numbers given up because the window slid past them.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// What [`WaveSeq::accept`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wave {
    /// In order (possibly after a gap of `gap` chunks): deliver.
    Deliver {
        /// Chunks missing before this one.
        gap: u64,
    },
    /// Older than one already delivered: drop.
    Late,
}

/// Ordering of a waveform channel: chunks are delivered in increasing `seq`; a late one is
/// dropped, a jump counts the missing chunks as a gap.
#[derive(Debug, Clone, Default)]
pub struct WaveSeq {
    next: Option<u64>,
}

impl WaveSeq {
    /// Decides for chunk `seq`.
    pub fn accept(&mut self, seq: u64) -> Wave {
        match self.next {
            Some(next) if seq < next => Wave::Late,
            Some(next) => {
                self.next = Some(seq + 1);
                Wave::Deliver { gap: seq - next }
            }
            None => {
                self.next = Some(seq + 1);
                Wave::Deliver { gap: 0 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_in_and_out_of_order() {
        let mut w = SeqWindow::new(8);
        assert_eq!(w.insert(1), Insert::New);
        assert_eq!(w.insert(3), Insert::New);
        assert_eq!(w.contiguous(), 1);
        assert_eq!(w.insert(3), Insert::Duplicate);
        assert_eq!(w.insert(2), Insert::New);
        assert_eq!(w.contiguous(), 3);
        assert_eq!(w.insert(1), Insert::Duplicate);
    }

    #[test]
    fn far_jumps_slide_the_window_and_count_skips() {
        let mut w = SeqWindow::new(4);
        w.insert(1);
        w.insert(3);
        // 20 - 4 = 16: numbers 2, 4..=16 are given up (3 was kept).
        assert_eq!(w.insert(20), Insert::New);
        assert_eq!(w.contiguous(), 16);
        assert_eq!(w.skipped(), 14);
        assert_eq!(w.insert(5), Insert::Duplicate);
        assert_eq!(w.insert(17), Insert::New);
        assert_eq!(w.contiguous(), 17);
    }

    #[test]
    fn waveform_gaps_and_late_chunks() {
        let mut s = WaveSeq::default();
        assert_eq!(s.accept(5), Wave::Deliver { gap: 0 });
        assert_eq!(s.accept(6), Wave::Deliver { gap: 0 });
        assert_eq!(s.accept(9), Wave::Deliver { gap: 2 });
        assert_eq!(s.accept(8), Wave::Late);
        assert_eq!(s.accept(9), Wave::Late);
        assert_eq!(s.accept(10), Wave::Deliver { gap: 0 });
    }
}
