//! Configuration reload: `POST /admin/reload` (as SIGHUP) reads the file
//! again, refuses a bad one with `gantry config check`'s messages, refuses one
//! that changes what only a restart can, and otherwise swaps the whole
//! configuration in while requests in flight finish on the one they started
//! with.

use crate::harness::*;
use std::net::SocketAddr;

/// One listener, pools `a` and `b`, and a route `all` on `pool` with
/// `limits` as the `[limits]` table's body.
fn two_pools(a: SocketAddr, b: SocketAddr, pool: &str, limits: &str) -> String {
    format!(
        "[limits]\n{limits}\n\
         [[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\n\
         [[pools]]\nname = \"a\"\nendpoints = [\"{a}\"]\n\
         [[pools]]\nname = \"b\"\nendpoints = [\"{b}\"]\n\
         [[routes]]\nname = \"all\"\npool = \"{pool}\"\n\
         [routes.response_headers]\nset = {{ \"x-served-by\" = \"route to {pool}\" }}\n"
    )
}

async fn origin_of(gw: &Gateway) -> String {
    let res = gw.get("/").await;
    assert_eq!(res.status(), 200);
    json(res).await["origin"].as_str().unwrap().to_string()
}

async fn reload(gw: &Gateway) -> (u16, serde_json::Value) {
    let res = gw.admin_reload(Some(ADMIN_TOKEN)).await;
    let status = res.status().as_u16();
    (status, json(res).await)
}

#[tokio::test]
async fn a_reload_swaps_the_route_and_a_request_in_flight_finishes_where_it_started() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(&two_pools(a.addr, b.addr, "a", "")).await;
    assert_eq!(origin_of(&gw).await, "a");
    assert_eq!(gw.metric("gantry_config_version").await, Some(1.0));

    // A slow request to `a`, started before the reload.
    let slow = {
        let req = gw.client.get(gw.url("/slow")).header("x-delay-ms", "1500");
        tokio::spawn(req.send())
    };
    eventually("the slow request reached a", || async { a.hits() >= 2 }).await;

    gw.write_config(&two_pools(a.addr, b.addr, "b", ""));
    let (status, outcome) = reload(&gw).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["result"], "ok");
    assert_eq!(outcome["version"], 2);
    let text = std::fs::read_to_string(&gw.config_file).unwrap();
    assert_eq!(outcome["sha256"], gantry::tenants::digest_hex(&text));
    assert_eq!(
        origin_of(&gw).await,
        "b",
        "new requests go by the new route"
    );

    let slow = slow
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(slow.status(), 200);
    // Its response phase ran after the reload, on the configuration it
    // started with.
    assert_eq!(slow.headers()["x-served-by"], "route to a");
    assert_eq!(
        json(slow).await["origin"],
        "a",
        "it finished where it started"
    );
    assert_eq!(gw.get("/").await.headers()["x-served-by"], "route to b");

    assert_eq!(gw.metric("gantry_config_version").await, Some(2.0));
    let ok = "gantry_config_reloads_total{result=\"ok\"}";
    assert_eq!(gw.metric(ok).await, Some(1.0));
    let status = json(gw.admin_get("/status").await).await;
    assert_eq!(status["config"]["version"], 2, "{status}");
    assert_eq!(status["config"]["last_reload"]["result"], "ok", "{status}");
}

#[tokio::test]
async fn a_bad_file_is_refused_with_config_checks_messages_and_the_old_one_keeps_serving() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(&two_pools(a.addr, b.addr, "a", "")).await;

    gw.write_config(&two_pools(
        a.addr,
        b.addr,
        "nope",
        "client_read_timeout_ms = 0",
    ));
    let (status, outcome) = reload(&gw).await;
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(outcome["result"], "invalid");
    assert_eq!(outcome["version"], 1, "the old configuration serves");
    let problems = outcome["problems"].to_string();
    // What `gantry config check` says of the same file.
    let checked = gantry_config::load(&gw.config_file)
        .unwrap_err()
        .to_string();
    for line in checked.lines() {
        assert!(
            problems.contains(&line.replace('"', "\\\"")),
            "{line} in {problems}"
        );
    }
    assert!(problems.contains("routes[0].pool"), "{problems}");
    assert!(
        problems.contains("limits.client_read_timeout_ms"),
        "{problems}"
    );

    gw.write_config("this is [not toml");
    let (status, outcome) = reload(&gw).await;
    assert_eq!((status, outcome["result"].as_str()), (400, Some("invalid")));

    assert_eq!(origin_of(&gw).await, "a");
    assert_eq!(gw.metric("gantry_config_version").await, Some(1.0));
    let invalid = "gantry_config_reloads_total{result=\"invalid\"}";
    assert_eq!(gw.metric(invalid).await, Some(2.0));
}

