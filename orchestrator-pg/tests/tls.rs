//! TLS to PostgreSQL, against a cluster of the tests' own that serves a
//! certificate made here: a CA, and a server certificate it signed for
//! `localhost` and 127.0.0.1.

use std::path::PathBuf;
use std::sync::OnceLock;

use orchestrator_core::StoreError;
use orchestrator_pg::testing::{self, Cluster, ClusterConfig};
use orchestrator_pg::PgStore;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The cluster, with `ssl=on` and the server certificate; the data
/// directory also holds `ca.pem` (the CA that signed it) and
/// `other-ca.pem` (a CA that did not).
fn tls_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (ca_pem, ca) = certificate_authority("orchestrator test CA");
        let (other_ca_pem, _) = certificate_authority("some other CA");
        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server.signed_by(&server_key, &ca).unwrap();
        let file = |name: &str, contents: String| (name.to_owned(), contents.into_bytes());
        let setting = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        testing::start_cluster(&ClusterConfig {
            files: vec![
                file("server.crt", server_cert.pem()),
                file("server.key", server_key.serialize_pem()),
                file("ca.pem", ca_pem),
                file("other-ca.pem", other_ca_pem),
            ],
            settings: vec![
                setting("ssl", "on"),
                setting("ssl_cert_file", "server.crt"),
                setting("ssl_key_file", "server.key"),
                // 127.0.0.2: the same server under a name the certificate lacks.
                setting("listen_addresses", "127.0.0.1,127.0.0.2"),
            ],
        })
    })
}

/// A self-signed CA certificate (PEM) and the issuer that signs with it.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

fn root_cert(name: &str) -> PathBuf {
    tls_cluster().data_dir().join(name)
}

/// Whether the store's own session is encrypted, as the server sees it.
async fn session_is_encrypted(store: &PgStore) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Every message in `error`'s chain, joined as an operator sees it.
fn printed(error: &StoreError) -> String {
    let mut messages = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = next {
        messages.push(error.to_string());
        next = error.source();
    }
    messages.join(": ")
}

#[tokio::test]
async fn sslmode_require_connects_encrypted() {
    let url = format!("{}?sslmode=require", tls_cluster().url("postgres"));
    let store = PgStore::connect(&url).await.expect("connect over TLS");
    assert!(session_is_encrypted(&store).await);
}

#[tokio::test]
async fn sslmode_disable_connects_in_the_clear_for_comparison() {
    let url = format!("{}?sslmode=disable", tls_cluster().url("postgres"));
    let store = PgStore::connect(&url).await.expect("connect");
    assert!(!session_is_encrypted(&store).await);
}

#[tokio::test]
async fn verify_full_with_the_right_ca_connects_migrates_and_listens() {
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        tls_cluster().url("postgres"),
        root_cert("ca.pem").display()
    );
    let store = PgStore::connect(&url)
        .await
        .expect("connect over verified TLS");
    assert!(session_is_encrypted(&store).await);
    store.migrate().await.expect("migrate over TLS");
    let listeners: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = $1",
    )
    .bind(orchestrator_pg::LISTENER_APPLICATION_NAME)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(listeners, [true], "the LISTEN connection is encrypted too");
}

#[tokio::test]
async fn verify_ca_with_the_right_ca_connects() {
    let url = format!(
        "{}?sslmode=verify-ca&sslrootcert={}",
        tls_cluster().url("postgres"),
        root_cert("ca.pem").display()
    );
    let store = PgStore::connect(&url).await.expect("connect");
    assert!(session_is_encrypted(&store).await);
}

#[tokio::test]
async fn verify_full_with_a_wrong_ca_is_refused_naming_the_server() {
    let cluster_url = tls_cluster().url("postgres");
    let url = format!(
        "{cluster_url}?sslmode=verify-full&sslrootcert={}",
        root_cert("other-ca.pem").display()
    );
    let error = PgStore::connect(&url)
        .await
        .expect_err("the server's certificate is not signed by that CA");
    // Retrying cannot fix a certificate: not a transient failure.
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    let printed = printed(&error);
    let port = cluster_url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(port, _)| port)
        .unwrap();
    assert!(
        printed.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{printed}"
    );
    assert!(printed.contains("certificate"), "{printed}");
    println!("{printed}");
}

#[tokio::test]
async fn verify_full_is_refused_when_the_name_does_not_match() {
    // The certificate names localhost and 127.0.0.1, not 127.0.0.2, which
    // reaches the same server.
    let cluster_url = tls_cluster()
        .url("postgres")
        .replace("127.0.0.1", "127.0.0.2");
    let url = format!(
        "{cluster_url}?sslmode=verify-full&sslrootcert={}",
        root_cert("ca.pem").display()
    );
    let error = PgStore::connect(&url)
        .await
        .expect_err("the name does not match");
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    let printed = printed(&error);
    assert!(printed.contains("not valid for name"), "{printed}");
}
