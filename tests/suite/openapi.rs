//! The OpenAPI document as a contract: the committed copy
//! (`docs/openapi.json`) is what the server serves; a Python client
//! generated from it makes a payment; every CLI operation has a route.
//!
//! `PAYRAIL_BLESS=1` rewrites the committed copy from the served one.

use crate::common::{python_venv, repo_root, run_ok, target_dir};
use crate::server::Server;
use clap::CommandFactory;
use payrail::apikeys::Scope;
use std::path::PathBuf;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_document_is_the_served_one() {
    let s = Server::start().await;
    let (_, doc) = s.get("/openapi.json", "").await;
    s.stop().await;
    let served = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = repo_root().join("docs/openapi.json");
    if std::env::var_os("PAYRAIL_BLESS").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json differs from the served document: run \
         `PAYRAIL_BLESS=1 cargo test --workspace --test suite -- openapi::the_committed` \
         and commit it"
    );
    // every keyed operation says it can answer 401, 403 and 429, and
    // everything can answer 503
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let r = op["responses"].as_object().unwrap();
            let mut needed = vec!["503"];
            if path.starts_with("/v1/") {
                needed.extend(["400", "401", "403", "429"]);
            }
            for code in needed {
                assert!(r.contains_key(code), "{method} {path} lacks {code}");
            }
        }
    }
}

fn generator() -> PathBuf {
    python_venv(
        "openapi-python-client-0.29.1",
        &["-r", "tests/clients/python/requirements.txt"],
    )
}

