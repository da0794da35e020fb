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
pub mod ledger;
pub mod locks;
pub mod model;
pub mod processor;
pub mod registry;
pub mod samples;

pub use error::{Error, Result};
