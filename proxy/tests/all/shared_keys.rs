//! The shared key store: replicas that count their keys' limits, budgets and
//! requests in flight in one Redis (`[key_store].redis`) hold a key to its
//! limits as one gateway does, and do what they are told while Redis is
//! away. Each test starts its own `redis-server` on a loopback port.

use crate::harness::*;
use crate::openai::{ai_config, chat, error_of};
use gantry::tenants::digest_hex;
use gantry_fixture_backend::{Behaviour, Fixture};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "gk-fleet-0123456789abcdefghijklmnopqrstuvwxyz";

/// A `redis-server` of our own, on a loopback port, keeping nothing on disk.
struct Redis {
    addr: SocketAddr,
    child: Option<Child>,
}

impl Redis {
    /// `None` (the test says why and passes) when redis-server is not
    /// installed; scripts/setup.sh installs it.
    async fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: redis-server is not installed (scripts/setup.sh installs it)");
            return None;
        }
        let mut redis = Redis {
            addr: free_addr(),
            child: None,
        };
        redis.restart().await;
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        wait_for_port(self.addr).await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gateway over `backend` whose `/v1` routes need a key, with `KEY` as
/// `fleet` under `limits`, counted in `store` (the `[key_store]` body).
async fn replica(backend: &Fixture, store: &str, limits: &str) -> Gateway {
    let config = ai_config(&[backend.addr], "").replace(
        "inference_pools = [\"ai\"]\n",
        "inference_pools = [\"ai\"]\nauth = \"keys\"\n",
    ) + &format!(
        "[key_store]\n{store}\n[[keys]]\nname = \"fleet\"\nsha256 = \"{}\"\n{limits}\n",
        digest_hex(KEY)
    );
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    eventually("the gateway reaches Redis", || async {
        gw.metric("gantry_key_store_up").await == Some(1.0)
    })
    .await;
    gw
}

fn streamed(max_tokens: u32) -> serde_json::Value {
    let mut body = chat(true);
    body["max_tokens"] = json!(max_tokens);
    body["stream_options"] = json!({"include_usage": true});
    body
}

/// POST a chat to `gw` as `KEY`.
async fn ask(gw: &Gateway, body: &serde_json::Value) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

/// A streamed chat's generated tokens when let in; `None` on 429.
async fn generated(gw: &Gateway, max_tokens: u32) -> Option<u64> {
    let res = ask(gw, &streamed(max_tokens)).await;
    if res.status() == 429 {
        assert_eq!(error_of(res, 429).await["code"], "rate_limit_exceeded");
        return None;
    }
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let usage = crate::openai::events(&text)
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .find_map(|c| c["usage"]["completion_tokens"].as_u64());
    Some(usage.expect("a usage chunk"))
}

#[tokio::test]
async fn two_replicas_sharing_redis_never_generate_more_than_the_keys_tokens_per_minute() {
    const LIMIT: u64 = 5_000;
    let Some(redis) = Redis::start().await else {
        return;
    };
    // Each answer is at most 20 tokens, whatever max_tokens reserves.
    let backend = Fixture::start(Behaviour {
        tokens: 20,
        inter_token_delay: Duration::from_millis(1),
        ..Behaviour::default()
    });
    let store = format!("redis = \"{}\"", redis.url());
    let limits = format!("output_tokens_per_minute = {LIMIT}");
    let a = replica(&backend, &store, &limits).await;
    let b = replica(&backend, &store, &limits).await;
    // Waves of 200 concurrent streams, half through each replica, asking 1
    // to 100 tokens each, until a whole wave is refused.
    let mut seed = 11u32;
    let mut want = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (seed >> 16) % 100
    };
    let (mut used, mut refused, mut sent) = (0, 0, 0);
    for _ in 0..20 {
        let wave: Vec<(usize, u32)> = (0..200).map(|i| (i % 2, want())).collect();
        let answers = futures_util::future::join_all(
            wave.iter()
                .map(|&(r, n)| generated(if r == 0 { &a } else { &b }, n)),
        )
        .await;
        sent += answers.len();
        let before = used;
        for n in answers {
            match n {
                Some(n) => used += n,
                None => refused += 1,
            }
        }
        if used == before {
            break;
        }
    }
    println!("{used} of {LIMIT} tokens used by two replicas; {refused} of {sent} refused");
    assert!(used <= LIMIT, "{used} generated against a limit of {LIMIT}");
    assert!(
        used >= LIMIT * 9 / 10,
        "only {used} of {LIMIT} used ({refused} of {sent} refused)"
    );
    for gw in [&a, &b] {
        eventually("every reservation settled", || async {
            gw.metric("gantry_key_reserved_tokens{key=\"fleet\"}").await == Some(0.0)
        })
        .await;
    }
}

