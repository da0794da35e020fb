//! Where outbox events go: webhooks (HMAC-signed HTTP POST), NATS
//! JetStream (deduplicated by `Nats-Msg-Id`) and JSON-lines files. Each
//! delivery is bounded by the sink's `timeout_ms`; `Ok` means the receiver
//! acknowledged it (2xx, a JetStream ack, the line written and synced).

use crate::config::{SinkConfig, SinkKind};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

/// Name of the webhook signature header.
pub const SIGNATURE_HEADER: &str = "Payrail-Signature";
/// Name of the header carrying the event id (also in the body).
pub const EVENT_ID_HEADER: &str = "Payrail-Event-Id";
/// How old a signature `verify_signature` accepts by default, in seconds.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// One event as sinks receive it (the JSON body of a webhook, a NATS
/// message, a line of the file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Envelope {
    /// Stable id: the same on every redelivery. Dedupe by it.
    pub event_id: String,
    /// e.g. `payment.approved`.
    pub topic: String,
    /// Ordering key (the payment id): events of one key arrive in order.
    pub key: String,
    /// The tenant whose change caused the event.
    pub tenant: String,
    /// Commit order within the outbox (informational).
    pub sequence: i64,
    /// When the event was written, Unix milliseconds.
    pub created_at_ms: i64,
    /// The event's data.
    pub payload: serde_json::Value,
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The `Payrail-Signature` header value for `body` sent at `timestamp`
/// (Unix seconds): `t=<timestamp>,v1=<hex hmac_sha256(secret, "<t>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut msg = format!("{timestamp}.").into_bytes();
    msg.extend_from_slice(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(hmac_sha256(secret, &msg))
    )
}

/// Why a webhook signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<unix>,v1=<hex>`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further than the tolerance from now (a replay?).
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// No `v1` matches: wrong secret or altered body.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a `Payrail-Signature` header against the raw request body: the
/// timestamp within `tolerance_secs` of `now` (Unix seconds) and a `v1`
/// equal to the HMAC, compared in constant time.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if t.abs_diff(now) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    let expected = hmac_sha256(secret, &msg);
    let ok = sigs.iter().any(|s| {
        s.len() == expected.len()
            && s.iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What one delivery to one sink reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Acknowledged.
    Ok,
    /// Acknowledged as a duplicate (the receiver already had it).
    Duplicate,
}

enum Target {
    Webhook {
        client: reqwest::Client,
        url: String,
        secret: Vec<u8>,
    },
    Nats {
        url: String,
        subject_prefix: String,
        conn: Box<tokio::sync::Mutex<Option<async_nats::jetstream::Context>>>,
    },
    File {
        path: PathBuf,
        lock: tokio::sync::Mutex<()>,
    },
}

/// One configured sink, ready to deliver.
pub struct Sink {
    config: SinkConfig,
    timeout: Duration,
    target: Target,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.config.name)
            .field("kind", &self.config.kind)
            .finish()
    }
}

/// A NATS subject token from a topic: anything outside `[A-Za-z0-9._-]`
/// becomes `_`.
fn subject_for(prefix: &str, topic: &str) -> String {
    let t: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{}", t.trim_matches('.'))
}

