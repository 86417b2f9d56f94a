//! One room over several shards. A room's *home* shard (its code's hash, where its host
//! joins) owns its tracks: it decrypts, rewrites and stores each host packet once. Viewers may
//! sit on any shard; a shard with viewers of a room it does not own keeps a *mirror* of each
//! of the room's tracks (same id, codec, its own ring for NACKs, the host clock for sender
//! reports) and the home shard hands it every packet of the track as the same refcounted
//! payload. What crosses shards is a [`Relay`], produced by [`Sfu::poll_relay`] and fed to the
//! other core's [`Sfu::handle_relay`]; the cores stay sans-IO and share nothing.
//!
//! - **Catalog** (home → every other shard, on each change of the room's tracks): which
//!   tracks exist, their codecs, whether a host feeds them, and whether the host is still
//!   starting its tracks. Every shard therefore knows every room's tracks, and can subscribe
//!   a viewer (or answer a WHEP offer) without asking. Tracks missing from a catalog are
//!   removed, as on the home shard.
//! - **Watch** (mirror → home): the mirror's first viewer subscribed to a track, or its last
//!   one left. Only watched tracks are relayed, so a shard without viewers of a room costs
//!   the room nothing per packet.
//! - **Media** (home → watching shards): one rewritten packet, as stored in the home ring.
//! - **Clock** (home → watching shards): the host's latest sender report, in the track's
//!   timestamp space, so a mirror's viewers get the same lip-sync clock.
//! - **Keyframe request** (mirror → home): a mirror's viewers need a keyframe. The mirror
//!   throttles like the home shard does, and the home shard coalesces all requests into PLIs.

use super::*;
use crate::shard::Shard;

/// A message from one shard's core to another's. Opaque outside the crate: whoever runs
/// the cores only routes it, by [`Relay::to`].
pub struct Relay {
    /// The shard it is for.
    pub to: usize,
    /// The shard it is from.
    pub from: usize,
    pub(super) body: RelayBody,
}

impl Relay {
    /// A forwarded media packet: the only kind that may be dropped (as loss, which NACK and
    /// keyframes repair) when the receiving shard falls behind. The others are rare and
    /// change state, so they are never dropped.
    pub fn is_media(&self) -> bool {
        matches!(self.body, RelayBody::Media { .. })
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.body {
            RelayBody::Catalog { .. } => "catalog",
            RelayBody::Watch { .. } => "watch",
            RelayBody::Media { .. } => "media",
            RelayBody::Clock { .. } => "clock",
            RelayBody::KeyframeRequest { .. } => "keyframe request",
        };
        write!(f, "Relay({kind}, {} → {})", self.from, self.to)
    }
}

pub(super) enum RelayBody {
    Catalog {
        room: RoomId,
        tracks: Vec<CatalogTrack>,
        /// When the host's first track started, while it is still starting others (see
        /// [`Sfu::watchable`]).
        starting_since: Option<Instant>,
    },
    Watch {
        track: TrackId,
        on: bool,
    },
    Media {
        track: TrackId,
        packet: StoredPacket,
        keyframe: bool,
    },
    Clock {
        track: TrackId,
        clock: HostClock,
    },
    KeyframeRequest {
        track: TrackId,
    },
}

pub(super) struct CatalogTrack {
    id: TrackId,
    codec: Codec,
    active: bool,
}

impl Sfu {
    /// The next message for another shard. Call until `None` after every `handle_*`.
    pub fn poll_relay(&mut self) -> Option<Relay> {
        self.relays.pop_front()
    }

