//! Active health checks eject failing endpoints and re-admit recovered ones.

use crate::harness::*;

async fn checked_pool() -> (Origin, Origin, Gateway) {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let check = "[pools.health_check]
kind = \"http\"
path = \"/healthz\"
interval_ms = 50
\
                 timeout_ms = 500
healthy_threshold = 2
unhealthy_threshold = 2";
    let gw = Gateway::start(&one_pool(&[a.addr, b.addr], check, "")).await;
    (a, b, gw)
}

fn healthy_sample(o: &Origin) -> String {
    format!(
        "gantry_upstream_endpoint_healthy{{endpoint=\"{}\",pool=\"p\"}}",
        o.addr
    )
}

#[tokio::test]
async fn failing_endpoint_is_ejected_and_readmitted() {
    let (a, b, gw) = checked_pool().await;
    b.set_healthy(false);
    eventually("b ejected", || async {
        gw.metric(&healthy_sample(&b)).await == Some(0.0)
    })
    .await;
    let before = b.hits();
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.headers()["x-origin"], "a");
    }
    assert_eq!(b.hits(), before, "no traffic to the ejected endpoint");
    assert_eq!(gw.metric(&healthy_sample(&a)).await, Some(1.0));

    b.set_healthy(true);
    eventually("b re-admitted", || async {
        gw.metric(&healthy_sample(&b)).await == Some(1.0)
    })
    .await;
    for _ in 0..10 {
        gw.get("/").await;
    }
    assert_eq!(b.hits(), before + 5, "round robin includes b again");
}

#[tokio::test]
async fn all_endpoints_down_is_503_json_and_not_ready() {
    let (a, b, gw) = checked_pool().await;
    a.set_healthy(false);
    b.set_healthy(false);
    eventually("both ejected", || async {
        gw.metric(&healthy_sample(&a)).await == Some(0.0)
            && gw.metric(&healthy_sample(&b)).await == Some(0.0)
    })
    .await;
    let res = gw.get("/").await;
    assert_eq!(res.status(), 503);
    let body = json(res).await;
    assert_eq!(body["error"]["code"], "no_healthy_upstream");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(
        body["error"]["param"].is_null(),
        "one error vocabulary: {body}"
    );
    // One dead pool does not take the gateway out of rotation: its routes
    // answer 503; /status says which pool.
    assert_eq!(gw.admin_get("/readyz").await.status(), 200);
    let status = json(gw.admin_get("/status").await).await;
    assert_eq!(status["pools"][0]["name"], "p", "{status}");
    assert_eq!(status["pools"][0]["healthy"], 0, "{status}");
    assert_eq!(status["pools"][0]["endpoints"], 2, "{status}");
}
