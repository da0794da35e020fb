//! Two-phase payments against a real Postgres: authorize holds funds
//! (available drops, balance does not), full and partial capture (with the
//! fee plugin charging at capture), void, expiry through the outbox relay,
//! refused transitions that write nothing, idempotent replays, a
//! capture/void race, and the HTTP routes.

use crate::common;

use common::{TestDb, transfer};
use payrail::api::metrics::Metrics;
use payrail::config::{SinkConfig, SinkKind};
use payrail::error::Error;
use payrail::model::{CaptureMode, DEFAULT_TENANT, PaymentRequest, PaymentStatus};
use payrail::outbox::sinks::Sink;
use payrail::outbox::{Relay, RelaySettings};
use std::sync::Arc;
use std::time::Duration;

fn authorize(from: &str, to: &str, amount: i64) -> PaymentRequest {
    PaymentRequest {
        capture: CaptureMode::Manual,
        ..transfer(from, to, amount)
    }
}

/// (balance, held) of an account.
async fn funds(db: &TestDb, id: &str) -> (i64, i64) {
    let c = db.pool.get().await.unwrap();
    let r = c
        .query_one(
            "select balance, held from payrail.account_balances where tenant = $1 and id = $2",
            &[&DEFAULT_TENANT, &id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// (hold state, captured amount) of a payment.
async fn hold(db: &TestDb, payment: &str) -> (String, Option<i64>) {
    let c = db.pool.get().await.unwrap();
    let id: uuid::Uuid = payment.parse().unwrap();
    let r = c
        .query_one(
            "select state, captured_amount from payrail.holds where payment_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn topics(db: &TestDb, key: &str) -> Vec<String> {
    let c = db.pool.get().await.unwrap();
    c.query(
        "select topic from payrail.outbox where key = $1 order by id",
        &[&key],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Everything a refused transition must not change: row counts of every
/// table a payment writes, plus holds and every account's funds.
async fn snapshot(db: &TestDb) -> (Vec<i64>, Vec<(String, i64, i64)>) {
    let c = db.pool.get().await.unwrap();
    let mut counts = db.counts().await.to_vec();
    counts.push(
        c.query_one(
            "select count(*) from payrail.holds where state <> 'authorized'",
            &[],
        )
        .await
        .unwrap()
        .get(0),
    );
    let accounts = c
        .query(
            "select id, balance, held from payrail.account_balances order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    (counts, accounts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorize_holds_then_full_capture_moves_money_once_with_the_fee() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let auth = p
        .pay(DEFAULT_TENANT, "a1", &authorize("alice", "bob", 10_000))
        .await
        .unwrap();
    assert_eq!(auth.response.status, PaymentStatus::Authorized);
    assert!(
        auth.response.postings.is_empty(),
        "nothing moves at authorize"
    );
    let id = auth.response.id.clone();
    assert_eq!(funds(&db, "alice").await, (100_000, 10_000));
    assert_eq!(funds(&db, "bob").await, (0, 0));
    assert_eq!(funds(&db, "fees").await, (0, 0), "no fee at authorize");
    assert_eq!(hold(&db, &id).await, ("authorized".into(), None));
    assert_eq!(topics(&db, &id).await, ["payment.authorized"]);
    assert_eq!(topics(&db, &format!("timer:{id}")).await, ["hold.expire"]);
    // the timer is due in about 7 days
    let c = db.pool.get().await.unwrap();
    let due_in: f64 = c
        .query_one(
            "select extract(epoch from available_at - now())::float8 from payrail.outbox
             where topic = 'hold.expire'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (7.0 * 86400.0 - 60.0..=7.0 * 86400.0).contains(&due_in),
        "{due_in}"
    );
    // plugins saw the phase
    let phases: Vec<String> = c
        .query(
            "select input->'payment'->'metadata'->>'payrail.phase' from payrail.plugin_calls
             order by created_at, step",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(phases, ["authorize", "authorize"]);

    // The held money cannot be spent by another payment: 95_000 + fee 960
    // fits the balance (100_000) but not what is available (90_000).
    let other = p
        .pay(DEFAULT_TENANT, "t1", &transfer("alice", "bob", 95_000))
        .await
        .unwrap();
    assert_eq!(other.response.status, PaymentStatus::Declined);
    assert_eq!(other.response.decline.unwrap().code, "insufficient_funds");

    let cap = p.capture(DEFAULT_TENANT, "c1", &id, None).await.unwrap();
    assert!(!cap.replayed);
    assert_eq!(cap.response.status, PaymentStatus::Captured);
    assert_eq!(cap.response.postings.len(), 4, "principal + fee");
    // fee: 10 + 1% of 10_000 = 110
    assert_eq!(funds(&db, "alice").await, (100_000 - 10_000 - 110, 0));
    assert_eq!(funds(&db, "bob").await, (10_000, 0));
    assert_eq!(funds(&db, "fees").await, (110, 0));
    assert_eq!(hold(&db, &id).await, ("captured".into(), Some(10_000)));
    assert_eq!(
        topics(&db, &id).await,
        ["payment.authorized", "payment.captured", "fee.charged"]
    );
    let phases: i64 = c
        .query_one(
            "select count(*) from payrail.plugin_calls
             where input->'payment'->'metadata'->>'payrail.phase' = 'capture'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phases, 2);
    // the capture's calls go to /metrics as a payment's do
    assert_eq!(cap.calls.len(), 2, "{:?}", cap.calls);

    // replay: same response, nothing written
    let before = snapshot(&db).await;
    let again = p.capture(DEFAULT_TENANT, "c1", &id, None).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.response, cap.response);
    assert_eq!(snapshot(&db).await, before);
    // a second capture or a void under new keys: refused, nothing written
    for e in [
        p.capture(DEFAULT_TENANT, "c2", &id, None)
            .await
            .unwrap_err(),
        p.capture(DEFAULT_TENANT, "c3", &id, Some(1))
            .await
            .unwrap_err(),
        p.void(DEFAULT_TENANT, "v1", &id).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), "hold_not_active", "{e}");
        assert!(e.to_string().contains("captured"), "{e}");
    }
    assert_eq!(snapshot(&db).await, before);
    // the capture key with a different request: a conflict
    let e = p
        .capture(DEFAULT_TENANT, "c1", &id, Some(5))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "idempotency_key_conflict");
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_capture_releases_the_rest_and_capture_above_the_hold_is_refused() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let id = p
        .pay(DEFAULT_TENANT, "a1", &authorize("alice", "bob", 10_000))
        .await
        .unwrap()
        .response
        .id;
    let before = snapshot(&db).await;
    let e = p
        .capture(DEFAULT_TENANT, "c0", &id, Some(10_001))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "capture_exceeds_hold");
    assert!(matches!(
        e,
        Error::CaptureExceedsHold {
            amount: 10_001,
            held: 10_000
        }
    ));
    let e = p
        .capture(DEFAULT_TENANT, "c0", &id, Some(0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_amount");
    assert_eq!(snapshot(&db).await, before, "refusals write nothing");

    // the refused key stayed free: it can capture 4_000 now
    let cap = p
        .capture(DEFAULT_TENANT, "c0", &id, Some(4_000))
        .await
        .unwrap();
    assert_eq!(cap.response.status, PaymentStatus::Captured);
    // fee: 10 + 1% of 4_000 = 50; the other 6_000 are released
    assert_eq!(funds(&db, "alice").await, (100_000 - 4_050, 0));
    assert_eq!(funds(&db, "bob").await, (4_000, 0));
    assert_eq!(funds(&db, "fees").await, (50, 0));
    assert_eq!(hold(&db, &id).await, ("captured".into(), Some(4_000)));
    // at most once: the remainder cannot be captured later
    let e = p
        .capture(DEFAULT_TENANT, "c1", &id, Some(6_000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hold_not_active");
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn void_releases_and_nothing_resolves_the_hold_again() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 20_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let id = p
        .pay(DEFAULT_TENANT, "a1", &authorize("alice", "bob", 15_000))
        .await
        .unwrap()
        .response
        .id;
    assert_eq!(funds(&db, "alice").await, (20_000, 15_000));
    let v = p.void(DEFAULT_TENANT, "v1", &id).await.unwrap();
    assert_eq!(v.response.status, PaymentStatus::Voided);
    assert!(v.response.postings.is_empty());
    assert_eq!(funds(&db, "alice").await, (20_000, 0));
    assert_eq!(funds(&db, "bob").await, (0, 0));
    assert_eq!(funds(&db, "fees").await, (0, 0), "no fee on a void");
    assert_eq!(hold(&db, &id).await, ("voided".into(), None));
    assert_eq!(
        topics(&db, &id).await,
        ["payment.authorized", "payment.voided"]
    );
    let before = snapshot(&db).await;
    let again = p.void(DEFAULT_TENANT, "v1", &id).await.unwrap();
    assert!(again.replayed, "same key: the stored void");
    assert_eq!(again.response, v.response);
    for e in [
        p.void(DEFAULT_TENANT, "v2", &id).await.unwrap_err(),
        p.capture(DEFAULT_TENANT, "c1", &id, None)
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), "hold_not_active", "{e}");
        assert!(e.to_string().contains("voided"), "{e}");
    }
    assert_eq!(snapshot(&db).await, before);
    // the released funds are spendable again
    let t = p
        .pay(DEFAULT_TENANT, "t1", &transfer("alice", "bob", 19_000))
        .await
        .unwrap();
    assert_eq!(t.response.status, PaymentStatus::Approved);
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_two_phase_requests_are_refused_with_typed_codes_and_write_nothing() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 1_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let paid = p
        .pay(DEFAULT_TENANT, "plain", &transfer("alice", "bob", 100))
        .await
        .unwrap()
        .response
        .id;
    let before = snapshot(&db).await;
    let mut reserved = authorize("alice", "bob", 10);
    reserved
        .metadata
        .insert("payrail.phase".into(), "capture".into());
    let cases: Vec<(PaymentRequest, &str)> = vec![
        (reserved, "invalid_metadata"),
        (
            PaymentRequest {
                hold_ttl_secs: Some(30 * 86400 + 1),
                ..authorize("alice", "bob", 10)
            },
            "invalid_hold_ttl",
        ),
        (
            PaymentRequest {
                hold_ttl_secs: Some(0),
                ..authorize("alice", "bob", 10)
            },
            "invalid_hold_ttl",
        ),
        (
            PaymentRequest {
                hold_ttl_secs: Some(60),
                ..transfer("alice", "bob", 10)
            },
            "invalid_hold_ttl",
        ),
    ];
    for (i, (req, code)) in cases.iter().enumerate() {
        let e = p
            .pay(DEFAULT_TENANT, &format!("bad{i}"), req)
            .await
            .unwrap_err();
        assert_eq!(e.code(), *code, "case {i}: {e}");
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        p.capture(DEFAULT_TENANT, "k", &unknown, None)
            .await
            .unwrap_err()
            .code(),
        "payment_not_found"
    );
    assert_eq!(
        p.void(DEFAULT_TENANT, "k", "not-a-uuid")
            .await
            .unwrap_err()
            .code(),
        "payment_not_found"
    );
    let e = p
        .capture(DEFAULT_TENANT, "k", &paid, None)
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        "hold_not_active",
        "a one-step payment has no hold"
    );
    assert_eq!(
        p.void(DEFAULT_TENANT, "", &paid).await.unwrap_err().code(),
        "invalid_idempotency_key"
    );
    assert_eq!(snapshot(&db).await, before);
    // more than is available (1_000 - 100 - fee 20 = 880): declined, no hold
    let d = p
        .pay(DEFAULT_TENANT, "big", &authorize("alice", "bob", 881))
        .await
        .unwrap();
    assert_eq!(d.response.status, PaymentStatus::Declined);
    assert_eq!(d.response.decline.unwrap().code, "insufficient_funds");
    assert_eq!(funds(&db, "alice").await, (880, 0));
    let c = db.pool.get().await.unwrap();
    let holds: i64 = c
        .query_one("select count(*) from payrail.holds", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(holds, 0);
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_capture_and_void_race_exactly_one_wins() {
    const HOLDS: usize = 6;
    const CONTENDERS: usize = 8;
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let mut ids = Vec::new();
    for i in 0..HOLDS {
        let r = p
            .pay(
                DEFAULT_TENANT,
                &format!("a{i}"),
                &authorize("alice", "bob", 1_000),
            )
            .await
            .unwrap();
        ids.push(r.response.id);
    }
    assert_eq!(funds(&db, "alice").await, (1_000_000, 6_000));
    let mut tasks = tokio::task::JoinSet::new();
    for (h, id) in ids.iter().enumerate() {
        for n in 0..CONTENDERS {
            let p = p.clone();
            let id = id.clone();
            tasks.spawn(async move {
                let key = format!("r{h}-{n}");
                let r = if n % 2 == 0 {
                    p.capture(DEFAULT_TENANT, &key, &id, Some(600)).await
                } else {
                    p.void(DEFAULT_TENANT, &key, &id).await
                };
                (
                    h,
                    r.map(|o| o.response.status)
                        .map_err(|e| e.code().to_string()),
                )
            });
        }
    }
    let mut wins = vec![Vec::new(); HOLDS];
    while let Some(j) = tasks.join_next().await {
        let (h, r) = j.unwrap();
        match r {
            Ok(status) => wins[h].push(status),
            Err(code) => assert_eq!(code, "hold_not_active"),
        }
    }
    let mut captured = 0;
    for (h, w) in wins.iter().enumerate() {
        assert_eq!(w.len(), 1, "hold {h}: {w:?}");
        let (state, amount) = hold(&db, &ids[h]).await;
        assert_eq!(state, w[0].as_str());
        if w[0] == PaymentStatus::Captured {
            assert_eq!(amount, Some(600));
            captured += 1;
        }
    }
    // each capture: 600 + fee 20 (10 + 1% of 600 = 16, raised to min 20)
    assert_eq!(funds(&db, "alice").await, (1_000_000 - captured * 620, 0));
    assert_eq!(funds(&db, "bob").await, (captured * 600, 0));
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

fn relay_settings() -> RelaySettings {
    RelaySettings {
        batch_size: 50,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
        max_attempts: 5,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        concurrency: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_fires_through_the_relay_and_a_later_capture_is_refused() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 50_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let short = PaymentRequest {
        hold_ttl_secs: Some(1),
        ..authorize("alice", "bob", 7_000)
    };
    let id = p
        .pay(DEFAULT_TENANT, "a1", &short)
        .await
        .unwrap()
        .response
        .id;
    let long = p
        .pay(DEFAULT_TENANT, "a2", &authorize("alice", "bob", 3_000))
        .await
        .unwrap()
        .response
        .id;
    assert_eq!(funds(&db, "alice").await, (50_000, 10_000));
    let path = std::env::temp_dir().join(format!("payrail-holds-{}.jsonl", db.name));
    let sink = SinkConfig {
        name: "file".into(),
        kind: SinkKind::File,
        topics: vec!["*".into()],
        url: None,
        secret: None,
        secret_env: None,
        subject_prefix: None,
        ca_file: None,
        path: Some(path.clone()),
        timeout_ms: 2000,
    };
    let relay = Relay::new(
        db.pool.clone(),
        vec![Sink::new(&sink).unwrap()],
        relay_settings(),
        Arc::new(Metrics::default()),
    );
    // Before the expiry: the timer is not due, the hold stays.
    relay.round().await.unwrap();
    assert_eq!(hold(&db, &id).await.0, "authorized");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // Past the expiry but before the timer ran: a capture is refused.
    let e = p
        .capture(DEFAULT_TENANT, "c1", &id, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hold_not_active");
    assert!(e.to_string().contains("expired"), "{e}");
    let mut expired = false;
    for _ in 0..100 {
        relay.round().await.unwrap();
        if hold(&db, &id).await.0 == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(expired, "the relay expired the hold");
    // one more round delivers payment.expired to the sink
    for _ in 0..20 {
        relay.round().await.unwrap();
    }
    assert_eq!(
        funds(&db, "alice").await,
        (50_000, 3_000),
        "only the long hold"
    );
    assert_eq!(hold(&db, &long).await.0, "authorized");
    assert_eq!(
        topics(&db, &id).await,
        ["payment.authorized", "payment.expired"]
    );
    let c = db.pool.get().await.unwrap();
    let timer_state: String = c
        .query_one(
            "select state from payrail.outbox where key = $1",
            &[&format!("timer:{id}")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(timer_state, "delivered");
    let status: String = c
        .query_one(
            "select status from payrail.payments where id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "expired");
    // The sink saw the payment's events, never the internal timer.
    let lines = std::fs::read_to_string(&path).unwrap();
    let sunk: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["topic"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(sunk.contains(&"payment.expired".to_string()), "{sunk:?}");
    assert!(!sunk.iter().any(|t| t == "hold.expire"), "{sunk:?}");
    let _ = std::fs::remove_file(&path);
    // A redelivered timer does nothing; captures and voids are refused.
    let uuid: uuid::Uuid = id.parse().unwrap();
    assert!(
        !payrail::holds::expire_hold(&db.pool, DEFAULT_TENANT, uuid)
            .await
            .unwrap()
    );
    let before = snapshot(&db).await;
    for e in [
        p.capture(DEFAULT_TENANT, "c2", &id, None)
            .await
            .unwrap_err(),
        p.void(DEFAULT_TENANT, "v1", &id).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), "hold_not_active");
        assert!(e.to_string().contains("expired"), "{e}");
    }
    assert_eq!(snapshot(&db).await, before);
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_without_sinks_only_runs_timers() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 50_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let short = PaymentRequest {
        hold_ttl_secs: Some(1),
        ..authorize("alice", "bob", 7_000)
    };
    let id = p
        .pay(DEFAULT_TENANT, "a1", &short)
        .await
        .unwrap()
        .response
        .id;
    let relay = Relay::new(
        db.pool.clone(),
        Vec::new(),
        relay_settings(),
        Arc::new(Metrics::default()),
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..100 {
        relay.round().await.unwrap();
        if hold(&db, &id).await.0 == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hold(&db, &id).await.0, "expired");
    assert_eq!(funds(&db, "alice").await, (50_000, 0));
    // the payment's own events wait for a relay with sinks
    let c = db.pool.get().await.unwrap();
    let pending: i64 = c
        .query_one(
            "select count(*) from payrail.outbox where key = $1 and state = 'pending'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 2, "payment.authorized and payment.expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_capture_and_void_with_idempotency_keys() {
    use crate::server::Server;
    use payrail::apikeys::Scope;
    use reqwest::{Method, StatusCode};
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let server = Server::start_on(db).await;
    let key = server.key(DEFAULT_TENANT, &[Scope::Payments]).await;
    let (s, doc) = server.get("/openapi.json", "").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["paths"]["/v1/payments/{id}/capture"]["post"].is_object());
    assert!(doc["paths"]["/v1/payments/{id}/void"]["post"].is_object());
    let post = |path: String, idem: Option<&'static str>, body: Option<serde_json::Value>| {
        let mut r = server.req(Method::POST, &path, Some(&key));
        if let Some(i) = idem {
            r = r.header("Idempotency-Key", i);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status();
            let replayed = resp.headers().contains_key("idempotency-replayed");
            let body: serde_json::Value = resp.json().await.unwrap();
            (status, replayed, body)
        }
    };
    let pay = |idem: &'static str| {
        post(
            "/v1/payments".into(),
            Some(idem),
            Some(
                serde_json::json!({"kind": "transfer", "source": "alice", "destination": "bob",
                "amount": 5_000, "currency": "EUR", "capture": "manual", "hold_ttl_secs": 3600}),
            ),
        )
    };
    let (s, _, body) = pay("p1").await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "authorized");
    let id = body["id"].as_str().unwrap().to_string();
    let (s, acct) = server.get("/v1/accounts/alice", &key).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (acct["balance"].as_i64(), acct["available"].as_i64()),
        (Some(100_000), Some(95_000))
    );

    let (s, _, body) = post(format!("/v1/payments/{id}/capture"), None, None).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("idempotency_key_missing"))
    );
    let (s, _, body) = post(
        format!("/v1/payments/{id}/capture"),
        Some("c1"),
        Some(serde_json::json!({"amount": 5_001})),
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("capture_exceeds_hold")
        )
    );
    let (s, _, body) = post(
        format!("/v1/payments/{id}/capture"),
        Some("c1"),
        Some(serde_json::json!({"amount": 1, "extra": true})),
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let (s, replayed, body) = post(
        format!("/v1/payments/{id}/capture"),
        Some("c1"),
        Some(serde_json::json!({"amount": 2_000})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(!replayed);
    assert_eq!(body["status"], "captured");
    let (s, replayed, again) = post(
        format!("/v1/payments/{id}/capture"),
        Some("c1"),
        Some(serde_json::json!({"amount": 2_000})),
    )
    .await;
    assert_eq!((s, replayed), (StatusCode::OK, true));
    assert_eq!(again, body);
    let (s, _, body) = post(
        format!("/v1/payments/{id}/capture"),
        Some("c1"),
        Some(serde_json::json!({"amount": 1_000})),
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_conflict")
        )
    );
    let (s, _, body) = post(format!("/v1/payments/{id}/void"), Some("v1"), None).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("hold_not_active"))
    );
    let (_, got) = server.get(&format!("/v1/payments/{id}"), &key).await;
    assert_eq!(got["status"], "captured");

    // a second hold, voided with an empty body
    let (_, _, body) = pay("p2").await;
    let id2 = body["id"].as_str().unwrap().to_string();
    let (s, _, body) = post(format!("/v1/payments/{id2}/void"), Some("v2"), None).await;
    assert_eq!(
        (s, body["status"].as_str()),
        (StatusCode::OK, Some("voided"))
    );
    let (s, _, body) = post(format!("/v1/payments/{id2}/capture"), Some("c2"), None).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("hold_not_active"))
    );
    // fee on the 2_000 capture: 10 + 20 = 30
    assert_eq!(funds(&server.db, "alice").await, (100_000 - 2_030, 0));
    let db = &server.db;
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
    server.stop().await;
}

/// A hold on an account whose money is in credit shards (a fee account
/// credited by payments that did not lock it) folds the shards into the
/// row first: the row alone (0) could not carry the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_on_an_account_with_credit_shards_folds_them() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 500_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    for i in 0..3 {
        let key = format!("t{i}");
        p.pay(DEFAULT_TENANT, &key, &transfer("alice", "bob", 10_000))
            .await
            .unwrap();
    }
    let (fees, _) = funds(&db, "fees").await;
    assert!(fees > 0);
    let (row, shards) = row_and_shard_count(&db, "fees").await;
    assert_eq!(row, 0, "the fees are in shards, not the row");
    assert!(shards > 0);
    let out = p
        .pay(DEFAULT_TENANT, "h", &authorize("fees", "bob", fees / 2))
        .await
        .unwrap();
    assert_eq!(out.response.status, PaymentStatus::Authorized);
    assert_eq!(
        row_and_shard_count(&db, "fees").await,
        (fees, 0),
        "the shards are folded into the row"
    );
    assert_eq!(funds(&db, "fees").await, (fees, fees / 2));
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

/// (row balance, number of credit shards) of an account.
async fn row_and_shard_count(db: &TestDb, id: &str) -> (i64, i64) {
    let c = db.pool.get().await.unwrap();
    let r = c
        .query_one(
            "select a.balance, (select count(*) from payrail.credit_shards s
                                where s.tenant = a.tenant and s.account = a.id)
             from payrail.accounts a where a.tenant = $1 and a.id = $2",
            &[&DEFAULT_TENANT, &id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}
