//! RFC 2198 redundant audio (RED) as the SFU sees it: an opaque payload type forwarded as is to
//! subscribers that negotiated RED, and reduced to its primary block for those that did not.
//!
//! Chromium protects Opus with RED (`red/48000/2`, one earlier frame carried in each packet)
//! when the answer accepts it; a subscriber that also accepts it recovers a lost packet from
//! the next one without a retransmission. The SFU never decodes the redundancy: it only needs
//! the primary block for a subscriber without RED.
//!
//! The engine takes an outgoing payload as an `Arc<[u8]>` of exactly its length, so the
//! primary block cannot be a zero-copy view of the received payload: [`PrimaryBuffers`] keeps
//! one buffer per primary length seen and reuses it once the engine has sent (and released)
//! the previous packet of that length, so that stripping allocates nothing in steady state.

use std::sync::Arc;

/// Most bytes of primary-block buffers a [`PrimaryBuffers`] keeps for reuse (an Opus stream's
/// frames take a few dozen lengths of up to a few hundred bytes). Once it is reached, a primary
/// block of a length not kept gets a buffer of its own each time (a publisher sending every
/// length cannot make the SFU hold more).
pub const PRIMARY_BUFFERS_LIMIT: usize = 32 * 1024;

/// The primary (last) block of a RED payload (RFC 2198 §3): the redundant blocks' 4-byte
/// headers (F bit set) and their data come first, then a 1-byte header (F bit clear) and the
/// primary's data at the end. `None` when the headers do not fit the payload (a malformed
/// packet is dropped, never read past its end).
pub fn primary_block(payload: &[u8]) -> Option<&[u8]> {
    let mut at = 0usize;
    let mut redundant = 0usize;
    loop {
        let h = *payload.get(at)?;
        if h & 0x80 == 0 {
            at += 1;
            break;
        }
        let b2 = *payload.get(at + 2)?;
        let b3 = *payload.get(at + 3)?;
        redundant += (usize::from(b2 & 0x03) << 8) | usize::from(b3);
        at += 4;
    }
    payload.get(at + redundant..)
}

/// The primary blocks of one RED stream, made once per packet for all the subscribers without
/// RED, in buffers reused from packet to packet.
#[derive(Debug, Default)]
pub struct PrimaryBuffers {
    /// At most one buffer per length, sorted by length.
    buffers: Vec<Arc<[u8]>>,
    /// Their lengths' sum (at most [`PRIMARY_BUFFERS_LIMIT`]).
    held: usize,
}

impl PrimaryBuffers {
    /// The primary block of the RED `payload` ([`primary_block`]) as a shared payload for the
    /// engine; `None` when the payload is malformed. The buffer kept for that length is
    /// overwritten and shared again when nothing else holds it any more (the engine drops a
    /// non-retransmittable payload once sent), so in steady state this copies the block once
    /// and allocates nothing. A buffer still held is left to its holder and replaced.
    pub fn strip(&mut self, payload: &[u8]) -> Option<Arc<[u8]>> {
        let primary = primary_block(payload)?;
        let len = primary.len();
        match self.buffers.binary_search_by_key(&len, |b| b.len()) {
            Ok(i) => {
                let kept = &mut self.buffers[i];
                match Arc::get_mut(kept) {
                    Some(buf) => buf.copy_from_slice(primary),
                    None => *kept = Arc::from(primary),
                }
                Some(Arc::clone(kept))
            }
            Err(i) => {
                let fresh = Arc::<[u8]>::from(primary);
                if self.held + len <= PRIMARY_BUFFERS_LIMIT {
                    self.buffers.insert(i, Arc::clone(&fresh));
                    self.held += len;
                }
                Some(fresh)
            }
        }
    }

    /// Bytes kept in buffers for reuse.
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc_counter::allocations;

    /// A RED payload with one redundant block of `redundant` bytes and a primary block of
    /// `primary` bytes, each filled with its own value.
    fn red_payload(redundant: u16, primary: usize, fill: u8) -> Vec<u8> {
        let offset: u16 = 960;
        let b1 = (offset >> 6) as u8;
        let b2 = (((offset & 0x3f) << 2) as u8) | ((redundant >> 8) as u8);
        let b3 = (redundant & 0xff) as u8;
        let mut p = vec![0x80 | 111, b1, b2, b3, 111];
        p.extend(std::iter::repeat_n(0xee, usize::from(redundant)));
        p.extend(std::iter::repeat_n(fill, primary));
        p
    }