#[tokio::test]
async fn a_file_that_changes_what_only_a_restart_can_is_refused_whole() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(&two_pools(a.addr, b.addr, "a", "")).await;

    // The route changes too; nothing of the file applies.
    let next = two_pools(
        a.addr,
        b.addr,
        "b",
        "max_connections = 77\nhead_timeout_ms = 999",
    );
    gw.write_config(&next);
    let (status, outcome) = reload(&gw).await;
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(outcome["result"], "needs_restart");
    let problems = outcome["problems"].to_string();
    assert!(
        problems.contains("limits.max_connections: changed"),
        "{problems}"
    );
    assert!(
        problems.contains("limits.head_timeout_ms: changed"),
        "{problems}"
    );
    assert!(problems.contains("--upgrade"), "{problems}");
    assert_eq!(origin_of(&gw).await, "a");

    // The same file with per-request limits only: applied.
    gw.write_config(&two_pools(a.addr, b.addr, "b", "max_body_bytes = 10"));
    let (status, outcome) = reload(&gw).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(origin_of(&gw).await, "b");
    let res = gw
        .client
        .post(gw.url("/"))
        .body("more than ten bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413, "the new body limit applies");
    let needs = "gantry_config_reloads_total{result=\"needs_restart\"}";
    assert_eq!(gw.metric(needs).await, Some(1.0));
}

/// Under steady traffic, reloads back and forth between two routes lose
/// nothing: every request is answered 200, by one origin or the other.
#[tokio::test]
async fn reloads_under_load_lose_no_request() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = std::sync::Arc::new(Gateway::start(&two_pools(a.addr, b.addr, "a", "")).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut answered, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match gw.client.get(gw.url("/")).send().await {
                        Ok(res) if res.status() == 200 => answered += 1,
                        Ok(res) => failed.push(res.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (answered, failed)
            })
        })
        .collect();
    for i in 0..20 {
        let pool = if i % 2 == 0 { "b" } else { "a" };
        gw.write_config(&two_pools(a.addr, b.addr, pool, ""));
        let (status, outcome) = reload(&gw).await;
        assert_eq!(status, 200, "{outcome}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for c in clients {
        let (n, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        answered += n;
    }
    assert!(answered > 100, "{answered} requests");
    assert!(a.hits() > 10 && b.hits() > 10, "{} {}", a.hits(), b.hits());
    assert_eq!(gw.metric("gantry_config_version").await, Some(21.0));
}

/// What a reload keeps: a pool configured as before keeps its endpoints'
/// health (an ejected endpoint gets no request, not even right after the
/// swap, while a new pool would take its first probe's timeout to learn it),
/// and each key what it used of its limits.
#[tokio::test]
async fn a_reload_keeps_an_unchanged_pools_health_and_what_keys_used() {
    const KEY: &str = "gk-reload-0123456789abcdefghijklmnopqrstuvwxyz";
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let config = |version: u32| {
        format!(
            "[[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\n\
             [[pools]]\nname = \"p\"\nendpoints = [\"{}\", \"{}\"]\n\
             [pools.health_check]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 300\ntimeout_ms = 1000\n\
             healthy_threshold = 1\nunhealthy_threshold = 1\n\
             [[routes]]\nname = \"all\"\npool = \"p\"\nauth = \"keys\"\n\
             [routes.response_headers]\nset = {{ \"x-version\" = \"{version}\" }}\n\
             [[keys]]\nname = \"team\"\nsha256 = \"{}\"\nrequests_per_minute = 4\n",
            a.addr,
            b.addr,
            gantry::tenants::digest_hex(KEY)
        )
    };
    let gw = Gateway::start(&config(1)).await;
    // b's probes time out: a pool built anew would think it healthy for a second.
    b.state
        .healthz_delay_ms
        .store(5000, std::sync::atomic::Ordering::SeqCst);
    let ejected = format!(
        "gantry_upstream_endpoint_healthy{{endpoint=\"{}\",pool=\"p\"}}",
        b.addr
    );
    eventually("b ejected", || async {
        gw.metric(&ejected).await == Some(0.0)
    })
    .await;
    let ask = || gw.client.get(gw.url("/")).bearer_auth(KEY).send();
    for _ in 0..2 {
        assert_eq!(ask().await.unwrap().headers()["x-origin"], "a");
    }

    gw.write_config(&config(2));
    let (status, outcome) = reload(&gw).await;
    assert_eq!(status, 200, "{outcome}");
    let b_hits = b.hits();
    for _ in 0..2 {
        let res = ask().await.unwrap();
        assert_eq!(res.headers()["x-version"], "2");
        assert_eq!(
            res.headers()["x-origin"],
            "a",
            "the ejected endpoint stays out"
        );
    }
    assert_eq!(b.hits(), b_hits);
    let res = ask().await.unwrap();
    assert_eq!(res.status(), 429, "4 requests a minute, reload or not");
}
