//! Chat messages → prompt text, with the model's own Jinja chat template.

use minijinja::{context, Environment};
use serde::Serialize;

/// One message, as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
}

impl From<gantry_proto::ChatMessage> for Message {
    fn from(m: gantry_proto::ChatMessage) -> Self {
        Message {
            role: m.role,
            content: m.content,
        }
    }
}

/// A compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compile `source` (e.g. GGUF `tokenizer.chat_template`).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        // Templates written for Python's Jinja call string methods like `.strip()`.
        env.set_unknown_method_callback(minijinja_contrib_pycompat);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `bos_token` and `eos_token` strings the template is given.
    pub fn special_tokens(&self) -> (&str, &str) {
        (&self.bos, &self.eos)
    }

    /// Render `messages`, followed by the assistant's turn opener.
    pub fn render(&self, messages: &[Message]) -> Result<String, minijinja::Error> {
        self.env.get_template(TEMPLATE_NAME)?.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
    }
}

/// The few Python `str` methods chat templates use.
fn minijinja_contrib_pycompat(
    _state: &minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, minijinja::Error> {
    use minijinja::{Error, ErrorKind, Value};
    let Some(s) = value.as_str() else {
        return Err(Error::from(ErrorKind::UnknownMethod));
    };
    let arg = |i: usize| args.get(i).and_then(|a| a.as_str()).unwrap_or("");
    Ok(match method {
        "strip" => Value::from(s.trim()),
        "lstrip" => Value::from(s.trim_start()),
        "rstrip" => Value::from(s.trim_end()),
        "startswith" => Value::from(s.starts_with(arg(0))),
        "endswith" => Value::from(s.ends_with(arg(0))),
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}
