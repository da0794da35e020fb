//! Conversions between the host's model types and the WIT bindings, with the
//! shape checks a plugin's output must pass before the processor sees it.

use super::bindings::payrail::plugin::types as wit;
use super::{PluginFault, PluginLimits, is_reserved_topic};
use crate::model::{Decision, Metadata, PluginEvent, PluginInput, Posting};

/// Longest decline code / annotation key / event topic accepted.
const MAX_NAME_BYTES: usize = 128;

fn entries(map: &Metadata) -> Vec<wit::Entry> {
    map.iter()
        .map(|(k, v)| wit::Entry {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

fn decision_to_guest(d: &Decision) -> wit::Decision {
    match d {
        Decision::Approve {
            postings,
            events,
            annotations,
        } => wit::Decision::Approve(wit::Approval {
            postings: postings
                .iter()
                .map(|p| wit::Posting {
                    account: p.account.clone(),
                    amount: p.amount,
                    currency: p.currency.clone(),
                })
                .collect(),
            events: events
                .iter()
                .map(|e| wit::Event {
                    topic: e.topic.clone(),
                    payload: e.payload.clone(),
                })
                .collect(),
            annotations: entries(annotations),
        }),
        Decision::Decline { code, message } => wit::Decision::Decline(wit::Decline {
            code: code.clone(),
            message: message.clone(),
        }),
    }
}

/// Host input -> guest input.
pub(super) fn input_to_guest(input: &PluginInput) -> wit::Input {
    let p = &input.payment;
    wit::Input {
        payment: wit::Payment {
            id: p.id.clone(),
            kind: p.kind.clone(),
            amount: p.amount,
            currency: p.currency.clone(),
            source: p.source.clone(),
            destination: p.destination.clone(),
            metadata: entries(&p.metadata),
        },
        accounts: input
            .accounts
            .iter()
            .map(|a| wit::Account {
                id: a.id.clone(),
                currency: a.currency.clone(),
                balance: a.balance,
                flags: if a.allow_negative {
                    wit::AccountFlags::ALLOW_NEGATIVE
                } else {
                    wit::AccountFlags::empty()
                },
                metadata: entries(&a.metadata),
            })
            .collect(),
        config: input.config.clone(),
        previous: input
            .previous
            .iter()
            .map(|s| wit::StepResult {
                plugin: s.plugin.clone(),
                digest: s.digest.clone(),
                decision: decision_to_guest(&s.decision),
            })
            .collect(),
        now_ms: input.now_ms,
    }
}

fn check_name(what: &str, s: &str) -> Result<(), PluginFault> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PluginFault::InvalidOutput(format!(
            "{what} {s:?} must be 1-{MAX_NAME_BYTES} chars of a-z, 0-9, '_', '.', '-'"
        )))
    }
}

/// Text a plugin hands the host must not hold NUL: Postgres text cannot
/// store it, and the payment's write would fail for every payment the
/// plugin sees.
fn check_text(what: &str, s: &str) -> Result<(), PluginFault> {
    if s.contains('\0') {
        return Err(PluginFault::InvalidOutput(format!(
            "{what} contains a NUL character"
        )));
    }
    Ok(())
}

/// Checks one event: a topic of the plugin's own (not the host's), a
/// payload of valid JSON within the limit.
fn check_event(e: &wit::Event, limits: &PluginLimits) -> Result<(), PluginFault> {
    check_name("event topic", &e.topic)?;
    if is_reserved_topic(&e.topic) {
        return Err(PluginFault::ReservedTopic(e.topic.clone()));
    }
    if e.payload.len() > limits.max_event_payload_bytes {
        return Err(PluginFault::EventTooLarge {
            topic: e.topic.clone(),
            bytes: e.payload.len(),
            limit: limits.max_event_payload_bytes,
        });
    }
    if serde_json::from_str::<serde_json::Value>(&e.payload).is_err() {
        return Err(PluginFault::InvalidOutput(format!(
            "event {:?} payload is not valid JSON",
            e.topic
        )));
    }
    // valid JSON, but no Postgres jsonb (nor text) can hold it
    if e.payload.contains("\\u0000") {
        return Err(PluginFault::InvalidOutput(format!(
            "event {:?} payload contains a NUL character (\\u0000)",
            e.topic
        )));
    }
    Ok(())
}

/// Guest decision -> host decision, rejecting malformed output and events
/// beyond `limits` (count, payload size) or on the host's topics.
pub(super) fn decision_from_guest(
    d: wit::Decision,
    limits: &PluginLimits,
) -> Result<Decision, PluginFault> {
    match d {
        wit::Decision::Decline(dec) => {
            check_name("decline code", &dec.code)?;
            check_text("decline message", &dec.message)?;
            Ok(Decision::Decline {
                code: dec.code,
                message: dec.message,
            })
        }
        wit::Decision::Approve(a) => {
            let mut annotations = Metadata::new();
            for e in a.annotations {
                check_name("annotation key", &e.key)?;
                check_text("annotation value", &e.value)?;
                if annotations.insert(e.key.clone(), e.value).is_some() {
                    return Err(PluginFault::InvalidOutput(format!(
                        "annotation key {:?} appears twice",
                        e.key
                    )));
                }
            }
            if a.events.len() > limits.max_events {
                return Err(PluginFault::TooManyEvents {
                    count: a.events.len(),
                    limit: limits.max_events,
                });
            }
            let mut events = Vec::with_capacity(a.events.len());
            for e in a.events {
                check_event(&e, limits)?;
                events.push(PluginEvent {
                    topic: e.topic,
                    payload: e.payload,
                });
            }
            let postings = a
                .postings
                .into_iter()
                .map(|p| Posting {
                    account: p.account,
                    amount: p.amount,
                    currency: p.currency,
                })
                .collect();
            Ok(Decision::Approve {
                postings,
                events,
                annotations,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin's NUL would fail the payment's write in Postgres: refused
    /// as invalid output instead, in every text the host stores.
    #[test]
    fn nul_in_a_plugins_text_is_invalid_output() {
        let limits = PluginLimits::default();
        let decline = |message: &str| {
            wit::Decision::Decline(wit::Decline {
                code: "no".into(),
                message: message.into(),
            })
        };
        let approve = |value: &str, payload: &str| {
            wit::Decision::Approve(wit::Approval {
                postings: vec![],
                events: vec![wit::Event {
                    topic: "audit.note".into(),
                    payload: payload.into(),
                }],
                annotations: vec![wit::Entry {
                    key: "note".into(),
                    value: value.into(),
                }],
            })
        };
        let invalid = |d| {
            matches!(
                decision_from_guest(d, &limits),
                Err(PluginFault::InvalidOutput(_))
            )
        };
        assert!(invalid(decline("a\0b")));
        assert!(invalid(approve("a\0b", "{}")));
        assert!(invalid(approve("ok", r#"{"a":"x\u0000y"}"#)));
        assert!(decision_from_guest(decline("plain"), &limits).is_ok());
        assert!(decision_from_guest(approve("ok", r#"{"a":"x\u0001y"}"#), &limits).is_ok());
    }
}
