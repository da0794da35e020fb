//! `payrail plugin new`: a ready-to-build plugin crate.

use crate::{Result, ToolError};
use std::path::Path;

/// The repository this binary was built from (for `plugin new`'s path to
/// the SDK): this crate is host/plugin-tools.
fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The language of a new plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate against the SDK in `plugins/sdk`.
    Rust,
    /// A TypeScript npm project against the SDK in `plugins/ts-sdk`,
    /// built with componentize-js.
    Ts,
    /// A Python project built with componentize-py.
    Python,
}

impl Lang {
    /// The commands after `cd` into the new project: test, then build.
    pub fn next_steps(self) -> &'static str {
        match self {
            Lang::Rust => "cargo test && cargo build --release --target wasm32-wasip2",
            Lang::Ts => "npm install && npm test && npm run build",
            Lang::Python => {
                "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt \
                 && .venv/bin/componentize-py -d wit -w rule bindings . \
                 && .venv/bin/python -m unittest test_app"
            }
        }
    }
}

/// Creates the plugin project `name` in `dir/name`: an amount-cap rule
/// with its own passing tests, a fixture and a README, in `lang`. Returns
/// the project directory.
pub fn new_plugin(name: &str, dir: &Path, lang: Lang) -> Result<std::path::PathBuf> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || !name.as_bytes()[0].is_ascii_lowercase()
    {
        return Err(ToolError::invalid(
            "invalid_id",
            "a plugin name is 1-64 of a-z 0-9 - _, starting with a letter",
        ));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ToolError::AlreadyExists {
            what: "directory",
            id: root.display().to_string(),
        });
    }
    let files = match lang {
        Lang::Rust => rust_files(name),
        Lang::Ts => ts_files(name),
        Lang::Python => python_files(name),
    };
    for (rel, text) in files {
        let p = root.join(rel);
        let unwritable = |e: std::io::Error| {
            ToolError::invalid("unwritable_file", format!("{}: {e}", p.display()))
        };
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(unwritable)?;
        }
        std::fs::write(&p, text).map_err(unwritable)?;
    }
    Ok(root)
}

/// `dir` in the repository, absolute where it exists.
fn repo_path(dir: &str) -> String {
    let p = repo_root().join(dir);
    p.canonicalize().unwrap_or(p).display().to_string()
}

/// `template` for the plugin `name`: `{name}`, and `{file}`, the file name
/// of its component (`my-rule` builds `my_rule.wasm`).
fn fill(template: &str, name: &str) -> String {
    template
        .replace("{name}", name)
        .replace("{file}", &name.replace('-', "_"))
}

fn rust_files(name: &str) -> Vec<(&'static str, String)> {
    let mut files = vec![
        (
            "Cargo.toml",
            fill(TEMPLATE_CARGO, name).replace("{sdk}", &repo_path("plugins/sdk")),
        ),
        ("src/lib.rs", fill(TEMPLATE_LIB, name)),
        ("fixture.json", TEMPLATE_FIXTURE.to_string()),
        ("README.md", fill(TEMPLATE_README, name)),
    ];
    // the repository's lock file and toolchain: same dependency versions
    // (builds offline) and the wasm32-wasip2 target
    for f in ["Cargo.lock", "rust-toolchain.toml"] {
        if let Ok(text) = std::fs::read_to_string(repo_root().join(f)) {
            files.push((f, text));
        }
    }
    files
}

/// The TypeScript sample's files, which the template shares: its pinned
/// tool versions, compiler settings and npm settings.
const TS_SAMPLE_PACKAGE: &str = include_str!("../../../plugins/ts-limits/package.json");
const TS_SAMPLE_TSCONFIG: &str = include_str!("../../../plugins/ts-limits/tsconfig.json");
const TS_SAMPLE_NPMRC: &str = include_str!("../../../plugins/ts-limits/.npmrc");

fn ts_files(name: &str) -> Vec<(&'static str, String)> {
    let mut package: serde_json::Value =
        serde_json::from_str(TS_SAMPLE_PACKAGE).expect("the sample's package.json is JSON");
    package["name"] = name.into();
    package["description"] = "A payrail rule plugin".into();
    package["scripts"]["build"] =
        fill("payrail-plugin build src/rule.ts -o dist/{file}.wasm", name).into();
    package["devDependencies"]["@payrail/plugin"] =
        format!("file:{}", repo_path("plugins/ts-sdk")).into();
    let package = serde_json::to_string_pretty(&package).expect("a JSON value serializes");
    vec![
        ("package.json", package + "\n"),
        ("tsconfig.json", TS_SAMPLE_TSCONFIG.to_string()),
        (".npmrc", TS_SAMPLE_NPMRC.to_string()),
        (".gitignore", "node_modules/\ndist/\n".to_string()),
        ("src/rule.ts", fill(TEMPLATE_TS_RULE, name)),
        ("test/rule.test.ts", TEMPLATE_TS_TEST.to_string()),
        ("fixture.json", TEMPLATE_FIXTURE.to_string()),
        ("README.md", fill(TEMPLATE_TS_README, name)),
    ]
}

