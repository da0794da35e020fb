//! The real `payrail` binary as a user runs it.

use crate::common;

use std::process::Command;

struct Cli {
    url: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_payrail"))
            .args(args)
            .env("DATABASE_URL", &self.url)
            .output()
            .expect("run payrail");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "payrail {args:?} failed: {out}{err}");
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_through_the_cli_and_the_audit() {
    let db = common::TestDb::new().await;
    let cli = Cli {
        url: db.url.clone(),
    };
    cli.ok(&["migrate"]);
    let wasm = |n: &str| format!("{}/{n}.wasm", payrail::samples::WASM_DIR);
    let digest = cli.ok(&["plugin", "deploy", &wasm("payrail_fee"), "--name", "fee"]);
    assert_eq!(digest.trim().len(), 64);
    cli.ok(&[
        "plugin",
        "deploy",
        &wasm("payrail_limits"),
        "--name",
        "limits",
    ]);
    cli.ok(&["account", "create", "fees", "--currency", "EUR"]);
    cli.ok(&[
        "account",
        "create",
        "alice",
        "--currency",
        "EUR",
        "--opening-balance",
        "50000",
    ]);
    cli.ok(&["account", "create", "bob", "--currency", "EUR"]);
    cli.ok(&[
        "pipeline",
        "set",
        "transfer",
        r#"limits={"max_amount":10000}"#,
        r#"fee={"fee_account":"fees","fixed":25}"#,
    ]);
    let pay = [
        "pay",
        "--kind",
        "transfer",
        "--from",
        "alice",
        "--to",
        "bob",
        "--amount",
        "1000",
        "--currency",
        "EUR",
        "--key",
        "cli-1",
    ];
    let first: serde_json::Value = serde_json::from_str(&cli.ok(&pay)).unwrap();
    assert_eq!(first["status"], "approved");
    let counts = db.counts().await;
    let (code, again, stderr) = cli.run(&pay);
    assert_eq!(code, 0);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again, first);
    assert!(stderr.contains("replayed"));
    assert_eq!(
        db.counts().await,
        counts,
        "the repeated key wrote something"
    );
    let declined: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "pay",
        "--kind",
        "transfer",
        "--from",
        "alice",
        "--to",
        "bob",
        "--amount",
        "20000",
        "--currency",
        "EUR",
        "--key",
        "cli-2",
    ]))
    .unwrap();
    assert_eq!(declined["status"], "declined");
    assert_eq!(declined["decline"]["code"], "amount_too_large");
    let bob: serde_json::Value =
        serde_json::from_str(&cli.ok(&["account", "show", "bob"])).unwrap();
    assert_eq!(bob["balance"], 1000);
    assert!(cli.ok(&["audit"]).contains("audit passed"));

    // someone changes a balance behind the host's back
    let c = db.pool.get().await.unwrap();
    c.execute(
        "update payrail.accounts set balance = 1 where id = 'alice'",
        &[],
    )
    .await
    .unwrap();
    let (code, out, _) = cli.run(&["audit"]);
    assert_ne!(code, 0, "audit passed on a tampered ledger: {out}");
    assert!(out.contains("balance_equals_entries"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rejects_a_file_that_is_not_a_payrail_component() {
    let db = common::TestDb::new().await;
    let cli = Cli {
        url: db.url.clone(),
    };
    let dir = std::env::temp_dir().join(format!("payrail-cli-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (code, _, err) = cli.run(&["plugin", "deploy", core.to_str().unwrap(), "--name", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a WebAssembly component"), "{err}");
    let (code, _, err) = cli.run(&[
        "pay",
        "--kind",
        "t",
        "--from",
        "a",
        "--to",
        "b",
        "--amount",
        "1",
        "--currency",
        "EUR",
        "--key",
        "k",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("account_not_found") || err.contains("pipeline_not_found"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
