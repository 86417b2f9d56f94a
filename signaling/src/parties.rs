//! Watch parties on this node: one task owns the [`Party`] replicas of every party with a
//! member connected here (GUIDE §2.4), feeds them the store's events and presence, runs
//! their timers, commits what they propose, and pushes events and snapshots to sessions.
//!
//! Data flows one way: a session asks its replica to validate a command, commits the result
//! to the [`Store`] itself, and learns the outcome like everyone else, from the store's feed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sync::{
    Control, Event, Feed, MemberId, Party, PartyConfig, PartyError, PartyId, PlaybackCommand,
    Presence, Store, Stored, SyncReport,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::mailbox::{Outbox, SessionId, SharedEvent};
use crate::protocol::PartyState;
use crate::wall_clock;

/// Pending requests to the parties task before callers wait.
const PARTIES_QUEUE: usize = 1024;
/// A party's snapshots (members, presence, spread) are coalesced: one goes out at most this
/// long after the change that made it, so a burst of reports costs one snapshot, at most four
/// a second per party.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a job waits for its replica to catch up with the log (see [`PartiesHandle::with`]);
/// after that it runs on what the replica has (the store still guards every write).
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// What a member's session asks of its party's replica, each with its own typed reply: the
/// parties task knows every request it runs (no closures cross the task boundary).
pub enum Request {
    /// Check a member's operation; answered with what the session writes to the store.
    Operate {
        member: MemberId,
        op_id: String,
        op: Operation,
        reply: oneshot::Sender<Result<Accepted, PartyError>>,
    },
    Typing {
        member: MemberId,
        typing: bool,
        reply: oneshot::Sender<Result<(), PartyError>>,
    },
    Camera {
        member: MemberId,
        on: bool,
        reply: oneshot::Sender<Result<(), PartyError>>,
    },
    /// A member's sync report; answered with the party's newest spread sample (ms) if the
    /// report made one.
    Report {
        member: MemberId,
        report: SyncReport,
        reply: oneshot::Sender<Result<Option<f64>, PartyError>>,
    },
}

/// A member's operation on the party (the protocol's `playback`, `setControl`, `chat`,
/// `react`).
pub enum Operation {
    Playback {
        command: PlaybackCommand,
        base_version: Option<u64>,
    },
    SetControl {
        control: Control,
    },
    Chat {
        text: String,
    },
    React {
        emoji: String,
    },
}

/// An accepted operation, for the session to write.
pub enum Accepted {
    /// A state change, to compare-and-set.
    Commit(sync::Proposal),
    /// A chat message or reaction, to append.
    Append(sync::NewEvent),
}

impl Request {
    /// Runs the request on its replica and replies (a caller that gave up is ignored).
    fn run(self, p: &mut Party, now: std::time::Instant, wall: sync::UnixMillis) {
        match self {
            Request::Operate {
                member,
                op_id,
                op,
                reply,
            } => {
                let accepted = match op {
                    Operation::Playback {
                        command,
                        base_version,
                    } => p
                        .prepare_playback(wall, &member, command, base_version, op_id)
                        .map(Accepted::Commit),
                    Operation::SetControl { control } => p
                        .prepare_control(wall, &member, control, op_id)
                        .map(Accepted::Commit),
                    Operation::Chat { text } => p
                        .prepare_chat(now, wall, &member, text, op_id)
                        .map(Accepted::Append),
                    Operation::React { emoji } => p
                        .prepare_reaction(now, wall, &member, emoji, op_id)
                        .map(Accepted::Append),
                };
                let _ = reply.send(accepted);
            }
            Request::Typing {
                member,
                typing,
                reply,
            } => {
                let _ = reply.send(p.set_typing(&member, typing));
            }
            Request::Camera { member, on, reply } => {
                let _ = reply.send(p.set_camera(&member, on));
            }
            Request::Report {
                member,
                report,
                reply,
            } => {
                let (taken, _) = p.spread_sample();
                let result = p.report(now, wall, &member, report).map(|()| {
                    let (after, newest) = p.spread_sample();
                    newest.filter(|_| after > taken)
                });
                let _ = reply.send(result);
            }
        }
    }
}

