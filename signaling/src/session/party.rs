//! The watch-party half of a session: join and resume, commands, chat, reports, and
//! delivering the party log to the client exactly once and in order.

use sync::{
    Committed, Event, MemberId, MemberRecord, MemberStatus, PartyError, PartyId, Presence,
    SharedState, StoreError, Stored, SyncReport, UnixMillis,
};

use tokio::sync::oneshot;
use tracing::Instrument;

use super::Session;
use crate::auth::Grant;
use crate::codes::{CODE_LEN, KEY_LEN, RoomCode, random_code};
use crate::errors::Failure;
use crate::join_trace::{JoinTrace, Stage};
use crate::parties::{Accepted, Delivery, Entry, Operation, Request, classify};
use crate::protocol::{ErrorCode, PROTOCOL_VERSION, PartyLimits, PartyMessage, ServerMessage};
use crate::telemetry::JoinKind;
use crate::wall_clock;

/// Longest client op id.
pub const MAX_OP_ID_CHARS: usize = 64;
/// Member ids: `m` and 12 characters; party and secret-key sizes are those of rooms.
const MEMBER_ID_LEN: usize = 12;

/// This session's place in a party.
pub(super) struct PartyMembership {
    pub party: PartyId,
    pub member: MemberId,
    /// The last log sequence number sent to the client.
    pub last_sent: u64,
    /// The last sequence number this session's own operations were committed as.
    pub last_acked: u64,
}

impl Session {
    /// Handles the party messages of the protocol.
    pub(super) async fn handle_party(
        &mut self,
        message: PartyMessage,
    ) -> Result<Vec<ServerMessage>, Failure> {
        match message {
            PartyMessage::PartyJoin {
                version,
                party,
                name,
                member_id,
                member_key,
                last_seq,
                token,
            } => {
                // Creating a party takes a token for any room (`*`) with `moderate`; joining
                // one takes a token for it with `subscribe`. The grants then decide the rest.
                let (room, grant) = match &party {
                    Some(code) => (
                        RoomCode::parse(code).map_err(Failure::from)?.into_string(),
                        Grant::Subscribe,
                    ),
                    None => (String::new(), Grant::Moderate),
                };
                let identity = self.authorize(token.as_deref(), &room, grant)?;
                let mut trace = JoinTrace::start(JoinKind::Party, party.as_deref());
                let joined = self
                    .party_join(version, party, name, member_id, member_key, last_seq)
                    .instrument(trace.stage(Stage::Admit))
                    .await;
                match &joined {
                    Ok(_) => {
                        self.party_grants = identity.grants;
                        trace.negotiated();
                        trace.connected(&self.state.metrics);
                    }
                    Err(Failure { code, .. }) => trace.refused(&self.state.metrics, *code),
                }
                joined
            }
            PartyMessage::Playback {
                op_id,
                command,
                base_version,
            } => {
                self.require(Grant::Control)?;
                let op = Operation::Playback {
                    command,
                    base_version,
                };
                self.operate(op_id, op).await
            }
            PartyMessage::SetControl { op_id, control } => {
                self.require(Grant::Moderate)?;
                self.operate(op_id, Operation::SetControl { control }).await
            }
            PartyMessage::Chat { op_id, text } => {
                self.require(Grant::Chat)?;
                self.check_party_chat_rate()?;
                self.operate(op_id, Operation::Chat { text }).await
            }
            PartyMessage::React { op_id, emoji } => {
                self.require(Grant::Chat)?;
                self.check_party_chat_rate()?;
                self.operate(op_id, Operation::React { emoji }).await
            }
            PartyMessage::Typing { typing } => {
                let (party, member) = self.party_ids()?;
                self.ask(&party, |reply| Request::Typing {
                    member,
                    typing,
                    reply,
                })
                .await?;
                Ok(vec![])
            }
            PartyMessage::Camera { on } => {
                if on {
                    self.require(Grant::Publish)?;
                }
                let (party, member) = self.party_ids()?;
                self.ask(&party, |reply| Request::Camera { member, on, reply })
                    .await?;
                Ok(vec![])
            }
            PartyMessage::SyncReport {
                status,
                position_ms,
                at,
                version,
                error_ms,
                rtt_ms,
            } => {
                let (party, member) = self.party_ids()?;
                if at.is_some_and(|a| !a.is_finite()) {
                    return Err(Failure::from(PartyError::InvalidReport));
                }
                let report = SyncReport {
                    status,
                    position_ms,
                    at: at.map(|a| UnixMillis(a.round() as i64)),
                    version,
                    error_ms,
                    rtt_ms,
                };
                let sample = self
                    .ask(&party, |reply| Request::Report {
                        member,
                        report,
                        reply,
                    })
                    .await?;
                if let Some(spread) = sample {
                    self.state.metrics.party_sync_spread(spread);
                }
                Ok(vec![])
            }
            PartyMessage::TimeProbe { t0 } => Ok(vec![ServerMessage::TimeReply {
                t0,
                t1: self.received_ms,
                t2: wall_clock::now_ms(),
            }]),
        }
    }

