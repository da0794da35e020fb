//! Fee rule: charges the payment's source a fee credited to a fee account.
//!
//! Config (JSON, amounts in integer minor units of the payment currency):
//!
//! ```json
//! {"fee_account": "fees", "percent_bps": 150, "fixed": 25, "min": 50, "max": 5000}
//! ```
//!
//! `fee_account` is required; `percent_bps` (basis points, 1/100 of a
//! percent), `fixed` and `min` default to 0; `max` defaults to no maximum.
//! All must be non-negative and `min <= max`. Unknown keys are rejected.
//!
//! `spread` (1 to [`MAX_SPREAD`], default none) spreads the fee over that
//! many fee accounts instead of one hot row: `fee_account` followed by
//! `fnv1a(source) % spread` (`"fees"`, 64: `fees0` .. `fees63`), so a given
//! source always pays into the same fee account (the same input gives the
//! same output). A count, not a list of ids: the config is part of every
//! call's journaled input, and 64 ids would add some 600 bytes to each.
//!
//! The fee is
//! `clamp(fixed + round_half_up(amount * percent_bps / 10000), min, max)`,
//! computed in `i128`.
//!
//! **Rounding:** the percentage part is rounded to the nearest minor unit,
//! halves rounded up (towards positive infinity): `floor((amount *
//! percent_bps + 5000) / 10000)`. E.g. 150 bps of 10033 = 150.495 -> 150, of
//! 10100 = 151.5 -> 152. If the final fee does not fit in an `i64` the rule
//! fails with plugin error `fee_overflow`.
//!
//! If the fee is positive the rule approves with postings `source: -fee`,
//! `fee_account: +fee` (payment currency), annotation `fee` = the fee in
//! decimal, and event `fee.charged` with payload
//! `{"payment": id, "fee": fee, "currency": cur, "account": fee_account}`.
//! A zero fee approves with nothing.

use payrail_plugin::{Decision, Input, PluginError, Rule, approve, config, error, serde_json};
use serde::{Deserialize, Serialize};

/// The fee rule (exported as the component's `evaluate`).
pub struct Fee;

/// Most fee accounts `spread` may name (the bench spreads over 64).
pub const MAX_SPREAD: u32 = 1024;

/// Step config of the fee rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeConfig {
    /// Account credited with the fee (with `spread`: the ids' prefix).
    pub fee_account: String,
    /// Fee accounts the fee is spread over, one per payment by its source.
    #[serde(default)]
    pub spread: Option<u32>,
    /// Percentage part in basis points of the amount.
    #[serde(default)]
    pub percent_bps: i64,
    /// Fixed part, minor units.
    #[serde(default)]
    pub fixed: i64,
    /// Minimum fee, minor units.
    #[serde(default)]
    pub min: i64,
    /// Maximum fee, minor units (none if absent).
    #[serde(default)]
    pub max: Option<i64>,
}

impl FeeConfig {
    fn validate(&self) -> Result<(), PluginError> {
        let bad = |m: String| Err(error("invalid_config", m));
        if self.fee_account.is_empty() {
            return bad("fee_account must not be empty".into());
        }
        if let Some(n) = self.spread
            && !(1..=MAX_SPREAD).contains(&n)
        {
            return bad(format!("spread must be 1 to {MAX_SPREAD}, got {n}"));
        }
        for (name, v) in [
            ("percent_bps", self.percent_bps),
            ("fixed", self.fixed),
            ("min", self.min),
        ] {
            if v < 0 {
                return bad(format!("{name} must be >= 0, got {v}"));
            }
        }
        if let Some(max) = self.max
            && max < self.min
        {
            return bad(format!("max ({max}) must be >= min ({})", self.min));
        }
        Ok(())
    }
}

impl FeeConfig {
    /// The account credited for a payment from `source`: `fee_account`,
    /// or with `spread` one of its numbered accounts chosen by a hash of
    /// `source`. FNV-1a, not the std hasher: its output is fixed by its
    /// definition, so a replay or another build of the plugin picks the
    /// same account.
    pub fn account_for(&self, source: &str) -> std::borrow::Cow<'_, str> {
        match self.spread {
            Some(n) if n > 0 => {
                let i = fnv1a(source.as_bytes()) % u64::from(n);
                format!("{}{i}", self.fee_account).into()
            }
            _ => self.fee_account.as_str().into(),
        }
    }
}

