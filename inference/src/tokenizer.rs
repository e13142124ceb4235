//! Text ⇄ token ids for generation models, built from a GGUF file's own metadata.
//!
//! candle's GGUF tokenizer falls back to a generic pre-tokenizer for `pre=smollm`;
//! SmolLM2's reference tokenizer (and llama.cpp's `smollm` pre-tokenizer) splits
//! every digit on its own and adds no prefix space. We build that pipeline with the
//! `tokenizers` crate: byte-level BPE from `tokenizer.ggml.tokens`/`merges`, control
//! tokens as special added tokens, `Digits(individual)` then `ByteLevel` without a
//! prefix space. Ids are checked against llama.cpp in `tests/tokenizer.rs`.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF token type of control tokens (`<|im_start|>` and friends).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Why a tokenizer could not be built from a GGUF file.
#[derive(Debug, thiserror::Error)]
#[error("GGUF tokenizer: {0}")]
pub struct TokenizerError(pub String);

fn meta<'a>(ct: &'a Content, key: &str) -> Result<&'a Value, TokenizerError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| TokenizerError(format!("metadata key `{key}` is missing")))
}

fn strings(ct: &Content, key: &str) -> Result<Vec<String>, TokenizerError> {
    let values = meta(ct, key)?
        .to_vec()
        .map_err(|e| TokenizerError(format!("`{key}`: {e}")))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| TokenizerError(format!("`{key}`: {e}")))
        })
        .collect()
}

/// Build the tokenizer of a GPT-2-style (byte-level BPE) GGUF model.
pub fn from_gguf(ct: &Content) -> Result<Tokenizer, TokenizerError> {
    let model = meta(ct, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| TokenizerError(e.to_string()))?;
    if model != "gpt2" {
        return Err(TokenizerError(format!(
            "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
        )));
    }
    let pre = ct
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(ct, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError(format!("merge `{m}` has no space")))
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| TokenizerError(e.to_string()))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        // SmolLM (and StarCoder): each digit is its own pre-token.
        "smollm" | "starcoder" | "refact" => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        }
        "default" | "gpt2" | "gpt-2" => {
            tokenizer.with_pre_tokenizer(Some(byte_level));
        }
        other => {
            return Err(TokenizerError(format!(
                "pre-tokenizer `{other}` is not supported (known: smollm, starcoder, gpt2)"
            )))
        }
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| TokenizerError(e.to_string()))?;
    Ok(tokenizer)
}

/// Build the tokenizer of a GGUF file, reading only its metadata.
pub fn from_gguf_file(path: &std::path::Path) -> Result<Tokenizer, TokenizerError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| TokenizerError(format!("{}: {e}", path.display())))?;
    let ct =
        Content::read(&mut file).map_err(|e| TokenizerError(format!("{}: {e}", path.display())))?;
    from_gguf(&ct)
}
