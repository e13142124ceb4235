//! gRPC calls and streams from a plugin: what the host hands the gateway, the
//! callbacks each answer reaches, cancelling, and the limits.

use crate::sandbox::*;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use gantry_plugins::{
    Callouts, Decision, GrpcCall, GrpcEvent, GrpcMessages, GrpcStatus, HttpCall, HttpCallResponse,
    PluginError, PluginLimits,
};
use std::time::Duration;

/// Strings: "side" at 64, service "svc.S" at 72, method "M" at 80, message
/// "ping" at 84, an empty map at 200; the token goes to 300.
const STRINGS: &str = r#"(data (i32.const 64) "side") (data (i32.const 72) "svc.S")
    (data (i32.const 80) "M") (data (i32.const 84) "ping")"#;

/// `proxy_grpc_call` of `M` on `svc.S` in pool `side`, sending "ping".
fn grpc_call(timeout_ms: u32) -> String {
    format!(
        "(call $grpc_call (i32.const 64) (i32.const 4) (i32.const 72) (i32.const 5) (i32.const 80) (i32.const 1)
           (i32.const 200) (i32.const 4) (i32.const 84) (i32.const 4) (i32.const {timeout_ms}) (i32.const 300))"
    )
}

/// `proxy_grpc_stream` to `M` on `svc.S` in pool `side`.
const GRPC_STREAM: &str =
    "(call $grpc_stream (i32.const 64) (i32.const 4) (i32.const 72) (i32.const 5)
    (i32.const 80) (i32.const 1) (i32.const 200) (i32.const 4) (i32.const 300))";

/// Answer `status` with the `len` bytes at `ptr` as the body.
fn respond(status: &str, ptr: &str, len: &str) -> String {
    format!(
        "(drop (call $respond {status} (i32.const 0) (i32.const 0) {ptr} {len}
           (i32.const 0) (i32.const 0) (i32.const -1)))"
    )
}

/// Callouts that hand every gRPC call to `answer` (HTTP calls fail).
struct Grpc<F>(F);

impl<'a, F> Callouts<'a> for Grpc<F>
where
    F: FnMut(GrpcCall) -> BoxStream<'static, GrpcEvent> + Send,
{
    fn http(
        &mut self,
        _: HttpCall,
    ) -> futures_util::future::BoxFuture<'a, Option<HttpCallResponse>> {
        Box::pin(async { None })
    }

    fn grpc(&mut self, call: GrpcCall) -> BoxStream<'a, GrpcEvent> {
        (self.0)(call)
    }
}

fn events(list: Vec<GrpcEvent>) -> BoxStream<'static, GrpcEvent> {
    stream::iter(list).boxed()
}

fn request(
    wasm: &[u8],
    limits: PluginLimits,
    callouts: impl Callouts<'static>,
) -> Result<Decision, PluginError> {
    let plugin = load_calling_side(wasm, limits);
    let mut ctx = plugin.start_request(vec![]).unwrap();
    ready(ctx.on_request(&mut request_headers(), None, callouts))
}

fn answered(decision: Result<Decision, PluginError>) -> (u16, String) {
    match decision {
        Ok(Decision::Respond(r)) => (r.status, String::from_utf8(r.body).unwrap()),
        other => panic!("expected a local response, got {other:?}"),
    }
}

/// A `proxy_on_grpc_close` that answers `status` (a WAT expression; the
/// close's code is at 500) with `proxy_get_status`'s message as the body.
fn answer_the_status(status: &str) -> String {
    format!(
        r#"(func (export "proxy_on_grpc_close") (param i32 i32 i32)
             (drop (call $status (i32.const 500) (i32.const 504) (i32.const 508)))
             {})"#,
        respond(
            status,
            "(i32.load (i32.const 504))",
            "(i32.load (i32.const 508))"
        )
    )
}

#[test]
fn a_grpc_calls_answer_reaches_proxy_on_grpc_receive() {
    // The answer's message comes back as the body, its size in the status.
    let on_receive = format!(
        r#"(func (export "proxy_on_grpc_receive") (param i32 i32 i32)
             (drop (call $buffer (i32.const 5) (i32.const 0) (local.get 2) (i32.const 400) (i32.const 404)))
             {})"#,
        respond(
            "(i32.add (i32.const 200) (local.get 2))",
            "(i32.load (i32.const 400))",
            "(i32.load (i32.const 404))"
        )
    );
    let wasm = module_with(
        &format!("(drop {}) (i32.const 1)", grpc_call(1000)),
        "(i32.const 0)",
        &format!("{STRINGS} {on_receive}"),
    );
    let mut seen = Vec::new();
    let callouts = Grpc(|call: GrpcCall| {
        let GrpcMessages::Unary(message) = &call.messages else {
            panic!("a unary call")
        };
        seen.push((
            call.upstream.clone(),
            call.path(),
            message.clone(),
            call.timeout,
        ));
        events(vec![GrpcEvent::Message(Bytes::from_static(b"pong!"))])
    });
    assert_eq!(
        answered(request(&wasm, PluginLimits::default(), callouts)),
        (205, "pong!".to_string())
    );
    assert_eq!(
        seen,
        [(
            "side".to_string(),
            "/svc.S/M".to_string(),
            Bytes::from_static(b"ping"),
            Duration::from_secs(1)
        )]
    );
}

