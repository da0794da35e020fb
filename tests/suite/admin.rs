//! The admin API and the reads beside it, over HTTP: every change is in
//! the append-only audit log, a tenant's admin key reaches nothing of
//! another tenant, keys expire and record their use, and balances at a
//! time, statements, holds, a payment's calls and events and the payment
//! filters answer what the ledger holds.

use crate::common::*;
use crate::server::{Server, send};
use payrail::apikeys::Scope;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn transfer(amount: i64) -> Value {
    json!({"kind": "transfer", "source": "alice", "destination": "bob",
           "amount": amount, "currency": "EUR"})
}

/// The key id (`key_...`) of a secret, as `whoami` tells it.
async fn key_id(s: &Server, key: &str) -> String {
    let (st, me) = s.get("/v1/whoami", key).await;
    assert_eq!(st, StatusCode::OK, "{me}");
    me["key_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_audited_in_their_transaction_and_the_log_is_append_only() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Payments, Scope::Admin]).await;
    let me = key_id(&s, &admin).await;
    s.samples(&admin).await;
    let (st, p) = s
        .post(
            "/v1/pipelines/transfer/rollback",
            &admin,
            json!({"version": 1}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    // a change that fails writes no row: there is no version 9
    let (st, e) = s
        .post(
            "/v1/pipelines/transfer/rollback",
            &admin,
            json!({"version": 9}),
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_version"))
    );
    let (st, k) = s
        .post("/v1/api-keys", &admin, json!({"scopes": ["payments"]}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{k}");
    let new_id = k["id"].as_str().unwrap();
    let (st, _) = send(s.req(
        Method::DELETE,
        &format!("/v1/api-keys/{new_id}"),
        Some(&admin),
    ))
    .await;
    assert_eq!(st, StatusCode::OK);

    let (st, log) = s.get("/v1/audit-log?limit=200", &admin).await;
    assert_eq!(st, StatusCode::OK, "{log}");
    let rows = log["data"].as_array().unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    // newest first; samples(): 2 deploys, a pipeline set, 3 accounts of
    // which two opened with money (fees opened with 0 is not an admin act)
    assert_eq!(
        actions,
        [
            "apikey.revoke",
            "apikey.create",
            "pipeline.rollback",
            "account.open",
            "pipeline.set",
            "plugin.deploy",
            "plugin.deploy"
        ],
        "{log}"
    );
    assert!(rows.iter().all(|r| r["key_id"] == me.as_str()), "{log}");
    let rollback = &rows[2];
    assert_eq!(rollback["target"], "transfer");
    assert_eq!(rollback["before"]["version"], 1, "{rollback}");
    assert_eq!(rollback["after"]["version"], 2, "{rollback}");
    assert!(
        rows[1]["after"].get("secret").is_none(),
        "no secret in the log"
    );
    let (st, only) = s.get("/v1/audit-log?action=plugin.deploy", &admin).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(only["data"].as_array().unwrap().len(), 2);
    let (st, e) = s.get("/v1/audit-log?action=drop.table", &admin).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_action"))
    );

    // append-only: the host's own role cannot rewrite it
    let c = s.db.pool.get().await.unwrap();
    for sql in [
        "update payrail.admin_audit set actor = 'someone else'",
        "delete from payrail.admin_audit",
        "truncate payrail.admin_audit",
    ] {
        let e = c.execute(sql, &[]).await.unwrap_err();
        assert!(
            e.to_string().contains("append-only") || format!("{e:?}").contains("append-only"),
            "{sql}: {e:?}"
        );
    }
    let n: i64 = c
        .query_one("select count(*) from payrail.admin_audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_reaches_nothing_of_another_tenant() {
    let s = Server::start().await;
    let a = s.key("a", &[Scope::Payments, Scope::Admin]).await;
    let b = s.key("b", &[Scope::Payments, Scope::Admin]).await;
    let b_pay = s.key("b", &[Scope::Payments]).await;
    s.samples(&a).await;
    let r = s.pay(&a, "a-1", transfer(500)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let paid: Value = r.json().await.unwrap();
    let payment = paid["id"].as_str().unwrap();
    let a_id = key_id(&s, &a).await;
    // a dead letter of tenant a
    let c = s.db.pool.get().await.unwrap();
    let dead: i64 = c
        .query_one(
            "update payrail.outbox set state = 'dead' where id = (select min(id) from payrail.outbox
             where tenant = 'a' and topic like 'payment.%') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    for path in [
        format!("/v1/payments/{payment}/calls"),
        format!("/v1/payments/{payment}/events"),
        "/v1/plugins/limits".to_string(),
        "/v1/pipelines/transfer/history".to_string(),
        "/v1/accounts/alice/statement?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z".into(),
        "/v1/accounts/alice/balance?at=2100-01-01T00:00:00Z".into(),
    ] {
        let (st, body) = s.get(&path, &b).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "b reads {path}: {body}");
    }
    let (st, _) = s
        .post(&format!("/v1/payments/{payment}/replay"), &b, json!({}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .post("/v1/pipelines/transfer/rollback", &b, json!({}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // b's lists hold none of a's rows
    for path in [
        "/v1/api-keys",
        "/v1/audit-log",
        "/v1/outbox/dead-letters",
        "/v1/accounts",
        "/v1/holds",
        "/v1/pipelines",
        "/v1/payments",
    ] {
        let (st, page) = s.get(path, &b).await;
        assert_eq!(st, StatusCode::OK, "{path}: {page}");
        let data = page["data"].as_array().unwrap();
        assert!(
            data.iter()
                .all(|r| r["tenant"].as_str().is_none_or(|t| t == "b")),
            "{path}: {page}"
        );
        if path != "/v1/api-keys" {
            assert!(data.is_empty(), "{path}: {page}");
        }
    }
    let (_, summary) = s.get("/v1/outbox", &b).await;
    assert_eq!(summary["dead"], 0);
    assert_eq!(summary["pending"].as_array().unwrap().len(), 0, "{summary}");
    // b cannot revoke a's key, nor requeue a's dead letter
    let (st, e) = send(s.req(Method::DELETE, &format!("/v1/api-keys/{a_id}"), Some(&b))).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("api_key_not_found"))
    );
    let (st, r) = s
        .post("/v1/outbox/dead-letters/retry", &b, json!({"ids": [dead]}))
        .await;
    assert_eq!((st, r["requeued"].as_u64()), (StatusCode::OK, Some(0)));
    let (st, r) = s
        .post("/v1/outbox/dead-letters/retry", &b, json!({"all": true}))
        .await;
    assert_eq!((st, r["requeued"].as_u64()), (StatusCode::OK, Some(0)));
    let state: String = c
        .query_one("select state from payrail.outbox where id = $1", &[&dead])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "dead");
    let (st, _) = s.get("/v1/whoami", &a).await;
    assert_eq!(st, StatusCode::OK, "a's key still works");
    // a payments key of b is refused every admin route
    for path in [
        "/v1/api-keys",
        "/v1/audit-log",
        "/v1/outbox",
        "/v1/pipelines",
    ] {
        let (st, e) = s.get(path, &b_pay).await;
        assert_eq!(
            (st, e["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{path}"
        );
    }
    let (st, _) = s
        .post("/v1/api-keys", &b_pay, json!({"scopes": ["admin"]}))
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a payments key cannot mint an admin key"
    );
    // a's own dead letter, retried by a
    let (st, r) = s
        .post("/v1/outbox/dead-letters/retry", &a, json!({"ids": [dead]}))
        .await;
    assert_eq!((st, r["requeued"].as_u64()), (StatusCode::OK, Some(1)));
    let (st, e) = s
        .post(
            "/v1/outbox/dead-letters/retry",
            &a,
            json!({"ids": [dead], "all": true}),
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_retry"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_and_record_their_last_use() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Payments, Scope::Admin]).await;
    let (st, e) = s
        .post(
            "/v1/api-keys",
            &admin,
            json!({"scopes": ["payments"], "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_expiry"))
    );
    let (st, e) = s
        .post(
            "/v1/api-keys",
            &admin,
            json!({"scopes": ["payments"], "expires_at": "tomorrow"}),
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_time"))
    );
    let (st, e) = s
        .post("/v1/api-keys", &admin, json!({"scopes": ["root"]}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (st, k) = s
        .post(
            "/v1/api-keys",
            &admin,
            json!({"scopes": ["payments"], "expires_at": soon}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{k}");
    let secret = k["secret"].as_str().unwrap();
    let id = k["id"].as_str().unwrap();
    assert!(k["last_used_at"].is_null());
    let (st, _) = s.get("/v1/whoami", secret).await;
    assert_eq!(st, StatusCode::OK);
    let (_, keys) = s.get("/v1/api-keys", &admin).await;
    let listed = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert!(listed["last_used_at"].is_string(), "{listed}");
    assert!(listed["expires_at"].is_string(), "{listed}");
    // past its expiry, and past the key cache's second
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let (st, e) = s.get("/v1/whoami", secret).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        "{e}"
    );
    s.stop().await;
}

/// Waits past a clock tick so rows on either side of `mark` differ in time.
async fn mark() -> String {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_at_a_time_and_statements_add_up() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Payments, Scope::Admin]).await;
    s.samples(&admin).await;
    let t0 = mark().await;
    for (i, amount) in [1_000, 2_000].iter().enumerate() {
        let r = s
            .pay(&admin, &format!("early-{i}"), transfer(*amount))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let t1 = mark().await;
    for (i, amount) in [4_000, 8_000, 16_000].iter().enumerate() {
        let r = s.pay(&admin, &format!("late-{i}"), transfer(*amount)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let t2 = mark().await;
    let balance = |at: String| {
        let s = &s;
        let admin = &admin;
        async move {
            let (st, b) = s
                .get(&format!("/v1/accounts/bob/balance?at={at}"), admin)
                .await;
            assert_eq!(st, StatusCode::OK, "{b}");
            b["balance"].as_i64().unwrap()
        }
    };
    assert_eq!(balance(t0.clone()).await, 0);
    assert_eq!(balance(t1.clone()).await, 3_000);
    assert_eq!(balance(t2.clone()).await, 31_000);
    let (_, st) = s
        .get(
            &format!("/v1/accounts/alice/statement?from={t1}&to={t2}"),
            &admin,
        )
        .await;
    let entries = st["entries"].as_array().unwrap();
    // each of the three payments: the principal and its fee
    assert_eq!(entries.len(), 6, "{st}");
    let sum: i64 = entries.iter().map(|e| e["amount"].as_i64().unwrap()).sum();
    assert_eq!(st["credits"], 0);
    assert_eq!(st["debits"].as_i64().unwrap(), sum);
    assert_eq!(
        st["closing_balance"].as_i64().unwrap(),
        st["opening_balance"].as_i64().unwrap() + sum
    );
    assert_eq!(
        entries.last().unwrap()["balance_after"],
        st["closing_balance"]
    );
    assert_eq!(st["truncated"], false);
    let (_, now) = s.get("/v1/accounts/alice", &admin).await;
    assert_eq!(now["balance"], st["closing_balance"], "nothing after t2");
    for (q, status, code) in [
        (
            "from=yesterday&to=2100-01-01T00:00:00Z",
            400,
            "invalid_time",
        ),
        (
            "from=2100-01-01T00:00:00Z&to=2000-01-01T00:00:00Z",
            422,
            "invalid_range",
        ),
    ] {
        let (st, e) = s
            .get(&format!("/v1/accounts/alice/statement?{q}"), &admin)
            .await;
        assert_eq!((st.as_u16(), e["code"].as_str()), (status, Some(code)));
    }
    // the payment filters
    let (_, early) = s
        .get(
            &format!("/v1/payments?created_from={t0}&created_to={t1}"),
            &admin,
        )
        .await;
    let amounts: Vec<i64> = early["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [2_000, 1_000]);
    // the account list: newest first, the same balances, no equity account
    let (_, list) = s.get("/v1/accounts?limit=2", &admin).await;
    let (_, rest) = s
        .get(
            &format!(
                "/v1/accounts?limit=2&cursor={}",
                list["next_cursor"].as_str().unwrap()
            ),
            &admin,
        )
        .await;
    let listed: Vec<Value> = [
        list["data"].as_array().unwrap().clone(),
        rest["data"].as_array().unwrap().clone(),
    ]
    .concat();
    let ids: Vec<&str> = listed.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["bob", "alice", "fees"], "{list} {rest}");
    for a in &listed {
        let (_, one) = s
            .get(
                &format!("/v1/accounts/{}", a["id"].as_str().unwrap()),
                &admin,
            )
            .await;
        assert_eq!(a["balance"], one["balance"], "{a} {one}");
        assert!(a["created_at"].is_string());
    }
    let (st, e) = s.get("/v1/accounts?currency=XXX", &admin).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_currency"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_filter_and_show_their_calls_events_and_holds() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Payments, Scope::Admin]).await;
    s.samples(&admin).await;
    let r = s.pay(&admin, "ok", transfer(700)).await;
    let ok: Value = r.json().await.unwrap();
    let r = s.pay(&admin, "big", transfer(500_000)).await;
    let big: Value = r.json().await.unwrap();
    assert_eq!(big["decline"]["code"], "amount_too_large");
    let mut tagged = transfer(300);
    tagged["metadata"] = json!({"order": "o-17"});
    let r = s.pay(&admin, "tagged", tagged).await;
    let tagged: Value = r.json().await.unwrap();
    let mut hold = transfer(900);
    hold["capture"] = json!("manual");
    let r = s.pay(&admin, "held", hold.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.pay(&admin, "held-2", hold).await;
    let held: Value = r.json().await.unwrap();
    let r = s
        .req(
            Method::POST,
            &format!("/v1/payments/{}/void", held["id"].as_str().unwrap()),
            Some(&admin),
        )
        .header("Idempotency-Key", "void-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, d) = s.get("/v1/payments?status=declined", &admin).await;
    assert_eq!(ids(&d), [big["id"].as_str().unwrap()]);
    let (_, d) = s
        .get("/v1/payments?decline_code=amount_too_large", &admin)
        .await;
    assert_eq!(ids(&d), [big["id"].as_str().unwrap()]);
    let (_, d) = s.get("/v1/payments?metadata=order%3Do-17", &admin).await;
    assert_eq!(ids(&d), [tagged["id"].as_str().unwrap()]);
    let (_, d) = s.get("/v1/payments?kind=refund", &admin).await;
    assert!(ids(&d).is_empty());
    for (q, code) in [
        ("status=lost", "invalid_status"),
        ("metadata=nokey", "invalid_metadata"),
        ("created_from=now", "invalid_time"),
    ] {
        let (st, e) = s.get(&format!("/v1/payments?{q}"), &admin).await;
        assert_eq!(
            (st, e["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{q}"
        );
    }
    let (_, h) = s.get("/v1/holds?state=authorized", &admin).await;
    assert_eq!(h["data"].as_array().unwrap().len(), 1, "{h}");
    let (_, h) = s.get("/v1/holds?state=voided&account=alice", &admin).await;
    assert_eq!(h["data"][0]["payment_id"], held["id"], "{h}");
    let (st, e) = s.get("/v1/holds?state=gone", &admin).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_state"))
    );

    // the declined payment's calls: limits declined, fee never ran
    let (_, calls) = s
        .get(
            &format!("/v1/payments/{}/calls", big["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    let calls = calls["data"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["decision"], "decline");
    assert_eq!(calls[0]["decline"]["code"], "amount_too_large");
    assert!(calls[0]["fuel_used"].as_i64().unwrap() > 0);
    assert!(calls[0]["input"]["payment"].is_object(), "{:?}", calls[0]);
    let (_, calls) = s
        .get(
            &format!("/v1/payments/{}/calls", ok["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(calls["data"].as_array().unwrap().len(), 2);
    assert!(
        calls["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["decision"] == "approve")
    );
    let (_, events) = s
        .get(
            &format!("/v1/payments/{}/events", ok["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    let topics: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert!(topics.contains(&"payment.approved"), "{events}");
    // the voided hold's events: its authorization and its void
    let (_, events) = s
        .get(
            &format!("/v1/payments/{}/events", held["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert!(events["data"].as_array().unwrap().len() >= 2, "{events}");
    // a replay over HTTP
    let (st, r) = s
        .post(
            &format!("/v1/payments/{}/replay", big["id"].as_str().unwrap()),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, r["matched"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{r}"
    );
    let (st, r) = s
        .post(
            "/v1/replay",
            &admin,
            json!({"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        (st, r["mismatched_payments"].as_u64()),
        (StatusCode::OK, Some(0)),
        "{r}"
    );
    assert!(r["payments"].as_u64().unwrap() >= 5, "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_logs_are_journaled_with_its_call_and_capped() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Payments, Scope::Admin]).await;
    s.samples(&admin).await;
    let r = s
        .req(Method::POST, "/v1/plugins?name=chatty", Some(&admin))
        .body(plugin_bytes("payrail_hostile"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (st, p) = send(
        s.req(Method::PUT, "/v1/pipelines/transfer", Some(&admin))
            .json(&json!({"steps": [{"plugin": "chatty", "config": {"mode": "log"}}]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    let r = s.pay(&admin, "chatty-1", transfer(10)).await;
    let paid: Value = r.json().await.unwrap();
    let (_, calls) = s
        .get(
            &format!("/v1/payments/{}/calls", paid["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    let logs = calls["data"][0]["logs"].as_array().unwrap();
    assert!(!logs.is_empty(), "{calls}");
    assert!(
        logs[0].as_str().unwrap().contains("hostile log line 0000"),
        "{calls}"
    );
    let bytes: usize = logs.iter().map(|l| l.as_str().unwrap().len() + 1).sum();
    // 1000 lines of 100 bytes logged; the default max_log_bytes kept
    assert!(bytes <= 64 * 1024, "{bytes} bytes kept");
    assert!(logs.len() < 1000, "capped: {} lines", logs.len());
    s.stop().await;
}

/// Postgres text cannot hold NUL: a NUL in metadata or a query parameter
/// is a typed 400 with nothing written, never a 500 from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_get_a_typed_error_and_write_nothing() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Payments, Scope::Admin]).await;
    s.samples(&admin).await;
    let mut body = transfer(100);
    body["metadata"] = json!({"note": "a\u{0}b"});
    let r = s.pay(&admin, "nul-1", body).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "invalid_metadata", "{e}");
    let (st, e) = s
        .post(
            "/v1/accounts",
            &admin,
            json!({"id": "nul", "currency": "EUR", "metadata": {"k\u{0}": "v"}}),
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_metadata"))
    );
    let (st, e) = s.get("/v1/payments?metadata=k%3Da%00b", &admin).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    let (st, _) = s.get("/v1/accounts/nul", &admin).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "nothing written");
    let (_, list) = s.get("/v1/payments", &admin).await;
    assert!(
        list["data"].as_array().unwrap().is_empty(),
        "nothing written"
    );
    s.stop().await;
}

/// The bounds of the admin and read routes, each a typed error with
/// nothing changed: a range replay past 1,000 payments, a body that is
/// not an object, a retry of more than 1,000 ids, a step path that is not
/// a step; and a statement past 1,000 entries lists 1,000 and says so
/// while its totals count them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bounds_get_their_typed_errors() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Payments, Scope::Admin]).await;
    s.samples(&admin).await;
    let (st, e) = s
        .post(
            "/v1/replay",
            &admin,
            json!({"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z", "limit": 1001}),
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_limit"))
    );
    let (st, e) = send(
        s.req(
            Method::POST,
            "/v1/pipelines/transfer/rollback",
            Some(&admin),
        )
        .header("content-type", "application/json")
        .body("[null]"),
    )
    .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let (_, p) = s.get("/v1/pipelines/transfer", &admin).await;
    assert_eq!(p["version"], 1, "the array body rolled nothing back");
    let ids: Vec<i64> = (1..=1001).collect();
    let (st, e) = s
        .post("/v1/outbox/dead-letters/retry", &admin, json!({"ids": ids}))
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_retry"))
    );
    for step in ["x", "16"] {
        let (st, e) = send(
            s.req(
                Method::PUT,
                &format!("/v1/pipelines/transfer/steps/{step}/candidate"),
                Some(&admin),
            )
            .json(&json!({"plugin": "limits"})),
        )
        .await;
        assert_eq!(
            (st, e["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_path")),
            "{step}"
        );
    }
    // 1,001 credits of 1 to bob, written straight into the ledger in 2050
    let c = s.db.pool.get().await.unwrap();
    c.execute(
        "insert into payrail.entries (tenant, account_id, txn_id, amount, currency, created_at)
         select 't', 'bob', gen_random_uuid(), 1, 'EUR', timestamptz '2050-01-01' + g * interval '1 s'
         from generate_series(1, 1001) g",
        &[],
    )
    .await
    .unwrap();
    let (st, stmt) = s
        .get(
            "/v1/accounts/bob/statement?from=2049-01-01T00:00:00Z&to=2051-01-01T00:00:00Z",
            &admin,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{stmt}");
    assert_eq!(stmt["entries"].as_array().unwrap().len(), 1000);
    assert_eq!(stmt["truncated"], true);
    assert_eq!(stmt["credits"], 1001, "the totals count every entry");
    assert_eq!(stmt["closing_balance"], 1001);
    s.stop().await;
}
