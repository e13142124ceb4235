//! Wasm plugins on routes, end to end through the gateway, with tiny WAT modules:
//! header changes seen by the upstream and the client, local responses, failure
//! policies, limits, and isolation between routes.

use crate::harness::*;
use std::path::{Path, PathBuf};

/// A proxy-wasm module: `request` and `response` are the bodies of the header
/// hooks (leaving an i32 action). Strings: "x-plugin" at 16, "x-seen" at 32,
/// "yes" at 48, "denied" at 64.
pub(crate) fn plugin(dir: &Path, name: &str, request: &str, response: &str) -> PathBuf {
    let wasm = wat_module(
        r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_buffer_bytes" (func $buffer (param i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(data (i32.const 16) "x-plugin")
          (data (i32.const 32) "x-seen")
          (data (i32.const 48) "yes")
          (data (i32.const 64) "denied")
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {request})
          (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) {response})"#
        ),
    );
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    path
}

/// A proxy-wasm module: `imports`, then linear memory, a bump allocator at 4096,
/// the ABI version export and context creation, then `rest` (data and hooks).
pub(crate) fn wat_module(imports: &str, rest: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
          {imports}
          (memory (export "memory") 1)
          (global $heap (mut i32) (i32.const 4096))
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $heap))
            (global.set $heap (i32.add (global.get $heap) (local.get $n)))
            (local.get $p))
          (func (export "proxy_on_context_create") (param i32 i32))
          {rest}
        )"#
    );
    wat::parse_str(&wat).unwrap_or_else(|e| panic!("{e}\n{wat}"))
}

/// Adds `x-plugin: <its configuration>` to the request, `x-seen: yes` to the response.
pub(crate) const ADD_HEADERS: (&str, &str) = (
    "(if (i32.eqz (call $buffer (i32.const 7) (i32.const 0) (i32.const 1000) (i32.const 900) (i32.const 904)))
       (then (drop (call $add (i32.const 0) (i32.const 16) (i32.const 8) (i32.load (i32.const 900)) (i32.load (i32.const 904))))))
     (i32.const 0)",
    "(drop (call $add (i32.const 2) (i32.const 32) (i32.const 6) (i32.const 48) (i32.const 3))) (i32.const 0)",
);
pub(crate) const DENY: &str = "(drop (call $respond (i32.const 401) (i32.const 0) (i32.const 0) (i32.const 64) (i32.const 6) (i32.const 0) (i32.const 0) (i32.const -1))) (i32.const 1)";
const TRAP: &str = "(unreachable)";
const LOOP: &str = "(loop $l (br $l)) (i32.const 0)";
pub(crate) const CONTINUE: &str = "(i32.const 0)";

pub(crate) fn route(name: &str, prefix: &str, plugins: &[(&str, &Path, &str)]) -> String {
    let mut out =
        format!("[[routes]]\nname = \"{name}\"\npool = \"p\"\npath_prefix = \"{prefix}\"\n");
    for (pname, file, extra) in plugins {
        out.push_str(&format!(
            "[[routes.plugins]]\nname = \"{pname}\"\nfile = \"{}\"\n{extra}\n",
            file.display()
        ));
    }
    out
}

pub(crate) fn config(origin: std::net::SocketAddr, routes: &[String]) -> String {
    format!(
        "[[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\n[[pools]]\nname = \"p\"\nendpoints = [\"{origin}\"]\n{}",
        routes.join("\n")
    )
}

