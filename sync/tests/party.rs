//! `Party` on virtual time: a test harness plays the store (it orders proposals and feeds
//! them back) and moves both clocks by hand. Nothing sleeps.

use std::time::{Duration, Instant};

use sync::{
    Cause, Control, Event, EventBody, MemberId, MemberStatus, NewEvent, Party, PartyConfig,
    PartyError, PartyId, PlaybackCommand, Presence, Proposal, SharedState, SyncReport, UnixMillis,
};

struct Harness {
    party: Party,
    now: Instant,
    wall: UnixMillis,
    seq: u64,
}

impl Harness {
    /// A party hosted by `m0`, with `members` local members m0..mN joined a second apart.
    fn new(members: usize) -> Self {
        #[allow(clippy::disallowed_methods)] // the origin of virtual time
        let now = Instant::now();
        let wall = UnixMillis(1_700_000_000_000);
        let state = SharedState::new(id(0), wall);
        let mut h = Self {
            party: Party::new(PartyId("P".into()), PartyConfig::default(), state, 0, now),
            now,
            wall,
            seq: 0,
        };
        for i in 0..members {
            h.party
                .join_local(presence(i, wall.plus_ms(i as i64 * 1000)));
        }
        h
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.wall = self.wall.plus_ms(by.as_millis() as i64);
        if self.party.poll_timeout().is_some_and(|t| t <= self.now) {
            self.party.handle_timeout(self.now, self.wall);
        }
    }

    /// What the store does: a compare-and-set, then the feed brings the event back.
    fn commit(&mut self, proposal: Proposal) -> bool {
        if proposal.expected_version != self.party.state().version {
            return false;
        }
        self.seq += 1;
        let event = Event {
            seq: self.seq,
            event: proposal.event,
        };
        assert!(self.party.apply(self.now, self.wall, &event));
        true
    }

    fn playback(&mut self, member: usize, command: PlaybackCommand) -> Result<(), PartyError> {
        let op = format!("op{}", self.seq);
        let p = self
            .party
            .prepare_playback(self.wall, &id(member), command, None, op)?;
        assert!(self.commit(p));
        Ok(())
    }

    fn load_and_play(&mut self) {
        self.playback(
            0,
            PlaybackCommand::Load {
                url: "/media/sample.webm".into(),
            },
        )
        .unwrap();
        self.playback(0, PlaybackCommand::Play).unwrap();
    }

    fn report(&mut self, member: usize, status: MemberStatus) {
        let report = SyncReport {
            status: Some(status),
            ..SyncReport::default()
        };
        self.party
            .report(self.now, self.wall, &id(member), report)
            .unwrap();
    }

    /// The next proposal the party made, with its cause.
    fn proposal(&mut self) -> Option<(Proposal, Cause)> {
        let p = self.party.poll_proposal()?;
        let EventBody::State { cause, .. } = &p.event.body else {
            panic!("proposals carry states")
        };
        let cause = cause.clone();
        Some((p, cause))
    }
}

fn id(i: usize) -> MemberId {
    MemberId(format!("m{i}"))
}

fn presence(i: usize, joined_at: UnixMillis) -> Presence {
    Presence {
        member_id: id(i),
        name: format!("Member {i}"),
        joined_at,
        status: MemberStatus::Ready,
        typing: false,
        online: true,
        camera: false,
        rtt_ms: None,
        deviation_ms: None,
        error_ms: None,
        reported_at: joined_at,
    }
}

fn rtt(h: &mut Harness, member: usize, rtt_ms: f64) {
    let report = SyncReport {
        rtt_ms: Some(rtt_ms),
        ..SyncReport::default()
    };
    h.party.report(h.now, h.wall, &id(member), report).unwrap();
}

#[test]
fn play_pause_and_seek_are_scheduled_a_lead_ahead_of_now() {
    let mut h = Harness::new(3);
    h.load_and_play();
    let t = &h.party.state().timeline;
    assert!(!t.paused);
    assert_eq!(
        t.anchor,
        h.wall.plus_ms(150),
        "no RTT known: the 150 ms floor"
    );
    // A member on a 260 ms round trip: lead = 2 × its one-way delay.
    rtt(&mut h, 2, 260.0);
    assert_eq!(h.party.lead_ms(), 260);
    h.advance(Duration::from_secs(2));
    h.playback(1, PlaybackCommand::Pause).unwrap();
    let t = h.party.state().timeline.clone();
    assert!(t.paused);
    assert_eq!(t.anchor, h.wall.plus_ms(260));
    assert_eq!(
        t.position_ms,
        2_000.0 - 150.0 + 260.0,
        "paused where it will be then"
    );
    h.playback(
        1,
        PlaybackCommand::Seek {
            position_ms: 30_000.0,
        },
    )
    .unwrap();
    assert_eq!(h.party.state().timeline.position_ms, 30_000.0);
    // A pathological round trip is capped: controls must not feel broken.
    rtt(&mut h, 2, 9_000.0);
    assert_eq!(h.party.lead_ms(), 1_000);
}

