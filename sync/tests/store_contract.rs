//! One contract, two stores: every test here runs over `MemoryStore` and over `RedisStore`
//! against a real Redis server (`MARQUEE_TEST_REDIS_URL`, default redis://127.0.0.1:6379;
//! `scripts/test.sh` starts one when none is reachable). No Redis means these tests fail:
//! they are never skipped.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sync::{
    Cause, Committed, EventBody, Feed, MemberId, MemberRecord, MemberStatus, MemoryStore, NewEvent,
    PartyId, Presence, RedisStore, SharedState, Store, StoreConfig, StoreError, Stored, UnixMillis,
};
use tokio::sync::mpsc::UnboundedReceiver;

const HISTORY: usize = 50;

fn config() -> StoreConfig {
    StoreConfig {
        history: HISTORY,
        presence_ttl: Duration::from_secs(1),
        ..StoreConfig::default()
    }
}

fn redis_url() -> String {
    std::env::var("MARQUEE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new(config()))
}

async fn redis() -> Arc<dyn Store> {
    let store = RedisStore::connect(&redis_url(), config()).await.unwrap();
    // Fail loudly, never skip: the contract must hold against a real server.
    let probe = PartyId(format!("PROBE{}", rand::rng().random::<u32>()));
    store
        .load(&probe)
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required: {e}", redis_url()));
    Arc::new(store)
}

/// A fresh party code, so tests sharing one Redis never meet.
fn party() -> PartyId {
    PartyId(format!("T{:08X}", rand::rng().random::<u32>()))
}

fn host() -> MemberId {
    MemberId("host".into())
}

fn stored() -> Stored {
    Stored {
        state: SharedState::new(host(), UnixMillis(1_000)),
        last_seq: 0,
    }
}

fn chat(from: &str, op: &str, text: &str) -> NewEvent {
    NewEvent {
        at: UnixMillis(2_000),
        from: MemberId(from.into()),
        name: from.into(),
        op_id: op.into(),
        body: EventBody::Chat { text: text.into() },
    }
}

/// A state change from `base` to `base.version + 1`, paused at `position`.
fn change(base: &SharedState, op: &str, position: f64) -> NewEvent {
    let state = SharedState {
        version: base.version + 1,
        timeline: base.timeline.seek(UnixMillis(3_000), position),
        ..base.clone()
    };
    NewEvent {
        at: UnixMillis(3_000),
        from: host(),
        name: "host".into(),
        op_id: op.into(),
        body: EventBody::State {
            state,
            cause: Cause::Seek,
        },
    }
}

fn presence(member: &str) -> Presence {
    Presence {
        member_id: MemberId(member.into()),
        name: member.into(),
        joined_at: UnixMillis(1_000),
        status: MemberStatus::Ready,
        typing: false,
        online: true,
        camera: false,
        rtt_ms: Some(12.0),
        deviation_ms: None,
        error_ms: None,
        reported_at: UnixMillis(1_000),
    }
}

/// The next feed item about `party` (other items are skipped), within a generous bound.
async fn next(feed: &mut UnboundedReceiver<Feed>, party: &PartyId) -> Feed {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), feed.recv())
            .await
            .expect("the feed delivers within 5 s")
            .expect("feed open");
        match &item {
            Feed::Event(p, _) | Feed::Presence(p, _) | Feed::Gone(p, _) if p == party => {
                return item;
            }
            _ => {}
        }
    }
}

async fn create_is_once_and_load_reads_back(store: Arc<dyn Store>) {
    let p = party();
    assert_eq!(store.load(&p).await.unwrap(), None);
    assert!(store.create(&p, &stored()).await.unwrap());
    let mut other = stored();
    other.state.host = MemberId("intruder".into());
    assert!(!store.create(&p, &other).await.unwrap(), "exists already");
    assert_eq!(store.load(&p).await.unwrap(), Some(stored()));
}