#[tokio::test]
async fn concurrency_and_budgets_are_the_fleets_not_each_replicas() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let backend = Fixture::start(Behaviour {
        tokens: 40,
        inter_token_delay: Duration::from_millis(25),
        ..Behaviour::default()
    });
    let store = format!("redis = \"{}\"", redis.url());
    let limits = "max_concurrent = 1\ntokens_per_day = 130";
    let a = replica(&backend, &store, limits).await;
    let b = replica(&backend, &store, limits).await;
    // A stream through one replica holds the key's only slot on both.
    let res = ask(&a, &streamed(40)).await;
    assert_eq!(res.status(), 200);
    let refused = ask(&b, &streamed(5)).await;
    let err = error_of(refused, 429).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent = 1"),
        "{err}"
    );
    let text = res.text().await.unwrap();
    assert!(text.contains("[DONE]"));
    // Its prompt (28) and 40 tokens came off the day's 130 on both replicas: a
    // request asking 70 more (98 with its prompt) does not fit on the other.
    let err = error_of(ask(&b, &streamed(70)).await, 429).await;
    assert_eq!(err["code"], "insufficient_quota");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("tokens_per_day = 130"),
        "{err}"
    );
    let res = ask(&b, &streamed(20)).await;
    let status = res.status();
    assert_eq!(
        status,
        200,
        "the slot came back: {}",
        res.text().await.unwrap()
    );
}

#[tokio::test]
async fn with_redis_gone_closed_replicas_answer_503_at_once_and_recover_when_it_returns() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let backend = Fixture::start(Behaviour::default());
    let store = format!("redis = \"{}\"\non_unreachable = \"closed\"", redis.url());
    let gw = replica(&backend, &store, "requests_per_minute = 1000").await;
    assert_eq!(ask(&gw, &streamed(4)).await.status(), 200);

    redis.kill();
    let gone = Instant::now();
    // Within a second every request is refused, none waits.
    eventually("requests refused without Redis", || async {
        let asked = Instant::now();
        let res = ask(&gw, &streamed(4)).await;
        assert!(asked.elapsed() < Duration::from_secs(1), "a request hung");
        res.status() == 503
    })
    .await;
    assert!(
        gone.elapsed() < Duration::from_secs(1),
        "{:?}",
        gone.elapsed()
    );
    let res = ask(&gw, &streamed(4)).await;
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(error_of(res, 503).await["code"], "key_store_unreachable");
    assert_eq!(gw.metric("gantry_key_store_up").await, Some(0.0));
    assert!(gw.metric("gantry_key_store_errors_total").await >= Some(1.0));

    redis.restart().await;
    let back = Instant::now();
    eventually("served again once Redis is back", || async {
        ask(&gw, &streamed(4)).await.status() == 200
    })
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
}

#[tokio::test]
async fn with_redis_gone_local_replicas_count_their_share_of_each_limit() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let backend = Fixture::start(Behaviour::default());
    let store = format!(
        "redis = \"{}\"\non_unreachable = \"local\"\nreplicas = 2",
        redis.url()
    );
    let gw = replica(&backend, &store, "requests_per_minute = 10").await;
    redis.kill();
    // Alone, this replica lets in its half of the minute's 10 (the request
    // that found Redis gone among them).
    let mut let_in = 0;
    while ask(&gw, &streamed(1)).await.status() == 200 {
        let_in += 1;
        assert!(let_in <= 5, "more than this replica's share");
    }
    assert_eq!(let_in, 5, "the replica kept serving alone, its share");
    assert_eq!(gw.metric("gantry_key_store_up").await, Some(0.0));
    let res = ask(&gw, &streamed(1)).await;
    let err = error_of(res, 429).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("requests_per_minute = 5"),
        "{err}"
    );
}

