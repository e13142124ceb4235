//! `output-redact`: replaces each configured word in an OpenAI answer's text
//! (chat `delta.content` / `message.content`, completions `text`) with
//! `replacement`, streamed or whole, leaving every server-sent event valid
//! JSON. A word split across two events is still found: the last few
//! characters of each event's text (one less than the longest word) are
//! held back and sent at the front of the next event's text, or with the
//! event that finishes the choice. Needs `stream_events = true`.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "output-redact"
//! file = "plugins/examples/target/wasm32-unknown-unknown/release/output_redact.wasm"
//! stream_events = true
//! configuration = { words = ["secret"], replacement = "[redacted]" }
//! ```
//!
//! Written with the public `proxy-wasm` SDK only.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use serde_json::Value;
use std::rc::Rc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    words: Vec<String>,
    #[serde(default = "default_replacement")]
    replacement: String,
}

fn default_replacement() -> String {
    "[redacted]".into()
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) if !c.words.is_empty() && c.words.iter().all(|w| !w.is_empty()) => {
                self.config = Some(Rc::new(c));
                true
            }
            Ok(_) => {
                proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    "output-redact: `words` must hold non-empty words",
                )
                .ok();
                false
            }
            Err(e) => {
                let message = format!("output-redact: bad configuration: {e}");
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Redact {
            config: self.config.clone()?,
            held: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Redact {
    config: Rc<Config>,
    /// Text held back from the last event (a word may go on in the next).
    held: String,
}

impl Context for Redact {}

impl Redact {
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for word in &self.config.words {
            out = out.replace(word.as_str(), &self.config.replacement);
        }
        out
    }

    /// Characters that could start a word going on in the next event.
    fn hold_back(&self) -> usize {
        self.config
            .words
            .iter()
            .map(|w| w.chars().count())
            .max()
            .unwrap_or(1)
            - 1
    }

    /// One streamed chunk's text, with what was held, redacted; the end held
    /// back unless the choice finishes here.
    fn stream_text(&mut self, text: &str, finishing: bool) -> String {
        let joined = std::mem::take(&mut self.held) + text;
        let whole = self.redact(&joined);
        if finishing {
            return whole;
        }
        let keep = whole.chars().count().saturating_sub(self.hold_back());
        let split = whole
            .char_indices()
            .nth(keep)
            .map_or(whole.len(), |(i, _)| i);
        self.held = whole[split..].to_string();
        whole[..split].to_string()
    }

    /// The event's JSON with its text redacted; `None` to leave it as it is.
    fn event(&mut self, json: &str) -> Option<String> {
        let mut v: Value = serde_json::from_str(json).ok()?;
        let choice = v.get_mut("choices")?.get_mut(0)?;
        let finishing = !choice["finish_reason"].is_null();
        if let Some(message) = choice.get_mut("message") {
            // A whole chat answer.
            let text = message["content"].as_str()?.to_string();
            message["content"] = Value::String(self.redact(&text));
        } else if choice.get("delta").is_some() {
            let text = choice["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let out = self.stream_text(&text, finishing);
            choice["delta"]["content"] = Value::String(out);
        } else {
            // Completions: `text`, whole or streamed.
            let text = choice["text"].as_str()?.to_string();
            let streamed =
                v.get("object").and_then(Value::as_str) == Some("text_completion") && !finishing;
            let out = if streamed {
                self.stream_text(&text, false)
            } else {
                self.stream_text(&text, true)
            };
            v["choices"][0]["text"] = Value::String(out);
        }
        serde_json::to_string(&v).ok()
    }
}

impl HttpContext for Redact {
    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Some(body) = self.get_http_response_body(0, size) else {
            return Action::Continue;
        };
        let Ok(text) = std::str::from_utf8(&body) else {
            return Action::Continue;
        };
        let replaced = match text.strip_prefix("data: ") {
            // One server-sent event.
            Some(event) => {
                let json = event.trim_end_matches('\n');
                self.event(json).map(|j| format!("data: {j}\n\n"))
            }
            // A whole answer.
            None if end_of_stream => self.event(text),
            None => None,
        };
        if let Some(new) = replaced {
            self.set_http_response_body(0, size, new.as_bytes());
        }
        Action::Continue
    }
}
