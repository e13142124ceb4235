//! One request's HTTP context in one plugin instance: the request and
//! response hooks, the HTTP calls a hook makes, and the answers delivered
//! back to it.

use crate::callouts::{Callouts, GrpcEvent};
use crate::error::{classify, PluginError};
use crate::hooks::{Decision, HttpCallResponse};
use crate::host::HttpState;
use crate::limits::Limit;
use crate::plugin::{Exports, Hook, Plugin, Vm, ROOT_CONTEXT};
use crate::{abi, cpu};
use std::sync::Arc;

/// One request's HTTP context in one plugin instance. Dropping it ends the
/// context (`proxy_on_done`, `proxy_on_delete`) and returns the instance for
/// reuse, unless a hook failed: a broken instance is discarded.
pub struct HttpContext {
    pub(crate) plugin: Arc<Plugin>,
    pub(crate) vm: Option<Vm>,
    pub(crate) id: i32,
}

impl std::fmt::Debug for HttpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpContext")
            .field("plugin", &self.plugin.name)
            .field("id", &self.id)
            .finish()
    }
}

/// Which body hook to run.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

impl HttpContext {
    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    pub(crate) fn call(
        &mut self,
        hook: &'static str,
        pick: fn(&Exports) -> Option<&Hook>,
        arg: i32,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        let Some(vm) = self.vm.as_mut() else {
            return Err(self.gone(hook));
        };
        // Borrowed, never cloned: a clone of a typed function takes and drops a
        // reference on its registered type, a shared count, on every hook.
        let Vm { store, exports } = vm;
        let Some(f) = pick(exports) else {
            return Ok(Decision::Continue);
        };
        cpu::arm(store);
        let result = f.call(&mut *store, (self.id, arg, i32::from(end_of_stream)));
        match result {
            Ok(action) => {
                self.plugin.record_success();
                if std::mem::take(&mut store.data_mut().http.close_requested) {
                    return Ok(Decision::Close);
                }
                if let Some(local) = store.data_mut().http.local_response.take() {
                    return Ok(Decision::Respond(local));
                }
                Ok(match abi::Action::from_abi(action) {
                    abi::Action::Pause => Decision::Pause,
                    abi::Action::Continue => Decision::Continue,
                })
            }
            Err(e) => Err(self.failed(hook, e)),
        }
    }

    /// A hook trapped: a trapped instance may hold any state, so it is never
    /// reused; the failure counts towards the plugin's health.
    pub(crate) fn failed(&mut self, hook: &'static str, e: wasmtime::Error) -> PluginError {
        let memory_refused = self
            .vm
            .take()
            .is_some_and(|vm| vm.store.data().store_limits.memory_refused);
        self.plugin.record_failure();
        match classify(&self.plugin.name, hook, e) {
            // A trap after a refused memory.grow: the guest ran out of memory.
            PluginError::Trap {
                plugin,
                hook,
                reason,
                limit: None,
            } if memory_refused => PluginError::Trap {
                plugin,
                hook,
                reason: format!("{reason} (after memory.grow was refused at memory_bytes)"),
                limit: Some(Limit::Memory),
            },
            other => other,
        }
    }

