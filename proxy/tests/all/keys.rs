//! API keys: routes with `auth = "keys"` let in only requests carrying one of
//! the configured `[[keys]]` (known by their SHA-256), each key limited to its
//! models and routes, and the key never reaches an upstream.

use crate::harness::*;
use crate::openai::{ai_config, chat, error_of};
use gantry::tenants::digest_hex;
use gantry_fixture_backend::{Behaviour, Fixture};
use serde_json::json;

const TEAM_A: &str = "gk-team-a-0123456789abcdefghijklmnopqrstuvwxyz";
const TEAM_B: &str = "gk-team-b-0123456789abcdefghijklmnopqrstuvwxyz";

fn key(name: &str, key: &str, extra: &str) -> String {
    format!(
        "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n",
        digest_hex(key)
    )
}

async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.expect("gateway answers")
}

/// POST `body` to `path` with `key` as a bearer token.
async fn post_as(
    gw: &Gateway,
    key: &str,
    path: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    send(gw.client.post(gw.url(path)).bearer_auth(key).json(body)).await
}

#[tokio::test]
async fn the_api_lets_in_configured_keys_only_and_each_sees_its_own_models() {
    let backend = Fixture::start(Behaviour::default());
    let config = ai_config(&[backend.addr], "").replace(
        "inference_pools = [\"ai\"]\n",
        "inference_pools = [\"ai\"]\nauth = \"keys\"\n",
    ) + &key("team-a", TEAM_A, "models = [\"fixture\"]")
        + &key("team-b", TEAM_B, "");
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    let chat_url = gw.url("/v1/chat/completions");

    // No key, or a key nobody configured: 401, as OpenAI answers it.
    let res = send(gw.client.post(&chat_url).json(&chat(false))).await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_of(res, 401).await["code"], "invalid_api_key");
    let res = send(
        gw.client
            .post(&chat_url)
            .bearer_auth("gk-not-a-configured-key")
            .json(&chat(false)),
    )
    .await;
    assert_eq!(error_of(res, 401).await["code"], "invalid_api_key");

    // A configured key, as a bearer token or in x-api-key.
    let res = send(
        gw.client
            .post(&chat_url)
            .bearer_auth(TEAM_A)
            .json(&chat(false)),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = send(
        gw.client
            .post(&chat_url)
            .header("x-api-key", TEAM_A)
            .json(&chat(false)),
    )
    .await;
    assert_eq!(res.status(), 200);

    // team-a may use `fixture` only: the other model does not exist for it.
    let embed = json!({"model": "fixture-embed", "input": "hello"});
    let res = post_as(&gw, TEAM_A, "/v1/embeddings", &embed).await;
    let err = error_of(res, 404).await;
    assert_eq!(err["code"], "model_not_found");
    let message = err["message"].as_str().unwrap();
    assert!(
        !message.contains("fixture-embed`;") && message.ends_with("fixture"),
        "{message}"
    );
    let res = post_as(&gw, TEAM_B, "/v1/embeddings", &embed).await;
    assert_eq!(res.status(), 200);
    let listed = |body: serde_json::Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let res = send(gw.client.get(gw.url("/v1/models")).bearer_auth(TEAM_A)).await;
    assert_eq!(listed(json(res).await), ["fixture"]);
    let res = send(gw.client.get(gw.url("/v1/models")).bearer_auth(TEAM_B)).await;
    assert_eq!(listed(json(res).await), ["fixture", "fixture-embed"]);
    let res = send(
        gw.client
            .get(gw.url("/v1/models/fixture-embed"))
            .bearer_auth(TEAM_A),
    )
    .await;
    assert_eq!(error_of(res, 404).await["code"], "model_not_found");

    // Routes without `auth` need no key.
    assert_eq!(gw.get("/openapi.json").await.status(), 200);

    // Counted by key name and by refusal reason; the key itself is no label.
    assert_eq!(
        gw.metric("gantry_key_requests_total{key=\"team-a\"}").await,
        Some(5.0)
    );
    assert_eq!(
        gw.metric("gantry_key_requests_total{key=\"team-b\"}").await,
        Some(2.0)
    );
    for (reason, n) in [("missing", 1.0), ("unknown", 1.0), ("model", 2.0)] {
        let sample =
            format!("gantry_auth_rejections_total{{reason=\"{reason}\",route=\"openai\"}}");
        assert_eq!(gw.metric(&sample).await, Some(n), "{sample}");
    }
    assert!(!gw.metrics().await.contains(TEAM_A));
}