#[derive(Clone)]
pub struct PartiesHandle {
    tx: mpsc::Sender<Command>,
    pub store: Arc<dyn Store>,
    pub config: Arc<PartyConfig>,
}

/// A session entering a party, with what the session loaded from the store.
pub struct Entry {
    pub party: PartyId,
    pub stored: Stored,
    pub presence: Vec<Presence>,
    pub member: Presence,
    pub session: SessionId,
    pub outbox: Outbox,
}

enum Command {
    Join {
        entry: Entry,
        reply: oneshot::Sender<PartyState>,
    },
    Leave {
        party: PartyId,
        member: MemberId,
        session: SessionId,
        explicit: bool,
    },
    Ask {
        party: PartyId,
        /// Run once the replica has applied the log up to this seq.
        after_seq: u64,
        request: Request,
    },
    /// The store's current state of a party, read after it became reachable again.
    Reset { party: PartyId, stored: Stored },
}

impl PartiesHandle {
    /// Registers a session's member; returns the party's snapshot.
    pub async fn join(&self, entry: Entry) -> Option<PartyState> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Join { entry, reply }).await.ok()?;
        rx.await.ok()
    }

    /// A session leaves: `explicit` when the member left on purpose, else its connection
    /// dropped (the member stays present for the TTL and may resume).
    pub async fn leave(
        &self,
        party: PartyId,
        member: MemberId,
        session: SessionId,
        explicit: bool,
    ) {
        let _ = self
            .tx
            .send(Command::Leave {
                party,
                member,
                session,
                explicit,
            })
            .await;
    }

    /// Runs `request` on the party's replica once it has applied the log up to `after_seq`;
    /// `false` when the parties task is gone. A request for a party this node has no
    /// replica of is dropped, and its reply channel closes.
    ///
    /// A member's commit is acknowledged before the store's feed brings the event back to
    /// the replica. A session passes the last seq it acknowledged or sent, so the member's
    /// next command ("load", then "play" at once) is checked against a replica that has seen
    /// the first.
    pub async fn ask(&self, party: &PartyId, after_seq: u64, request: Request) -> bool {
        self.tx
            .send(Command::Ask {
                party: party.clone(),
                after_seq,
                request,
            })
            .await
            .is_ok()
    }
}

/// Spawns the parties task over `store`.
pub fn spawn_parties(store: Arc<dyn Store>, config: PartyConfig) -> PartiesHandle {
    let (tx, rx) = mpsc::channel(PARTIES_QUEUE);
    let feed = store
        .take_feed()
        .expect("the parties task is the feed's only reader");
    let config = Arc::new(config);
    let parties = Parties {
        store: store.clone(),
        config: config.clone(),
        replicas: HashMap::new(),
        available: true,
        tx: tx.clone(),
        next_refresh: now(),
        next_snapshot: None,
        deadlines: BinaryHeap::new(),
    };
    tokio::spawn(parties.run(rx, feed));
    PartiesHandle { tx, store, config }
}

struct Parties {
    store: Arc<dyn Store>,
    config: Arc<PartyConfig>,
    replicas: HashMap<PartyId, Replica>,
    /// Whether the store is reachable, as shown to clients.
    available: bool,
    /// For tasks that report back (resets after an outage).
    tx: mpsc::Sender<Command>,
    /// When this node's members' presence is next refreshed in the store.
    next_refresh: Instant,
    /// When changed parties' snapshots go out; `None` while nothing changed.
    next_snapshot: Option<Instant>,
    /// Replicas' deadlines, pushed when one changes (see [`Parties::drain`]), so a wake-up
    /// does not scan every replica; an entry is stale unless it is still its replica's
    /// `scheduled` deadline.
    deadlines: BinaryHeap<Reverse<(Instant, PartyId)>>,
}

