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
    /// As `GetPromptFormat` answers for `model`, fingerprint included.
    pub fn to_proto(&self, model: String) -> gantry_proto::PromptFormat {
        gantry_proto::PromptFormat {
            model,
            tokenizer_json: self.tokenizer_json.clone(),
            chat_template: self.chat_template.clone(),
            bos_token: self.bos_token.clone(),
            eos_token: self.eos_token.clone(),
            fingerprint: self.fingerprint(),
        }
    }

    /// From a `GetPromptFormat` answer (its fingerprint is recomputed, not trusted).
    pub fn from_proto(p: gantry_proto::PromptFormat) -> PromptFormat {
        PromptFormat {
            tokenizer_json: p.tokenizer_json,
            chat_template: p.chat_template,
            bos_token: p.bos_token,
            eos_token: p.eos_token,
        }
    }

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
