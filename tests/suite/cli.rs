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

/// `pipeline set --limits STEP=JSON` sets a step's limits; a bad one is a
/// typed error (exit 2) and leaves the pipeline as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_set_takes_a_steps_limits_and_refuses_bad_ones() {
    let db = common::TestDb::new().await;
    let cli = Cli {
        url: db.url.clone(),
    };
    cli.ok(&["migrate"]);
    let limits = format!("{}/payrail_limits.wasm", payrail::samples::WASM_DIR);
    cli.ok(&["plugin", "deploy", &limits, "--name", "limits"]);
    let set = |extra: &[&str]| {
        let mut args = vec!["pipeline", "set", "transfer", "limits", "limits"];
        args.extend_from_slice(extra);
        cli.run(&args)
    };
    let (code, out, err) = set(&[
        "--limits",
        r#"1={"max_memory_bytes":16777216,"fuel":2000000}"#,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(p["steps"][0].get("limits").is_none(), "{p}");
    assert_eq!(p["steps"][1]["limits"]["max_memory_bytes"], 16777216, "{p}");
    assert_eq!(p["steps"][1]["limits"]["fuel"], 2000000, "{p}");
    for (bad, says) in [
        (vec!["--limits", r#"2={"fuel":1}"#], "step number below 2"),
        (vec!["--limits", r#"x={"fuel":1}"#], "step number below 2"),
        (vec!["--limits", r#"{"fuel":1}"#], "STEP=JSON"),
        (vec!["--limits", "0=not json"], "expected"),
        (vec!["--limits", r#"0={"fule":1}"#], "unknown field"),
        (
            vec!["--limits", r#"0={"fuel":1}"#, "--limits", r#"0={"fuel":2}"#],
            "twice",
        ),
        // over the host's cap (10^8 fuel by default)
        (
            vec!["--limits", r#"0={"fuel":100000000000}"#],
            "above the cap",
        ),
        (vec!["--limits", r#"0={"fuel":0}"#], "must be positive"),
    ] {
        let (code, out, err) = set(&bad);
        assert_eq!(code, 2, "{bad:?}: {out}{err}");
        assert!(
            err.contains("invalid_limits") && err.contains(says),
            "{bad:?}: {err}"
        );
    }
    let shown: serde_json::Value =
        serde_json::from_str(&cli.ok(&["pipeline", "show", "transfer"])).unwrap();
    assert_eq!(shown["version"], 1, "{shown}");
}

/// `migrate --status` and `--dry-run` change nothing and say what a run
/// would do; the run then does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_status_and_dry_run_show_what_a_run_would_do() {
    let db = common::TestDb::unmigrated().await;
    let cli = Cli {
        url: db.url.clone(),
    };
    let status: serde_json::Value =
        serde_json::from_str(&cli.ok(&["migrate", "--status"])).unwrap();
    let all = status.as_array().unwrap();
    assert_eq!(all.len(), payrail::db::migrate::MIGRATIONS.len());
    assert!(all.iter().all(|m| m["applied_at"].is_null()));
    let fences = all.iter().find(|m| m["version"] == 16).unwrap();
    assert_eq!(fences["locks"][0]["table"], "payrail.accounts", "{fences}");
    assert_eq!(fences["locks"][0]["impact"], "brief", "{fences}");
    let script = cli.ok(&["migrate", "--dry-run", "--lock-timeout-ms", "750"]);
    assert!(
        script.contains("set local lock_timeout = '750ms';"),
        "{script}"
    );
    assert!(script.contains("alter table payrail.accounts add column lock_fence"));
    // nothing was applied by either
    let (_, again, _) = cli.run(&["migrate", "--status"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap(),
        status
    );
    cli.ok(&["migrate"]);
    let status: serde_json::Value =
        serde_json::from_str(&cli.ok(&["migrate", "--status"])).unwrap();
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|m| !m["applied_at"].is_null()
                && m["changed"] == false
                && m.get("locks").is_none())
    );
    assert_eq!(cli.ok(&["migrate", "--dry-run"]), "");
}

/// `--version` names what an operator needs to match a binary to its
/// source and to the plugins it accepts.
#[test]
fn version_names_the_release_the_commit_and_the_wit_package() {
    let out = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let wit = std::fs::read_to_string(root.join("wit/payrail.wit")).unwrap();
    let package = wit
        .lines()
        .find_map(|l| l.strip_prefix("package "))
        .unwrap()
        .trim_end_matches(';');
    assert!(
        text.starts_with(&format!("payrail {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains(&format!("plugins: {package})")), "{text}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success());
    if let Some(head) = head {
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        assert!(
            text.contains(&format!("commit {head};")),
            "{text} (HEAD {head})"
        );
    }
}

/// The example configuration parses as `serve` would read it, and the
/// systemd unit keeps its hardening.
#[test]
fn the_packaged_configuration_parses_and_the_unit_is_hardened() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let mut c = payrail::config::Config::from_file(&root.join("packaging/payrail.toml"))
        .expect("packaging/payrail.toml parses");
    assert!(c.server.tls.is_some(), "the example terminates TLS");
    // the rest is valid without the files and secrets of a real server
    c.server.tls = None;
    c.sinks.clear();
    c.validate().unwrap();
    let unit = std::fs::read_to_string(root.join("packaging/payrail.service")).unwrap();
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=payrail",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ReadWritePaths=",
    ] {
        assert!(
            unit.contains(directive),
            "payrail.service lacks {directive}"
        );
    }
    assert!(
        !unit
            .lines()
            .any(|l| l.trim_start().starts_with("MemoryDenyWriteExecute=yes")),
        "wasmtime compiles plugins to machine code: W^X memory would stop it"
    );
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

/// `--tenant` on every data command: a tenant's accounts, payments and
/// keys are its own, and what the CLI changes is in the audit log under
/// `cli:<user>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_command_takes_a_tenant() {
    let db = common::TestDb::new().await;
    let cli = Cli {
        url: db.url.clone(),
    };
    cli.ok(&[
        "--tenant",
        "acme",
        "account",
        "create",
        "a1",
        "--currency",
        "EUR",
        "--opening-balance",
        "500",
    ]);
    cli.ok(&[
        "--tenant",
        "acme",
        "account",
        "create",
        "a2",
        "--currency",
        "EUR",
    ]);
    let shown: serde_json::Value =
        serde_json::from_str(&cli.ok(&["--tenant", "acme", "account", "show", "a1"])).unwrap();
    assert_eq!(shown["balance"], 500);
    let (code, _, err) = cli.run(&["account", "show", "a1"]);
    assert_ne!(code, 0, "tenant default has no a1");
    assert!(
        err.contains("account_not_found") || err.contains("not found"),
        "{err}"
    );
    // a payment of acme, through an empty pipeline set by the CLI of acme
    let c = db.pool.get().await.unwrap();
    payrail::registry::set_pipeline(&c, &common::engine(), "acme", "move", &[])
        .await
        .unwrap();
    let paid: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "--tenant",
        "acme",
        "pay",
        "--kind",
        "move",
        "--from",
        "a1",
        "--to",
        "a2",
        "--amount",
        "120",
        "--currency",
        "EUR",
        "--key",
        "k1",
    ]))
    .unwrap();
    assert_eq!(paid["status"], "approved", "{paid}");
    let (code, _, _) = cli.run(&[
        "pay",
        "--kind",
        "move",
        "--from",
        "a1",
        "--to",
        "a2",
        "--amount",
        "1",
        "--currency",
        "EUR",
        "--key",
        "k2",
    ]);
    assert_ne!(code, 0, "tenant default cannot pay from acme's account");
    // keys: the global flag, before or after the subcommand
    cli.ok(&["apikey", "create", "--tenant", "acme", "--scopes", "admin"]);
    let listed: serde_json::Value =
        serde_json::from_str(&cli.ok(&["--tenant", "acme", "apikey", "list"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (code, _, err) = cli.run(&["apikey", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("tenant_required"), "{err}");
    let (code, _, err) = cli.run(&["--tenant", "no such tenant", "account", "show", "a1"]);
    assert_ne!(code, 0);
    assert!(err.contains("tenant"), "{err}");
    let rows = c
        .query(
            "select actor, action, target from payrail.admin_audit where tenant = 'acme' order by id",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(1), r.get(2))).collect();
    assert_eq!(seen[0], ("account.open".to_string(), "a1".to_string()));
    assert_eq!(seen[1].0, "apikey.create");
    assert_eq!(
        seen.len(),
        2,
        "a2 opened without money is not an admin act: {seen:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r.get::<_, String>(0).starts_with("cli:"))
    );
}

/// A real payment's plugin call taken out as a fixture: `plugin test
/// --expect` finds the same decision with the same build, and a
/// difference (exit 1) when the rule changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_call_becomes_a_fixture_that_plugin_test_replays() {
    let db = common::TestDb::new().await;
    db.samples().await;
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let declined = db
        .processor()
        .pay(
            payrail::model::DEFAULT_TENANT,
            "too-big",
            &common::transfer("alice", "bob", 250_000),
        )
        .await
        .unwrap()
        .response;
    assert_eq!(declined.decline.as_ref().unwrap().code, "amount_too_large");
    let cli = Cli {
        url: db.url.clone(),
    };
    let dir = std::env::temp_dir().join(format!("payrail-fixture-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = dir.join("declined.json");
    let f = fixture.to_str().unwrap();
    cli.ok(&["plugin", "fixture", &declined.id, "--step", "0", "--out", f]);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&fixture).unwrap()).unwrap();
    assert_eq!(written["expect"]["decision"], "decline", "{written}");
    assert_eq!(written["expect"]["code"], "amount_too_large");
    assert_eq!(written["from"]["payment_id"], declined.id.as_str());
    assert_eq!(written["payment"]["amount"], 250_000);

    let limits = format!("{}/payrail_limits.wasm", payrail::samples::WASM_DIR);
    let out = cli.ok(&["plugin", "test", &limits, "--input", f, "--expect"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["matches_expected"], true, "{report}");
    // the author raises the limit: the same payment now passes, and the
    // comparison says it differs from what production decided
    let mut edited = written.clone();
    let config = edited["config"]
        .as_str()
        .unwrap()
        .replace("100000", "1000000");
    edited["config"] = config.into();
    let raised = dir.join("raised.json");
    std::fs::write(&raised, edited.to_string()).unwrap();
    let (code, out, err) = cli.run(&[
        "plugin",
        "test",
        &limits,
        "--input",
        raised.to_str().unwrap(),
        "--expect",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["decision"]["decision"], "approve", "{report}");
    assert_eq!(report["matches_expected"], false);
    assert!(err.contains("DIFFERS"), "{err}");
    // a step that never ran, another tenant, a fixture without `expect`
    let (code, _, err) = cli.run(&["plugin", "fixture", &declined.id, "--step", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("call_not_found"), "{err}");
    let (code, _, err) = cli.run(&[
        "--tenant",
        "other",
        "plugin",
        "fixture",
        &declined.id,
        "--step",
        "0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("payment_not_found"), "{err}");
    let mut bare = written.clone();
    bare.as_object_mut().unwrap().remove("expect");
    let bare_path = dir.join("bare.json");
    std::fs::write(&bare_path, bare.to_string()).unwrap();
    let (code, _, err) = cli.run(&[
        "plugin",
        "test",
        &limits,
        "--input",
        bare_path.to_str().unwrap(),
        "--expect",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no `expect`"), "{err}");
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

/// `payrail bench` runs the `payrail-bench` next to the binary: with none
/// there it says to build it; with one (a stand-in script here) it passes
/// the arguments through, the database in the environment, itself as
/// `PAYRAIL_BIN`, and exits with its status.
#[test]
fn bench_runs_the_bench_binary_next_to_payrail() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-forward-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let payrail = dir.join("payrail");
    // a link, not a copy, when the file system allows: the binary is large
    if std::fs::hard_link(env!("CARGO_BIN_EXE_payrail"), &payrail).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_payrail"), &payrail).unwrap();
    }
    let run = || {
        let out = Command::new(&payrail)
            .args(["--database-url", "postgres://u:secret@h/db", "bench"])
            .args(["--secs", "3", "--help"])
            .env_remove("PAYRAIL_BIN")
            .env_remove("DATABASE_URL")
            .output()
            .expect("run payrail bench");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let (code, err) = run();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("[missing_binary]")
            && err.contains("payrail-bench")
            && err.contains("cargo build --release -p payrail-bench"),
        "{err}"
    );

    let bench = dir.join("payrail-bench");
    std::fs::write(
        &bench,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" \"$DATABASE_URL\" \"$PAYRAIL_BIN\" > \"$0.seen\"\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&bench, std::fs::Permissions::from_mode(0o755)).unwrap();
    // another test's fork can hold the script open for writing a moment
    // (ETXTBSY): try again
    let (code, err) = (0..20)
        .map(|i| {
            std::thread::sleep(std::time::Duration::from_millis(50 * i));
            run()
        })
        .find(|(_, err)| !err.contains("busy"))
        .expect("the script ran");
    assert_eq!(code, Some(7), "{err}");
    let seen = std::fs::read_to_string(dir.join("payrail-bench.seen")).unwrap();
    let expected = format!(
        "--secs\n3\n--help\npostgres://u:secret@h/db\n{}\n",
        payrail.display()
    );
    assert_eq!(seen, expected);
    std::fs::remove_dir_all(dir).ok();
}

/// Every file the docs and the code name exists: path tokens under a
/// top-level directory, bare top-level files, relative Markdown links. A
/// page or report that moves must take its references with it. Reads files
/// only, no database.
#[test]
fn every_referenced_file_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is host/, under the repository root");
    let mut sources = Vec::new();
    for top in TOP_LEVEL_FILES {
        if root.join(top).is_file() {
            sources.push(root.join(top));
        }
    }
    for (dir, ext) in [
        ("docs", "md"),
        ("host", "rs"),
        ("tests", "rs"),
        ("plugins", "rs"),
    ] {
        collect_files(&root.join(dir), ext, &mut sources);
    }
    let mut missing = Vec::new();
    for file in &sources {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let name = file
            .strip_prefix(root)
            .expect("sources are under the root")
            .display()
            .to_string();
        let dir = file.parent().expect("a file has a directory");
        for (n, line) in text.lines().enumerate() {
            for path in path_tokens(line) {
                if !root.join(path).exists() {
                    missing.push(format!("{name}:{}: {path}", n + 1));
                }
            }
            if name.ends_with(".md") {
                for link in markdown_links(line) {
                    if !dir.join(link).exists() {
                        missing.push(format!("{name}:{}: link {link}", n + 1));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} reference(s) to files that do not exist:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// Bare file names at the top level that docs refer to. Spelled in two
/// pieces so that this line does not name a top-level file that is not
/// there (the upgrade notes live in docs/).
const TOP_LEVEL_FILES: [&str; 2] = [concat!("README", ".md"), concat!("UPGRADING", ".md")];

/// What a referenced path starts with: a top-level directory or file.
const REFERENCE_STARTS: [&str; 11] = [
    "docs/",
    "packaging/",
    "host/",
    "tests/",
    "plugins/",
    "migrations/",
    "bench/",
    "wit/",
    ".ci/",
    TOP_LEVEL_FILES[0],
    TOP_LEVEL_FILES[1],
];

/// Characters of a placeholder or a glob (`<date>`, `{a,b}`, `*`): such a
/// token names no single file.
fn is_template_char(c: char) -> bool {
    matches!(c, '*' | '{' | '}' | '<' | '>')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// Repository paths named on a line, without a sentence's final dot. A
/// token starts only after a character that cannot be part of a path: in a
/// URL's `localhost/x`, or in build output under `target/wasm-plugins`, the
/// top-level name is part of a longer word.
fn path_tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut prev: Option<char> = None;
    let mut i = 0;
    while let Some(c) = line[i..].chars().next() {
        let rest = &line[i..];
        let starts = REFERENCE_STARTS.iter().any(|p| rest.starts_with(*p));
        if starts && !prev.is_some_and(is_path_char) {
            let end = rest
                .find(|c: char| !(is_path_char(c) || is_template_char(c)))
                .unwrap_or(rest.len());
            let token = &rest[..end];
            if !token.contains(is_template_char) {
                out.push(token.trim_end_matches('.'));
            }
            prev = token.chars().last();
            i += end;
        } else {
            prev = Some(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Targets of a line's Markdown links into the repository (no URLs, no
/// bare anchors), without their `#fragment`; relative to the page.
fn markdown_links(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split('#').next().unwrap_or("");
        let external = ["http://", "https://", "mailto:"]
            .iter()
            .any(|p| target.starts_with(*p));
        if !target.is_empty()
            && !external
            && !target.contains(|c: char| is_template_char(c) || c == ' ')
        {
            out.push(target);
        }
        rest = &after[end + 1..];
    }
    out
}

/// Files under `dir` ending in `.ext`, recursively, leaving out build
/// output and hidden directories.
fn collect_files(dir: &std::path::Path, ext: &str, out: &mut Vec<std::path::PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name != "target" && !name.starts_with('.') {
                collect_files(&path, ext, out);
            }
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}
