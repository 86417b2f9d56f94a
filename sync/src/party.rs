//! `Party`: the sans-IO core of one watch party on one node.
//!
//! Every node that has members of a party keeps a `Party` replica. The replica validates
//! members' commands and turns them into proposals (a new [`SharedState`] with the version it
//! was computed from, or a chat event); the caller commits them to the [`Store`](crate::Store),
//! which orders them; the store's feed then brings every committed event back to every
//! replica through [`Party::apply`]. One way for data to flow: a replica never changes the
//! shared state on its own, so two nodes cannot disagree about it.
//!
//! Time is told: `now` (monotonic) drives timers, `wall` (server wall clock) stamps events
//! and schedules playback.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::model::{
    Cause, Control, Event, EventBody, MemberId, MemberStatus, MemberView, NewEvent, PartyId,
    PlaybackCommand, Presence, SharedState, Spread,
};
use crate::timeline::UnixMillis;

/// Tunables of a party. Defaults are what the server runs with; each says why.
#[derive(Debug, Clone)]
pub struct PartyConfig {
    /// Smallest scheduling lead: play, pause and seek take effect this far ahead so that every
    /// device, having received the change, starts at the same instant. 150 ms covers a
    /// WebSocket hop plus a player's reaction on a good connection.
    pub min_lead: Duration,
    /// Largest lead, whatever members' round trips: past one second a control feels broken.
    pub max_lead: Duration,
    /// How long playback waits for a buffering member before going on without it.
    pub group_wait_cap: Duration,
    /// Group waits only in parties this small: in a big party one bad connection must not
    /// stall everyone.
    pub group_wait_max_members: usize,
    /// Events kept for history and resume (chat, reactions, state changes).
    pub history: usize,
    /// Longest chat message, in characters.
    pub max_chat_chars: usize,
    /// Longest reaction, in characters (emoji sequences joined by ZWJ run to ~10).
    pub max_reaction_chars: usize,
    /// Chat and reactions per member: a burst of this many...
    pub chat_burst: f64,
    /// ...refilled at this rate per second.
    pub chat_per_second: f64,
    /// A member whose presence was not refreshed for this long is gone; a disconnected
    /// member may resume within it and keep its role.
    pub presence_ttl: Duration,
    /// Largest accepted media position: 48 hours.
    pub max_position_ms: f64,
    /// Spread samples kept for the p50/p95/max in the party state.
    pub spread_window: usize,
    /// Position reports older than this do not count towards the spread.
    pub report_freshness: Duration,
}

impl Default for PartyConfig {
    fn default() -> Self {
        Self {
            min_lead: Duration::from_millis(150),
            max_lead: Duration::from_millis(1000),
            group_wait_cap: Duration::from_secs(5),
            group_wait_max_members: 8,
            history: 500,
            max_chat_chars: 500,
            max_reaction_chars: 16,
            chat_burst: 10.0,
            chat_per_second: 3.0,
            presence_ttl: Duration::from_secs(15),
            max_position_ms: 48.0 * 3_600_000.0,
            spread_window: 120,
            report_freshness: Duration::from_secs(10),
        }
    }
}

/// Why a member's command was refused. Each has a stable code (see [`PartyError::code`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartyError {
    #[error("only the host may {0}")]
    PermissionDenied(&'static str),
    #[error("the command was based on version {base}, the party is at version {current}")]
    StaleVersion { base: u64, current: u64 },
    #[error("a position must be a number of milliseconds from 0 to {max}")]
    InvalidPosition { max: f64 },
    #[error("a rate must be a number from 0.25 to 4")]
    InvalidRate,
    #[error("a video URL is an http(s) URL or a path on this server, at most 2048 characters")]
    InvalidUrl,
    #[error("nothing to play: load a video first")]
    NothingLoaded,
    #[error("a chat message is 1 to {max} characters")]
    ChatTooLong { max: usize },
    #[error("a reaction is 1 to {max} characters without spaces")]
    InvalidReaction { max: usize },
    #[error("too many chat messages; try again in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    #[error("not a member of this party")]
    NotMember,
    #[error("a report's numbers must be finite")]
    InvalidReport,
}