    #[test]
    fn stripping_allocates_nothing_in_steady_state() {
        // Opus-like frames: a few dozen lengths, each packet released (sent) before the next.
        let packets: Vec<Vec<u8>> = (0..2_000)
            .map(|i| red_payload(70 + (i % 7) as u16, 60 + (i * 37) % 48, i as u8))
            .collect();
        let mut buffers = PrimaryBuffers::default();
        // Warm-up: the first packet of each length allocates its buffer.
        for p in &packets[..200] {
            let stripped = buffers.strip(p).expect("well-formed");
            assert_eq!(&stripped[..], primary_block(p).unwrap());
        }
        let (allocated, checked) = allocations(|| {
            let mut checked = 0;
            for p in &packets[200..] {
                // Shared by several subscribers' engines, dropped once they sent it.
                let stripped = buffers.strip(p).expect("well-formed");
                let copies = [Arc::clone(&stripped), Arc::clone(&stripped)];
                if copies[1][..] == *primary_block(p).unwrap() {
                    checked += 1;
                }
            }
            checked
        });
        assert_eq!(checked, packets.len() - 200, "every primary block is right");
        assert_eq!(allocated, 0, "allocations while stripping in steady state");
        // The counter sees what a fresh buffer per packet would cost.
        let (fresh, _) = allocations(|| Arc::<[u8]>::from(primary_block(&packets[0]).unwrap()));
        assert_eq!(fresh, 1);
        assert!(buffers.held() <= PRIMARY_BUFFERS_LIMIT);
    }

    #[test]
    fn a_buffer_still_held_is_never_overwritten() {
        let mut buffers = PrimaryBuffers::default();
        let first = buffers.strip(&red_payload(10, 50, 1)).unwrap();
        // Same length while the engine still holds the first (not sent yet).
        let second = buffers.strip(&red_payload(10, 50, 2)).unwrap();
        assert!(first.iter().all(|&b| b == 1), "the held block is intact");
        assert!(second.iter().all(|&b| b == 2));
        drop(first);
        // The replacement is reused once released.
        let ptr = Arc::as_ptr(&second);
        drop(second);
        let third = buffers.strip(&red_payload(10, 50, 3)).unwrap();
        assert_eq!(Arc::as_ptr(&third), ptr, "the released buffer is reused");
        assert!(third.iter().all(|&b| b == 3));
    }

    #[test]
    fn kept_bytes_are_bounded() {
        let mut buffers = PrimaryBuffers::default();
        for len in 0..1_200 {
            let p = red_payload(4, len, 7);
            assert_eq!(
                buffers.strip(&p).unwrap().len(),
                len,
                "stripped all the same"
            );
        }
        assert!(buffers.held() <= PRIMARY_BUFFERS_LIMIT);
        assert!(buffers.held() > PRIMARY_BUFFERS_LIMIT - 1_200);
        assert_eq!(buffers.strip(&[0x80 | 111, 0, 0]), None, "malformed");
    }

    #[test]
    fn primary_after_one_redundant_block() {
        // F=1 pt 111, ts offset 960, length 3; then F=0 pt 111; redundant data; primary data.
        let offset: u16 = 960;
        let len: u16 = 3;
        let b1 = (offset >> 6) as u8;
        let b2 = (((offset & 0x3f) << 2) as u8) | ((len >> 8) as u8);
        let b3 = (len & 0xff) as u8;
        let payload = [0x80 | 111, b1, b2, b3, 111, 1, 2, 3, 9, 8, 7, 6];
        assert_eq!(primary_block(&payload), Some(&[9, 8, 7, 6][..]));
    }

    #[test]
    fn primary_only() {
        assert_eq!(primary_block(&[111, 5, 6]), Some(&[5, 6][..]));
        assert_eq!(primary_block(&[111]), Some(&[][..]));
    }

    #[test]
    fn malformed_is_refused() {
        assert_eq!(primary_block(&[]), None);
        assert_eq!(primary_block(&[0x80 | 111, 0, 0]), None);
        // A redundant block longer than the payload.
        assert_eq!(primary_block(&[0x80 | 111, 0, 0x03, 0xff, 111, 1]), None);
        // Headers only, never the final one.
        assert_eq!(primary_block(&[0x80 | 111, 0, 0, 0]), None);
    }
}
