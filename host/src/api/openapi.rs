//! The OpenAPI document: what the route macros describe, then one pass
//! that adds what they cannot say (the answers every route can give, and
//! the exact constraints the server enforces on ids, currencies, amounts
//! and headers), so a client generated from it, or a fuzzer reading it,
//! sends only what the server takes. `docs/openapi.json` is a copy, checked
//! against this by a test.

use crate::engine::PluginLimits;
use serde_json::{Value, json};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "payrail",
        description = "Payments through sandboxed WebAssembly rule plugins, one Postgres transaction each. \
                       Errors are application/problem+json with a stable `code`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "accounts", description = "Accounts and their ledger entries (scope `payments`)"),
        (name = "payments", description = "Payments (scope `payments`)"),
        (name = "admin", description = "Plugins, pipelines, shadow, replay, the outbox and the audit log (scope `admin`)"),
        (name = "keys", description = "API keys (scope `admin`) and the caller's own key"),
        (name = "operations", description = "Health, readiness, metrics, this document (no key)")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: `payrail apikey create`"))
                    .build(),
            ),
        );
    }
}

/// An id: account, payment kind, plugin name (and a plugin digest).
pub const ID_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,64}$";
/// A payment id.
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// An `Idempotency-Key`: 1-255 visible ASCII characters (spaces inside),
/// bare or as a quoted sf-string (`extract::IdempotencyKey`).
pub const IDEMPOTENCY_KEY_PATTERN: &str =
    "^([!#-~]([ -~]{0,253}[!-~])?|\"([ -~]{0,253}[!#-~])?|\"[ -~]{1,255}\")$";

/// Text Postgres can store: no NUL.
pub const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// A cursor: hex, at most 512 characters (what it decodes to is checked
/// by the server: a cursor it did not issue is 422 `invalid_cursor`).
pub const CURSOR_PATTERN: &str = "^([0-9a-fA-F]{2}){1,256}$";

