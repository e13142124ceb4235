//! Idempotent requests whose connect fails are retried on another endpoint;
//! others are not.

use crate::harness::*;

async fn live_and_dead(retries: u32) -> (Origin, Gateway) {
    let live = Origin::start("live").await;
    let dead = free_addr(); // nothing listens here: connection refused
    let pool = format!(
        "retries = {retries}
connect_timeout_ms = 500"
    );
    let gw = Gateway::start(&one_pool(&[dead, live.addr], &pool, "")).await;
    (live, gw)
}

#[tokio::test]
async fn idempotent_requests_retry_on_another_endpoint() {
    let (live, gw) = live_and_dead(1).await;
    for _ in 0..10 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    assert_eq!(live.hits(), 10);
    let retried = gw
        .metric("gantry_upstream_retries_total{pool=\"p\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        retried >= 1.0,
        "some first attempts hit the dead endpoint and were retried"
    );
}

#[tokio::test]
async fn non_idempotent_requests_are_not_retried() {
    let (live, gw) = live_and_dead(1).await;
    let mut failed = 0;
    for _ in 0..10 {
        let res = gw.client.post(gw.url("/")).body("x").send().await.unwrap();
        if res.status() == 502 {
            assert_eq!(json(res).await["error"]["code"], "upstream_unreachable");
            failed += 1;
        }
    }
    assert_eq!((failed, live.hits()), (5, 5));
}

#[tokio::test]
async fn retries_zero_means_no_retry() {
    let (_live, gw) = live_and_dead(0).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(gw.get("/").await.status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 502, 502]);
}
