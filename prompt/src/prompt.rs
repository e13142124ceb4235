//! Request text → prompt token ids, safely: client text can neither forge the
//! chat's control tokens nor hold the async runtime.
//!
//! - **Roles cannot be forged.** A chat is rendered with the model's template
//!   around per-process random placeholders; the template's own text is
//!   tokenized with control tokens (`<|im_start|>` and friends) recognised, and
//!   every message's content with them read as plain text. So a user writing
//!   `<|im_end|><|im_start|>system` gets those characters' ordinary tokens, and
//!   the control ids in a prompt are exactly those the template inserts.
//! - **Too long is refused before any work.** No token covers more than the
//!   vocabulary's longest token, so a text of `max_context × longest` bytes or
//!   more cannot fit the context: it is refused from its length alone.
//! - **Tokenizing runs off the async runtime**, on blocking threads, at most
//!   [`PromptEncoder::parallelism`] at once; the others wait for a slot. Health
//!   checks and streams on the runtime are never stuck behind a long prompt.

use crate::chat::{ChatTemplate, Message};
use crate::format::PromptFormat;
use std::sync::{Arc, OnceLock};
use tokenizers::Tokenizer;
use tokio::sync::Semaphore;

/// Why a prompt was refused; the message names the request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    /// The request is wrong (too long, no chat template, template failure):
    /// `field` is the request field at fault, as the proto names it.
    #[error("{message}")]
    Invalid {
        /// The field, e.g. `prompt` or `chat.messages[2]`.
        field: String,
        /// What is wrong, naming the limit.
        message: String,
    },
    /// The tokenizer failed; the detail is for the log.
    #[error("tokenizer: {0}")]
    Internal(String),
}

impl PromptError {
    fn invalid(field: &str, message: String) -> Self {
        PromptError::Invalid {
            field: field.to_string(),
            message,
        }
    }
}

/// What to encode.
#[derive(Debug, Clone)]
pub enum PromptText {
    /// Plain text, read as text (control-token strings included).
    Text(String),
    /// Chat messages, rendered with the model's template.
    Chat(Vec<Message>),
}

impl PromptText {
    /// The text of a `GenerateRequest`'s input; `None` for token ids (nothing
    /// to encode).
    pub fn from_input(input: &gantry_proto::generate_request::Input) -> Option<PromptText> {
        use gantry_proto::generate_request::Input;
        match input {
            Input::Prompt(p) => Some(PromptText::Text(p.clone())),
            Input::Chat(c) => Some(PromptText::Chat(
                c.messages.iter().cloned().map(Message::from).collect(),
            )),
            Input::TokenIds(_) => None,
        }
    }

    /// Bytes of client text.
    pub fn client_bytes(&self) -> usize {
        match self {
            PromptText::Text(t) => t.len(),
            PromptText::Chat(m) => m.iter().map(|m| m.content.len()).sum(),
        }
    }
}

/// Encodes prompts for one generation model.
#[derive(Debug)]
pub struct PromptEncoder {
    /// Recognises control tokens: for the template's own text.
    template_tokenizer: Arc<Tokenizer>,
    /// Reads control-token strings as plain text: for client text.
    text_tokenizer: Arc<Tokenizer>,
    chat: Option<ChatTemplate>,
    /// Bytes of the longest token's text (an upper bound).
    longest_token_bytes: usize,
    /// Placeholder stem for message contents, random per process.
    placeholder: String,
    slots: Arc<Semaphore>,
    /// This encoder as data, made on first use.
    format: OnceLock<PromptFormat>,
}

/// Prompts encoded at once by one [`PromptEncoder`], on the backend and in
/// the gateway alike: one per CPU (encoding is CPU work on blocking threads).
pub fn encoding_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

impl PromptEncoder {
    /// An encoder over `tokenizer` (with its control tokens added as special
    /// tokens) and the model's chat template, running at most `parallelism`
    /// tokenizations at once.
    pub fn new(tokenizer: Arc<Tokenizer>, chat: Option<ChatTemplate>, parallelism: usize) -> Self {
        let mut text = (*tokenizer).clone();
        text.set_encode_special_tokens(true);
        // Byte-level vocabularies spell each byte as one char of up to 2 UTF-8
        // bytes, so a token's string length bounds the bytes it covers.
        let longest_token_bytes = tokenizer
            .get_vocab(false)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        PromptEncoder {
            template_tokenizer: tokenizer,
            text_tokenizer: Arc::new(text),
            chat,
            longest_token_bytes,
            placeholder: format!("\u{e000}gantry-{:016x}-", rand::random::<u64>()),
            slots: Arc::new(Semaphore::new(parallelism.max(1))),
            format: OnceLock::new(),
        }
    }

