//! The plugin platform: deterministic replay (and tamper detection),
//! versioned pipelines with history and rollback, shadow candidates and
//! their promotion, per-step limits.

use crate::common;

use common::{TestDb, engine, plugin_bytes, transfer};
use payrail::engine::{PluginLimitOverrides, PluginLimits};
use payrail::model::{DEFAULT_TENANT, PaymentStatus};
use payrail::registry::{self, StepSpec};
use payrail::replay::{self, Verdict};

/// The same component with a custom section appended: same behaviour, a
/// different digest (a "new version" of a plugin).
pub fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"payrail-test-variant";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    assert!(payload.len() < 128, "one-byte LEB length");
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

fn spec(plugin: &str, config: serde_json::Value) -> StepSpec {
    StepSpec {
        plugin: plugin.into(),
        config,
        candidate: None,
        limits: None,
    }
}

fn limits_cfg() -> serde_json::Value {
    serde_json::json!({"max_amount": 100_000, "allowed_currencies": ["EUR", "JPY"]})
}

fn fee_cfg() -> serde_json::Value {
    serde_json::json!({"fee_account": "fees", "percent_bps": 100, "fixed": 10, "min": 20, "max": 1000})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_matches_history_and_detects_a_tampered_journal() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let mut ids = Vec::new();
    for (i, amount) in [1_000, 7_777, 500_000].iter().enumerate() {
        let out = p
            .pay(
                DEFAULT_TENANT,
                &format!("k{i}"),
                &transfer("alice", "bob", *amount),
            )
            .await
            .unwrap();
        ids.push(out.response.id.parse::<uuid::Uuid>().unwrap());
    }
    let c = db.pool.get().await.unwrap();
    let base = PluginLimits::default();
    for id in &ids {
        let r = replay::replay_payment(&c, &engine(), &base, DEFAULT_TENANT, *id)
            .await
            .unwrap();
        assert!(r.matched, "{r:?}");
        assert!(!r.calls.is_empty());
        for call in &r.calls {
            // same engine build: fuel is deterministic too
            assert_eq!(call.fuel_replayed, Some(call.fuel_journaled as u64));
        }
    }
    // the declined payment ran only `limits`
    let declined = replay::replay_payment(&c, &engine(), &base, DEFAULT_TENANT, ids[2])
        .await
        .unwrap();
    assert_eq!(declined.calls.len(), 1);

    let summary = replay::replay_range(
        &c,
        &engine(),
        &base,
        DEFAULT_TENANT,
        "2000-01-01T00:00:00Z",
        "2999-01-01T00:00:00Z",
        100,
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.payments, summary.calls, summary.mismatched_payments),
        (3, 5, 0)
    );

    // Tamper with the fee step's journaled output of the second payment.
    let n = c
        .execute(
            "update payrail.plugin_calls
             set output = jsonb_set(output::jsonb, '{postings,0,amount}', '-1')::json
             where payment_id = $1 and step = 1",
            &[&ids[1]],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let r = replay::replay_payment(&c, &engine(), &base, DEFAULT_TENANT, ids[1])
        .await
        .unwrap();
    assert!(!r.matched);
    assert_eq!(r.calls[0].verdict, Verdict::Match, "step 0 untouched");
    let Verdict::OutputMismatch { differences } = &r.calls[1].verdict else {
        panic!("expected an output mismatch: {:?}", r.calls[1]);
    };
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert_eq!(differences[0].path, "/postings/0/amount");
    assert_eq!(differences[0].journaled, serde_json::json!(-1));
    // the real fee of 7,777: 1% (77.77, rounded up) + 10 = 88, a debit
    assert_eq!(differences[0].replayed, serde_json::json!(-88));

    // Tamper with an input: the digest no longer adds up.
    c.execute(
        "update payrail.plugin_calls
         set input = jsonb_set(input::jsonb, '{payment,amount}', '1')::json
         where payment_id = $1 and step = 0",
        &[&ids[0]],
    )
    .await
    .unwrap();
    let r = replay::replay_payment(&c, &engine(), &base, DEFAULT_TENANT, ids[0])
        .await
        .unwrap();
    assert!(
        matches!(&r.calls[0].verdict, Verdict::JournalTampered { detail } if detail.contains("hashes to")),
        "{:?}",
        r.calls[0]
    );

    let summary = replay::replay_range(
        &c,
        &engine(),
        &base,
        DEFAULT_TENANT,
        "2000-01-01T00:00:00Z",
        "2999-01-01T00:00:00Z",
        100,
    )
    .await
    .unwrap();
    assert_eq!(summary.mismatched_payments, 2);
    assert_eq!(summary.mismatches.len(), 2);
    // an unknown payment, a bad time
    let err = replay::replay_payment(&c, &engine(), &base, DEFAULT_TENANT, uuid::Uuid::nil())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "payment_not_found");
    let err = replay::replay_range(
        &c,
        &engine(),
        &base,
        DEFAULT_TENANT,
        "yesterday-ish",
        "x",
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "invalid_time");

    // The CLI: exit 0 on a match, 1 on a difference.
    let bin = env!("CARGO_BIN_EXE_payrail");
    let run = |id: &uuid::Uuid| {
        std::process::Command::new(bin)
            .args(["replay", &id.to_string()])
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap()
    };
    let ok = run(&ids[2]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let bad = run(&ids[1]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let out: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(out["calls"][1]["verdict"], "output_mismatch");
    assert_eq!(
        out["calls"][1]["differences"][0]["path"],
        "/postings/0/amount"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelines_are_versioned_with_history_and_rollback() {
    let db = TestDb::new().await;
    db.samples().await; // transfer v1: limits (100,000) -> fee
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let c = db.pool.get().await.unwrap();
    let v2 = registry::set_pipeline(
        &c,
        &engine(),
        DEFAULT_TENANT,
        "transfer",
        &[spec("limits", serde_json::json!({"max_amount": 50}))],
    )
    .await
    .unwrap();
    assert_eq!(v2.version, 2);
    let p = db.processor();
    let out = p
        .pay(DEFAULT_TENANT, "a", &transfer("alice", "bob", 100))
        .await
        .unwrap();
    assert_eq!(out.response.status, PaymentStatus::Declined);

    let v3 = registry::rollback_pipeline(&c, DEFAULT_TENANT, "transfer", None)
        .await
        .unwrap();
    assert_eq!(v3.version, 3);
    let v1 = &registry::pipeline_history(&c, DEFAULT_TENANT, "transfer", 10)
        .await
        .unwrap()[2];
    assert_eq!(v1.version, 1);
    assert_eq!(v3.steps, v1.steps, "v3 is v1's steps");
    let out = p
        .pay(DEFAULT_TENANT, "b", &transfer("alice", "bob", 100))
        .await
        .unwrap();
    assert_eq!(out.response.status, PaymentStatus::Approved);

    // every payment records the version and the exact digests it ran
    let rows = c
        .query(
            "select idempotency_key, pipeline from payrail.payments order by idempotency_key",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<serde_json::Value> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(recorded[0]["version"], 2);
    assert_eq!(recorded[0]["digests"].as_array().unwrap().len(), 1);
    assert_eq!(recorded[1]["version"], 3);
    assert_eq!(
        recorded[1]["digests"],
        serde_json::json!([v1.steps[0].digest, v1.steps[1].digest])
    );

    let history = registry::pipeline_history(&c, DEFAULT_TENANT, "transfer", 10)
        .await
        .unwrap();
    let notes: Vec<(i32, &str)> = history
        .iter()
        .map(|h| (h.version, h.note.as_str()))
        .collect();
    assert_eq!(notes, [(3, "rollback to v1"), (2, "set"), (1, "set")]);
    // explicit version; out of range; unknown kind
    let v4 = registry::rollback_pipeline(&c, DEFAULT_TENANT, "transfer", Some(2))
        .await
        .unwrap();
    assert_eq!((v4.version, v4.steps.len()), (4, 1));
    for bad in [0, 5, 99] {
        let err = registry::rollback_pipeline(&c, DEFAULT_TENANT, "transfer", Some(bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_version", "{bad}");
    }
    let err = registry::pipeline_history(&c, DEFAULT_TENANT, "nope", 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "pipeline_not_found");

    // plugin versions: v1, v2 by default, or a label
    let fee2 = variant(&plugin_bytes("payrail_fee"), "2");
    registry::deploy_plugin(&c, &engine(), "fee", fee2)
        .await
        .unwrap();
    registry::deploy_plugin_versioned(
        &c,
        &engine(),
        DEFAULT_TENANT,
        "limits",
        Some("2.0.0-rc1"),
        None,
        variant(&plugin_bytes("payrail_limits"), "x"),
    )
    .await
    .unwrap();
    let list = registry::list_plugins(&c, DEFAULT_TENANT, None, (">", "asc"), 10)
        .await
        .unwrap();
    let versions: Vec<(&str, Option<&str>)> = list
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_deref()))
        .collect();
    assert_eq!(
        versions,
        [("fee", Some("v2")), ("limits", Some("2.0.0-rc1"))]
    );

    // The CLI history/rollback commands.
    let bin = env!("CARGO_BIN_EXE_payrail");
    let out = std::process::Command::new(bin)
        .args(["pipeline", "rollback", "transfer", "1"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new(bin)
        .args(["pipeline", "history", "transfer"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h[0]["version"], 5);
    assert_eq!(h[0]["note"], "rollback to v1");
    assert_eq!(h.as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_candidates_are_journaled_never_affect_payments_and_can_be_promoted() {
    let db = TestDb::new().await;
    db.deploy("payrail_limits", "limits").await;
    db.deploy("payrail_fee", "fee").await;
    db.deploy("payrail_hostile", "hostile").await;
    let c = db.pool.get().await.unwrap();
    let limits2 = registry::deploy_plugin(
        &c,
        &engine(),
        "limits-next",
        variant(&plugin_bytes("payrail_limits"), "next"),
    )
    .await
    .unwrap();
    db.account("fees", 0).await;
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let mut steps = vec![spec("limits", limits_cfg()), spec("fee", fee_cfg())];
    // step 0: a candidate that decides the same; step 1: one that faults
    // (the hostile plugin does not understand the fee config).
    steps[0].candidate = Some("limits-next".into());
    steps[1].candidate = Some("hostile".into());
    let v1 = registry::set_pipeline(&c, &engine(), DEFAULT_TENANT, "transfer", &steps)
        .await
        .unwrap();
    assert_eq!(v1.steps[0].candidate.as_ref().unwrap().digest, limits2);

    let before = db.counts().await;
    let p = db.processor();
    for i in 0..3 {
        let out = p
            .pay(
                DEFAULT_TENANT,
                &format!("k{i}"),
                &transfer("alice", "bob", 1_000),
            )
            .await
            .unwrap();
        assert_eq!(out.response.status, PaymentStatus::Approved);
        // the candidates' calls are not the payment's
        assert_eq!(out.calls.len(), 2);
    }
    assert_eq!(db.balance("bob").await, 3_000);
    assert_eq!(db.balance("fees").await, 3 * 20);
    let after = db.counts().await;
    assert_eq!(after[4] - before[4], 6, "live calls journaled as before");

    let report = payrail::shadow::report(&c, DEFAULT_TENANT, "transfer")
        .await
        .unwrap();
    assert_eq!(report.steps.len(), 2);
    let s0 = &report.steps[0];
    assert_eq!(
        (s0.step, s0.calls, s0.agree, s0.disagree, s0.faults),
        (0, 3, 3, 0, 0)
    );
    assert!(s0.examples.is_empty());
    assert!(s0.mean_fuel > 0);
    let s1 = &report.steps[1];
    assert_eq!(
        (s1.step, s1.calls, s1.agree, s1.disagree, s1.faults),
        (1, 3, 0, 3, 3)
    );
    let ex = &s1.examples[0];
    let error = ex.candidate_error.as_deref().unwrap();
    assert!(
        error.starts_with("plugin_error:") && error.contains("invalid_config"),
        "{ex:?}"
    );
    assert!(ex.candidate.is_none());
    assert_eq!(ex.differences[0].path, "/");

    // a shadowed payment replays, candidate included
    let id: uuid::Uuid = ex.payment_id.parse().unwrap();
    let r = replay::replay_payment(&c, &engine(), &PluginLimits::default(), DEFAULT_TENANT, id)
        .await
        .unwrap();
    assert_eq!(r.calls.len(), 4, "{r:?}");
    assert!(r.matched, "{r:?}");

    // Promote step 0 from the CLI: one command, a new version.
    let bin = env!("CARGO_BIN_EXE_payrail");
    let out = std::process::Command::new(bin)
        .args(["shadow", "promote", "transfer", "0"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let now = registry::load_pipeline(&c, DEFAULT_TENANT, "transfer")
        .await
        .unwrap();
    assert_eq!(now.version, 2);
    assert_eq!(now.steps[0].digest, limits2);
    assert!(now.steps[0].candidate.is_none());
    assert_eq!(now.steps[1].candidate.as_ref().unwrap().plugin, "hostile");
    let out = p
        .pay(DEFAULT_TENANT, "k9", &transfer("alice", "bob", 1_000))
        .await
        .unwrap();
    assert_eq!(out.response.status, PaymentStatus::Approved);
    assert_eq!(out.calls[0].digest, limits2);
    // nothing to promote any more; a step that does not exist
    let err = registry::promote_candidate(&c, DEFAULT_TENANT, "transfer", 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "no_candidate");
    let err = registry::promote_candidate(&c, DEFAULT_TENANT, "transfer", 7)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_step");
    // clear the remaining candidate
    let cleared = registry::set_candidate(&c, DEFAULT_TENANT, "transfer", 1, None)
        .await
        .unwrap();
    assert!(cleared.steps.iter().all(|s| s.candidate.is_none()));
    assert!(db.audit().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_step_limits_override_the_host_limits_with_their_typed_codes() {
    let db = TestDb::new().await;
    db.deploy("payrail_hostile", "hostile").await;
    db.deploy("payrail_fee", "fee").await;
    db.account("fees", 0).await;
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let c = db.pool.get().await.unwrap();
    let p = db.processor();
    let cases: &[(&str, serde_json::Value, PluginLimitOverrides, &str)] = &[
        (
            "hostile",
            serde_json::json!({"mode": "approve"}),
            PluginLimitOverrides {
                fuel: Some(1_000),
                ..Default::default()
            },
            "plugin_fuel_exhausted",
        ),
        (
            "fee",
            fee_cfg(),
            PluginLimitOverrides {
                max_output_bytes: Some(10),
                ..Default::default()
            },
            "plugin_output_too_large",
        ),
        (
            "fee",
            fee_cfg(),
            PluginLimitOverrides {
                max_input_bytes: Some(10),
                ..Default::default()
            },
            "plugin_input_too_large",
        ),
        (
            "hostile",
            serde_json::json!({"mode": "memory"}),
            PluginLimitOverrides {
                max_memory_bytes: Some(2 << 20),
                ..Default::default()
            },
            "plugin_memory_limit",
        ),
        (
            "hostile",
            serde_json::json!({"mode": "loop"}),
            PluginLimitOverrides {
                fuel: Some(10_000_000_000),
                timeout_ms: Some(30),
                ..Default::default()
            },
            "plugin_timeout",
        ),
    ];
    for (i, (plugin, cfg, limits, code)) in cases.iter().enumerate() {
        let kind = format!("k{i}");
        let mut s = spec(plugin, cfg.clone());
        s.limits = Some(*limits);
        registry::set_pipeline(&c, &engine(), DEFAULT_TENANT, &kind, &[s])
            .await
            .unwrap();
        let mut req = transfer("alice", "bob", 100);
        req.kind = kind;
        let before = db.counts().await;
        let err = p
            .pay(DEFAULT_TENANT, &format!("key{i}"), &req)
            .await
            .unwrap_err();
        assert_eq!(err.code(), *code, "case {i}: {err}");
        assert_eq!(db.counts().await, before, "case {i} wrote something");
    }
    // the same plugins without overrides succeed
    registry::set_pipeline(
        &c,
        &engine(),
        DEFAULT_TENANT,
        "ok",
        &[
            spec("hostile", serde_json::json!({"mode": "approve"})),
            spec("fee", fee_cfg()),
        ],
    )
    .await
    .unwrap();
    let mut req = transfer("alice", "bob", 100);
    req.kind = "ok".into();
    let out = p.pay(DEFAULT_TENANT, "fine", &req).await.unwrap();
    assert_eq!(out.response.status, PaymentStatus::Approved);

    // out-of-range overrides are refused when the pipeline is set
    for bad in [
        PluginLimitOverrides {
            fuel: Some(0),
            ..Default::default()
        },
        PluginLimitOverrides {
            max_memory_bytes: Some(1 << 40),
            ..Default::default()
        },
        PluginLimitOverrides {
            timeout_ms: Some(60_000),
            ..Default::default()
        },
    ] {
        let mut s = spec("fee", fee_cfg());
        s.limits = Some(bad);
        let err = registry::set_pipeline(&c, &engine(), DEFAULT_TENANT, "bad", &[s])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_limits", "{bad:?}");
    }
    // overrides round-trip through the stored pipeline (JSON)
    let stored = registry::load_pipeline(&c, DEFAULT_TENANT, "k0")
        .await
        .unwrap();
    assert_eq!(stored.steps[0].limits.unwrap().fuel, Some(1_000));
}

/// Restart time with 100 deployed plugins: a fresh engine over the same
/// artifact cache deserializes what the first one compiled (verified by
/// sha256), instead of compiling again. Prints the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_100_plugins_loads_from_the_artifact_cache() {
    use payrail::engine::{EngineConfig, PluginEngine};
    use std::sync::Arc;
    use std::time::Instant;
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("payrail-cache-{:08x}", rand::random::<u32>()));
    let new_engine = |cache: bool| {
        let e = PluginEngine::new(EngineConfig::default()).unwrap();
        Arc::new(if cache {
            e.with_artifact_cache(&dir).unwrap()
        } else {
            e
        })
    };
    let first = new_engine(true);
    let c = db.pool.get().await.unwrap();
    let fee = plugin_bytes("payrail_fee");
    let started = Instant::now();
    let mut digests = Vec::new();
    for i in 0..100 {
        digests.push(
            registry::deploy_plugin(
                &c,
                &first,
                &format!("fee{i}"),
                variant(&fee, &i.to_string()),
            )
            .await
            .unwrap(),
        );
    }
    let deploy = started.elapsed();
    assert_eq!(first.artifact_cache_hits(), 0);

    // restart: a new engine, the same cache directory
    let restarted = new_engine(true);
    let started = Instant::now();
    for d in &digests {
        registry::ensure_digest_loaded(&c, &restarted, d)
            .await
            .unwrap();
    }
    let warm = started.elapsed();
    assert_eq!(restarted.artifact_cache_hits(), 100);

    // without the cache: every plugin compiled again (10 of them, scaled)
    let cold_engine = new_engine(false);
    let started = Instant::now();
    for d in &digests[..10] {
        registry::ensure_digest_loaded(&c, &cold_engine, d)
            .await
            .unwrap();
    }
    let cold = started.elapsed() * 10;
    println!(
        "100 plugins: deploy (compile + store) {deploy:?}; restart with artifact cache {warm:?}; \
         without it ~{cold:?} (10 measured x 10)"
    );
    assert!(warm < cold, "the cache makes a restart faster");

    // A tampered artifact is never deserialized: the sha256 recorded at
    // write time no longer matches, so the plugin is compiled again.
    let victim = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let third = new_engine(true);
    for d in &digests {
        registry::ensure_digest_loaded(&c, &third, d).await.unwrap();
    }
    assert_eq!(
        third.artifact_cache_hits(),
        99,
        "the tampered one was recompiled"
    );

    // and a plugin loaded from the cache runs payments like a compiled one
    db.account("fees", 0).await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    registry::set_pipeline(
        &c,
        &engine(),
        DEFAULT_TENANT,
        "transfer",
        &[spec("fee57", fee_cfg())],
    )
    .await
    .unwrap();
    let p =
        payrail::processor::Processor::new(db.pool.clone(), restarted.clone(), Default::default());
    let out = p
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 5_000))
        .await
        .unwrap();
    assert_eq!(out.response.status, PaymentStatus::Approved);
    assert_eq!(db.balance("fees").await, 60);
    let _ = std::fs::remove_dir_all(&dir);
}
