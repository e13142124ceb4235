//! Bad input gets a clear answer: malformed HTTP, oversized headers and bodies,
//! slow upstreams, too many connections.

use crate::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway(extra_limits: &str, origin: &Origin) -> Gateway {
    Gateway::start(&format!(
        r#"
[limits]
max_header_bytes = 4096
max_body_bytes = 1000
{extra_limits}
[[listeners]]
name = "http"
address = "{{gateway}}"
[[pools]]
name = "p"
endpoints = ["{}"]
read_timeout_ms = 300
[[routes]]
name = "small"
pool = "p"
path_prefix = "/small"
max_body_bytes = 10
[[routes]]
name = "all"
pool = "p"
"#,
        origin.addr
    ))
    .await
}

/// Send raw bytes, read until the gateway closes the connection.
async fn raw(gw: &Gateway, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("gateway closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_http_is_400_and_closed() {
    let origin = Origin::start("o").await;
    let gw = gateway("", &origin).await;
    let answer = raw(&gw, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(&gw, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let origin = Origin::start("o").await;
    let gw = gateway("", &origin).await;
    let res = gw
        .client
        .get(gw.url("/"))
        .header("x-big", "a".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    let body = json(res).await;
    assert_eq!(body["error"]["code"], "headers_too_large");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("4096"),
        "{body}"
    );
    // Just under the limit passes.
    let res = gw
        .client
        .get(gw.url("/"))
        .header("x-big", "a".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        gw.metric("gantry_limit_rejections_total{limit=\"header_bytes\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn body_over_route_limit_is_413_without_contacting_upstream() {
    let origin = Origin::start("o").await;
    let gw = gateway("", &origin).await;
    let res = gw
        .client
        .post(gw.url("/small"))
        .body("x".repeat(11))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body = json(res).await;
    assert_eq!(body["error"]["code"], "body_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10 bytes"),
        "{body}"
    );
    assert_eq!(origin.hits(), 0, "upstream never contacted");
    // Route limit, not the global one: 11 bytes are fine elsewhere, 1001 are not.
    assert_eq!(
        gw.client
            .post(gw.url("/other"))
            .body("x".repeat(11))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = gw
        .client
        .post(gw.url("/other"))
        .body("x".repeat(1001))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn chunked_body_over_limit_is_413_without_contacting_upstream() {
    let origin = Origin::start("o").await;
    let gw = gateway("", &origin).await;
    let answer = raw(
        &gw,
        b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    assert_eq!(origin.hits(), 0, "upstream never contacted");

    // Within the limit, the read-ahead body is forwarded intact.
    let answer = raw(
        &gw,
        b"POST /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n1234\r\n3\r\n567\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"body_len\":7"), "{answer}");
}

#[tokio::test]
async fn large_streamed_body_is_cut_off_at_the_limit() {
    // Limits above the read-ahead size (64 KiB) stream the body and stop it at the limit.
    let origin = Origin::start("o").await;
    let gw = Gateway::start(&one_pool(
        &[origin.addr],
        "",
        "[limits]\nmax_body_bytes = 100000",
    ))
    .await;
    let chunk = "x".repeat(50_000);
    let body = format!("c350\r\n{chunk}\r\nc350\r\n{chunk}\r\nc350\r\n{chunk}\r\n0\r\n\r\n");
    let request = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // The gateway answers and closes mid-upload, so our write or read may see a reset.
    let _ = s.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "{answer}"
    );
    eventually("limit counted", || async {
        gw.metric("gantry_limit_rejections_total{limit=\"body_bytes\"}")
            .await
            == Some(1.0)
    })
    .await;
    let within = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nc350\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw(&gw, within.as_bytes()).await;
    assert!(answer.contains("\"body_len\":50000"), "{answer}");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let origin = Origin::start("o").await;
    let gw = gateway("", &origin).await;
    let res = gw
        .client
        .get(gw.url("/"))
        .header("x-delay-ms", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(json(res).await["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let origin = Origin::start("o").await;
    let gw = gateway("max_connections = 2", &origin).await;
    // Two idle connections hold both slots.
    let _c1 = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _c2 = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    eventually("both counted", || async {
        gw.gantry_metrics.open_connections.get() == 2
    })
    .await;
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, third.read_to_end(&mut out))
        .await
        .expect("closed");
    // Closed without an answer: a clean EOF, or a reset if our request was unread.
    assert!(
        out.is_empty(),
        "third connection was served: {}",
        String::from_utf8_lossy(&out)
    );
    assert!(read.is_ok() || read.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        gw.metric("gantry_limit_rejections_total{limit=\"connections\"}")
            .await,
        Some(1.0)
    );
    drop((_c1, _c2));
    eventually("slots free again", || async {
        gw.gantry_metrics.open_connections.get() == 0
    })
    .await;
    assert_eq!(gw.get("/").await.status(), 200);
}