#[test]
fn events_apply_in_order_once_and_state_only_moves_forward() {
    let mut h = Harness::new(2);
    h.load_and_play();
    let version = h.party.state().version;
    assert_eq!(h.party.last_seq(), 2);
    // A redelivered event (a feed replay after reconnecting) changes nothing.
    let old = Event {
        seq: 1,
        event: NewEvent {
            at: h.wall,
            from: id(0),
            name: String::new(),
            op_id: "again".into(),
            body: EventBody::State {
                state: SharedState::new(id(1), h.wall),
                cause: Cause::Load,
            },
        },
    };
    assert!(!h.party.apply(h.now, h.wall, &old));
    assert_eq!(h.party.state().version, version);
    // A later event carrying an older state advances the log but not the state.
    let stale = Event { seq: 3, ..old };
    assert!(h.party.apply(h.now, h.wall, &stale));
    assert_eq!(h.party.last_seq(), 3);
    assert_eq!(h.party.state().version, version);
    assert_eq!(h.party.state().host, id(0));
}

#[test]
fn commands_on_a_stale_version_or_that_lose_a_race_are_refused() {
    let mut h = Harness::new(2);
    h.load_and_play();
    let seen = h.party.state().version;
    // Both members decide on the same version; the store keeps the first.
    let a = h
        .party
        .prepare_playback(
            h.wall,
            &id(0),
            PlaybackCommand::Pause,
            Some(seen),
            "a".into(),
        )
        .unwrap();
    let b = h
        .party
        .prepare_playback(
            h.wall,
            &id(1),
            PlaybackCommand::Seek { position_ms: 5.0 },
            Some(seen),
            "b".into(),
        )
        .unwrap();
    assert!(h.commit(a));
    assert!(!h.commit(b), "compare-and-set refuses the loser");
    assert!(h.party.state().timeline.paused);
    // A client still on the old version is told so.
    assert_eq!(
        h.party.prepare_playback(
            h.wall,
            &id(1),
            PlaybackCommand::Play,
            Some(seen),
            "c".into()
        ),
        Err(PartyError::StaleVersion {
            base: seen,
            current: seen + 1
        })
    );
}

#[test]
fn bad_positions_rates_and_urls_are_refused_without_a_change() {
    let mut h = Harness::new(1);
    assert_eq!(
        h.playback(0, PlaybackCommand::Play),
        Err(PartyError::NothingLoaded)
    );
    h.load_and_play();
    let before = h.party.state().clone();
    for position_ms in [-1.0, f64::NAN, f64::INFINITY, 1e12] {
        assert!(
            matches!(
                h.playback(0, PlaybackCommand::Seek { position_ms }),
                Err(PartyError::InvalidPosition { .. })
            ),
            "{position_ms}"
        );
    }
    for rate in [0.0, -1.0, 10.0, f64::NAN] {
        assert_eq!(
            h.playback(0, PlaybackCommand::Rate { rate }),
            Err(PartyError::InvalidRate)
        );
    }
    let long = format!("/{}", "x".repeat(3000));
    for url in [
        "",
        "javascript:alert(1)",
        "ftp://x/y",
        "/a b",
        long.as_str(),
    ] {
        assert_eq!(
            h.playback(0, PlaybackCommand::Load { url: url.into() }),
            Err(PartyError::InvalidUrl),
            "{url}"
        );
    }
    assert_eq!(*h.party.state(), before);
    assert!(h.party.poll_proposal().is_none());
}

#[test]
fn the_host_decides_who_controls_playback() {
    let mut h = Harness::new(3);
    h.load_and_play();
    assert_eq!(
        h.party
            .prepare_control(h.wall, &id(1), Control::Host, "x".into()),
        Err(PartyError::PermissionDenied("decide who controls playback"))
    );
    let p = h
        .party
        .prepare_control(h.wall, &id(0), Control::Host, "c".into())
        .unwrap();
    assert!(h.commit(p));
    assert!(matches!(
        h.playback(1, PlaybackCommand::Pause),
        Err(PartyError::PermissionDenied(_))
    ));
    h.playback(0, PlaybackCommand::Pause).unwrap();
    // Strangers are not members.
    assert_eq!(
        h.party
            .prepare_playback(h.wall, &id(9), PlaybackCommand::Play, None, "s".into()),
        Err(PartyError::NotMember)
    );
}