#[tokio::test]
async fn a_plugin_changes_headers_seen_by_the_upstream_and_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let add = plugin(dir.path(), "add", ADD_HEADERS.0, ADD_HEADERS.1);
    let gw = Gateway::start(&config(
        origin.addr,
        &[
            route("raw", "/raw", &[("add", &add, "configuration = \"hello\"")]),
            route(
                "table",
                "/table",
                &[("add", &add, "configuration = { k = \"v\" }")],
            ),
            route("plain", "/", &[]),
        ],
    ))
    .await;
    let res = gw.get("/raw").await;
    assert_eq!(res.headers()["x-seen"], "yes");
    let body = json(res).await;
    assert_eq!(
        body["headers"]["x-plugin"], "hello",
        "a string configuration arrives as raw bytes"
    );
    let body = json(gw.get("/table").await).await;
    assert_eq!(
        body["headers"]["x-plugin"], r#"{"k":"v"}"#,
        "a table arrives as JSON"
    );
    let res = gw.get("/other").await;
    assert!(
        res.headers().get("x-seen").is_none(),
        "plugins are per route"
    );
    assert!(json(res).await["headers"].get("x-plugin").is_none());
    let sample = "gantry_plugin_calls_total{hook=\"request\",outcome=\"continue\",plugin=\"add\",route=\"raw\"}";
    assert_eq!(gw.metric(sample).await, Some(1.0));
}

#[tokio::test]
async fn a_local_response_stops_the_chain_before_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let deny = plugin(dir.path(), "deny", DENY, CONTINUE);
    let add = plugin(dir.path(), "add", ADD_HEADERS.0, ADD_HEADERS.1);
    let gw = Gateway::start(&config(
        origin.addr,
        &[route("r", "/", &[("deny", &deny, ""), ("add", &add, "")])],
    ))
    .await;
    let res = gw.get("/secret").await;
    assert_eq!(res.status(), 401);
    assert!(
        res.headers().get("x-seen").is_none(),
        "the chain stopped at the first plugin"
    );
    assert_eq!(res.text().await.unwrap(), "denied");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn a_trapping_plugin_fails_closed_with_500_or_open_by_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let trap = plugin(dir.path(), "trap", TRAP, CONTINUE);
    let gw = Gateway::start(&config(
        origin.addr,
        &[
            route("closed", "/closed", &[("broken", &trap, "")]),
            route("open", "/open", &[("broken", &trap, "failure = \"open\"")]),
        ],
    ))
    .await;
    for _ in 0..3 {
        let res = gw.get("/closed").await;
        assert_eq!(res.status(), 500);
        let body = json(res).await;
        assert_eq!(body["error"]["code"], "plugin_failed");
        assert_eq!(body["error"]["message"], "plugin `broken` failed");
        assert_eq!(gw.get("/open").await.status(), 200);
    }
    assert_eq!(
        origin.hits(),
        3,
        "only the fail-open route reached the upstream"
    );
    let sample = "gantry_plugin_calls_total{hook=\"request\",outcome=\"error\",plugin=\"broken\",route=\"closed\"}";
    assert_eq!(gw.metric(sample).await, Some(3.0));
}

#[tokio::test]
async fn a_looping_plugin_is_cut_off_and_other_routes_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let spin = plugin(dir.path(), "spin", LOOP, CONTINUE);
    let gw = Gateway::start(&config(
        origin.addr,
        &[
            route("slow", "/slow", &[("spin", &spin, "cpu_per_call_ms = 5")]),
            route("fast", "/", &[]),
        ],
    ))
    .await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (client, url) = (
            gw.client.clone(),
            gw.url(if i % 2 == 0 { "/slow" } else { "/fast" }),
        );
        tasks.push(tokio::spawn(async move {
            (
                url.ends_with("/slow"),
                client.get(url).send().await.unwrap().status().as_u16(),
            )
        }));
    }
    for t in tasks {
        let (slow, status) = t.await.unwrap();
        assert_eq!(status, if slow { 500 } else { 200 });
    }
    // Cut off at the CPU limit each time it runs; after 5 failures in a row it is
    // left out (unhealthy, with backoff) and the failure policy applies at once.
    let hits = gw
        .metric("gantry_plugin_limit_hits_total{limit=\"cpu\",plugin=\"spin\"}")
        .await
        .unwrap();
    let skipped = gw
        .metric("gantry_plugin_calls_total{hook=\"request\",outcome=\"unhealthy\",plugin=\"spin\",route=\"slow\"}")
        .await
        .unwrap_or(0.0);
    assert!(hits >= 5.0, "{hits}");
    assert_eq!(hits + skipped, 10.0);
}