    async fn party_join(
        &mut self,
        version: u32,
        party: Option<String>,
        name: String,
        member_id: Option<String>,
        member_key: Option<String>,
        last_seq: Option<u64>,
    ) -> Result<Vec<ServerMessage>, Failure> {
        if version != PROTOCOL_VERSION {
            return Err(Failure::new(
                ErrorCode::UnsupportedVersion,
                format!("this server speaks protocol version {PROTOCOL_VERSION}"),
            ));
        }
        if self.party.is_some() {
            return Err(Failure::new(
                ErrorCode::AlreadyJoined,
                "already in a party; send leave first".into(),
            ));
        }
        let name = super::clean_name(&name);
        let store = self.state.parties.store.clone();
        let wall = wall_clock::now();
        // Who is joining: a resuming member proves it with its key.
        let resuming = match (&party, member_id, member_key) {
            (Some(_), Some(id), Some(key)) => Some((MemberId(id), key)),
            _ => None,
        };
        let (code, stored, record, resumed) = match party {
            None => {
                let record = new_member(wall);
                let (code, stored) = create_party(&*store, &record.member_id, wall).await?;
                store
                    .put_member(&code, &record)
                    .await
                    .map_err(Failure::from)?;
                (code, stored, record, false)
            }
            Some(code) => {
                let code = PartyId(RoomCode::parse(&code).map_err(Failure::from)?.into_string());
                let stored = store
                    .load(&code)
                    .await
                    .map_err(Failure::from)?
                    .ok_or_else(|| {
                        Failure::new(
                            ErrorCode::PartyNotFound,
                            format!("party {code} does not exist"),
                        )
                    })?;
                let known = match &resuming {
                    Some((id, key)) => store
                        .member(&code, id)
                        .await
                        .map_err(Failure::from)?
                        .filter(|r| r.key == *key),
                    None => None,
                };
                match known {
                    Some(record) => (code, stored, record, true),
                    None => {
                        let record = new_member(wall);
                        store
                            .put_member(&code, &record)
                            .await
                            .map_err(Failure::from)?;
                        (code, stored, record, false)
                    }
                }
            }
        };
        // A client's lastSeq beyond the log (a stale tab of a re-created party) counts as 0.
        let last_seq = last_seq.filter(|s| *s <= stored.last_seq);
        let presence = store.presence(&code).await.map_err(Failure::from)?;
        let member = Presence {
            member_id: record.member_id.clone(),
            name,
            joined_at: record.joined_at,
            status: MemberStatus::Ready,
            typing: false,
            online: true,
            camera: false,
            rtt_ms: None,
            deviation_ms: None,
            error_ms: None,
            reported_at: wall,
        };
        let snapshot = self
            .state
            .parties
            .join(Entry {
                party: code.clone(),
                stored,
                presence,
                member,
                session: self.id,
                outbox: self.outbox.clone(),
            })
            .await
            .ok_or_else(|| {
                Failure::new(
                    ErrorCode::ShuttingDown,
                    "the server is shutting down".into(),
                )
            })?;
        // Registered first, read second: anything committed meanwhile is in the read or
        // arrives live, and the session drops what it already sent.
        let history = self.state.parties.config.history;
        let events = match last_seq {
            Some(after) => store.events_after(&code, after).await,
            None => store.recent(&code, history).await,
        };
        let events = match events {
            Ok(events) => events,
            Err(err) => {
                self.state
                    .parties
                    .leave(code, record.member_id, self.id, false)
                    .await;
                return Err(Failure::from(err));
            }
        };
        let history_complete = match (last_seq, events.first()) {
            (Some(after), Some(first)) => first.seq == after + 1,
            _ => true,
        };
        let mut replies = vec![ServerMessage::PartyJoined {
            version: PROTOCOL_VERSION,
            party: code.0.clone(),
            member_id: record.member_id.0.clone(),
            member_key: record.key.clone(),
            resumed,
            history_complete,
            limits: self.party_limits(),
        }];
        let mut last_sent = last_seq.unwrap_or(0);
        for event in events {
            if event.seq > last_sent {
                last_sent = event.seq;
                replies.push(ServerMessage::PartyEvent(event));
            }
        }
        replies.push(ServerMessage::PartyState(snapshot));
        self.party = Some(PartyMembership {
            party: code,
            member: record.member_id,
            last_sent,
            last_acked: 0,
        });
        Ok(replies)
    }