#[tokio::test]
async fn a_key_made_or_revoked_on_one_replica_is_honoured_or_refused_on_all_within_a_second() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let backend = Fixture::start(Behaviour::default());
    let store = format!("redis = \"{}\"", redis.url());
    let a = replica(&backend, &store, "").await;
    let b = replica(&backend, &store, "").await;
    let admin = |gw: &Gateway, method: reqwest::Method, path: &str| {
        let req = gw
            .client
            .request(method, format!("http://{}{path}", gw.admin))
            .bearer_auth(ADMIN_TOKEN);
        async move { req.send().await.expect("admin answers") }
    };
    let models = |gw: &Gateway, key: &str| {
        let req = gw.client.get(gw.url("/v1/models")).bearer_auth(key);
        async move { req.send().await.expect("gateway answers").status() }
    };
    let res = admin(&a, reqwest::Method::POST, "/admin/keys/fleet").await;
    assert_eq!(res.status(), 201);
    let made = json(res).await;
    let (key, sha) = (
        made["key"].as_str().unwrap().to_string(),
        made["sha256"].as_str().unwrap().to_string(),
    );
    assert_eq!(models(&a, &key).await, 200, "at once where it was made");
    let made_at = Instant::now();
    eventually("the other replica honours it", || async {
        models(&b, &key).await == 200
    })
    .await;
    assert!(
        made_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        made_at.elapsed()
    );

    let res = admin(&b, reqwest::Method::DELETE, &format!("/admin/keys/{sha}")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(models(&b, &key).await, 401, "at once where it was revoked");
    let revoked_at = Instant::now();
    eventually("the other replica refuses it", || async {
        models(&a, &key).await == 401
    })
    .await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked_at.elapsed()
    );
}

/// On a proxied route a request's lease is given back with the key's next
/// admit from the same replica (one script per request, not two): a client
/// that waits for each answer is never refused by its own last request.
#[tokio::test]
async fn a_one_at_a_time_client_of_a_proxied_route_is_never_refused_by_its_own_lease() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = Origin::start("o").await;
    let config = one_pool(&[origin.addr], "", "auth = \"keys\"\n")
        + &format!(
            "[key_store]\nredis = \"{}\"\n[[keys]]\nname = \"fleet\"\nsha256 = \"{}\"\nmax_concurrent = 1\n",
            redis.url(),
            digest_hex(KEY)
        );
    let gw = Gateway::start(&config).await;
    eventually("the gateway reaches Redis", || async {
        gw.metric("gantry_key_store_up").await == Some(1.0)
    })
    .await;
    for i in 0..300 {
        let res = gw
            .client
            .get(gw.url("/x"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert_eq!(status, 200, "request {i}: {}", res.text().await.unwrap());
    }
}

/// A lease given back alone (no admit of its key came within
/// `RELEASE_WITHIN`) is still given back by the key's next admit while that
/// release is on its way: the first lone release loads its script, three
/// round trips, and an admit sent meanwhile must not find the slot held.
#[tokio::test]
async fn an_admit_while_a_lone_release_is_on_its_way_gives_that_lease_back_too() {
    use gantry::tenants::shared::{Settlement, SharedKey, SharedStore};
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    let Some(redis) = Redis::start().await else {
        return;
    };
    let metrics = gantry::metrics::Metrics::new();
    let store = SharedStore::connect(
        &redis.url(),
        &tokio::runtime::Handle::current(),
        metrics.key_store(),
    )
    .unwrap();
    eventually("the store reaches Redis", || async { store.is_up() }).await;
    let limits = gantry_config::KeyLimits {
        max_concurrent: Some(1),
        ..Default::default()
    };
    let key = Arc::new(SharedKey::new("fleet", limits));
    let first = store.admit(&key).await.expect("the first request");
    store.settle(
        &key,
        Settlement {
            window_start: 0,
            periods: [0, 0],
            reserved: [0, 0],
            used: [0, 0],
            member: first.member,
        },
    );
    // The lone release starts (its first command is sent) and is not
    // answered before the next request's admit.
    let mut flush = Box::pin(store.flush_released());
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(flush.as_mut().poll(&mut cx) == Poll::Pending);
    let next = store.admit(&key).await;
    assert!(next.is_ok(), "the next request found the slot held");
    flush.await;
}