async fn commits_compare_and_set_on_the_version(store: Arc<dyn Store>) {
    let p = party();
    store.create(&p, &stored()).await.unwrap();
    let base = stored().state;
    let first = change(&base, "a", 10.0);
    assert_eq!(
        store.commit(&p, 1, &first).await.unwrap(),
        Committed::Applied(1)
    );
    let second = change(&base, "b", 20.0);
    assert_eq!(
        store.commit(&p, 1, &second).await,
        Err(StoreError::Conflict { current: 2 })
    );
    let now = store.load(&p).await.unwrap().unwrap();
    assert_eq!(now.state.version, 2);
    assert_eq!(now.state.timeline.position_ms, 10.0);
    assert_eq!(now.last_seq, 1);
    // Chat takes the next number of the same log.
    assert_eq!(
        store.append(&p, &chat("ann", "c1", "hi")).await.unwrap(),
        Committed::Applied(2)
    );
    // Unknown parties are refused, not created.
    let missing = party();
    assert_eq!(
        store.append(&missing, &chat("ann", "c1", "hi")).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.commit(&missing, 1, &first).await,
        Err(StoreError::NotFound)
    );
}

async fn of_concurrent_commits_on_one_version_exactly_one_wins(store: Arc<dyn Store>) {
    let p = party();
    store.create(&p, &stored()).await.unwrap();
    let base = stored().state;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let p = p.clone();
            let event = change(&base, &format!("op{i}"), i as f64);
            tokio::spawn(async move { store.commit(&p, 1, &event).await })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Committed::Applied(1)) => applied += 1,
            Err(StoreError::Conflict { current: 2 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(store.events_after(&p, 0).await.unwrap().len(), 1);
}

async fn a_retried_op_is_applied_once(store: Arc<dyn Store>) {
    let p = party();
    store.create(&p, &stored()).await.unwrap();
    let message = chat("ann", "op-7", "once");
    assert_eq!(
        store.append(&p, &message).await.unwrap(),
        Committed::Applied(1)
    );
    assert_eq!(
        store.append(&p, &message).await.unwrap(),
        Committed::Duplicate(1)
    );
    // The same op id from another member is another op.
    assert_eq!(
        store
            .append(&p, &chat("bob", "op-7", "mine"))
            .await
            .unwrap(),
        Committed::Applied(2)
    );
    // A retried state change is answered as done even though its version is now stale.
    let event = change(&stored().state, "seek-1", 5.0);
    assert_eq!(store.commit(&p, 1, &event).await, Ok(Committed::Applied(3)));
    assert_eq!(
        store.commit(&p, 1, &event).await,
        Ok(Committed::Duplicate(3))
    );
    let texts: Vec<u64> = store
        .events_after(&p, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(texts, vec![1, 2, 3]);
}

async fn the_log_is_ordered_gap_free_and_bounded(store: Arc<dyn Store>) {
    let p = party();
    store.create(&p, &stored()).await.unwrap();
    let total = HISTORY as u64 * 3;
    for i in 1..=total {
        let c = store
            .append(&p, &chat("ann", &format!("m{i}"), &format!("message {i}")))
            .await
            .unwrap();
        assert_eq!(c, Committed::Applied(i));
    }
    let kept = store.events_after(&p, 0).await.unwrap();
    assert!(kept.len() >= HISTORY, "at least the history is kept");
    assert!(
        kept.len() < total as usize,
        "old entries are trimmed ({} kept)",
        kept.len()
    );
    assert_eq!(kept.last().unwrap().seq, total);
    for pair in kept.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "contiguous");
    }
    // Resuming after a seq gets exactly what follows it.
    let after: Vec<u64> = store
        .events_after(&p, total - 3)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(after, vec![total - 2, total - 1, total]);
    assert!(store.events_after(&p, total).await.unwrap().is_empty());
    let recent = store.recent(&p, 5).await.unwrap();
    let seqs: Vec<u64> = recent.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (total - 4..=total).collect::<Vec<_>>());
    assert_eq!(
        recent.last().unwrap().event.body,
        EventBody::Chat {
            text: format!("message {total}")
        }
    );
}

