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
    let res = send(
        gw.client
            .post(gw.url("/v1/embeddings"))
            .bearer_auth(TEAM_A)
            .json(&embed),
    )
    .await;
    let err = error_of(res, 404).await;
    assert_eq!(err["code"], "model_not_found");
    let message = err["message"].as_str().unwrap();
    assert!(
        !message.contains("fixture-embed`;") && message.ends_with("fixture"),
        "{message}"
    );
    let res = send(
        gw.client
            .post(gw.url("/v1/embeddings"))
            .bearer_auth(TEAM_B)
            .json(&embed),
    )
    .await;
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
