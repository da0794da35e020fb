//! TLS to Postgres (`host/src/db/tls.rs`): a throwaway cluster with
//! `ssl=on` and a certificate from a CA generated here. The attacks first:
//! a server whose certificate another CA signed, and one reached by a name
//! its certificate does not carry, are refused under `verify-full`; then
//! what each mode accepts.

use crate::common::OwnCluster;
use crate::common::certs::{self, make_ca};
use payrail::db::{self, SessionSettings};
use payrail_embedded_pg::LocalPostgres;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `server.crt`/`server.key` for 127.0.0.1 only (no DNS name), signed by `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    certs::make_cert(dir, "server", ca, "IP:127.0.0.1");
}

/// The server's files go into its data directory, owned by the user the
/// server runs as (postgres when the tests run as root).
fn install_for_server(pg: &LocalPostgres, certs: &Path) {
    let owner = std::fs::metadata(&pg.data_dir).unwrap();
    use std::os::unix::fs::MetadataExt;
    for f in ["server.crt", "server.key"] {
        let to = pg.data_dir.join(f);
        std::fs::copy(certs.join(f), &to).unwrap();
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

async fn sql(url: &str, q: &str) -> Result<String, String> {
    let client = db::connect(url, &SessionSettings::default())
        .await
        .map_err(|e| e.to_string())?;
    let rows = client.simple_query(q).await.map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

const ENCRYPTED: &str = "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_verify_full_connects_and_refuses_a_wrong_ca_or_host_name() {
    let cluster = OwnCluster::start("tls").await;
    let pg = &cluster.pg;
    let certs = cluster.root.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_ca(&certs, "ca");
    make_ca(&certs, "other-ca");
    make_server_cert(&certs, "ca");
    install_for_server(pg, &certs);
    let plain = format!("{}?sslmode=disable", pg.url());
    sql(&plain, "alter system set ssl = on").await.unwrap();
    sql(&plain, "select pg_reload_conf()").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let ca = certs.join("ca.crt");
    let other = certs.join("other-ca.crt");
    let with = |mode: &str, root: Option<&Path>| {
        let mut url = format!("{}?sslmode={mode}", pg.url());
        if let Some(r) = root {
            url.push_str(&format!("&sslrootcert={}", r.display()));
        }
        url
    };

    // the attacks: another CA's certificate, a name the certificate lacks
    let e = sql(&with("verify-full", Some(&other)), ENCRYPTED)
        .await
        .unwrap_err();
    assert!(e.contains("certificate"), "wrong CA refused with: {e}");
    let by_name = with("verify-full", Some(&ca)).replace("127.0.0.1", "localhost");
    let e = sql(&by_name, ENCRYPTED).await.unwrap_err();
    assert!(
        e.contains("certificate"),
        "wrong host name refused with: {e}"
    );
    let e = sql(&with("verify-ca", Some(&other)), ENCRYPTED)
        .await
        .unwrap_err();
    assert!(e.contains("certificate"), "verify-ca checks the chain: {e}");

    // what each mode accepts
    assert_eq!(
        sql(&with("verify-full", Some(&ca)), ENCRYPTED)
            .await
            .unwrap(),
        "true"
    );
    let by_name_ca = with("verify-ca", Some(&ca)).replace("127.0.0.1", "localhost");
    assert_eq!(
        sql(&by_name_ca, ENCRYPTED).await.unwrap(),
        "true",
        "verify-ca skips the name"
    );
    assert_eq!(
        sql(&with("require", None), ENCRYPTED).await.unwrap(),
        "true"
    );
    assert_eq!(
        sql(&pg.url(), ENCRYPTED).await.unwrap(),
        "true",
        "prefer encrypts when offered"
    );
    assert_eq!(sql(&plain, ENCRYPTED).await.unwrap(), "false");

    // a pool (what `payrail serve` runs on) over verify-full
    let pool = db::pool(&with("verify-full", Some(&ca)), 2).unwrap();
    let client = pool.get().await.unwrap();
    let row = client.query_one(ENCRYPTED, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "true");
}
