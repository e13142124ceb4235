//! Routes pick pools by host then longest path prefix; rewrites and forwarding
//! headers reach the origin; the request id is echoed.

use crate::harness::*;

async fn two_origin_gateway() -> (Origin, Origin, Gateway) {
    let web = Origin::start("web").await;
    let api = Origin::start("api").await;
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
name = "http"
address = "{{gateway}}"

[[pools]]
name = "web"
endpoints = ["{web}"]

[[pools]]
name = "api"
endpoints = ["{api}"]

[[routes]]
name = "api"
pool = "api"
hosts = ["api.test"]
path_prefix = "/v1"
strip_prefix = true
request_headers = {{ remove = ["x-debug"], set = {{ "x-gateway" = "gantry" }}, add = {{ "x-tag" = "edge" }} }}
response_headers = {{ remove = ["x-internal"], set = {{ "x-served-by" = "gantry" }} }}

[[routes]]
name = "web-static"
pool = "web"
path_prefix = "/static"
methods = ["GET", "HEAD"]

[[routes]]
name = "web"
pool = "web"
path_prefix = "/"
"#,
        web = web.addr,
        api = api.addr
    ))
    .await;
    (web, api, gw)
}

#[tokio::test]
async fn host_then_longest_prefix_selects_the_pool() {
    let (web, api, gw) = two_origin_gateway().await;
    let res = gw
        .client
        .get(gw.url("/v1/users?id=7"))
        .header("host", "api.test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = json(res).await;
    assert_eq!(body["origin"], "api");
    assert_eq!(body["path"], "/users?id=7", "prefix stripped, query kept");

    // Same path, other host: the catch-all route, prefix not stripped.
    let body = json(gw.get("/v1/users").await).await;
    assert_eq!(body["origin"], "web");
    assert_eq!(body["path"], "/v1/users");
    // `/v1x` is not under `/v1` even for api.test.
    let res = gw
        .client
        .get(gw.url("/v1x"))
        .header("host", "api.test")
        .send()
        .await
        .unwrap();
    assert_eq!(json(res).await["origin"], "web");
    assert_eq!((web.hits(), api.hits()), (2, 1));
}

#[tokio::test]
async fn header_rewrites_apply_both_ways() {
    let (_web, _api, gw) = two_origin_gateway().await;
    let res = gw
        .client
        .get(gw.url("/v1/x"))
        .header("host", "api.test")
        .header("x-debug", "1")
        .header("x-tag", "client")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-served-by"], "gantry");
    assert!(
        res.headers().get("x-internal").is_none(),
        "response header removed"
    );
    assert_eq!(
        res.headers()["x-origin"],
        "api",
        "other response headers kept"
    );
    let body = json(res).await;
    let h = &body["headers"];
    assert!(h.get("x-debug").is_none(), "request header removed");
    assert_eq!(h["x-gateway"], "gantry");
    assert_eq!(h["x-tag"], "client, edge", "add appends");
}

#[tokio::test]
async fn forwarding_headers_and_request_id() {
    let (_web, _api, gw) = two_origin_gateway().await;
    let res = gw
        .client
        .get(gw.url("/"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    let echoed = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(echoed.len(), 32, "generated id is a 128-bit hex uuid");
    let body = json(res).await;
    let h = &body["headers"];
    // Loopback is not a trusted proxy here: its X-Forwarded-For is replaced
    // (edge.rs has the trusted case).
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["x-request-id"],
        echoed.as_str(),
        "origin sees the id the client gets"
    );

    let res = gw
        .client
        .get(gw.url("/"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["x-request-id"],
        "abc-123",
        "a valid client id is kept"
    );
    assert_eq!(json(res).await["headers"]["x-request-id"], "abc-123");
}

#[tokio::test]
async fn no_route_is_404_and_wrong_method_is_405_json() {
    let origin = Origin::start("only").await;
    let submit = "name = \"submit\"
path_prefix = \"/submit\"
methods = [\"POST\"]";
    let gw =
        Gateway::start(&one_pool(&[origin.addr], "", "").replace("name = \"all\"", submit)).await;
    let res = gw.get("/elsewhere").await;
    assert_eq!(res.status(), 404);
    assert!(res.headers().contains_key("x-request-id"));
    let body = json(res).await;
    assert_eq!(body["error"]["code"], "route_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let res = gw.get("/submit").await;
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    assert_eq!(json(res).await["error"]["code"], "method_not_allowed");
    assert_eq!(origin.hits(), 0, "nothing reached the origin");
}
