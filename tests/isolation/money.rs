//! Attacks: money (see main.rs). What a key can do to the ledger: create
//! money, crash the batcher with extreme amounts, keep funds held forever.

#[allow(unused_imports)]
use super::*;

/// One number from a query.
async fn count(serve: &Serve, sql: &str) -> i64 {
    let c = serve.db.pool.get().await.unwrap();
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// The audit's violations, as text.
async fn audit(serve: &Serve) -> Vec<String> {
    let mut c = serve.db.pool.get().await.unwrap();
    payrail::audit::run(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|v| format!("{}: {}", v.check, v.detail))
        .collect()
}

/// `POST /v1/accounts` with the whole response (status, content type, body).
async fn open(serve: &Serve, key: &str, body: Value) -> (StatusCode, String, Value) {
    let resp = serve
        .req(Method::POST, "/v1/accounts", Some(key))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Issue 18, item 3: a `payments` key opened accounts with any opening
/// balance (money from nothing) or with `allow_negative`. Now both are
/// refused with 403 `admin_scope_required` and write nothing; a plain
/// account stays open to it; an admin's opening balance is an
/// `account.opened` event the audit matches with its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payments_key_cannot_create_money() {
    let serve = Serve::start("").await;
    let t = serve.tenant("acme").await;
    let entries = "select count(*) from payrail.entries";
    let events = "select count(*) from payrail.outbox where topic = 'account.opened'";
    let (e0, v0) = (count(&serve, entries).await, count(&serve, events).await);
    for body in [
        json!({"id": "rich", "currency": "EUR", "opening_balance": 1_000_000_000_000_000i64}),
        json!({"id": "rich", "currency": "EUR", "allow_negative": true}),
        json!({"id": "rich", "currency": "EUR", "opening_balance": 1, "allow_negative": true}),
    ] {
        let (s, ct, b) = open(&serve, &t.pay, body.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}: {b}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(b["code"], "admin_scope_required", "{b}");
    }
    let (s, _) = serve.get("/v1/accounts/rich", &t.pay).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused account was written");
    assert_eq!(count(&serve, entries).await, e0, "a refusal wrote entries");
    assert_eq!(count(&serve, events).await, v0, "a refusal wrote events");

    // a plain account: what a payments key may still open
    let (s, _, b) = open(&serve, &t.pay, json!({"id": "plain", "currency": "EUR"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // an admin's opening balance is published with its ledger transaction
    let amount = 1_000_000_000_000_000i64;
    let body = json!({"id": "rich", "currency": "EUR", "opening_balance": amount});
    let (s, _, b) = open(&serve, &t.admin, body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let c = serve.db.pool.get().await.unwrap();
    let row = c
        .query_one(
            "select o.payload, (select txn_id::text from payrail.entries e
                                where e.tenant = o.tenant and e.account_id = 'rich')
             from payrail.outbox o where o.topic = 'account.opened' and o.key = 'account:rich'",
            &[],
        )
        .await
        .unwrap();
    let (payload, txn): (Value, String) = (row.get(0), row.get(1));
    assert_eq!(payload["opening_balance"], amount);
    assert_eq!(payload["allow_negative"], false);
    assert_eq!(payload["txn_id"], txn.as_str());
    // even an admin cannot push equity beyond i64: a typed 400, not a 500
    let max = json!({"id": "max1", "currency": "EUR", "opening_balance": i64::MAX / 2 + 1});
    let (s, _, b) = open(&serve, &t.admin, max).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let max = json!({"id": "max2", "currency": "EUR", "opening_balance": i64::MAX / 2 + 1});
    let (s, _, b) = open(&serve, &t.admin, max).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["code"], "amount_overflow", "{b}");
    let (s, _) = serve.get("/v1/accounts/max2", &t.pay).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused account was written");
    assert_eq!(audit(&serve).await, Vec::<String>::new());

    // money without its event is what the audit now reports
    c.execute(
        "delete from payrail.outbox where topic = 'account.opened' and key = 'account:rich'",
        &[],
    )
    .await
    .unwrap();
    let found = audit(&serve).await;
    assert!(
        found.len() == 1 && found[0].starts_with("opening_balance_has_event"),
        "{found:?}"
    );
}

/// Issue 18, item 4: two `allow_negative` accounts whose balances swing by
/// more than 2^63 within one batch overflowed the batch's running total and
/// panicked the batcher: every payment of that batch, of every tenant, got
/// a 503. Now the payment that does not fit the batch runs alone after it;
/// every payment is answered, none with a 5xx, the process logs no panic,
/// and the ledger audits clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overflowing_batch_totals_fail_no_neighbour() {
    // one worker lingering 50 ms: the round's payments share a batch
    let config = "[processor]\nbatch_workers = 1\nbatch_window_us = 50000\n";
    let serve = Serve::start(config).await;
    let evil = serve.tenant("evil").await;
    let zeta = serve.tenant("zeta").await; // after "evil" in the batch's tenant order
    let (s, b) = serve
        .put("/v1/pipelines/raw", &evil.admin, json!({"steps": []}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for id in ["x", "y"] {
        let body = json!({"id": id, "currency": "EUR", "allow_negative": true});
        let (s, _, b) = open(&serve, &evil.admin, body).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let raw = |from: &str, to: &str, amount: i64| json!({"kind": "raw", "source": from, "destination": to, "amount": amount, "currency": "EUR"});
    // x at -9e18, y at +9e18
    let big = 9_000_000_000_000_000_000i64;
    let (s, b) = serve.pay(&evil.pay, "setup", raw("x", "y", big)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["status"], "approved", "{b}");

    // each round: two credits to x of 4.7e18 (their sum leaves i64 while
    // x's balance, -9e18 + 9.4e18, fits), then back; a bystander pays meanwhile
    let half = 4_700_000_000_000_000_000i64;
    for round in 0..3 {
        let (from, to) = if round % 2 == 0 {
            ("y", "x")
        } else {
            ("x", "y")
        };
        let mut set = tokio::task::JoinSet::new();
        for i in 0..2 {
            let r = serve
                .req(Method::POST, "/v1/payments", Some(&evil.pay))
                .header("Idempotency-Key", format!("evil-{round}-{i}"))
                .json(&raw(from, to, half));
            set.spawn(async move { ("evil", send(r).await) });
        }
        for i in 0..8 {
            let r = serve
                .req(Method::POST, "/v1/payments", Some(&zeta.pay))
                .header("Idempotency-Key", format!("zeta-{round}-{i}"))
                .json(&transfer(100));
            set.spawn(async move { ("zeta", send(r).await) });
        }
        while let Some(r) = set.join_next().await {
            let (who, (s, b)) = r.unwrap();
            assert_eq!(s, StatusCode::CREATED, "round {round}, {who}: {b}");
            assert_eq!(b["status"], "approved", "round {round}, {who}: {b}");
        }
    }
    let out = serve.output();
    assert!(!out.contains("panicked"), "the batcher panicked:\n{out}");
    assert!(
        out.contains("overflowing their batch's running totals run alone"),
        "no round put both attack payments in one batch:\n{out}"
    );
    // three rounds: x gained 9.4e18 twice and lost it once
    let (s, x) = serve.get("/v1/accounts/x", &evil.pay).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(x["balance"], half - big + half);
    assert_eq!(audit(&serve).await, Vec::<String>::new());
}

/// A `POST /v1/payments/{id}/{op}` with an idempotency key.
async fn transition(serve: &Serve, key: &str, id: &str, op: &str) -> (StatusCode, Value) {
    send(
        serve
            .req(Method::POST, &format!("/v1/payments/{id}/{op}"), Some(key))
            .header("Idempotency-Key", format!("{op}-{id}")),
    )
    .await
}

/// Issue 18, item 9: with the relay off (or its timers dead-lettered) a
/// hold past its expiry stayed authorized forever, its funds held, and
/// capture / void were refused. Now a capture, void or read past the expiry
/// expires it inline (the timer later finds it resolved), the gauge shows
/// the stuck ones, and `payrail holds expire-due` resolves the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_past_expiry_resolve_without_their_timer() {
    let serve = Serve::start("[outbox]\nrelay = false\n").await;
    let t = serve.tenant("acme").await;
    let body = json!({"id": "carol", "currency": "EUR", "opening_balance": 1_000_000});
    let (s, _, b) = open(&serve, &t.admin, body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let mut holds = Vec::new();
    for (i, source) in [
        "alice", "alice", "alice", "alice", "alice", "alice", "carol",
    ]
    .iter()
    .enumerate()
    {
        let mut req = transfer(1000);
        req["source"] = json!(source);
        req["capture"] = json!("manual");
        req["hold_ttl_secs"] = json!(1);
        let (s, b) = serve.pay(&t.pay, &format!("auth-{i}"), req).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!(b["status"], "authorized", "{b}");
        holds.push(b["id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(serve.metric("payrail_holds_overdue").await, 7);

    // capture and void: the typed refusal, and the hold expired inline
    for (id, op) in [(&holds[0], "capture"), (&holds[1], "void")] {
        let (s, b) = transition(&serve, &t.pay, id, op).await;
        assert_eq!(s, StatusCode::CONFLICT, "{op}: {b}");
        assert_eq!(b["code"], "hold_not_active", "{b}");
        assert!(b["detail"].as_str().unwrap().contains("expired"), "{b}");
        let (_, p) = serve.get(&format!("/v1/payments/{id}"), &t.pay).await;
        assert_eq!(p["status"], "expired", "{op}: {p}");
        // a retry gets the same answer
        let (s, _) = transition(&serve, &t.pay, id, op).await;
        assert_eq!(s, StatusCode::CONFLICT);
    }
    // a read of the payment, and of the account, expire too
    let (_, p) = serve
        .get(&format!("/v1/payments/{}", holds[2]), &t.pay)
        .await;
    assert_eq!(p["status"], "expired", "{p}");
    let (_, carol) = serve.get("/v1/accounts/carol", &t.pay).await;
    assert_eq!(carol["available"], carol["balance"], "{carol}");
    assert_eq!(carol["balance"], 1_000_000, "{carol}");
    assert_eq!(serve.metric("payrail_holds_overdue").await, 3);

    // the timer arriving after an inline expiry is a no-op
    let c = serve.db.pool.get().await.unwrap();
    let first: uuid::Uuid = holds[0].parse().unwrap();
    let fired = payrail::holds::expire_hold(&serve.db.pool, "acme", first).await;
    assert!(!fired.unwrap(), "a late timer expired the hold again");

    // timers, inline expiries and a capture racing on one due hold: it
    // expires once
    let racer: uuid::Uuid = holds[3].parse().unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let pool = serve.db.pool.clone();
        set.spawn(async move { payrail::holds::expire_hold(&pool, "acme", racer).await });
    }
    let (s, b) = transition(&serve, &t.pay, &holds[3], "capture").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let mut fired = 0;
    while let Some(r) = set.join_next().await {
        fired += usize::from(r.unwrap().unwrap());
    }
    assert!(fired <= 1, "{fired} timers expired one hold");
    let (_, p) = serve
        .get(&format!("/v1/payments/{}", holds[3]), &t.pay)
        .await;
    assert_eq!(p["status"], "expired", "{p}");
    assert_eq!(serve.metric("payrail_holds_overdue").await, 2);

    // the operator command resolves the rest
    let out = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .args(["holds", "expire-due"])
        .env("DATABASE_URL", &serve.db.url)
        .env("PAYRAIL_CACHE_DIR", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("expired 2 due hold(s)"), "{stdout}");
    assert_eq!(serve.metric("payrail_holds_overdue").await, 0);
    let expired: i64 = c
        .query_one(
            "select count(*) from payrail.holds where state = 'expired'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expired, 7);
    let (_, alice) = serve.get("/v1/accounts/alice", &t.pay).await;
    assert_eq!(alice["available"], alice["balance"], "{alice}");
    assert_eq!(audit(&serve).await, Vec::<String>::new());
}

/// Schema 13 on a ledger opened before it (opening entries, no events):
/// the migration writes their `account.opened` events, already delivered,
/// so the audit's new checks hold on an upgraded ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_13_publishes_the_openings_of_an_older_ledger() {
    let db = TestDb::unmigrated().await;
    let mut c = db.pool.get().await.unwrap();
    payrail::db::migrate::migrate_to(&mut c, 12).await.unwrap();
    for (id, opening) in [("rich", 5_000), ("plain", 0)] {
        let new = payrail::ledger::NewAccount {
            id: id.into(),
            currency: "EUR".into(),
            allow_negative: false,
            opening_balance: opening,
            metadata: Default::default(),
        };
        payrail::ledger::create_account(&mut c, "t", &new)
            .await
            .unwrap();
    }
    // what a host before schema 13 left: the entries without their event
    c.execute("delete from payrail.outbox", &[]).await.unwrap();
    let before: Vec<&str> = payrail::audit::run(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|v| v.check)
        .collect();
    assert_eq!(before, ["opening_balance_has_event"]);
    assert_eq!(
        payrail::db::migrate::migrate_to(&mut c, 13).await.unwrap(),
        vec![13]
    );
    assert_eq!(payrail::audit::run(&mut c).await.unwrap(), vec![]);
    let r = c
        .query_one(
            "select state, payload from payrail.outbox where topic = 'account.opened'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "delivered");
    assert_eq!(r.get::<_, Value>(1)["opening_balance"], 5_000);
}
