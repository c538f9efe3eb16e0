//! RFC 2198 redundant audio (RED) as the SFU sees it: an opaque payload type forwarded as is to
//! subscribers that negotiated RED, and reduced to its primary block for those that did not.
//!
//! Chromium protects Opus with RED (`red/48000/2`, one earlier frame carried in each packet)
//! when the answer accepts it; a subscriber that also accepts it recovers a lost packet from
//! the next one without a retransmission. The SFU never decodes the redundancy: it only needs
//! the primary block for a subscriber without RED.

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

#[cfg(test)]
mod tests {
    use super::*;

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
