//! TLS: a broker node with an `amqps` listener and a certificate from a CA generated here. tchu
//! connects over `amqps://` trusting that CA, and refuses a certificate from an unknown CA.
#![cfg(feature = "tls")]

mod nodes;

use nodes::Node;
use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it; and an unrelated CA.
fn certificates() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls-certs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for ca in ["ca", "other_ca"] {
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=tchu test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let _ = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(&dir)
        .status();
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status();
    dir
}

#[tokio::test]
async fn amqps_with_a_custom_ca_and_refusal_of_an_unknown_ca() {
    let certs = certificates();
    let conf = format!(
        "listeners.tcp = none\nlisteners.ssl.1 = 127.0.0.1:5694\nssl_options.cacertfile = {0}/ca.pem\nssl_options.certfile = {0}/server.pem\nssl_options.keyfile = {0}/server.key\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
        certs.display()
    );
    let node = tokio::task::spawn_blocking(move || Node::start("tchu_tls", 5695, &conf))
        .await
        .unwrap();
    let url = "amqps://guest:guest@localhost:5694/%2f";

    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let client = tchu::Client::connect_with_ca(url, &ca)
        .await
        .expect("TLS connection with the right CA");
    // A confirmed, mandatory publish makes the broker answer over the TLS connection.
    let err = client
        .publish_raw("tls.nobody", &serde_json::json!({"over": "tls"}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, tchu::Error::Unroutable { .. }),
        "the broker answered over TLS: {err:?}"
    );

    let other = std::fs::read_to_string(certs.join("other_ca.pem")).unwrap();
    let refused = tchu::Client::connect_with_ca(url, &other).await;
    let err = refused.expect_err("a certificate from an unknown CA must be refused");
    assert!(matches!(err, tchu::Error::Connect { .. }), "{err:?}");
    assert!(
        !format!("{err}").contains("guest:guest"),
        "credentials never printed: {err}"
    );
    client.close().await;
    drop(node);
}