    /// The request phase of this plugin: its request-headers hook, then, when
    /// the request has a body, its request-body hook with the whole body
    /// (`end_of_stream` set). The calls the plugin makes (`proxy_http_call`,
    /// `proxy_grpc_call`, `proxy_grpc_stream`) are performed by `callouts` and
    /// their answers handed to the plugin's callbacks as they come, until the
    /// plugin answers, or its calls and streams have all ended. Pausing with
    /// nothing left to wait for (no body to come, no call pending) continues.
    pub async fn on_request<'a>(
        &mut self,
        headers: &mut Vec<(String, String)>,
        body: Option<&mut Vec<u8>>,
        mut callouts: impl Callouts<'a>,
    ) -> Result<Decision, PluginError> {
        let n = headers.len() as i32;
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            http.request_headers = std::mem::take(headers);
            http.headers_added = 0;
            http.request_headers_changed = false;
            http.calls_allowed = true;
        }
        let result = self.request_phase(n, body, &mut callouts).await;
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            *headers = std::mem::take(&mut http.request_headers);
            http.calls_allowed = false;
            http.calls.clear();
            http.grpc.end();
        }
        match result? {
            Decision::Pause => Ok(Decision::Continue),
            other => Ok(other),
        }
    }

    pub(crate) async fn request_phase<'a>(
        &mut self,
        n: i32,
        body: Option<&mut Vec<u8>>,
        callouts: &mut impl Callouts<'a>,
    ) -> Result<Decision, PluginError> {
        let headers = self.call(
            "proxy_on_request_headers",
            |e| e.on_request_headers.as_ref(),
            n,
            body.is_none(),
        )?;
        let headers = self.settle(headers, callouts).await?;
        let Some(body) = body else {
            return Ok(headers);
        };
        if let Decision::Respond(_) | Decision::Close = headers {
            return Ok(headers);
        }
        let n = body.len() as i32;
        if let Some(vm) = self.vm.as_mut() {
            vm.store.data_mut().http.request_body = std::mem::take(body);
        }
        let decision = match self.call(
            "proxy_on_request_body",
            |e| e.on_request_body.as_ref(),
            n,
            true,
        ) {
            Ok(d) => self.settle(d, callouts).await,
            Err(e) => Err(e),
        };
        if let Some(vm) = self.vm.as_mut() {
            *body = std::mem::take(&mut vm.store.data_mut().http.request_body);
        }
        decision
    }

    /// Perform the calls the last hook made, and any its callbacks make, all
    /// at once, handing each answer back as it comes (completion order, not
    /// dispatch order); a local response or a resume from a callback decides.
    /// A call or stream the plugin cancels is dropped at once.
    pub(crate) async fn settle<'a>(
        &mut self,
        mut decision: Decision,
        callouts: &mut impl Callouts<'a>,
    ) -> Result<Decision, PluginError> {
        use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
        // Most hooks make no call: nothing to wait for, nothing to set up.
        if self.vm.as_ref().is_none_or(|vm| {
            let http = &vm.store.data().http;
            http.calls.is_empty() && http.grpc.made.is_empty()
        }) {
            return Ok(decision);
        }
        /// One answer: an HTTP call's, or one event of a gRPC call or stream.
        enum Answer {
            Http(Option<HttpCallResponse>),
            Grpc(GrpcEvent),
        }
        let mut pending: SelectAll<BoxStream<'a, (u32, Answer)>> = SelectAll::new();
        loop {
            if let Some(vm) = self.vm.as_mut() {
                let http = &mut vm.store.data_mut().http;
                for call in std::mem::take(&mut http.calls) {
                    let (token, answer) = (call.token, callouts.http(call));
                    let answer = async move { (token, Answer::Http(answer.await)) };
                    pending.push(stream::once(answer).boxed());
                }
                for call in std::mem::take(&mut http.grpc.made) {
                    let token = call.token;
                    let (events, abort) = stream::abortable(callouts.grpc(call));
                    // proxy_grpc_cancel stops it with this.
                    if let Some(open) = http.grpc.open.get_mut(&token) {
                        open.abort = Some(abort);
                    }
                    pending.push(events.map(move |e| (token, Answer::Grpc(e))).boxed());
                }
            }
            let Some((token, answer)) = pending.next().await else {
                return Ok(decision);
            };
            let delivered = match answer {
                Answer::Http(answer) => self.deliver(token, answer)?,
                Answer::Grpc(event) => self.deliver_grpc(token, event)?,
            };
            match delivered {
                // The calls still out are dropped (cancelled) with `pending`.
                Decision::Respond(local) => return Ok(Decision::Respond(local)),
                Decision::Close => return Ok(Decision::Close),
                Decision::Continue => decision = Decision::Continue,
                Decision::Pause => {}
            }
        }
    }

    /// Hand one call's answer to `proxy_on_http_call_response` (no headers and
    /// no body when the call failed, as Envoy does).
    fn deliver(
        &mut self,
        token: u32,
        answer: Option<HttpCallResponse>,
    ) -> Result<Decision, PluginError> {
        const HOOK: &str = "proxy_on_http_call_response";
        let Some(vm) = self.vm.as_mut() else {
            return Err(self.gone(HOOK));
        };
        let Vm { store, exports } = vm;
        let Some(f) = exports.on_http_call_response.as_ref() else {
            return Ok(Decision::Pause);
        };
        let failed = answer.is_none();
        let answer = answer.unwrap_or_default();
        let (headers, body) = (answer.headers.len() as i32, answer.body.len() as i32);
        let http = &mut store.data_mut().http;
        http.call_response = Some(answer);
        http.call_failed = failed;
        http.resumed = false;
        cpu::arm(store);
        match f.call(&mut *store, (ROOT_CONTEXT, token as i32, headers, body, 0)) {
            Ok(()) => {
                self.plugin.record_success();
                let http = &mut store.data_mut().http;
                http.call_response = None;
                http.call_failed = false;
                Ok(after_callback(http))
            }
            Err(e) => Err(self.failed(HOOK, e)),
        }
    }

    /// Hand one event of a gRPC call or stream to its callback; nothing for a
    /// token the plugin cancelled or closed. A unary call ends with its answer,
    /// a stream with its close; the status message is cut to
    /// [`MAX_GRPC_STATUS_MESSAGE_BYTES`] (or `bytes_per_host_call`, if less).
    fn deliver_grpc(&mut self, token: u32, mut event: GrpcEvent) -> Result<Decision, PluginError> {
        const HOOKS: [&str; 4] = [
            "proxy_on_grpc_receive_initial_metadata",
            "proxy_on_grpc_receive",
            "proxy_on_grpc_receive_trailing_metadata",
            "proxy_on_grpc_close",
        ];
        let Some(vm) = self.vm.as_mut() else {
            return Err(self.gone(HOOKS[1]));
        };
        let Vm { store, exports } = vm;
        let state = store.data_mut();
        let Some(unary) = state.http.grpc.open.get(&token).map(|o| o.unary) else {
            return Ok(Decision::Pause);
        };
        let (which, arg) = match &mut event {
            GrpcEvent::InitialMetadata(m) => (0, m.len()),
            GrpcEvent::Message(m) => (1, m.len()),
            GrpcEvent::TrailingMetadata(m) => (2, m.len()),
            GrpcEvent::Close(s) => {
                let most = MAX_GRPC_STATUS_MESSAGE_BYTES.min(state.limits.bytes_per_host_call);
                s.message.truncate(s.message.floor_char_boundary(most));
                (3, s.code as usize)
            }
        };
        let http = &mut state.http;
        if which == 3 || (which == 1 && unary) {
            http.grpc.open.remove(&token);
        }
        let Some(f) = exports.on_grpc[which].as_ref() else {
            return Ok(Decision::Pause);
        };
        http.grpc.delivering = Some(event);
        http.resumed = false;
        cpu::arm(store);
        let result = f.call(&mut *store, (self.id, token as i32, arg as i32));
        let http = &mut store.data_mut().http;
        http.grpc.delivering = None;
        match result {
            Ok(()) => {
                self.plugin.record_success();
                Ok(after_callback(http))
            }
            Err(e) => Err(self.failed(HOOKS[which], e)),
        }
    }

    /// The error for a hook asked of an instance that failed earlier.
    fn gone(&self, hook: &'static str) -> PluginError {
        PluginError::Trap {
            plugin: self.plugin.name.clone(),
            hook,
            reason: "the instance failed earlier in this request".into(),
            limit: None,
        }
    }

    /// The request headers as they went upstream, for the response phase to read
    /// (`proxy_get_header_map_*` on request headers, `request.headers.*`
    /// properties); changing them from now on gets `InternalFailure`.
    pub fn keep_request_headers(&mut self, headers: Vec<(String, String)>) {
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            http.request_headers = headers;
            http.request_headers_sent = true;
        }
    }

    /// End the context, as dropping it does, and hand back the request
    /// headers it kept (for the caller to reuse their strings).
    pub fn finish(mut self) -> Vec<(String, String)> {
        self.vm
            .as_mut()
            .map(|vm| std::mem::take(&mut vm.store.data_mut().http.request_headers))
            .unwrap_or_default()
    }

    /// Request headers (pseudo-headers `:method`, `:path`, `:authority`,
    /// `:scheme` included); the plugin may change them in place.
    pub fn on_request_headers(
        &mut self,
        headers: &mut Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        self.with_map(Side::Request, headers, |ctx, n| {
            ctx.call(
                "proxy_on_request_headers",
                |e| e.on_request_headers.as_ref(),
                n,
                end_of_stream,
            )
        })
    }

    /// Response headers (`:status` included).
    pub fn on_response_headers(
        &mut self,
        headers: &mut Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        self.with_map(Side::Response, headers, |ctx, n| {
            ctx.call(
                "proxy_on_response_headers",
                |e| e.on_response_headers.as_ref(),
                n,
                end_of_stream,
            )
        })
    }

    /// Request body (what has arrived so far); the plugin may replace it.
    pub fn on_request_body(
        &mut self,
        body: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        let n = body.len() as i32;
        self.lend(
            body,
            |http| &mut http.request_body,
            |ctx| {
                ctx.call(
                    "proxy_on_request_body",
                    |e| e.on_request_body.as_ref(),
                    n,
                    end_of_stream,
                )
            },
        )
    }

    /// Response body (one chunk, or what the plugin held so far with it); the
    /// plugin may replace it. A chunk the plugin only reads is never copied.
    pub fn on_response_body(
        &mut self,
        body: &mut bytes::Bytes,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        let n = body.len() as i32;
        self.lend(
            body,
            |http| &mut http.response_body,
            |ctx| {
                ctx.call(
                    "proxy_on_response_body",
                    |e| e.on_response_body.as_ref(),
                    n,
                    end_of_stream,
                )
            },
        )
    }

    /// Whether the hooks since the last `on_request` (request headers) or
    /// `on_response_headers` (response headers) changed that map: when not, the
    /// caller has nothing to write back.
    pub fn headers_changed(&self) -> (bool, bool) {
        self.vm.as_ref().map_or((false, false), |vm| {
            let http = &vm.store.data().http;
            (http.request_headers_changed, http.response_headers_changed)
        })
    }

    fn with_map(
        &mut self,
        side: Side,
        headers: &mut Vec<(String, String)>,
        run: impl FnOnce(&mut Self, i32) -> Result<Decision, PluginError>,
    ) -> Result<Decision, PluginError> {
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            match side {
                Side::Request => http.request_headers_changed = false,
                Side::Response => http.response_headers_changed = false,
            }
        }
        let n = headers.len() as i32;
        self.lend(
            headers,
            match side {
                Side::Request => |http: &mut HttpState| &mut http.request_headers,
                Side::Response => |http: &mut HttpState| &mut http.response_headers,
            },
            |ctx| {
                if let Some(vm) = ctx.vm.as_mut() {
                    vm.store.data_mut().http.headers_added = 0;
                }
                run(ctx, n)
            },
        )
    }

    /// Hand `value` to the instance's `slot` for `run`, and take it back after
    /// (what the hook left there). An instance that failed keeps nothing.
    fn lend<T>(
        &mut self,
        value: &mut T,
        slot: fn(&mut HttpState) -> &mut T,
        run: impl FnOnce(&mut Self) -> Result<Decision, PluginError>,
    ) -> Result<Decision, PluginError> {
        if let Some(vm) = self.vm.as_mut() {
            std::mem::swap(slot(&mut vm.store.data_mut().http), value);
        }
        let result = run(self);
        if let Some(vm) = self.vm.as_mut() {
            std::mem::swap(slot(&mut vm.store.data_mut().http), value);
        }
        result
    }
}