#[tokio::test]
async fn a_proxied_route_checks_the_key_and_never_forwards_it() {
    let origin = Origin::start("o").await;
    let config = one_pool(
        &[origin.addr],
        "",
        "auth = \"keys\"\n\
         [[routes]]\nname = \"upstream-auth\"\npath_prefix = \"/own\"\npool = \"p\"\nauth = \"keys\"\n\
         request_headers = { set = { authorization = \"Bearer upstream-secret\" } }\n",
    ) + &key("ops", TEAM_A, "")
        + &key("own-only", TEAM_B, "routes = [\"upstream-auth\"]");
    let gw = Gateway::start(&config).await;

    let res = send(gw.client.get(gw.url("/x")).bearer_auth(TEAM_A)).await;
    assert_eq!(res.status(), 200);
    let seen = json(res).await;
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    let res = send(gw.client.get(gw.url("/x")).header("x-api-key", TEAM_A)).await;
    let seen = json(res).await;
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");

    // The route's own rewrite may still give the upstream its credentials.
    let res = send(gw.client.get(gw.url("/own/y")).bearer_auth(TEAM_B)).await;
    let seen = json(res).await;
    assert_eq!(seen["headers"]["authorization"], "Bearer upstream-secret");

    // A key limited to other routes: 403, and the upstream never sees it.
    let hits = origin.hits();
    let res = send(gw.client.get(gw.url("/x")).bearer_auth(TEAM_B)).await;
    assert_eq!(error_of(res, 403).await["code"], "key_not_allowed");
    let res = send(gw.client.get(gw.url("/x"))).await;
    assert_eq!(error_of(res, 401).await["code"], "invalid_api_key");
    assert_eq!(origin.hits(), hits);
    assert_eq!(
        gw.metric("gantry_auth_rejections_total{reason=\"route\",route=\"all\"}")
            .await,
        Some(1.0)
    );
}

/// A gateway whose `/v1` route needs keys, over one fixture backend, with
/// `team-a`'s `limits` lines.
async fn limited_api(behaviour: Behaviour, limits: &str) -> (Gateway, Fixture) {
    let backend = Fixture::start(behaviour);
    let config = ai_config(&[backend.addr], "").replace(
        "inference_pools = [\"ai\"]\n",
        "inference_pools = [\"ai\"]\nauth = \"keys\"\n",
    ) + &key("team-a", TEAM_A, limits);
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    (gw, backend)
}