#[test]
fn a_failed_grpc_call_closes_with_its_status_and_message() {
    let on_close = answer_the_status("(i32.add (i32.const 500) (i32.load (i32.const 500)))");
    let wasm = module_with(
        &format!("(drop {}) (i32.const 1)", grpc_call(0)),
        "(i32.const 0)",
        &format!("{STRINGS} {on_close}"),
    );
    let mut timeouts = Vec::new();
    let callouts = Grpc(|call: GrpcCall| {
        timeouts.push(call.timeout);
        events(vec![GrpcEvent::Close(GrpcStatus {
            code: 7,
            message: "denied".into(),
        })])
    });
    assert_eq!(
        answered(request(&wasm, PluginLimits::default(), callouts)),
        (507, "denied".to_string())
    );
    assert_eq!(
        timeouts,
        [PluginLimits::default().max_http_call_timeout],
        "no timeout gets the plugin's longest"
    );
}

/// Two "ping"s, the second ending the sending half.
const PING_PING: &[(u32, bool)] = &[(4, false), (4, true)];

/// A plugin that opens a stream, sends `sends` ("ping" cut to each length,
/// each maybe ending the sending half) and logs each callback as a letter at
/// 600 (length at 596), answering the log when the stream closes with the
/// close's status code added to 200.
fn stream_logger(sends: &[(u32, bool)], after_initial_metadata: &str) -> Vec<u8> {
    let log = |letter: u8| {
        format!(
            "(i32.store8 (i32.add (i32.const 600) (i32.load (i32.const 596))) (i32.const {letter}))
             (i32.store (i32.const 596) (i32.add (i32.load (i32.const 596)) (i32.const 1)))"
        )
    };
    let callbacks = format!(
        r#"(func (export "proxy_on_grpc_receive_initial_metadata") (param i32 i32 i32)
             {i} {after_initial_metadata})
           (func (export "proxy_on_grpc_receive") (param i32 i32 i32) {m})
           (func (export "proxy_on_grpc_receive_trailing_metadata") (param i32 i32 i32) {t})
           (func (export "proxy_on_grpc_close") (param i32 i32 i32)
             {c} {answer})"#,
        i = log(b'I'),
        m = log(b'M'),
        t = log(b'T'),
        c = log(b'C'),
        answer = respond(
            "(i32.add (i32.const 200) (local.get 2))",
            "(i32.const 600)",
            "(i32.load (i32.const 596))"
        ),
    );
    let sends: String = sends
        .iter()
        .map(|(len, end)| {
            format!(
                "(drop (call $grpc_send (i32.load (i32.const 300)) (i32.const 84) (i32.const {len}) (i32.const {})))",
                i32::from(*end)
            )
        })
        .collect();
    let request = format!("(drop {GRPC_STREAM}) {sends} (i32.const 1)");
    module_with(&request, "(i32.const 0)", &format!("{STRINGS} {callbacks}"))
}

/// A stream that echoes each message it is sent, between its metadata.
fn echo(call: GrpcCall) -> BoxStream<'static, GrpcEvent> {
    let GrpcMessages::Stream(queue) = call.messages else {
        panic!("a stream")
    };
    let echoed = stream::unfold(queue, |mut queue| async move {
        queue.recv().await.map(|m| (GrpcEvent::Message(m), queue))
    });
    events(vec![GrpcEvent::InitialMetadata(vec![(
        "x-a".into(),
        "1".into(),
    )])])
    .chain(echoed)
    .chain(events(vec![
        GrpcEvent::TrailingMetadata(vec![]),
        GrpcEvent::Close(GrpcStatus::ok()),
    ]))
    .boxed()
}

#[test]
fn a_grpc_stream_sends_its_messages_and_hears_every_event_in_order() {
    let wasm = stream_logger(PING_PING, "");
    assert_eq!(
        answered(request(&wasm, PluginLimits::default(), Grpc(echo))),
        (200, "IMMTC".to_string())
    );
}

#[test]
fn an_empty_message_is_sent_too() {
    // A message whose fields are all defaults encodes to nothing.
    let wasm = stream_logger(&[(0, true)], "");
    assert_eq!(
        answered(request(&wasm, PluginLimits::default(), Grpc(echo))),
        (200, "IMTC".to_string())
    );
}

#[test]
fn a_cancelled_stream_says_nothing_more() {
    // Cancelled on its initial metadata: no message, no close; with nothing
    // left to wait for, the request goes on.
    let wasm = stream_logger(
        PING_PING,
        "(drop (call $grpc_cancel (i32.load (i32.const 300))))",
    );
    assert_eq!(
        request(&wasm, PluginLimits::default(), Grpc(echo)).unwrap(),
        Decision::Continue
    );
}