#[tokio::test]
async fn the_response_phase_can_replace_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let deny_late = plugin(dir.path(), "late", CONTINUE, DENY);
    let trap_late = plugin(dir.path(), "late-trap", CONTINUE, TRAP);
    let gw = Gateway::start(&config(
        origin.addr,
        &[
            route("late", "/late", &[("late", &deny_late, "")]),
            route("trap", "/", &[("late-trap", &trap_late, "")]),
        ],
    ))
    .await;
    let res = gw.get("/late").await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.text().await.unwrap(), "denied");
    let res = gw.get("/x").await;
    assert_eq!(res.status(), 500);
    assert_eq!(json(res).await["error"]["code"], "plugin_failed");
}

#[test]
fn plugin_configuration_problems_name_the_field() {
    let text = "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:1\"\n[[pools]]\nname = \"p\"\nendpoints = [\"127.0.0.1:2\"]\n\
                [[routes]]\nname = \"r\"\npool = \"p\"\nmax_body_bytes = 1000000\n[[routes.plugins]]\nname = \"a\"\nfile = \"/nonexistent.wasm\"\nconfiguration = 5\nmemory_bytes = 10\nupstreams = [\"p\", \"nope\"]\n";
    let err = gantry_config::parse(text, "t.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.toml: routes[0].plugins[0].file: cannot read /nonexistent.wasm"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].plugins[0].configuration: must be a string"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].plugins[0].memory_bytes: 10 is below one Wasm page"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].plugins[0].upstreams[1]: no pool named `nope`"),
        "{err}"
    );
    assert!(!err.contains("upstreams[0]"), "`p` is a pool: {err}");
    assert!(
        err.contains("routes[0].max_body_bytes: 1000000 is over 65536"),
        "{err}"
    );
    let huge = text.replace("memory_bytes = 10", "memory_bytes = 2147483648");
    let err = gantry_config::parse(&huge, "t.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0].plugins[0].memory_bytes: 2147483648 is over 1073741824, the most the plugin engine reserves for one instance"),
        "{err}"
    );
    // Two routes' plugins that each fit but not together.
    let two = format!(
        "{text}max_instances = 600\n[[routes]]\nname = \"s\"\npool = \"p\"\npath_prefix = \"/s\"\n[[routes.plugins]]\nname = \"b\"\nfile = \"/nonexistent.wasm\"\nmax_instances = 600\n"
    );
    let err = gantry_config::parse(&two, "t.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[1].plugins[0].max_instances: brings the plugins' max_instances to 1200, over 1000 (the plugin engine's instance slots, shared by every plugin)"),
        "{err}"
    );
    assert!(!err.contains("routes[0].plugins[0].max_instances"), "{err}");
}

/// An example plugin built from source with the public `proxy-wasm` SDK by
/// scripts/build-plugins.sh (which scripts/test.sh runs first).
pub(crate) fn example(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/examples/target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh",
        path.display()
    );
    path
}

#[tokio::test]
async fn the_add_header_example_built_with_the_proxy_wasm_sdk_runs_unmodified() {
    let origin = Origin::start("o").await;
    let file = example("add_header");
    let configuration = "configuration = { request = { \"x-team\" = \"edge\" }, response = { \"x-served-by\" = \"gantry\" } }";
    let gw = Gateway::start(&config(
        origin.addr,
        &[route("r", "/", &[("add-header", &file, configuration)])],
    ))
    .await;
    for _ in 0..3 {
        let res = gw.get("/hello").await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-served-by"], "gantry");
        let body = json(res).await;
        assert_eq!(body["headers"]["x-team"], "edge");
        assert_eq!(body["path"], "/hello");
    }
}