/// A streamed chat for `max_tokens`: the generated tokens (its usage) when
/// let in, `None` on 429 `rate_limit_exceeded`.
async fn streamed_tokens(gw: &Gateway, max_tokens: u32) -> Option<u64> {
    let mut body = chat(true);
    body["max_tokens"] = json!(max_tokens);
    body["stream_options"] = json!({"include_usage": true});
    let res = post_as(gw, TEAM_A, "/v1/chat/completions", &body).await;
    if res.status() == 429 {
        assert!(res.headers().contains_key("retry-after"));
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

/// `team-a`'s generated tokens left this minute, as its answers say.
async fn remaining_tokens(gw: &Gateway) -> u64 {
    let res = send(gw.client.get(gw.url("/v1/models")).bearer_auth(TEAM_A)).await;
    res.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn concurrent_streams_never_generate_more_than_the_keys_tokens_per_minute() {
    const LIMIT: u64 = 1_000;
    // Each answer is at most 20 tokens, whatever max_tokens reserves: what a
    // request does not use must come back at once for the limit to be used.
    let (gw, _backend) = limited_api(
        Behaviour {
            tokens: 20,
            inter_token_delay: std::time::Duration::from_millis(1),
            ..Behaviour::default()
        },
        &format!("output_tokens_per_minute = {LIMIT}"),
    )
    .await;
    // Waves of 40 concurrent streams asking 1 to 100 tokens each, until a
    // whole wave is refused: only then is the minute's allowance spent.
    let mut seed = 7u32;
    let mut ask = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (seed >> 16) % 100
    };
    let (mut used, mut refused, mut sent) = (0, 0, 0);
    for _ in 0..50 {
        let wave: Vec<u32> = (0..40).map(|_| ask()).collect();
        let answers =
            futures_util::future::join_all(wave.iter().map(|&n| streamed_tokens(&gw, n))).await;
        sent += answers.len();
        let before = used;
        for a in answers {
            match a {
                Some(n) => used += n,
                None => refused += 1,
            }
        }
        if used == before {
            break;
        }
    }
    println!("{used} of {LIMIT} tokens used; {refused} of {sent} requests refused");
    assert!(sent >= 200, "{sent} requests sent");
    assert!(
        used <= LIMIT,
        "{used} tokens generated against a limit of {LIMIT}"
    );
    // Were reservations not given back as the streams end, each would keep
    // its whole ask (about 50) for about 20 generated: some 40 % used.
    assert!(
        used >= LIMIT * 9 / 10,
        "only {used} of {LIMIT} used ({refused} of {sent} refused)"
    );
    assert!(refused > 0, "the limit was reached");
    let res = send(gw.client.get(gw.url("/v1/models")).bearer_auth(TEAM_A)).await;
    assert_eq!(
        res.headers()["x-ratelimit-limit-tokens"],
        LIMIT.to_string().as_str()
    );
    assert_eq!(
        remaining_tokens(&gw).await,
        LIMIT - used,
        "what was not generated came back"
    );
    assert!(gw
        .metric("gantry_key_rejections_total{key=\"team-a\",limit=\"output_tokens\"}")
        .await
        .is_some_and(|n| n as u64 == refused));
}

#[tokio::test]
async fn a_client_that_leaves_is_charged_what_was_generated_not_max_tokens() {
    let (gw, _backend) = limited_api(
        Behaviour {
            tokens: 1_000,
            inter_token_delay: std::time::Duration::from_millis(50),
            ..Behaviour::default()
        },
        "output_tokens_per_minute = 100",
    )
    .await;
    let mut body = chat(true);
    body["max_tokens"] = json!(100);
    let res = post_as(&gw, TEAM_A, "/v1/chat/completions", &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-ratelimit-remaining-tokens"], "0");
    let mut stream = futures_util::StreamExt::boxed(res.bytes_stream());
    let mut seen = String::new();
    while crate::openai::events(&seen).len() < 3 {
        let chunk = futures_util::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let held = |name: &str| format!("gantry_key_{name}{{key=\"team-a\"}}");
    assert_eq!(gw.metric(&held("reserved_tokens")).await, Some(100.0));
    assert_eq!(gw.metric(&held("inflight_requests")).await, Some(1.0));
    drop(stream); // gone after ~3 of its 100 tokens
                  // The 100 tokens would take 5 s to generate; the reservation settles as
                  // soon as the gateway sees the client gone.
    eventually("the reservation settles to what was generated", || async {
        (90..100).contains(&remaining_tokens(&gw).await)
    })
    .await;
    assert_eq!(gw.metric(&held("reserved_tokens")).await, Some(0.0));
    assert_eq!(gw.metric(&held("inflight_requests")).await, Some(0.0));
    // What it was charged is what the key's token counter says it used.
    let charged = 100 - remaining_tokens(&gw).await;
    let counted = "gantry_key_tokens_total{direction=\"output\",key=\"team-a\"}";
    assert_eq!(gw.metric(counted).await, Some(charged as f64));
    assert!(streamed_tokens(&gw, 90).await.is_some());
}

#[tokio::test]
async fn requests_per_minute_and_concurrency_are_limited_per_key_with_openai_headers() {
    let origin = Origin::start("o").await;
    let config = one_pool(&[origin.addr], "", "auth = \"keys\"\n")
        + &key(
            "team-a",
            TEAM_A,
            "requests_per_minute = 3\nmax_concurrent = 1",
        );
    let gw = Gateway::start(&config).await;
    let get = |delay: u64| {
        gw.client
            .get(gw.url("/x"))
            .bearer_auth(TEAM_A)
            .header("x-delay-ms", delay.to_string())
            .send()
    };
    // One slow request in flight: a second at the same time is refused.
    let (slow, second) = tokio::join!(get(400), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        get(0).await
    });
    assert_eq!(slow.unwrap().status(), 200);
    let second = second.unwrap();
    assert_eq!(second.headers()["retry-after"], "1");
    let err = error_of(second, 429).await;
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent = 1"),
        "{err}"
    );

    // The refused one did not count: two of three used, one left.
    let third = get(0).await.unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(third.headers()["x-ratelimit-limit-requests"], "3");
    assert_eq!(third.headers()["x-ratelimit-remaining-requests"], "1");
    let reset = third.headers()["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(reset.ends_with('s') && !reset.ends_with("ms"), "{reset}");
    assert_eq!(get(0).await.unwrap().status(), 200);
    let over = get(0).await.unwrap();
    let wait: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&wait), "{wait}");
    assert_eq!(over.headers()["x-ratelimit-remaining-requests"], "0");
    let err = error_of(over, 429).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("requests_per_minute = 3"),
        "{err}"
    );
    assert_eq!(
        gw.metric("gantry_key_requests_total{key=\"team-a\"}").await,
        Some(3.0),
        "requests let in, not those refused"
    );
    for (limit, n) in [("concurrent", 1.0), ("requests", 1.0)] {
        let sample = format!("gantry_key_rejections_total{{key=\"team-a\",limit=\"{limit}\"}}");
        assert_eq!(gw.metric(&sample).await, Some(n), "{sample}");
    }
}

