//! Room tracks and the host sources that feed them: binding a new source (to an orphaned
//! compatible track, or a new one), orphaning on host loss, expiry after the grace period.

use super::*;

impl Sfu {
    /// A host track started sending: bind it to a compatible orphaned track of the room, or
    /// create a new track (and renegotiate every viewer).
    pub(super) fn on_source_open(&mut self, now: Instant, peer: PeerId, init: RTCTrackEventInit) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.role != Role::Publisher {
            return;
        }
        let Some(codec) =
            p.pc.rtp_receiver(init.receiver_id)
                .and_then(|r| r.track().codec(init.ssrc).cloned())
                .and_then(Codec::from_rtp)
        else {
            tracing::debug!(%peer, "ignoring host track with an unsupported codec");
            return;
        };
        let room_id = p.room.clone();
        let source = Source::Host {
            peer,
            receiver: init.receiver_id,
            ssrc: init.ssrc,
        };
        let room = self.rooms.entry(room_id.clone()).or_default();
        let reusable = room.tracks.iter().copied().find(|id| {
            self.tracks
                .get(id)
                .is_some_and(|t| t.source.is_none() && t.codec.compatible(&codec))
        });
        let track_id = match reusable {
            Some(id) => {
                let track = self.tracks.get_mut(&id).expect("room track exists");
                track.source = Some(source);
                track.orphaned_at = None;
                track.rewriter.rebase();
                id
            }
            None => {
                let id = TrackId(self.config.shard.id(self.next_id));
                self.next_id += 1;
                let track = Track::new(room_id.clone(), codec, Some(source), &self.config);
                self.add_room_track(now, id, track);
                id
            }
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.first_source_at.get_or_insert(now);
            p.sources.insert(init.track_id, track_id);
        }
        // Viewers already watching need a keyframe from the new source right away.
        if self.tracks[&track_id].codec.kind == MediaKind::Video {
            self.request_keyframe(now, track_id);
        }
        self.emit_tracks(&room_id);
    }

    /// Adds a track to its room and offers it to the room's viewers here (renegotiating).
    pub(super) fn add_room_track(&mut self, now: Instant, id: TrackId, track: Track) {
        let room = self.rooms.entry(track.room.clone()).or_default();
        room.tracks.push(id);
        let viewers = room.subscribers.clone();
        self.tracks.insert(id, track);
        for viewer in viewers {
            if self.subscribe(viewer, id).is_ok() {
                let _ = self.renegotiate(now, viewer);
                self.flush_peer(viewer);
            }
        }
    }

    pub(super) fn on_source_closed(&mut self, now: Instant, peer: PeerId, track_id: &str) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(track) = p.sources.remove(track_id) else {
            return;
        };
        let room = p.room.clone();
        self.orphan(now, peer, &room, [track]);
    }

    /// Detaches a (replaced) publisher's sources from the room's tracks.
    pub(super) fn orphan_sources(&mut self, now: Instant, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let sources = std::mem::take(&mut p.sources);
        let room = p.room.clone();
        self.orphan(now, peer, &room, sources.into_values());
    }

    /// Marks the tracks among `ids` that `peer` feeds as orphaned (kept for `track_grace`),
    /// and tells signaling if any was.
    pub(super) fn orphan(
        &mut self,
        now: Instant,
        peer: PeerId,
        room: &RoomId,
        ids: impl IntoIterator<Item = TrackId>,
    ) {
        let mut changed = false;
        for id in ids {
            if let Some(track) = self.tracks.get_mut(&id)
                && track.source.as_ref().is_some_and(|s| s.is_host(peer))
            {
                track.source = None;
                track.orphaned_at = Some(now);
                self.schedule_track(id);
                changed = true;
            }
        }
        if changed {
            self.emit_tracks(room);
        }
    }

    /// Removes a track whose source never came back, renegotiating its viewers.
    pub(super) fn remove_track(&mut self, now: Instant, id: TrackId) {
        let Some(track) = self.tracks.remove(&id) else {
            return;
        };
        if let Some(room) = self.rooms.get_mut(&track.room) {
            room.tracks.retain(|t| *t != id);
        }
        for viewer in &track.subscribers {
            let Some(p) = self.peers.get_mut(viewer) else {
                continue;
            };
            if let Some(index) = p.subscriptions.iter().position(|s| s.track == id) {
                let sub = p.subscriptions.remove(index);
                let _ = p.pc.remove_track(sub.sender);
                let _ = self.renegotiate(now, *viewer);
                self.flush_peer(*viewer);
            }
        }
        self.emit_tracks(&track.room);
        self.remove_room_if_empty(&track.room);
    }

    /// Tells signaling (and the other shards) the room's tracks, if this is the room's home:
    /// a mirror's tracks only follow the home shard's.
    pub(super) fn emit_tracks(&mut self, room: &RoomId) {
        if !self.is_home(room) {
            return;
        }
        let tracks = self.tracks(room);
        self.events.push_back(SfuEvent::Tracks {
            room: room.clone(),
            tracks,
        });
        self.publish_catalog(room);
    }

    pub(super) fn remove_room_if_empty(&mut self, room: &RoomId) {
        if self.rooms.get(room).is_some_and(|r| {
            r.publisher.is_none() && r.subscribers.is_empty() && r.tracks.is_empty()
        }) {
            self.rooms.remove(room);
        }
    }
}
