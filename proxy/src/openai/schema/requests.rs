//! What clients send: chat, completion and embedding requests, each with
//! its validation (every range names its parameter) and its input limits.

use super::*;
use crate::openai::error::ApiError;
use gantry_config::InputLimits;
use serde::Deserialize;
use utoipa::ToSchema;

/// One message of a chat.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer` (treated as `system`), `user` or `assistant`.
    pub role: Role,
    /// The text: a string, or an array of `{"type": "text", "text": ...}` parts.
    pub content: Option<Content>,
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// Instructions (OpenAI's newer name for `system`).
    Developer,
    /// The person.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role name the chat template knows.
    pub fn template_name(self) -> &'static str {
        match self {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Message content.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts; only `text` parts are supported.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    /// Must be `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// Where generation stops early.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Up to [`MAX_STOP`] stop sequences.
    #[schema(value_type = Vec<String>)]
    Many(Vec<String>),
}

/// `stream_options`
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `data: [DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling parameters shared by `/chat/completions` and `/completions`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct Sampling {
    /// Most tokens to generate. Default: as many as the model's `max_tokens` and
    /// context allow. The model's own limit is reported in the 400 when exceeded.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    /// 0 is greedy; higher is more random. Below 1e-5 it is greedy too.
    /// Default: the model's, set by its backend (`[models.sampling]`), else 0.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability adds up
    /// to `top_p`. Default: the model's (`[models.sampling]`), else 1.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f32>,
    /// Choices to generate; only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// Answer as server-sent events, one per token batch, ending `data: [DONE]`.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Up to 4 sequences where generation stops; the sequence is not returned.
    pub stop: Option<Stop>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Accepted for compatibility; only 0 is supported (use `repetition_penalty`).
    #[schema(minimum = 0.0, maximum = 0.0)]
    pub presence_penalty: Option<f32>,
    /// Accepted for compatibility; only 0 is supported (use `repetition_penalty`).
    #[schema(minimum = 0.0, maximum = 0.0)]
    pub frequency_penalty: Option<f32>,
    /// Extension: sample among the `top_k` most likely tokens (0: off).
    pub top_k: Option<u32>,
    /// Extension: divide the logits of tokens already seen (1: off).
    #[schema(minimum = 0.01, maximum = 2.0)]
    pub repetition_penalty: Option<f32>,
    /// Must be false or absent: log probabilities are not returned.
    pub logprobs: Option<bool>,
    /// An end-user id, for the caller's own tracking; not used.
    pub user: Option<String>,
}

impl Sampling {
    /// Check every range; the first problem becomes a 400 naming its parameter.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.max_tokens == Some(0) {
            return Err(out_of_range(
                "max_tokens",
                "max_tokens must be at least 1 (got 0)".into(),
            ));
        }
        if let Err((param, message)) = gantry_proto::limits::check_sampling(
            self.temperature,
            self.top_p,
            self.repetition_penalty,
        ) {
            return Err(out_of_range(param, message));
        }
        if let Some(n) = self.n {
            if !(1..=N_MAX).contains(&n) {
                return Err(out_of_range(
                    "n",
                    format!("n must be {N_MAX}: one choice per request is generated (got {n})"),
                ));
            }
        }
        if let Some(Stop::Many(list)) = &self.stop {
            if list.len() > MAX_STOP {
                return Err(out_of_range(
                    "stop",
                    format!(
                        "stop has {} sequences; at most {MAX_STOP} are allowed",
                        list.len()
                    ),
                ));
            }
        }
        for (i, stop) in self.stop_list().iter().enumerate() {
            if stop.is_empty() || stop.len() > MAX_STOP_BYTES {
                return Err(out_of_range(
                    "stop",
                    format!(
                        "stop[{i}] must be 1 to {MAX_STOP_BYTES} bytes (got {})",
                        stop.len()
                    ),
                ));
            }
        }
        for (param, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(out_of_range(
                    param,
                    format!("{param} is not supported (only 0); use repetition_penalty, between {REPETITION_PENALTY_MIN} and {REPETITION_PENALTY_MAX}"),
                ));
            }
        }
        if self.logprobs == Some(true) {
            return Err(out_of_range(
                "logprobs",
                "logprobs are not supported; leave logprobs out or false".into(),
            ));
        }
        Ok(())
    }

    /// The stop sequences as a list.
    pub fn stop_list(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// `POST /v1/chat/completions`
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A model listed by `GET /v1/models`.
    pub model: String,
    /// The conversation so far.
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    /// Newer name for `max_tokens`; wins when both are set.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling parameters.
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl ChatCompletionRequest {
    /// Check every parameter's range.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.messages.is_empty() {
            return Err(out_of_range(
                "messages",
                "messages must hold at least 1 message".into(),
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if let Some(Content::Parts(parts)) = &m.content {
                for (k, p) in parts.iter().enumerate() {
                    if p.kind != "text" || p.text.is_none() {
                        return Err(out_of_range(
                            &format!("messages[{i}].content[{k}]"),
                            format!("messages[{i}].content[{k}] is a `{}` part; only `text` parts with a `text` field are supported", p.kind),
                        ));
                    }
                }
            }
        }
        if self.max_completion_tokens == Some(0) {
            return Err(out_of_range(
                "max_completion_tokens",
                "max_completion_tokens must be at least 1 (got 0)".into(),
            ));
        }
        self.sampling.validate()
    }

    /// Check what the request carries against the pool's limits.
    pub fn check_input(&self, limits: &InputLimits) -> Result<(), TooLarge> {
        if self.messages.len() > limits.max_messages {
            return Err(TooLarge {
                error: out_of_range(
                    "messages",
                    format!(
                        "messages holds {} messages; at most {} (the pool's max_messages)",
                        self.messages.len(),
                        limits.max_messages
                    ),
                ),
                limit: crate::metrics::Refusal::Messages,
            });
        }
        let bytes = self.messages.iter().map(ChatMessage::text_len).sum();
        check_input_bytes("messages", bytes, limits)
    }

    /// The token limit asked for, if any.
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.sampling.max_tokens)
    }
}

impl ChatMessage {
    /// Bytes of the message's text.
    pub fn text_len(&self) -> usize {
        match &self.content {
            None => 0,
            Some(Content::Text(t)) => t.len(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| p.text.as_ref().map_or(0, String::len))
                .sum(),
        }
    }

    /// The message's text (parts joined).
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join(""),
        }
    }
}

/// The prompt of a `/completions` request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// One text in an array (one prompt per request is supported).
    #[schema(value_type = Vec<String>)]
    Texts(Vec<String>),
    /// Token ids.
    #[schema(value_type = Vec<u32>)]
    Tokens(Vec<u32>),
    /// Token ids in an array (one prompt per request is supported).
    #[schema(value_type = Vec<Vec<u32>>)]
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// A model listed by `GET /v1/models`.
    pub model: String,
    /// The text (or token ids) to continue; one prompt per request.
    pub prompt: Prompt,
    /// Must be false or absent: the prompt is not echoed.
    pub echo: Option<bool>,
    /// Sampling parameters.
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl CompletionRequest {
    /// Check every parameter's range.
    pub fn validate(&self) -> Result<(), ApiError> {
        let count = match &self.prompt {
            Prompt::Texts(v) => v.len(),
            Prompt::TokenLists(v) => v.len(),
            Prompt::Text(_) => 1,
            Prompt::Tokens(v) => usize::from(!v.is_empty()),
        };
        if count != 1 {
            return Err(out_of_range(
                "prompt",
                format!(
                    "prompt must hold exactly 1 prompt (got {count}); send one request per prompt"
                ),
            ));
        }
        if self.echo == Some(true) {
            return Err(out_of_range(
                "echo",
                "echo is not supported; leave echo out or false".into(),
            ));
        }
        self.sampling.validate()
    }

    /// Check what the request carries against the pool's limits.
    pub fn check_input(&self, limits: &InputLimits) -> Result<(), TooLarge> {
        let bytes = match &self.prompt {
            Prompt::Text(t) => t.len(),
            Prompt::Texts(v) => v.iter().map(String::len).sum(),
            Prompt::Tokens(ids) => ids.len() * TOKEN_ID_INPUT_BYTES,
            Prompt::TokenLists(v) => v.iter().map(Vec::len).sum::<usize>() * TOKEN_ID_INPUT_BYTES,
        };
        check_input_bytes("prompt", bytes, limits)
    }
}

/// The texts to embed.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Up to 2048 texts.
    #[schema(value_type = Vec<String>)]
    Many(Vec<String>),
}

/// How embeddings are encoded in the answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON numbers.
    #[default]
    Float,
    /// Base64 of little-endian 32-bit floats (what the `openai` clients ask for).
    Base64,
}

/// `POST /v1/embeddings`
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// An embedding model listed by `GET /v1/models`.
    pub model: String,
    /// A text or up to 2048 texts.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Must be absent: embeddings have the model's own size.
    pub dimensions: Option<u32>,
    /// An end-user id, for the caller's own tracking; not used.
    pub user: Option<String>,
}

impl EmbeddingRequest {
    /// Check the input count.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let EmbeddingInput::Many(v) = &self.input {
            if v.is_empty() {
                return Err(out_of_range(
                    "input",
                    "input must hold at least 1 text".into(),
                ));
            }
        }
        if self.dimensions.is_some() {
            return Err(out_of_range(
                "dimensions",
                "dimensions is not supported: embeddings have the model's own size".into(),
            ));
        }
        Ok(())
    }

    /// The inputs as a list.
    pub fn inputs(&self) -> Vec<String> {
        match &self.input {
            EmbeddingInput::One(s) => vec![s.clone()],
            EmbeddingInput::Many(v) => v.clone(),
        }
    }

    /// Check what the request carries against the pool's limits.
    pub fn check_input(&self, limits: &InputLimits) -> Result<(), TooLarge> {
        let (count, bytes) = match &self.input {
            EmbeddingInput::One(t) => (1, t.len()),
            EmbeddingInput::Many(v) => (v.len(), v.iter().map(String::len).sum()),
        };
        if count > limits.max_embedding_inputs {
            return Err(TooLarge {
                error: out_of_range(
                    "input",
                    format!(
                        "input holds {count} texts; at most {} (the pool's max_embedding_inputs)",
                        limits.max_embedding_inputs
                    ),
                ),
                limit: crate::metrics::Refusal::EmbeddingInputs,
            });
        }
        check_input_bytes("input", bytes, limits)
    }
}
