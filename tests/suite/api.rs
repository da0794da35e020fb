//! The HTTP API over real HTTP on a real port, against a real per-test
//! database: every route, auth and scopes, tenant isolation, idempotency,
//! malformed input (a table, each case asserting nothing was written),
//! pagination, the OpenAPI document, readiness, and graceful shutdown of the
//! real binary.

use crate::common;

use crate::server::{JSON_LIMIT, Server, limits, send};
use common::{TestDb, plugin_bytes};
use payrail::api::{self, ApiLimits};
use payrail::apikeys::{self, Scope};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

impl Server {
    /// Row counts of everything a request could write.
    async fn written(&self) -> Vec<i64> {
        let mut out = self.db.counts().await.to_vec();
        let c = self.db.pool.get().await.unwrap();
        for q in [
            "select count(*) from payrail.accounts",
            "select count(*) from payrail.entries",
            "select count(*) from payrail.plugin_names",
            "select count(*) from payrail.plugins",
            "select coalesce(sum(version), 0)::bigint from payrail.pipelines",
            "select coalesce(sum(balance), 0)::bigint from payrail.account_balances where not is_equity",
        ] {
            out.push(c.query_one(q, &[]).await.unwrap().get(0));
        }
        out
    }
}

fn transfer(amount: i64) -> Value {
    json!({"kind": "transfer", "source": "alice", "destination": "bob", "amount": amount, "currency": "EUR"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_deploys_plugins_sets_a_pipeline_and_pays() {
    let s = Server::start().await;
    let admin = s.key("acme", &[Scope::Admin]).await;
    let pay = s.key("acme", &[Scope::Payments]).await;
    s.samples(&admin).await;

    let (st, plugins) = s.get("/v1/plugins", &admin).await;
    assert_eq!(st, StatusCode::OK);
    let names: Vec<&str> = plugins["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fee", "limits"]);
    assert_eq!(plugins["data"][0]["digest"].as_str().unwrap().len(), 64);
    let (st, pipeline) = s.get("/v1/pipelines/transfer", &admin).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(pipeline["version"], 1);
    assert_eq!(pipeline["steps"][1]["plugin"], "fee");

    let r = s.pay(&pay, "order-1", transfer(10_000)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("idempotency-replayed").is_none());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "approved");
    assert_eq!(body["annotations"]["fee"], "110");
    assert_eq!(body["postings"].as_array().unwrap().len(), 4);
    assert_eq!(
        location,
        format!("/v1/payments/{}", body["id"].as_str().unwrap())
    );

    let (st, got) = s.get(&location, &pay).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["postings"], body["postings"]);
    assert_eq!(got["status"], "approved");
    assert!(got["created_at"].as_str().unwrap().ends_with('Z'));

    let (st, alice) = s.get("/v1/accounts/alice", &pay).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(alice["balance"], 1_000_000 - 10_000 - 110);
    assert_eq!(alice["available"], alice["balance"]);
    let (_, fees) = s.get("/v1/accounts/fees", &pay).await;
    assert_eq!(fees["balance"], 110);
    let (st, entries) = s.get("/v1/accounts/bob/entries", &pay).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(entries["data"][0]["amount"], 10_000);
    assert_eq!(entries["data"][0]["payment_id"], body["id"]);
    let (st, list) = s.get("/v1/payments?account=bob", &pay).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_null());

    // a new deploy of a name is what the name means from then on
    let r = s
        .req(Method::POST, "/v1/plugins?name=fee", Some(&admin))
        .body(plugin_bytes("payrail_limits"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, plugins) = s.get("/v1/plugins", &admin).await;
    assert_eq!(plugins["data"][0]["digest"], plugins["data"][1]["digest"]);

    let (st, health) = s.get("/healthz", "").await;
    assert_eq!(
        (st, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let scraped = s.req(Method::GET, "/metrics", None).send().await.unwrap();
    assert_eq!(
        scraped.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let metrics = scraped.text().await.unwrap();
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    for needle in [
        "payrail_http_requests_total{method=\"POST\",route=\"/v1/payments\",status=\"201\"} 1",
        "payrail_http_request_duration_seconds_bucket{le=\"0.005\",method=\"GET\",route=\"/v1/accounts/{id}\"}",
        "payrail_payments_total{status=\"approved\"} 1",
        "payrail_plugin_fuel_used_count{digest=",
        "payrail_plugin_call_duration_seconds_count{digest=",
        "payrail_lock_wait_seconds_count 1",
        "payrail_db_pool_max_size 24",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    assert!(s.db.audit().await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_checked_and_scopes_enforced() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Admin]).await;
    let pay = s.key("t", &[Scope::Payments]).await;
    let both = s.key("t", &[Scope::Admin, Scope::Payments]).await;
    let revoked = {
        let c = s.db.pool.get().await.unwrap();
        let k = apikeys::create(&c, "t", &[Scope::Payments]).await.unwrap();
        apikeys::revoke(&c, &k.key.id).await.unwrap();
        k.secret
    };
    let before = s.written().await;
    let account = json!({"id": "a", "currency": "EUR"});
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            s.req(Method::POST, "/v1/accounts", None).json(&account),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            s.req(Method::GET, "/v1/accounts/a", Some("pr_nope")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            s.req(Method::GET, "/v1/accounts/a", None)
                .header("authorization", format!("Basic {pay}")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            s.req(
                Method::GET,
                "/v1/accounts/a",
                Some(&format!("pr_{}", "0".repeat(64))),
            ),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            s.req(Method::POST, "/v1/accounts", Some(&revoked))
                .json(&account),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        // an admin key may open accounts but not read them
        (
            s.req(Method::GET, "/v1/accounts/a", Some(&admin)),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        // an opening balance or an overdraft creates money: admin only
        (
            s.req(Method::POST, "/v1/accounts", Some(&pay))
                .json(&json!({"id": "a", "currency": "EUR", "opening_balance": 1})),
            StatusCode::FORBIDDEN,
            "admin_scope_required",
        ),
        (
            s.req(Method::POST, "/v1/accounts", Some(&pay))
                .json(&json!({"id": "a", "currency": "EUR", "allow_negative": true})),
            StatusCode::FORBIDDEN,
            "admin_scope_required",
        ),
        (
            s.req(Method::POST, "/v1/payments", Some(&admin))
                .header("idempotency-key", "k")
                .json(&transfer(1)),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            s.req(Method::POST, "/v1/plugins?name=x", Some(&pay))
                .body(plugin_bytes("payrail_fee")),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            s.req(Method::PUT, "/v1/pipelines/transfer", Some(&pay))
                .json(&json!({"steps": []})),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            s.req(Method::GET, "/v1/plugins", Some(&pay)),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (i, (r, status, code)) in cases.into_iter().enumerate() {
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), status, "case {i}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "case {i}"
        );
        if status == StatusCode::UNAUTHORIZED {
            assert!(resp.headers().contains_key("www-authenticate"), "case {i}");
        }
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], code, "case {i}: {body}");
        assert_eq!(body["status"], status.as_u16());
    }
    assert_eq!(s.written().await, before, "refused requests wrote nothing");
    // a key with both scopes may do both
    let (st, _) = s.post("/v1/accounts", &both, account.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = s.get("/v1/plugins", &both).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_see_or_touch_another_tenants_data() {
    let s = Server::start().await;
    let a_admin = s.key("tenant-a", &[Scope::Admin]).await;
    let a_pay = s.key("tenant-a", &[Scope::Payments]).await;
    let b_admin = s.key("tenant-b", &[Scope::Admin]).await;
    let b_pay = s.key("tenant-b", &[Scope::Payments]).await;
    s.samples(&a_admin).await;
    let r = s.pay(&a_pay, "a-1", transfer(1000)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let a_payment: Value = r.json().await.unwrap();
    let a_payment_id = a_payment["id"].as_str().unwrap().to_string();
    let (_, a_plugins) = s.get("/v1/plugins", &a_admin).await;
    let a_fee_digest = a_plugins["data"][0]["digest"].as_str().unwrap().to_string();
    // B gets its own account "carol" and a plugin deployed under a name
    let (st, _) = s
        .post(
            "/v1/accounts",
            &b_admin,
            json!({"id": "carol", "currency": "EUR", "opening_balance": 5000}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let before = s.written().await;

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            s.req(Method::GET, "/v1/accounts/alice", Some(&b_pay)),
            StatusCode::NOT_FOUND,
            "account_not_found",
        ),
        (
            s.req(Method::GET, "/v1/accounts/alice/entries", Some(&b_pay)),
            StatusCode::NOT_FOUND,
            "account_not_found",
        ),
        (
            s.req(Method::GET, &format!("/v1/payments/{a_payment_id}"), Some(&b_pay)),
            StatusCode::NOT_FOUND,
            "payment_not_found",
        ),
        (
            s.req(Method::GET, "/v1/payments?account=alice", Some(&b_pay)),
            StatusCode::NOT_FOUND,
            "account_not_found",
        ),
        (
            s.req(Method::GET, "/v1/pipelines/transfer", Some(&b_admin)),
            StatusCode::NOT_FOUND,
            "pipeline_not_found",
        ),
        // B pays from its own account into A's: A's account does not exist for B
        (
            s.req(Method::POST, "/v1/payments", Some(&b_pay))
                .header("idempotency-key", "b-1")
                .json(&json!({"kind": "transfer", "source": "carol", "destination": "alice", "amount": 10, "currency": "EUR"})),
            StatusCode::NOT_FOUND,
            "pipeline_not_found",
        ),
        // B cannot reference A's plugins by name or by digest
        (
            s.req(Method::PUT, "/v1/pipelines/transfer", Some(&b_admin))
                .json(&json!({"steps": [{"plugin": "fee", "config": {}}]})),
            StatusCode::NOT_FOUND,
            "plugin_not_found",
        ),
        (
            s.req(Method::PUT, "/v1/pipelines/transfer", Some(&b_admin))
                .json(&json!({"steps": [{"plugin": a_fee_digest, "config": {}}]})),
            StatusCode::NOT_FOUND,
            "plugin_not_found",
        ),
    ];
    for (i, (r, status, code)) in cases.into_iter().enumerate() {
        let (st, body) = send(r).await;
        assert_eq!(
            (st, body["code"].as_str()),
            (status, Some(code)),
            "case {i}: {body}"
        );
    }
    let (_, b_plugins) = s.get("/v1/plugins", &b_admin).await;
    assert_eq!(b_plugins["data"], json!([]), "B sees none of A's plugins");
    let (_, b_payments) = s.get("/v1/payments", &b_pay).await;
    assert_eq!(b_payments["data"], json!([]), "B sees none of A's payments");
    assert_eq!(
        s.written().await,
        before,
        "cross-tenant attempts wrote nothing"
    );

    // B deploys the same fee plugin itself (same bytes, shared storage) and
    // points its fee at A's "fees" account: the proposed posting is refused.
    let r = s
        .req(Method::POST, "/v1/plugins?name=fee", Some(&b_admin))
        .body(plugin_bytes("payrail_fee"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (st, _) = send(
        s.req(Method::PUT, "/v1/pipelines/transfer", Some(&b_admin))
            .json(&json!({"steps": [{"plugin": "fee", "config": {"fee_account": "fees", "fixed": 10}}]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .post(
            "/v1/accounts",
            &b_pay,
            json!({"id": "dave", "currency": "EUR"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let before = s.written().await;
    // with a pipeline in place, paying into A's account is still "not found"
    let r = s
        .pay(
            &b_pay,
            "b-3",
            json!({"kind": "transfer", "source": "carol", "destination": "alice", "amount": 10, "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "account_not_found"
    );
    assert_eq!(s.written().await, before);
    let a_fees_before = s.get("/v1/accounts/fees", &a_pay).await.1["balance"].clone();
    let r = s
        .pay(
            &b_pay,
            "b-2",
            json!({"kind": "transfer", "source": "carol", "destination": "dave", "amount": 100, "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "plugin_invalid_output", "{body}");
    assert_eq!(s.written().await, before);
    assert_eq!(
        s.get("/v1/accounts/fees", &a_pay).await.1["balance"],
        a_fees_before
    );
    // and a payment between B's own accounts into B's own "fees" works
    let (st, _) = s
        .post(
            "/v1/accounts",
            &b_pay,
            json!({"id": "fees", "currency": "EUR"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let r = s
        .pay(
            &b_pay,
            "b-2",
            json!({"kind": "transfer", "source": "carol", "destination": "dave", "amount": 100, "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.get("/v1/accounts/fees", &b_pay).await.1["balance"], 10);
    assert_eq!(
        s.get("/v1/accounts/fees", &a_pay).await.1["balance"],
        a_fees_before
    );
    assert!(s.db.audit().await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_rules() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Admin]).await;
    let pay = s.key("t", &[Scope::Payments]).await;
    s.samples(&admin).await;

    // missing header
    let before = s.written().await;
    let (st, body) = s.post("/v1/payments", &pay, transfer(100)).await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("idempotency_key_missing"))
    );
    assert_eq!(s.written().await, before);

    // first, then replay: same status and body, replay header, nothing new
    let first = s.pay(&pay, "\"k-1\"", transfer(100)).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let after_first = s.written().await;
    let again = s.pay(&pay, "k-1", transfer(100)).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(s.written().await, after_first, "a replay writes nothing");

    // same key, different request
    let r = s.pay(&pay, "k-1", transfer(101)).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "idempotency_key_conflict"
    );
    assert_eq!(s.written().await, after_first);

    // a decline replays as declined
    let d = s.pay(&pay, "big", transfer(500_000)).await;
    assert_eq!(d.status(), StatusCode::CREATED);
    let d: Value = d.json().await.unwrap();
    assert_eq!(d["status"], "declined");
    assert_eq!(d["decline"]["code"], "amount_too_large");
    let d2 = s.pay(&pay, "big", transfer(500_000)).await;
    assert_eq!(d2.headers()["idempotency-replayed"], "true");
    assert_eq!(d2.json::<Value>().await.unwrap(), d);

    // keys are per tenant: another tenant's identical key is a new payment
    let other_admin = s.key("u", &[Scope::Admin]).await;
    let other_pay = s.key("u", &[Scope::Payments]).await;
    s.samples(&other_admin).await;
    let r = s.pay(&other_pay, "k-1", transfer(100)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("idempotency-replayed").is_none());
    assert_ne!(r.json::<Value>().await.unwrap()["id"], first["id"]);

    // concurrent requests with one key: exactly one effect; the others get
    // the replay or 409
    let balance = s.get("/v1/accounts/bob", &pay).await.1["balance"]
        .as_i64()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let r = s
            .req(Method::POST, "/v1/payments", Some(&pay))
            .header("idempotency-key", "race")
            .json(&transfer(1000));
        tasks.spawn(async move {
            let resp = r.send().await.unwrap();
            let replayed = resp.headers().contains_key("idempotency-replayed");
            (resp.status(), replayed)
        });
    }
    let results = tasks.join_all().await;
    let fresh = results
        .iter()
        .filter(|(st, rep)| *st == StatusCode::CREATED && !rep)
        .count();
    assert_eq!(fresh, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(st, _)| *st == StatusCode::CREATED || *st == StatusCode::CONFLICT),
        "{results:?}"
    );
    assert_eq!(
        s.get("/v1/accounts/bob", &pay).await.1["balance"]
            .as_i64()
            .unwrap(),
        balance + 1000
    );

    // a request whose key another transaction holds right now: 409, nothing
    // written; once that transaction ends, the key is free again
    let mut holder = s.db.pool.get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "select pg_advisory_xact_lock($1)",
        &[&payrail::locks::idempotency_key("t", "held")],
    )
    .await
    .unwrap();
    let before = s.written().await;
    let r = s.pay(&pay, "held", transfer(100)).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "idempotency_key_in_progress"
    );
    assert_eq!(s.written().await, before);
    tx.rollback().await.unwrap();
    let r = s.pay(&pay, "held", transfer(100)).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // expiry: the reaper removes finished keys past expires_at; reusing such
    // a key is a clear 409, never a 500 and never a second charge
    let c = s.db.pool.get().await.unwrap();
    c.execute(
        "update payrail.idempotency_keys set expires_at = now() - interval '1 second' where key = 'k-1' and tenant = 't'",
        &[],
    )
    .await
    .unwrap();
    let reaped = api::reap_expired_keys(&s.db.pool, 1000, 10).await.unwrap();
    assert_eq!(reaped, 1);
    let before = s.written().await;
    let r = s.pay(&pay, "k-1", transfer(100)).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let problem = r.json::<Value>().await.unwrap();
    assert_eq!(problem["code"], "idempotency_key_expired");
    let first_id = first["id"].as_str().unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains(first_id),
        "the problem names the payment the key made ({first_id}): {problem}"
    );
    assert_eq!(s.written().await, before);
    assert!(s.db.audit().await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_get_a_4xx_problem_and_write_nothing() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Admin]).await;
    let pay = s.key("t", &[Scope::Payments]).await;
    s.samples(&admin).await;
    let before = s.written().await;
    let p = |body: Value| {
        s.req(Method::POST, "/v1/payments", Some(&pay))
            .header("idempotency-key", format!("k{}", rand::random::<u64>()))
            .json(&body)
    };
    let raw = |path: &str, body: &'static str| {
        s.req(Method::POST, path, Some(&pay))
            .header("idempotency-key", format!("k{}", rand::random::<u64>()))
            .header("content-type", "application/json")
            .body(body)
    };
    let with = |field: &str, v: Value| {
        let mut t = transfer(100);
        t[field] = v;
        p(t)
    };
    let without = |field: &str| {
        let mut t = transfer(100);
        t.as_object_mut().unwrap().remove(field);
        p(t)
    };
    let acct = |body: Value| s.req(Method::POST, "/v1/accounts", Some(&pay)).json(&body);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "not json",
            raw("/v1/payments", "{nope"),
            400,
            "invalid_json",
        ),
        (
            "truncated json",
            raw("/v1/payments", "{\"kind\":"),
            400,
            "invalid_json",
        ),
        ("empty body", raw("/v1/payments", ""), 400, "invalid_json"),
        ("json array", raw("/v1/payments", "[]"), 400, "invalid_body"),
        (
            "amount as string",
            with("amount", json!("100")),
            400,
            "invalid_body",
        ),
        (
            "amount fractional",
            with("amount", json!(1.5)),
            400,
            "invalid_body",
        ),
        (
            "amount zero",
            with("amount", json!(0)),
            400,
            "invalid_amount",
        ),
        (
            "amount negative",
            with("amount", json!(-5)),
            400,
            "invalid_amount",
        ),
        (
            "amount over i64",
            raw(
                "/v1/payments",
                r#"{"kind":"transfer","source":"alice","destination":"bob","amount":9223372036854775808,"currency":"EUR"}"#,
            ),
            400,
            "invalid_body",
        ),
        (
            "amount null",
            with("amount", Value::Null),
            400,
            "invalid_body",
        ),
        ("missing amount", without("amount"), 400, "invalid_body"),
        ("missing currency", without("currency"), 400, "invalid_body"),
        (
            "unknown currency",
            with("currency", json!("XYZ")),
            400,
            "unknown_currency",
        ),
        (
            "lowercase currency",
            with("currency", json!("eur")),
            400,
            "unknown_currency",
        ),
        (
            "currency mismatch",
            with("currency", json!("USD")),
            422,
            "currency_mismatch",
        ),
        (
            "unknown field",
            with("extra", json!(1)),
            400,
            "invalid_body",
        ),
        (
            "same account",
            with("destination", json!("alice")),
            422,
            "same_account",
        ),
        (
            "id with spaces",
            with("source", json!("al ice")),
            400,
            "invalid_id",
        ),
        (
            "id too long",
            with("source", json!("a".repeat(65))),
            400,
            "invalid_id",
        ),
        (
            "equity account",
            with("source", json!("equity:EUR")),
            400,
            "invalid_id",
        ),
        (
            "unknown account",
            with("source", json!("nobody")),
            404,
            "account_not_found",
        ),
        (
            "unknown kind",
            with("kind", json!("refund")),
            404,
            "pipeline_not_found",
        ),
        (
            "metadata not strings",
            with("metadata", json!({"a": 1})),
            400,
            "invalid_body",
        ),
        (
            "metadata too big",
            with("metadata", json!({"a": "x".repeat(600)})),
            400,
            "invalid_metadata",
        ),
        (
            "oversized body",
            with("metadata", json!({"a": "x".repeat(JSON_LIMIT)})),
            413,
            "body_too_large",
        ),
        (
            "wrong content type",
            s.req(Method::POST, "/v1/payments", Some(&pay))
                .header("idempotency-key", "ct")
                .header("content-type", "text/plain")
                .body(transfer(1).to_string()),
            415,
            "unsupported_media_type",
        ),
        (
            "empty idempotency key",
            s.req(Method::POST, "/v1/payments", Some(&pay))
                .header("idempotency-key", "")
                .json(&transfer(1)),
            400,
            "invalid_idempotency_key",
        ),
        (
            "idempotency key too long",
            s.req(Method::POST, "/v1/payments", Some(&pay))
                .header("idempotency-key", "k".repeat(256))
                .json(&transfer(1)),
            400,
            "invalid_idempotency_key",
        ),
        (
            "two idempotency keys",
            s.req(Method::POST, "/v1/payments", Some(&pay))
                .header("idempotency-key", "a")
                .header("idempotency-key", "b")
                .json(&transfer(1)),
            400,
            "invalid_idempotency_key",
        ),
        (
            "missing auth",
            s.req(Method::POST, "/v1/payments", None)
                .header("idempotency-key", "x")
                .json(&transfer(1)),
            401,
            "unauthorized",
        ),
        (
            "wrong scope",
            s.req(Method::POST, "/v1/payments", Some(&admin))
                .header("idempotency-key", "x")
                .json(&transfer(1)),
            403,
            "forbidden",
        ),
        (
            "account: negative opening",
            acct(json!({"id": "n", "currency": "EUR", "opening_balance": -1})),
            400,
            "invalid_amount",
        ),
        (
            "account: unknown currency",
            acct(json!({"id": "n", "currency": "ABC"})),
            400,
            "unknown_currency",
        ),
        (
            "account: bad id",
            acct(json!({"id": "a/b", "currency": "EUR"})),
            400,
            "invalid_id",
        ),
        (
            "account: equity id",
            acct(json!({"id": "equity:EUR", "currency": "EUR"})),
            400,
            "invalid_id",
        ),
        (
            "account: exists",
            acct(json!({"id": "alice", "currency": "EUR"})),
            409,
            "already_exists",
        ),
        (
            "account: unknown field",
            acct(json!({"id": "n", "currency": "EUR", "balance": 5})),
            400,
            "invalid_body",
        ),
        (
            "account: allow_negative not bool",
            acct(json!({"id": "n", "currency": "EUR", "allow_negative": "yes"})),
            400,
            "invalid_body",
        ),
        (
            "plugin: not wasm",
            s.req(Method::POST, "/v1/plugins?name=junk", Some(&admin))
                .body("garbage"),
            400,
            "plugin_invalid",
        ),
        (
            "plugin: empty",
            s.req(Method::POST, "/v1/plugins?name=junk", Some(&admin)),
            400,
            "plugin_invalid",
        ),
        (
            "plugin: no name",
            s.req(Method::POST, "/v1/plugins", Some(&admin))
                .body(plugin_bytes("payrail_fee")),
            400,
            "invalid_query",
        ),
        (
            "plugin: bad name",
            s.req(Method::POST, "/v1/plugins?name=a%20b", Some(&admin))
                .body(plugin_bytes("payrail_fee")),
            400,
            "invalid_id",
        ),
        (
            "plugin: too large",
            s.req(Method::POST, "/v1/plugins?name=big", Some(&admin))
                .body(vec![0u8; 2 * 1024 * 1024 + 1]),
            413,
            "plugin_too_large",
        ),
        (
            "pipeline: unknown plugin",
            s.req(Method::PUT, "/v1/pipelines/transfer", Some(&admin))
                .json(&json!({"steps": [{"plugin": "nope"}]})),
            404,
            "plugin_not_found",
        ),
        (
            "pipeline: config not object",
            s.req(Method::PUT, "/v1/pipelines/transfer", Some(&admin))
                .json(&json!({"steps": [{"plugin": "fee", "config": [1]}]})),
            400,
            "invalid_config",
        ),
        (
            "pipeline: too many steps",
            s.req(Method::PUT, "/v1/pipelines/transfer", Some(&admin))
                .json(&json!({"steps": vec![json!({"plugin": "fee"}); 17]})),
            400,
            "too_many_steps",
        ),
        (
            "pipeline: unknown field",
            s.req(Method::PUT, "/v1/pipelines/transfer", Some(&admin))
                .json(&json!({"steps": [], "x": 1})),
            400,
            "invalid_body",
        ),
        (
            "pipeline: bad kind",
            s.req(Method::PUT, "/v1/pipelines/a%20b", Some(&admin))
                .json(&json!({"steps": []})),
            400,
            "invalid_id",
        ),
        (
            "list: limit 0",
            s.req(Method::GET, "/v1/payments?limit=0", Some(&pay)),
            400,
            "invalid_limit",
        ),
        (
            "list: limit huge",
            s.req(
                Method::GET,
                "/v1/accounts/alice/entries?limit=100000",
                Some(&pay),
            ),
            400,
            "invalid_limit",
        ),
        (
            "list: limit not a number",
            s.req(Method::GET, "/v1/payments?limit=ten", Some(&pay)),
            400,
            "invalid_query",
        ),
        (
            "list: bad cursor",
            s.req(Method::GET, "/v1/payments?cursor=zz", Some(&pay)),
            422,
            "invalid_cursor",
        ),
        (
            "list: unknown param",
            s.req(Method::GET, "/v1/payments?acount=alice", Some(&pay)),
            400,
            "invalid_query",
        ),
        (
            "payment: not a uuid",
            s.req(Method::GET, "/v1/payments/12", Some(&pay)),
            404,
            "payment_not_found",
        ),
        (
            "no such route",
            s.req(Method::GET, "/v1/nothing", Some(&pay)),
            404,
            "not_found",
        ),
        (
            "wrong method",
            s.req(Method::DELETE, "/v1/accounts", Some(&pay)),
            405,
            "method_not_allowed",
        ),
    ];
    assert!(cases.len() >= 30);
    for (name, r, status, code) in cases {
        let resp = r.send().await.unwrap();
        let st = resp.status().as_u16();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (st, body["code"].as_str()),
            (status, Some(code)),
            "{name}: {body}"
        );
        assert_eq!(ct, "application/problem+json", "{name}");
        assert_eq!(body["status"], status, "{name}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        assert_eq!(s.written().await, before, "{name} wrote something");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_walks_every_item_once() {
    let s = Server::start().await;
    let admin = s.key("t", &[Scope::Admin]).await;
    let pay = s.key("t", &[Scope::Payments]).await;
    s.samples(&admin).await;
    for i in 0..7 {
        let r = s.pay(&pay, &format!("p{i}"), transfer(100 + i)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    async fn walk(s: &Server, key: &str, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=3&cursor={c}"),
                None => format!("{path}{sep}limit=3"),
            };
            let (st, page) = s.get(&url, key).await;
            assert_eq!(st, StatusCode::OK, "{page}");
            let data = page["data"].as_array().unwrap();
            assert!(data.len() <= 3);
            items.extend(data.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return items,
            }
        }
        panic!("pagination did not end");
    }
    let payments = walk(&s, &pay, "/v1/payments?account=alice").await;
    let amounts: Vec<i64> = payments
        .iter()
        .map(|p| p["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(
        amounts,
        (100..107).rev().collect::<Vec<_>>(),
        "newest first"
    );
    assert!(
        payments
            .iter()
            .all(|p| p["postings"].as_array().unwrap().len() == 4)
    );
    let all = walk(&s, &pay, "/v1/payments").await;
    assert_eq!(all.len(), 7);
    // alice: the opening balance, then one debit and one fee per payment
    let entries = walk(&s, &pay, "/v1/accounts/alice/entries").await;
    assert_eq!(entries.len(), 1 + 7 * 2);
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    let sum: i64 = entries.iter().map(|e| e["amount"].as_i64().unwrap()).sum();
    let balance = s.get("/v1/accounts/alice", &pay).await.1["balance"]
        .as_i64()
        .unwrap();
    assert_eq!(sum, balance);
    // each entry carries the balance after it: the newest the balance now,
    // each older one the next newer's less that entry's amount
    assert_eq!(entries[0]["balance_after"], balance);
    for w in entries.windows(2) {
        let after = |e: &Value| e["balance_after"].as_i64().unwrap();
        assert_eq!(
            after(&w[1]),
            after(&w[0]) - w[0]["amount"].as_i64().unwrap(),
            "{w:?}"
        );
    }
    assert_eq!(
        entries.last().unwrap()["balance_after"],
        entries.last().unwrap()["amount"]
    );
    // and back: from the last page, prev_cursor walks to the first
    let mut back = Vec::new();
    let (_, mut pg) = s.get("/v1/payments?limit=3", &pay).await;
    while let Some(c) = pg["next_cursor"].as_str().map(str::to_string) {
        pg = s
            .get(&format!("/v1/payments?limit=3&cursor={c}"), &pay)
            .await
            .1;
    }
    loop {
        let mut d: Vec<Value> = pg["data"].as_array().unwrap().clone();
        d.reverse();
        back.extend(d);
        let Some(c) = pg["prev_cursor"].as_str().map(str::to_string) else {
            break;
        };
        pg = s
            .get(&format!("/v1/payments?limit=3&cursor={c}"), &pay)
            .await
            .1;
    }
    back.reverse();
    assert_eq!(back, all, "the same payments walking back");
    // a cursor of one listing is refused by another
    let (_, page) = s.get("/v1/accounts/alice/entries?limit=1", &pay).await;
    let c = page["next_cursor"].as_str().unwrap();
    let (st, body) = s.get(&format!("/v1/payments?cursor={c}"), &pay).await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_cursor"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_readyz_checks_the_schema() {
    let s = Server::start().await;
    let (st, doc) = s.get("/openapi.json", "").await;
    assert_eq!(st, StatusCode::OK);
    // every route the server has, as (method, path)
    let routes = [
        ("post", "/v1/accounts"),
        ("get", "/v1/accounts"),
        ("get", "/v1/accounts/{id}"),
        ("get", "/v1/accounts/{id}/entries"),
        ("get", "/v1/accounts/{id}/balance"),
        ("get", "/v1/accounts/{id}/statement"),
        ("post", "/v1/payments"),
        ("get", "/v1/payments"),
        ("get", "/v1/payments/{id}"),
        ("get", "/v1/payments/{id}/calls"),
        ("get", "/v1/payments/{id}/events"),
        ("post", "/v1/payments/{id}/capture"),
        ("post", "/v1/payments/{id}/void"),
        ("post", "/v1/payments/{id}/replay"),
        ("post", "/v1/replay"),
        ("get", "/v1/holds"),
        ("post", "/v1/plugins"),
        ("get", "/v1/plugins"),
        ("get", "/v1/plugins/{name}"),
        ("get", "/v1/pipelines"),
        ("put", "/v1/pipelines/{kind}"),
        ("get", "/v1/pipelines/{kind}"),
        ("get", "/v1/pipelines/{kind}/history"),
        ("post", "/v1/pipelines/{kind}/rollback"),
        ("get", "/v1/pipelines/{kind}/shadow"),
        ("post", "/v1/pipelines/{kind}/shadow/promote"),
        ("put", "/v1/pipelines/{kind}/steps/{step}/candidate"),
        ("get", "/v1/outbox"),
        ("get", "/v1/outbox/dead-letters"),
        ("post", "/v1/outbox/dead-letters/retry"),
        ("get", "/v1/api-keys"),
        ("post", "/v1/api-keys"),
        ("delete", "/v1/api-keys/{id}"),
        ("get", "/v1/whoami"),
        ("get", "/v1/audit-log"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        routes.len(),
        "no undocumented extras: {paths:?}"
    );
    for (method, path) in routes {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from openapi.json"
        );
        // and the server really has it: never the router's own 404/405
        let concrete = path.replace("{id}", "x").replace("{kind}", "x");
        let (_, body) = send(s.req(method.to_uppercase().parse().unwrap(), &concrete, None)).await;
        assert!(
            !matches!(
                body["code"].as_str(),
                Some("not_found" | "method_not_allowed")
            ),
            "{method} {path} is documented but not routed: {body}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let (st, ready) = s.get("/readyz", "").await;
    assert_eq!(
        (st, ready["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let c = s.db.pool.get().await.unwrap();
    c.execute(
        "delete from payrail.schema_migrations where version = (select max(version) from payrail.schema_migrations)",
        &[],
    )
    .await
    .unwrap();
    let r = s.req(Method::GET, "/readyz", None).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "migrations_pending"
    );
    s.stop().await;
}

/// The real binary: config check, then serve; SIGTERM while a payment is in
/// flight lets it finish, refuses new connections, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_drains_in_flight_requests_on_sigterm_and_exits_0() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let db = TestDb::new().await;
    let bin = env!("CARGO_BIN_EXE_payrail");

    // --check-config: valid config printed with the password redacted
    let dir = std::env::temp_dir().join(format!("payrail-cfg-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("payrail.toml");
    std::fs::write(
        &cfg,
        "[database]\nurl = \"postgres://u:hunter2@localhost/x\"\n[server]\nshutdown_grace_ms = 20000\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["serve", "--check-config", "--config"])
        .arg(&cfg)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("u:***@localhost") && !stdout.contains("hunter2"),
        "{stdout}"
    );
    std::fs::write(&cfg, "[server]\nlisen = \"x\"\n").unwrap();
    let out = Command::new(bin)
        .args(["serve", "--check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid_config") && stderr.contains("lisen"),
        "{stderr}"
    );
    std::fs::write(&cfg, "[server]\nshutdown_grace_ms = 20000\n").unwrap();

    let pay = {
        let c = db.pool.get().await.unwrap();
        apikeys::create(&c, "default", &[Scope::Payments])
            .await
            .unwrap()
            .secret
    };
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;

    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("DATABASE_URL", &db.url)
        .env("PAYRAIL_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(addr) = line.strip_prefix("payrail listening on ") {
            break addr.to_string();
        }
    };
    let http = reqwest::Client::new();
    let (st, _) = send(http.get(format!("{base}/readyz"))).await;
    assert_eq!(st, StatusCode::OK);

    // hold alice's advisory lock so the payment waits inside the server
    let mut locker = db.pool.get().await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "select pg_advisory_xact_lock($1)",
        &[&payrail::locks::account_key("default", "alice")],
    )
    .await
    .unwrap();
    let req = http
        .post(format!("{base}/v1/payments"))
        .bearer_auth(&pay)
        .header("idempotency-key", "in-flight")
        .json(&transfer(1000));
    let in_flight = tokio::spawn(async move { req.send().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // no new connections while draining
    let refused = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );
    assert!(
        !in_flight.is_finished(),
        "the payment is still waiting for its lock"
    );
    tx.commit().await.unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "approved");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let logs = logs.join().unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert_eq!(db.balance("bob").await, 1000);
    // JSON logs: one object per line, request spans carry tenant and payment
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "shut down cleanly"),
        "{logs}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["route"] == "/v1/payments" && l["span"]["payment_id"].is_string()),
        "{logs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_requests_time_out_and_excess_requests_are_shed() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let s = Server::start_with(
        db,
        ApiLimits {
            request_timeout: Duration::from_millis(700),
            max_in_flight: 1,
            ..limits()
        },
    )
    .await;
    let pay = s.key("default", &[Scope::Payments]).await;
    let before = s.written().await;
    // alice's lock is held: the payment waits inside the server
    let mut locker = s.db.pool.get().await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "select pg_advisory_xact_lock($1)",
        &[&payrail::locks::account_key("default", "alice")],
    )
    .await
    .unwrap();
    let slow = s
        .req(Method::POST, "/v1/payments", Some(&pay))
        .header("idempotency-key", "slow")
        .json(&transfer(100));
    let slow = tokio::spawn(async move { send(slow).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // the one in-flight slot is taken
    let r = s
        .req(Method::GET, "/v1/accounts/bob", Some(&pay))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "overloaded");
    let (st, body) = slow.await.unwrap();
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("request_timeout"))
    );
    tx.rollback().await.unwrap();
    drop(locker);
    // the abandoned payment rolled back; a retry with its key runs it
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.written().await, before);
    let r = s.pay(&pay, "slow", transfer(100)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("idempotency-replayed").is_none());
    let scraped = s.req(Method::GET, "/metrics", None).send().await.unwrap();
    assert_eq!(
        scraped.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let metrics = scraped.text().await.unwrap();
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(
        metrics.contains("payrail_http_overloaded_total 1"),
        "{metrics}"
    );
    s.stop().await;
}

/// `payrail apikey create|list|revoke` as an operator runs them, against a
/// server using the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apikey_commands_create_list_and_revoke_keys() {
    use std::process::Command;
    let s = Server::start().await;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_payrail"))
            .args(args)
            .env("DATABASE_URL", &s.db.url)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, key, err) = run(&[
        "apikey",
        "create",
        "--tenant",
        "acme",
        "--scopes",
        "admin,payments",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(key.starts_with("pr_") && key.len() == 67, "{key}");
    let (st, _) = s
        .post("/v1/accounts", &key, json!({"id": "a", "currency": "EUR"}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = s.get("/v1/plugins", &key).await;
    assert_eq!(st, StatusCode::OK);
    let (code, list, _) = run(&["apikey", "list", "--tenant", "acme"]);
    assert_eq!(code, Some(0));
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["scopes"], json!(["admin", "payments"]));
    assert!(!list.to_string().contains(&key), "secrets are never listed");
    let c = s.db.pool.get().await.unwrap();
    let stored: String = c
        .query_one("select hash from payrail.api_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        apikeys::hash_secret(&key),
        "only the hash is stored"
    );
    let id = list[0]["id"].as_str().unwrap();
    let (code, _, err) = run(&["apikey", "revoke", id]);
    assert_eq!(code, Some(0), "{err}");
    // The server may trust its cached lookup for up to its TTL (1 s).
    let refused_by = Instant::now() + limits().api_key_cache + Duration::from_secs(5);
    loop {
        let (st, body) = s.get("/v1/accounts/a", &key).await;
        if st == StatusCode::UNAUTHORIZED {
            assert_eq!(body["code"], "unauthorized");
            break;
        }
        assert_eq!(st, StatusCode::OK, "{body}");
        assert!(Instant::now() < refused_by, "the revoked key still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, err) = run(&["apikey", "create", "--tenant", "acme", "--scopes", "root"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid_scope"), "{err}");
    let (code, _, err) = run(&["apikey", "revoke", "key_0000000000000000"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("api_key_not_found"), "{err}");
    s.stop().await;
}

/// A host trusts a key it looked up for `api_key_cache` and no longer: a
/// key revoked meanwhile (by another host, straight in the database) keeps
/// working until the lookup is that old, then is refused; with no cache it
/// is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_key_works_at_most_the_key_cache_ttl_longer() {
    // An authorized request for an account that does not exist is 404.
    let ttl = Duration::from_millis(1500);
    let s = Server::start_with(
        TestDb::new().await,
        ApiLimits {
            api_key_cache: ttl,
            ..limits()
        },
    )
    .await;
    let c = s.db.pool.get().await.unwrap();
    let key = apikeys::create(&c, "t", &[Scope::Payments]).await.unwrap();
    let before_lookup = Instant::now();
    let (st, _) = s.get("/v1/accounts/none", &key.secret).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let after_lookup = Instant::now();
    apikeys::revoke(&c, &key.key.id).await.unwrap();
    let (st, _) = s.get("/v1/accounts/none", &key.secret).await;
    if after_lookup.elapsed() < ttl {
        assert_eq!(st, StatusCode::NOT_FOUND, "answered from the cache");
    }
    let refused_at = loop {
        let (st, body) = s.get("/v1/accounts/none", &key.secret).await;
        let now = Instant::now();
        if st == StatusCode::UNAUTHORIZED {
            break now;
        }
        assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
        assert!(
            now < after_lookup + ttl + Duration::from_secs(5),
            "the revoked key still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused_at >= before_lookup + ttl,
        "refused before the cached lookup expired"
    );
    s.stop().await;

    let s = Server::start_with(
        TestDb::new().await,
        ApiLimits {
            api_key_cache: Duration::ZERO,
            ..limits()
        },
    )
    .await;
    let c = s.db.pool.get().await.unwrap();
    let key = apikeys::create(&c, "t", &[Scope::Payments]).await.unwrap();
    let (st, _) = s.get("/v1/accounts/none", &key.secret).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    apikeys::revoke(&c, &key.key.id).await.unwrap();
    let (st, _) = s.get("/v1/accounts/none", &key.secret).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "no cache: refused at once");
    s.stop().await;
}

/// Shadow mode over HTTP: a step's candidate and limits set with PUT,
/// payments unaffected, the report at GET /v1/pipelines/{kind}/shadow;
/// another tenant sees no such pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_report_over_http() {
    let s = Server::start().await;
    let admin = s.key("acme", &[Scope::Admin, Scope::Payments]).await;
    s.samples(&admin).await;
    let r = s
        .req(
            Method::POST,
            "/v1/plugins?name=hostile&version=9.9",
            Some(&admin),
        )
        .header("content-type", "application/wasm")
        .body(plugin_bytes("payrail_hostile"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (st, p) = send(
        s.req(Method::PUT, "/v1/pipelines/transfer", Some(&admin))
            .json(&json!({"steps": [
                {"plugin": "limits", "config": {"max_amount": 100_000}, "limits": {"fuel": 5_000_000}},
                {"plugin": "fee", "config": {"fee_account": "fees", "percent_bps": 100, "fixed": 10},
                 "candidate": "hostile"}
            ]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["steps"][1]["candidate"]["plugin"], "hostile");
    assert_eq!(p["steps"][0]["limits"]["fuel"], 5_000_000);
    for i in 0..2 {
        let r = s.pay(&admin, &format!("k{i}"), transfer(1_000)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let (st, report) = s.get("/v1/pipelines/transfer/shadow", &admin).await;
    assert_eq!(st, StatusCode::OK, "{report}");
    let step = &report["steps"][0];
    assert_eq!(step["step"], 1);
    assert_eq!(
        (step["calls"].as_i64(), step["disagree"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(
        step["examples"][0]["candidate_error"]
            .as_str()
            .unwrap()
            .starts_with("plugin_error:")
    );
    let other = s.key("other", &[Scope::Admin]).await;
    let (st, body) = s.get("/v1/pipelines/transfer/shadow", &other).await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("pipeline_not_found"))
    );
    s.stop().await;
}

/// Every response carries `x-request-id`: the caller's when it is short and
/// plain, a fresh UUID otherwise (absent, too long, or with spaces), also
/// on errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id() {
    let s = Server::start().await;
    // GET `path` with an optional caller id: (status, the response's id)
    let get = |path: &'static str, id: Option<String>| {
        let mut r = s.http.get(format!("{}{path}", s.base));
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        async move {
            let resp = r.send().await.unwrap();
            let id = resp
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_string())
                .expect("x-request-id on every response");
            (resp.status(), id)
        }
    };
    let is_uuid = |v: &str| uuid::Uuid::parse_str(v).is_ok();

    let (st, id) = get("/healthz", Some("caller-42".into())).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(id, "caller-42");

    let (_, fresh) = get("/healthz", None).await;
    assert!(is_uuid(&fresh), "{fresh}");
    let (_, again) = get("/healthz", None).await;
    assert_ne!(again, fresh, "a fresh id per request");

    for bad in ["a".repeat(129), "two words".to_string()] {
        let (_, id) = get("/healthz", Some(bad.clone())).await;
        assert!(is_uuid(&id), "{bad:?} replaced by a UUID, got {id}");
    }

    // errors too: an unknown route and a request without a key
    let (st, id) = get("/no-such-route", Some("caller-43".into())).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(id, "caller-43");
    let (st, id) = get("/v1/payments", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(is_uuid(&id), "{id}");
}
