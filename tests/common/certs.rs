//! Certificates for TLS tests, made by the openssl command line: a CA, and
//! leaf certificates it signs for the names a test chooses.

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` with a new P-256 key written to `{name}.key`, then `out`
/// (`-x509 -out {name}.crt` for a self-signed CA, `-out {name}.csr`).
fn new_key_request(dir: &Path, name: &str, out: &[&str]) {
    let (key, subject) = (format!("{name}.key"), format!("/CN={name}"));
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        &subject,
    ];
    args.extend_from_slice(out);
    openssl(dir, &args);
}

/// A CA (`{name}.crt`, `{name}.key`) in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    let crt = format!("{name}.crt");
    new_key_request(dir, name, &["-x509", "-out", &crt, "-days", "2"]);
}

/// `{name}.crt`/`{name}.key` in `dir`, signed by CA `ca`, for the names of
/// `san` (openssl's form: `IP:127.0.0.1,DNS:localhost`).
pub fn make_cert(dir: &Path, name: &str, ca: &str, san: &str) {
    let (csr, crt, ext) = (
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    new_key_request(dir, name, &["-out", &csr]);
    std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// The DER of the first certificate of PEM file `path`.
pub fn first_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A rustls client configuration trusting only the CA in `ca_file`.
pub fn client_trusting(ca_file: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}