    /// The encoder another process builds from `format` gives the same ids as
    /// the one `format` came from ([`Self::format`]).
    pub fn from_format(format: &PromptFormat, parallelism: usize) -> Result<Self, PromptError> {
        let tokenizer: Tokenizer = format
            .tokenizer_json
            .parse()
            .map_err(|e| PromptError::Internal(format!("tokenizer_json: {e}")))?;
        let chat = format
            .chat_template
            .as_deref()
            .map(|source| ChatTemplate::new(source, &format.bos_token, &format.eos_token))
            .transpose()
            .map_err(|e| PromptError::Internal(format!("chat_template: {e}")))?;
        let encoder = PromptEncoder::new(Arc::new(tokenizer), chat, parallelism);
        let _ = encoder.format.set(format.clone());
        Ok(encoder)
    }

    /// This encoder as data, for [`Self::from_format`] elsewhere.
    pub fn format(&self) -> Result<&PromptFormat, PromptError> {
        if let Some(format) = self.format.get() {
            return Ok(format);
        }
        let tokenizer_json = self
            .template_tokenizer
            .to_string(false)
            .map_err(|e| PromptError::Internal(format!("serializing the tokenizer: {e}")))?;
        let (chat_template, (bos, eos)) = match &self.chat {
            Some(chat) => (Some(chat.source().to_string()), chat.special_tokens()),
            None => (None, ("", "")),
        };
        Ok(self.format.get_or_init(|| PromptFormat {
            tokenizer_json,
            chat_template,
            bos_token: bos.to_string(),
            eos_token: eos.to_string(),
        }))
    }

    /// How many prompts may be tokenized at once.
    pub fn parallelism(&self) -> usize {
        self.slots.available_permits()
    }

    /// Whether the model has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// The fewest bytes of client text that certainly make `max_context`
    /// tokens or more.
    pub fn bytes_that_cannot_fit(&self, max_context: usize) -> usize {
        max_context.saturating_mul(self.longest_token_bytes)
    }

    /// Token ids of `prompt`, refused at once when its length alone shows it
    /// cannot fit `max_context` (`field` names it in the message).
    pub async fn encode(
        self: &Arc<Self>,
        prompt: PromptText,
        field: &str,
        max_context: usize,
    ) -> Result<Vec<u32>, PromptError> {
        let bytes = prompt.client_bytes();
        let cannot_fit = self.bytes_that_cannot_fit(max_context);
        if bytes >= cannot_fit {
            return Err(PromptError::invalid(field, format!(
                "{field} is {bytes} bytes of text: at least {} tokens, more than max_context {max_context}",
                bytes / self.longest_token_bytes
            )));
        }
        let _slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PromptError::Internal("encoder closed".into()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.encode_now(&prompt))
            .await
            .map_err(|e| PromptError::Internal(e.to_string()))?
    }

    /// Token ids of `prompt`, on the calling thread.
    pub fn encode_now(&self, prompt: &PromptText) -> Result<Vec<u32>, PromptError> {
        match prompt {
            PromptText::Text(t) => self.ids(&self.text_tokenizer, t),
            PromptText::Chat(messages) => self.encode_chat(messages),
        }
    }

    fn ids(&self, tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, PromptError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| PromptError::Internal(e.to_string()))
    }

    fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, PromptError> {
        let template = self.chat.as_ref().ok_or_else(|| {
            PromptError::invalid(
                "chat",
                "the model has no chat template; send a prompt instead".into(),
            )
        })?;
        let stand_ins: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                role: m.role.clone(),
                content: format!("{}{i}\u{e000}", self.placeholder),
            })
            .collect();
        let rendered = template.render(&stand_ins).map_err(|e| {
            PromptError::invalid(
                "chat.messages",
                format!("chat.messages: the chat template failed: {e}"),
            )
        })?;
        // Template text and message contents alternate; each content must
        // appear exactly where the template put its placeholder, in order.
        let mut ids = Vec::new();
        let mut rest = rendered.as_str();
        for (i, m) in messages.iter().enumerate() {
            let mark = &stand_ins[i].content;
            let at = rest.find(mark.as_str()).ok_or_else(|| {
                PromptError::invalid(&format!("chat.messages[{i}]"), format!(
                    "chat.messages[{i}]: the chat template does not place the message's content as given"
                ))
            })?;
            ids.extend(self.ids(&self.template_tokenizer, &rest[..at])?);
            ids.extend(self.ids(&self.text_tokenizer, &m.content)?);
            rest = &rest[at + mark.len()..];
        }
        if rest.contains(self.placeholder.as_str()) {
            return Err(PromptError::invalid(
                "chat.messages",
                "chat.messages: the chat template repeats a message's content".into(),
            ));
        }
        ids.extend(self.ids(&self.template_tokenizer, rest)?);
        Ok(ids)
    }
}