/// Longest gRPC status message handed to a plugin (`proxy_get_status`), in
/// bytes: a longer one is cut, so what a server sends never traps the plugin
/// on `bytes_per_host_call`.
pub const MAX_GRPC_STATUS_MESSAGE_BYTES: usize = 1024;

/// What a callback decided: it closed the stream, answered, resumed the
/// request, or left it waiting.
fn after_callback(http: &mut HttpState) -> Decision {
    if std::mem::take(&mut http.close_requested) {
        Decision::Close
    } else if let Some(local) = http.local_response.take() {
        Decision::Respond(local)
    } else if http.resumed {
        Decision::Continue
    } else {
        Decision::Pause
    }
}

impl Drop for HttpContext {
    fn drop(&mut self) {
        let Some(mut vm) = self.vm.take() else {
            self.plugin.check_in(None);
            return;
        };
        let mut ok = true;
        let Vm { store, exports } = &mut vm;
        if let Some(done) = &exports.on_done {
            cpu::arm(store);
            ok &= done.call(&mut *store, self.id).is_ok();
        }
        if let Some(delete) = &exports.on_delete {
            cpu::arm(store);
            ok &= delete.call(&mut *store, self.id).is_ok();
        }
        if ok {
            vm.store.data_mut().http = HttpState::default();
            self.plugin.check_in(Some(vm));
        } else {
            self.plugin.check_in(None);
        }
    }
}
