//! Pools' endpoint names, resolved again every `resolve_interval_ms`: a name
//! whose answer changes moves the pool's traffic to the new addresses, and
//! requests already sent to an address that left finish there. The answers come
//! from `server.hosts_file` (the `/etc/hosts` format), read at each resolution.

use crate::harness::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

async fn origins_seen(gw: &Gateway, requests: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..requests {
        let res = gw.get("/").await;
        assert_eq!(res.status(), 200);
        seen.insert(json(res).await["origin"].as_str().unwrap().to_string());
    }
    seen
}

#[tokio::test]
async fn a_pool_follows_its_names_answer_and_finishes_requests_sent_before_it_changed() {
    // Three origins on one port, at three loopback addresses.
    let a = Origin::start_at("a", "127.0.0.2:0".parse().unwrap()).await;
    let port = a.addr.port();
    let at = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let b = Origin::start_at("b", at("127.0.0.3")).await;
    let c = Origin::start_at("c", at("127.0.0.4")).await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.2 app.test\n127.0.0.3 app.test # two addresses\n",
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "[server]\nhosts_file = \"{}\"\n\
         [[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\n\
         [[pools]]\nname = \"app\"\nendpoints = [\"app.test:{port}\"]\nresolve_interval_ms = 100\n\
         [[routes]]\nname = \"all\"\npool = \"app\"\n",
        hosts.display()
    ))
    .await;
    assert_eq!(
        origins_seen(&gw, 6).await,
        HashSet::from(["a".into(), "b".into()])
    );

    // Requests in flight on both addresses while the answer changes.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let req = gw.client.get(gw.url("/slow")).header("x-delay-ms", "1500");
            tokio::spawn(req.send())
        })
        .collect();
    eventually("the slow requests reached a", || async { a.hits() >= 5 }).await;
    std::fs::write(&hosts, "127.0.0.3 app.test\n127.0.0.4 app.test\n").unwrap();
    eventually("the pool follows the new answer", || async {
        origins_seen(&gw, 6).await == HashSet::from(["b".into(), "c".into()])
    })
    .await;
    let a_hits = a.hits();
    assert_eq!(origins_seen(&gw, 10).await.len(), 2);
    assert_eq!(
        a.hits(),
        a_hits,
        "nothing new goes to the address that left"
    );
    for s in slow {
        let res = s.await.unwrap().expect("answered");
        assert_eq!(
            res.status(),
            200,
            "a request sent before the change finishes"
        );
    }
    let status = json(gw.admin_get("/status").await).await;
    let endpoints: Vec<String> = status["http_pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        endpoints,
        [at("127.0.0.3").to_string(), at("127.0.0.4").to_string()]
    );

    // An answer that goes missing keeps the last one: the pool is never emptied.
    std::fs::write(&hosts, "").unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!origins_seen(&gw, 4).await.contains("a"));
    assert!(b.hits() > 0 && c.hits() > 0);
}
