//! The integration tests that need no special setup, as one test binary
//! (each test binary links wasmtime and the host again: one link instead of
//! thirteen). One module per former test file; run one of them with a name
//! filter, e.g. `cargo test --test suite payments::`.
//!
//! Not here, each its own binary (host/Cargo.toml says why): `chaos` and
//! `isolation`; `bench_smoke` is a test of the bench crate (host/bench).
//!
//! What the modules share in this one process: the plugin engine of
//! [`common::engine`] (each plugin compiled once for all of them), the local
//! Postgres cluster and the first test's cleanup of stale test databases.
//! No test sets environment variables or changes the current directory
//! (they would leak into every module's tests); a test that needs either
//! runs the `payrail` binary with them (`Command::env`).

#[path = "../common/mod.rs"]
mod common;
mod server;

mod admin;
mod api;
mod batching;
mod cli;
mod console;
mod embedded_pg;
mod holds;
mod hostile;
mod layout;
mod locks;
mod migrations;
mod openapi;
mod outbox;
mod payments;
mod platform;
mod plugin_faults;
mod plugin_guide;
mod plugin_tools;
mod postgres_tls;
mod python_plugin;
mod replication;
mod telemetry;
mod tls;
mod ts_plugin;