#[test]
fn the_host_role_passes_to_the_longest_present_member() {
    // Leaving on purpose: at once.
    let mut h = Harness::new(3);
    h.party.leave_local(h.now, h.wall, &id(0));
    let (p, cause) = h.proposal().expect("hand-off proposed");
    assert_eq!(cause, Cause::HandOff);
    assert!(h.commit(p));
    assert_eq!(h.party.state().host, id(1), "m1 joined before m2");

    // A dropped connection: the host keeps the role for the presence TTL (it may resume)...
    let mut h = Harness::new(3);
    h.party.disconnect_local(h.now, &id(0));
    h.advance(Duration::from_secs(10));
    assert!(h.proposal().is_none());
    // ...and resuming in time keeps it.
    h.party.join_local(presence(0, h.wall));
    h.advance(Duration::from_secs(10));
    assert!(h.proposal().is_none());
    assert_eq!(h.party.state().host, id(0));
    // Not resuming: the role passes once the presence lapses.
    h.party.disconnect_local(h.now, &id(0));
    h.advance(Duration::from_secs(16));
    let (p, cause) = h.proposal().expect("hand-off after the TTL");
    assert_eq!(cause, Cause::HandOff);
    assert!(h.commit(p));
    assert_eq!(h.party.state().host, id(1));
}

#[test]
fn a_new_replica_waits_a_ttl_before_deciding_the_host_is_gone() {
    // A node whose first member joins a party hosted elsewhere may not have heard the
    // host's presence yet; it must not depose it.
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let wall = UnixMillis(1_000_000);
    let state = SharedState::new(id(0), wall);
    let mut party = Party::new(PartyId("P".into()), PartyConfig::default(), state, 0, now);
    party.join_local(presence(5, wall));
    party.handle_timeout(now + Duration::from_secs(1), wall);
    assert!(party.poll_proposal().is_none());
    // The host's presence arrives (and keeps being refreshed): all is well.
    party.remote_presence(now + Duration::from_secs(2), presence(0, wall));
    party.remote_presence(now + Duration::from_secs(12), presence(0, wall));
    party.handle_timeout(now + Duration::from_secs(16), wall);
    assert!(party.poll_proposal().is_none());
    // The host's presence lapses: m5 takes over.
    party.handle_timeout(now + Duration::from_secs(28), wall);
    let p = party.poll_proposal().expect("hand-off");
    assert_eq!(p.state().host, id(5));
}

#[test]
fn playback_waits_for_a_buffering_member_and_resumes_when_it_is_ready() {
    let mut h = Harness::new(3);
    h.load_and_play();
    h.advance(Duration::from_secs(3));
    h.report(2, MemberStatus::Buffering);
    let (p, cause) = h.proposal().expect("the party waits");
    assert_eq!(cause, Cause::Wait);
    assert!(h.commit(p));
    assert!(h.party.state().timeline.paused);
    h.advance(Duration::from_secs(2));
    h.report(2, MemberStatus::Ready);
    let (p, cause) = h.proposal().expect("and resumes");
    assert_eq!(cause, Cause::Resume);
    assert!(h.commit(p));
    let t = &h.party.state().timeline;
    assert!(!t.paused);
    assert_eq!(
        t.anchor,
        h.wall.plus_ms(150),
        "resumed together, scheduled ahead"
    );
}

#[test]
fn the_group_wait_is_capped_and_the_laggard_is_not_waited_for_again() {
    let mut h = Harness::new(3);
    h.load_and_play();
    h.report(2, MemberStatus::Buffering);
    let (p, _) = h.proposal().unwrap();
    assert!(h.commit(p));
    h.advance(Duration::from_millis(4_750));
    assert!(h.proposal().is_none(), "still within the 5 s cap");
    h.advance(Duration::from_millis(500));
    let (p, cause) = h.proposal().expect("the cap resumes playback");
    assert_eq!(cause, Cause::Resume);
    assert!(h.commit(p));
    // Still buffering and reported again, with no ready in between: no second stall.
    h.report(2, MemberStatus::Ready);
    h.report(2, MemberStatus::Buffering);
    let (p, _) = h
        .proposal()
        .expect("ready in between: a new wait is allowed");
    assert!(h.commit(p));
    h.advance(Duration::from_secs(6));
    let (p, _) = h.proposal().unwrap();
    assert!(h.commit(p));
    h.report(2, MemberStatus::Buffering);
    assert!(
        h.proposal().is_none(),
        "a waived member does not stall the party twice"
    );
}

