//! The smaller ABI calls: properties a plugin sets for the rest of the
//! request, a header map's size, foreign functions, a call's status.

use crate::sandbox::*;
use gantry_plugins::{Decision, PluginLimits, Properties};

/// Answer with status `500 + value` (the WAT expression `value`).
fn respond_with(value: &str) -> String {
    format!(
        "(drop (call $respond (i32.add (i32.const 500) {value})
           (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
         (i32.const 0)"
    )
}

fn status_of(plugin: &std::sync::Arc<gantry_plugins::Plugin>, props: &Properties) -> u16 {
    let mut ctx = plugin.start_request(props.clone()).unwrap();
    match ctx
        .on_request_headers(&mut request_headers(), true)
        .unwrap()
    {
        Decision::Respond(r) => r.status,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_property_one_plugin_sets_is_read_by_the_next_and_kept_for_the_log() {
    // "team\0name" at 16 (set to "hello" at 48); the reader answers with the
    // status of proxy_get_property plus the value's length.
    let extra = r#"(data (i32.const 96) "team\00name")"#;
    let setter = module_with(
        &respond_with(
            "(call $set_property (i32.const 96) (i32.const 9) (i32.const 48) (i32.const 5))",
        ),
        "(i32.const 0)",
        extra,
    );
    let reader = module_with(
        &respond_with(
            "(i32.add (call $get_property (i32.const 96) (i32.const 9) (i32.const 400) (i32.const 404))
                      (i32.load (i32.const 404)))",
        ),
        "(i32.const 0)",
        extra,
    );
    let props: Properties = vec![("route_name".to_string(), b"r".to_vec())].into();
    let (setter, reader) = (
        load(&setter, PluginLimits::default()),
        load(&reader, PluginLimits::default()),
    );
    assert_eq!(
        status_of(&reader, &props),
        500 + 1,
        "NotFound before it is set"
    );
    assert_eq!(status_of(&setter, &props), 500, "Ok");
    assert_eq!(status_of(&reader, &props), 500 + 5, "found, 5 bytes");
    assert_eq!(
        props.set_by_plugins(),
        vec![("team.name".to_string(), b"hello".to_vec())]
    );
}

#[test]
fn a_request_may_set_only_so_many_properties() {
    // Each request sets "p0".."pN" by bumping the digit at 97.
    let wasm = module_with(
        &respond_with(
            "(i32.store8 (i32.const 97) (i32.add (i32.load8_u (i32.const 97)) (i32.const 1)))
             (call $set_property (i32.const 96) (i32.const 2) (i32.const 48) (i32.const 5))",
        ),
        "(i32.const 0)",
        r#"(data (i32.const 96) "p\00")"#,
    );
    let plugin = load(&wasm, PluginLimits::default());
    let props = Properties::default();
    let statuses: Vec<u16> = (0..gantry_plugins::MAX_SET_PROPERTIES + 1)
        .map(|_| status_of(&plugin, &props))
        .collect();
    assert!(statuses[..gantry_plugins::MAX_SET_PROPERTIES]
        .iter()
        .all(|&s| s == 500));
    assert_eq!(
        statuses[gantry_plugins::MAX_SET_PROPERTIES],
        502,
        "BadArgument"
    );
    assert_eq!(
        plugin.shared().take_limit_hits(),
        vec![(gantry_plugins::Limit::Properties, 1)],
        "counted"
    );
}

#[test]
fn the_header_map_size_is_its_names_and_values_bytes() {
    // request_headers(): ":path: /" and "host: x" = 5 + 1 + 4 + 1.
    let wasm = module(&respond_with(
        "(i32.add (call $map_size (i32.const 0) (i32.const 400)) (i32.load (i32.const 400)))",
    ));
    let (d, _) = run(&wasm, PluginLimits::default()).unwrap();
    assert!(
        matches!(&d, Decision::Respond(r) if r.status == 511),
        "{d:?}"
    );
    let wasm = module(&respond_with(
        "(call $map_size (i32.const 99) (i32.const 400))",
    ));
    let (d, _) = run(&wasm, PluginLimits::default()).unwrap();
    assert!(
        matches!(&d, Decision::Respond(r) if r.status == 502),
        "BadArgument: {d:?}"
    );
}

/// Replacing a header, as Envoy's `setCopy` does: the first of that name
/// takes the value where it stands, later ones go, and the guest's spelling
/// of the name does not matter (nor when it removes one); a name the map
/// lacks is added, in lower case, and counted against `max_headers_added`.
#[test]
fn a_replaced_header_keeps_its_place_and_loses_its_duplicates() {
    // "X-A" at 64, "X-New" at 80; the value "hello" at 48.
    let extra = r#"(data (i32.const 64) "X-A") (data (i32.const 80) "X-New")"#;
    let wasm = module_with(
        "(drop (call $replace (i32.const 0) (i32.const 64) (i32.const 3) (i32.const 48) (i32.const 5)))
         (drop (call $replace (i32.const 0) (i32.const 80) (i32.const 5) (i32.const 32) (i32.const 1)))
         (i32.const 0)",
        "(drop (call $remove (i32.const 2) (i32.const 64) (i32.const 3))) (i32.const 0)",
        extra,
    );
    let list = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let plugin = load(&wasm, PluginLimits::default());
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = list(&[(":path", "/"), ("x-a", "0"), ("host", "x"), ("x-a", "2")]);
    ctx.on_request_headers(&mut headers, true).unwrap();
    assert_eq!(
        headers,
        list(&[
            (":path", "/"),
            ("x-a", "hello"),
            ("host", "x"),
            ("x-new", "1")
        ])
    );
    // Removing "X-A" removes every "x-a".
    let mut resp = list(&[(":status", "200"), ("x-a", "1"), ("x-b", "2"), ("x-a", "3")]);
    ctx.on_response_headers(&mut resp, false).unwrap();
    assert_eq!(resp, list(&[(":status", "200"), ("x-b", "2")]));
    drop(ctx);

    // Only the new name counts as added: a limit of one lets both through.
    let limits = PluginLimits {
        max_headers_added: 1,
        ..PluginLimits::default()
    };
    let plugin = load(&wasm, limits);
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = list(&[(":path", "/"), ("x-a", "0")]);
    ctx.on_request_headers(&mut headers, true).unwrap();
    assert_eq!(headers.len(), 3, "{headers:?}");
    drop(ctx);
    let plugin = load(
        &wasm,
        PluginLimits {
            max_headers_added: 0,
            ..limits
        },
    );
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let err = ctx
        .on_request_headers(&mut list(&[(":path", "/"), ("x-a", "0")]), true)
        .unwrap_err();
    assert_eq!(
        err.limit(),
        Some(gantry_plugins::Limit::HeadersAdded),
        "{err}"
    );
}

#[test]
fn foreign_functions_compare_in_constant_time_and_unknown_ones_are_not_found() {
    // constant_time_compare("abc", "abc"): length 3 then both, at 128; the
    // answer's one byte is added to 10 × the call's status.
    let call = |name_len: u32| {
        respond_with(&format!(
            "(i32.add
               (i32.mul (i32.const 10)
                 (call $foreign (i32.const 96) (i32.const {name_len}) (i32.const 128) (i32.const 10) (i32.const 400) (i32.const 404)))
               (i32.load8_u (i32.load (i32.const 400))))"
        ))
    };
    let data = r#"(data (i32.const 96) "constant_time_compare")
                  (data (i32.const 128) "\03\00\00\00abcabc")"#;
    let plugin = load(
        &module_with(&call(21), "(i32.const 0)", data),
        PluginLimits::default(),
    );
    assert_eq!(status_of(&plugin, &Properties::default()), 501, "Ok, equal");
    let plugin = load(
        &module_with(&call(8), "(i32.const 0)", data),
        PluginLimits::default(),
    );
    assert_eq!(
        status_of(&plugin, &Properties::default()),
        510,
        "NotFound: `constant`"
    );
}

#[test]
fn a_failed_call_says_so_in_its_status() {
    // The callback answers with 500 + the status code proxy_get_status gives.
    let request = format!("(drop {}) (i32.const 1)", http_call(64, 4));
    let callback = r#"
      (data (i32.const 64) "side")
      (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
        (drop (call $status (i32.const 400) (i32.const 404) (i32.const 408)))
        (drop (call $respond (i32.add (i32.const 500) (i32.load (i32.const 400)))
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1))))"#;
    let wasm = module_with(&request, "(i32.const 0)", callback);
    let plugin = load_calling_side(&wasm, PluginLimits::default());
    for (answer, expected) in [
        (None, 514),
        (Some(gantry_plugins::HttpCallResponse::default()), 500),
    ] {
        let mut ctx = plugin.start_request(vec![]).unwrap();
        let decision = ready(ctx.on_request(
            &mut request_headers(),
            None,
            gantry_plugins::http_only(|_| {
                let answer = answer.clone();
                async move { answer }
            }),
        ))
        .unwrap();
        assert!(
            matches!(&decision, Decision::Respond(r) if r.status == expected),
            "{decision:?}"
        );
    }
}

#[test]
fn a_plugin_that_closes_the_stream_ends_the_exchange() {
    let wasm = module("(drop (call $close (i32.const 0))) (i32.const 0)");
    let (d, _) = run(&wasm, PluginLimits::default()).unwrap();
    assert_eq!(d, Decision::Close);
    // The instance is fine: the next request runs on it as usual.
    let plugin = load(&module("(i32.const 0)"), PluginLimits::default());
    assert_eq!(status_of_continue(&plugin), Decision::Continue);
}

fn status_of_continue(plugin: &std::sync::Arc<gantry_plugins::Plugin>) -> Decision {
    let mut ctx = plugin.start_request(vec![]).unwrap();
    ctx.on_request_headers(&mut request_headers(), true)
        .unwrap()
}
