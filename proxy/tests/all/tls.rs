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
    tls_gateway_with(dir, origin, "").await
}

/// [`tls_gateway`] with `limits` lines.
async fn tls_gateway_with(dir: &Path, origin: &Origin, limits: &str) -> Gateway {
    Gateway::start_in(
        &format!(
            r#"
[limits]
{limits}
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
async fn tls_handshakes_are_held_to_the_head_deadline_and_the_client_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "localhost");
    write_cert(dir.path(), "api.test");
    let origin = Origin::start("o").await;
    let gw = tls_gateway_with(
        dir.path(),
        &origin,
        "head_timeout_ms = 4000\nmax_connections_per_client = 3",
    )
    .await;
    // The harness's readiness probe has gone.
    eventually("no connection open", || async {
        gw.metric("gantry_open_connections").await == Some(0.0)
    })
    .await;
    // Three connections that start a handshake and stall mid-ClientHello.
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        conn.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        stalled.push(conn);
    }
    // They count against the client's cap: a fourth is closed at once.
    eventually("the three handshakes held", || async {
        gw.metric("gantry_open_connections").await == Some(3.0)
    })
    .await;
    let mut fourth = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read =
        tokio::time::timeout(std::time::Duration::from_millis(500), fourth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth was closed: {read:?}"
    );
    // The stalled ones are cut at the head deadline, not Pingora's 60 s.
    for mut conn in stalled {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest)).await;
    }
    let held = started.elapsed();
    assert!(
        held > std::time::Duration::from_millis(3900) && held < std::time::Duration::from_secs(8),
        "{held:?}"
    );
    // Counted as the handshake is dropped, just after its socket closes.
    let sample = "gantry_tls_handshakes_total{result=\"timeout\"}";
    eventually("three handshakes counted as timed out", || async {
        gw.metric(sample).await == Some(3.0)
    })
    .await;
    // With the slots free again, a real client gets through, counted.
    let res = fetch(&cert, "localhost", &gw, false).await.unwrap();
    assert_eq!(res.status(), 200);
    let ok = "gantry_tls_handshakes_total{result=\"ok\"}";
    assert_eq!(gw.metric(ok).await, Some(1.0));
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

/// Certificates renewed at the same paths are presented after a reload (the
/// configuration file unchanged); a certificate that no longer loads fails
/// the reload and the ones in use stay.
#[tokio::test]
async fn a_reload_presents_renewed_certificates_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_cert(dir.path(), "localhost");
    write_cert(dir.path(), "api.test");
    let origin = Origin::start("o").await;
    let gw = tls_gateway(dir.path(), &origin).await;
    assert_eq!(
        fetch(&old, "localhost", &gw, false).await.unwrap().status(),
        200
    );

    let renewed = write_cert(dir.path(), "localhost");
    assert!(
        fetch(&renewed, "localhost", &gw, false).await.is_err(),
        "the old certificate until the reload"
    );
    let res = gw.admin_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(res.status(), 200);
    let res = fetch(&renewed, "localhost", &gw, false).await.unwrap();
    assert_eq!(res.status(), 200, "the renewed certificate");
    assert!(fetch(&old, "localhost", &gw, false).await.is_err());

    std::fs::write(dir.path().join("localhost.key"), "not a key").unwrap();
    let res = gw.admin_reload(Some(ADMIN_TOKEN)).await;
    let outcome = json(res).await;
    assert_eq!(outcome["result"], "invalid", "{outcome}");
    assert!(
        outcome["problems"][0]
            .as_str()
            .unwrap()
            .contains("listeners[0].tls.certificates[0].key"),
        "{outcome}"
    );
    let res = fetch(&renewed, "localhost", &gw, false).await.unwrap();
    assert_eq!(res.status(), 200, "the certificate in use stays");
}