/// The finished document (as JSON: it says more than utoipa's model
/// holds), and its text as `/openapi.json` serves it.
/// `caps` are the host's `[plugins.max_limits]`: a step's limits above
/// them are refused, so the document says so.
pub fn finish(doc: utoipa::openapi::OpenApi, caps: &PluginLimits) -> (Value, String) {
    let mut v = serde_json::to_value(&doc).expect("openapi serializes");
    common_responses(&mut v);
    constrain_parameters(&mut v);
    constrain_schemas(&mut v);
    constrain_limits(&mut v, caps);
    let text = serde_json::to_string_pretty(&v).expect("openapi serializes");
    (v, text)
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// The answers every keyed route can give besides its own, on every
/// operation; the routes without a key say they take none.
fn common_responses(v: &mut Value) {
    let keyed = [
        (
            "400",
            "Invalid request: a malformed parameter or body (`code` says which)",
        ),
        ("401", "`unauthorized`: no API key, or not a valid one"),
        (
            "403",
            "`forbidden`: the key lacks the scope this route needs",
        ),
        ("413", "The body is larger than the limit"),
        (
            "422",
            "Well-formed but not possible here (`code` says why): a cursor this API did not issue, a version or step that does not exist, the same account twice, an expiry in the past, `hold_ttl_secs` without `capture: manual`, a plugin fault",
        ),
        (
            "429",
            "`rate_limited`, `tenant_busy` or `key_lookups_throttled`; see `Retry-After`",
        ),
    ];
    let busy = "`overloaded`, `request_timeout` or the database is unavailable; see `Retry-After`";
    for (path, item) in v["paths"].as_object_mut().expect("paths") {
        let is_keyed = path.starts_with("/v1/");
        for op in item.as_object_mut().expect("a path item").values_mut() {
            let r = op["responses"].as_object_mut().expect("responses");
            if is_keyed {
                for (code, d) in keyed {
                    r.entry(code).or_insert_with(|| problem(d));
                }
            }
            r.entry("503").or_insert_with(|| problem(busy));
            if !is_keyed {
                op["security"] = json!([{}]);
            }
        }
    }
}

/// The parameters' constraints, by name and where they are.
fn constrain_parameters(v: &mut Value) {
    for (path, item) in v["paths"].as_object_mut().expect("paths") {
        for op in item.as_object_mut().expect("a path item").values_mut() {
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in params {
                let schema = match (p["in"].as_str(), p["name"].as_str()) {
                    (Some("path"), Some("id")) if path.starts_with("/v1/payments/") => {
                        json!({"type": "string", "pattern": UUID_PATTERN})
                    }
                    (Some("path"), Some("id" | "kind" | "name"))
                        if !path.starts_with("/v1/api-keys") =>
                    {
                        json!({"type": "string", "pattern": ID_PATTERN})
                    }
                    (Some("header"), Some("Idempotency-Key")) => {
                        json!({"type": "string", "minLength": 1, "maxLength": 257,
                               "pattern": IDEMPOTENCY_KEY_PATTERN})
                    }
                    (Some("query"), Some("name" | "version")) if path == "/v1/plugins" => {
                        json!({"type": "string", "pattern": ID_PATTERN})
                    }
                    (Some("query"), Some("signature")) => {
                        json!({"type": "string", "pattern": "^[0-9a-fA-F]{128}$"})
                    }
                    (Some("query"), Some("currency")) => {
                        json!({"$ref": "#/components/schemas/Currency"})
                    }
                    (Some("query"), Some("cursor")) => {
                        json!({"type": "string", "pattern": CURSOR_PATTERN})
                    }
                    (Some("query"), Some("action")) => {
                        let actions: Vec<&str> = crate::admin_log::Action::ALL
                            .iter()
                            .map(|a| a.as_str())
                            .collect();
                        json!({"type": "string", "enum": actions})
                    }
                    _ => continue,
                };
                p["schema"] = schema;
            }
        }
    }
}

/// The body fields' constraints, and `Metadata` under its own name.
fn constrain_schemas(v: &mut Value) {
    let currencies = json!({"$ref": "#/components/schemas/Currency"});
    let id = json!({"type": "string", "pattern": ID_PATTERN});
    let patches = [
        (
            "CreateAccount",
            "id",
            json!({"type": "string", "pattern": ID_PATTERN,
            "not": {"pattern": "^equity:"}}),
        ),
        ("CreateAccount", "currency", currencies.clone()),
        (
            "CreateAccount",
            "opening_balance",
            json!({"type": "integer", "format": "int64", "minimum": 0}),
        ),
        ("CreatePayment", "kind", id.clone()),
        (
            "CreatePayment",
            "source",
            json!({"type": "string", "pattern": ID_PATTERN,
            "not": {"pattern": "^equity:"}}),
        ),
        (
            "CreatePayment",
            "destination",
            json!({"type": "string", "pattern": ID_PATTERN,
            "not": {"pattern": "^equity:"}}),
        ),
        ("CreatePayment", "currency", currencies),
        (
            "CreatePayment",
            "metadata",
            json!({"type": "object",
            "maxProperties": crate::processor::MAX_METADATA_ENTRIES,
            "propertyNames": {"maxLength": crate::processor::MAX_METADATA_BYTES,
                              "pattern": NO_NUL_PATTERN,
                              "not": {"pattern": "^payrail\\."}},
            "additionalProperties": {"type": "string", "pattern": NO_NUL_PATTERN,
                                     "maxLength": crate::processor::MAX_METADATA_BYTES}}),
        ),
        (
            "CreatePayment",
            "amount",
            json!({"type": "integer", "format": "int64", "minimum": 1}),
        ),
        (
            "CreatePayment",
            "hold_ttl_secs",
            json!({"type": ["integer", "null"], "format": "int64",
            "minimum": 1, "maximum": 2_592_000}),
        ),
        (
            "CapturePayment",
            "amount",
            json!({"type": ["integer", "null"], "format": "int64", "minimum": 1}),
        ),
        (
            "PutPipeline",
            "steps",
            json!({"type": "array", "maxItems": 16,
            "items": {"$ref": "#/components/schemas/StepSpec"}}),
        ),
        ("StepSpec", "plugin", id.clone()),
        (
            "StepSpec",
            "candidate",
            json!({"type": ["string", "null"], "pattern": ID_PATTERN}),
        ),
        (
            "SetCandidate",
            "plugin",
            json!({"type": ["string", "null"], "pattern": ID_PATTERN}),
        ),
        (
            "CreateKey",
            "scopes",
            json!({"type": "array", "minItems": 1, "maxItems": 2,
            "items": {"type": "string", "enum": ["payments", "admin"]}}),
        ),
        (
            "Retry",
            "ids",
            json!({"type": ["array", "null"], "minItems": 1, "maxItems": 1000,
            "items": {"type": "integer", "format": "int64"}}),
        ),
    ];
    let schemas = &mut v["components"]["schemas"];
    schemas["Currency"] = json!({"type": "string", "enum": crate::currency::codes(),
        "description": "An ISO 4217 code the host knows."});
    for (schema, field, patch) in patches {
        let prop = &mut schemas[schema]["properties"][field];
        assert!(prop.is_object(), "{schema}.{field} is in the document");
        let description = prop.get("description").cloned();
        *prop = patch;
        // a $ref takes no siblings in OpenAPI 3.0 tools: only plain schemas
        // keep their description
        if let Some(d) = description.filter(|_| prop.get("$ref").is_none()) {
            prop["description"] = d;
        }
    }
    if let Some(m) = schemas.as_object_mut().and_then(|s| s.remove("BTreeMap")) {
        let mut m = m;
        m["maxProperties"] = json!(crate::processor::MAX_METADATA_ENTRIES);
        m["propertyNames"] =
            json!({"maxLength": crate::processor::MAX_METADATA_BYTES, "pattern": NO_NUL_PATTERN});
        m["additionalProperties"] = json!({"type": "string", "pattern": NO_NUL_PATTERN,
            "maxLength": crate::processor::MAX_METADATA_BYTES});
        schemas["Metadata"] = m;
    }
    rename_refs(
        v,
        "#/components/schemas/BTreeMap",
        "#/components/schemas/Metadata",
    );
}

/// A step's limits: each at least 1 and at most the host's cap.
fn constrain_limits(v: &mut Value, caps: &PluginLimits) {
    let props = &mut v["components"]["schemas"]["PluginLimitOverrides"]["properties"];
    for (name, cap) in caps.fields() {
        let p = &mut props[name];
        assert!(
            p.is_object(),
            "PluginLimitOverrides.{name} is in the document"
        );
        p["minimum"] = json!(1);
        p["maximum"] = json!(cap);
    }
}

fn rename_refs(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "$ref" && x == from {
                    *x = Value::String(to.to_string());
                } else {
                    rename_refs(x, from, to);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rename_refs(x, from, to)),
        _ => {}
    }
}
