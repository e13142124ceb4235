//! Graceful shutdown: stop accepting, finish in-flight requests within the grace
//! period, then exit.

use crate::harness::*;
use std::time::{Duration, Instant};

async fn gateway(origin: &Origin, grace_ms: u64) -> Gateway {
    let limits = format!(
        "[limits]
shutdown_grace_period_ms = {grace_ms}"
    );
    Gateway::start(&one_pool(&[origin.addr], "", &limits)).await
}

#[tokio::test]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    let origin = Origin::start("o").await;
    let mut gw = gateway(&origin, 10_000).await;
    let slow = tokio::spawn({
        let (client, url) = (gw.client.clone(), gw.url("/"));
        async move { client.get(url).header("x-delay-ms", "700").send().await }
    });
    eventually("request in flight", || async {
        gw.lifecycle.inflight() == 1
    })
    .await;

    let started = Instant::now();
    let server = gw.shutdown();
    eventually("draining", || async { gw.lifecycle.is_draining() }).await;
    // A new connection is not served.
    let refused = client().get(gw.url("/")).send().await;
    assert!(
        refused.is_err(),
        "new request served during drain: {refused:?}"
    );

    let res = slow.await.unwrap().expect("in-flight request completes");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["connection"], "close");
    tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "exited once idle, not at the end of the grace period ({took:?})"
    );
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn grace_period_bounds_the_wait() {
    let origin = Origin::start("o").await;
    let mut gw = gateway(&origin, 300).await;
    let stuck = tokio::spawn({
        let (client, url) = (gw.client.clone(), gw.url("/"));
        async move { client.get(url).header("x-delay-ms", "10000").send().await }
    });
    eventually("request in flight", || async {
        gw.lifecycle.inflight() == 1
    })
    .await;
    let started = Instant::now();
    let server = gw.shutdown();
    tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after the grace period"
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the abandoned request is cut off, not answered"
    );
}

/// The real binary, a real SIGTERM: the in-flight request is answered, then the
/// process exits 0. Its access log is one JSON object per request.
#[tokio::test]
async fn sigterm_drains_the_gantry_process() {
    let origin = Origin::start("o").await;
    let origin_addr = origin.addr.to_string();
    let (addr, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let config = one_pool(
        &[origin.addr],
        "",
        &format!("[admin]\naddress = \"{admin}\""),
    )
    .replace("{gateway}", &addr.to_string());
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, config).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["--log-format", "json", "gateway", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn,gantry::access=info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(addr).await;

    // A client that gives up mid-request is not a server error.
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(format!("http://{addr}/"))
        .header("x-delay-ms", "300")
        .send()
        .await;
    assert!(gave_up.is_err());
    eventually("abandoned request reached the origin", || async {
        origin.hits() == 1
    })
    .await;

    let slow = tokio::spawn(async move {
        client()
            .get(format!("http://{addr}/"))
            .header("x-delay-ms", "500")
            .send()
            .await
    });
    eventually("request reached the origin", || async {
        origin.hits() == 2
    })
    .await;
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());

    let res = slow.await.unwrap().expect("in-flight request answered");
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("process exits")
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);

    let logs = String::from_utf8_lossy(&out.stderr);
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "gantry::access")
        .collect();
    assert!(
        !logs.contains("\"level\":\"ERROR\""),
        "no server error logged:\n{logs}"
    );
    assert_eq!(access.len(), 2, "{logs}");
    let fields = &access[1]["fields"];
    assert_eq!(fields["request_id"], request_id.as_str());
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["route"], "all");
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["upstream"], origin_addr.as_str());
}