impl Sink {
    /// Builds the sink; nothing is contacted yet (NATS connects on first use).
    pub fn new(config: &SinkConfig) -> Result<Sink, String> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let target = match config.kind {
            SinkKind::Webhook => Target::Webhook {
                client: reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("sink {}: http client: {e}", config.name))?,
                url: config.url.clone().unwrap_or_default(),
                secret: config
                    .resolved_secret(|k| std::env::var(k).ok())
                    .ok_or_else(|| format!("sink {}: no secret", config.name))?
                    .into_bytes(),
            },
            SinkKind::Nats => Target::Nats {
                url: config
                    .url
                    .clone()
                    .or_else(|| std::env::var("NATS_URL").ok().filter(|u| !u.is_empty()))
                    .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
                subject_prefix: config
                    .subject_prefix
                    .clone()
                    .unwrap_or_else(|| "payrail.".into()),
                conn: Box::new(tokio::sync::Mutex::new(None)),
            },
            SinkKind::File => Target::File {
                path: config
                    .path
                    .clone()
                    .ok_or_else(|| format!("sink {}: no path", config.name))?,
                lock: tokio::sync::Mutex::new(()),
            },
        };
        Ok(Sink {
            config: config.clone(),
            timeout,
            target,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this sink takes events of `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.config.matches(topic)
    }

    /// Delivers one event (`body` is its serialized envelope); bounded by
    /// the sink's timeout. The error says what went wrong, for `last_error`.
    pub async fn deliver(&self, event: &Envelope, body: &[u8]) -> Result<Delivered, String> {
        match tokio::time::timeout(self.timeout, self.deliver_inner(event, body)).await {
            Ok(r) => r.map_err(|e| format!("{}: {e}", self.config.name)),
            Err(_) => Err(format!(
                "{}: timed out after {} ms",
                self.config.name,
                self.timeout.as_millis()
            )),
        }
    }

    async fn deliver_inner(&self, event: &Envelope, body: &[u8]) -> Result<Delivered, String> {
        match &self.target {
            Target::Webhook {
                client,
                url,
                secret,
            } => {
                let signature = sign(secret, unix_now(), body);
                let resp = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .header(EVENT_ID_HEADER, &event.event_id)
                    .body(body.to_vec())
                    .send()
                    .await
                    .map_err(|e| format!("POST {url}: {e}"))?;
                let status = resp.status();
                if status.is_success() {
                    Ok(Delivered::Ok)
                } else {
                    Err(format!("POST {url}: HTTP {status}"))
                }
            }
            Target::Nats {
                url,
                subject_prefix,
                conn,
            } => {
                let js = {
                    let mut guard = conn.lock().await;
                    if guard.is_none() {
                        let client = async_nats::ConnectOptions::new()
                            .connection_timeout(self.timeout)
                            .connect(url.as_str())
                            .await
                            .map_err(|e| format!("connect {url}: {e}"))?;
                        *guard = Some(async_nats::jetstream::new(client));
                    }
                    guard.clone().expect("connected above")
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
                let subject = subject_for(subject_prefix, &event.topic);
                let ack = js
                    .publish_with_headers(subject.clone(), headers, body.to_vec().into())
                    .await
                    .map_err(|e| format!("publish {subject}: {e}"))?
                    .await
                    .map_err(|e| format!("ack {subject}: {e}"))?;
                Ok(if ack.duplicate {
                    Delivered::Duplicate
                } else {
                    Delivered::Ok
                })
            }
            Target::File { path, lock } => {
                let _guard = lock.lock().await;
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| format!("open {}: {e}", path.display()))?;
                let mut line = body.to_vec();
                line.push(b'\n');
                f.write_all(&line)
                    .await
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
                f.sync_data()
                    .await
                    .map_err(|e| format!("sync {}: {e}", path.display()))?;
                Ok(Delivered::Ok)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // test case 6: a key longer than the block is hashed first
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signatures_verify_and_refuse_tampering() {
        let secret = b"whsec_0123456789abcdef";
        let body = br#"{"event_id":"e1"}"#;
        let h = sign(secret, 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify_signature(secret, &h, body, 1_700_000_100, 300),
            Ok(())
        );
        // (secret, header, body, now, expected error)
        type Case<'a> = (&'a [u8], &'a str, &'a [u8], u64, SignatureError);
        let cases: [Case; 5] = [
            (
                b"other-secret-0123",
                &h,
                body,
                1_700_000_000,
                SignatureError::Mismatch,
            ),
            (
                secret,
                &h,
                br#"{"event_id":"e2"}"#,
                1_700_000_000,
                SignatureError::Mismatch,
            ),
            (secret, &h, body, 1_700_000_301, SignatureError::Stale),
            (
                secret,
                "v1=00",
                body,
                1_700_000_000,
                SignatureError::Malformed,
            ),
            (
                secret,
                "t=1700000000,v1=zz",
                body,
                1_700_000_000,
                SignatureError::Malformed,
            ),
        ];
        for (s, header, b, now, want) in cases {
            assert_eq!(
                verify_signature(s, header, b, now, 300),
                Err(want),
                "{header}"
            );
        }
    }

    #[test]
    fn subjects_are_sanitized() {
        assert_eq!(subject_for("p.", "payment.approved"), "p.payment.approved");
        assert_eq!(subject_for("p.", "fee charged*>"), "p.fee_charged__");
    }
}
