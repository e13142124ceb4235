//! A plugin's `proxy_http_call`: to an inference pool in process (the
//! OpenAI-compatible API), or to an HTTP pool over the network; bounded by the
//! plugin's call timeout and `bytes_per_host_call`, counted per plugin,
//! upstream and result. [`PluginCallouts`] hands a plugin's calls, HTTP and
//! gRPC, to the gateway.

use super::{ConfigVersion, Gateway};
use crate::metrics::CallResult;
use crate::upstream::HttpPool;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use pingora::http::RequestHeader;
use pingora::Error;

/// What performs one plugin's calls for one request.
pub(super) struct PluginCallouts<'a> {
    pub gateway: &'a Gateway,
    pub live: &'a ConfigVersion,
    pub plugin: &'a gantry_plugins::Plugin,
    pub request_id: &'a str,
}

impl<'a> gantry_plugins::Callouts<'a> for PluginCallouts<'a> {
    fn http(
        &mut self,
        call: gantry_plugins::HttpCall,
    ) -> futures_util::future::BoxFuture<'a, Option<gantry_plugins::HttpCallResponse>> {
        let PluginCallouts {
            gateway,
            live,
            plugin,
            request_id,
        } = *self;
        Box::pin(gateway.http_call(live, call, plugin, request_id))
    }

    fn grpc(
        &mut self,
        call: gantry_plugins::GrpcCall,
    ) -> futures_util::stream::BoxStream<'a, gantry_plugins::GrpcEvent> {
        self.gateway
            .grpc_call(self.live, call, self.plugin, self.request_id)
    }
}

impl Gateway {
    /// Perform a plugin's `proxy_http_call`: to an inference pool in process (the
    /// OpenAI-compatible API, paths under `/v1`), to an HTTP pool over the
    /// network. `None` when it fails or outlasts its timeout.
    pub(super) async fn http_call(
        &self,
        live: &ConfigVersion,
        mut call: gantry_plugins::HttpCall,
        plugin: &gantry_plugins::Plugin,
        request_id: &str,
    ) -> Option<gantry_plugins::HttpCallResponse> {
        let body = Bytes::from(std::mem::take(&mut call.body));
        let header = |name: &str| {
            call.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let method = header(":method").unwrap_or_else(|| "GET".into());
        let path = header(":path").unwrap_or_else(|| "/".into());
        let method = http::Method::from_bytes(method.as_bytes()).ok()?;
        let limit = call.max_response_bytes;
        let work = async {
            if let Some(pool) = live.api.pool_index(&call.upstream) {
                let (status, headers, body) = live
                    .api
                    .call(
                        pool,
                        method,
                        &path,
                        header("content-type"),
                        body,
                        request_id,
                    )
                    .await;
                let mut pairs = vec![(":status".to_string(), status.to_string())];
                pairs.extend(headers);
                return Ok((pairs, body));
            }
            match live.http_pool(&call.upstream) {
                Some(pool) => {
                    self.pool_call(pool, &call.headers, body, method, &path, limit)
                        .await
                }
                None => Err(format!("no pool named `{}`", call.upstream)),
            }
        };
        // The host gave it the plugin's max_http_call_timeout_ms when it asked
        // for none or for more.
        let timeout = call.timeout;
        let outcome = match tokio::time::timeout(timeout, work).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Ok((_, body))) if body.len() > limit => {
                self.metrics.plugin_limit_hit(
                    &plugin.name,
                    gantry_plugins::Limit::BytesPerHostCall,
                    1,
                );
                Err(format!(
                    "the answer is over {limit} bytes (bytes_per_host_call)"
                ))
            }
            Ok(r) => r,
        };
        let result = if outcome.is_ok() {
            CallResult::Ok
        } else {
            CallResult::Failed
        };
        self.metrics
            .plugin_http_call(&plugin.name, &call.upstream, result);
        match outcome {
            Ok((headers, body)) => Some(gantry_plugins::HttpCallResponse { headers, body }),
            Err(why) => {
                tracing::warn!(request_id, plugin = %plugin.name, upstream = %call.upstream, path, error = %why, "plugin http call failed");
                None
            }
        }
    }
    /// One HTTP request to an endpoint of an HTTP pool, for a plugin.
    async fn pool_call(
        &self,
        pool: &HttpPool,
        headers: &[(String, String)],
        body: Bytes,
        method: http::Method,
        path: &str,
        limit: usize,
    ) -> std::result::Result<(Vec<(String, String)>, Vec<u8>), String> {
        let backend = pool
            .pick(b"", &[])
            .ok_or_else(|| "no healthy endpoint".to_string())?;
        let peer = pool.peer(&backend);
        let (mut http, _reused) = self
            .connector
            .get_http_session(&*peer)
            .await
            .map_err(|e| format!("connecting to {}: {e}", backend.addr))?;
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(headers.len()))
            .map_err(|e| e.to_string())?;
        for (k, v) in headers {
            match k.as_str() {
                ":authority" => req.insert_header(HOST, v.as_str()),
                n if n.starts_with(':') => Ok(()),
                _ => req.append_header(k.clone(), v.as_str()).map(|_| ()),
            }
            .map_err(|e| e.to_string())?;
        }
        req.insert_header(CONTENT_LENGTH, body.len())
            .map_err(|e| e.to_string())?;
        let io = async {
            http.write_request_header(Box::new(req)).await?;
            if !body.is_empty() {
                http.write_request_body(body, true).await?;
            }
            http.finish_request_body().await?;
            http.read_response_header().await?;
            let mut body = Vec::new();
            while let Some(chunk) = http.read_response_body().await? {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    break;
                }
            }
            Ok::<_, Box<Error>>(body)
        };
        let body = io.await.map_err(|e| format!("{}: {e}", backend.addr))?;
        let resp = http
            .response_header()
            .ok_or_else(|| "no response header".to_string())?;
        let headers = crate::plugins::response_pairs(resp);
        if body.len() <= limit {
            self.connector
                .release_http_session(http, &*peer, None)
                .await;
        }
        Ok((headers, body))
    }
}
