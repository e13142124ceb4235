//! TLS termination with rustls: SNI picks the certificate, ALPN offers HTTP/2;
//! cleartext HTTP/2 (h2c) on plain listeners.

use crate::harness::*;
use std::path::Path;

struct Cert {
    pem: String,
}

fn write_cert(dir: &Path, name: &str) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), ck.key_pair.serialize_pem()).unwrap();
    Cert { pem: ck.cert.pem() }
}

/// GET `https://{host}:{port}/` through the gateway with a client that trusts only `cert`.
async fn fetch(
    cert: &Cert,
    host: &str,
    gw: &Gateway,
    http2: bool,
) -> reqwest::Result<reqwest::Response> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem.as_bytes()).unwrap())
        .resolve(host, gw.addr);
    if !http2 {
        b = b.http1_only();
    }
    let url = format!("https://{host}:{}/", gw.addr.port());
    b.build().unwrap().get(url).send().await
}

async fn tls_gateway(dir: &Path, origin: &Origin) -> Gateway {
    Gateway::start_in(
        &format!(
            r#"
[[listeners]]
name = "https"
address = "{{gateway}}"
[listeners.tls]
http2 = true
[[listeners.tls.certificates]]
cert = "localhost.crt"
key = "localhost.key"
[[listeners.tls.certificates]]
cert = "api.test.crt"
key = "api.test.key"
server_names = ["api.test"]
[[pools]]
name = "p"
endpoints = ["{}"]
[[routes]]
name = "all"
pool = "p"
"#,
            origin.addr
        ),
        dir,
    )
    .await
}

#[tokio::test]
async fn sni_selects_the_certificate_and_alpn_offers_h2() {
    let dir = tempfile::tempdir().unwrap();
    let default = write_cert(dir.path(), "localhost");
    let api = write_cert(dir.path(), "api.test");
    let origin = Origin::start("o").await;
    let gw = tls_gateway(dir.path(), &origin).await;

    // api.test is served with its own certificate (a client trusting only it succeeds) ...
    let res = fetch(&api, "api.test", &gw, true).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.version(),
        reqwest::Version::HTTP_2,
        "h2 negotiated by ALPN"
    );
    assert_eq!(json(res).await["headers"]["x-forwarded-proto"], "https");

    // ... and localhost with the default one.
    let res = fetch(&default, "localhost", &gw, false).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.version(),
        reqwest::Version::HTTP_11,
        "HTTP/1.1 still offered"
    );

    // A client trusting only the default certificate rejects what api.test is served.
    assert!(fetch(&default, "api.test", &gw, true).await.is_err());
}

#[tokio::test]
async fn h2c_on_plain_listener() {
    let origin = Origin::start("o").await;
    let gw = Gateway::start(&one_pool(&[origin.addr], "", "").replace(
        "[[pools]]",
        "h2c = true
[[pools]]",
    ))
    .await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    // HTTP/1.1 clients still work on the same listener.
    assert_eq!(gw.get("/x").await.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn h2_stream_limit_is_advertised() {
    let origin = Origin::start("o").await;
    let config = one_pool(
        &[origin.addr],
        "",
        "[limits]\nh2_max_concurrent_streams = 7",
    )
    .replace("[[pools]]", "h2c = true\n[[pools]]");
    let gw = Gateway::start(&config).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/", gw.addr))
        .body(())
        .unwrap();
    let (res, _) = send.send_request(req, true).unwrap();
    assert_eq!(res.await.unwrap().status(), 200);
    // The server's SETTINGS have arrived with the first response.
    assert_eq!(send.current_max_send_streams(), 7);
}
