//! Outside tools the tests run: commands that must succeed, and Python
//! venvs with pinned packages from PyPI (made once, under a lock, in
//! `target/python-venv`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    match option_env!("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join("target"),
    }
}

/// Runs `cmd` (described as `what`); its stdout, or a panic with its
/// status and both outputs.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The venv `target/python-venv/<name>`, with `packages` (pip arguments:
/// pinned names, or `-r FILE`) installed, made once under a file lock
/// (tests in parallel share it). Needs python3 with venv and pip, and PyPI.
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    let root = target_dir().join("python-venv");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join(format!(".{name}.lock"))).unwrap();
    lock.lock().expect("lock the venv");
    let venv = root.join(name);
    if !venv.join(".installed").exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let started = std::time::Instant::now();
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run_ok(
            Command::new(&python).args(["-m", "venv"]).arg(&venv),
            "creating a Python venv (needs python3 with the venv module, \
             e.g. apt-get install python3-venv)",
        );
        run_ok(
            Command::new(venv.join("bin/python"))
                .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
                .args(packages)
                .current_dir(repo_root()),
            &format!("pip install {packages:?} (needs pip and PyPI)"),
        );
        std::fs::write(venv.join(".installed"), "").unwrap();
        println!("venv {name}: {:.1?}", started.elapsed());
    }
    venv
}

/// Copies the directory tree `from` to `to`, leaving out entries named in
/// `skip` at any depth (e.g. `node_modules`).
pub fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target, skip);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `npm ARGS` in `dir` (needs Node.js, npm and, to install, the npm
/// registry); its stdout, or a panic with both outputs.
pub fn npm(dir: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("npm")
            .args(args)
            .args(["--no-audit", "--no-fund"])
            .current_dir(dir),
        &format!("npm {args:?} in {} (needs Node.js and npm)", dir.display()),
    )
}

/// The value `setup` makes, once per test binary, for every test that asks.
/// A failed setup is kept too: the other tests fail at once with its
/// message (`what` says what failed) instead of running it again.
pub fn once<T: Send + Sync>(
    cell: &'static std::sync::OnceLock<Result<T, String>>,
    what: &str,
    setup: fn() -> T,
) -> &'static T {
    let made = cell.get_or_init(|| {
        std::panic::catch_unwind(setup).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match made {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e}"),
    }
}