#[tokio::test]
async fn the_official_openai_client_sees_its_key_errors_and_limits() {
    let (gw, _backend) = limited_api(
        Behaviour {
            tokens: 20,
            ..Behaviour::default()
        },
        "output_tokens_per_minute = 100",
    )
    .await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_keys.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(gw.url(""))
        .arg(TEAM_A)
        .output()
        .await
        .expect("python3 runs (scripts/setup.sh installs openai)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen["bad_key"],
        json!({"status": 401, "code": "invalid_api_key"})
    );
    assert_eq!(seen["ok"]["completion_tokens"], 5);
    assert_eq!(seen["ok"]["limit_tokens"], "100");
    assert_eq!(seen["ok"]["remaining_tokens"], "95");
    assert_eq!(seen["over"]["status"], 429);
    assert_eq!(seen["over"]["code"], "rate_limit_exceeded");
    assert!(seen["over"]["retry_after"].as_str().is_some(), "{seen}");
}

/// A client that waits for each answer before it asks again never has two
/// requests in flight, whatever the transport: the slot a request holds is
/// free by the time its answer's last byte reaches the client, on proxied
/// routes, whole API answers and streams alike.
#[tokio::test]
async fn a_client_that_asks_one_at_a_time_is_never_refused_by_max_concurrent() {
    let origin = Origin::start("o").await;
    let backend = Fixture::start(Behaviour::default());
    let api = ai_config(&[backend.addr], "").replace(
        "inference_pools = [\"ai\"]\n",
        "inference_pools = [\"ai\"]\nauth = \"keys\"\n",
    );
    let proxied = format!(
        "[[pools]]\nname = \"web\"\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\npath_prefix = \"/web\"\npool = \"web\"\nauth = \"keys\"\n",
        origin.addr
    );
    let gw = Gateway::start(&(api + &proxied + &key("team-a", TEAM_A, "max_concurrent = 1"))).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    // HTTP/2: each request is a new stream, handled as soon as it arrives,
    // while the one before may still be finishing.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut streamed = chat(true);
    streamed["max_tokens"] = json!(2);
    for i in 0..600 {
        let req = match i % 3 {
            0 => h2.get(gw.url("/web/x")),
            1 => h2.get(gw.url("/v1/models")),
            _ => h2.post(gw.url("/v1/chat/completions")).json(&streamed),
        };
        let res = send(req.bearer_auth(TEAM_A)).await;
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
    }
    eventually("nothing held once the last answer is read", || async {
        gw.metric("gantry_key_inflight_requests{key=\"team-a\"}")
            .await
            == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn a_plugins_own_answer_on_a_keyed_route_carries_the_keys_rate_headers() {
    use crate::plugins::{config, plugin, route, CONTINUE, DENY};
    let origin = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let deny = plugin(dir.path(), "deny", DENY, CONTINUE);
    let keyed = route("r", "/", &[("deny", &deny, "")]).replacen(
        "path_prefix = \"/\"\n",
        "path_prefix = \"/\"\nauth = \"keys\"\n",
        1,
    );
    let gw = Gateway::start(
        &(config(origin.addr, &[keyed]) + &key("team-a", TEAM_A, "requests_per_minute = 10")),
    )
    .await;
    let res = send(gw.client.get(gw.url("/x")).bearer_auth(TEAM_A)).await;
    assert_eq!(res.status(), 401, "the plugin's answer");
    assert_eq!(res.headers()["x-ratelimit-limit-requests"], "10");
    assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "9");
}

#[tokio::test]
async fn prompts_are_counted_as_the_backend_counts_them_before_they_are_let_in() {
    const LIMIT: u64 = 200;
    let (gw, _backend) = limited_api(
        Behaviour::default(),
        &format!("input_tokens_per_minute = {LIMIT}"),
    )
    .await;
    let (mut let_in, mut prompt) = (0, 0);
    loop {
        let res = post_as(&gw, TEAM_A, "/v1/chat/completions", &chat(false)).await;
        if res.status() == 429 {
            let err = error_of(res, 429).await;
            let message = err["message"].as_str().unwrap();
            assert!(
                message.contains("input_tokens_per_minute = 200"),
                "{message}"
            );
            break;
        }
        let status = res.status();
        assert_eq!(status, 200, "{}", res.text().await.unwrap());
        prompt = json(res).await["usage"]["prompt_tokens"].as_u64().unwrap();
        let_in += 1;
        assert!(let_in < 100, "never refused");
    }
    // Counted at the gateway exactly as the backend counts: one token more or
    // less per request would let a different number in.
    assert_eq!(let_in, LIMIT / prompt, "{prompt} prompt tokens per request");
    assert_eq!(
        gw.metric("gantry_key_rejections_total{key=\"team-a\",limit=\"input_tokens\"}")
            .await,
        Some(1.0)
    );
}

/// Budgets hold over UTC days and months, prompt and generated tokens
/// together, reserved like the per-minute limits; what was spent is kept in
/// the embedded store, so a restart does not give a spent budget back.
#[tokio::test]
async fn budgets_are_kept_across_a_restart_and_a_spent_one_is_insufficient_quota() {
    const BUDGET: u64 = 60;
    let backend = Fixture::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let config = |limits: &str| {
        ai_config(&[backend.addr], "").replace(
            "inference_pools = [\"ai\"]\n",
            "inference_pools = [\"ai\"]\nauth = \"keys\"\n",
        ) + &format!(
            "[key_store]\npath = \"{}\"\n",
            dir.path().join("budgets.redb").display()
        ) + &key("team-a", TEAM_A, limits)
    };
    let mut body = chat(false);
    body["max_tokens"] = json!(5);
    let spent_on = |err: serde_json::Value, period: &str, limit: u64| {
        assert_eq!(err["code"], "insufficient_quota");
        assert_eq!(err["type"], "insufficient_quota");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{period} = {limit}")),
            "{message}"
        );
    };

    let both = format!("tokens_per_day = {BUDGET}\ntokens_per_month = 1000");
    let mut gw = Gateway::start(&config(&both)).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    let (mut spent, mut each) = (0, 0);
    loop {
        let res = post_as(&gw, TEAM_A, "/v1/chat/completions", &body).await;
        if res.status() == 429 {
            let wait: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=86_400).contains(&wait), "until 00:00 UTC: {wait}");
            spent_on(error_of(res, 429).await, "tokens_per_day", BUDGET);
            break;
        }
        assert_eq!(res.status(), 200);
        let usage = json(res).await["usage"].clone();
        assert_eq!(usage["completion_tokens"], 5);
        each = usage["total_tokens"].as_u64().unwrap();
        spent += each;
        assert!(spent <= BUDGET, "{spent} spent of {BUDGET}");
    }
    // Each request reserved its prompt and max_tokens, which it used: the one
    // refused would have gone over.
    assert!(
        spent + each > BUDGET && spent > 0,
        "{spent} spent, {each} each"
    );
    assert_eq!(
        gw.metric("gantry_key_rejections_total{key=\"team-a\",limit=\"tokens_per_day\"}")
            .await,
        Some(1.0)
    );
    gw.shutdown().join().unwrap();

    // Restarted: the day's spending was kept; and the month's, as a month's
    // budget of what was spent shows.
    let mut gw = Gateway::start(&config(&both)).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    let res = post_as(&gw, TEAM_A, "/v1/chat/completions", &body).await;
    spent_on(error_of(res, 429).await, "tokens_per_day", BUDGET);
    gw.shutdown().join().unwrap();
    let gw = Gateway::start(&config(&format!("tokens_per_month = {}", spent + 1))).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    let res = post_as(&gw, TEAM_A, "/v1/chat/completions", &body).await;
    spent_on(error_of(res, 429).await, "tokens_per_month", spent + 1);
}

