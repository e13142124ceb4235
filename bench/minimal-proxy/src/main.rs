//! A dozen-line `ProxyHttp`: every request to one upstream, nothing else.
//! `minimal-proxy LISTEN UPSTREAM THREADS`, e.g. `minimal-proxy 127.0.0.1:8082 127.0.0.1:8081 1`.

use async_trait::async_trait;
use pingora::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Minimal(String);

#[async_trait]
impl ProxyHttp for Minimal {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.0.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = (args[1].clone(), args[2].clone());
    let mut server = Server::new(None).unwrap();
    server.configuration = std::sync::Arc::new(pingora::server::configuration::ServerConf {
        threads: args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1),
        ..Default::default()
    });
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Minimal(upstream));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
