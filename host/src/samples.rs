//! The sample plugins, built from `plugins/` by `build.rs` and embedded so
//! `payrail demo` and `payrail bench` work from the binary alone.

/// The `fee` sample: percentage + fixed fee with min/max, to a fee account.
pub const FEE_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payrail_fee.wasm"));
/// The `limits` sample: amount limits and allowed currencies.
pub const LIMITS_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payrail_limits.wasm"));
/// An input the `limits` sample approves (`plugins/limits/fixture.json`):
/// what `payrail bench` times it on before the load.
pub const LIMITS_FIXTURE: &str = include_str!("../../plugins/limits/fixture.json");

/// Directory holding every plugin `build.rs` built (including the hostile
/// test plugin), for tests.
pub const WASM_DIR: &str = env!("PAYRAIL_WASM_DIR");

use crate::engine::PluginEngine;
use crate::error::Result;
use crate::registry;
use std::sync::Arc;

/// Deploys the embedded `fee` and `limits` samples (a no-op if already
/// deployed); returns their digests (fee, limits).
pub async fn deploy(
    client: &impl deadpool_postgres::GenericClient,
    engine: &Arc<PluginEngine>,
) -> Result<(String, String)> {
    let fee = registry::deploy_plugin(client, engine, "fee", FEE_WASM.to_vec()).await?;
    let limits = registry::deploy_plugin(client, engine, "limits", LIMITS_WASM.to_vec()).await?;
    Ok((fee, limits))
}
