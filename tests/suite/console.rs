//! The web console in a real browser: Debian's Chromium (installed with
//! apt-get when missing), driven by Playwright (`tests/console/`, npm
//! packages installed on first run) against a real `payrail serve` on a
//! prepared ledger. The browser script signs in (and sees a wrong key
//! refused), finds a declined payment and its reason, replays it, rolls a
//! pipeline back, promotes a shadow candidate and retries a dead letter;
//! this test then checks the ledger did each of those, and that the audit
//! log recorded them.
//!
//! `PAYRAIL_SCREENSHOTS=docs/console` makes the script save the pages'
//! screenshots there (how the docs' pictures are made).

use crate::common::*;
use payrail::apikeys::{self, Scope};
use payrail::model::DEFAULT_TENANT;
use payrail::registry::{self, StepSpec};
use std::path::PathBuf;
use std::process::Command;

/// Chromium and the script's npm packages, installed once under a lock.
fn browser_ready() -> PathBuf {
    let dir = repo_root().join("tests/console");
    let lock = std::fs::File::create(std::env::temp_dir().join("payrail-console.lock")).unwrap();
    lock.lock().unwrap();
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    if !chromium.exists() {
        run_ok(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install chromium (the console tests need Debian's Chromium)",
        );
    }
    if !dir.join("node_modules/playwright-core").exists() {
        run_ok(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            "npm ci in tests/console (needs Node.js, npm and the npm registry)",
        );
    }
    chromium
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_the_ledger_in_a_real_browser() {
    let chromium = browser_ready();
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let c = db.pool.get().await.unwrap();
    let admin = apikeys::create(&c, DEFAULT_TENANT, &[Scope::Payments, Scope::Admin])
        .await
        .unwrap()
        .secret;
    let p = db.processor();
    p.pay(DEFAULT_TENANT, "ok-1", &transfer("alice", "bob", 1_500))
        .await
        .unwrap();
    let declined = p
        .pay(
            DEFAULT_TENANT,
            "too-big",
            &transfer("alice", "bob", 250_000),
        )
        .await
        .unwrap()
        .response;
    assert_eq!(declined.decline.as_ref().unwrap().code, "amount_too_large");
    // transfer at v2, to be rolled back to v1
    db.pipeline(
        "transfer",
        &[("limits", serde_json::json!({"max_amount": 200_000}))],
    )
    .await;
    // another kind whose step has a shadow candidate that ran once
    let step = |candidate: Option<&str>| StepSpec {
        plugin: "limits".into(),
        config: serde_json::json!({"max_amount": 100_000}),
        candidate: candidate.map(str::to_string),
        limits: None,
    };
    registry::set_pipeline(
        &c,
        &engine(),
        DEFAULT_TENANT,
        "payout",
        &[step(Some("fee"))],
    )
    .await
    .unwrap();
    let mut payout = transfer("alice", "bob", 100);
    payout.kind = "payout".into();
    p.pay(DEFAULT_TENANT, "payout-1", &payout).await.unwrap();
    // a dead letter: the approved payment's event, as a relay that gave up
    let dead: i64 = c
        .query_one(
            "update payrail.outbox set state = 'dead', attempts = 12,
               last_error = 'webhook hook: 503 Service Unavailable'
             where id = (select min(id) from payrail.outbox where topic like 'payment.%')
             returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrail"));
    cmd.arg("serve")
        .env_remove("PAYRAIL_LISTEN")
        .env("DATABASE_URL", &db.url)
        .env("PAYRAIL_SERVER__LISTEN", "127.0.0.1:0");
    let mut serve = ServeChild::spawn(cmd);
    // traffic through the server, for the overview's figures
    let http = reqwest::Client::new();
    for i in 0..12_i64 {
        let amount = if i % 4 == 3 { 300_000 } else { 100 + i };
        let r = http
            .post(format!("{}/v1/payments", serve.base))
            .bearer_auth(&admin)
            .header("Idempotency-Key", format!("http-{i}"))
            .json(&serde_json::json!({"kind": "transfer", "source": "alice",
                "destination": "bob", "amount": amount, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    }
    let mut node = Command::new("node");
    node.arg("console.test.mjs")
        .current_dir(repo_root().join("tests/console"))
        .env("CHROMIUM", &chromium)
        .env("PAYRAIL_URL", &serve.base)
        .env("PAYRAIL_ADMIN_KEY", &admin)
        .env("PAYRAIL_DECLINED_PAYMENT", &declined.id)
        .env("PAYRAIL_DECLINE_CODE", "amount_too_large")
        .env("PAYRAIL_PIPELINE_KIND", "transfer")
        .env("PAYRAIL_ROLLBACK_TO", "1")
        .env("PAYRAIL_SHADOW_KIND", "payout")
        .env("PAYRAIL_SHADOW_STEP", "0")
        .env("PAYRAIL_DEAD_LETTER", dead.to_string());
    if let Ok(dir) = std::env::var("PAYRAIL_SCREENSHOTS") {
        node.env("PAYRAIL_SCREENSHOTS", repo_root().join(dir));
    }
    let out = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser script failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        serve.logs.lock().unwrap()
    );
    assert!(serve.running(), "payrail serve exited during the run");

    // what the clicks did, read from the ledger
    let transfer = registry::load_pipeline(&c, DEFAULT_TENANT, "transfer")
        .await
        .unwrap();
    assert_eq!(transfer.version, 3, "the rollback made version 3");
    assert_eq!(transfer.steps.len(), 2, "v1's two steps are current again");
    let payout = registry::load_pipeline(&c, DEFAULT_TENANT, "payout")
        .await
        .unwrap();
    assert!(
        payout.steps[0].candidate.is_none(),
        "promoted: no candidate"
    );
    assert_eq!(payout.steps[0].plugin, "fee", "the candidate went live");
    let state: String = c
        .query_one("select state from payrail.outbox where id = $1", &[&dead])
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        state, "dead",
        "the retried dead letter is back in the queue"
    );
    let actions: Vec<String> = c
        .query(
            "select action from payrail.admin_audit where tenant = $1 order by id",
            &[&DEFAULT_TENANT],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for a in ["pipeline.rollback", "shadow.promote", "outbox.retry"] {
        assert!(actions.iter().any(|x| x == a), "{a} recorded: {actions:?}");
    }
}