/// Schemathesis, a schema-driven API fuzzer, against the served document
/// on a ledger with accounts, a pipeline with a shadow candidate and
/// payments: no 5xx, every status and content type documented, every
/// schema-valid request accepted (or refused with 404/409/422, see
/// `tests/clients/fuzz/schemathesis.toml`), every schema-violating one
/// refused, every response matching its schema. Seeded: the seed is
/// printed, and `PAYRAIL_FUZZ_SEED` replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_fuzzer_finds_the_server_true_to_its_document() {
    let st = python_venv(
        "schemathesis-4.32.5",
        &["-r", "tests/clients/fuzz/requirements.txt"],
    );
    let s = Server::start().await;
    let key = s.key("fz", &[Scope::Payments, Scope::Admin]).await;
    s.samples(&key).await;
    let (code, _) = crate::server::send(
        s.req(
            reqwest::Method::PUT,
            "/v1/pipelines/transfer/steps/0/candidate",
            Some(&key),
        )
        .json(&serde_json::json!({"plugin": "limits"})),
    )
    .await;
    assert_eq!(code, reqwest::StatusCode::OK);
    for i in 0..3 {
        let body = serde_json::json!({"kind": "transfer", "source": "alice",
            "destination": "bob", "amount": 100 + i, "currency": "EUR"});
        let r = s.pay(&key, &format!("fz-{i}"), body).await;
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    }
    let seed =
        std::env::var("PAYRAIL_FUZZ_SEED").unwrap_or_else(|_| rand::random::<u64>().to_string());
    println!("schema fuzzer seed {seed} (replay: PAYRAIL_FUZZ_SEED={seed})");
    let config = repo_root().join("tests/clients/fuzz/schemathesis.toml");
    let url = format!("{}/openapi.json", s.base);
    let arg = seed.clone();
    // schemathesis keeps a cache in its working directory: not the source tree
    let cwd = target_dir().join("schemathesis");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st.join("bin/schemathesis"))
            .current_dir(cwd)
            .arg("--config-file")
            .arg(config)
            .args(["run", &url, "--checks", "all", "--max-examples", "25"])
            .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
            .args(["--seed", &arg])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            // revoking keys would revoke the fuzzer's own (it finds ids in
            // the key list); a plugin upload is raw .wasm, not JSON
            .args(["--exclude-operation-id", "revoke_key"])
            .args(["--exclude-operation-id", "upload_plugin"])
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures (seed {seed}, {}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(" passed"), "{report}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_document_makes_a_payment() {
    let venv = generator();
    let s = Server::start().await;
    let key = s.key("py", &[Scope::Payments, Scope::Admin]).await;
    let (_, doc) = s.get("/openapi.json", "").await;
    let work = std::env::temp_dir().join(format!("payrail-pyclient-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();
    let spec = work.join("openapi.json");
    std::fs::write(&spec, serde_json::to_vec(&doc).unwrap()).unwrap();
    let client = work.join("client");
    let dir = repo_root().join("tests/clients/python");
    let generated = run_ok(
        Command::new(venv.join("bin/openapi-python-client"))
            .args(["generate", "--path"])
            .arg(&spec)
            .arg("--output-path")
            .arg(&client)
            .arg("--config")
            .arg(dir.join("config.yaml")),
        "openapi-python-client generate",
    );
    // the one operation a JSON client cannot have: a raw .wasm upload
    assert!(
        !generated.contains("Unable to process schema") && !generated.contains("Cannot parse"),
        "the generator dropped parts of the document:\n{generated}"
    );
    run_ok(
        Command::new(venv.join("bin/python"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(&client),
        "pip install the generated client",
    );
    let base = s.base.clone();
    let pay = dir.join("pay.py");
    let py = venv.join("bin/python");
    let out = tokio::task::spawn_blocking(move || {
        run_ok(
            Command::new(py)
                .arg(pay)
                .env("PAYRAIL_URL", base)
                .env("PAYRAIL_KEY", key),
            "pay.py with the generated client",
        )
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["status"], "approved", "{v}");
    assert_eq!(v["source_balance"], 7500, "{v}");
    s.stop().await;
}

/// Commands that act on the host or the machine, not on a tenant's data:
/// they have no route, by design.
const LOCAL_ONLY: &[(&str, &str)] = &[
    (
        "migrate",
        "schema changes are the operator's, before hosts start",
    ),
    (
        "audit",
        "checks every tenant's ledger at once: the operator's",
    ),
    ("demo", "a local demo on its own database"),
    ("bench", "a local benchmark"),
    ("serve", "starts the API itself"),
    ("relay", "runs the relay process"),
    (
        "holds expire-due",
        "sweeps every tenant's due holds: the operator's",
    ),
    ("plugin new", "an author's local tool (no database)"),
    ("plugin test", "an author's local tool (no database)"),
    ("plugin bench", "an author's local tool (no database)"),
    ("plugin keygen", "an author's local tool (no database)"),
    ("plugin sign", "an author's local tool (no database)"),
];

/// Each CLI operation and the routes that do it.
const ROUTES: &[(&str, &[&str])] = &[
    ("plugin deploy", &["post /v1/plugins"]),
    ("pipeline set", &["put /v1/pipelines/{kind}"]),
    ("pipeline show", &["get /v1/pipelines/{kind}"]),
    ("pipeline history", &["get /v1/pipelines/{kind}/history"]),
    ("pipeline rollback", &["post /v1/pipelines/{kind}/rollback"]),
    ("account create", &["post /v1/accounts"]),
    ("account show", &["get /v1/accounts/{id}"]),
    ("pay", &["post /v1/payments"]),
    ("capture", &["post /v1/payments/{id}/capture"]),
    ("void", &["post /v1/payments/{id}/void"]),
    ("apikey create", &["post /v1/api-keys"]),
    ("apikey revoke", &["delete /v1/api-keys/{id}"]),
    ("apikey list", &["get /v1/api-keys"]),
    (
        "replay",
        &["post /v1/payments/{id}/replay", "post /v1/replay"],
    ),
    ("shadow report", &["get /v1/pipelines/{kind}/shadow"]),
    (
        "shadow promote",
        &["post /v1/pipelines/{kind}/shadow/promote"],
    ),
    (
        "shadow set",
        &["put /v1/pipelines/{kind}/steps/{step}/candidate"],
    ),
    ("outbox dead-letters", &["get /v1/outbox/dead-letters"]),
    ("outbox retry", &["post /v1/outbox/dead-letters/retry"]),
    // the journaled input and output a fixture is made of
    ("plugin fixture", &["get /v1/payments/{id}/calls"]),
];

fn leaves(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|c| c.get_name() != "help")
        .collect();
    if subs.is_empty() {
        out.push(prefix.trim().to_string());
    }
    for c in subs {
        leaves(c, &format!("{prefix} {}", c.get_name()), out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_operation_has_a_route() {
    let mut ops = Vec::new();
    leaves(&payrail::cli::Cli::command(), "", &mut ops);
    let s = Server::start().await;
    let (_, doc) = s.get("/openapi.json", "").await;
    s.stop().await;
    let paths = doc["paths"].as_object().unwrap();
    for op in &ops {
        if LOCAL_ONLY.iter().any(|(c, _)| c == op) {
            continue;
        }
        let Some((_, routes)) = ROUTES.iter().find(|(c, _)| c == op) else {
            panic!(
                "`payrail {op}` has no route listed here: add its route (or say why it has none)"
            );
        };
        for r in *routes {
            let (method, path) = r.split_once(' ').unwrap();
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "`payrail {op}`: {r} is not in the OpenAPI document"
            );
        }
    }
    // and the lists name only commands that exist
    let listed = LOCAL_ONLY.iter().map(|(c, _)| *c);
    for c in listed.chain(ROUTES.iter().map(|(c, _)| *c)) {
        assert!(ops.iter().any(|o| o == c), "no command `payrail {c}`");
    }
}
