//! An OTLP receiver for the tests, built from the official protocol
//! definitions (`opentelemetry-proto`): OTLP/gRPC or OTLP/HTTP (protobuf),
//! on an ephemeral port, keeping every span it is sent.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(String, Any)>,
    /// Linked contexts: (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl Span {
    /// An attribute's value, if set.
    pub fn attr(&self, key: &str) -> Option<&Any> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            Any::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            Any::StringValue(s) => Some(s),
            _ => None,
        }
    }

    pub fn float(&self, key: &str) -> Option<f64> {
        match self.attr(key)? {
            Any::DoubleValue(f) => Some(*f),
            _ => None,
        }
    }

    /// A string array attribute's values.
    pub fn strs(&self, key: &str) -> Option<Vec<String>> {
        match self.attr(key)? {
            Any::ArrayValue(a) => a
                .values
                .iter()
                .map(|v| match &v.value {
                    Some(Any::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

/// A receiver and the spans it got.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Any::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for s in scope.spans {
                    spans.push(Span {
                        service: service.clone(),
                        kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                        attributes: s
                            .attributes
                            .into_iter()
                            .filter_map(|a| Some((a.key, a.value?.value?)))
                            .collect(),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        name: s.name,
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// An OTLP/gRPC receiver.
    pub async fn grpc() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let service = TraceServiceServer::new(received.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Collector {
            addr,
            spans: received.0,
            task,
        }
    }

    /// An OTLP/HTTP receiver (protobuf bodies on `POST /v1/traces`).
    pub async fn http() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let keep = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<_>| {
                        let keep = keep.clone();
                        async move {
                            let path_ok = req.uri().path() == "/v1/traces";
                            let body: Bytes = BodyExt::collect(req.into_body()).await?.to_bytes();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(r) if path_ok => {
                                    keep.keep(r);
                                    200
                                }
                                _ => 400,
                            };
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans: received.0,
            task,
        }
    }

    /// `[traces]` for a gateway or backend exporting here (`protocol`:
    /// `grpc` or `http`), batches sent within 50 ms, plus `extra` lines.
    pub fn section(&self, protocol: &str, extra: &str) -> String {
        format!(
            "[traces]\nendpoint = \"http://{}\"\nprotocol = \"{protocol}\"\nbatch_delay_ms = 50\n{extra}\n",
            self.addr
        )
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Wait (up to 10 s) until `enough` holds for the spans received.
    pub async fn wait_for(&self, what: &str, enough: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        for _ in 0..200 {
            let spans = self.spans();
            if enough(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not received in 10 s; got {:#?}", self.spans());
    }
}