struct Replica {
    party: Party,
    sessions: HashMap<MemberId, (SessionId, Outbox)>,
    /// A snapshot could not be delivered to every session; try again next tick.
    undelivered: bool,
    /// Requests waiting for the replica to reach a seq, with when they arrived.
    waiting: Vec<(u64, Instant, Request)>,
    /// The replica's earliest deadline as last put in [`Parties::deadlines`].
    scheduled: Option<Instant>,
}

impl Replica {
    /// The earliest of the party's timer and its waiting requests' catch-up limits.
    fn deadline(&self) -> Option<Instant> {
        let party = self.party.poll_timeout().map(Instant::from_std);
        let jobs = (self.waiting.iter()).map(|(_, since, _)| *since + CATCH_UP_WAIT);
        party.into_iter().chain(jobs).min()
    }
}

impl Parties {
    /// A driver: it sleeps until the next command, feed item or deadline (a party's timer, a
    /// job's catch-up limit, the presence refresh, a coalesced snapshot), reads the clock
    /// once per wake-up and hands that instant down. An idle node does not wake up.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut feed: mpsc::UnboundedReceiver<Feed>,
    ) {
        loop {
            let deadline = self.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => {
                        let now = now();
                        self.handle(now, command);
                        self.changed(now);
                    }
                    None => return,
                },
                Some(item) = feed.recv() => {
                    let now = now();
                    self.handle_feed(now, item);
                    self.changed(now);
                }
                _ = sleep => self.handle_timeout(now()),
            }
        }
    }

    /// The earliest deadline of any replica, waiting job, presence refresh or snapshot.
    fn poll_timeout(&mut self) -> Option<Instant> {
        // Drop stale entries so the head is a live deadline.
        while let Some(Reverse((at, code))) = self.deadlines.peek() {
            if self.replicas.get(code).and_then(|r| r.scheduled) == Some(*at) {
                break;
            }
            self.deadlines.pop();
        }
        let replicas = self.deadlines.peek().map(|Reverse((at, _))| *at);
        let refresh = (!self.replicas.is_empty()).then_some(self.next_refresh);
        [replicas, refresh, self.next_snapshot]
            .into_iter()
            .flatten()
            .min()
    }

    /// Something may have changed a party: its snapshot goes out within the interval.
    fn changed(&mut self, now: Instant) {
        self.next_snapshot.get_or_insert(now + SNAPSHOT_INTERVAL);
    }

    fn handle(&mut self, now: Instant, command: Command) {
        let wall = wall_clock::now();
        match command {
            Command::Join { entry, reply } => {
                let code = entry.party.clone();
                let replica = self.replicas.entry(code.clone()).or_insert_with(|| {
                    let mut party = Party::new(
                        code.clone(),
                        (*self.config).clone(),
                        entry.stored.state.clone(),
                        entry.stored.last_seq,
                        now.into_std(),
                    );
                    for presence in entry.presence {
                        party.remote_presence(now.into_std(), presence);
                    }
                    self.store.watch(&code, entry.stored.last_seq);
                    Replica {
                        party,
                        sessions: HashMap::new(),
                        undelivered: false,
                        waiting: Vec::new(),
                        scheduled: None,
                    }
                });
                replica
                    .party
                    .reset_state(now.into_std(), wall, entry.stored.state);
                let member = entry.member.member_id.clone();
                replica.party.join_local(entry.member);
                if let Some((_, old)) = replica
                    .sessions
                    .insert(member, (entry.session, entry.outbox))
                {
                    // The same member from a new connection: the old one is stale.
                    old.party_replaced();
                }
                let _ = reply.send(snapshot(&code, &replica.party, self.available));
                self.drain(&code);
            }
            Command::Leave {
                party,
                member,
                session,
                explicit,
            } => {
                let Some(replica) = self.replicas.get_mut(&party) else {
                    return;
                };
                // A replaced session leaving must not take its successor out.
                if replica
                    .sessions
                    .get(&member)
                    .is_none_or(|(s, _)| *s != session)
                {
                    return;
                }
                replica.sessions.remove(&member);
                if explicit {
                    replica.party.leave_local(now.into_std(), wall, &member);
                    let store = self.store.clone();
                    let (p, m) = (party.clone(), member.clone());
                    tokio::spawn(async move {
                        if let Err(err) = store.remove_presence(&p, &m).await {
                            tracing::debug!(party = %p, %err, "could not remove presence");
                        }
                    });
                } else {
                    replica.party.disconnect_local(now.into_std(), &member);
                }
                self.drain(&party);
                // With no member here, this node forgets the party: the store keeps it.
                if let Some(replica) = self.replicas.get(&party)
                    && replica.sessions.is_empty()
                {
                    self.store.unwatch(&party);
                    self.replicas.remove(&party);
                }
            }
            Command::Ask {
                party,
                after_seq,
                request,
            } => {
                if let Some(replica) = self.replicas.get_mut(&party) {
                    replica.waiting.push((after_seq, now, request));
                    self.run_ready_jobs(&party, now);
                }
            }
            Command::Reset { party, stored } => {
                if let Some(replica) = self.replicas.get_mut(&party) {
                    replica
                        .party
                        .reset_state(now.into_std(), wall, stored.state);
                    self.drain(&party);
                }
            }
        }
    }

    fn handle_feed(&mut self, at: Instant, item: Feed) {
        let (now, wall) = (at.into_std(), wall_clock::now());
        match item {
            Feed::Event(code, event) => {
                let Some(replica) = self.replicas.get_mut(&code) else {
                    return;
                };
                if replica.party.apply(now, wall, &event) {
                    let shared = SharedEvent::new(event);
                    for (_, outbox) in replica.sessions.values() {
                        outbox.party_event(&shared);
                    }
                }
                self.run_ready_jobs(&code, at);
            }
            Feed::Presence(code, presence) => {
                if let Some(replica) = self.replicas.get_mut(&code) {
                    replica.party.remote_presence(now, presence);
                    self.drain(&code);
                }
            }
            Feed::Gone(code, member) => {
                if let Some(replica) = self.replicas.get_mut(&code) {
                    replica.party.remote_gone(now, wall, &member);
                    self.drain(&code);
                }
            }
            Feed::Available(available) => {
                self.available = available;
                for replica in self.replicas.values_mut() {
                    replica.undelivered = true;
                }
                if available {
                    self.recover();
                }
            }
        }
    }

    /// After an outage: make sure the store still has every party this node serves (a Redis
    /// that restarted without persistence lost them: they are re-created from the replica,
    /// sequence numbers continuing), then catch the replicas up with the store's state.
    fn recover(&self) {
        for (code, replica) in &self.replicas {
            let store = self.store.clone();
            let tx = self.tx.clone();
            let code = code.clone();
            let stored = Stored {
                state: replica.party.state().clone(),
                last_seq: replica.party.last_seq(),
            };
            tokio::spawn(async move {
                if store.create(&code, &stored).await == Ok(true) {
                    tracing::warn!(party = %code, "party was missing from the store; restored it");
                }
                if let Ok(Some(stored)) = store.load(&code).await {
                    let _ = tx
                        .send(Command::Reset {
                            party: code,
                            stored,
                        })
                        .await;
                }
            });
        }
    }

    /// Whatever is due at `now`: party timers, jobs that waited long enough, the presence
    /// refresh, coalesced snapshots.
    fn handle_timeout(&mut self, now: Instant) {
        let wall = wall_clock::now();
        let refresh = now >= self.next_refresh;
        if refresh {
            // Presence lapses after its TTL: refresh well within it.
            self.next_refresh = now + self.config.presence_ttl / 3;
        }
        let snapshots = self.next_snapshot.is_some_and(|at| at <= now);
        if snapshots {
            self.next_snapshot = None;
        }
        let codes: Vec<PartyId> = self.replicas.keys().cloned().collect();
        for code in codes {
            let replica = self.replicas.get_mut(&code).expect("listed");
            let due = (replica.party.poll_timeout()).is_some_and(|t| t <= now.into_std());
            if due {
                replica.party.handle_timeout(now.into_std(), wall);
            }
            if refresh {
                for presence in replica.party.local_presence() {
                    self.spawn_presence(&code, presence);
                }
            }
            if due {
                self.changed(now);
            }
            self.run_ready_jobs(&code, now);
            let replica = self.replicas.get_mut(&code).expect("listed");
            if snapshots && (replica.party.take_dirty() || replica.undelivered) {
                let state = Arc::new(snapshot(&code, &replica.party, self.available));
                let mut all = true;
                for (_, outbox) in replica.sessions.values() {
                    all &= outbox.party_state(state.clone());
                }
                replica.undelivered = !all;
                if !all {
                    // A full mailbox missed it: try again next interval.
                    self.changed(now);
                }
            }
        }
    }

    /// Runs the jobs whose replica has caught up (or that waited [`CATCH_UP_WAIT`]), in
    /// arrival order, then carries out what they made the replica ask for.
    fn run_ready_jobs(&mut self, code: &PartyId, now: Instant) {
        let Some(replica) = self.replicas.get_mut(code) else {
            return;
        };
        let (wall, applied) = (wall_clock::now(), replica.party.last_seq());
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut replica.waiting)
            .into_iter()
            .partition(|(after, since, _)| *after <= applied || now - *since >= CATCH_UP_WAIT);
        replica.waiting = waiting;
        if !ready.is_empty() {
            self.next_snapshot.get_or_insert(now + SNAPSHOT_INTERVAL);
        }
        for (_, _, request) in ready {
            request.run(&mut replica.party, now.into_std(), wall);
        }
        self.drain(code);
    }

    /// Carries out what a replica asked for: commits and presence updates.
    fn drain(&mut self, code: &PartyId) {
        let Some(replica) = self.replicas.get_mut(code) else {
            return;
        };
        let mut presences = Vec::new();
        while let Some(presence) = replica.party.poll_presence() {
            presences.push(presence);
        }
        while let Some(proposal) = replica.party.poll_proposal() {
            let store = self.store.clone();
            let code = code.clone();
            tokio::spawn(async move {
                if let Err(err) = store
                    .commit(&code, proposal.expected_version, &proposal.event)
                    .await
                {
                    // A lost race is fine: the winner's state arrives through the feed.
                    tracing::debug!(party = %code, %err, "party proposal not committed");
                }
            });
        }
        for presence in presences {
            self.spawn_presence(code, presence);
        }
        // Every change to a replica ends here: its deadline goes into the heap if it moved.
        if let Some(replica) = self.replicas.get_mut(code) {
            let deadline = replica.deadline();
            if deadline != replica.scheduled {
                replica.scheduled = deadline;
                if let Some(at) = deadline {
                    self.deadlines.push(Reverse((at, code.clone())));
                }
            }
        }
    }

    fn spawn_presence(&self, code: &PartyId, presence: Presence) {
        let store = self.store.clone();
        let code = code.clone();
        tokio::spawn(async move {
            if let Err(err) = store.put_presence(&code, &presence).await {
                tracing::debug!(party = %code, %err, "presence not published");
            }
        });
    }
}

