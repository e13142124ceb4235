//! The OpenAI-compatible API when its backends are full, slow, dead or left by
//! the client: the status each case answers, the load spread, and generation
//! cancelled when nobody waits for it (fixture backends, see `openai.rs`).

use crate::harness::*;
use crate::openai::*;
use futures_util::StreamExt;
use gantry_fixture_backend::{Behaviour, Fixture};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn every_backend_saturated_is_a_429_with_retry_after() {
    let backend = Fixture::start(Behaviour {
        max_running: 1,
        max_queued: 0,
        tokens: 2,
        first_token_delay: Duration::from_secs(3),
        ..Behaviour::default()
    });
    let gw = ai_gateway(&[backend.addr], "").await;
    let busy = {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&chat(false))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    eventually("the only slot is taken", || async {
        backend.stats.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let res = post(&gw, "/v1/chat/completions", &chat(false)).await;
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let e = error_of(res, 429).await;
    assert_eq!(e["type"], "rate_limit_error");
    assert!(retry_after.is_some_and(|s| s.parse::<u32>().unwrap() >= 1));
    assert_eq!(busy.await.unwrap(), 200, "the accepted request is not lost");
}

#[tokio::test]
async fn no_healthy_backend_is_a_503() {
    let closed = free_addr();
    let gw = Gateway::start(&ai_config(&[closed], "")).await;
    let e = error_of(post(&gw, "/v1/chat/completions", &chat(false)).await, 503).await;
    assert_eq!(e["code"], "service_unavailable");
    assert!(e["message"].as_str().unwrap().contains("`ai`"), "{e}");
    // The gateway itself is ready; /status shows the pool without a backend.
    assert_eq!(gw.admin_get("/readyz").await.status(), 200);
    let status = json(gw.admin_get("/status").await).await;
    assert_eq!(status["pools"][0]["kind"], "inference", "{status}");
    assert_eq!(status["pools"][0]["healthy"], 0, "{status}");
}

#[tokio::test]
async fn the_request_timeout_is_a_504_and_cancels_the_backend_stream() {
    let backend = Fixture::start(Behaviour {
        first_token_delay: Duration::from_secs(5),
        ..Behaviour::default()
    });
    let gw = ai_gateway(&[backend.addr], "request_timeout_ms = 300").await;
    let started = Instant::now();
    let e = error_of(post(&gw, "/v1/chat/completions", &chat(false)).await, 504).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(e["message"].as_str().unwrap().contains("300 ms"), "{e}");
    eventually("backend stops generating", || async {
        backend.stats.running.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn load_spreads_by_load_not_by_turn() {
    let fast = Behaviour {
        tokens: 4,
        inter_token_delay: Duration::from_millis(2),
        ..Behaviour::default()
    };
    let slow = Behaviour {
        inter_token_delay: Duration::from_millis(60),
        ..fast.clone()
    };
    let backends = [
        Fixture::start(slow),
        Fixture::start(fast.clone()),
        Fixture::start(fast),
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let gw = ai_gateway(&addrs, "").await;
    let total = 90;
    let mut tasks = Vec::new();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(9));
    for _ in 0..total {
        let (client, url, gate) = (
            gw.client.clone(),
            gw.url("/v1/chat/completions"),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await.unwrap();
            client
                .post(url)
                .json(&chat(false))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let served: Vec<u64> = backends
        .iter()
        .map(|b| b.stats.accepted.load(Ordering::SeqCst))
        .collect();
    assert_eq!(served.iter().sum::<u64>(), total);
    // Round robin would give each 30; the slow one (~50x slower per token) gets
    // far fewer than either fast one.
    assert!(
        served[0] * 2 < served[1].min(served[2]),
        "served {served:?}"
    );
}

#[tokio::test]
async fn a_killed_backend_loses_no_unanswered_request_and_is_ejected_within_a_second() {
    let behaviour = Behaviour {
        tokens: 10,
        inter_token_delay: Duration::from_millis(20),
        ..Behaviour::default()
    };
    let mut backends = [
        Fixture::start(behaviour.clone()),
        Fixture::start(behaviour.clone()),
        Fixture::start(behaviour),
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let gw = ai_gateway(&addrs, "").await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let res = client.post(url).json(&chat(false)).send().await.unwrap();
            (res.status(), res.text().await.unwrap())
        }));
    }
    eventually("the victim is generating", || async {
        backends[0].stats.running.load(Ordering::SeqCst) > 0
    })
    .await;
    backends[0].kill();
    let killed = Instant::now();
    let sample = format!(
        "gantry_inference_backend_healthy{{backend=\"{}\",pool=\"ai\"}}",
        addrs[0]
    );
    eventually("killed backend ejected", || {
        let (gw, sample) = (&gw, sample.clone());
        async move { gw.metric(&sample).await == Some(0.0) }
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "ejected after {:?}",
        killed.elapsed()
    );
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let retried = gw
        .metric("gantry_inference_retries_total{pool=\"ai\"}")
        .await;
    assert!(
        retried.unwrap_or(0.0) >= 1.0,
        "requests at the killed backend were retried"
    );
}

#[tokio::test]
async fn a_streaming_client_that_disconnects_frees_the_backend_slot() {
    let backend = Fixture::start(Behaviour {
        tokens: 100,
        inter_token_delay: Duration::from_millis(50),
        ..Behaviour::default()
    });
    let gw = ai_gateway(&[backend.addr], "").await;
    let res = post(&gw, "/v1/chat/completions", &chat(true)).await;
    let mut stream = res.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(backend.stats.running.load(Ordering::SeqCst), 1);
    drop(stream);
    eventually("backend slot freed", || async {
        backend.stats.running.load(Ordering::SeqCst) == 0
            && backend.stats.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn a_waiting_client_that_disconnects_cancels_before_any_token() {
    let backend = Fixture::start(Behaviour {
        first_token_delay: Duration::from_secs(30),
        ..Behaviour::default()
    });
    let gw = ai_gateway(&[backend.addr], "").await;
    let body = chat(false).to_string();
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    eventually("request reaches the backend", || async {
        backend.stats.running.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(conn);
    eventually("backend slot freed", || async {
        backend.stats.running.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn a_stream_broken_after_the_first_token_ends_with_an_error_event() {
    let mut backend = Fixture::start(Behaviour {
        tokens: 100,
        inter_token_delay: Duration::from_millis(50),
        ..Behaviour::default()
    });
    let gw = ai_gateway(&[backend.addr], "").await;
    let res = post(&gw, "/v1/chat/completions", &chat(true)).await;
    let mut stream = res.bytes_stream();
    stream.next().await.unwrap().unwrap();
    backend.kill();
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let last: Value = serde_json::from_str(events(&rest).last().expect("an event")).unwrap();
    assert!(last["error"]["message"].is_string(), "{rest}");
}
