//! The rest of the hostile-plugin suite (plugin_faults.rs has the
//! in-guest misbehaviour): what is refused at deploy (a core module, a
//! component of another world, a 50 MB file), a posting into another
//! tenant's account, and other pipelines' payments flowing, with bounded
//! latency, while hostile plugins burn their budgets next to them.

use crate::common;

use common::{TestDb, engine, transfer};
use payrail::engine::LoadError;
use payrail::ledger::{self, NewAccount};
use payrail::model::{DEFAULT_TENANT, PaymentStatus};
use payrail::registry;
use std::time::{Duration, Instant};
use wasm_encoder::{
    Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType, Module,
};

/// A valid component of another world: it imports an interface the host
/// does not provide and exports nothing.
fn other_world_component() -> Vec<u8> {
    let mut c = Component::new();
    let mut types = ComponentTypeSection::new();
    types.instance(&InstanceType::new());
    c.section(&types);
    let mut imports = ComponentImportSection::new();
    imports.import("acme:other/thing@1.0.0", ComponentTypeRef::Instance(0));
    c.section(&imports);
    c.finish()
}

async fn plugin_rows(db: &TestDb) -> i64 {
    let c = db.pool.get().await.unwrap();
    c.query_one("select count(*) from payrail.plugins", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_refuses_each_bad_artifact_with_its_own_clear_error() {
    let db = TestDb::new().await;
    let c = db.pool.get().await.unwrap();
    let empty_component = Component::new().finish();
    let core_module = Module::new().finish();
    type Case = (&'static str, Vec<u8>, fn(&LoadError) -> bool, &'static str);
    let cases: Vec<Case> = vec![
        (
            "core module",
            core_module,
            |e| matches!(e, LoadError::NotAComponent(_)),
            "not a WebAssembly component",
        ),
        (
            "other world",
            other_world_component(),
            |e| matches!(e, LoadError::WrongWorld(_)),
            "acme:other/thing",
        ),
        (
            "empty world",
            empty_component,
            |e| matches!(e, LoadError::WrongWorld(_)),
            "payrail:plugin/rule",
        ),
        (
            "50 MB",
            vec![0x61; 50 * 1024 * 1024],
            |e| matches!(e, LoadError::TooLarge { .. }),
            "52428800 bytes, above the limit of 2097152 bytes",
        ),
        (
            "broken component body",
            {
                let mut b = other_world_component();
                b.extend_from_slice(&[0x07, 0xff, 0xff]);
                b
            },
            |e| matches!(e, LoadError::Compile(_)),
            "does not compile",
        ),
    ];
    for (what, bytes, expected, text) in cases {
        let started = Instant::now();
        let err = registry::deploy_plugin(&c, &engine(), "bad", bytes)
            .await
            .unwrap_err();
        let payrail::Error::PluginLoad(load) = &err else {
            panic!("{what}: not a load error: {err}");
        };
        assert!(expected(load), "{what}: {load:?}");
        assert_eq!(err.code(), "plugin_invalid", "{what}");
        assert!(err.to_string().contains(text), "{what}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(plugin_rows(&db).await, 0, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_posting_into_another_tenants_account_is_refused() {
    let db = TestDb::new().await;
    db.deploy("payrail_hostile", "hostile").await;
    db.account("alice", 1_000).await;
    db.account("bob", 0).await;
    // "no-such-account" exists, but in tenant "other"
    let mut c = db.pool.get().await.unwrap();
    ledger::create_account(
        &mut c,
        "other",
        &NewAccount {
            id: "no-such-account".into(),
            currency: "EUR".into(),
            allow_negative: false,
            opening_balance: 0,
            metadata: Default::default(),
        },
    )
    .await
    .unwrap();
    db.pipeline(
        "transfer",
        &[("hostile", serde_json::json!({"mode": "unknown_account"}))],
    )
    .await;
    let before = db.counts().await;
    let err = db
        .processor()
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "plugin_invalid_output", "{err}");
    assert!(err.to_string().contains("no-such-account"), "{err}");
    assert_eq!(db.counts().await, before);
    let other = ledger::get_account(&c, "other", "no-such-account")
        .await
        .unwrap();
    assert_eq!(other.balance, 0);
    assert_eq!(db.balance("alice").await, 1_000);
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_pipelines_keep_flowing_while_hostile_plugins_run() {
    let db = TestDb::new().await;
    db.samples().await;
    db.deploy("payrail_hostile", "hostile").await;
    for i in 0..8 {
        db.account(&format!("payer{i}"), 1_000_000).await;
    }
    db.account("attacker", 1_000_000).await;
    db.account("victim", 0).await;
    let modes = [
        "loop",
        "memory",
        "recursion",
        "output",
        "trap",
        "unbalanced",
    ];
    for m in modes {
        db.pipeline(
            &format!("hostile-{m}"),
            &[("hostile", serde_json::json!({"mode": m}))],
        )
        .await;
    }
    let p = db.processor();
    db.account("payee", 0).await;
    let run_good = |tag: &'static str| {
        let p = p.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..8 {
                let p = p.clone();
                tasks.spawn(async move {
                    let mut lat = Vec::new();
                    for n in 0..15 {
                        let started = Instant::now();
                        let out = p
                            .pay(
                                DEFAULT_TENANT,
                                &format!("{tag}-{w}-{n}"),
                                &transfer(&format!("payer{w}"), "payee", 100),
                            )
                            .await
                            .expect("a good payment never fails");
                        assert_eq!(out.response.status, PaymentStatus::Approved);
                        lat.push(started.elapsed());
                    }
                    lat
                });
            }
            tasks.join_all().await.concat()
        }
    };
    // alone
    let mut alone = run_good("alone").await;
    // side by side with a stream of hostile payments
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hostile = tokio::task::JoinSet::new();
    for (h, m) in modes.iter().enumerate() {
        let p = p.clone();
        let stop = stop.clone();
        let kind = format!("hostile-{m}");
        hostile.spawn(async move {
            let mut faults = 0u32;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut req = transfer("attacker", "victim", 1);
                req.kind = kind.clone();
                let err = p
                    .pay(DEFAULT_TENANT, &format!("h{h}-{n}"), &req)
                    .await
                    .unwrap_err();
                assert!(err.code().starts_with("plugin_"), "{kind}: {err}");
                faults += 1;
                n += 1;
            }
            faults
        });
    }
    let mut beside = run_good("beside").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let faults: u32 = hostile.join_all().await.iter().sum();
    let (a50, a95) = (percentile(&mut alone, 0.5), percentile(&mut alone, 0.95));
    let (b50, b95) = (percentile(&mut beside, 0.5), percentile(&mut beside, 0.95));
    println!(
        "good payments alone: p50 {a50:?} p95 {a95:?}; beside {faults} hostile faults: p50 {b50:?} p95 {b95:?}"
    );
    assert!(faults >= modes.len() as u32, "the hostile plugins ran");
    // The bound: hostile calls are capped (fuel ~11M instructions, 200 ms
    // wall clock, 10 MB), so a good payment waits at most for a few of
    // them on 2 shared cores.
    let bound = a95 * 5 + Duration::from_millis(500);
    assert!(
        b95 < bound,
        "p95 latency beside hostile plugins {b95:?}, bound {bound:?}"
    );
    assert_eq!(db.balance("victim").await, 0);
    assert_eq!(db.balance("payee").await, 2 * 8 * 15 * 100);
    assert!(db.audit().await.is_empty());
}