#[test]
fn a_plugin_that_rejects_its_configuration_stops_start_up_naming_it() {
    let file = example("add_header");
    let text = format!(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[[pools]]\nname = \"p\"\nendpoints = [\"127.0.0.1:2\"]\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n[[routes.plugins]]\nname = \"add-header\"\nfile = \"{}\"\nconfiguration = {{ request = 5 }}\n",
        file.display()
    );
    let config = gantry_config::parse(&text, "t.toml", Path::new(".")).unwrap();
    let err = match gantry::Gantry::build(config) {
        Ok(_) => panic!("a plugin with a bad configuration was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("route `r`")
            && err.contains("plugin `add-header`")
            && err.contains("rejected its configuration"),
        "{err}"
    );
}

#[tokio::test]
async fn the_api_key_auth_example_denies_without_a_configured_key() {
    let origin = Origin::start("o").await;
    let file = example("api_key_auth");
    let gw = Gateway::start(&config(
        origin.addr,
        &[
            route(
                "private",
                "/private",
                &[(
                    "auth",
                    &file,
                    "configuration = { keys = [\"k-1\", \"k-2\"] }",
                )],
            ),
            route("public", "/", &[]),
        ],
    ))
    .await;
    let res = gw.get("/private/x").await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(json(res).await["error"]["code"], "invalid_api_key");
    let res = gw
        .client
        .get(gw.url("/private/x"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(origin.hits(), 0, "denied requests never reach the upstream");
    let res = gw
        .client
        .get(gw.url("/private/x"))
        .header("x-api-key", "k-2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = json(res).await;
    assert!(
        body["headers"].get("x-api-key").is_none(),
        "the key is not forwarded"
    );
    assert_eq!(
        gw.get("/public").await.status(),
        200,
        "other routes are not guarded"
    );
}

/// A plugin that counts requests in a counter it defines, named `name`.
fn counting(name: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
      (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "{name}")
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $define (i32.const 0) (i32.const 16) (i32.const {len}) (i32.const 900)))
        (drop (call $inc (i32.load (i32.const 900)) (i64.const 1)))
        (i32.const 0)))"#,
        len = name.len()
    );
    wat::parse_str(wat).unwrap()
}

#[tokio::test]
async fn metrics_a_plugin_defines_are_exported_and_leave_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let file = dir.path().join("count.wasm");
    std::fs::write(&file, counting("requests_seen")).unwrap();
    let gw = Gateway::start(&config(
        origin.addr,
        &[route("r", "/", &[("count", &file, "")])],
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    let sample = "gantry_plugin_metric{kind=\"counter\",name=\"requests_seen\",plugin=\"count\",route=\"r\"}";
    assert_eq!(gw.metric(sample).await, Some(3.0));
    // A new version defines another metric: the old series leaves /metrics.
    replace(&file, &counting("hits"));
    let res = gw.admin_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(gw.get("/").await.status(), 200);
    let page = gw.metrics().await;
    assert!(!page.contains("requests_seen"), "{page}");
    assert!(page.contains("name=\"hits\""), "{page}");
}

/// A plugin that adds `x-version: <version>` to responses.
fn versioned(version: u8) -> Vec<u8> {
    let wat = format!(
        r#"(module
          (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "x-version")
          (data (i32.const 32) "{version}")
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
            (drop (call $add (i32.const 2) (i32.const 16) (i32.const 9) (i32.const 32) (i32.const 1)))
            (i32.const 0)))"#
    );
    wat::parse_str(wat).unwrap()
}

