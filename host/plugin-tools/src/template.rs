//! `payrail plugin new`: a ready-to-build plugin crate.

use crate::{Result, ToolError};
use std::path::Path;

/// The repository this binary was built from (for `plugin new`'s path to
/// the SDK): this crate is host/plugin-tools.
fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Creates the plugin crate `name` in `dir/name`: Cargo.toml, src/lib.rs
/// (an amount-cap rule with unit tests), a fixture and a README. Returns
/// the crate directory.
pub fn new_plugin(name: &str, dir: &Path) -> Result<std::path::PathBuf> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || !name.as_bytes()[0].is_ascii_lowercase()
    {
        return Err(ToolError::invalid(
            "invalid_id",
            "a plugin crate name is 1-64 of a-z 0-9 - _, starting with a letter",
        ));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ToolError::AlreadyExists {
            what: "directory",
            id: root.display().to_string(),
        });
    }
    let sdk = repo_root().join("plugins/sdk");
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let write = |rel: &str, text: &str| -> Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                ToolError::invalid("unwritable_file", format!("{}: {e}", p.display()))
            })?;
        }
        std::fs::write(&p, text)
            .map_err(|e| ToolError::invalid("unwritable_file", format!("{}: {e}", p.display())))
    };
    write(
        "Cargo.toml",
        &TEMPLATE_CARGO
            .replace("{name}", name)
            .replace("{sdk}", &sdk.display().to_string()),
    )?;
    write("src/lib.rs", TEMPLATE_LIB)?;
    write("fixture.json", TEMPLATE_FIXTURE)?;
    write(
        "README.md",
        &TEMPLATE_README
            .replace("{file}", &name.replace('-', "_"))
            .replace("{name}", name),
    )?;
    // the repository's lock file and toolchain: same dependency versions
    // (builds offline) and the wasm32-wasip2 target
    for f in ["Cargo.lock", "rust-toolchain.toml"] {
        if let Ok(text) = std::fs::read_to_string(repo_root().join(f)) {
            write(f, &text)?;
        }
    }
    Ok(root)
}

const TEMPLATE_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
payrail-plugin = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }

# a workspace of its own (not a member of the payrail repository's)
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
"#;

const TEMPLATE_LIB: &str = r##"//! A payrail rule: declines payments above `max_amount` (minor units).
//!
//! Config: `{"max_amount": 100000}`.

use payrail_plugin::{Decision, Input, PluginError, Rule, approve, config, decline};
use serde::Deserialize;

/// The rule (exported as the component's `evaluate`).
pub struct MyRule;

/// Step config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MyConfig {
    /// Largest amount approved.
    pub max_amount: i64,
}

impl Rule for MyRule {
    fn evaluate(input: Input) -> Result<Decision, PluginError> {
        let cfg: MyConfig = config(&input)?;
        if input.payment.amount > cfg.max_amount {
            return Ok(decline(
                "amount_too_large",
                format!("amount {} is above {}", input.payment.amount, cfg.max_amount),
            ));
        }
        Ok(approve().annotation("checked_by", "my-rule").into())
    }
}

payrail_plugin::export_rule!(MyRule);

#[cfg(test)]
mod tests {
    use super::*;
    use payrail_plugin::InputBuilder;

    fn run(amount: i64) -> Result<Decision, PluginError> {
        MyRule::evaluate(
            InputBuilder::new()
                .amount(amount)
                .config(r#"{"max_amount": 1000}"#)
                .build(),
        )
    }

    #[test]
    fn approves_up_to_the_cap_and_declines_above() {
        assert!(matches!(run(1000).unwrap(), Decision::Approve(_)));
        let Decision::Decline(d) = run(1001).unwrap() else {
            panic!("approved above the cap");
        };
        assert_eq!(d.code, "amount_too_large");
    }

    #[test]
    fn a_bad_config_is_an_error() {
        let e = MyRule::evaluate(InputBuilder::new().config("{}").build()).unwrap_err();
        assert_eq!(e.code, "invalid_config");
    }
}
"##;

const TEMPLATE_FIXTURE: &str = r#"{
  "payment": {"kind": "transfer", "amount": 2500, "currency": "EUR",
              "source": "alice", "destination": "bob"},
  "accounts": [{"id": "alice", "currency": "EUR", "balance": 100000},
               {"id": "bob", "currency": "EUR", "balance": 0}],
  "config": {"max_amount": 100000}
}
"#;

const TEMPLATE_README: &str = r#"# {name}

A payrail rule plugin. See docs/plugin-guide.md in the payrail repository.

```sh
cargo test                                          # unit tests (native)
cargo build --release --target wasm32-wasip2        # the component
payrail plugin test target/wasm32-wasip2/release/{file}.wasm --input fixture.json
payrail plugin deploy target/wasm32-wasip2/release/{file}.wasm --name {name}
```
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// `plugin new` refuses a bad crate name and never overwrites.
    #[test]
    fn a_bad_name_or_an_existing_directory_is_refused() {
        let dir = std::env::temp_dir().join(format!("payrail-tools-new-{}", std::process::id()));
        for name in ["", "My-Rule", "1rule", "a/b", &"a".repeat(65)] {
            let e = new_plugin(name, &dir).unwrap_err();
            assert_eq!(e.code(), "invalid_id", "{name:?}");
        }
        std::fs::create_dir_all(dir.join("taken")).unwrap();
        let e = new_plugin("taken", &dir).unwrap_err();
        assert_eq!(e.code(), "already_exists", "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The template's path to the SDK and the files it copies are the
    /// repository's (this crate is two levels down).
    #[test]
    fn the_repository_root_holds_the_sdk_and_the_lock_file() {
        for f in [
            "plugins/sdk/Cargo.toml",
            "Cargo.lock",
            "rust-toolchain.toml",
        ] {
            assert!(repo_root().join(f).is_file(), "{f}");
        }
    }
}