async fn the_feed_brings_events_and_presence_of_watched_parties(store: Arc<dyn Store>) {
    let mut feed = store.take_feed().expect("first taker gets the feed");
    assert!(store.take_feed().is_none(), "one feed per store");
    let p = party();
    store.create(&p, &stored()).await.unwrap();
    // Written before watching, after the watcher's load: still fed (from the cursor).
    store.append(&p, &chat("ann", "c1", "one")).await.unwrap();
    store.watch(&p, 0);
    store.append(&p, &chat("ann", "c2", "two")).await.unwrap();
    store
        .commit(&p, 1, &change(&stored().state, "s1", 7.0))
        .await
        .unwrap();
    for expected in 1..=3u64 {
        match next(&mut feed, &p).await {
            Feed::Event(_, e) => assert_eq!(e.seq, expected),
            other => panic!("expected event {expected}, got {other:?}"),
        }
    }
    store.put_presence(&p, &presence("ann")).await.unwrap();
    match next(&mut feed, &p).await {
        Feed::Presence(_, got) => assert_eq!(got, presence("ann")),
        other => panic!("expected presence, got {other:?}"),
    }
    store
        .remove_presence(&p, &MemberId("ann".into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut feed, &p).await,
        Feed::Gone(p.clone(), MemberId("ann".into()))
    );
    // Unwatched: nothing more arrives about it. The feed reads one batch at a time, so once
    // an event of a party watched only after the unwatch has come, no read of `p` is left
    // in flight (a fixed sleep for that would race a loaded machine).
    store.unwatch(&p);
    let q = party();
    store.create(&q, &stored()).await.unwrap();
    store.watch(&q, 0);
    store
        .append(&q, &chat("bob", "q1", "barrier"))
        .await
        .unwrap();
    assert!(matches!(next(&mut feed, &q).await, Feed::Event(_, e) if e.seq == 1));
    store
        .append(&p, &chat("ann", "c3", "unheard"))
        .await
        .unwrap();
    store.append(&q, &chat("bob", "q2", "after")).await.unwrap();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), feed.recv())
            .await
            .expect("the feed delivers within 5 s")
            .expect("feed open");
        match item {
            Feed::Event(party, e) if party == q && e.seq == 2 => break,
            Feed::Event(party, _) | Feed::Presence(party, _) | Feed::Gone(party, _)
                if party == p =>
            {
                panic!("unwatched party fed");
            }
            _ => {}
        }
    }
}

/// The names of the members present in `party`.
async fn present(store: &dyn Store, party: &PartyId) -> Vec<String> {
    let presence = store.presence(party).await.unwrap();
    presence.into_iter().map(|p| p.name).collect()
}

#[allow(clippy::disallowed_methods)] // bounds a wait on a real Redis server's TTL
async fn presence_lapses_after_its_ttl_and_members_are_remembered(store: Arc<dyn Store>) {
    let p = party();
    store.create(&p, &stored()).await.unwrap();
    store.put_presence(&p, &presence("ann")).await.unwrap();
    store.put_presence(&p, &presence("bob")).await.unwrap();
    assert_eq!(present(&*store, &p).await, vec!["ann", "bob"]);
    // The TTL is 1 s: bob keeps refreshing, ann does not. (Polled rather than timed: a
    // loaded machine may oversleep, so bob refreshes every 200 ms and must never lapse.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.put_presence(&p, &presence("bob")).await.unwrap();
        let names = present(&*store, &p).await;
        assert!(names.contains(&"bob".to_owned()), "{names:?}");
        if names == vec!["bob"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ann's presence never lapsed: {names:?}"
        );
    }

    let record = MemberRecord {
        member_id: MemberId("ann".into()),
        key: "secret".into(),
        joined_at: UnixMillis(1_000),
    };
    store.put_member(&p, &record).await.unwrap();
    assert_eq!(
        store.member(&p, &record.member_id).await.unwrap(),
        Some(record)
    );
    assert_eq!(
        store.member(&p, &MemberId("nobody".into())).await.unwrap(),
        None
    );
}

async fn a_recreated_party_continues_its_sequence(store: Arc<dyn Store>) {
    // What a node does when Redis lost its data: it restores the party from its replica;
    // sequence numbers continue, so resuming clients never see a number twice.
    let p = party();
    let restored = Stored {
        state: SharedState {
            version: 9,
            ..stored().state
        },
        last_seq: 41,
    };
    assert!(store.create(&p, &restored).await.unwrap());
    assert_eq!(
        store.append(&p, &chat("ann", "c", "after")).await.unwrap(),
        Committed::Applied(42)
    );
    assert_eq!(store.load(&p).await.unwrap().unwrap().state.version, 9);
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::memory().await).await
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::redis().await).await
                }
            )*
        }
    };
}

contract!(
    create_is_once_and_load_reads_back,
    commits_compare_and_set_on_the_version,
    of_concurrent_commits_on_one_version_exactly_one_wins,
    a_retried_op_is_applied_once,
    the_log_is_ordered_gap_free_and_bounded,
    the_feed_brings_events_and_presence_of_watched_parties,
    presence_lapses_after_its_ttl_and_members_are_remembered,
    a_recreated_party_continues_its_sequence,
);
