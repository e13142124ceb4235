//! In-process test rig: origin servers and gateways on ephemeral ports.
//!
//! ```ignore
//! let origin = Origin::start("a").await;
//! let gw = Gateway::start(&format!(r#"... endpoints = ["{}"] ..."#, origin.addr)).await;
//! let res = gw.get("/").await;
//! ```

use bytes::Bytes;
use gantry::{Gantry, ShutdownHandle, ShutdownTrigger};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::net::TcpListener;

/// The admin token of test gateways (unless a test writes its own `[admin]`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// How long any wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

static LOGGING: Once = Once::new();

/// Route gateway logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    LOGGING.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
    });
}

/// A free port on loopback, released for the gateway to bind. Taken below
/// Linux's ephemeral range (32768–60999): a port the OS picked with `:0` could
/// be handed to any outgoing connection as its source port before the gateway
/// binds it (seen in CI as "Address already in use"); these never are. Ports
/// are handed out in turn from a place that depends on the process id, so
/// none is given twice in a process and parallel runs rarely meet.
pub fn free_addr() -> SocketAddr {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if let Ok(l) = StdListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
}

/// Shared state of an origin, visible to tests.
#[derive(Default)]
pub struct OriginState {
    /// Requests answered (health checks excluded).
    pub hits: AtomicUsize,
    /// `/healthz` answer: 200 when true, 503 when false.
    pub healthy: AtomicBool,
    /// Milliseconds `/healthz` takes to answer (a probe that times out).
    pub healthz_delay_ms: std::sync::atomic::AtomicU64,
    /// The last request's body and its `content-length` header.
    pub last_body: std::sync::Mutex<Option<(String, Option<String>)>>,
}

