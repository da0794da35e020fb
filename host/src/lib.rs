//! payrail: a transaction processor that runs every payment through a
//! pipeline of sandboxed WebAssembly rule plugins inside one Postgres
//! transaction.
//!
//! Data flows one way: [`cli`] / [`api`] -> [`processor`] -> ([`locks`], [`engine`],
//! [`ledger`], outbox rows) -> Postgres. The [`engine`] knows nothing of
//! Postgres; the [`ledger`] knows nothing of WebAssembly.

pub mod admin;
pub mod admin_log;
pub mod api;
pub mod apikeys;
pub mod audit;
pub mod cli;
pub mod config;
pub mod context;
pub mod currency;
pub mod db;
pub mod demo;
pub mod error;

/// The plugin sandbox, the payment types and plugin signing: their own
/// crate, with no database in its dependency tree.
pub use payrail_engine::{self as engine, model, signing};
pub use processor::holds;
pub mod ledger;
pub mod locks;
pub mod metrics;
pub mod outbox;
pub mod platform_cli;
pub mod processor;
pub mod redact;
pub mod registry;
pub mod replay;
pub mod samples;
pub mod shadow;
pub mod telemetry;
pub mod tls;

pub use error::{Error, Result};