fn python_files(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("app.py", fill(TEMPLATE_PY_APP, name)),
        ("test_app.py", TEMPLATE_PY_TEST.to_string()),
        (
            "requirements.txt",
            format!("componentize-py=={COMPONENTIZE_PY}\n"),
        ),
        ("wit/payrail.wit", WIT.to_string()),
        (
            ".gitignore",
            ".venv/\nwit_world/\ncomponentize_py_*\npoll_loop.py\n__pycache__/\n*.wasm\n"
                .to_string(),
        ),
        ("fixture.json", TEMPLATE_FIXTURE.to_string()),
        ("README.md", fill(TEMPLATE_PY_README, name)),
    ]
}

/// The componentize-py release Python plugins are built and measured with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The contract, copied into a Python project (componentize-py reads it).
const WIT: &str = include_str!("../../../wit/payrail.wit");

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
        Ok(approve().annotation("checked_by", "{name}").into())
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

const TEMPLATE_TS_RULE: &str = r#"/**
 * A payrail rule: declines payments above `max_amount` (minor units).
 *
 * Config: `{"max_amount": 100000}`.
 */

import { approve, config, decline, int, rule } from '@payrail/plugin';

/** Step config: every key is required, unknown keys are refused. */
const MyConfig = { max_amount: int };

export const evaluate = rule((input) => {
  const cfg = config(input, MyConfig);
  if (input.payment.amount > cfg.max_amount) {
    return decline('amount_too_large', `amount ${input.payment.amount} is above ${cfg.max_amount}`);
  }
  return approve().annotation('checked_by', '{name}');
});
"#;

const TEMPLATE_TS_TEST: &str = r#"// The rule's tests, run natively in Node by `npm test`.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RuleError } from '@payrail/plugin';
import { testInput } from '@payrail/plugin/testing';
import { evaluate } from '../src/rule.ts';

const run = (amount: number) => evaluate(testInput({ amount, config: { max_amount: 1000 } }));

test('approves up to the cap and declines above', () => {
  assert.equal(run(1000).tag, 'approve');
  const d = run(1001);
  if (d.tag !== 'decline') assert.fail('approved above the cap');
  assert.equal(d.val.code, 'amount_too_large');
});

test('a bad config is an error', () => {
  assert.throws(
    () => evaluate(testInput({ config: {} })),
    (e: unknown) => e instanceof RuleError && e.payload.code === 'invalid_config',
  );
});
"#;

const TEMPLATE_TS_README: &str = r#"# {name}

A payrail rule plugin in TypeScript. See docs/plugin-guide.md in the
payrail repository ("Quickstart: TypeScript").

```sh
npm install                 # componentize-js, esbuild, TypeScript; the SDK from the payrail repository
npm test                    # type-check, then the tests in test/ (Node, no host)
npm run build               # dist/{file}.wasm (~12 MB: the JavaScript engine is inside)
payrail plugin test dist/{file}.wasm --input fixture.json
payrail plugin deploy dist/{file}.wasm --name {name}    # on a host with PAYRAIL_MAX_PLUGIN_BYTES=16777216
```
"#;

const TEMPLATE_PY_APP: &str = r#""""A payrail rule: declines payments above `max_amount` (minor units).

Config: `{"max_amount": 100000}`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types


def _invalid(message: str) -> Err:
    return Err(types.PluginError(code="invalid_config", message=message))


def max_amount(text: str) -> int:
    """The config's `max_amount`; raises Err(invalid_config)."""
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise _invalid(f"config is not JSON: {e}")
    if not isinstance(cfg, dict) or set(cfg) != {"max_amount"}:
        raise _invalid('config must be {"max_amount": N}')
    value = cfg["max_amount"]
    # bool is an int subclass in Python: refuse it explicitly
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid("max_amount must be an integer")
    return value


class WitWorld(wit_world.WitWorld):
    def evaluate(self, input: types.Input) -> types.Decision:
        cap = max_amount(input.config)
        if input.payment.amount > cap:
            return types.Decision_Decline(
                types.Decline(
                    code="amount_too_large",
                    message=f"amount {input.payment.amount} is above {cap}",
                )
            )
        checked = types.Entry(key="checked_by", value="{name}")
        return types.Decision_Approve(
            types.Approval(postings=[], events=[], annotations=[checked])
        )
"#;

