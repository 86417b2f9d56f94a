//! Deadlines: track timers (deferred keyframe requests, orphan expiry) kept in a heap, and
//! the once-a-second sweep (liveness, sender reports).

use super::*;

impl Sfu {
    /// Once a second: reports connected peers that went silent as failed (signaling decides
    /// what follows: the client is told and reconnects, or its session ends and removes the
    /// peer), and sends viewers their sender reports.
    pub(super) fn periodic_sweep(&mut self, now: Instant) {
        let timeout = self.config.peer_timeout;
        let mut any_connected = false;
        for (id, p) in &mut self.peers {
            if p.state != ConnectionState::Connected {
                continue;
            }
            if now.saturating_duration_since(p.last_heard) > timeout {
                p.state = ConnectionState::Failed;
                tracing::debug!(peer = %id, "peer silent for {timeout:?}: failed");
                self.events.push_back(SfuEvent::Connection {
                    peer: *id,
                    state: ConnectionState::Failed,
                });
            } else {
                any_connected = true;
            }
        }
        self.next_liveness_sweep = any_connected.then(|| now + PERIODIC_SWEEP);
        self.send_sender_reports(now);
    }

    pub(super) fn track_timer_is_live(&self, at: Instant, id: TrackId) -> bool {
        self.tracks
            .get(&id)
            .is_some_and(|t| t.deadlines(&self.config).contains(&Some(at)))
    }

    /// Queues the track's current deadlines; called whenever one is set.
    pub(super) fn schedule_track(&mut self, id: TrackId) {
        if let Some(t) = self.tracks.get(&id) {
            for at in t.deadlines(&self.config).into_iter().flatten() {
                self.track_timers.push(Reverse((at, id)));
            }
        }
    }

    pub(super) fn handle_track_timers(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.track_timers.peek().copied() {
            if at > now {
                break;
            }
            self.track_timers.pop();
            if self.track_timer_is_live(at, id) && !due.contains(&id) {
                due.push(id);
            }
        }
        for id in due {
            let expired = self
                .tracks
                .get(&id)
                .and_then(|t| t.deadlines(&self.config)[1])
                .is_some_and(|at| at <= now);
            if expired {
                self.remove_track(now, id);
            } else {
                self.request_keyframe(now, id);
            }
        }
    }
}