    /// A member's operation: its replica checks it (`prepare`), this session writes the
    /// result to the store, and the client gets the `ack` (or the reason it was refused).
    async fn operate(
        &mut self,
        op_id: String,
        op: Operation,
    ) -> Result<Vec<ServerMessage>, Failure> {
        check_op_id(&op_id)?;
        let (party, member) = self.party_ids()?;
        let op_id_for_ack = op_id.clone();
        let accepted = self
            .ask(&party, |reply| Request::Operate {
                member,
                op_id,
                op,
                reply,
            })
            .await?;
        let store = &self.state.parties.store;
        let committed = match accepted {
            Accepted::Commit(proposal) => {
                store
                    .commit(&party, proposal.expected_version, &proposal.event)
                    .await
            }
            Accepted::Append(event) => store.append(&party, &event).await,
        };
        if let (Ok(c), Some(m)) = (&committed, &mut self.party) {
            m.last_acked = m.last_acked.max(c.seq());
        }
        ack(op_id_for_ack, committed)
    }

    /// An event from the party log for this session's client: [`EventDelivery::Shared`] when
    /// it is the client's next one (the caller sends its shared text), else what to send
    /// instead (nothing if already sent, the missed events from the store after a gap).
    pub(super) async fn on_party_event(&mut self, event: &Event) -> EventDelivery {
        let Some(m) = &self.party else {
            return EventDelivery::Instead(vec![]);
        };
        match classify(m.last_sent, event) {
            Delivery::Seen => EventDelivery::Instead(vec![]),
            Delivery::Next => {
                if let Some(m) = &mut self.party {
                    m.last_sent = event.seq;
                }
                EventDelivery::Shared
            }
            Delivery::Gap => EventDelivery::Instead(self.fill_gap(event.seq).await),
        }
    }

    /// A snapshot of the party; any events it is ahead by are sent first.
    pub(super) async fn on_party_state(
        &mut self,
        state: crate::protocol::PartyState,
    ) -> Vec<ServerMessage> {
        let Some(m) = &self.party else { return vec![] };
        let mut replies = if state.last_seq > m.last_sent {
            self.fill_gap(state.last_seq).await
        } else {
            vec![]
        };
        replies.push(ServerMessage::PartyState(state));
        replies
    }

    /// Sends what the client missed up to `through` (a full outbox skipped it), from the
    /// store. If the store is unreachable the gap stays and is filled at the next event.
    async fn fill_gap(&mut self, through: u64) -> Vec<ServerMessage> {
        let Some(m) = &mut self.party else {
            return vec![];
        };
        let store = self.state.parties.store.clone();
        let Ok(events) = store.events_after(&m.party, m.last_sent).await else {
            return vec![];
        };
        let mut replies = Vec::new();
        for event in events.into_iter().filter(|e| e.seq <= through) {
            if event.seq > m.last_sent {
                m.last_sent = event.seq;
                replies.push(ServerMessage::PartyEvent(event));
            }
        }
        replies
    }

    /// Leaves the party, if in one.
    pub(super) async fn leave_party(&mut self, explicit: bool) {
        if let Some(m) = self.party.take() {
            self.state
                .parties
                .leave(m.party, m.member, self.id, explicit)
                .await;
        }
    }

    /// Refuses what the party token did not grant.
    fn require(&self, grant: Grant) -> Result<(), Failure> {
        if self.party.is_some() && !self.party_grants.has(grant) {
            return Err(Failure::new(
                ErrorCode::GrantMissing,
                format!("your access token does not grant `{grant}`"),
            ));
        }
        Ok(())
    }