const TEMPLATE_PY_TEST: &str = r#""""The rule's tests, run natively: `python -m unittest test_app` (after
`componentize-py -d wit -w rule bindings .` wrote the bindings)."""

import unittest

from componentize_py_types import Err
from wit_world.imports import types

import app


def run(amount: int, config: str = '{"max_amount": 1000}') -> types.Decision:
    payment = types.Payment(
        id="p1", kind="transfer", amount=amount, currency="EUR",
        source="alice", destination="bob", metadata=[],
    )
    input = types.Input(payment=payment, accounts=[], config=config, previous=[], now_ms=0)
    return app.WitWorld().evaluate(input)


class RuleTest(unittest.TestCase):
    def test_approves_up_to_the_cap_and_declines_above(self):
        self.assertIsInstance(run(1000), types.Decision_Approve)
        d = run(1001)
        self.assertIsInstance(d, types.Decision_Decline)
        self.assertEqual(d.value.code, "amount_too_large")

    def test_a_bad_config_is_an_error(self):
        with self.assertRaises(Err) as e:
            run(5, "{}")
        self.assertEqual(e.exception.value.code, "invalid_config")


if __name__ == "__main__":
    unittest.main()
"#;

const TEMPLATE_PY_README: &str = r#"# {name}

A payrail rule plugin in Python. See docs/plugin-guide.md in the payrail
repository ("Quickstart: Python").

```sh
python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
.venv/bin/componentize-py -d wit -w rule bindings .      # the Python bindings, for the tests
.venv/bin/python -m unittest test_app                             # the tests (no host)
.venv/bin/componentize-py -d wit -w rule componentize app -o {file}.wasm   # ~18 MB
payrail plugin test {file}.wasm --input fixture.json --max-memory-bytes 16777216
payrail plugin deploy {file}.wasm --name {name}          # on a host with PAYRAIL_MAX_PLUGIN_BYTES=33554432
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
            let e = new_plugin(name, &dir, Lang::Rust).unwrap_err();
            assert_eq!(e.code(), "invalid_id", "{name:?}");
        }
        std::fs::create_dir_all(dir.join("taken")).unwrap();
        let e = new_plugin("taken", &dir, Lang::Ts).unwrap_err();
        assert_eq!(e.code(), "already_exists", "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Each language's project has its rule, its test and the fixture; the
    /// TypeScript one takes the sample's pinned tools and this repository's
    /// SDK, the Python one the pinned componentize-py and the contract.
    #[test]
    fn each_language_gets_a_rule_a_test_and_the_pinned_tools() {
        let file = |files: &[(&str, String)], name: &str| -> String {
            let found = files.iter().find(|(f, _)| *f == name);
            found.unwrap_or_else(|| panic!("{name} missing")).1.clone()
        };
        let rust = rust_files("my-rule");
        assert!(file(&rust, "src/lib.rs").contains(r#""checked_by", "my-rule""#));
        let ts = ts_files("my-rule");
        let package: serde_json::Value = serde_json::from_str(&file(&ts, "package.json")).unwrap();
        let sample: serde_json::Value = serde_json::from_str(TS_SAMPLE_PACKAGE).unwrap();
        let deps = package["devDependencies"].as_object().unwrap();
        for (name, version) in sample["devDependencies"].as_object().unwrap() {
            if name != "@payrail/plugin" {
                assert_eq!(&deps[name], version, "{name}");
            }
        }
        let sdk = deps["@payrail/plugin"].as_str().unwrap();
        assert!(
            sdk.starts_with("file:/") && sdk.ends_with("plugins/ts-sdk"),
            "{sdk}"
        );
        assert!(
            package["scripts"]["build"]
                .as_str()
                .unwrap()
                .ends_with("dist/my_rule.wasm")
        );
        assert!(file(&ts, "src/rule.ts").contains("'checked_by', 'my-rule'"));
        assert!(file(&ts, "test/rule.test.ts").contains("../src/rule.ts"));
        let py = python_files("my-rule");
        assert_eq!(
            file(&py, "requirements.txt"),
            format!("componentize-py=={COMPONENTIZE_PY}\n")
        );
        assert_eq!(file(&py, "wit/payrail.wit"), WIT);
        assert!(file(&py, "app.py").contains(r#"value="my-rule""#));
        assert!(file(&py, "test_app.py").contains("import app"));
        for files in [&rust, &ts, &py] {
            assert_eq!(file(files, "fixture.json"), TEMPLATE_FIXTURE);
        }
    }

    /// The template's path to the SDK and the files it copies are the
    /// repository's (this crate is two levels down).
    #[test]
    fn the_repository_root_holds_the_sdk_and_the_lock_file() {
        for f in [
            "plugins/sdk/Cargo.toml",
            "plugins/ts-sdk/package.json",
            "Cargo.lock",
            "rust-toolchain.toml",
        ] {
            assert!(repo_root().join(f).is_file(), "{f}");
        }
    }
}