/// Replace a file the way deploy tools do: write aside, then rename over it.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn hot_reload_swaps_a_plugin_under_load_without_failing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let file = dir.path().join("v.wasm");
    std::fs::write(&file, versioned(1)).unwrap();
    let gw = Gateway::start(&config(
        origin.addr,
        &[route("r", "/", &[("v", &file, "")])],
    ))
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, stop) = (gw.client.clone(), gw.url("/"), stop.clone());
        load.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let res = client.get(&url).send().await.unwrap();
                let version = res
                    .headers()
                    .get("x-version")
                    .map(|v| v.to_str().unwrap().to_string());
                seen.push((res.status().as_u16(), version));
            }
            seen
        }));
    }
    eventually("traffic flowing", || async { origin.hits() > 20 }).await;

    replace(&file, &versioned(2));
    let res = gw.admin_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(res.status(), 200);
    assert!(json(res).await["plugins"]["reloaded"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "r/v"));
    eventually("new version serving", || async {
        gw.get("/")
            .await
            .headers()
            .get("x-version")
            .is_some_and(|v| v == "2")
    })
    .await;

    // A broken module is refused; the running version keeps serving.
    replace(&file, b"not wasm at all");
    let res = gw.admin_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(res.status(), 500);
    let report = json(res).await;
    assert!(
        report["plugins"]["failed"][0]
            .as_str()
            .unwrap()
            .contains("not a valid module"),
        "{report}"
    );
    let hits = origin.hits();
    eventually("more traffic after the failed reload", || async {
        origin.hits() > hits + 20
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut seen = Vec::new();
    for t in load {
        seen.extend(t.await.unwrap());
    }
    assert!(
        seen.iter().all(|(status, _)| *status == 200),
        "every request succeeded: {:?}",
        seen.iter().filter(|(s, _)| *s != 200).collect::<Vec<_>>()
    );
    assert!(
        seen.iter().all(|(_, v)| v.is_some()),
        "every response went through a plugin version"
    );
    assert_eq!(
        seen.last().unwrap().1.as_deref(),
        Some("2"),
        "the broken module never replaced v2"
    );
    assert!(seen.iter().any(|(_, v)| v.as_deref() == Some("1")));
    let reloads = gw
        .metric("gantry_plugin_reloads_total{plugin=\"v\",result=\"error\"}")
        .await;
    assert!(reloads.unwrap_or(0.0) >= 1.0);
}

/// Body hooks: the request headers hook pauses for the body and the body hook
/// replaces it; the response headers hook drops `content-length` (as a plugin
/// that rewrites bodies must) and the response body hook pauses until the end,
/// then replaces the whole answer.
fn body_rewriter(dir: &Path) -> PathBuf {
    let wasm = wat_module(
        r#"(import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 16) "REWRITTEN")
      (data (i32.const 32) "content-length")
      (data (i32.const 64) "{\"replaced\":true}")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
        (drop (call $set (i32.const 0) (i32.const 0) (local.get 1) (i32.const 16) (i32.const 9)))
        (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (drop (call $remove (i32.const 2) (i32.const 32) (i32.const 14)))
        (i32.const 0))
      (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
        (if (i32.eqz (local.get 2)) (then (return (i32.const 1))))
        (drop (call $set (i32.const 1) (i32.const 0) (local.get 1) (i32.const 64) (i32.const 17)))
        (i32.const 0))"#,
    );
    let path = dir.join("bodies.wasm");
    std::fs::write(&path, wasm).unwrap();
    path
}

#[tokio::test]
async fn body_hooks_rewrite_the_request_and_response_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let file = body_rewriter(dir.path());
    let gw = Gateway::start(&config(
        origin.addr,
        &[route("b", "/", &[("bodies", &file, "")])],
    ))
    .await;
    for _ in 0..2 {
        let res = gw
            .client
            .post(gw.url("/upload"))
            .body("the original request body")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), r#"{"replaced":true}"#);
    }
    // What the upstream got: ask it past the response rewrite, with a plugin-free
    // route in front of the same origin.
    let gw2 = Gateway::start(&config(
        origin.addr,
        &[
            route("b", "/b", &[("bodies", &file, "")]),
            route("plain", "/", &[]),
        ],
    ))
    .await;
    let res = gw2
        .client
        .post(gw2.url("/b/x"))
        .body("x".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), r#"{"replaced":true}"#);
    assert_eq!(origin.hits(), 3);
    let last = origin.last_body().expect("the origin saw a body");
    assert_eq!(last.0, "REWRITTEN", "the upstream got the plugin's body");
    assert_eq!(last.1.as_deref(), Some("9"), "with its length");
    let too_big = gw2
        .client
        .post(gw2.url("/b/x"))
        .body("x".repeat(70_000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        too_big.status(),
        413,
        "a plugin route reads at most its max_body_bytes"
    );
}

