//! Plugin author tooling and signatures: `plugin new` (the template builds
//! and passes its own tests), `plugin test` (no database), `plugin keygen`
//! / `plugin sign` and a host that accepts only signed plugins.

use crate::common;

use common::{TestDb, plugin_bytes};
use payrail::engine::{EngineConfig, PluginEngine};
use payrail::registry;
use payrail::signing::{self, TrustedKeys};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_payrail");

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("payrail-{tag}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wasm(name: &str) -> PathBuf {
    Path::new(payrail::samples::WASM_DIR).join(format!("{name}.wasm"))
}

fn payrail(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

const FIXTURE: &str = r#"{
  "payment": {"kind": "transfer", "amount": 10000, "currency": "EUR",
              "source": "alice", "destination": "bob"},
  "accounts": [{"id": "alice", "currency": "EUR", "balance": 100000},
               {"id": "bob", "currency": "EUR", "balance": 0}],
  "config": CONFIG
}"#;

#[test]
fn plugin_test_runs_a_component_without_a_database_and_reports_costs() {
    let dir = tmp("fixture");
    let fixture = |name: &str, config: &str| {
        let p = dir.join(name);
        std::fs::write(&p, FIXTURE.replace("CONFIG", config)).unwrap();
        p
    };
    let fee = fixture(
        "fee.json",
        r#"{"fee_account": "fees", "percent_bps": 150, "fixed": 10}"#,
    );
    let out = payrail(&[
        "plugin",
        "test",
        wasm("payrail_fee").to_str().unwrap(),
        "--input",
        fee.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("fee: {r:#}");
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["decision"]["postings"][0]["amount"], -160);
    assert!(r["fuel"]["used"].as_u64().unwrap() > 1_000);
    assert_eq!(r["fuel"]["limit"], 11_000_000);
    assert!(r["memory_bytes"]["used"].as_u64().unwrap() >= 65_536);
    assert!(r["output_bytes"]["used"].as_u64().unwrap() > 10);
    assert!(r["duration_us"]["limit"].as_u64().unwrap() == 200_000);

    let limits = fixture("limits.json", r#"{"max_amount": 5000}"#);
    let out = payrail(&[
        "plugin",
        "test",
        wasm("payrail_limits").to_str().unwrap(),
        "--input",
        limits.to_str().unwrap(),
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("limits: {r:#}");
    assert_eq!(r["decision"]["code"], "amount_too_large");

    // a fault: exit 1, its code, with a smaller budget from the flag
    let looping = fixture("loop.json", r#"{"mode": "loop"}"#);
    let out = payrail(&[
        "plugin",
        "test",
        wasm("payrail_hostile").to_str().unwrap(),
        "--input",
        looping.to_str().unwrap(),
        "--fuel",
        "100000",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"], "plugin_fuel_exhausted");
    assert!(r["fault"].as_str().unwrap().contains("100000"));

    // not a component: the deploy error, exit 2
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    let out = payrail(&[
        "plugin",
        "test",
        junk.to_str().unwrap(),
        "--input",
        fee.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly component"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// One call in `CPU_SAMPLE_EVERY` reads the thread CPU clock; a plugin that
/// does real work (1000 log lines through the host) shows it there.
#[test]
fn one_call_in_sixteen_measures_its_cpu_time() {
    let engine = PluginEngine::new(EngineConfig::default()).unwrap();
    let digest = engine.load(&plugin_bytes("payrail_hostile")).unwrap();
    let fixture = FIXTURE.replace("CONFIG", r#"{"mode": "log"}"#);
    let input = payrail_plugin_tools::parse_fixture(fixture.as_bytes()).unwrap();
    let prepared = payrail::engine::PreparedInput::new(input);
    let every = payrail::engine::CPU_SAMPLE_EVERY as usize;
    let outcomes: Vec<_> = (0..2 * every)
        .map(|_| {
            engine
                .call(&digest, &prepared, &EngineConfig::default().limits)
                .unwrap()
        })
        .collect();
    let sampled: Vec<_> = outcomes.iter().filter_map(|o| o.cpu).collect();
    assert_eq!(sampled.len(), 2, "two calls of {} sampled", 2 * every);
    for (o, cpu) in outcomes.iter().filter(|o| o.cpu.is_some()).zip(&sampled) {
        // 1000 host calls take well over 20 µs; the CPU time can exceed
        // the wall time only by clock granularity
        assert!(cpu.as_micros() >= 20, "cpu {cpu:?}");
        assert!(
            *cpu <= o.duration + std::time::Duration::from_millis(1),
            "cpu {cpu:?} wall {:?}",
            o.duration
        );
    }
}

/// What `payrail bench` times on an idle core: every call measured on a
/// fixture the plugin approves; a fixture it faults on is refused, not
/// timed.
#[test]
fn bench_loaded_measures_every_call_and_refuses_a_faulting_fixture() {
    let engine = PluginEngine::new(EngineConfig::default()).unwrap();
    let digest = engine.load(payrail::samples::LIMITS_WASM).unwrap();
    let limits = EngineConfig::default().limits;
    let good =
        payrail_plugin_tools::parse_fixture(payrail::samples::LIMITS_FIXTURE.as_bytes()).unwrap();
    let r = payrail_plugin_tools::bench_loaded(&engine, &digest, &good, &limits, 40, 8).unwrap();
    assert_eq!((r.calls, r.warmup, r.outcome.as_str()), (40, 8, "ok"));
    assert!(
        r.total_us.median > 0.0 && r.engine_cpu_us.median > 0.0,
        "{r:?}"
    );

    let bad = FIXTURE.replace("CONFIG", r#"{"max_amount": "lots"}"#);
    let bad = payrail_plugin_tools::parse_fixture(bad.as_bytes()).unwrap();
    let e = payrail_plugin_tools::bench_loaded(&engine, &digest, &bad, &limits, 40, 8).unwrap_err();
    assert_eq!(e.code(), "plugin_fault", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_trusted_keys_deploys_only_plugins_they_signed() {
    let dir = tmp("keys");
    let key = dir.join("publisher.key");
    let out = payrail(&["plugin", "keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 64);
    // never overwrites a key
    let again = payrail(&["plugin", "keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    let fee = wasm("payrail_fee");
    let out = payrail(&[
        "plugin",
        "sign",
        fee.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let sig = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let (other_secret, _) = signing::keygen();
    let digest = payrail::engine::digest_of(&plugin_bytes("payrail_fee"));
    let forged = signing::sign(&other_secret, &digest).unwrap();
    let limits_digest = payrail::engine::digest_of(&plugin_bytes("payrail_limits"));
    let secret = std::fs::read_to_string(&key).unwrap();
    let for_other_plugin = signing::sign(secret.trim(), &limits_digest).unwrap();

    let engine = Arc::new(
        PluginEngine::new(EngineConfig::default())
            .unwrap()
            .with_trusted_keys(TrustedKeys::parse(&public).unwrap()),
    );
    let db = TestDb::new().await;
    let c = db.pool.get().await.unwrap();
    let deploy = |signature: Option<String>| {
        let engine = engine.clone();
        let c = &c;
        async move {
            registry::deploy_plugin_versioned(
                c,
                &engine,
                "default",
                "fee",
                None,
                signature.as_deref(),
                plugin_bytes("payrail_fee"),
            )
            .await
        }
    };
    for (signature, code) in [
        (None, "plugin_unsigned"),
        (Some(forged), "plugin_signature_invalid"),
        (Some(for_other_plugin), "plugin_signature_invalid"),
        (Some("zz".to_string()), "plugin_signature_invalid"),
    ] {
        let err = deploy(signature.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{signature:?}: {err}");
    }
    let n: i64 = c
        .query_one("select count(*) from payrail.plugins", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing refused was stored");
    assert_eq!(deploy(Some(sig.clone())).await.unwrap(), digest);

    // the CLI: the trusted keys come from the environment
    let run = |signature: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["plugin", "deploy", fee.to_str().unwrap(), "--name", "fee2"])
            .env("DATABASE_URL", &db.url)
            .env("PAYRAIL_CACHE_DIR", "off")
            .env(signing::TRUSTED_KEYS_ENV, &public);
        if let Some(s) = signature {
            cmd.args(["--signature", s]);
        }
        cmd.output().unwrap()
    };
    let refused = run(None);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("plugin_unsigned"));
    let ok = run(Some(&sig));
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), digest);
    let _ = std::fs::remove_dir_all(&dir);
}