/// 64-bit FNV-1a of `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The `fee.charged` event payload. Serialized straight from borrowed
/// fields (a `json!` map would allocate every key and value first); fields
/// in alphabetical order, so the text is what a sorted JSON object gives.
#[derive(Serialize)]
struct FeeCharged<'a> {
    account: &'a str,
    currency: &'a str,
    fee: i64,
    payment: &'a str,
}

/// Computes the fee for `amount` (see the crate docs for the formula and
/// rounding). Errors with `fee_overflow` if it does not fit in an `i64`.
pub fn compute_fee(cfg: &FeeConfig, amount: i64) -> Result<i64, PluginError> {
    let pct = (i128::from(amount) * i128::from(cfg.percent_bps) + 5000).div_euclid(10_000);
    let mut fee = i128::from(cfg.fixed) + pct;
    fee = fee.max(i128::from(cfg.min));
    if let Some(max) = cfg.max {
        fee = fee.min(i128::from(max));
    }
    i64::try_from(fee).map_err(|_| {
        error(
            "fee_overflow",
            format!("fee {fee} for amount {amount} does not fit in a 64-bit amount"),
        )
    })
}

impl Rule for Fee {
    fn evaluate(input: Input) -> Result<Decision, PluginError> {
        let cfg: FeeConfig = config(&input)?;
        cfg.validate()?;
        let p = &input.payment;
        let fee = compute_fee(&cfg, p.amount)?;
        if fee <= 0 {
            return Ok(approve().into());
        }
        let account = cfg.account_for(&p.source);
        let payload = FeeCharged {
            account: &account,
            currency: &p.currency,
            fee,
            payment: &p.id,
        };
        let payload =
            serde_json::to_string(&payload).map_err(|e| error("fee_payload", e.to_string()))?;
        Ok(approve()
            .posting(&p.source, -fee, &p.currency)
            .posting(account.into_owned(), fee, &p.currency)
            .annotation("fee", fee.to_string())
            .event("fee.charged", payload)
            .into())
    }
}

payrail_plugin::export_rule!(Fee);

#[cfg(test)]
mod tests {
    use super::*;
    use payrail_plugin::{InputBuilder, entry, postings_by_account, serde_json::json};

    fn run(amount: i64, cfg: serde_json::Value) -> Result<Decision, PluginError> {
        Fee::evaluate(InputBuilder::new().amount(amount).config_json(cfg).build())
    }

    fn fee_of(amount: i64, cfg: serde_json::Value) -> i64 {
        let d = run(amount, cfg).unwrap();
        postings_by_account(&d).get("fees").copied().unwrap_or(0)
    }