/// The parties task's one clock read (GUIDE §2.2): tokio's clock, so paused-time tests
/// drive it.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn snapshot(code: &PartyId, party: &Party, available: bool) -> PartyState {
    let snapshot = party.snapshot();
    PartyState {
        party: code.0.clone(),
        state: snapshot.state,
        members: snapshot.members,
        spread: snapshot.spread,
        last_seq: snapshot.last_seq,
        lead_ms: party.lead_ms(),
        sync_available: available,
    }
}

/// Is this event new for a session that has sent everything up to `last_sent`?
pub fn classify(last_sent: u64, event: &Event) -> Delivery {
    match event.seq {
        s if s <= last_sent => Delivery::Seen,
        s if s == last_sent + 1 => Delivery::Next,
        _ => Delivery::Gap,
    }
}

/// How a session treats an incoming event.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Already sent: drop it.
    Seen,
    /// The next one: send it.
    Next,
    /// Something was skipped (a full outbox): fetch the gap from the store first.
    Gap,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::SessionEvent;
    use sync::{MemberStatus, MemoryStore, SharedState, StoreConfig};

    /// A party in a memory store and a member joined to this node's replica; returns the
    /// member's mailbox.
    async fn joined(parties: &PartiesHandle, code: &PartyId) -> mpsc::Receiver<SessionEvent> {
        let wall = wall_clock::now();
        let member = MemberId("m1".into());
        let stored = Stored {
            state: SharedState::new(member.clone(), wall),
            last_seq: 0,
        };
        assert!(parties.store.create(code, &stored).await.unwrap());
        let presence = Presence {
            member_id: member,
            name: "Ann".into(),
            joined_at: wall,
            status: MemberStatus::Ready,
            typing: false,
            online: true,
            camera: false,
            rtt_ms: None,
            deviation_ms: None,
            error_ms: None,
            reported_at: wall,
        };
        let (tx, rx) = mpsc::channel(16);
        let entry = Entry {
            party: code.clone(),
            stored,
            presence: Vec::new(),
            member: presence,
            session: SessionId(1),
            outbox: Outbox::new(tx),
        };
        parties.join(entry).await.expect("joined");
        rx
    }

    /// The task sleeps until the earliest deadline instead of polling: a job that waits for a
    /// log position the replica never reaches runs exactly `CATCH_UP_WAIT` after it arrived
    /// (a 250 ms polling tick made it up to a tick late), on virtual time.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_job_runs_at_its_catch_up_deadline() {
        let store = Arc::new(MemoryStore::new(StoreConfig::default()));
        let parties = spawn_parties(store, PartyConfig::default());
        let code = PartyId("WAITING".into());
        let _mailbox = joined(&parties, &code).await;
        // Off any 250 ms grid the old tick would have had.
        tokio::time::sleep(Duration::from_millis(110)).await;
        let asked = now();
        let (reply, answered) = oneshot::channel();
        let request = Request::Typing {
            member: MemberId("m1".into()),
            typing: true,
            reply,
        };
        assert!(parties.ask(&code, 99, request).await);
        answered.await.expect("the node has the replica").unwrap();
        assert_eq!(now() - asked, CATCH_UP_WAIT);
    }

    /// A changed party's snapshot reaches its members within `SNAPSHOT_INTERVAL`, and an idle
    /// party sends nothing more (no polling wake-ups push unchanged state).
    #[tokio::test(start_paused = true)]
    async fn snapshots_are_coalesced_and_idle_parties_stay_quiet() {
        let store = Arc::new(MemoryStore::new(StoreConfig::default()));
        let parties = spawn_parties(store, PartyConfig::default());
        let code = PartyId("QUIET".into());
        let mut mailbox = joined(&parties, &code).await;
        let started = now();
        // The join changed the party: one snapshot, within the interval.
        match tokio::time::timeout(SNAPSHOT_INTERVAL * 2, mailbox.recv()).await {
            Ok(Some(SessionEvent::PartyState(_))) => {}
            other => panic!("expected a snapshot, got {other:?}"),
        }
        assert!(now() - started <= SNAPSHOT_INTERVAL);
        // Nothing changes for a while (shorter than the presence TTL): nothing is sent.
        let quiet = tokio::time::timeout(Duration::from_secs(3), mailbox.recv()).await;
        assert!(quiet.is_err(), "an unchanged party sent {quiet:?}");
    }
}
