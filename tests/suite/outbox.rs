//! The outbox relay against a real Postgres, a real HTTP receiver, a real
//! nats-server (JetStream) and a real file: delivery, signatures, per-key
//! order, backoff and dead letters, expired leases, late commits, two relays
//! at once, and the `payrail outbox` commands.

use crate::common;

use crate::common::receiver::webhook;
use common::TestDb;
use common::receiver::{Receiver, TestStream};
use payrail::api::metrics::Metrics;
use payrail::config::{SinkConfig, SinkKind};
use payrail::outbox::sinks::Sink;
use payrail::outbox::{self, Relay, RelaySettings};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn fast() -> RelaySettings {
    RelaySettings {
        batch_size: 50,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        concurrency: 8,
    }
}

fn relay(db: &TestDb, sinks: &[SinkConfig], settings: RelaySettings) -> Relay {
    Relay::new(
        db.pool.clone(),
        sinks.iter().map(|s| Sink::new(s).unwrap()).collect(),
        settings,
        Arc::new(Metrics::default()),
    )
}

/// Inserts an event directly (as a payment transaction would).
async fn insert_event(c: &tokio_postgres::Client, key: &str, topic: &str, n: i64) -> String {
    let id = uuid::Uuid::new_v4();
    c.execute(
        "insert into payrail.outbox (event_id, tenant, topic, key, payload)
         values ($1, 'default', $2, $3, $4)",
        &[&id, &topic, &key, &serde_json::json!({ "n": n })],
    )
    .await
    .unwrap();
    id.to_string()
}

