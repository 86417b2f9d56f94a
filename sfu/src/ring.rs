//! The per-track packet ring: every inbound packet is stored once, refcounted, and serves both
//! fan-out and NACK retransmission (GUIDE §1: no per-subscriber copies).

use bytes::Bytes;

/// One stored packet, already in the track's unified (post-rewrite) numbering.
#[derive(Debug, Clone)]
pub struct StoredPacket {
    /// Extended (64-bit, never wrapping) sequence number in the track's unified space.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// Shared with every viewer's transmission of this packet.
    pub payload: Bytes,
}

/// A fixed-capacity ring indexed by extended sequence number.
///
/// Capacity is a power of two so that the slot is `seq & mask`. A lookup checks the stored
/// sequence number, so a slot overwritten by a newer packet is reported as missing rather
/// than returning the wrong packet.
#[derive(Debug)]
pub struct PacketRing {
    slots: Box<[Option<StoredPacket>]>,
    mask: u64,
}

impl PacketRing {
    /// `capacity` is rounded up to a power of two (at least 2).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        Self {
            slots: (0..capacity).map(|_| None).collect(),
            mask: capacity as u64 - 1,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Stores `packet`, evicting whatever occupied its slot.
    pub fn insert(&mut self, packet: StoredPacket) {
        let index = (packet.seq & self.mask) as usize;
        self.slots[index] = Some(packet);
    }

    /// The packet with extended sequence number `seq`, if still held.
    pub fn get(&self, seq: u64) -> Option<&StoredPacket> {
        self.slots[(seq & self.mask) as usize]
            .as_ref()
            .filter(|p| p.seq == seq)
    }
}

/// Extends 16-bit RTP sequence numbers to 64 bits across wraparound (RFC 3550 A.1 style),
/// relative to the highest number seen so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqExtender {
    highest: Option<u64>,
}

impl SeqExtender {
    /// Extends `seq` relative to the highest seen; reordered packets extend backwards.
    pub fn extend(&mut self, seq: u16) -> u64 {
        let extended = self.peek(seq);
        self.observe(extended);
        extended
    }

    /// Extends `seq` without recording it (for looking up NACKed numbers).
    pub fn peek(&self, seq: u16) -> u64 {
        match self.highest {
            // Start one cycle in so packets reordered before the first never underflow.
            None => (1 << 16) + u64::from(seq),
            // The closest value with these low 16 bits: within ±2^15 of the highest.
            Some(highest) => {
                let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
                (highest as i64 + delta) as u64
            }
        }
    }

    /// Records an already extended number (a mirror learns its track's numbering from the
    /// home shard's packets), so [`SeqExtender::peek`] extends as the home shard does.
    pub fn observe(&mut self, extended: u64) {
        if self.highest.is_none_or(|h| extended > h) {
            self.highest = Some(extended);
        }
    }

    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u64) -> StoredPacket {
        StoredPacket {
            seq,
            timestamp: seq as u32,
            marker: false,
            payload: Bytes::from(vec![seq as u8]),
        }
    }

    #[test]
    fn ring_returns_only_live_packets() {
        let mut ring = PacketRing::new(5);
        assert_eq!(ring.capacity(), 8);
        for seq in 100..120 {
            ring.insert(packet(seq));
        }
        assert!(ring.get(111).is_none(), "evicted by 119");
        assert_eq!(ring.get(112).unwrap().payload[0], 112);
        assert_eq!(ring.get(119).unwrap().seq, 119);
        assert!(ring.get(120).is_none());
    }

    #[test]
    fn extender_handles_wrap_and_reordering() {
        let mut ext = SeqExtender::default();
        let a = ext.extend(65534);
        let b = ext.extend(65535);
        let c = ext.extend(0);
        let d = ext.extend(1);
        assert_eq!([b - a, c - b, d - c], [1, 1, 1]);
        // A late packet from before the wrap extends backwards, not forwards.
        assert_eq!(ext.extend(65533), a - 1);
        assert_eq!(ext.highest(), Some(d));
        assert_eq!(ext.peek(2), d + 1);
        // A mirror that observes the extended numbers extends NACKed ones the same way.
        let mut mirror = SeqExtender::default();
        mirror.observe(d);
        assert_eq!(mirror.peek(2), d + 1);
        assert_eq!(mirror.peek(65535), b);
    }
}
