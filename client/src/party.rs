//! A watch-party member for tests. It records every `partyEvent` and fails the test on the
//! spot if one arrives twice or out of order: "exactly once, in order" is checked on every
//! message of every test, not only where a test remembers to look.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use marquee_protocol::wire::{
    ClientMessage, ErrorBody, ErrorCode, PROTOCOL_VERSION, PartyMessage, PartyState, ServerMessage,
};
use sync::{Event, EventBody, PlaybackCommand, SharedState};

use crate::util::tokio_now;
use crate::ws::{ServerError, WsClient};

/// Every wait of a party client is bounded by this.
pub const PARTY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PartyClient {
    ws: WsClient,
    pub party: String,
    pub member_id: String,
    pub member_key: String,
    pub resumed: bool,
    pub history_complete: bool,
    /// Every event received, in the order received (checked to be strictly increasing).
    pub events: Vec<Event>,
    /// When each of `events` arrived (same index).
    pub event_times: Vec<Instant>,
    /// Replies to `timeProbe`s, with when they arrived.
    pub time_replies: Vec<(f64, f64, f64, Instant)>,
    /// The latest snapshot.
    pub state: Option<PartyState>,
    /// The newest shared state, from events or snapshots.
    pub shared: Option<SharedState>,
    next_op: u64,
    /// The last seq a predecessor connection saw, for a resumed client.
    resume_floor: u64,
}

/// What a member needs to resume elsewhere.
#[derive(Debug, Clone)]
pub struct Identity {
    pub party: String,
    pub member_id: String,
    pub member_key: String,
    pub last_seq: u64,
}

impl PartyClient {
    /// Creates a party on the server at `ws_url` (`ws://host:port/ws`).
    pub async fn create(ws_url: &str, name: &str) -> Result<Self> {
        Self::join_with(ws_url, None, name, None, None).await
    }

    pub async fn join(ws_url: &str, party: &str, name: &str) -> Result<Self> {
        Self::join_with(ws_url, Some(party), name, None, None).await
    }

    /// Creates (`party` is `None`) or joins a party with an access token.
    pub async fn join_authorized(
        ws_url: &str,
        party: Option<&str>,
        name: &str,
        token: Option<&str>,
    ) -> Result<Self> {
        Self::join_with(ws_url, party, name, None, token).await
    }

    /// Reconnects as the same member, asking for everything after `identity.last_seq`.
    pub async fn resume(ws_url: &str, identity: &Identity, name: &str) -> Result<Self> {
        Self::join_with(ws_url, Some(&identity.party), name, Some(identity), None).await
    }

    async fn join_with(
        ws_url: &str,
        party: Option<&str>,
        name: &str,
        identity: Option<&Identity>,
        token: Option<&str>,
    ) -> Result<Self> {
        let mut ws = WsClient::connect_url(ws_url).await?;
        ws.send(&ClientMessage::Party(PartyMessage::PartyJoin {
            version: PROTOCOL_VERSION,
            party: party.map(str::to_owned),
            name: name.to_owned(),
            member_id: identity.map(|i| i.member_id.clone()),
            member_key: identity.map(|i| i.member_key.clone()),
            last_seq: identity.map(|i| i.last_seq),
            token: token.map(str::to_owned),
        }))?;
        let joined = ws
            .recv_until_within(PARTY_TIMEOUT, |m| {
                matches!(m, ServerMessage::PartyJoined { .. })
            })
            .await
            .context("waiting for partyJoined")?;
        let ServerMessage::PartyJoined {
            party,
            member_id,
            member_key,
            resumed,
            history_complete,
            ..
        } = joined
        else {
            unreachable!()
        };
        let mut client = Self {
            ws,
            party,
            member_id,
            member_key,
            resumed,
            history_complete,
            events: Vec::new(),
            event_times: Vec::new(),
            time_replies: Vec::new(),
            state: None,
            shared: None,
            next_op: 0,
            resume_floor: 0,
        };
        if let Some(identity) = identity {
            client.seed_last_seq(identity.last_seq);
        }
        client.wait_for(|c| c.state.is_some()).await?;
        Ok(client)
    }

    pub fn identity(&self) -> Identity {
        Identity {
            party: self.party.clone(),
            member_id: self.member_id.clone(),
            member_key: self.member_key.clone(),
            last_seq: self.last_seq(),
        }
    }

    /// A resumed client starts counting after what its predecessor saw.
    fn seed_last_seq(&mut self, last_seq: u64) {
        self.resume_floor = last_seq;
    }

    pub fn last_seq(&self) -> u64 {
        self.events
            .last()
            .map_or(self.resume_floor, |e| e.seq.max(self.resume_floor))
    }

    pub fn op(&mut self) -> String {
        self.next_op += 1;
        format!("{}-{}", self.member_id, self.next_op)
    }

