//! Limits rule: declines payments outside configured amount and currency
//! limits.
//!
//! Config (JSON, all keys optional, amounts in minor units; unknown keys are
//! rejected):
//!
//! ```json
//! {"max_amount": 1000000, "min_amount": 1,
//!  "per_currency": {"JPY": 100000}, "allowed_currencies": ["EUR", "USD", "JPY"]}
//! ```
//!
//! Checks, in order, each with a stable decline code:
//!
//! 1. `currency_not_allowed`: `allowed_currencies` is given and does not
//!    contain the payment currency.
//! 2. `amount_too_large`: the amount is above `per_currency[currency]` if
//!    that entry exists, otherwise above `max_amount` (if given).
//! 3. `amount_too_small`: the amount is below `min_amount` (if given).
//!
//! Otherwise the rule approves with no postings.

use std::collections::BTreeMap;

use payrail_plugin::{Decision, Input, PluginError, Rule, approve, config, decline};
use serde::Deserialize;

/// The limits rule (exported as the component's `evaluate`).
pub struct Limits;

/// Step config of the limits rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest allowed amount (unless overridden in `per_currency`).
    #[serde(default)]
    pub max_amount: Option<i64>,
    /// Smallest allowed amount.
    #[serde(default)]
    pub min_amount: Option<i64>,
    /// Largest allowed amount per currency code; overrides `max_amount`.
    #[serde(default)]
    pub per_currency: BTreeMap<String, i64>,
    /// If given, the only currencies accepted.
    #[serde(default)]
    pub allowed_currencies: Option<Vec<String>>,
}

impl Rule for Limits {
    fn evaluate(input: Input) -> Result<Decision, PluginError> {
        let cfg: LimitsConfig = config(&input)?;
        let p = &input.payment;
        if let Some(allowed) = &cfg.allowed_currencies
            && !allowed.contains(&p.currency)
        {
            return Ok(decline(
                "currency_not_allowed",
                format!(
                    "currency {} is not allowed (allowed: {})",
                    p.currency,
                    allowed.join(", ")
                ),
            ));
        }
        let per_currency = cfg.per_currency.get(&p.currency).copied();
        if let Some(max) = per_currency.or(cfg.max_amount)
            && p.amount > max
        {
            // the message is only built on a decline
            let scope = match per_currency {
                Some(_) => format!("{} limit", p.currency),
                None => "limit".to_string(),
            };
            return Ok(decline(
                "amount_too_large",
                format!(
                    "amount {} {} is above the {scope} of {max}",
                    p.amount, p.currency
                ),
            ));
        }
        if let Some(min) = cfg.min_amount
            && p.amount < min
        {
            return Ok(decline(
                "amount_too_small",
                format!(
                    "amount {} {} is below the minimum of {min}",
                    p.amount, p.currency
                ),
            ));
        }
        Ok(approve().into())
    }
}

payrail_plugin::export_rule!(Limits);

#[cfg(test)]
mod tests {
    use super::*;
    use payrail_plugin::{Decline, InputBuilder, serde_json::json};

    const CFG: &str = r#"{"max_amount": 1000000, "min_amount": 1,
        "per_currency": {"JPY": 100000}, "allowed_currencies": ["EUR","USD","JPY"]}"#;

    fn run(amount: i64, currency: &str, cfg: &str) -> Result<Decision, PluginError> {
        Limits::evaluate(
            InputBuilder::new()
                .amount(amount)
                .currency(currency)
                .config(cfg)
                .build(),
        )
    }

    fn declined(d: Decision) -> Decline {
        match d {
            Decision::Decline(d) => d,
            Decision::Approve(a) => panic!("approved: {a:?}"),
        }
    }

    #[test]
    fn approves_within_limits() {
        for (amount, cur) in [(1, "EUR"), (1_000_000, "EUR"), (100_000, "JPY"), (5, "USD")] {
            let d = run(amount, cur, CFG).unwrap();
            assert_eq!(d, approve().into(), "{amount} {cur}");
        }
        // empty config approves everything
        assert_eq!(run(i64::MAX, "XXX", "{}").unwrap(), approve().into());
    }

    #[test]
    fn currency_not_allowed() {
        let d = declined(run(100, "GBP", CFG).unwrap());
        assert_eq!(d.code, "currency_not_allowed");
        assert!(d.message.contains("GBP"), "{}", d.message);
    }

    #[test]
    fn amount_too_large() {
        let d = declined(run(1_000_001, "EUR", CFG).unwrap());
        assert_eq!(d.code, "amount_too_large");
        assert!(d.message.contains("1000001") && d.message.contains("1000000"));
        // per-currency limit wins over max_amount
        let d = declined(run(100_001, "JPY", CFG).unwrap());
        assert_eq!(d.code, "amount_too_large");
        assert!(d.message.contains("100000"), "{}", d.message);
        // and may be larger than max_amount
        let cfg = json!({"max_amount": 10, "per_currency": {"JPY": 1000}}).to_string();
        assert_eq!(run(500, "JPY", &cfg).unwrap(), approve().into());
        assert_eq!(
            declined(run(11, "EUR", &cfg).unwrap()).code,
            "amount_too_large"
        );
    }

    #[test]
    fn amount_too_small() {
        let d = declined(run(0, "EUR", CFG).unwrap());
        assert_eq!(d.code, "amount_too_small");
        assert!(d.message.contains("minimum of 1"), "{}", d.message);
    }

    #[test]
    fn invalid_config() {
        for cfg in [
            r#"{"max_amount": "big"}"#,
            r#"{"allowed_currencies": "EUR"}"#,
            r#"{"max_amuont": 5}"#,
            "not json",
            "[1]",
        ] {
            let e = run(100, "EUR", cfg).unwrap_err();
            assert_eq!(e.code, "invalid_config", "{cfg}");
        }
    }
}
