//! TLS over rustls (ring), no OpenSSL: the roots a client trusts (Postgres
//! in `db::tls`, HTTPS webhooks) and the certificate `payrail serve`
//! presents (`[server.tls]`), reloaded without a restart.
//!
//! Reload: SIGHUP, or a change of either file seen by a poll every
//! [`RELOAD_POLL_MS`]. A pair that does not load (half-written, a key that
//! does not match) is logged and the previous certificate stays: a bad
//! rotation never takes the listener down. New handshakes get the new
//! certificate; open connections keep theirs.

use crate::error::{Error, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How often `serve` looks at the certificate files for a change.
pub const RELOAD_POLL_MS: u64 = 2_000;
/// Largest certificate or key file read (a chain of a few certificates is
/// a few kB).
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// The crypto provider of every TLS connection payrail makes or accepts.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// CA certificates to trust: `system` (the operating system's store) or
/// a PEM file. `what` names the setting in errors.
pub(crate) fn load_roots(source: &str, what: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = if source == "system" {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            return Err(Error::Setup(format!(
                "{what}=system: the system certificate store is empty or unreadable ({:?})",
                found.errors
            )));
        }
        found.certs
    } else {
        read_certs(Path::new(source)).map_err(|e| Error::Setup(format!("{what} {source}: {e}")))?
    };
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Setup(format!(
            "{what} {source} holds no usable CA certificate"
        )));
    }
    Ok(store)
}

/// The client configuration of an HTTPS webhook: the system's roots, or
/// only the CAs of `ca_file` (a private endpoint's own CA).
pub(crate) fn https_client_config(ca_file: Option<&Path>) -> Result<ClientConfig> {
    let roots = match ca_file {
        Some(path) => load_roots(&path.to_string_lossy(), "ca_file")?,
        None => load_roots("system", "ca_file")?,
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn read_pem(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len > MAX_PEM_FILE_BYTES {
        return Err(format!("larger than {MAX_PEM_FILE_BYTES} bytes"));
    }
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

fn read_certs(path: &Path) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not readable PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

/// The certificate chain and key of `[server.tls]`, checked to match.
fn load_pair(cert_file: &Path, key_file: &Path) -> std::result::Result<CertifiedKey, String> {
    let certs = read_certs(cert_file).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let pem = read_pem(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no private key: {e}", key_file.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        format!(
            "{} does not match {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(pair)
}

/// The server's certificate, swapped on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// What `payrail serve` terminates TLS with: the acceptor, and the files
/// it reloads.
#[derive(Clone)]
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<Current>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl ServerTls {
    /// Loads the pair; an error names the file and what is wrong with it.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerTls> {
        let pair =
            load_pair(cert_file, key_file).map_err(|e| Error::Setup(format!("server.tls: {e}")))?;
        let current = Arc::new(Current(RwLock::new(Arc::new(pair))));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Setup(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The acceptor of new connections (it sees every reload).
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again; on success new handshakes present the new
    /// certificate, on failure the old one stays and the error is returned.
    pub fn reload(&self) -> std::result::Result<(), String> {
        let pair = load_pair(&self.cert_file, &self.key_file)?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }

    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        [&self.cert_file, &self.key_file].map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
    }

    /// Reloads on SIGHUP and when either file changes, until `stop`.
    pub async fn watch(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = self.stamp();
        let mut poll = tokio::time::interval(Duration::from_millis(RELOAD_POLL_MS));
        loop {
            let why = tokio::select! {
                _ = stop.changed() => return,
                _ = poll.tick() => "changed",
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            };
            let now = self.stamp();
            if why == "changed" && now == seen {
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(()) => tracing::info!(trigger = why, "reloaded the TLS certificate"),
                Err(e) => tracing::error!(
                    trigger = why,
                    error = %e,
                    "the TLS certificate did not reload; the previous one is still served"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_file_past_the_bound_is_refused_unread() {
        let dir = std::env::temp_dir().join(format!("payrail-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.pem");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_PEM_FILE_BYTES + 1).unwrap();
        let e = load_roots(&big.to_string_lossy(), "ca_file").unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        let e = ServerTls::load(&big, &big).err().unwrap();
        assert!(e.to_string().contains("larger than"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