/// Runs rounds until `left` events are pending, at most `max_rounds`.
async fn drain_to(r: &Relay, db: &TestDb, max_rounds: usize, left: i64) {
    for _ in 0..max_rounds {
        r.round().await.unwrap();
        if state_counts(db).await.get("pending").copied().unwrap_or(0) == left {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("outbox not drained: {:?}", state_counts(db).await);
}

/// Runs rounds until nothing is pending.
async fn drain(r: &Relay, db: &TestDb, max_rounds: usize) {
    drain_to(r, db, max_rounds, 0).await
}

async fn state_counts(db: &TestDb) -> HashMap<String, i64> {
    let c = db.pool.get().await.unwrap();
    c.query(
        "select state, count(*) from payrail.outbox group by state",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_reach_webhook_nats_and_file_once_each_in_key_order() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    for i in 0..20 {
        let amount = if i == 7 { 500_000 } else { 1000 + i }; // one declined (limits)
        p.pay(
            "default",
            &format!("k{i}"),
            &common::transfer("alice", "bob", amount),
        )
        .await
        .unwrap();
    }
    // three ordered events sharing a key, and one for another key
    let c = db.pool.get().await.unwrap();
    let mut chain = Vec::new();
    for n in 0..3 {
        chain.push(insert_event(&c, "order-1", "order.step", n).await);
    }
    insert_event(&c, "order-2", "other.thing", 9).await;

    let rx = Receiver::start().await;
    let stream = TestStream::create("ob").await;
    let dir = std::env::temp_dir().join(format!("payrail-outbox-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let nats = SinkConfig {
        name: "nats".into(),
        kind: SinkKind::Nats,
        topics: vec!["payment.*".into(), "order.*".into()],
        url: Some(common::receiver::nats_url()),
        subject_prefix: Some(stream.prefix.clone()),
        ..webhook("")
    };
    let filesink = SinkConfig {
        name: "file".into(),
        kind: SinkKind::File,
        topics: vec!["payment.approved".into()],
        path: Some(file.clone()),
        ..webhook("")
    };
    let r = relay(&db, &[webhook(&rx.url), nats, filesink], fast());
    drain(&r, &db, 50).await;

    let outbox: Vec<(String, String, String)> = c
        .query(
            "select event_id::text, topic, key from payrail.outbox order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // 20 payment events, the fee plugin's event per approved payment, 4 more
    let n = outbox.len();
    assert!(n > 24, "{n}");
    assert_eq!(state_counts(&db).await.get("delivered"), Some(&(n as i64)));
    // webhook: every event once, signed (bad signatures are refused)
    let got = rx.seen.counts();
    assert_eq!(got.len(), n, "{got:?}");
    assert!(got.values().all(|&n| n == 1), "{got:?}");
    assert_eq!(rx.seen.bad_signatures.load(Ordering::Relaxed), 0);
    // per-key order on the webhook
    let order: Vec<String> = rx
        .seen
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.key == "order-1")
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(order, chain);
    // NATS: the matching topics only, msg id = event id, payload intact
    let msgs = stream.messages().await;
    let want: HashSet<&str> = outbox
        .iter()
        .filter(|(_, t, _)| t.starts_with("payment.") || t.starts_with("order."))
        .map(|(e, _, _)| e.as_str())
        .collect();
    assert_eq!(msgs.len(), want.len());
    for (id, env) in &msgs {
        assert_eq!(id, &env.event_id);
        assert!(want.contains(id.as_str()));
    }
    let nats_chain: Vec<&str> = msgs
        .iter()
        .filter(|(_, e)| e.key == "order-1")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        nats_chain,
        chain.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // file: approved payments only, one JSON line each
    let lines = std::fs::read_to_string(&file).unwrap();
    let approved = outbox
        .iter()
        .filter(|(_, t, _)| t == "payment.approved")
        .count();
    assert_eq!(approved, 19);
    assert_eq!(lines.lines().count(), approved);
    for l in lines.lines() {
        let e: payrail::outbox::sinks::Envelope = serde_json::from_str(l).unwrap();
        assert_eq!(e.topic, "payment.approved");
        assert_eq!(e.payload["status"], "approved");
    }
    // a second pass finds nothing to do
    assert_eq!(r.round().await.unwrap().claimed, 0);
    stream.delete().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_back_off_dead_letter_block_the_key_and_requeue() {
    let db = TestDb::new().await;
    let c = db.pool.get().await.unwrap();
    let first = insert_event(&c, "k", "t.a", 1).await;
    let second = insert_event(&c, "k", "t.b", 2).await;
    let other = insert_event(&c, "k2", "t.c", 3).await;
    let rx = Receiver::start().await;
    rx.seen.fail_per_mille.store(1000, Ordering::Relaxed);
    let r = relay(&db, &[webhook(&rx.url)], fast());

    // the first event is tried max_attempts times with backoff, then dead
    let started = std::time::Instant::now();
    for _ in 0..200 {
        r.round().await.unwrap();
        if state_counts(&db).await.get("dead").copied().unwrap_or(0) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rows: HashMap<String, (String, i32, Option<String>)> = c
        .query(
            "select event_id::text, state, attempts, last_error from payrail.outbox",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let (state, attempts, err) = &rows[&first];
    assert_eq!((state.as_str(), *attempts), ("dead", 3));
    assert!(err.as_deref().unwrap().contains("HTTP 500"), "{err:?}");
    // backoff: attempts 2 and 3 waited at least base*1*0.5 + base*2*0.5
    assert!(started.elapsed() >= Duration::from_millis(15));
    // the later event of the same key was never tried: order is kept
    assert_eq!(rows[&second].0, "pending");
    assert_eq!(rows[&second].1, 0);
    // the other key is independent (and dead too)
    assert_eq!(rows[&other].0, "dead");
    assert_eq!(rx.seen.injected_failures.load(Ordering::Relaxed), 6);

    // the CLI lists and requeues them
    let bin = env!("CARGO_BIN_EXE_payrail");
    let out = std::process::Command::new(bin)
        .args(["outbox", "dead-letters"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2);
    // newest first
    assert_eq!(listed[1]["event_id"], first.as_str());
    assert_eq!(listed[1]["attempts"], 3);
    let other_id = listed[0]["id"].as_i64().unwrap().to_string();
    let out = std::process::Command::new(bin)
        .args(["outbox", "retry", &other_id])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("requeued 1 event"));
    let out = std::process::Command::new(bin)
        .args(["outbox", "retry"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "retry needs ids or --all");

    rx.seen.fail_per_mille.store(0, Ordering::Relaxed);
    drain_to(&r, &db, 20, 1).await;
    assert_eq!(state_counts(&db).await.get("dead"), Some(&1));
    assert_eq!(rx.seen.counts().keys().collect::<Vec<_>>(), vec![&other]);
    assert_eq!(
        outbox::retry_dead(&db.pool.get().await.unwrap(), None, None)
            .await
            .unwrap(),
        1,
        "--all requeues the rest"
    );
    drain(&r, &db, 20).await;
    let order: Vec<String> = rx
        .seen
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(order, vec![other, first, second]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_leases_are_retaken_and_late_commits_are_not_skipped() {
    let db = TestDb::new().await;
    let c = db.pool.get().await.unwrap();
    let orphan = insert_event(&c, "a", "t", 1).await;
    // a host claimed it and died: its lease runs out in 1 s
    c.execute(
        "update payrail.outbox set lease_owner = 'dead-host', attempts = 1,
           lease_until = now() + interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    // a transaction that started earlier commits later (lower id)
    let mut late_client = db.pool.get().await.unwrap();
    let late_tx = late_client.transaction().await.unwrap();
    let late_id = uuid::Uuid::new_v4();
    late_tx
        .execute(
            "insert into payrail.outbox (event_id, tenant, topic, key, payload)
             values ($1, 'default', 't', 'late', '{}')",
            &[&late_id],
        )
        .await
        .unwrap();
    let early = insert_event(&c, "b", "t", 2).await;
    let rx = Receiver::start().await;
    let r = relay(&db, &[webhook(&rx.url)], fast());
    let s = r.round().await.unwrap();
    assert_eq!(s.claimed, 1, "only the committed, unleased event");
    assert_eq!(
        rx.seen.counts().keys().cloned().collect::<Vec<_>>(),
        vec![early.clone()]
    );
    late_tx.commit().await.unwrap();
    assert_eq!(r.round().await.unwrap().delivered, 1, "the late commit");
    assert!(rx.seen.counts().contains_key(&late_id.to_string()));
    assert!(!rx.seen.counts().contains_key(&orphan));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(r.round().await.unwrap().delivered, 1, "the expired lease");
    assert!(rx.seen.counts().contains_key(&orphan));
    let attempts: i32 = c
        .query_one(
            "select attempts from payrail.outbox where event_id = $1::text::uuid",
            &[&orphan],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_share_the_work_without_duplicates() {
    let db = TestDb::new().await;
    let c = db.pool.get().await.unwrap();
    let mut all = HashSet::new();
    for i in 0..300 {
        all.insert(insert_event(&c, &format!("k{}", i % 40), "t.x", i).await);
    }
    let rx = Receiver::start().await;
    let settings = RelaySettings {
        batch_size: 7,
        ..fast()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(relay(&db, &[webhook(&rx.url)], settings).run(stop_rx.clone()));
    let b = tokio::spawn(relay(&db, &[webhook(&rx.url)], settings).run(stop_rx));
    for _ in 0..500 {
        if state_counts(&db).await.get("delivered").copied() == Some(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    a.await.unwrap();
    b.await.unwrap();
    let counts = rx.seen.counts();
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), all);
    assert!(counts.values().all(|&n| n == 1), "a lease was shared");
    // per key, delivery order is insertion order
    let mut last: HashMap<String, i64> = HashMap::new();
    for e in rx.seen.deliveries.lock().unwrap().iter() {
        let prev = last.insert(e.key.clone(), e.sequence);
        assert!(
            prev.is_none_or(|p| p < e.sequence),
            "key {} out of order",
            e.key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payrail_relay_runs_alone_and_stops_on_sigterm() {
    use std::process::{Command, Stdio};
    let db = TestDb::new().await;
    let c = db.pool.get().await.unwrap();
    let dir = std::env::temp_dir().join(format!("payrail-relay-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out.jsonl");
    let cfg = dir.join("payrail.toml");
    std::fs::write(
        &cfg,
        format!(
            "[outbox]\npoll_interval_ms = 20\n[[sinks]]\nname = \"f\"\ntype = \"file\"\ntopics = [\"*\"]\npath = {:?}\n",
            file.display().to_string()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_payrail");
    // no sinks: refused with a clear error
    let out = Command::new(bin)
        .arg("relay")
        .env("DATABASE_URL", &db.url)
        .env_remove("PAYRAIL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [[sinks]]"));
    let mut child = Command::new(bin)
        .args(["relay", "--config"])
        .arg(&cfg)
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let id = insert_event(&c, "k", "t.x", 1).await;
    let mut lines = String::new();
    for _ in 0..200 {
        lines = std::fs::read_to_string(&file).unwrap_or_default();
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lines.contains(&id), "{lines:?}");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(state_counts(&db).await.get("delivered"), Some(&1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The test setup starts its own JetStream server when none answers: prove
/// the server it starts works (publish with a msg id, read it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_setup_can_start_its_own_nats_server() {
    let url = common::receiver::start_local_nats();
    let client = async_nats::connect(&url)
        .await
        .expect("connect to the started nats-server");
    let js = async_nats::jetstream::new(client);
    let name = format!("PAYRAIL_SELFSTART_{:08x}", rand::random::<u32>());
    let subject = format!("selfstart.{name}");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await
    .expect("JetStream is enabled on the started server");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "m1");
    for _ in 0..2 {
        js.publish_with_headers(subject.clone(), headers.clone(), "x".into())
            .await
            .unwrap()
            .await
            .expect("ack");
    }
    let mut stream = js.get_stream(&name).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "deduplicated by msg id"
    );
    js.delete_stream(&name).await.unwrap();
}
