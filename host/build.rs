//! Builds the sample and test plugins for `wasm32-wasip2` so a fresh clone
//! needs no manual step: the demo embeds the samples, the tests load the
//! test plugins from `PAYRAIL_WASM_DIR`.
//!
//! A nested `cargo build` with its own target dir (the outer build holds the
//! lock on `target/`); cargo's own fingerprinting makes it a no-op when the
//! plugins did not change.

use std::path::PathBuf;
use std::process::Command;

const PLUGINS: &[&str] = &["payrail_fee", "payrail_limits", "payrail_hostile"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let target_dir = std::env::var("PAYRAIL_WASM_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target").join("wasm-plugins"));
    for watched in ["plugins", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=PAYRAIL_WASM_TARGET_DIR");
    stamp_version(&root);

    ensure_wasm_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for p in PLUGINS {
        cmd.args(["-p", &p.replace('_', "-")]);
    }
    // The outer build's flags are for the host target, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run cargo to build the plugins");
    if !out.status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed (is the target installed? rust-toolchain.toml lists it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wasm_dir = target_dir.join("wasm32-wasip2").join("plugin");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    for p in PLUGINS {
        let file = format!("{p}.wasm");
        std::fs::copy(wasm_dir.join(&file), out_dir.join(&file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    println!("cargo:rustc-env=PAYRAIL_WASM_DIR={}", wasm_dir.display());
}

/// `payrail --version` names the commit it was built from and the WIT
/// package its plugins must implement: `PAYRAIL_GIT_COMMIT` (`unknown`
/// outside a git checkout) and `PAYRAIL_WIT_PACKAGE`.
fn stamp_version(root: &std::path::Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // a new commit moves HEAD or the branch it names
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{branch}");
        }
    }
    println!("cargo:rustc-env=PAYRAIL_GIT_COMMIT={commit}");
    let wit = std::fs::read_to_string(root.join("wit/payrail.wit")).expect("read wit/payrail.wit");
    let package = wit
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').trim().to_string())
        .expect("wit/payrail.wit names its package");
    println!("cargo:rustc-env=PAYRAIL_WIT_PACKAGE={package}");
}

/// rust-toolchain.toml lists the target, but rustup only installs it on its
/// own when auto-install is on; if the sysroot lacks it, ask rustup once.
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let lib = PathBuf::from(&sysroot).join("lib/rustlib/wasm32-wasip2");
    if lib.exists() {
        return;
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", "wasm32-wasip2"]);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        _ => panic!(
            "the wasm32-wasip2 target is missing from {sysroot} and `rustup target add wasm32-wasip2` failed; install it by hand"
        ),
    }
}
