//! The admin listener: health, readiness, Prometheus metrics.

use crate::harness::*;

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let origin = Origin::start("o").await;
    let api = "[[routes]]
name = \"api\"
pool = \"p\"
path_prefix = \"/api\"";
    // The catch-all route only serves another host, so `/nope` matches nothing here.
    let config = one_pool(&[origin.addr], "", api)
        .replace("name = \"all\"", "name = \"all\"\nhosts = [\"other.test\"]");
    let gw = Gateway::start(&config).await;
    for _ in 0..3 {
        gw.get("/api/x").await;
    }
    gw.client
        .get(gw.url("/api/x"))
        .header("x-status", "500")
        .send()
        .await
        .unwrap();
    gw.get("/nope").await;
    // Metrics are recorded in the logging phase, after the response went out.
    eventually("every request logged", || async {
        gw.metric("gantry_request_duration_seconds_count{route=\"api\"}")
            .await
            == Some(4.0)
            && gw
                .metric("gantry_requests_total{route=\"none\",status=\"404\"}")
                .await
                == Some(1.0)
    })
    .await;
    assert_eq!(
        gw.metric("gantry_requests_total{route=\"api\",status=\"200\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        gw.metric("gantry_requests_total{route=\"api\",status=\"500\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        gw.metric("gantry_requests_total{route=\"none\",status=\"404\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        gw.metric("gantry_request_duration_seconds_count{route=\"api\"}")
            .await,
        Some(4.0)
    );
    let page = gw.metrics().await;
    assert!(page.contains("gantry_open_connections"), "{page}");
    assert!(page.contains(&format!(
        "gantry_upstream_endpoint_healthy{{endpoint=\"{}\",pool=\"p\"}} 1",
        origin.addr
    )));

    let health = gw.admin_get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn reload_needs_the_admin_token_and_the_listener_refuses_foreign_hosts() {
    let origin = Origin::start("o").await;
    let gw = Gateway::start(&one_pool(&[origin.addr], "", "")).await;
    let reload = |token: Option<&'static str>| {
        let gw = &gw;
        async move { gw.admin_reload(token).await.status().as_u16() }
    };
    assert_eq!(reload(None).await, 401);
    assert_eq!(reload(Some("wrong-token-wrong-token")).await, 401);
    assert_eq!(reload(Some(ADMIN_TOKEN)).await, 200);
    // A page on another origin, rebinding its name to this address.
    for host in ["evil.example", "evil.example:9090", "attacker.test."] {
        let res = gw
            .client
            .get(format!("http://{}/metrics", gw.admin))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{host}");
    }
    for host in ["localhost:9090", "127.0.0.1", "[::1]:1"] {
        let res = gw
            .client
            .get(format!("http://{}/healthz", gw.admin))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{host}");
    }
}

#[tokio::test]
async fn without_a_configured_token_reload_is_refused() {
    let origin = Origin::start("o").await;
    let config = format!(
        "[admin]\naddress = \"{{admin}}\"\nhosts = [\"gantry-admin.internal\"]\n{}",
        one_pool(&[origin.addr], "", "")
    );
    let gw = Gateway::start(&config).await;
    let res = gw.admin_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(res.status(), 403);
    let res = gw
        .client
        .get(format!("http://{}/healthz", gw.admin))
        .header("host", "Gantry-Admin.internal:9090")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "a configured admin host name");
}

/// The dashboard in a real browser, every outside request blocked: it lists
/// the endpoints, and an inference backend's running count rises while a
/// stream is in flight. Screenshot: target/test-artifacts/dashboard.png.
#[tokio::test]
async fn the_dashboard_shows_endpoints_and_live_backend_load_in_a_real_browser() {
    use gantry_fixture_backend::{Behaviour, Fixture};
    use tokio::io::AsyncBufReadExt;
    let backend = Fixture::start(Behaviour {
        tokens: 80,
        inter_token_delay: std::time::Duration::from_millis(50),
        ..Behaviour::default()
    });
    let origin = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let (request, response) = crate::plugins::ADD_HEADERS;
    let plugin = crate::plugins::plugin(dir.path(), "tag", request, response);
    let config = crate::openai::ai_config(&[backend.addr], "")
        + &format!(
            "[[pools]]\nname = \"web\"\nendpoints = [\"{}\"]\n[[routes]]\nname = \"web\"\npath_prefix = \"/web\"\npool = \"web\"\n\
             [[routes.plugins]]\nname = \"tag\"\nfile = \"{}\"\n",
            origin.addr,
            plugin.display()
        );
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    // A request through the plugin that the origin answers 503: the plugin
    // counts a call, and the failure is listed.
    let failed = gw
        .client
        .get(gw.url("/web/x"))
        .header("x-status", "503")
        .header("x-request-id", "dashboard-failed-request")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 503);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = repo.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let mut browser = tokio::process::Command::new("python3")
        .arg(repo.join("proxy/tests/python/admin_dashboard.py"))
        .arg(format!("http://{}", gw.admin))
        .arg(&shot)
        .arg(backend.addr.to_string())
        .arg("web/tag")
        .arg("dashboard-failed-request")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/setup.sh installs playwright and chromium)");
    let mut lines = tokio::io::BufReader::new(browser.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await;
    assert!(
        matches!(&ready, Ok(Ok(Some(l))) if l == "READY"),
        "the page listed the backend: {ready:?}"
    );
    // A stream in flight: the page shows the backend running it.
    let stream = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .json(&crate::openai::chat(true))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let last = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the page saw the stream")
        .unwrap()
        .expect("a report");
    let out = browser.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(stream);
    let seen: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        seen["outside"],
        serde_json::json!([]),
        "requests to other origins"
    );
    assert_eq!(
        seen["endpoints"],
        serde_json::json!([origin.addr.to_string()])
    );
    assert!(seen["running"].as_str().unwrap().starts_with('1'), "{seen}");
    assert!(seen["plugin_calls"].as_str().unwrap() >= "1", "{seen}");
    let error = seen["error"].to_string();
    assert!(
        error.contains("503") && error.contains("the upstream's answer"),
        "{seen}"
    );
    let config = seen["config"].as_str().unwrap();
    assert!(
        config.starts_with("configuration version 1 (sha256 "),
        "{seen}"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot"
    );
}
