//! Forwarding shards on one UDP port: which shard owns a room, a peer, a datagram.
//!
//! The media plane runs as [`SfuConfig::workers`](crate::SfuConfig::workers) shards, each a
//! sans-IO core with a driver of its own, owning a disjoint set of peers. A room's *home* is
//! the shard its code hashes to: its host joins there and that shard owns its tracks. Viewers
//! join the home shard too until it is busier than the others, then any shard, which mirrors
//! the room's tracks from home (see `Relay` and docs/sfu.md).
//!
//! Nothing here is shared between shards. An id names its shard (`id % count`), the
//! server's ICE ufrag starts with its shard's letter, and each socket reader keeps a
//! [`Router`] that learns which remote address belongs to which shard from the ICE checks it
//! routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::RoomId;
use crate::demux::{DatagramKind, classify, parse_binding_request};

/// Letters an ICE ufrag starts with, one per shard (ice-chars, RFC 8839 §5.4).
const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The most shards a node runs: one ufrag letter each.
pub const MAX_SHARDS: usize = LETTERS.len();

/// One shard of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// The `n`-th id this shard hands out: ids of different shards never collide, and
    /// [`Shard::of_id`] tells the shard back.
    pub fn id(self, n: u64) -> u64 {
        n * self.count as u64 + self.index as u64
    }

    /// The shard of an id handed out by [`Shard::id`].
    pub fn of_id(id: u64, count: usize) -> usize {
        (id % count.max(1) as u64) as usize
    }

    /// The first character of this shard's ICE ufrags.
    pub fn ufrag_letter(self) -> char {
        LETTERS[self.index % MAX_SHARDS] as char
    }

    /// The shard whose ufrags start like `ufrag`, if any.
    pub fn of_ufrag(ufrag: &str, count: usize) -> Option<usize> {
        let first = *ufrag.as_bytes().first()?;
        LETTERS
            .iter()
            .position(|&l| l == first)
            .filter(|&i| i < count)
    }

    /// The shard a room lives on: a stable hash of its code (FNV-1a), so every join of the
    /// room, and a host reconnecting to it, lands on the same shard.
    pub fn of_room(room: &RoomId, count: usize) -> usize {
        let hash = room
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        (hash % count.max(1) as u64) as usize
    }
}

/// Remote addresses not heard from for this long are forgotten (a peer times out after 15 s
/// of silence; an ICE check re-teaches its address).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Routes a socket's datagrams to shards: an ICE check by its ufrag's letter, anything else by
/// the address an ICE check last came from. Unknown addresses go to shard 0, which counts them
/// as unroutable like any shard would.
#[derive(Debug)]
pub struct Router {
    count: usize,
    by_addr: HashMap<SocketAddr, (usize, Instant)>,
    /// When addresses silent for [`FORGET_AFTER`] are next swept.
    next_sweep: Option<Instant>,
}

impl Router {
    pub fn new(count: usize) -> Self {
        Self {
            count: count.max(1),
            by_addr: HashMap::new(),
            next_sweep: None,
        }
    }

    /// The shard `datagram` from `remote` goes to, at `now`.
    pub fn route(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) -> usize {
        if self.count == 1 {
            return 0;
        }
        if now >= *self.next_sweep.get_or_insert(now + FORGET_AFTER) {
            self.by_addr
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < FORGET_AFTER);
            self.next_sweep = Some(now + FORGET_AFTER);
        }
        if classify(datagram) == DatagramKind::Stun
            && let Some(check) = parse_binding_request(datagram)
            && let Some(shard) = Shard::of_ufrag(check.local_ufrag, self.count)
        {
            self.by_addr.insert(remote, (shard, now));
            return shard;
        }
        match self.by_addr.get_mut(&remote) {
            Some((shard, seen)) => {
                *seen = now;
                *shard
            }
            None => 0,
        }
    }

    /// Addresses known now.
    pub fn known(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_shard_and_never_collide() {
        let shards = (0..3).map(|index| Shard { index, count: 3 });
        let mut seen = std::collections::HashSet::new();
        for shard in shards {
            for n in 1..100 {
                let id = shard.id(n);
                assert_eq!(Shard::of_id(id, 3), shard.index);
                assert!(seen.insert(id), "{id} twice");
            }
        }
    }

    #[test]
    fn a_room_always_lands_on_the_same_shard_and_rooms_spread() {
        let mut used = [0; 4];
        for i in 0..400 {
            let room = RoomId::new(&format!("ROOM{i}"));
            let shard = Shard::of_room(&room, 4);
            assert_eq!(shard, Shard::of_room(&RoomId::new(room.as_str()), 4));
            used[shard] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "{used:?}");
    }

    /// A binding request with USERNAME `local:remote`.
    fn check(local_ufrag: &str) -> Vec<u8> {
        let username = format!("{local_ufrag}:client");
        let padded = username.len().div_ceil(4) * 4;
        let mut d = vec![0x00, 0x01];
        d.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        d.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        d.extend_from_slice(&[7; 12]);
        d.extend_from_slice(&0x0006u16.to_be_bytes());
        d.extend_from_slice(&(username.len() as u16).to_be_bytes());
        d.extend_from_slice(username.as_bytes());
        d.resize(20 + 4 + padded, 0);
        d
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a starting point for virtual time
    fn checks_teach_the_router_where_an_address_goes() {
        let now = Instant::now();
        let mut router = Router::new(3);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let srtp = [0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(router.route(now, a, &srtp), 0, "unknown: shard 0");
        let c = Shard { index: 2, count: 3 }.ufrag_letter();
        assert_eq!(router.route(now, a, &check(&format!("{c}xyz"))), 2);
        assert_eq!(router.route(now, a, &srtp), 2, "learned from the check");
        assert_eq!(router.route(now, b, &srtp), 0);
        // A ufrag of no shard (a letter past the count) teaches nothing.
        assert_eq!(router.route(now, b, &check("zzz")), 0);
        assert_eq!(router.known(), 1);
        // Silent addresses are forgotten.
        let later = now + FORGET_AFTER * 2;
        assert_eq!(router.route(later, b, &srtp), 0);
        assert_eq!(router.known(), 0);
    }
}
