//! TLS to Postgres: libpq's `sslmode` and `sslrootcert`, with rustls.
//!
//! tokio-postgres parses only `disable`, `prefer` and `require` and knows no
//! `sslrootcert`, so both are taken out of the connection string here and
//! turned into a rustls configuration; the rest of the string (multi-host
//! lists, `target_session_attrs`, ...) is tokio-postgres's to parse.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | if the server offers it | no |
//! | `require` | always | no; with `sslrootcert`, as `verify-ca` (as libpq) |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert`, and the host name |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the
//! operating system's store (as libpq 16). Each verifying mode needs it:
//! there is no silent default to trust.

use crate::error::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio_postgres::config::SslMode as PgSslMode;
pub use tokio_postgres_rustls::MakeRustlsConnect as Tls;

/// libpq's `sslmode`, all five values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Setup(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// Where to connect and how: the parsed connection string and the TLS
/// connector its `sslmode` asks for.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    pub mode: SslMode,
}

impl Target {
    /// Parses `url` (URL or key=value form). Cost: reads `sslrootcert` (or
    /// the system store) once; call it once per pool, not per connection.
    pub fn parse(url: &str) -> Result<Target> {
        let (rest, mode, root) = take_tls_settings(url)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            Error::Setup(format!(
                "{} is not a valid postgres URL: {e}",
                crate::redact::redact_url(url)
            ))
        })?;
        let mode = match (mode, &root) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        let tls = Tls::new(client_config(mode, root.as_deref())?);
        Ok(Target { config, tls, mode })
    }

    /// Opens one connection; its driver task runs until the client drops.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// `url` without `sslmode` and `sslrootcert`, and their values.
fn take_tls_settings(url: &str) -> Result<(String, SslMode, Option<String>)> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: String| -> Result<bool> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => root = Some(value),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), SslMode::Prefer, None));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = crate::redact::percent_decode(v).ok_or_else(|| {
                Error::Setup(format!(
                    "{k} in the postgres URL is not valid percent-encoding"
                ))
            })?;
            if !take(k, v)? {
                kept.push(pair);
            }
        }
        match kept.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{}", kept.join("&")),
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            if !take(k, v.trim_matches('\'').to_string())? {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode.unwrap_or(SslMode::Prefer), root))
}

use crate::tls::provider;

/// The rustls configuration of `mode`; `root` is `sslrootcert`.
fn client_config(mode: SslMode, root: Option<&str>) -> Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(format!("TLS setup: {e}")))?;
    let verifying = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let config = match (verifying, root) {
        (false, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
        (true, None) => {
            return Err(Error::Setup(
                "sslmode=verify-ca and verify-full need sslrootcert: a PEM file of the CA \
                 certificates to trust, or `system` for the operating system's store"
                    .into(),
            ));
        }
        (true, Some(root)) => {
            let roots = Arc::new(load_roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::Setup(format!("sslrootcert {root}: {e}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = match mode {
                SslMode::VerifyFull => webpki,
                _ => Arc::new(ChainOnly(webpki)),
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// The CA certificates of `sslrootcert`.
fn load_roots(root: &str) -> Result<RootCertStore> {
    crate::tls::load_roots(root, "sslrootcert")
}

/// `prefer` and `require`: encrypted, any certificate (libpq's meaning).
/// The handshake's signatures are still checked against the certificate
/// presented, so the channel is bound to it.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not
/// checked (the server may be reached by an address its certificate does
/// not list, as with a failover IP).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_leave_the_string_and_the_rest_stays() {
        let (rest, mode, root) = take_tls_settings(
            "postgres://u@a:1,b:2/pay?sslmode=verify-full&target_session_attrs=read-write&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u@a:1,b:2/pay?target_session_attrs=read-write"
        );
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));

        let (rest, mode, root) =
            take_tls_settings("host=a,b dbname=pay sslmode=require sslrootcert=system").unwrap();
        assert_eq!(rest, "host=a,b dbname=pay");
        assert_eq!((mode, root.as_deref()), (SslMode::Require, Some("system")));

        let (rest, mode, _) = take_tls_settings("postgres://u@h/db").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("postgres://u@h/db", SslMode::Prefer)
        );
    }

    #[test]
    fn an_unknown_mode_or_a_verifying_mode_without_roots_is_a_clear_error() {
        let e = Target::parse("postgres://u@h/db?sslmode=verify")
            .err()
            .unwrap();
        assert!(e.to_string().contains("not one of disable"), "{e}");
        let e = Target::parse("postgres://u@h/db?sslmode=verify-full")
            .err()
            .unwrap();
        assert!(e.to_string().contains("need sslrootcert"), "{e}");
        let e = Target::parse("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent")
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("sslrootcert /nonexistent: cannot read"),
            "{e}"
        );
        // require with a root file verifies the chain, as libpq does
        assert_eq!(
            Target::parse("postgres://u@h/db?sslmode=disable")
                .unwrap()
                .mode,
            SslMode::Disable
        );
    }
}