    /// Chat texts received, in order.
    pub fn chats(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match &e.event.body {
                EventBody::Chat { text } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    /// The shared-state version this client holds.
    pub fn version(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.version)
    }

    fn take_state(&mut self, state: &SharedState) {
        if self
            .shared
            .as_ref()
            .is_none_or(|s| state.version > s.version)
        {
            self.shared = Some(state.clone());
        }
    }

    /// Sends a playback command; the committed seq, or the server's refusal as a
    /// [`ServerError`].
    pub async fn playback(
        &mut self,
        command: PlaybackCommand,
        base_version: Option<u64>,
    ) -> Result<u64> {
        let op_id = self.op();
        self.request(
            ClientMessage::Party(PartyMessage::Playback {
                op_id: op_id.clone(),
                command,
                base_version,
            }),
            &op_id,
        )
        .await
    }

    pub async fn chat(&mut self, text: &str) -> Result<u64> {
        let op_id = self.op();
        self.chat_with_op(text, &op_id).await
    }

    /// Chat as a well-behaved client: on `rate_limited`, wait and retry with the same op id.
    pub async fn chat_patiently(&mut self, text: &str) -> Result<u64> {
        let op_id = self.op();
        loop {
            match self.chat_with_op(text, &op_id).await {
                Err(err) if crate::ws::server_error_code(&err) == Some(ErrorCode::RateLimited) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                result => return result,
            }
        }
    }

    pub async fn chat_with_op(&mut self, text: &str, op_id: &str) -> Result<u64> {
        self.request(
            ClientMessage::Party(PartyMessage::Chat {
                op_id: op_id.to_owned(),
                text: text.to_owned(),
            }),
            op_id,
        )
        .await
    }

    /// Sends `message` and waits for its `ack` (the seq) or an `error`.
    pub async fn request(&mut self, message: ClientMessage, op_id: &str) -> Result<u64> {
        self.send(&message)?;
        let op = op_id.to_owned();
        let mut result = None;
        self.pump_until(|_, m| match m {
            ServerMessage::Ack { op_id, seq, .. } if *op_id == op => {
                result = Some(Ok(*seq));
                true
            }
            ServerMessage::Error(body) => {
                assert_eq!(
                    body.op_id.as_deref(),
                    Some(op.as_str()),
                    "a refusal names its op"
                );
                result = Some(Err(anyhow::Error::new(ServerError(body.clone()))));
                true
            }
            _ => false,
        })
        .await?;
        result.expect("set when pump_until returns")
    }

    /// Sends `message` and expects the error `code`.
    pub async fn expect_refusal(
        &mut self,
        message: ClientMessage,
        code: ErrorCode,
    ) -> Result<ErrorBody> {
        self.send(&message)?;
        let mut got = None;
        self.pump_until(|_, m| match m {
            ServerMessage::Error(body) => {
                got = Some(body.clone());
                true
            }
            ServerMessage::Ack { op_id, .. } => {
                got = Some(ErrorBody {
                    code: ErrorCode::Internal,
                    message: format!("acknowledged {op_id} instead of refusing it"),
                    op_id: Some(op_id.clone()),
                });
                true
            }
            _ => false,
        })
        .await?;
        let body = got.expect("set");
        if body.code != code {
            bail!("expected {code:?}, got {body:?}");
        }
        Ok(body)
    }

    pub fn send(&self, message: &ClientMessage) -> Result<()> {
        self.ws.send(message)
    }

    pub fn send_raw(&self, text: &str) -> Result<()> {
        self.ws.send_raw(text)
    }

    /// Receives until `done(self)` holds.
    pub async fn wait_for(&mut self, mut done: impl FnMut(&Self) -> bool) -> Result<()> {
        if done(self) {
            return Ok(());
        }
        self.pump_until(|c, _| done(c)).await
    }

    /// Receives (recording events and snapshots) until `deadline`; silence is not an error.
    pub async fn pump_until_instant(&mut self, deadline: tokio::time::Instant) -> Result<()> {
        loop {
            let left = deadline.saturating_duration_since(tokio_now());
            if left.is_zero() {
                return Ok(());
            }
            match tokio::time::timeout(left, self.ws.recv()).await {
                Err(_) => return Ok(()),
                Ok(message) => self.absorb(&message?)?,
            }
        }
    }

    /// Receives messages (recording events and snapshots) until `stop(self, message)` holds.
    async fn pump_until(
        &mut self,
        mut stop: impl FnMut(&Self, &ServerMessage) -> bool,
    ) -> Result<()> {
        let deadline = tokio_now() + PARTY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio_now());
            let message = self.ws.recv_within(left).await.with_context(|| {
                format!(
                    "{} waiting (seq {}, version {})",
                    self.member_id,
                    self.last_seq(),
                    self.version()
                )
            })?;
            self.absorb(&message)?;
            if stop(self, &message) {
                return Ok(());
            }
        }
    }

    fn absorb(&mut self, message: &ServerMessage) -> Result<()> {
        match message {
            ServerMessage::PartyEvent(event) => {
                let last = self.last_seq();
                if event.seq <= last {
                    return Err(anyhow!(
                        "{}: event {} arrived again or out of order (after {last})",
                        self.member_id,
                        event.seq
                    ));
                }
                if let EventBody::State { state, .. } = &event.event.body {
                    self.take_state(state);
                }
                self.events.push(event.clone());
                self.event_times.push(now());
            }
            ServerMessage::TimeReply { t0, t1, t2 } => {
                self.time_replies.push((*t0, *t1, *t2, now()));
            }
            ServerMessage::PartyState(snapshot) => {
                self.take_state(&snapshot.state);
                self.state = Some(snapshot.clone());
            }
            _ => {}
        }
        Ok(())
    }

    pub async fn close(self) {
        self.ws.close().await;
    }

    /// Drops the connection without a goodbye, like a phone losing its network.
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}