#[test]
fn a_user_command_during_a_wait_ends_it() {
    let mut h = Harness::new(3);
    h.load_and_play();
    h.report(2, MemberStatus::Buffering);
    let (p, _) = h.proposal().unwrap();
    assert!(h.commit(p));
    h.playback(
        1,
        PlaybackCommand::Seek {
            position_ms: 1_000.0,
        },
    )
    .unwrap();
    h.report(2, MemberStatus::Ready);
    assert!(h.proposal().is_none(), "the member who seeked is in charge");
    h.advance(Duration::from_secs(6));
    assert!(h.proposal().is_none());
}

#[test]
fn big_parties_never_wait() {
    let mut h = Harness::new(9);
    h.load_and_play();
    h.report(4, MemberStatus::Buffering);
    assert!(h.proposal().is_none());
}

#[test]
fn chat_is_bounded_in_size_and_rate() {
    let mut h = Harness::new(2);
    let max = h.party.config().max_chat_chars;
    let long = "x".repeat(max + 1);
    for text in ["", "   ", long.as_str()] {
        assert_eq!(
            h.party
                .prepare_chat(h.now, h.wall, &id(0), text.into(), "c".into()),
            Err(PartyError::ChatTooLong { max })
        );
    }
    let burst = h.party.config().chat_burst as usize;
    for i in 0..burst {
        h.party
            .prepare_chat(h.now, h.wall, &id(0), format!("msg {i}"), format!("c{i}"))
            .unwrap();
    }
    let err = h
        .party
        .prepare_chat(h.now, h.wall, &id(0), "one more".into(), "late".into())
        .unwrap_err();
    assert!(matches!(err, PartyError::RateLimited { retry_after_ms } if retry_after_ms > 0));
    // Reactions share the budget; another member has its own.
    assert!(
        h.party
            .prepare_reaction(h.now, h.wall, &id(0), "🎉".into(), "r".into())
            .is_err()
    );
    h.party
        .prepare_reaction(h.now, h.wall, &id(1), "🎉".into(), "r".into())
        .unwrap();
    assert!(matches!(
        h.party
            .prepare_reaction(h.now, h.wall, &id(1), "a b".into(), "r2".into()),
        Err(PartyError::InvalidReaction { .. })
    ));
    // The bucket refills.
    h.advance(Duration::from_secs(1));
    h.party
        .prepare_chat(h.now, h.wall, &id(0), "later".into(), "c-late".into())
        .unwrap();
}

#[test]
fn the_spread_is_the_gap_between_the_furthest_apart_devices() {
    let mut h = Harness::new(3);
    h.load_and_play();
    h.advance(Duration::from_secs(5));
    let version = h.party.state().version;
    let expected = h.party.state().timeline.position_at(h.wall);
    for (member, off) in [(0, 4.0), (1, -6.0), (2, 1.0)] {
        let report = SyncReport {
            position_ms: Some(expected + off),
            at: Some(h.wall),
            version: Some(version),
            error_ms: Some(2.0),
            rtt_ms: Some(4.0),
            ..SyncReport::default()
        };
        h.party.report(h.now, h.wall, &id(member), report).unwrap();
    }
    let spread = h.party.spread();
    assert_eq!(spread.max_ms, 10.0);
    assert!(spread.samples >= 1);
    // A report made under an older state says nothing about sync.
    let report = SyncReport {
        position_ms: Some(99_999.0),
        at: Some(h.wall),
        version: Some(version - 1),
        ..SyncReport::default()
    };
    h.party.report(h.now, h.wall, &id(2), report).unwrap();
    assert_eq!(h.party.spread().max_ms, 10.0);
    let members = h.party.snapshot().members;
    assert_eq!(members.iter().filter(|m| m.host).count(), 1);
    assert_eq!(members.len(), 3);
    // Reports must be numbers.
    let report = SyncReport {
        rtt_ms: Some(f64::NAN),
        ..SyncReport::default()
    };
    assert_eq!(
        h.party.report(h.now, h.wall, &id(2), report),
        Err(PartyError::InvalidReport)
    );
}
