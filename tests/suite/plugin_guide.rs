//! The plugin guide's quickstarts (docs/plugin-guide.md, "Quickstarts"),
//! run as written: each language's block after the shared setup block, in
//! bash with `set -euo pipefail`, with the `payrail` binary on PATH and a
//! fresh database in DATABASE_URL. Then the ledger is read to check what
//! the commands said they did: the rule went live, its next build ran in
//! shadow beside it, and the promote made the candidate the live plugin.
//!
//! Each block builds its project from scratch, as an author would: Rust
//! from the crates cargo has already fetched for the workspace, TypeScript
//! from the npm registry (npm's cache), Python from PyPI (pip's cache).

use crate::common::{TestDb, repo_root, target_dir};
use payrail::model::DEFAULT_TENANT;
use payrail::registry;
use std::path::Path;
use std::process::Command;

/// The `sh` block after `<!-- quickstart: NAME -->` in the guide.
fn block(guide: &str, name: &str) -> String {
    let marker = format!("<!-- quickstart: {name} -->");
    let at = guide
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/plugin-guide.md has no {marker}"));
    let rest = &guide[at + marker.len()..];
    let start = rest.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block ends");
    rest[start..start + end].to_string()
}

/// Runs the setup block, then `lang`'s, in a new directory; returns the
/// database and the output (stdout, then stderr).
async fn run_quickstart(lang: &str) -> (TestDb, String) {
    let guide = std::fs::read_to_string(repo_root().join("docs/plugin-guide.md")).unwrap();
    let script = format!(
        "set -euo pipefail\n{}\n{}",
        block(&guide, "setup"),
        block(&guide, lang)
    );
    let db = TestDb::new().await;
    let work = target_dir().join("plugin-guide").join(format!(
        "{lang}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&work).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_payrail")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("PATH", path)
        .env("DATABASE_URL", &db.url)
        .env("PAYRAIL_CACHE_DIR", work.join("artifacts"))
        .env("CARGO_NET_OFFLINE", "true");
    // the author's cargo, not the one running this test's settings
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
    ] {
        cmd.env_remove(var);
    }
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {lang} quickstart failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    println!("{lang} quickstart: {:.1?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&work);
    (db, format!("{stdout}\n{stderr}"))
}

/// The ledger after a quickstart with the rule `name`: three payments, the
/// live step is the second build, shadowed then promoted.
async fn check_ledger(db: &TestDb, stdout: &str, name: &str) {
    let c = db.pool.get().await.unwrap();
    let p = registry::load_pipeline(&c, DEFAULT_TENANT, "transfer")
        .await
        .unwrap();
    let step = &p.steps[0];
    // one row per name: its latest deploy, the second build
    let deployed = registry::list_plugins(&c, DEFAULT_TENANT, None, (">", "asc"), 10)
        .await
        .unwrap();
    let [latest] = deployed.as_slice() else {
        panic!("one rule deployed: {deployed:?}");
    };
    assert_eq!(
        (latest.name.as_str(), latest.version.as_deref()),
        (name, Some("v2"))
    );
    // the promote made it the live plugin, with no candidate
    assert_eq!(step.digest, latest.digest, "{p:?}");
    assert_eq!(step.plugin, name, "{p:?}");
    assert!(step.candidate.is_none(), "{p:?}");
    // set, shadow set, promote
    assert_eq!(p.version, 3, "{p:?}");
    assert_eq!(db.counts().await[0], 3, "three payments");
    // the shadow report saw the change on the approval only
    assert!(stdout.contains("\"disagree\": 1"), "{stdout}");
    assert!(stdout.contains("\"agree\": 1"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_quickstart_runs_as_written() {
    let (db, out) = run_quickstart("rust").await;
    assert!(out.contains("test result: ok. 2 passed"), "{out}");
    check_ledger(&db, &out, "my-rule").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_quickstart_runs_as_written() {
    let (db, out) = run_quickstart("ts").await;
    assert!(
        out.contains("# pass 2") && out.contains("# fail 0"),
        "{out}"
    );
    check_ledger(&db, &out, "ts-rule").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_quickstart_runs_as_written() {
    let (db, out) = run_quickstart("python").await;
    assert!(out.contains("Ran 2 tests") && out.contains("\nOK"), "{out}");
    check_ledger(&db, &out, "py-rule").await;
}