/// A tiny HTTP/1.1 + HTTP/2 origin that echoes the request as JSON:
/// `{"origin", "method", "path", "headers": {..}, "body_len"}`.
/// `x-delay-ms` delays the answer; `x-status` sets its status.
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start(name: &str) -> Origin {
        Origin::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// An origin listening on `addr` (any loopback address, port 0 for any).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Origin {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        state.healthy.store(true, Ordering::SeqCst);
        let (st, origin) = (state.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, origin) = (st.clone(), origin.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, st.clone(), origin.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            name: name.to_string(),
            addr,
            state,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The last request's body and its `content-length` header.
    pub fn last_body(&self) -> Option<(String, Option<String>)> {
        self.state.last_body.lock().unwrap().clone()
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<OriginState>,
    origin: String,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/healthz" {
        let delay = state.healthz_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let ok = state.healthy.load(Ordering::SeqCst);
        return Ok(Response::builder()
            .status(if ok { 200 } else { 503 })
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let delay = header("x-delay-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let status: u16 = header("x-status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("").to_string();
        match headers.get_mut(k.as_str()) {
            Some(Value::String(prev)) => *prev = format!("{prev}, {v}"),
            _ => {
                headers.insert(k.to_string(), Value::String(v));
            }
        }
    }
    let body = req.into_body().collect().await?.to_bytes();
    *state.last_body.lock().unwrap() = Some((
        String::from_utf8_lossy(&body).into_owned(),
        headers
            .get("content-length")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    ));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let out = json!({
        "origin": origin, "method": method, "path": path, "headers": headers, "body_len": body.len(),
    });
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-origin", origin)
        .header("x-internal", "secret")
        .body(Full::new(Bytes::from(out.to_string())))
        .unwrap())
}

/// Config text for the common case: the `{gateway}` listener, one pool `p` over
/// `endpoints` (plus `pool_extra` lines), a catch-all route `all`, then `tail`
/// (more tables: `[limits]`, routes, ...).
pub fn one_pool(endpoints: &[SocketAddr], pool_extra: &str, tail: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\n\
         [[pools]]\nname = \"p\"\nendpoints = [{}]\n{pool_extra}\n\
         [[routes]]\nname = \"all\"\npool = \"p\"\n{tail}\n",
        list.join(", ")
    )
}

/// `config` with `{gateway}` and `{admin}` replaced, and an `[admin]` with
/// [`ADMIN_TOKEN`] unless it has its own.
fn config_text(config: &str, addr: SocketAddr, admin: SocketAddr) -> String {
    let text = config
        .replace("{gateway}", &addr.to_string())
        .replace("{admin}", &admin.to_string());
    if text.contains("[admin]") {
        text
    } else {
        format!("[admin]\naddress = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n{text}")
    }
}

/// A running gateway. `{gateway}` and `{admin}` in the config text are replaced by
/// ephemeral addresses; `{dir}` by a temporary directory (for TLS files).
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    pub gantry_metrics: Arc<gantry::metrics::Metrics>,
    pub lifecycle: Arc<gantry::lifecycle::Lifecycle>,
    handle: ShutdownHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The configuration file it reads (again on reload), in `_dir`.
    pub config_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(config: &str) -> Gateway {
        Self::start_in(config, Path::new(".")).await
    }

    pub async fn start_in(config: &str, base: &Path) -> Gateway {
        init_logging();
        let addr = free_addr();
        let admin = free_addr();
        let text = config_text(config, addr, admin);
        let dir = tempfile::tempdir().expect("temporary directory");
        let config_file = dir.path().join("gantry.toml");
        std::fs::write(&config_file, &text).expect("configuration written");
        let source = gantry::ConfigSource::file_in(&config_file, base);
        let gantry = Gantry::load(source).unwrap_or_else(|e| panic!("{e:#}\n---\n{text}"));
        let (gantry_metrics, lifecycle) = (gantry.metrics.clone(), gantry.lifecycle.clone());
        let handle = ShutdownHandle::default();
        let trigger = ShutdownTrigger::Handle(handle.clone());
        let thread = std::thread::spawn(move || gantry.run(trigger));
        wait_for_port(addr).await;
        wait_for_port(admin).await;
        Gateway {
            addr,
            admin,
            client: client(),
            gantry_metrics,
            lifecycle,
            handle,
            thread: Some(thread),
            config_file,
            _dir: dir,
        }
    }

    /// Write `config` (with the same `{gateway}` and `{admin}`) as the
    /// gateway's configuration file, for the next reload.
    pub fn write_config(&self, config: &str) {
        let text = config_text(config, self.addr, self.admin);
        let next = self.config_file.with_extension("toml.next");
        std::fs::write(&next, text).expect("configuration written");
        // Renamed into place: a reload never reads half a file.
        std::fs::rename(&next, &self.config_file).expect("configuration replaced");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the gateway")
    }

    /// GET a path on the admin listener.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        let url = format!("http://{}{path}", self.admin);
        self.client
            .get(url)
            .send()
            .await
            .expect("admin listener answers")
    }

    /// `POST /admin/reload`, with `token` as the bearer token if given.
    pub async fn admin_reload(&self, token: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("http://{}/admin/reload", self.admin));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("admin listener answers")
    }

    /// Wait until the gateway sees inference backend `backend` of pool `pool`
    /// take traffic.
    pub async fn wait_backend_healthy(&self, pool: &str, backend: SocketAddr) {
        let sample =
            format!("gantry_inference_backend_healthy{{backend=\"{backend}\",pool=\"{pool}\"}}");
        eventually("backend healthy", || {
            let sample = sample.clone();
            async move { self.metric(&sample).await == Some(1.0) }
        })
        .await;
    }

    /// Body of the admin `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }

    /// Value of one metric sample line, e.g. `gantry_requests_total{route="a",status="200"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let page = self.metrics().await;
        page.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Begin graceful shutdown (as SIGTERM) and return the join handle of the server thread.
    pub fn shutdown(&mut self) -> std::thread::JoinHandle<()> {
        self.handle.shutdown();
        self.thread.take().expect("shut down once")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown();
            let _ = t.join();
        }
    }
}

/// A client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// Poll until something accepts on `addr` (bounded by [`PATIENCE`]).
pub async fn wait_for_port(addr: SocketAddr) {
    eventually("port accepting", || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// Poll `cond` until true; fail the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut backoff = Duration::from_millis(5);
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// Parse a JSON response body.
pub async fn json(res: reqwest::Response) -> Value {
    let text = res.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
