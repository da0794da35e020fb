//! Hostile and broken plugins: each fault gives its exact typed error,
//! nothing is written, and the next payment succeeds.

use crate::common;

use common::{TestDb, plugin_bytes, transfer};
use payrail::engine::{EngineConfig, LoadError, PluginEngine};
use payrail::model::{DEFAULT_TENANT, PaymentStatus};
use payrail::processor::ProcessorSettings;

/// (hostile mode, expected error code)
const FAULTS: &[(&str, &str)] = &[
    ("trap", "plugin_trap"),
    ("loop", "plugin_fuel_exhausted"),
    ("memory", "plugin_memory_limit"),
    ("recursion", "plugin_stack_overflow"),
    ("output", "plugin_output_too_large"),
    ("unbalanced", "plugin_invalid_output"),
    ("unknown_account", "plugin_invalid_output"),
    ("overflow", "plugin_invalid_output"),
    ("bogus_mode", "plugin_error"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_fault_is_typed_writes_nothing_and_the_next_payment_succeeds() {
    let db = TestDb::new().await;
    db.samples().await;
    db.deploy("payrail_hostile", "hostile").await;
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    for (i, (mode, code)) in FAULTS.iter().enumerate() {
        let kind = format!("hostile-{i}");
        db.pipeline(&kind, &[("hostile", serde_json::json!({ "mode": mode }))])
            .await;
        let before = db.counts().await;
        let mut req = transfer("alice", "bob", 100);
        req.kind = kind;
        let err = p
            .pay(DEFAULT_TENANT, &format!("bad-{i}"), &req)
            .await
            .unwrap_err();
        assert_eq!(err.code(), *code, "mode {mode}: {err}");
        assert_eq!(db.counts().await, before, "mode {mode} wrote something");
        let ok = p
            .pay(
                DEFAULT_TENANT,
                &format!("good-{i}"),
                &transfer("alice", "bob", 100),
            )
            .await
            .unwrap();
        assert_eq!(ok.response.status, PaymentStatus::Approved, "after {mode}");
    }
    assert!(db.audit().await.is_empty());
}

/// A database whose "transfer" pipeline is the hostile plugin in `mode`,
/// with accounts alice (1000) and bob.
async fn hostile_transfer(mode: &str) -> TestDb {
    let db = TestDb::new().await;
    db.deploy("payrail_hostile", "hostile").await;
    db.account("alice", 1_000).await;
    db.account("bob", 0).await;
    db.pipeline(
        "transfer",
        &[("hostile", serde_json::json!({ "mode": mode }))],
    )
    .await;
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wall_clock_backstop_stops_a_loop_when_fuel_is_huge() {
    let db = hostile_transfer("loop").await;
    let mut settings = ProcessorSettings::default();
    settings.limits.fuel = u64::MAX / 2;
    settings.limits.timeout_ms = 50;
    let err = db
        .processor_with(settings)
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "plugin_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wasi_gives_no_filesystem_env_network_and_a_frozen_clock() {
    let db = hostile_transfer("wasi").await;
    let out = db
        .processor()
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 1))
        .await
        .unwrap();
    let notes = &out.response.annotations;
    println!("wasi probe annotations: {notes:?}");
    for key in ["fs", "env", "net"] {
        let v = notes
            .get(key)
            .unwrap_or_else(|| panic!("no {key} annotation"));
        assert!(v.starts_with("err"), "{key} reached the outside world: {v}");
    }
    // The clock a plugin sees is the journaled host time, not the real one:
    // the value is recorded in the input of the call.
    let c = db.pool.get().await.unwrap();
    let input: serde_json::Value = c
        .query_one("select input from payrail.plugin_calls", &[])
        .await
        .unwrap()
        .get(0);
    let now_ms = input["now_ms"].as_u64().unwrap();
    let clock = notes.get("clock").expect("clock annotation");
    assert!(
        clock.contains(&(now_ms / 1000).to_string()),
        "clock {clock} is not the host-supplied {now_ms} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_input_gives_the_same_output() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    db.processor()
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 7_777))
        .await
        .unwrap();
    let c = db.pool.get().await.unwrap();
    let rows = c
        .query(
            "select encode(digest, 'hex'), input::text, output from payrail.plugin_calls order by step",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let engine = common::engine();
    for r in rows {
        let digest: String = r.get(0);
        let input: payrail::model::PluginInput = serde_json::from_str(r.get(1)).unwrap();
        let journaled: serde_json::Value = r.get(2);
        let prepared = payrail::engine::PreparedInput::new(input);
        for _ in 0..2 {
            let out = engine
                .call(&digest, &prepared, &Default::default())
                .unwrap();
            let replayed: serde_json::Value = serde_json::from_str(&out.output_json).unwrap();
            assert_eq!(replayed, journaled);
        }
    }
}

#[test]
fn load_rejects_what_is_not_a_payrail_component() {
    let engine = PluginEngine::new(EngineConfig::default()).unwrap();
    // a core module: magic + version 1
    let core = b"\0asm\x01\0\0\0".to_vec();
    assert!(matches!(
        engine.load(&core),
        Err(LoadError::NotAComponent(_))
    ));
    assert!(matches!(
        engine.load(b"not wasm at all"),
        Err(LoadError::NotAComponent(_))
    ));
    let big = vec![0u8; 3 * 1024 * 1024];
    assert!(matches!(engine.load(&big), Err(LoadError::TooLarge { .. })));
    // the real samples load, and loading twice gives the same digest
    let fee = plugin_bytes("payrail_fee");
    assert_eq!(engine.load(&fee).unwrap(), engine.load(&fee).unwrap());
}
