//! The semantics every [`QueueStore`] keeps, checked on the memory store and on a real
//! `redis-server` (started on a free loopback port).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conformance::TestRedis;
use super::queue_redis::RedisQueueStore;
use super::queue_store::{
    Created, Leave, MemoryQueueStore, QueueStore, TicketRecord, TicketState, Transition,
};

/// A waiting ticket of `kiosk` created at `created_ms`.
pub(crate) fn ticket(id: &str, kiosk: &str, created_ms: u64) -> TicketRecord {
    TicketRecord {
        id: id.into(),
        kiosk: kiosk.into(),
        kiosk_key: format!("key-{kiosk}"),
        site: "Pharmacie du Centre".into(),
        reason: "fièvre, toux".into(),
        specialty: String::new(),
        priority: false,
        subject: "Patient/123".into(),
        created_ms,
        arrival_position: 1,
        state: TicketState::Waiting,
        ended_ms: 0,
        room: String::new(),
        doctor: String::new(),
        flagged: false,
    }
}

fn take(room: &str, doctor: &str) -> Leave {
    Leave {
        state: TicketState::Taken,
        at_ms: 9_000,
        room: room.into(),
        doctor: doctor.into(),
    }
}

async fn suite(store: Arc<dyn QueueStore>) {
    let life = Duration::from_secs(60);
    let keep = Duration::from_secs(60);
    let t1 = ticket("t1", "kiosk-1", 1_000);
    assert_eq!(store.create(&t1, 2, 100, life).await.unwrap(), Created::New);
    // One waiting ticket per kiosk: the second is answered with the first.
    let again = ticket("t1b", "kiosk-1", 1_500);
    assert_eq!(
        store.create(&again, 2, 100, life).await.unwrap(),
        Created::Exists(Box::new(t1.clone()))
    );
    assert_eq!(store.get("t1b").await.unwrap(), None);
    let t2 = ticket("t2", "kiosk-2", 2_000);
    assert_eq!(store.create(&t2, 2, 100, life).await.unwrap(), Created::New);
    // Full at max_waiting.
    let t3 = ticket("t3", "kiosk-3", 3_000);
    assert_eq!(
        store.create(&t3, 2, 100, life).await.unwrap(),
        Created::Full
    );
    let mut ids: Vec<String> = store
        .waiting()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["t1", "t2"]);

    // Flagged once.
    assert!(store.flag("t2").await.unwrap());
    assert!(!store.flag("t2").await.unwrap());
    assert!(store.get("t2").await.unwrap().unwrap().flagged);

    // A take moves it out once; a second take (or a cancel) sees it taken.
    let taken = match store.transition("t1", &take("r-1", "dr-1"), keep).await {
        Ok(Transition::Done(t)) => t,
        other => panic!("first take: {other:?}"),
    };
    assert_eq!(
        (taken.state, taken.room.as_str(), taken.doctor.as_str()),
        (TicketState::Taken, "r-1", "dr-1")
    );
    match store.transition("t1", &take("r-2", "dr-2"), keep).await {
        Ok(Transition::NotWaiting(t)) => assert_eq!(t.room, "r-1"),
        other => panic!("second take: {other:?}"),
    }
    assert_eq!(
        store
            .transition("nope", &take("r", "d"), keep)
            .await
            .unwrap(),
        Transition::Unknown
    );
    assert!(
        !store.flag("t1").await.unwrap(),
        "only waiting tickets are flagged"
    );
    // The kiosk whose ticket was taken may queue again; a slot freed up.
    assert_eq!(
        store
            .create(&ticket("t4", "kiosk-1", 4_000), 2, 100, life)
            .await
            .unwrap(),
        Created::New
    );
    // The kiosk's previous (taken) ticket is replaced by the new one.
    assert_eq!(store.get("t1").await.unwrap(), None);
    let cancel = Leave {
        state: TicketState::Cancelled,
        at_ms: 5_000,
        room: String::new(),
        doctor: String::new(),
    };
    assert!(matches!(
        store.transition("t4", &cancel, keep).await.unwrap(),
        Transition::Done(_)
    ));
    assert_eq!(
        store.get("t4").await.unwrap().unwrap().state,
        TicketState::Cancelled
    );
    let ids: Vec<String> = store
        .waiting()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["t2"]);

    // A record is forgotten after its keep time.
    assert!(matches!(
        store
            .transition("t2", &cancel, Duration::from_millis(200))
            .await
            .unwrap(),
        Transition::Done(_)
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get("t2").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the record was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // At most max_records records (t4, cancelled, is one).
    assert_eq!(
        store
            .create(&ticket("t5", "kiosk-5", 6_000), 2, 1, life)
            .await
            .unwrap(),
        Created::TooManyRecords
    );
    assert_eq!(store.get("t5").await.unwrap(), None);
    // Queuing again replaces the kiosk's cancelled ticket: records do not pile up.
    assert_eq!(
        store
            .create(&ticket("t6", "kiosk-1", 6_000), 2, 1, life)
            .await
            .unwrap(),
        Created::New
    );
    assert_eq!(store.get("t4").await.unwrap(), None);

    // Handling times: newest first, a window.
    for ms in [10, 20, 30] {
        store.push_handling(ms, 2).await.unwrap();
    }
    assert_eq!(store.handling().await.unwrap(), [30, 20]);

    // Presence: fields merge; records expire.
    store
        .touch_kiosk("k1", &[("identity", "kiosk-1".into())], life)
        .await
        .unwrap();
    store
        .touch_kiosk("k1", &[("seen_ms", "42".into())], life)
        .await
        .unwrap();
    let k = store.kiosks().await.unwrap();
    assert_eq!(k.len(), 1);
    assert_eq!(
        (k[0]["identity"].as_str(), k[0]["seen_ms"].as_str()),
        ("kiosk-1", "42")
    );
    store
        .touch_kiosk(
            "k2",
            &[("identity", "kiosk-2".into())],
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.kiosks().await.unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "the presence record was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A room's subject: found by room, forgotten after its time.
    assert_eq!(store.room_subject("q-room").await.unwrap(), None);
    store
        .set_room_subject("q-room", "Patient/7", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        store.room_subject("q-room").await.unwrap().as_deref(),
        Some("Patient/7")
    );
    assert_eq!(store.room_subject("q-other").await.unwrap(), None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.room_subject("q-room").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the room's subject was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn memory_queue_store_keeps_the_semantics() {
    suite(Arc::new(MemoryQueueStore::new())).await;
}

#[tokio::test]
async fn redis_queue_store_keeps_the_semantics() {
    let redis = TestRedis::start();
    let store = Arc::new(RedisQueueStore::new(&redis.url()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.waiting().await.is_err() {
        assert!(Instant::now() < deadline, "redis-server did not answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    suite(Arc::clone(&store) as Arc<dyn QueueStore>).await;
    // Concurrent takes of one ticket: exactly one wins.
    let t = ticket("race", "kiosk-9", 1);
    assert_eq!(
        store
            .create(&t, 10, 100, Duration::from_secs(60))
            .await
            .unwrap(),
        Created::New
    );
    let takes = (0..8).map(|i| {
        let s = Arc::clone(&store);
        async move {
            s.transition(
                "race",
                &take(&format!("r-{i}"), &format!("dr-{i}")),
                Duration::from_secs(60),
            )
            .await
            .unwrap()
        }
    });
    let outcomes = futures_util::future::join_all(takes).await;
    let done = outcomes
        .iter()
        .filter(|o| matches!(o, Transition::Done(_)))
        .count();
    assert_eq!(done, 1, "{outcomes:?}");
}
