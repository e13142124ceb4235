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
pub(crate) async fn raw(gw: &Gateway, head: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Read one whole response with a `content-length` from `conn`.
pub(crate) async fn one_response(conn: &mut tokio::net::TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("a length in {head}"));
            if seen.len() >= end + 4 + length {
                return String::from_utf8_lossy(&seen).into_owned();
            }
        }
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("the response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Send [`GOOD`] and read its answer, then send `head` on the same
/// connection and read the rest: `(first answer, second answer)`.
async fn raw_after_good(gw: &Gateway, head: &str) -> (String, String) {
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(GOOD.as_bytes()).await.unwrap();
    let first = one_response(&mut conn).await;
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out)).await;
    (first, String::from_utf8_lossy(&out).into_owned())
}

pub(crate) fn status(answer: &str) -> u16 {
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

/// One request of the conformance corpus (proxy/tests/conformance), with what
/// nginx 1.22 answered it (bench/conformance.py records that).
#[derive(serde::Deserialize)]
struct Case {
    name: String,
    request: String,
    nginx: Option<u16>,
}

/// A request every test here may send first on a connection: answered 200,
/// the connection kept.
pub(crate) const GOOD: &str = "GET /ok HTTP/1.1\r\nHost: gw.test\r\n\r\n";

/// Requests nginx accepts and Gantry refuses on purpose (docs/CONFORMANCE.md).
const STRICTER_THAN_NGINX: &[&str] = &["encoded slash"];

#[tokio::test]
async fn whatever_nginx_refuses_gantry_refuses_and_nothing_reaches_the_origin() {
    let corpus: Vec<Case> =
        serde_json::from_str(include_str!("../conformance/requests.json")).unwrap();
    assert!(corpus.len() >= 25, "the corpus is in place");
    let (origin, gw) = guarded_edge().await;
    let mut good_hits = 0;
    for case in &corpus {
        let nginx = case.nginx.expect("bench/conformance.py --write-nginx ran");
        if nginx < 400 && !STRICTER_THAN_NGINX.contains(&case.name.as_str()) {
            continue;
        }
        // As a connection's first request, and as the second one on a
        // kept-alive connection: the same answer, the JSON error, a close.
        for kept_alive in [false, true] {
            let answer = if kept_alive {
                let (first, second) = raw_after_good(&gw, &case.request).await;
                good_hits += 1;
                assert!(first.starts_with("HTTP/1.1 200"), "{}: {first}", case.name);
                second
            } else {
                raw(&gw, &case.request).await
            };
            let code = status(&answer);
            if nginx >= 400 {
                assert_eq!(
                    code, nginx,
                    "{}: nginx says {nginx}, Gantry {answer}",
                    case.name
                );
            } else {
                assert_eq!(code, 400, "{}: {answer}", case.name);
            }
            assert!(
                answer.to_ascii_lowercase().contains("connection: close"),
                "{}: the connection must close: {answer}",
                case.name
            );
            assert!(
                answer.contains("\"error\":{"),
                "{}: the JSON error: {answer}",
                case.name
            );
            assert!(!answer.contains("Pingora"), "{}: {answer}", case.name);
            assert_eq!(
                origin.state.hits.load(Ordering::SeqCst),
                good_hits,
                "{}: the origin saw it",
                case.name
            );
        }
    }
}

#[tokio::test]
async fn a_response_whose_length_a_plugin_removed_is_still_framed() {
    use crate::plugins::wat_module;
    let dir = tempfile::tempdir().unwrap();
    let wasm = wat_module(
        r#"(import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 16) "content-length")
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (drop (call $remove (i32.const 2) (i32.const 16) (i32.const 14)))
        (i32.const 0))"#,
    );
    let file = dir.path().join("unlength.wasm");
    std::fs::write(&file, wasm).unwrap();
    let origin = Origin::start("o").await;
    let routes = [crate::plugins::route("r", "/", &[("unlength", &file, "")])];
    let gw = Gateway::start(&crate::plugins::config(origin.addr, &routes)).await;
    // HTTP/1.1: chunked, and the connection serves a second request.
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut answers = Vec::new();
    for path in ["/one", "/two"] {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 8192];
        while !seen.ends_with(b"0\r\n\r\n") {
            let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(
                n > 0,
                "the connection closed: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        answers.push(String::from_utf8_lossy(&seen).to_ascii_lowercase());
    }
    for (answer, path) in answers.iter().zip(["/one", "/two"]) {
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains("transfer-encoding: chunked"), "{answer}");
        assert!(!answer.contains("content-length"), "{answer}");
        assert!(answer.contains(path), "{answer}");
    }
    // HTTP/1.0: the body ends with the connection, which says so.
    let answer = raw(
        &gw,
        "GET /old HTTP/1.0\r\nhost: gw.test\r\nconnection: keep-alive\r\n\r\n",
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.starts_with("http/1.1 200") || lower.starts_with("http/1.0 200"),
        "{answer}"
    );
    assert!(lower.contains("connection: close"), "{answer}");
    assert!(!lower.contains("transfer-encoding"), "{answer}");
    assert!(
        answer.trim_end().ends_with('}'),
        "the whole body arrived: {answer}"
    );
}

/// A gateway in front of an origin with `limits` lines added.
pub(crate) async fn limited(limits: &str, h2c: bool) -> (Origin, Gateway) {
    let origin = Origin::start("o").await;
    let config = format!(
        "[limits]\n{limits}\n[[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\nh2c = {h2c}\n\
         [[pools]]\nname = \"p\"\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        origin.addr
    );
    (origin, Gateway::start(&config).await)
}

#[tokio::test]
async fn a_short_malformed_request_on_an_h2c_listener_is_answered_at_once() {
    let (_origin, gw) = limited("", true).await;
    let started = std::time::Instant::now();
    let answer = raw(&gw, "GARBAGE\r\n\r\n").await;
    assert_eq!(status(&answer), 400, "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // HTTP/1.1 and HTTP/2 with prior knowledge both still work there.
    assert_eq!(gw.get("/").await.status(), 200);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = h2.get(gw.url("/")).send().await.unwrap();
    assert_eq!(
        (res.status().as_u16(), res.version()),
        (200, reqwest::Version::HTTP_2)
    );
}

#[tokio::test]
async fn a_malformed_request_gets_the_json_error_and_a_close() {
    let (origin, gw) = limited("", false).await;
    for request in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST  /a  HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let answer = raw(&gw, request).await;
        assert_eq!(status(&answer), 400, "{request:?}: {answer}");
        assert!(
            answer.contains("\"code\":\"bad_request\""),
            "{request:?}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(!answer.contains("Pingora"), "{answer}");
    }
    assert_eq!(
        origin.state.hits.load(Ordering::SeqCst),
        0,
        "nothing forwarded, escaped or not"
    );
}

#[tokio::test]
async fn a_request_pipelined_behind_another_is_not_served_from_the_same_read() {
    let (origin, gw) = limited("", false).await;
    // Two whole requests in one write: the first is answered, then the
    // connection closes; the second is never parsed (RFC 9112 §9.3.2 lets a
    // server close, and the client retries it on a new connection).
    let answer = raw(&gw, &format!("{GOOD}{GOOD}")).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 1, "{answer}");
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 1);
}