/// A state change for the store to compare-and-set: it applies only if the stored state is
/// still at `expected_version`.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub expected_version: u64,
    pub event: NewEvent,
}

impl Proposal {
    /// The proposed state.
    pub fn state(&self) -> &SharedState {
        match &self.event.body {
            EventBody::State { state, .. } => state,
            _ => unreachable!("proposals only carry state events"),
        }
    }
}

/// A member's periodic sync report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    pub status: Option<MemberStatus>,
    /// The member's media position...
    pub position_ms: Option<f64>,
    /// ...at this server time (the member's synchronized clock)...
    pub at: Option<UnixMillis>,
    /// ...under this shared-state version (a report from before a change says nothing).
    pub version: Option<u64>,
    /// The member's clock error bound.
    pub error_ms: Option<f64>,
    /// The member's best clock-probe round trip.
    pub rtt_ms: Option<f64>,
}

/// What a party looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: SharedState,
    pub members: Vec<MemberView>,
    pub spread: Spread,
    pub last_seq: u64,
}

pub struct Party {
    id: PartyId,
    config: PartyConfig,
    state: SharedState,
    last_seq: u64,
    members: BTreeMap<MemberId, Member>,
    /// When this replica started: before a TTL has passed it may not know every member yet,
    /// so it does not hand the host role on for a host it never saw.
    created: Instant,
    /// The host was seen leaving (or expiring) in this replica.
    host_left: bool,
    /// The state version a hand-off was last proposed for (propose once per version).
    handoff_proposed: Option<u64>,
    spread: VecDeque<f64>,
    /// Samples taken since the party was loaded.
    spread_taken: u64,
    wait: Option<Wait>,
    /// Members the group stopped waiting for, until they report ready again.
    waived: HashSet<MemberId>,
    proposals: VecDeque<Proposal>,
    presence_out: VecDeque<Presence>,
    next_op: u64,
    dirty: bool,
}

struct Member {
    presence: Presence,
    /// Connected to this node.
    local: bool,
    /// When the presence lapses; `None` while connected here.
    expires: Option<Instant>,
    chat: TokenBucket,
}

/// A group wait this replica started for one of its members.
struct Wait {
    member: MemberId,
    deadline: Instant,
    /// The op id of the pause that started it, to recognize it when it comes back applied.
    op_id: String,
    /// The state version of that pause once applied.
    version: Option<u64>,
    /// The member became ready before the pause came back.
    ready: bool,
}

impl Party {
    /// A replica of a party whose stored state is `state` and whose log is at `last_seq`.
    pub fn new(
        id: PartyId,
        config: PartyConfig,
        state: SharedState,
        last_seq: u64,
        now: Instant,
    ) -> Self {
        Self {
            id,
            config,
            state,
            last_seq,
            members: BTreeMap::new(),
            created: now,
            host_left: false,
            handoff_proposed: None,
            spread: VecDeque::new(),
            spread_taken: 0,
            wait: None,
            waived: HashSet::new(),
            proposals: VecDeque::new(),
            presence_out: VecDeque::new(),
            next_op: 0,
            dirty: true,
        }
    }

    pub fn id(&self) -> &PartyId {
        &self.id
    }