    #[test]
    fn full_decision() {
        let d = run(
            10_000,
            json!({"fee_account": "fees", "percent_bps": 150, "fixed": 25, "min": 50, "max": 5000}),
        )
        .unwrap();
        let Decision::Approve(a) = d else {
            panic!("declined")
        };
        assert_eq!(a.postings.len(), 2);
        assert_eq!(a.postings[0].account, "alice");
        assert_eq!(a.postings[0].amount, -175);
        assert_eq!(a.postings[0].currency, "EUR");
        assert_eq!(a.postings[1].account, "fees");
        assert_eq!(a.postings[1].amount, 175);
        assert_eq!(entry(&a.annotations, "fee"), Some("175"));
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].topic, "fee.charged");
        let payload: serde_json::Value = serde_json::from_str(&a.events[0].payload).unwrap();
        assert_eq!(
            payload,
            json!({"payment": "p1", "fee": 175, "currency": "EUR", "account": "fees"})
        );
    }

    #[test]
    fn percent_rounds_half_up() {
        let cfg = || json!({"fee_account": "fees", "percent_bps": 150});
        assert_eq!(fee_of(10_100, cfg()), 152); // 151.5 -> 152
        assert_eq!(fee_of(10_033, cfg()), 150); // 150.495 -> 150
        assert_eq!(fee_of(10_067, cfg()), 151); // 151.005 -> 151
        assert_eq!(
            fee_of(1, json!({"fee_account": "fees", "percent_bps": 5000})),
            1
        ); // 0.5 -> 1
        assert_eq!(
            fee_of(1, json!({"fee_account": "fees", "percent_bps": 4999})),
            0
        ); // 0.4999 -> 0
    }

    #[test]
    fn fixed_only() {
        assert_eq!(
            fee_of(10_000, json!({"fee_account": "fees", "fixed": 25})),
            25
        );
        assert_eq!(fee_of(1, json!({"fee_account": "fees", "fixed": 25})), 25);
    }

    #[test]
    fn min_and_max_clamp() {
        let cfg = || json!({"fee_account": "fees", "percent_bps": 100, "min": 50, "max": 5000});
        assert_eq!(fee_of(1_000, cfg()), 50); // 10 -> min 50
        assert_eq!(fee_of(100_000, cfg()), 1_000); // within bounds
        assert_eq!(fee_of(10_000_000, cfg()), 5_000); // 100000 -> max 5000
    }

    #[test]
    fn zero_fee_approves_without_postings() {
        let d = run(10_000, json!({"fee_account": "fees"})).unwrap();
        let Decision::Approve(a) = d else {
            panic!("declined")
        };
        assert!(a.postings.is_empty() && a.events.is_empty() && a.annotations.is_empty());
        // max 0 clamps everything to zero
        assert_eq!(
            fee_of(10_000, json!({"fee_account": "fees", "fixed": 9, "max": 0})),
            0
        );
    }

    #[test]
    fn overflow() {
        let e = run(
            i64::MAX,
            json!({"fee_account": "fees", "percent_bps": 20_000}),
        )
        .unwrap_err();
        assert_eq!(e.code, "fee_overflow");
        let e = run(
            10,
            json!({"fee_account": "fees", "fixed": i64::MAX, "percent_bps": 10_000}),
        )
        .unwrap_err();
        assert_eq!(e.code, "fee_overflow");
        // i64::MAX with a max clamp is fine
        let cfg = json!({"fee_account": "fees", "percent_bps": 20_000, "max": 7});
        assert_eq!(fee_of(i64::MAX, cfg), 7);
    }

    #[test]
    fn invalid_config() {
        for cfg in [
            json!({"percent_bps": 150}),
            json!({"fee_account": "fees", "percent_bps": "150"}),
            json!({"fee_account": "fees", "percnt_bps": 150}),
            json!({"fee_account": "fees", "fixed": -1}),
            json!({"fee_account": "fees", "min": 10, "max": 5}),
            json!({"fee_account": ""}),
            json!({"fee_account": "fees", "spread": 0}),
            json!({"fee_account": "fees", "spread": MAX_SPREAD + 1}),
            json!({"fee_account": "fees", "spread": -1}),
        ] {
            let e = run(10_000, cfg.clone()).unwrap_err();
            assert_eq!(e.code, "invalid_config", "{cfg}");
        }
        let e = run(10_000, json!({})).unwrap_err();
        assert!(e.message.contains("fee_account"), "{}", e.message);
    }

    #[test]
    fn fee_accounts_spread_by_source_deterministically() {
        let accounts: Vec<String> = (0..64).map(|i| format!("fees{i}")).collect();
        let cfg = || json!({"fee_account": "fees", "spread": 64, "percent_bps": 290, "min": 1});
        let credited = |source: &str| {
            let input = InputBuilder::new()
                .source(source)
                .balance(source, 1_000_000)
                .amount(10_000)
                .config_json(cfg())
                .build();
            let d = Fee::evaluate(input).unwrap();
            let by = postings_by_account(&d);
            assert_eq!(by.get(source), Some(&-290), "{by:?}");
            let (fee_account, fee) = by.iter().find(|(a, _)| a.as_str() != source).unwrap();
            assert_eq!(*fee, 290);
            fee_account.clone()
        };
        assert_eq!(credited("a1"), credited("a1"), "same input, same account");
        let used: std::collections::BTreeSet<String> =
            (0..1000).map(|i| credited(&format!("a{i}"))).collect();
        assert!(used.len() > 48, "spread over the accounts: {}", used.len());
        assert!(used.iter().all(|a| accounts.contains(a)));
        // FNV-1a's published test vector: the choice is fixed by definition
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
