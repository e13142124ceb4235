//! Traces: W3C trace context in and out, the request's server span, one
//! GenAI client span per backend attempt, the backend's queue, prefill and
//! decode spans under it, all exported over OTLP to a receiver in the test.

use crate::collector::{Collector, Span};
use crate::harness::*;
use crate::openai::{ai_config, chat};
use gantry_fixture_backend::{Behaviour, Fixture};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn client_traceparent() -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
}

/// GET `path` with the client's `traceparent` and a `tracestate`; what the
/// origin saw.
async fn get_with_client_context(gw: &Gateway, path: &str) -> serde_json::Value {
    let res = gw
        .client
        .get(gw.url(path))
        .header("traceparent", client_traceparent())
        .header("tracestate", "client=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    json(res).await
}

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "one {what} span: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_request_is_one_trace_from_the_client_to_the_engine() {
    let collector = Collector::grpc().await;
    let backend = crate::isolation::real_backend_with(&collector.section("grpc", "")).await;
    let config = ai_config(&[backend.addr], "")
        .replace("[\"fixture\", \"fixture-embed\"]", "[\"smollm2-135m\"]")
        + &collector.section("grpc", "accept_incoming = \"always\"");
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;

    let res = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("traceparent", client_traceparent())
        .json(
            &json!({"model": "smollm2-135m", "max_tokens": 3, "temperature": 0.5, "top_p": 0.9,
                      "messages": [{"role": "user", "content": "Count to ten."}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer = json(res).await;

    let spans = collector
        .wait_for("the gateway's two spans and the backend's three", |s| {
            s.iter().filter(|s| s.trace_id == CLIENT_TRACE).count() >= 5
        })
        .await;
    let spans: Vec<Span> = spans
        .into_iter()
        .filter(|s| s.trace_id == CLIENT_TRACE)
        .collect();
    assert_eq!(spans.len(), 5, "{spans:#?}");

    // The gateway continues the client's trace.
    let server = one(&spans, "server", |s| s.kind == SpanKind::Server);
    assert_eq!(
        (server.service.as_str(), server.name.as_str()),
        ("gantry", "POST /v1")
    );
    assert_eq!(server.parent_span_id, CLIENT_SPAN);
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.str("http.route"), Some("/v1"));

    // One attempt, named and described as the GenAI conventions say, its
    // numbers the answer's own.
    let attempt = one(&spans, "attempt", |s| s.kind == SpanKind::Client);
    assert_eq!(attempt.name, "chat smollm2-135m");
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(attempt.str("gen_ai.operation.name"), Some("chat"));
    assert_eq!(attempt.str("gen_ai.provider.name"), Some("gantry"));
    assert_eq!(attempt.str("gen_ai.request.model"), Some("smollm2-135m"));
    assert_eq!(attempt.str("gen_ai.response.model"), Some("smollm2-135m"));
    assert_eq!(attempt.int("gen_ai.request.max_tokens"), Some(3));
    assert_eq!(attempt.float("gen_ai.request.temperature"), Some(0.5));
    let top_p = attempt.float("gen_ai.request.top_p").unwrap();
    assert!((top_p - 0.9).abs() < 1e-6, "{top_p}");
    let usage = &answer["usage"];
    assert_eq!(
        attempt.int("gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64()
    );
    assert_eq!(
        attempt.int("gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64()
    );
    assert_eq!(
        attempt.strs("gen_ai.response.finish_reasons"),
        Some(vec![answer["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_string()])
    );
    assert_eq!(attempt.str("gen_ai.response.id"), answer["id"].as_str());
    assert_eq!(attempt.str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        attempt.int("server.port"),
        Some(i64::from(backend.addr.port()))
    );
    assert!(attempt.attr("error.type").is_none());

    // The backend's phases continue under the attempt, in order, inside it.
    let phase = |name: &str| {
        one(&spans, name, |s| {
            s.service == "gantry-backend" && s.name == format!("{name} smollm2-135m")
        })
        .clone()
    };
    let (queue, prefill, decode) = (phase("queue"), phase("prefill"), phase("decode"));
    for p in [&queue, &prefill, &decode] {
        assert_eq!(p.parent_span_id, attempt.span_id, "{p:#?}");
        assert!(
            attempt.start_ns <= p.start_ns && p.end_ns <= attempt.end_ns,
            "{p:#?} within {attempt:#?}"
        );
    }
    assert!(queue.end_ns <= prefill.start_ns && prefill.end_ns <= decode.start_ns);
    assert_eq!(
        prefill.int("gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64()
    );
    assert_eq!(
        decode.int("gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64()
    );
    backend.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_two_attempt_spans_the_failed_one_with_its_error() {
    let collector = Collector::grpc().await;
    let behaviour = Behaviour {
        tokens: 10,
        inter_token_delay: Duration::from_millis(20),
        ..Behaviour::default()
    };
    let mut backends = [Fixture::start(behaviour.clone()), Fixture::start(behaviour)];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let config = ai_config(&addrs, "") + &collector.section("grpc", "");
    let gw = Gateway::start(&config).await;
    for b in &addrs {
        gw.wait_backend_healthy("ai", *b).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&chat(false))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    eventually("the victim is generating", || async {
        backends[0].stats.running.load(Ordering::SeqCst) > 0
    })
    .await;
    backends[0].kill();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let victim_port = i64::from(addrs[0].port());
    let failed_there = |s: &Span| {
        s.kind == SpanKind::Client
            && s.int("server.port") == Some(victim_port)
            && s.attr("error.type").is_some()
    };
    // A request's trace, once its server span (the last to end) is in.
    let spans = collector
        .wait_for(
            "a failed attempt on the killed backend, and its request",
            |s| {
                s.iter().filter(|f| failed_there(f)).any(|f| {
                    s.iter()
                        .any(|r| r.trace_id == f.trace_id && r.kind == SpanKind::Server)
                })
            },
        )
        .await;
    let failed = spans
        .iter()
        .filter(|f| failed_there(f))
        .find(|f| {
            spans
                .iter()
                .any(|r| r.trace_id == f.trace_id && r.kind == SpanKind::Server)
        })
        .unwrap();
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == failed.trace_id)
        .collect();
    let server = trace
        .iter()
        .find(|s| s.kind == SpanKind::Server)
        .expect("the request's span");
    let attempts: Vec<&&Span> = trace
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .collect();
    assert_eq!(attempts.len(), 2, "{trace:#?}");
    for a in &attempts {
        assert_eq!(a.name, "chat fixture");
        assert_eq!(a.parent_span_id, server.span_id);
    }
    let answered = attempts
        .iter()
        .find(|a| a.span_id != failed.span_id)
        .unwrap();
    assert_eq!(
        answered.int("server.port"),
        Some(i64::from(addrs[1].port()))
    );
    assert!(answered.attr("error.type").is_none());
    assert!(answered.int("gen_ai.usage.output_tokens").unwrap() > 0);
    assert_eq!(server.int("http.response.status_code"), Some(200));
}

#[tokio::test]
async fn an_http_upstream_gets_the_trace_and_a_client_context_not_believed_is_replaced() {
    let collector = Collector::http().await;
    let origin = Origin::start("o").await;
    // No trusted proxies: the test client's context is not believed.
    let gw =
        Gateway::start(&(one_pool(&[origin.addr], "", "") + &collector.section("http", ""))).await;
    let seen = get_with_client_context(&gw, "/hello").await;
    let sent = seen["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(seen["headers"].get("tracestate").is_none(), "{seen}");

    let spans = collector
        .wait_for("the request's span", |s| !s.is_empty())
        .await;
    let server = one(&spans, "server", |s| s.kind == SpanKind::Server);
    assert_eq!(server.name, "GET /");
    assert_ne!(server.trace_id, CLIENT_TRACE, "a new trace");
    assert_eq!(server.parent_span_id, "", "a root");
    assert_eq!(
        server.links,
        vec![(CLIENT_TRACE.to_string(), CLIENT_SPAN.to_string())],
        "linked to the client's context"
    );
    // The upstream continues the gateway's span.
    assert_eq!(
        sent,
        format!("00-{}-{}-01", server.trace_id, server.span_id)
    );
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.str("gantry.route"), Some("all"));
}

#[tokio::test]
async fn tracing_off_touches_no_trace_header() {
    let origin = Origin::start("o").await;
    let gw = Gateway::start(&one_pool(&[origin.addr], "", "")).await;
    let seen = json(gw.get("/").await).await;
    assert!(seen["headers"].get("traceparent").is_none(), "{seen}");
    let seen = get_with_client_context(&gw, "/").await;
    assert_eq!(seen["headers"]["traceparent"], client_traceparent());
    assert_eq!(seen["headers"]["tracestate"], "client=1");
    assert_eq!(
        gw.metric("gantry_trace_spans_total{result=\"exported\"}")
            .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_costs_requests_nothing_and_its_spans_are_counted() {
    let origin = Origin::start("o").await;
    let down = free_addr(); // nothing listens: every export fails
    let traces = format!(
        "[traces]\nendpoint = \"http://{down}\"\nqueue_spans = 8\nbatch_spans = 4\n\
         batch_delay_ms = 10\nexport_timeout_ms = 200\n"
    );
    let gw = Gateway::start(&(one_pool(&[origin.addr], "", "") + &traces)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (gw.client.clone(), gw.url("/"));
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..10 {
                statuses.push(client.get(&url).send().await.unwrap().status().as_u16());
            }
            statuses
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().iter().all(|&s| s == 200));
    }
    let count = |result: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(&format!("gantry_trace_spans_total{{result=\"{result}\"}}"))
                .await
                .unwrap_or(0.0)
        }
    };
    // 200 spans ended: at most 8 wait at once; each other one was dropped
    // or failed with its export, none is held.
    eventually("every span accounted for", || async {
        count("dropped").await + count("failed").await == 200.0
    })
    .await;
    assert!(count("dropped").await > 0.0);
    assert!(count("failed").await > 0.0);
    assert_eq!(count("exported").await, 0.0);
}

#[tokio::test]
async fn spans_not_sampled_are_not_exported_but_their_context_still_goes_upstream() {
    let collector = Collector::grpc().await;
    let origin = Origin::start("o").await;
    let config =
        one_pool(&[origin.addr], "", "") + &collector.section("grpc", "sampling_ratio = 0.0");
    let gw = Gateway::start(&config).await;
    let seen = json(gw.get("/").await).await;
    let sent = seen["headers"]["traceparent"].as_str().unwrap();
    assert!(sent.starts_with("00-") && sent.ends_with("-00"), "{sent}");
    // A sampled request after it is exported; the unsampled one never was.
    let config = one_pool(&[origin.addr], "", "") + &collector.section("grpc", "");
    let sampled = Gateway::start(&config).await;
    sampled.get("/").await;
    collector
        .wait_for("the sampled span", |s| !s.is_empty())
        .await;
    assert_eq!(collector.spans().len(), 1);
    assert!(!sent.contains(&collector.spans()[0].trace_id));
}

#[tokio::test]
async fn with_plugin_spans_each_hook_of_a_sampled_request_is_a_child_span() {
    use crate::plugins::{config, example, route};
    let collector = Collector::grpc().await;
    let origin = Origin::start("o").await;
    let file = example("add_header");
    let plugin = (
        "add-header",
        file.as_path(),
        "configuration = { request = { \"x-team\" = \"edge\" } }",
    );
    let gw = Gateway::start(
        &(config(origin.addr, &[route("r", "/", &[plugin])])
            + &collector.section("grpc", "plugin_spans = true")),
    )
    .await;
    assert_eq!(gw.get("/").await.status(), 200);
    let spans = collector
        .wait_for("the request and its two hooks", |s| s.len() >= 3)
        .await;
    let server = one(&spans, "server", |s| s.kind == SpanKind::Server);
    for hook in ["request", "response_headers"] {
        let span = one(&spans, hook, |s| {
            s.name == format!("plugin add-header {hook}")
        });
        assert_eq!(span.parent_span_id, server.span_id);
        assert_eq!(span.trace_id, server.trace_id);
        assert_eq!(span.str("gantry.plugin.outcome"), Some("continue"));
        assert!(server.start_ns <= span.start_ns && span.end_ns <= server.end_ns);
    }
}