/// `METHOD path` on `gw`'s admin listener, with the admin token when `token`.
async fn admin(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    token: bool,
) -> reqwest::Response {
    let mut req = gw
        .client
        .request(method, format!("http://{}{path}", gw.admin));
    if token {
        req = req.bearer_auth(ADMIN_TOKEN);
    }
    send(req).await
}

/// Keys made at run time belong to a configured tenant (its limits, models
/// and metrics), are stored as digests in the key store, outlive restarts,
/// and stop working the moment they are revoked.
#[tokio::test]
async fn keys_made_and_revoked_at_run_time_are_kept_in_the_embedded_store() {
    use reqwest::Method;
    let backend = Fixture::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let config = ai_config(&[backend.addr], "").replace(
        "inference_pools = [\"ai\"]\n",
        "inference_pools = [\"ai\"]\nauth = \"keys\"\n",
    ) + &format!(
        "[key_store]\npath = \"{}\"\n[[keys]]\nname = \"team-a\"\nrequests_per_minute = 100\n",
        dir.path().join("keys.redb").display()
    );
    let mut gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    let models = |gw: &Gateway, key: &str| {
        let req = gw.client.get(gw.url("/v1/models")).bearer_auth(key);
        async move { send(req).await }
    };

    assert_eq!(
        admin(&gw, Method::POST, "/admin/keys/team-a", false)
            .await
            .status(),
        401
    );
    let res = admin(&gw, Method::POST, "/admin/keys/nobody", true).await;
    assert_eq!(res.status(), 404, "a key takes a configured tenant");
    let res = admin(&gw, Method::POST, "/admin/keys/team-a", true).await;
    assert_eq!(res.status(), 201);
    let made = json(res).await;
    let key = made["key"].as_str().unwrap().to_string();
    let sha = made["sha256"].as_str().unwrap().to_string();
    assert!(key.starts_with("gk-") && sha == digest_hex(&key));
    let res = models(&gw, &key).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["x-ratelimit-limit-requests"],
        "100",
        "the tenant's limits"
    );
    let listed = admin(&gw, Method::GET, "/admin/keys", true)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains(&sha) && listed.contains("\"store\""),
        "{listed}"
    );
    assert!(
        !listed.contains(&key),
        "the key itself is never shown again"
    );

    gw.shutdown().join().unwrap();
    let mut gw = Gateway::start(&config).await;
    assert_eq!(
        models(&gw, &key).await.status(),
        200,
        "kept across a restart"
    );
    let res = admin(&gw, Method::DELETE, &format!("/admin/keys/{sha}"), true).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        error_of(models(&gw, &key).await, 401).await["code"],
        "invalid_api_key"
    );
    let res = admin(&gw, Method::DELETE, &format!("/admin/keys/{sha}"), true).await;
    assert_eq!(res.status(), 404, "revoked once");
    gw.shutdown().join().unwrap();
    let gw = Gateway::start(&config).await;
    assert_eq!(models(&gw, &key).await.status(), 401, "revoked for good");
}