/// Copies every request property a plugin may read into a request header
/// (`x-path`, `x-method`, ...), so the origin shows what the plugin saw.
fn property_reader(dir: &Path) -> PathBuf {
    let copies: &[(&str, &str)] = &[
        (r"request\00path", "x-path"),
        (r"request\00method", "x-method"),
        (r"request\00scheme", "x-scheme"),
        (r"request\00id", "x-id"),
        ("route_name", "x-route"),
        (r"source\00address", "x-source"),
        ("plugin_name", "x-plugin-name"),
        (r"request\00headers\00x-probe", "x-probe-seen"),
        (r"request\00nothing", "x-nothing"),
    ];
    let mut data = String::new();
    let mut calls = String::new();
    for (i, (property, header)) in copies.iter().enumerate() {
        let (p, h) = (100 + i * 64, 132 + i * 64);
        let plen = property.len() - 2 * property.matches(r"\00").count();
        data.push_str(&format!(
            "(data (i32.const {p}) \"{property}\") (data (i32.const {h}) \"{header}\")\n"
        ));
        calls.push_str(&format!(
            "(call $copy (i32.const {p}) (i32.const {plen}) (i32.const {h}) (i32.const {}))\n",
            header.len()
        ));
    }
    let wasm = wat_module(
        r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"{data}
          (func $copy (param $p i32) (param $pl i32) (param $h i32) (param $hl i32)
            (if (i32.eqz (call $prop (local.get $p) (local.get $pl) (i32.const 900) (i32.const 904)))
              (then (drop (call $add (i32.const 0) (local.get $h) (local.get $hl)
                (i32.load (i32.const 900)) (i32.load (i32.const 904)))))))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {calls} (i32.const 0))"#
        ),
    );
    let path = dir.join("properties.wasm");
    std::fs::write(&path, wasm).unwrap();
    path
}

#[tokio::test]
async fn a_plugin_reads_the_request_properties() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let reader = property_reader(dir.path());
    let gw = Gateway::start(&config(
        origin.addr,
        &[route("props", "/props", &[("reader", &reader, "")])],
    ))
    .await;
    let res = client()
        .get(gw.url("/props/a?b=c"))
        .header("x-probe", "probed")
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = json(res).await["headers"].clone();
    assert_eq!(seen["x-path"], "/props/a", "the path without the query");
    assert_eq!(seen["x-method"], "GET");
    assert_eq!(seen["x-scheme"], "http");
    assert_eq!(seen["x-id"], "req-42");
    assert_eq!(seen["x-route"], "props");
    assert_eq!(seen["x-plugin-name"], "reader");
    assert_eq!(seen["x-probe-seen"], "probed");
    let source = seen["x-source"].as_str().expect("source.address is set");
    assert!(
        source.starts_with("127.0.0.1:"),
        "the client's address and port: {source}"
    );
    assert!(
        seen.get("x-nothing").is_none(),
        "an unknown property is NotFound"
    );
}

/// A plugin allowed more linear memory than the engine's default slot gets it:
/// the engine's pooling allocator is sized from the configuration, so
/// `memory_bytes` is the limit a plugin meets, not a smaller one of the host's.
#[tokio::test]
async fn a_plugin_grows_to_the_memory_its_configuration_allows() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    // 80 MiB and a page more: past the engine's default 64 MiB slots.
    let wasm = wat_module(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (if (i32.eq (memory.grow (i32.const 1280)) (i32.const -1)) (then unreachable))
             (i32.const 0))"#,
    );
    let file = dir.path().join("big.wasm");
    std::fs::write(&file, wasm).unwrap();
    let gw = Gateway::start(&config(
        origin.addr,
        &[
            route(
                "big",
                "/big",
                &[("big", &file, "memory_bytes = 100663296\nmax_instances = 2")],
            ),
            route(
                "small",
                "/small",
                &[("small", &file, "memory_bytes = 67108864\nmax_instances = 2")],
            ),
        ],
    ))
    .await;
    assert_eq!(
        gw.get("/big").await.status(),
        200,
        "96 MiB allowed, 80 MiB used"
    );
    assert_eq!(
        gw.get("/small").await.status(),
        500,
        "64 MiB allowed: the plugin meets its own limit"
    );
    let sample = "gantry_plugin_limit_hits_total{limit=\"memory\",plugin=\"small\"}";
    assert_eq!(
        gw.metric(sample).await,
        Some(1.0),
        "counted as its memory limit"
    );
}
