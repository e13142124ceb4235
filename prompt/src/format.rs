//! A model's prompt format as data — its tokenizer (the `tokenizers` JSON), its
//! chat template and the special-token strings the template is given — so the
//! gateway can build the very encoder the backend uses
//! ([`crate::PromptEncoder::from_format`]) from what the backend sends
//! (`GetPromptFormat`), instead of configuring a copy that could drift.

/// Everything that decides a prompt's token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFormat {
    /// The tokenizer, serialized by the `tokenizers` crate.
    pub tokenizer_json: String,
    /// The chat template's Jinja source, if the model has one.
    pub chat_template: Option<String>,
    /// The template's `bos_token`.
    pub bos_token: String,
    /// The template's `eos_token`.
    pub eos_token: String,
}

impl PromptFormat {
    /// XXH3-64 of every field, each length-prefixed: equal fingerprints mean
    /// equal token ids for every prompt (two backends of one pool can be
    /// checked to agree without sending the format twice).
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let template = self.chat_template.as_deref();
        for part in [
            Some(self.tokenizer_json.as_str()),
            template,
            Some(self.bos_token.as_str()),
            Some(self.eos_token.as_str()),
        ] {
            match part {
                Some(text) => {
                    h.update(&(text.len() as u64).to_le_bytes());
                    h.update(text.as_bytes());
                }
                None => h.update(&u64::MAX.to_le_bytes()),
            }
        }
        h.digest()
    }
}