#[tokio::test]
async fn embeddings_reserve_a_bound_on_their_tokens_and_settle_to_the_count() {
    let (gw, _backend) = limited_api(Behaviour::default(), "input_tokens_per_minute = 20").await;
    // "hello there": 11 bytes, so 13 reserved; the fixture counts 2 (words).
    let embed = json!({"model": "fixture-embed", "input": "hello there"});
    let mut let_in = 0;
    while post_as(&gw, TEAM_A, "/v1/embeddings", &embed)
        .await
        .status()
        == 200
    {
        let_in += 1;
        assert!(let_in < 100, "never refused");
    }
    // Each settles to 2: after four, 8 used and 13 no longer fit in 20.
    assert_eq!(let_in, 4);
}

#[tokio::test]
async fn a_prompt_that_cannot_be_counted_is_refused_not_let_through_uncounted() {
    let (gw, _backend) = limited_api(
        Behaviour {
            prompt_format: false,
            ..Behaviour::default()
        },
        "input_tokens_per_minute = 1000",
    )
    .await;
    let res = post_as(&gw, TEAM_A, "/v1/chat/completions", &chat(false)).await;
    assert!(res.headers().contains_key("retry-after"));
    let err = error_of(res, 503).await;
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("input_tokens_per_minute needs the prompt counted"),
        "{message}"
    );
    // Without an input limit the same backend serves the key.
    let (gw, _backend) = limited_api(
        Behaviour {
            prompt_format: false,
            ..Behaviour::default()
        },
        "output_tokens_per_minute = 1000",
    )
    .await;
    let res = post_as(&gw, TEAM_A, "/v1/chat/completions", &chat(false)).await;
    assert_eq!(res.status(), 200);
}