#[test]
fn grpc_calls_count_with_http_calls_against_max_http_calls() {
    let wasm = module_with(
        &format!(
            "(drop {}) (drop {}) (i32.const 1)",
            http_call(64, 4),
            grpc_call(1000)
        ),
        "(i32.const 0)",
        STRINGS,
    );
    let limits = PluginLimits {
        max_http_calls: 1,
        ..PluginLimits::default()
    };
    match request(&wasm, limits, Grpc(|_: GrpcCall| events(vec![]))) {
        Err(PluginError::Trap { limit, reason, .. }) => {
            assert_eq!(limit, Some(gantry_plugins::Limit::HttpCalls));
            assert!(reason.contains("max_http_calls"), "{reason}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn a_stream_holds_only_so_many_messages_waiting() {
    let sends = format!(
        "(drop {GRPC_STREAM}) {}",
        "(drop (call $grpc_send (i32.load (i32.const 300)) (i32.const 84) (i32.const 4) (i32.const 0)))"
            .repeat(gantry_plugins::GRPC_SEND_QUEUE_MESSAGES + 1)
    );
    let wasm = module_with(&format!("{sends} (i32.const 1)"), "(i32.const 0)", STRINGS);
    match request(&wasm, PluginLimits::default(), Grpc(echo)) {
        Err(PluginError::Trap { limit, .. }) => {
            assert_eq!(limit, Some(gantry_plugins::Limit::GrpcMessages));
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn grpc_calls_go_only_to_the_plugins_upstreams_and_only_from_the_request_phase() {
    // "svc." as the pool: not among the plugin's upstreams (BadArgument, 2).
    let elsewhere = "(call $grpc_call (i32.const 72) (i32.const 4) (i32.const 72) (i32.const 5) (i32.const 80) (i32.const 1)
           (i32.const 200) (i32.const 4) (i32.const 84) (i32.const 4) (i32.const 0) (i32.const 300))";
    let status = |wasm: &[u8]| {
        answered(request(
            wasm,
            PluginLimits::default(),
            Grpc(|_: GrpcCall| events(vec![])),
        ))
        .0
    };
    let wasm = module_with(
        &format!(
            "{} (i32.const 0)",
            respond(
                &format!("(i32.add (i32.const 500) {elsewhere})"),
                "(i32.const 0)",
                "(i32.const 0)"
            )
        ),
        "(i32.const 0)",
        STRINGS,
    );
    assert_eq!(status(&wasm), 502);
    // From the response phase: InternalFailure (10).
    let wasm = module_with(
        "(i32.const 0)",
        &format!(
            "{} (i32.const 0)",
            respond(
                &format!("(i32.add (i32.const 500) {})", grpc_call(0)),
                "(i32.const 0)",
                "(i32.const 0)"
            )
        ),
        STRINGS,
    );
    let plugin = load_calling_side(&wasm, PluginLimits::default());
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = vec![(":status".to_string(), "200".to_string())];
    match ctx.on_response_headers(&mut headers, true).unwrap() {
        Decision::Respond(r) => assert_eq!(r.status, 510),
        other => panic!("{other:?}"),
    }
    // A stream or call token the plugin never got: NotFound (1).
    let wasm = module_with(
        &format!(
            "{} (i32.const 0)",
            respond("(i32.add (i32.const 500) (i32.add (call $grpc_cancel (i32.const 77)) (call $grpc_close (i32.const 77))))", "(i32.const 0)", "(i32.const 0)")
        ),
        "(i32.const 0)",
        STRINGS,
    );
    assert_eq!(status(&wasm), 502);
}

#[test]
fn a_long_status_message_is_cut_on_a_character_boundary() {
    let on_close = answer_the_status("(i32.const 500)");
    let wasm = module_with(
        &format!("(drop {}) (i32.const 1)", grpc_call(0)),
        "(i32.const 0)",
        &format!("{STRINGS} {on_close}"),
    );
    // "x" then two-byte characters: no limit falls on a character's end.
    let long = format!("x{}", "é".repeat(3000));
    let cut = |limits: PluginLimits| {
        let message = long.clone();
        let close = move |_: GrpcCall| {
            events(vec![GrpcEvent::Close(GrpcStatus {
                code: 9,
                message: message.clone(),
            })])
        };
        answered(request(&wasm, limits, Grpc(close))).1
    };
    let text = cut(PluginLimits::default());
    assert_eq!(
        text.len(),
        gantry_plugins::MAX_GRPC_STATUS_MESSAGE_BYTES - 1
    );
    assert!(long.starts_with(&text));
    let small = PluginLimits {
        bytes_per_host_call: 100,
        ..PluginLimits::default()
    };
    assert_eq!(cut(small).len(), 99, "and never past bytes_per_host_call");
}
