//! Sentence embeddings with a BERT model (all-MiniLM-L6-v2): mean pooling over
//! the attention mask, then L2 normalisation — as sentence-transformers does.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use tokenizers::{PaddingParams, Tokenizer};

/// A loaded embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Length of each vector.
    pub dimensions: usize,
    /// The model's own longest input, in tokens.
    pub max_position: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dimensions", &self.dimensions)
            .finish()
    }
}

impl Embedder {
    /// Load `dir` (model.safetensors, config.json, tokenizer.json) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let config_text = std::fs::read_to_string(dir.join("config.json"))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("config.json").display()))?;
        let raw: serde_json::Value = serde_json::from_str(&config_text)?;
        let dimensions = raw["hidden_size"].as_u64().unwrap_or(0) as usize;
        let max_position = raw["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(vb, &config)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        tokenizer
            .with_truncation(None)
            .map_err(anyhow::Error::msg)?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        Ok(Embedder {
            model,
            tokenizer,
            device: device.clone(),
            dimensions,
            max_position,
        })
    }

    /// Token counts of `texts` (with the special tokens the model adds).
    pub fn token_counts(&self, texts: &[String]) -> anyhow::Result<Vec<usize>> {
        texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .encode(t.as_str(), true)
                    .map(|e| e.get_ids().len())
                    .map_err(anyhow::Error::msg)
            })
            .collect()
    }

    /// One L2-normalised vector per text.
    pub fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(anyhow::Error::msg)?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| -> candle_core::Result<Tensor> {
            let rows = encodings
                .iter()
                .map(|e| Tensor::new(f(e).as_slice(), &self.device))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)
        };
        let ids = rows(&|e| e.get_ids().to_vec())?;
        let types = rows(&|e| e.get_type_ids().to_vec())?;
        let mask = rows(&|e| e.get_attention_mask().to_vec())?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens only.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        let unit = mean.broadcast_div(&norm)?;
        Ok(unit.to_vec2::<f32>()?)
    }
}
