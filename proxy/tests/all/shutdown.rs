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
