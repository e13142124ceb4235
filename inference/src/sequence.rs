//! Per-sequence state that is not the model's: sampling and the text stream.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;

/// Validated sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus mass, 1 = off.
    pub top_p: f64,
    /// 0 = off.
    pub top_k: usize,
    /// Sampler seed.
    pub seed: u64,
    /// Stop strings.
    pub stop: Vec<String>,
    /// 1 = off.
    pub repetition_penalty: f32,
}

impl Sampler {
    /// True when the next token is simply the most likely one.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }

    /// A candle logits processor for these parameters.
    pub fn processor(&self) -> LogitsProcessor {
        let t = self.temperature;
        let sampling = if t == 0.0 {
            Sampling::ArgMax
        } else {
            match (self.top_k, self.top_p < 1.0) {
                (0, false) => Sampling::All { temperature: t },
                (k, false) => Sampling::TopK { k, temperature: t },
                (0, true) => Sampling::TopP {
                    p: self.top_p,
                    temperature: t,
                },
                (k, true) => Sampling::TopKThenTopP {
                    k,
                    p: self.top_p,
                    temperature: t,
                },
            }
        };
        LogitsProcessor::from_sampling(self.seed, sampling)
    }
}

/// Pick the next token from one row of logits.
pub fn sample(
    processor: &mut LogitsProcessor,
    sampler: &Sampler,
    logits: &Tensor,
    context: &[u32],
) -> candle_core::Result<u32> {
    if sampler.repetition_penalty != 1.0 {
        let start = context.len().saturating_sub(REPETITION_WINDOW);
        let logits = candle_transformers::utils::apply_repeat_penalty(
            logits,
            sampler.repetition_penalty,
            &context[start..],
        )?;
        processor.sample(&logits)
    } else {
        processor.sample(logits)
    }
}

/// Tokens looked back on for the repetition penalty.
pub const REPETITION_WINDOW: usize = 256;

/// Turns generated token ids into text deltas: whole UTF-8 characters only, with
/// stop strings found and cut across token boundaries.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
    /// Text decoded but not yet sent (it may be the start of a stop string).
    held: String,
    /// Token ids generated since the last delta.
    pending_ids: Vec<u32>,
}

/// What one token added to the stream.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Text ready to send (may be empty).
    pub text: String,
    /// Ids covered by this text (empty while text is held back).
    pub ids: Vec<u32>,
    /// A stop string was found; `text` ends just before it.
    pub stopped: bool,
}

impl TextStream {
    /// Add one token.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32, stop: &[String]) -> Step {
        self.pending_ids.push(id);
        // A token the tokenizer cannot decode contributes no text.
        if let Ok(Some(text)) = tokenizers::tokenizer::step_decode_stream(
            tokenizer,
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        ) {
            self.held.push_str(&text);
        }
        if let Some(at) = stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Step {
                text,
                ids: std::mem::take(&mut self.pending_ids),
                stopped: true,
            };
        }
        let keep = stop
            .iter()
            .map(|s| partial_suffix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        if cut == 0 {
            return Step::default();
        }
        let text: String = self.held.drain(..cut).collect();
        Step {
            text,
            ids: std::mem::take(&mut self.pending_ids),
            stopped: false,
        }
    }

    /// Everything still held back, at the end of generation.
    pub fn flush(&mut self) -> Step {
        Step {
            text: std::mem::take(&mut self.held),
            ids: std::mem::take(&mut self.pending_ids),
            stopped: false,
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop
                    .as_bytes()
                    .starts_with(&text.as_bytes()[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_suffixes_are_held() {
        assert_eq!(partial_suffix("hello wor", "world"), 3);
        assert_eq!(partial_suffix("hello", "world"), 0);
        assert_eq!(partial_suffix("a\n", "\n\n"), 1);
        assert_eq!(partial_suffix("xab", "abc"), 2);
        // Never inside a multi-byte character.
        assert_eq!(partial_suffix("é", "\u{e9}x"), 2);
    }
}
