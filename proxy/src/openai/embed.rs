//! Embeddings: one unary call to a backend (with the shared attempts), the
//! vectors returned as floats or base64.

use super::attempt::Attempts;
use super::error::ApiError;
use super::schema::*;
use super::spans::{Answered, AttemptSpan, AttemptSpans};
use super::whole::Whole;
use super::{Api, Outcome};
use crate::metrics::Direction;
use crate::upstream::inference::InferencePool;
use gantry_proto as pb;
use std::time::Instant;

impl Api {
    /// Serve an embeddings request on `pool`.
    pub(super) async fn embed(
        &self,
        pool: &InferencePool,
        req: EmbeddingRequest,
        call: &super::ApiCall<'_>,
        outcome: &mut Outcome,
    ) -> Result<Whole, ApiError> {
        let (request_id, reservation) = (call.request_id, call.reservation);
        let deadline = Instant::now() + pool.config.request_timeout;
        let inputs = req.inputs();
        let load = inputs.iter().map(|s| s.len() as u64 / 4).sum();
        let spans = AttemptSpans::embeddings(call.trace, &req.model);
        let mut attempts = Attempts::new(self, pool, &req.model, deadline)
            .with_spans(spans)
            .with_preferred(call.preferred_backend.clone());
        let answered = attempts
            .call(
                outcome,
                load,
                "input",
                request_id,
                |mut client, left, span| {
                    let message = pb::EmbedRequest {
                        model: req.model.clone(),
                        inputs: inputs.clone(),
                    };
                    let request = AttemptSpan::request(span.as_ref(), message, left);
                    async move { Ok(Some(client.embed(request).await?.into_inner())) }
                },
            )
            .await;
        let r = match answered {
            Ok(mut a) => {
                a.span.answered(Answered {
                    model: &req.model,
                    id: None,
                    input_tokens: a.value.prompt_tokens,
                    output_tokens: None,
                    finish_reason: None,
                });
                a.value
            }
            Err(err) => {
                self.count(&req.model, outcome, &err.status.to_string());
                return Err(err);
            }
        };
        let backend = outcome.backend.clone().unwrap_or_else(|| "none".into());
        let model = self.model_label(&req.model);
        let prompt_tokens = r.prompt_tokens.into();
        if let Some(reservation) = reservation {
            reservation.settle(prompt_tokens, 0);
        }
        self.metrics
            .tokens(model, &backend, Direction::In, prompt_tokens);
        self.count(&req.model, outcome, "200");
        let data = r
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(i, e)| Embedding {
                object: "embedding",
                index: i as u32,
                embedding: match req.encoding_format {
                    EncodingFormat::Float => EmbeddingVector::Float(e.values),
                    EncodingFormat::Base64 => {
                        use base64::Engine;
                        let bytes: Vec<u8> =
                            e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                        EmbeddingVector::Base64(
                            base64::engine::general_purpose::STANDARD.encode(bytes),
                        )
                    }
                },
            })
            .collect();
        let list = EmbeddingList {
            object: "list",
            data,
            model: req.model.clone(),
            usage: EmbeddingUsage {
                prompt_tokens: r.prompt_tokens,
                total_tokens: r.prompt_tokens,
            },
        };
        Ok(Whole::json(serde_json::to_vec(&list).expect("serializes")))
    }
}
