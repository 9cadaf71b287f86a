//! TLS: a broker node with an `amqps` listener and a certificate from a CA generated here. tchu
//! connects over `amqps://` trusting that CA, and refuses a certificate from an unknown CA.
#![cfg(feature = "tls")]

mod nodes;

use nodes::Node;

#[tokio::test]
async fn amqps_with_a_custom_ca_and_refusal_of_an_unknown_ca() {
    let certs = nodes::tls_certificates("tls-certs");
    let conf = format!(
        "listeners.tcp = none\n{}",
        nodes::tls_listener(&certs, 5694)
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
