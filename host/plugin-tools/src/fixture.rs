//! Reading files and fixtures; loading a plugin on an engine of its own.

use crate::{Result, ToolError};
use payrail_engine::model::PluginInput;
use payrail_engine::{EngineConfig, PluginEngine};
use std::path::Path;

/// Largest fixture file read.
pub const MAX_FIXTURE_BYTES: u64 = 4 * 1024 * 1024;

/// The file at `path`, refused above `max` bytes.
pub(crate) fn read(path: &Path, max: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| {
        ToolError::invalid(
            "unreadable_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if meta.len() > max {
        return Err(ToolError::invalid(
            "file_too_large",
            format!("{} is {} bytes, above {max}", path.display(), meta.len()),
        ));
    }
    std::fs::read(path).map_err(|e| {
        ToolError::invalid(
            "unreadable_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

/// A fixture: a plugin input where `config` may be a JSON object (it is
/// passed as text, as the host does) and metadata may be left out.
pub fn parse_fixture(json: &[u8]) -> Result<PluginInput> {
    Ok(parse_fixture_expecting(json)?.0)
}

/// [`parse_fixture`], and the decision the fixture expects, if it says:
/// its `expect` field (what `payrail plugin fixture` writes: the journaled
/// decision of the call it was taken from). `from`, where it was taken
/// from, is for people and ignored.
pub fn parse_fixture_expecting(json: &[u8]) -> Result<(PluginInput, Option<serde_json::Value>)> {
    let bad = |m: String| ToolError::invalid("invalid_fixture", m);
    let mut v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(format!("fixture is not JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| bad("fixture must be a JSON object".into()))?;
    let expect = obj.remove("expect");
    obj.remove("from");
    let config = obj
        .remove("config")
        .unwrap_or_else(|| serde_json::json!({}));
    let config = match config {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    obj.insert("config".into(), config.into());
    obj.entry("previous")
        .or_insert_with(|| serde_json::json!([]));
    obj.entry("now_ms").or_insert_with(|| serde_json::json!(0));
    if let Some(p) = obj.get_mut("payment").and_then(|p| p.as_object_mut()) {
        p.entry("metadata").or_insert_with(|| serde_json::json!({}));
        p.entry("id")
            .or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    }
    if let Some(accounts) = obj.get_mut("accounts").and_then(|a| a.as_array_mut()) {
        for a in accounts.iter_mut().filter_map(|a| a.as_object_mut()) {
            a.entry("metadata").or_insert_with(|| serde_json::json!({}));
            a.entry("allow_negative").or_insert(false.into());
        }
    }
    let input = serde_json::from_value(v)
        .map_err(|e| bad(format!("fixture is not a plugin input: {e}")))?;
    Ok((input, expect))
}

/// A plugin loaded, with the fixture to call it on.
pub(crate) struct Loaded {
    pub engine: PluginEngine,
    pub digest: String,
    pub input: PluginInput,
    /// The decision the fixture expects, if it says.
    pub expect: Option<serde_json::Value>,
}

/// Reads `wasm` and `fixture` and loads the plugin (validated as at
/// deploy) on a new engine of `config`.
pub(crate) fn load(config: EngineConfig, wasm: &Path, fixture: &Path) -> Result<Loaded> {
    let bytes = read(wasm, config.max_plugin_bytes as u64 + 1)?;
    let (input, expect) = parse_fixture_expecting(&read(fixture, MAX_FIXTURE_BYTES)?)?;
    let engine = PluginEngine::new(config)
        .map_err(|e| ToolError::Setup(format!("cannot create the wasm engine: {e:#}")))?;
    let digest = engine.load(&bytes)?;
    Ok(Loaded {
        engine,
        digest,
        input,
        expect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture may give `config` as an object and leave out the ids,
    /// metadata, `previous` and `now_ms`; what is not a plugin input is
    /// `invalid_fixture`.
    #[test]
    fn a_fixture_fills_in_what_it_leaves_out() {
        let input = parse_fixture(
            br#"{"payment": {"kind": "transfer", "amount": 5, "currency": "EUR",
                             "source": "a", "destination": "b"},
                 "accounts": [{"id": "a", "currency": "EUR", "balance": 9}],
                 "config": {"max_amount": 7}}"#,
        )
        .unwrap();
        let config: serde_json::Value = serde_json::from_str(&input.config).unwrap();
        assert_eq!(config, serde_json::json!({"max_amount": 7}));
        assert_eq!((input.now_ms, input.previous.len()), (0, 0));
        for bad in [&b"[]"[..], b"not json", br#"{"payment": 1}"#] {
            let e = parse_fixture(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_fixture", "{e}");
        }
    }
}
