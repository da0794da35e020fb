//! payrail: a transaction processor that runs every payment through a
//! pipeline of sandboxed WebAssembly rule plugins inside one Postgres
//! transaction.
//!
//! Data flows one way: [`cli`] / [`api`] -> [`processor`] -> ([`locks`], [`engine`],
//! [`ledger`], outbox rows) -> Postgres. The [`engine`] knows nothing of
//! Postgres; the [`ledger`] knows nothing of WebAssembly.

pub mod api;
pub mod apikeys;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod currency;
pub mod db;
pub mod demo;
pub mod engine;
pub mod error;
pub mod holds;
pub mod ledger;
pub mod locks;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod platform_cli;
pub mod plugin_tools;
pub mod processor;
pub mod registry;
pub mod replay;
pub mod samples;
pub mod shadow;
pub mod signing;

pub use error::{Error, Result};