    /// The whole party's chat budget (each member also has its own, in the sync core).
    fn check_party_chat_rate(&self) -> Result<(), Failure> {
        let Some(membership) = &self.party else {
            return Ok(()); // not joined: `operate` says so
        };
        self.state
            .limits
            .chat
            .check(&membership.party.0)
            .map_err(|retry| {
                self.state.metrics.rate_limited("chat");
                Failure::new(
                    ErrorCode::RateLimited,
                    format!(
                        "this party is chatting faster than it can be shown; retry in {} ms",
                        retry.0.as_millis().max(1)
                    ),
                )
            })
    }

    fn party_ids(&self) -> Result<(PartyId, MemberId), Failure> {
        self.party
            .as_ref()
            .map(|m| (m.party.clone(), m.member.clone()))
            .ok_or_else(|| Failure::new(ErrorCode::NotJoined, "send partyJoin first".to_owned()))
    }

    /// Runs `f` on this session's party replica, mapping its refusal to a protocol error.
    /// Asks the party's replica (`make` builds the request around its reply channel), once the
    /// replica has seen what this session was sent or acknowledged.
    async fn ask<T>(
        &self,
        party: &PartyId,
        make: impl FnOnce(oneshot::Sender<Result<T, PartyError>>) -> Request,
    ) -> Result<T, Failure> {
        let seen = self
            .party
            .as_ref()
            .map_or(0, |m| m.last_sent.max(m.last_acked));
        let (reply, answer) = oneshot::channel();
        let gone = || Failure::new(ErrorCode::NotJoined, "not in this party anymore".to_owned());
        if !self.state.parties.ask(party, seen, make(reply)).await {
            return Err(gone());
        }
        answer.await.map_err(|_| gone())?.map_err(Failure::from)
    }

    fn party_limits(&self) -> PartyLimits {
        let config = &self.state.parties.config;
        PartyLimits {
            max_chat_chars: config.max_chat_chars,
            max_reaction_chars: config.max_reaction_chars,
            chat_burst: config.chat_burst,
            chat_per_second: config.chat_per_second,
            history: config.history,
            max_op_id_chars: MAX_OP_ID_CHARS,
        }
    }
}

/// Creates a party with a fresh code (retrying the rare collision).
async fn create_party(
    store: &dyn sync::Store,
    host: &MemberId,
    wall: UnixMillis,
) -> Result<(PartyId, Stored), Failure> {
    for _ in 0..8 {
        let code = PartyId(random_code(CODE_LEN));
        let stored = Stored {
            state: SharedState::new(host.clone(), wall),
            last_seq: 0,
        };
        if store.create(&code, &stored).await.map_err(Failure::from)? {
            return Ok((code, stored));
        }
    }
    Err(Failure::new(
        ErrorCode::Internal,
        "could not find a free party code".into(),
    ))
}

fn new_member(wall: UnixMillis) -> MemberRecord {
    MemberRecord {
        member_id: MemberId(format!("m{}", random_code(MEMBER_ID_LEN).to_lowercase())),
        key: random_code(KEY_LEN),
        joined_at: wall,
    }
}

fn check_op_id(op_id: &str) -> Result<(), Failure> {
    let len = op_id.chars().count();
    if len == 0 || len > MAX_OP_ID_CHARS || op_id.chars().any(char::is_control) {
        return Err(Failure::new(
            ErrorCode::InvalidOpId,
            format!("an opId is 1 to {MAX_OP_ID_CHARS} printable characters"),
        ));
    }
    Ok(())
}

fn ack(
    op_id: String,
    committed: Result<Committed, StoreError>,
) -> Result<Vec<ServerMessage>, Failure> {
    let committed = committed.map_err(Failure::from)?;
    Ok(vec![ServerMessage::Ack {
        op_id,
        seq: committed.seq(),
        duplicate: matches!(committed, Committed::Duplicate(_)),
    }])
}

/// How a party event reaches a session's client (see `Session::on_party_event`).
pub(super) enum EventDelivery {
    /// Send the event's shared, already serialized text.
    Shared,
    /// Send these messages instead.
    Instead(Vec<ServerMessage>),
}
