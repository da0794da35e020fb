//! Plugin author tooling, no database needed: `payrail plugin test` (run a
//! component on a fixture and show its costs against the limits),
//! `payrail plugin new` (a ready-to-build plugin crate), `payrail plugin
//! keygen` / `payrail plugin sign` (optional signatures), `payrail plugin
//! bench` (per-call cost of a plugin, split by phase).
//!
//! A crate of its own on the engine alone: no `payrail`, no database
//! client in its dependency tree. The host's command line parses
//! [`ToolCmd`] and calls [`run`] with the engine configuration it reads
//! from the environment; [`ToolError`] converts into the host's error.

//!
//! Modules: [`fixture`] (fixtures and reading files), [`trial`] (`plugin
//! test`), [`bench`] (`plugin bench`), [`keys`] (`plugin keygen`, `plugin
//! sign`), [`template`] (`plugin new`), [`cmd`] (the subcommands).

pub mod bench;
pub mod cmd;
pub mod error;
pub mod fixture;
pub mod keys;
pub mod template;
pub mod trial;

pub use bench::{BenchReport, Spread, bench_loaded, bench_plugin};
pub use cmd::{ToolCmd, run};
pub use error::{Result, ToolError};
pub use fixture::{MAX_FIXTURE_BYTES, parse_fixture, parse_fixture_expecting};
pub use keys::{keygen, sign};
pub use template::{Lang, new_plugin};
pub use trial::{Measure, TestReport, test_plugin};

#[cfg(test)]
mod tests {
    /// "The plugin tools know no SQL" is a fact of the dependency tree: the
    /// engine is in it, `payrail` and every database client are not.
    #[test]
    fn the_engine_alone_no_database_client_in_the_dependency_tree() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args([
                "tree",
                "-p",
                "payrail-plugin-tools",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args([
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ])
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(tree.contains("payrail-engine"), "the tree was read: {tree}");
        for client in ["postgres", "deadpool", "sqlx", "diesel"] {
            assert!(
                !tree.contains(client),
                "{client} in the plugin tools' tree:\n{tree}"
            );
        }
        assert!(
            !tree.lines().any(|l| l.starts_with("payrail v")),
            "the host crate in the plugin tools' tree:\n{tree}"
        );
    }
}
