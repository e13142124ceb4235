//! Metrics and traces as the gateway and the backend both export them.
//!
//! Traces are [`traces`]'s: OpenTelemetry spans over OTLP.
//!
//! Owns: one way to register a metric ([`Registrar`], which records every
//! metric's name and label names in a [`Catalog`] that the docs' metric tables
//! are checked against, [`documented`]), one text exposition
//! ([`Exported::encode`], [`CONTENT_TYPE`]) and one plain `/metrics` listener ([`serve`], the
//! backend's; the gateway serves the same bytes on its admin listener, behind
//! its Host allowlist). Imports no other Gantry crate but the configuration's
//! (the `[traces]` section): the gateway and the backend define their own
//! metrics, label vocabularies and spans.

pub mod traces;

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;

/// The content type of the text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Every metric's name and variable label names, as registered.
pub type Catalog = Vec<(String, Vec<String>)>;

/// Creates metrics, registering each and recording its name and labels.
#[derive(Default)]
pub struct Registrar {
    registry: Registry,
    catalog: Catalog,
}

impl Registrar {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(&mut self, c: C) -> C {
        for d in c.desc() {
            self.catalog
                .push((d.fq_name.clone(), d.variable_labels.clone()));
        }
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c
    }

    /// A counter with `labels`.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A gauge with `labels`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A gauge without labels.
    pub fn int_gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    /// A histogram with `buckets` (seconds) and `labels`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    /// What was registered, ready to export.
    pub fn finish(self) -> Exported {
        Exported {
            registry: self.registry,
            catalog: self.catalog,
        }
    }
}

/// A finished set of metrics: what a scrape shows.
#[derive(Clone)]
pub struct Exported {
    registry: Registry,
    catalog: Catalog,
}

impl Exported {
    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to a Vec cannot fail");
        out
    }

    /// Every metric's name and variable label names.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}

impl std::fmt::Debug for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exported")
            .field("metrics", &self.catalog.len())
            .finish()
    }
}

/// Serves `GET /metrics` on `listener` with what `render` returns, until the
/// task is dropped; any other path is a 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let response = if req.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", CONTENT_TYPE)
                                .body(Full::new(Bytes::from(render())))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"not found: try /metrics\n")))
                        };
                        Ok::<_, std::convert::Infallible>(response.expect("static response parts"))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// `(name, label names)` of every row of the metric tables in a Markdown `doc`:
/// rows whose first cell is a `` `gantry_…` `` name and whose second lists the
/// labels as `` `label` `` cells (anything after ` (` is a note).
pub fn documented(doc: &str) -> Catalog {
    doc.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix("`gantry_")?.strip_suffix('`')?;
            let labels = cells
                .next()?
                .split(" (")
                .next()?
                .split(',')
                .filter_map(|l| {
                    l.trim()
                        .split(' ')
                        .next()?
                        .strip_prefix('`')?
                        .strip_suffix('`')
                })
                .map(str::to_string)
                .collect();
            Some((format!("gantry_{name}"), labels))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_lists_what_was_registered_and_the_exposition_shows_it() {
        let mut r = Registrar::new();
        let c = r.counter("gantry_x_total", "x", &["a", "b"]);
        r.int_gauge("gantry_y", "y");
        c.with_label_values(&["1", "2"]).inc_by(3);
        let exported = r.finish();
        assert_eq!(
            *exported.catalog(),
            vec![
                ("gantry_x_total".to_string(), vec!["a".into(), "b".into()]),
                ("gantry_y".to_string(), vec![]),
            ]
        );
        let text = String::from_utf8(exported.encode()).unwrap();
        assert!(text.contains("gantry_x_total{a=\"1\",b=\"2\"} 3"), "{text}");
    }

    #[test]
    fn doc_tables_are_read_by_name_and_label_cells() {
        let doc = "| metric | labels | meaning |\n|---|---|---|\n\
                   | `gantry_x_total` | `a`, `b` (`1`, `2`) | x |\n\
                   | `gantry_y` | | y |\n| `other` | `c` | not ours |\n";
        assert_eq!(
            documented(doc),
            vec![
                ("gantry_x_total".to_string(), vec!["a".into(), "b".into()]),
                ("gantry_y".to_string(), vec![]),
            ]
        );
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_nothing_else() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(|| b"gantry_z 1\n".to_vec())));
        for (path, want) in [("/metrics", "200"), ("/other", "404")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(
                out.starts_with(&format!("HTTP/1.1 {want}")),
                "{path}: {out}"
            );
            if want == "200" {
                assert!(
                    out.contains(CONTENT_TYPE) && out.ends_with("gantry_z 1\n"),
                    "{out}"
                );
            }
        }
    }
}
