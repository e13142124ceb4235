//! Load-balancing policies spread (or pin) requests as documented.

use crate::harness::*;
use std::collections::{HashMap, HashSet};

async fn pool_of_three(policy: &str) -> (Vec<Origin>, Gateway) {
    let origins = vec![
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let gw = Gateway::start(&one_pool(&addrs, policy, "")).await;
    (origins, gw)
}

async fn origin_of(req: reqwest::RequestBuilder) -> String {
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.headers()["x-origin"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (origins, gw) = pool_of_three(r#"load_balancing = "round_robin""#).await;
    for _ in 0..30 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    let hits: Vec<usize> = origins.iter().map(Origin::hits).collect();
    assert_eq!(hits, vec![10, 10, 10]);
}

#[tokio::test]
async fn random_reaches_every_endpoint() {
    let (origins, gw) = pool_of_three(r#"load_balancing = "random""#).await;
    for _ in 0..90 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    for o in &origins {
        // Expected 30 each; below 5 would be a broken picker (p < 1e-7).
        assert!(o.hits() >= 5, "{} got {} of 90", o.name, o.hits());
    }
}

#[tokio::test]
async fn consistent_hash_on_header_pins_keys_and_spreads_them() {
    let (_origins, gw) = pool_of_three(
        "load_balancing = \"consistent_hash\"\nhash_on = \"header\"\nhash_header = \"x-user\"",
    )
    .await;
    let owner_of = |user: u32| {
        origin_of(
            gw.client
                .get(gw.url("/"))
                .header("x-user", user.to_string()),
        )
    };
    let mut owner = HashMap::new();
    for user in 0..40 {
        owner.insert(user, owner_of(user).await);
    }
    // Every key goes back to the same endpoint.
    for user in 0..40 {
        assert_eq!(owner[&user], owner_of(user).await, "user {user} moved");
    }
    let used: HashSet<_> = owner.values().collect();
    assert_eq!(used.len(), 3, "40 keys use all 3 endpoints: {owner:?}");
}

#[tokio::test]
async fn consistent_hash_on_client_address_is_sticky() {
    let (_origins, gw) = pool_of_three("load_balancing = \"consistent_hash\"").await;
    let first = origin_of(gw.client.get(gw.url("/"))).await;
    for _ in 0..10 {
        assert_eq!(origin_of(gw.client.get(gw.url("/"))).await, first);
    }
}