    /// Feeds a message another shard's core produced for this one.
    pub fn handle_relay(&mut self, now: Instant, relay: Relay) {
        match relay.body {
            RelayBody::Catalog {
                room,
                tracks,
                starting_since,
            } => self.on_catalog(now, room, tracks, starting_since),
            RelayBody::Watch { track, on } => {
                let Some(t) = self.tracks.get_mut(&track) else {
                    return;
                };
                t.mirrors.retain(|&s| s != relay.from);
                if on {
                    t.mirrors.push(relay.from);
                    if let Some(clock) = t.clock {
                        self.relay(relay.from, RelayBody::Clock { track, clock });
                    }
                }
            }
            RelayBody::Media {
                track,
                packet,
                keyframe,
            } => {
                let Some(t) = self.tracks.get_mut(&track) else {
                    return;
                };
                if !matches!(t.source, Some(Source::Home)) {
                    return; // the track was orphaned (or removed) here meanwhile
                }
                // NACKs name 16-bit numbers; extend them as the home shard did.
                t.extender.observe(packet.seq);
                if self.deliver_packet(now, track, packet, keyframe) {
                    self.request_keyframe(now, track);
                }
            }
            RelayBody::Clock { track, clock } => {
                if let Some(t) = self.tracks.get_mut(&track) {
                    t.clock = Some(clock);
                }
            }
            // Not counted as received: the viewer's request was, on its own shard.
            RelayBody::KeyframeRequest { track } => self.request_keyframe(now, track),
        }
    }

    /// Whether this shard is `room`'s home (owns its tracks).
    pub(super) fn is_home(&self, room: &RoomId) -> bool {
        Shard::of_room(room, self.config.shard.count) == self.config.shard.index
    }

    /// The home shard of a track: the one that made its id.
    pub(super) fn home_of(&self, track: TrackId) -> usize {
        Shard::of_id(track.0, self.config.shard.count)
    }

    pub(super) fn relay(&mut self, to: usize, body: RelayBody) {
        self.relays.push_back(Relay {
            to,
            from: self.config.shard.index,
            body,
        });
    }

    /// Home shard: tells every other shard the room's tracks as they are now.
    pub(super) fn publish_catalog(&mut self, room: &RoomId) {
        let Shard { index, count } = self.config.shard;
        if count == 1 {
            return;
        }
        let starting_since = self.host_starting_since(room);
        let ids = self.rooms.get(room).map(|r| r.tracks.clone());
        for to in (0..count).filter(|&s| s != index) {
            let tracks = ids
                .iter()
                .flatten()
                .filter_map(|id| {
                    let t = self.tracks.get(id)?;
                    Some(CatalogTrack {
                        id: *id,
                        codec: t.codec.clone(),
                        active: t.source.is_some(),
                    })
                })
                .collect();
            self.relay(
                to,
                RelayBody::Catalog {
                    room: room.clone(),
                    tracks,
                    starting_since,
                },
            );
        }
    }

    /// Mirror shard: the room's tracks changed at home. New tracks are mirrored (and offered
    /// to the room's viewers here), gone ones removed, the others follow their host's state.
    fn on_catalog(
        &mut self,
        now: Instant,
        room: RoomId,
        tracks: Vec<CatalogTrack>,
        starting_since: Option<Instant>,
    ) {
        if self.is_home(&room) {
            return; // a misrouted catalog; the home shard's own state is the truth
        }
        let r = self.rooms.entry(room.clone()).or_default();
        r.starting_since = starting_since;
        let gone: Vec<TrackId> = r
            .tracks
            .iter()
            .filter(|id| !tracks.iter().any(|t| t.id == **id))
            .copied()
            .collect();
        for id in gone {
            self.remove_track(now, id);
        }
        for entry in tracks {
            let source = entry.active.then_some(Source::Home);
            match self.tracks.get_mut(&entry.id) {
                Some(track) => {
                    let resumed = track.source.is_none() && source.is_some();
                    track.source = source;
                    if resumed && track.keyframe_request_pending {
                        self.request_keyframe(now, entry.id);
                    }
                }
                None => {
                    let track = Track::new(room.clone(), entry.codec, source, &self.config);
                    self.add_room_track(now, entry.id, track);
                }
            }
        }
        self.remove_room_if_empty(&room);
    }

    /// Mirror shard: asks the home shard for a track's packets (the first local viewer
    /// subscribed) or to stop (the last one left).
    pub(super) fn watch(&mut self, track: TrackId, on: bool) {
        let home = self.home_of(track);
        if home != self.config.shard.index {
            self.relay(home, RelayBody::Watch { track, on });
        }
    }
}
