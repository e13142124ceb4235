//! Slow, idle and flooding clients: every head has a deadline, a client
//! address a connection cap, an HTTP/2 connection its control frames counted
//! and its zero-window streams ended, a stalled body a 408; a well-behaved
//! client is served throughout.

use crate::edge::{limited, one_response, raw, status, GOOD};
use crate::harness::*;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_kept_alive_connection_has_the_head_deadline_on_every_request() {
    let (origin, gw) = limited("head_timeout_ms = 600\nkeepalive_timeout_ms = 5000", false).await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(GOOD.as_bytes()).await.unwrap();
    let first = one_response(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Idle for longer than the head deadline: allowed (keep-alive), then the
    // second head trickles one byte every 100 ms and never ends in time.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let started = std::time::Instant::now();
    for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
    {
        if conn.write_all(&[*b]).await.is_err()
            || started.elapsed() > std::time::Duration::from_secs(3)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        gw.metric("gantry_limit_rejections_total{limit=\"head_timeout\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_quietly_after_the_keepalive_timeout() {
    let (_origin, gw) = limited("keepalive_timeout_ms = 1000", false).await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(GOOD.as_bytes()).await.unwrap();
    assert!(one_response(&mut conn).await.starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        rest.is_empty(),
        "no answer to an idle connection: {}",
        String::from_utf8_lossy(&rest)
    );
    let idle = started.elapsed();
    assert!(
        idle > std::time::Duration::from_millis(800) && idle < std::time::Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[tokio::test]
async fn a_head_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes() {
    let (origin, gw) = limited("head_timeout_ms = 600", false).await;
    let started = std::time::Instant::now();
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // One byte every 100 ms: never a whole head in time.
    let mut answer = Vec::new();
    for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa".iter() {
        if conn.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if started.elapsed() > std::time::Duration::from_secs(2) {
            break;
        }
    }
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 0);
    assert_eq!(
        gw.metric("gantry_limit_rejections_total{limit=\"head_timeout\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn one_client_address_cannot_hold_more_than_its_connections() {
    let (_origin, gw) = limited("max_connections_per_client = 3", false).await;
    // The harness's start-up probe of the port is a connection from this
    // address too: it must be gone before counting ours.
    eventually("the start-up probe is closed", || async {
        gw.metric("gantry_open_connections").await == Some(0.0)
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    eventually("three connections open", || async {
        gw.metric("gantry_open_connections").await == Some(3.0)
    })
    .await;
    // The fourth is closed at once, without an answer.
    let mut fourth = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, fourth.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(
        gw.metric("gantry_limit_rejections_total{limit=\"client_connections\"}")
            .await,
        Some(1.0)
    );
    // One closes: a new one is served.
    drop(held.pop());
    eventually("a slot is free", || async {
        gw.metric("gantry_open_connections").await == Some(2.0)
    })
    .await;
    let answer = raw(
        &gw,
        "GET / HTTP/1.1\r\nHost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
}

#[tokio::test]
async fn slow_clients_do_not_stop_a_well_behaved_one() {
    let (_origin, gw) = limited("head_timeout_ms = 1000", false).await;
    // 100 connections trickling a head one byte at a time.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let addr = gw.addr;
        slow.push(tokio::spawn(async move {
            let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            for b in b"GET / HTTP/1.1\r\nHost: a\r\nX: ".iter().cycle().take(40) {
                if conn.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }));
    }
    let mut ok = 0;
    for _ in 0..50 {
        if gw.get("/").await.status() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 50, "every well-behaved request succeeded");
    for s in slow {
        let _ = s.await;
    }
    assert!(
        gw.metric("gantry_limit_rejections_total{limit=\"head_timeout\"}")
            .await
            >= Some(50.0),
        "the slow heads were cut off"
    );
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_end_within_a_second_while_other_clients_are_served() {
    // The gateway runs as its own process, so its memory is its own (other
    // tests share this one). A stream the client never lets the answer
    // through ends after client_write_timeout_ms.
    let origin = Origin::start("o").await;
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[limits]\nclient_write_timeout_ms = 500\n\
         [[listeners]]\nname = \"http\"\naddress = \"{addr}\"\nh2c = true\n\
         [[pools]]\nname = \"p\"\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        origin.addr
    );
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, config).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["gateway", "--config"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_for_port(addr).await;
    let get = || async {
        client()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/h2_floods.py");
    // Warm up, then measure memory around the floods. The first 100
    // concurrent stalled streams (zero_window) take ~10 MiB of connection
    // buffers, as any 100 concurrent requests would; the check is that floods
    // do not accumulate memory past that.
    for _ in 0..20 {
        get().await;
    }
    let warm = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(addr.to_string())
        .args(["zero_window", "1"])
        .output()
        .await
        .expect("python3 runs (scripts/setup.sh installs h2)");
    assert!(warm.status.success());
    let before = rss(pid);
    for attack in [
        "rapid_reset",
        "continuation",
        "settings",
        "ping",
        "over_limit",
        "zero_window",
    ] {
        let flood = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(addr.to_string())
            .arg(attack)
            .arg("3")
            .output();
        let probe = async {
            let mut took = Vec::new();
            for _ in 0..40 {
                let started = std::time::Instant::now();
                assert_eq!(get().await.status(), 200);
                took.push(started.elapsed());
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            took.sort();
            took[took.len() * 99 / 100]
        };
        let (out, p99) = tokio::join!(flood, probe);
        let out = out.expect("python3 runs (scripts/setup.sh installs h2)");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{attack}: {}", String::from_utf8_lossy(&out.stderr)));
        eprintln!("{attack}: {report}, parallel client p99 {p99:?}");
        assert_ne!(
            report["ended"], "open",
            "{attack}: the connection survived: {report}"
        );
        assert!(
            report["seconds"].as_f64().unwrap() < 1.5,
            "{attack}: {report}"
        );
        assert!(
            p99 < std::time::Duration::from_millis(250),
            "{attack}: p99 {p99:?}"
        );
    }
    let grown = rss(pid).saturating_sub(before);
    eprintln!("resident memory grew by {} KiB", grown / 1024);
    assert!(grown < 10 << 20, "resident memory grew by {grown} bytes");
}

/// A body that sends `first`, then nothing, forever.
fn stalled_body(first: &'static str) -> reqwest::Body {
    use futures_util::StreamExt;
    let once = futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(first.as_bytes()))
    });
    reqwest::Body::wrap_stream(once.chain(futures_util::stream::pending()))
}

#[tokio::test]
async fn a_stalled_http2_body_is_a_408_on_proxied_and_api_routes() {
    let backend = gantry_fixture_backend::Fixture::start(Default::default());
    let origin = Origin::start("o").await;
    let config = format!(
        "[limits]\nclient_read_timeout_ms = 500\n\
         [[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\nh2c = true\n\
         [[pools]]\nname = \"p\"\nendpoints = [\"{}\"]\n\
         [[inference_pools]]\nname = \"ai\"\nendpoints = [\"{}\"]\nmodels = [\"fixture\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/v1\"\ninference_pools = [\"ai\"]\n\
         [[routes]]\nname = \"small\"\npool = \"p\"\npath_prefix = \"/small\"\nmax_body_bytes = 1000\n\
         [[pools]]\nname = \"streamed\"\nendpoints = [\"{}\"]\nread_timeout_ms = 700\n\
         [[routes]]\nname = \"big\"\npool = \"streamed\"\npath_prefix = \"/big\"\n\
         ",
        origin.addr, backend.addr, origin.addr
    );
    let gw = Gateway::start(&config).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    // Bodies Gantry reads itself (the API's, plugin routes', and uploads read
    // ahead); a large upload streamed to the upstream is Pingora's to read, and
    // its HTTP/2 body reads have no timeout yet.
    for path in ["/v1/chat/completions", "/small/upload"] {
        let started = std::time::Instant::now();
        let res = h2
            .post(gw.url(path))
            .header("content-type", "application/json")
            .body(stalled_body("{\"model\""))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 408, "{path}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{path}: answered after {:?}",
            started.elapsed()
        );
        let body = json(res).await;
        assert_eq!(body["error"]["code"], "request_timeout", "{path}: {body}");
    }
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 0);
    // A large upload streamed to the upstream: Pingora reads its later HTTP/2
    // chunks with no timeout of its own, so the stall is bounded by the pool's
    // read_timeout_ms (the upstream waits for the rest of the body).
    let started = std::time::Instant::now();
    let res = h2
        .post(gw.url("/big/upload"))
        .body(stalled_body("first chunk"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn oversized_heads_are_431s_counted_by_the_limit_they_broke() {
    let (origin, gw) = limited("max_header_bytes = 2048", false).await;
    // A head that grows past max_header_bytes without ending.
    let long = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Long: {}", "a".repeat(4096));
    let answer = raw(&gw, &long).await;
    assert_eq!(status(&answer), 431, "{answer}");
    assert!(answer.contains("max_header_bytes"), "{answer}");
    // More header fields than can be parsed, within the byte limit.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..300 {
        many.push_str(&format!("x{i}:\r\n"));
    }
    many.push_str("\r\n");
    assert!(many.len() < 2048);
    let answer = raw(&gw, &many).await;
    assert_eq!(status(&answer), 431, "{answer}");
    assert!(answer.contains("header fields"), "{answer}");
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 0);
    for (limit, n) in [("header_bytes", 1.0), ("header_fields", 1.0)] {
        let sample = format!("gantry_limit_rejections_total{{limit=\"{limit}\"}}");
        assert_eq!(gw.metric(&sample).await, Some(n), "{limit}");
    }
}
