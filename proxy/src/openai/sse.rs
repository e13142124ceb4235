//! The answer's encoding: OpenAI's chat and completion objects, whole or as
//! server-sent events (`data: {...}\n\n`). One encoder for each chunk kind;
//! the per-token delta has a fast path that the tests hold to serde's bytes.

use super::schema::*;
use bytes::{Bytes, BytesMut};

/// `io::Write` into a `BytesMut`, so serde escapes text straight into the
/// output buffer.
struct BytesMutWriter<'a>(&'a mut BytesMut);

impl std::io::Write for BytesMutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What kind of generation answer to write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Chat,
    Completion,
}

/// The answer being written: ids and options shared by all its chunks.
pub(super) struct Answer {
    shape: Shape,
    pub(super) request_id: String,
    id: String,
    created: u64,
    pub(super) model: String,
    pub(super) include_usage: bool,
    /// `data: {...` up to the new text of a plain delta chunk; built once per
    /// answer so each token only costs escaping its text.
    delta_prefix: Vec<u8>,
}

impl Answer {
    /// The answer's `id` (`chatcmpl-…`, `cmpl-…`).
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn new(shape: Shape, request_id: &str, model: &str, include_usage: bool) -> Self {
        let kind = if shape == Shape::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        let mut answer = Answer {
            shape,
            request_id: request_id.to_string(),
            id: format!("{kind}-{request_id}"),
            created: crate::clock::unix_seconds(),
            model: model.to_string(),
            include_usage,
            delta_prefix: Vec::new(),
        };
        let json = |s: &str| serde_json::to_string(s).expect("strings serialize");
        let (object, field) = match shape {
            Shape::Chat => ("chat.completion.chunk", r#""delta":{"content":"#),
            Shape::Completion => ("text_completion", r#""text":"#),
        };
        answer.delta_prefix = format!(
            r#"data: {{"id":{},"object":"{object}","created":{},"model":{},"choices":[{{"index":0,{field}"#,
            json(&answer.id),
            answer.created,
            json(&answer.model),
        )
        .into_bytes();
        answer
    }

    /// Append the event for new text. The first carries the role and goes
    /// through serde; every later one is the prefix built once and the text
    /// escaped, the same bytes serde would write (tested), at a fraction of
    /// the cost per token.
    pub(super) fn push_delta(&self, out: &mut BytesMut, text: &str, first: bool) {
        if first {
            out.extend_from_slice(&self.chunk(Some(text.to_string()), true, None));
            return;
        }
        out.extend_from_slice(&self.delta_prefix);
        serde_json::to_writer(BytesMutWriter(out), text).expect("strings serialize");
        out.extend_from_slice(match self.shape {
            Shape::Chat => br#"},"finish_reason":null}]}"#,
            Shape::Completion => br#","logprobs":null,"finish_reason":null}]}"#,
        });
        out.extend_from_slice(b"\n\n");
    }

    fn sse(value: &impl serde::Serialize) -> Bytes {
        let mut out = b"data: ".to_vec();
        serde_json::to_writer(&mut out, value).expect("chunks serialize");
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// One streamed event with new text and/or the finish reason.
    pub(super) fn chunk(
        &self,
        text: Option<String>,
        first: bool,
        finish: Option<&'static str>,
    ) -> Bytes {
        self.event(Some((text, first, finish)), None)
    }

    /// The usage event (`stream_options.include_usage`): no choices.
    pub(super) fn usage_chunk(&self, usage: Usage) -> Bytes {
        self.event(None, Some(usage))
    }

    /// A streamed event: one choice (text, first, finish reason) or none, and
    /// the usage or none.
    fn event(
        &self,
        choice: Option<(Option<String>, bool, Option<&'static str>)>,
        usage: Option<Usage>,
    ) -> Bytes {
        let (id, created, model) = (self.id.clone(), self.created, self.model.clone());
        match self.shape {
            Shape::Chat => Self::sse(&ChatCompletionChunk {
                id,
                object: "chat.completion.chunk",
                created,
                model,
                choices: Vec::from_iter(choice.map(|(text, first, finish)| ChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: first.then_some("assistant"),
                        content: text,
                    },
                    finish_reason: finish,
                })),
                usage,
            }),
            Shape::Completion => Self::sse(&Completion {
                id,
                object: "text_completion",
                created,
                model,
                choices: Vec::from_iter(choice.map(|(text, _, finish)| CompletionChoice {
                    index: 0,
                    text: text.unwrap_or_default(),
                    logprobs: None,
                    finish_reason: finish,
                })),
                usage,
            }),
        }
    }

    /// The whole answer (no `stream`).
    pub(super) fn full(&self, text: String, finish: &'static str, usage: Usage) -> Vec<u8> {
        match self.shape {
            Shape::Chat => serde_json::to_vec(&ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text,
                    },
                    finish_reason: finish,
                }],
                usage,
            }),
            Shape::Completion => serde_json::to_vec(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason: Some(finish),
                }],
                usage: Some(usage),
            }),
        }
        .expect("answers serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delta_fast_path_writes_what_serde_writes() {
        let texts = [
            "",
            "plain",
            " leading space",
            "quote \" and backslash \\",
            "tab\tnew\nline\rcr",
            "\u{0}\u{1f}\u{7f} controls",
            "héllo wörld",
            "emoji 🦀🚀",
            "</script><!--",
            "\u{2028}\u{2029} separators",
        ];
        for shape in [Shape::Chat, Shape::Completion] {
            let answer = Answer::new(shape, "rid-1", "m\"odel", false);
            for text in texts {
                let mut fast = BytesMut::new();
                answer.push_delta(&mut fast, text, false);
                let slow = answer.chunk(Some(text.to_string()), false, None);
                assert_eq!(
                    std::str::from_utf8(&fast).unwrap(),
                    std::str::from_utf8(&slow).unwrap(),
                    "{text:?}"
                );
            }
            // The first delta carries the role.
            let mut first = BytesMut::new();
            answer.push_delta(&mut first, "hi", true);
            assert_eq!(&first[..], &answer.chunk(Some("hi".into()), true, None)[..]);
        }
    }
}
