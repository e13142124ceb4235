//! The gateway's per-request functions, without wrk's noise: route matching
//! (4, 100 and 1000 routes), path normalization, forwarding headers, and counting a
//! finished request (docs/BENCHMARKS.md, "The hot path").

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gantry::metrics::Metrics;
use gantry::router::Router;
use pingora::http::RequestHeader;
use std::path::Path;
use std::time::Duration;

fn config_with_routes(n: usize) -> gantry_config::Config {
    let mut text = String::from(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\
         [[pools]]\nname = \"p\"\nendpoints = [\"127.0.0.1:3000\"]\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npool = \"p\"\npath_prefix = \"/api/v{i}\"\n"
        ));
    }
    gantry_config::parse(&text, "bench.toml", Path::new(".")).expect("valid config")
}

fn hot_path(c: &mut Criterion) {
    for n in [4, 100, 1000] {
        let config = config_with_routes(n);
        let router = Router::new(&config.routes);
        let path = format!("/api/v{}/items", n - 1);
        c.bench_function(&format!("route match, {n} prefix routes, last one"), |b| {
            b.iter(|| router.find(Some("example.com"), black_box(&path), &http::Method::GET))
        });
    }
    c.bench_function("path normalization, already normal", |b| {
        b.iter(|| gantry::normalize::path(black_box("/api/v1/items/42")))
    });
    let mut req = RequestHeader::build("GET", b"/api/v1/items", None).unwrap();
    req.insert_header("host", "example.com").unwrap();
    req.insert_header("user-agent", "bench").unwrap();
    let peer = Some("192.0.2.7".parse().unwrap());
    c.bench_function("forwarding headers, untrusted peer", |b| {
        b.iter(|| {
            let mut upstream = req.clone();
            gantry::forwarding::apply(&mut upstream, peer, &[]).unwrap();
            upstream
        })
    });
    let metrics = Metrics::new();
    let route = metrics.route("api");
    c.bench_function("count a finished request (route, 200)", |b| {
        b.iter(|| route.finished(black_box(200), Duration::from_micros(800)))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
