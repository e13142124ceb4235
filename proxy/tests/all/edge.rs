//! The edge holds against hostile HTTP: one view of the path and the host, so
//! the route that ran the plugins is the route the upstream serves.

use crate::harness::*;
use crate::plugins::example;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/api` and host `admin.example.com` behind api-key-auth, everything else to
/// an open catch-all route on the same origin.
async fn guarded_edge() -> (Origin, Gateway) {
    let origin = Origin::start("o").await;
    let auth = example("api_key_auth");
    let plugin = |name: &str| {
        format!(
            "[[routes.plugins]]\nname = \"{name}\"\nfile = \"{}\"\nconfiguration = {{ keys = [\"k-1\"] }}\n",
            auth.display()
        )
    };
    let config = format!(
        "[[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\n\
         [[pools]]\nname = \"p\"\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"api\"\npool = \"p\"\npath_prefix = \"/api\"\n{}\
         [[routes]]\nname = \"admin\"\npool = \"p\"\nhosts = [\"admin.example.com\"]\n{}\
         [[routes]]\nname = \"open\"\npool = \"p\"\npath_prefix = \"/\"\n",
        origin.addr,
        plugin("auth-api"),
        plugin("auth-admin"),
    );
    (origin, Gateway::start(&config).await)
}

/// Send `head` raw (no client normalizes it), read the whole answer.
async fn raw(gw: &Gateway, head: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[tokio::test]
async fn every_spelling_of_a_guarded_path_or_host_meets_its_plugin() {
    let (origin, gw) = guarded_edge().await;
    let attempts = [
        ("/api/x", "gw.test"),
        ("/static/../api/x", "gw.test"),
        ("/%61pi/x", "gw.test"),
        ("/%61%70%69/x", "gw.test"),
        ("//api/x", "gw.test"),
        ("/./api/x", "gw.test"),
        ("/api/./x", "gw.test"),
        ("/x/..//api/x", "gw.test"),
        ("/API/../api/x", "gw.test"),
        ("/", "admin.example.com"),
        ("/", "admin.example.com."),
        ("/", "ADMIN.Example.com"),
        ("/", "admin.example.com.:80"),
        ("/%2e%2e/api/x", "gw.test"),
        ("/api%2Fx", "gw.test"),
        ("/api%5cx", "gw.test"),
        ("/ok%00", "gw.test"),
        ("/a\\..\\api", "gw.test"),
        ("/", "admin..example.com"),
    ];
    for (path, host) in attempts {
        let answer = raw(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"),
        )
        .await;
        let code = status(&answer);
        assert!(code == 401 || code == 400, "{path} on {host}: {answer}");
        if code == 400 {
            assert!(answer.contains("\"error\""), "JSON error: {answer}");
            assert!(
                answer.to_ascii_lowercase().contains("connection: close"),
                "{answer}"
            );
        }
    }
    assert_eq!(
        origin.state.hits.load(Ordering::SeqCst),
        0,
        "no form reached the origin"
    );
    // With the key, the normalized path is what the origin serves.
    let answer = raw(
        &gw,
        "GET /static/../%61pi//x/./y?q=%2F HTTP/1.1\r\nhost: gw.test\r\nx-api-key: k-1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| {
        // A chunked answer: take the JSON object between the chunk sizes.
        let start = body.find('{').unwrap();
        let end = body.rfind('}').unwrap();
        serde_json::from_str(&body[start..=end]).unwrap()
    });
    assert_eq!(echo["path"], "/api/x/y?q=%2F", "{echo}");
}

#[tokio::test]
async fn an_http11_request_without_host_is_refused() {
    let (origin, gw) = guarded_edge().await;
    let answer = raw(&gw, "GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), 400, "{answer}");
    assert!(answer.contains("missing_host"), "{answer}");
    // HTTP/1.0 needs none, and its connection closes after the answer.
    let started = std::time::Instant::now();
    let answer = raw(&gw, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "an HTTP/1.0 connection was held open for {:?}",
        started.elapsed()
    );
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 1);
}

/// A request from loopback with every forwarding header forged.
async fn forged(gw: &Gateway) -> serde_json::Value {
    let res = gw
        .client
        .get(gw.url("/x"))
        .header("x-forwarded-for", "1.2.3.4")
        .header("forwarded", "for=1.2.3.4;host=evil.example")
        .header("x-real-ip", "1.2.3.4")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-port", "1")
        .header("true-client-ip", "1.2.3.4")
        .header("x-client-ip", "1.2.3.4")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    json(res).await["headers"].clone()
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let origin = Origin::start("o").await;
    let routes = format!(
        "[[pools]]\nname = \"p\"\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        origin.addr
    );
    let listener = "[[listeners]]\nname = \"http\"\naddress = \"{gateway}\"\n";
    let untrusted = Gateway::start(&format!("{listener}{routes}")).await;
    let headers = forged(&untrusted).await;
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    assert_eq!(headers["x-forwarded-proto"], "http");
    for name in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
        "x-forwarded-port",
        "true-client-ip",
        "x-client-ip",
    ] {
        assert!(headers.get(name).is_none(), "{name} passed: {headers}");
    }
    let trusted = Gateway::start(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{listener}{routes}"
    ))
    .await;
    let headers = forged(&trusted).await;
    assert_eq!(
        headers["x-forwarded-for"], "1.2.3.4, 127.0.0.1",
        "{headers}"
    );
    assert_eq!(headers["x-real-ip"], "1.2.3.4");
    assert_eq!(headers["x-forwarded-host"], "evil.example");
    // Proto is always the gateway's own view.
    assert_eq!(headers["x-forwarded-proto"], "http");
}

/// Requests whose body length could be read two ways, each with the status
/// nginx 1.22 answers (docs/CONFORMANCE.md).
pub(crate) const AMBIGUOUS_FRAMING: &[(&str, &str, u16)] = &[
    (
        "CL.TE",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    ),
    (
        "TE.CL",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        400,
    ),
    ("TE list", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("TE chunked, identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501),
    (
        "TE twice",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("TE space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("HTTP/1.0 with TE", "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ("CL twice", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("CL sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
    ("bare CR", "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    ("NUL in target", "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("no Host", "GET / HTTP/1.1\r\n\r\n", 400),
];

#[tokio::test]
async fn ambiguous_framing_is_refused_and_nothing_reaches_the_origin() {
    let (origin, gw) = guarded_edge().await;
    for (name, request, nginx) in AMBIGUOUS_FRAMING {
        let answer = raw(&gw, request).await;
        // Refused as nginx refuses it (400 or 501: Pingora's own parser
        // answers some of these before any phase runs).
        let code = status(&answer);
        assert!(
            code == 400 || code == 501,
            "{name}: nginx says {nginx}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{name}: the connection must close: {answer}"
        );
        // Nothing after the first answer: the smuggled request was never read.
        assert!(!answer.contains("HTTP/1.1 200"), "{name}: {answer}");
    }
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 0);
}