    pub fn state(&self) -> &SharedState {
        &self.state
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn config(&self) -> &PartyConfig {
        &self.config
    }

    /// Members connected to this node.
    pub fn local_members(&self) -> impl Iterator<Item = &MemberId> {
        self.members
            .iter()
            .filter(|(_, m)| m.local)
            .map(|(id, _)| id)
    }

    /// A member connected to this node (new, or resuming on this node).
    pub fn join_local(&mut self, mut presence: Presence) {
        presence.online = true;
        let id = presence.member_id.clone();
        let chat = self
            .members
            .remove(&id)
            .map(|m| m.chat)
            .unwrap_or_else(|| TokenBucket::full(self.config.chat_burst));
        self.presence_out.push_back(presence.clone());
        self.members.insert(
            id,
            Member {
                presence,
                local: true,
                expires: None,
                chat,
            },
        );
        self.dirty = true;
    }

    /// A local member's connection dropped. It stays present (and keeps the host role) for
    /// the presence TTL, so a phone that blinks resumes where it was.
    pub fn disconnect_local(&mut self, now: Instant, member: &MemberId) {
        if let Some(m) = self.members.get_mut(member).filter(|m| m.local) {
            m.local = false;
            m.expires = Some(now + self.config.presence_ttl);
            m.presence.online = false;
            let presence = m.presence.clone();
            self.presence_out.push_back(presence);
            self.dirty = true;
        }
    }

    /// A local member left on purpose: gone at once, and the host role passes on now.
    pub fn leave_local(&mut self, now: Instant, wall: UnixMillis, member: &MemberId) {
        self.remove_member(member);
        self.check_host(now, wall);
    }

    /// Presence of a member, published by any node (this one's own echoes included).
    pub fn remote_presence(&mut self, now: Instant, presence: Presence) {
        let id = presence.member_id.clone();
        match self.members.get_mut(&id) {
            // Our own member's echo: this node is the authority on it.
            Some(m) if m.local => return,
            Some(m) => {
                m.presence = presence;
                m.expires = Some(now + self.config.presence_ttl);
            }
            None => {
                self.members.insert(
                    id,
                    Member {
                        presence,
                        local: false,
                        expires: Some(now + self.config.presence_ttl),
                        chat: TokenBucket::full(self.config.chat_burst),
                    },
                );
            }
        }
        self.sample_spread();
        self.dirty = true;
    }

    /// Another node says the member left on purpose.
    pub fn remote_gone(&mut self, now: Instant, wall: UnixMillis, member: &MemberId) {
        if self.members.get(member).is_some_and(|m| !m.local) {
            self.remove_member(member);
            self.check_host(now, wall);
        }
    }

    /// A committed event from the store's feed, in sequence order. Returns false for an
    /// event already applied.
    pub fn apply(&mut self, now: Instant, wall: UnixMillis, event: &Event) -> bool {
        if event.seq <= self.last_seq {
            return false;
        }
        self.last_seq = event.seq;
        if let EventBody::State { state, .. } = &event.event.body {
            self.adopt(now, wall, state.clone(), &event.event.op_id);
        }
        true
    }

    /// Replaces the state wholesale (a replica catching up after the store was unreachable).
    pub fn reset_state(&mut self, now: Instant, wall: UnixMillis, state: SharedState) {
        self.adopt(now, wall, state, "");
    }

    /// Takes `state` if it is newer, then follows up: a group wait it ends or continues, a
    /// host that is gone.
    fn adopt(&mut self, now: Instant, wall: UnixMillis, state: SharedState, op_id: &str) {
        if state.version > self.state.version {
            self.state = state;
            self.dirty = true;
            self.on_state_changed(wall, op_id);
            self.check_host(now, wall);
        }
    }

    /// Validates a playback command and schedules it `lead` ahead.
    pub fn prepare_playback(
        &mut self,
        wall: UnixMillis,
        member: &MemberId,
        command: PlaybackCommand,
        base_version: Option<u64>,
        op_id: String,
    ) -> Result<Proposal, PartyError> {
        let name = self.local_name(member)?;
        if self.state.control == Control::Host && *member != self.state.host {
            return Err(PartyError::PermissionDenied(
                "control playback in this party",
            ));
        }
        if let Some(base) = base_version
            && base != self.state.version
        {
            return Err(PartyError::StaleVersion {
                base,
                current: self.state.version,
            });
        }
        let timeline = &self.state.timeline;
        if timeline.url.is_none() && !matches!(command, PlaybackCommand::Load { .. }) {
            return Err(PartyError::NothingLoaded);
        }
        let at = wall.plus_ms(self.lead_ms());
        let (timeline, cause) = match command {
            PlaybackCommand::Load { url } => {
                validate_url(&url)?;
                (timeline.load(wall, url), Cause::Load)
            }
            PlaybackCommand::Play => (timeline.play(at), Cause::Play),
            PlaybackCommand::Pause => (timeline.pause(at), Cause::Pause),
            PlaybackCommand::Seek { position_ms } => {
                if !(position_ms.is_finite()
                    && (0.0..=self.config.max_position_ms).contains(&position_ms))
                {
                    return Err(PartyError::InvalidPosition {
                        max: self.config.max_position_ms,
                    });
                }
                (timeline.seek(at, position_ms), Cause::Seek)
            }
            PlaybackCommand::Rate { rate } => {
                if !(rate.is_finite() && (0.25..=4.0).contains(&rate)) {
                    return Err(PartyError::InvalidRate);
                }
                (timeline.set_rate(at, rate), Cause::Rate)
            }
        };
        let state = SharedState {
            version: self.state.version + 1,
            timeline,
            ..self.state.clone()
        };
        Ok(self.proposal(wall, member.clone(), name, op_id, state, cause))
    }

    /// The host decides who controls playback.
    pub fn prepare_control(
        &mut self,
        wall: UnixMillis,
        member: &MemberId,
        control: Control,
        op_id: String,
    ) -> Result<Proposal, PartyError> {
        let name = self.local_name(member)?;
        if *member != self.state.host {
            return Err(PartyError::PermissionDenied("decide who controls playback"));
        }
        let state = SharedState {
            version: self.state.version + 1,
            control,
            ..self.state.clone()
        };
        Ok(self.proposal(wall, member.clone(), name, op_id, state, Cause::Control))
    }

    /// Validates a chat message (size, rate) and makes its event.
    pub fn prepare_chat(
        &mut self,
        now: Instant,
        wall: UnixMillis,
        member: &MemberId,
        text: String,
        op_id: String,
    ) -> Result<NewEvent, PartyError> {
        let chars = text.chars().count();
        if text.trim().is_empty() || chars > self.config.max_chat_chars {
            return Err(PartyError::ChatTooLong {
                max: self.config.max_chat_chars,
            });
        }
        self.chat_event(now, wall, member, op_id, EventBody::Chat { text })
    }

    /// Validates a reaction (size, rate: it shares the chat budget) and makes its event.
    pub fn prepare_reaction(
        &mut self,
        now: Instant,
        wall: UnixMillis,
        member: &MemberId,
        emoji: String,
        op_id: String,
    ) -> Result<NewEvent, PartyError> {
        let chars = emoji.chars().count();
        if chars == 0
            || chars > self.config.max_reaction_chars
            || emoji.chars().any(char::is_whitespace)
        {
            return Err(PartyError::InvalidReaction {
                max: self.config.max_reaction_chars,
            });
        }
        self.chat_event(now, wall, member, op_id, EventBody::Reaction { emoji })
    }

    /// A local member typing or not.
    pub fn set_typing(&mut self, member: &MemberId, typing: bool) -> Result<(), PartyError> {
        self.update_presence(member, |p| p.typing = typing)
    }

    /// A local member turned its camera on or off.
    pub fn set_camera(&mut self, member: &MemberId, camera: bool) -> Result<(), PartyError> {
        self.update_presence(member, |p| p.camera = camera)
    }

    /// A local member's sync report: status, position and clock quality. Drives the group
    /// wait and the spread.
    pub fn report(
        &mut self,
        now: Instant,
        wall: UnixMillis,
        member: &MemberId,
        report: SyncReport,
    ) -> Result<(), PartyError> {
        let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
        if !(finite(report.position_ms) && finite(report.error_ms) && finite(report.rtt_ms)) {
            return Err(PartyError::InvalidReport);
        }
        let timeline = self.state.timeline.clone();
        let version = self.state.version;
        let m = self.local_member(member)?;
        let previous = m.presence.status;
        if let Some(status) = report.status {
            m.presence.status = status;
        }
        if let Some(rtt) = report.rtt_ms {
            m.presence.rtt_ms = Some(rtt.clamp(0.0, 10_000.0));
        }
        if let Some(error) = report.error_ms {
            m.presence.error_ms = Some(error.clamp(0.0, 10_000.0));
        }
        // A position says something only against the state it was played under, and not
        // while a scheduled change is still ahead.
        if let (Some(position), Some(at), Some(v)) = (report.position_ms, report.at, report.version)
            && v == version
            && at >= timeline.anchor
        {
            m.presence.deviation_ms = Some(position - timeline.position_at(at));
        }
        m.presence.reported_at = wall;
        let status = m.presence.status;
        let presence = m.presence.clone();
        self.presence_out.push_back(presence);
        self.sample_spread();
        self.dirty = true;
        if status != previous {
            match status {
                MemberStatus::Buffering => self.start_wait(now, wall, member),
                MemberStatus::Ready => self.member_ready(wall, member),
            }
        }
        Ok(())
    }

    /// Timers: presence expiry, the group-wait cap, host hand-off.
    pub fn handle_timeout(&mut self, now: Instant, wall: UnixMillis) {
        let expired: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, m)| m.expires.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove_member(id);
        }
        if let Some(wait) = &self.wait
            && wait.deadline <= now
        {
            let wait = self.wait.take().expect("checked");
            // Go on without the laggard; it catches up by itself.
            self.waived.insert(wait.member.clone());
            if wait.version == Some(self.state.version) {
                self.propose_resume(wall);
            }
        }
        self.check_host(now, wall);
    }

    /// The next instant `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiries = self.members.values().filter_map(|m| m.expires);
        let wait = self.wait.as_ref().map(|w| w.deadline);
        let handoff = (!self.members.contains_key(&self.state.host)
            && !self.members.is_empty()
            && !self.host_left
            && self.handoff_proposed != Some(self.state.version))
        .then_some(self.created + self.config.presence_ttl);
        expiries.chain(wait).chain(handoff).min()
    }

    /// State changes this replica wants committed (group wait, hand-off).
    pub fn poll_proposal(&mut self) -> Option<Proposal> {
        self.proposals.pop_front()
    }

    /// Presence of local members to publish to every node.
    pub fn poll_presence(&mut self) -> Option<Presence> {
        self.presence_out.pop_front()
    }

    /// Presence of every connected local member, to refresh before its TTL lapses.
    pub fn local_presence(&self) -> Vec<Presence> {
        self.members
            .values()
            .filter(|m| m.local)
            .map(|m| m.presence.clone())
            .collect()
    }

    /// True once after anything shown in the snapshot changed.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn snapshot(&self) -> Snapshot {
        let members = self
            .members
            .values()
            .map(|m| MemberView {
                presence: m.presence.clone(),
                host: m.presence.member_id == self.state.host,
            })
            .collect();
        Snapshot {
            state: self.state.clone(),
            members,
            spread: self.spread(),
            last_seq: self.last_seq,
        }
    }

    /// The lead with which changes are scheduled: twice the slowest member's one-way delay
    /// (its round trip), at least `min_lead`, at most `max_lead`.
    pub fn lead_ms(&self) -> i64 {
        let slowest = self
            .members
            .values()
            .filter_map(|m| m.presence.rtt_ms)
            .fold(0.0, f64::max);
        let min = self.config.min_lead.as_millis() as f64;
        let max = self.config.max_lead.as_millis() as f64;
        slowest.clamp(min, max).round() as i64
    }

    pub fn spread(&self) -> Spread {
        let mut samples: Vec<f64> = self.spread.iter().copied().collect();
        if samples.is_empty() {
            return Spread::default();
        }
        samples.sort_by(f64::total_cmp);
        let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Spread {
            p50_ms: pick(0.5),
            p95_ms: pick(0.95),
            max_ms: *samples.last().expect("not empty"),
            samples: samples.len(),
        }
    }

    fn proposal(
        &mut self,
        wall: UnixMillis,
        from: MemberId,
        name: String,
        op_id: String,
        state: SharedState,
        cause: Cause,
    ) -> Proposal {
        Proposal {
            expected_version: self.state.version,
            event: NewEvent {
                at: wall,
                from,
                name,
                op_id,
                body: EventBody::State { state, cause },
            },
        }
    }

    /// A proposal made by the party itself, under the current host's name.
    fn propose(&mut self, wall: UnixMillis, state: SharedState, cause: Cause) -> String {
        self.next_op += 1;
        let op_id = format!("srv-{}-{}-{}", self.id, wall.0, self.next_op);
        let from = state.host.clone();
        let proposal = self.proposal(wall, from, String::new(), op_id.clone(), state, cause);
        self.proposals.push_back(proposal);
        op_id
    }

    fn chat_event(
        &mut self,
        now: Instant,
        wall: UnixMillis,
        member: &MemberId,
        op_id: String,
        body: EventBody,
    ) -> Result<NewEvent, PartyError> {
        let (burst, rate) = (self.config.chat_burst, self.config.chat_per_second);
        let m = self.local_member(member)?;
        m.chat.take(now, burst, rate)?;
        Ok(NewEvent {
            at: wall,
            from: member.clone(),
            name: m.presence.name.clone(),
            op_id,
            body,
        })
    }

    /// Changes a local member's presence and publishes it when something changed.
    fn update_presence(
        &mut self,
        member: &MemberId,
        change: impl FnOnce(&mut Presence),
    ) -> Result<(), PartyError> {
        let m = self.local_member(member)?;
        let before = m.presence.clone();
        change(&mut m.presence);
        if m.presence != before {
            let presence = m.presence.clone();
            self.presence_out.push_back(presence);
            self.dirty = true;
        }
        Ok(())
    }

    fn local_member(&mut self, member: &MemberId) -> Result<&mut Member, PartyError> {
        self.members
            .get_mut(member)
            .filter(|m| m.local)
            .ok_or(PartyError::NotMember)
    }

    fn local_name(&mut self, member: &MemberId) -> Result<String, PartyError> {
        Ok(self.local_member(member)?.presence.name.clone())
    }

    fn remove_member(&mut self, member: &MemberId) {
        if self.members.remove(member).is_some() {
            if *member == self.state.host {
                self.host_left = true;
            }
            self.waived.remove(member);
            self.dirty = true;
        }
    }

    /// Proposes the longest-present member as host when the host is gone. Every replica
    /// that notices proposes the same successor; compare-and-set keeps one.
    fn check_host(&mut self, now: Instant, wall: UnixMillis) {
        if self.members.contains_key(&self.state.host) || self.members.is_empty() {
            return;
        }
        if self.handoff_proposed == Some(self.state.version) {
            return;
        }
        // A replica younger than one TTL may simply not have heard of the host yet.
        if !self.host_left && now < self.created + self.config.presence_ttl {
            return;
        }
        let successor = self
            .members
            .values()
            .min_by(|a, b| {
                (a.presence.joined_at, &a.presence.member_id)
                    .cmp(&(b.presence.joined_at, &b.presence.member_id))
            })
            .map(|m| m.presence.member_id.clone())
            .expect("not empty");
        self.handoff_proposed = Some(self.state.version);
        let state = SharedState {
            version: self.state.version + 1,
            host: successor,
            ..self.state.clone()
        };
        self.propose(wall, state, Cause::HandOff);
    }

    fn start_wait(&mut self, now: Instant, wall: UnixMillis, member: &MemberId) {
        let playing = !self.state.timeline.paused && self.state.timeline.url.is_some();
        if !playing
            || self.wait.is_some()
            || self.members.len() > self.config.group_wait_max_members
            || self.waived.contains(member)
        {
            return;
        }
        let at = wall.plus_ms(self.lead_ms());
        let state = SharedState {
            version: self.state.version + 1,
            timeline: self.state.timeline.pause(at),
            ..self.state.clone()
        };
        let op_id = self.propose(wall, state, Cause::Wait);
        self.wait = Some(Wait {
            member: member.clone(),
            deadline: now + self.config.group_wait_cap,
            op_id,
            version: None,
            ready: false,
        });
    }

    fn member_ready(&mut self, wall: UnixMillis, member: &MemberId) {
        self.waived.remove(member);
        let Some(wait) = &mut self.wait else { return };
        if wait.member != *member {
            return;
        }
        match wait.version {
            None => wait.ready = true,
            Some(v) => {
                self.wait = None;
                if v == self.state.version {
                    self.propose_resume(wall);
                }
            }
        }
    }

    fn on_state_changed(&mut self, wall: UnixMillis, op_id: &str) {
        let Some(wait) = &mut self.wait else { return };
        if wait.op_id == op_id {
            wait.version = Some(self.state.version);
            if wait.ready {
                self.wait = None;
                self.propose_resume(wall);
            }
        } else if wait.version.is_some() {
            // Someone changed playback during the wait: they are in charge now.
            self.wait = None;
        }
    }

    fn propose_resume(&mut self, wall: UnixMillis) {
        let at = wall.plus_ms(self.lead_ms());
        let state = SharedState {
            version: self.state.version + 1,
            timeline: self.state.timeline.play(at),
            ..self.state.clone()
        };
        self.propose(wall, state, Cause::Resume);
    }

    /// One spread sample: the largest minus the smallest deviation among fresh reports.
    fn sample_spread(&mut self) {
        let newest = self
            .members
            .values()
            .map(|m| m.presence.reported_at)
            .max()
            .unwrap_or(UnixMillis(0));
        let freshness = self.config.report_freshness.as_millis() as i64;
        let deviations: Vec<f64> = self
            .members
            .values()
            .filter(|m| newest.0 - m.presence.reported_at.0 <= freshness)
            .filter_map(|m| m.presence.deviation_ms)
            .collect();
        if deviations.len() < 2 {
            return;
        }
        let max = deviations.iter().copied().fold(f64::MIN, f64::max);
        let min = deviations.iter().copied().fold(f64::MAX, f64::min);
        if self.spread.len() == self.config.spread_window {
            self.spread.pop_front();
        }
        self.spread.push_back(max - min);
        self.spread_taken += 1;
    }

    /// How many spread samples were ever taken, and the newest: a caller that compares the
    /// count before and after a report knows whether that report produced a new sample
    /// (for a metric of every sample).
    pub fn spread_sample(&self) -> (u64, Option<f64>) {
        (self.spread_taken, self.spread.back().copied())
    }
}

/// `http(s)://…` or a path on this server (`/media/sample.webm`); no whitespace or controls.
fn validate_url(url: &str) -> Result<(), PartyError> {
    let scheme_ok =
        url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/');
    let chars_ok = !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if scheme_ok && chars_ok && url.len() > 1 && url.len() <= 2048 {
        Ok(())
    } else {
        Err(PartyError::InvalidUrl)
    }
}

/// A token bucket on the caller's clock.
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn full(burst: f64) -> Self {
        Self {
            tokens: burst,
            last: None,
        }
    }

    fn take(&mut self, now: Instant, burst: f64, per_second: f64) -> Result<(), PartyError> {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * per_second;
            self.tokens = (self.tokens + refill).min(burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let retry_after_ms = ((1.0 - self.tokens) / per_second * 1000.0).ceil() as u64;
            Err(PartyError::RateLimited { retry_after_ms })
        }
    }
}
