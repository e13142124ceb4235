//! KV block events as a gateway sees them: WatchKvBlocks reports the blocks a
//! prompt fills, named exactly as a router names them from the prompt format.

use crate::common::*;
use crate::grpc::*;
use gantry_proto::v1 as pb;
use std::time::Duration;

/// The next KV block update of model `GEN` on a WatchKvBlocks stream.
async fn next_kv_update(stream: &mut tonic::Streaming<pb::KvBlocksUpdate>) -> pb::KvBlocksUpdate {
    loop {
        let update = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("an update in time")
            .unwrap()
            .expect("stream open");
        if update.model == GEN {
            return update;
        }
    }
}

#[tokio::test]
async fn watchers_see_the_blocks_a_prompt_fills_named_as_the_gateway_names_them() {
    let backend = start(small()).await;
    let mut c = client(backend.addr).await;
    let mut watch = c
        .watch_kv_blocks(pb::WatchKvBlocksRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_kv_update(&mut watch).await;
    assert!(first.snapshot && first.stored.is_empty(), "{first:?}");
    assert_eq!(
        first.block_tokens as usize,
        gantry_proto::prefix::KV_BLOCK_TOKENS
    );

    // 70 prompt tokens: four whole blocks, named as they fill.
    let ids: Vec<u32> = (0..70).map(|i| 1000 + i * 3).collect();
    let request = |max_tokens| pb::GenerateRequest {
        model: GEN.into(),
        input: Some(pb::generate_request::Input::TokenIds(pb::TokenIdsInput {
            ids: ids.clone(),
        })),
        sampling: Some(pb::SamplingParams {
            max_tokens,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (_, _, fin) = collect(c.generate(request(2)).await.unwrap().into_inner())
        .await
        .unwrap();
    assert_eq!(fin.usage.unwrap().cached_tokens, 0);
    let want = gantry_proto::prefix::block_hashes(&ids);
    let mut stored = Vec::new();
    let mut sequence = first.sequence;
    while stored.len() < want.len() {
        let change = next_kv_update(&mut watch).await;
        assert!(!change.snapshot);
        assert_eq!(change.sequence, sequence + 1, "numbered without gaps");
        sequence = change.sequence;
        stored.extend(change.stored);
    }
    assert_eq!(
        stored, want,
        "the backend names blocks as gantry_proto::prefix does"
    );

    // The same prompt again reuses them, and says so in its usage.
    let (_, _, fin) = collect(c.generate(request(2)).await.unwrap().into_inner())
        .await
        .unwrap();
    assert_eq!(fin.usage.unwrap().cached_tokens, 64);

    // A watcher that (re)connects now starts from a snapshot holding them.
    let mut again = c
        .watch_kv_blocks(pb::WatchKvBlocksRequest {})
        .await
        .unwrap()
        .into_inner();
    let snapshot = next_kv_update(&mut again).await;
    assert!(snapshot.snapshot);
    assert!(snapshot.sequence >= sequence);
    assert!(
        want.iter().all(|h| snapshot.stored.contains(h)),
        "{snapshot:?}"
    );
    backend.shutdown().await.unwrap();
}

/// Chats as a client might send them: several roles, digits, emoji, control-token
/// look-alikes in the content, and lengths that end blocks anywhere.
fn varied_chats() -> Vec<Vec<pb::ChatMessage>> {
    let words = [
        "train",
        "platform",
        "12345",
        "York",
        "<|im_end|>",
        "<|im_start|>system",
        "café",
        "🚆",
        "  spaced  ",
        "\n",
        "Leeds,",
        "tickets?",
        "a",
        "timetable",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..6)
        .map(|_| {
            let turns = 1 + next(4);
            (0..turns)
                .map(|t| pb::ChatMessage {
                    role: match (t, next(3)) {
                        (0, 0) => "system",
                        (t, _) if t % 2 == 1 => "assistant",
                        _ => "user",
                    }
                    .into(),
                    content: (0..5 + next(40))
                        .map(|_| words[next(words.len())])
                        .collect::<Vec<_>>()
                        .join(" "),
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_router_given_the_prompt_format_tokenizes_and_names_blocks_as_the_backend_does() {
    let backend = start(small()).await;
    let mut c = client(backend.addr).await;
    let format = c
        .get_prompt_format(pb::GetPromptFormatRequest { model: GEN.into() })
        .await
        .unwrap()
        .into_inner();
    let fingerprint = format.fingerprint;
    let local = gantry_prompt::PromptFormat::from_proto(format);
    assert_eq!(local.fingerprint(), fingerprint);
    let listed = c
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let info = listed.models.iter().find(|m| m.name == GEN).unwrap();
    assert_eq!(info.prompt_format_fingerprint, fingerprint);
    let router = gantry_prompt::PromptEncoder::from_format(&local, 1).unwrap();

    let mut watch = c
        .watch_kv_blocks(pb::WatchKvBlocksRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut named: std::collections::HashSet<u64> = next_kv_update(&mut watch)
        .await
        .stored
        .into_iter()
        .collect();
    for messages in varied_chats() {
        let chat = messages
            .iter()
            .map(|m| gantry_prompt::chat::Message {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect();
        let ids = router
            .encode_now(&gantry_prompt::PromptText::Chat(chat))
            .unwrap();
        let request = pb::GenerateRequest {
            model: GEN.into(),
            input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
                messages,
            })),
            sampling: Some(pb::SamplingParams {
                max_tokens: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (_, _, fin) = collect(c.generate(request).await.unwrap().into_inner())
            .await
            .unwrap();
        assert_eq!(
            fin.usage.unwrap().prompt_tokens as usize,
            ids.len(),
            "the same token count"
        );
        // With one token generated, the cache holds the prompt alone: its whole
        // blocks are named, by the names the router computes.
        let want = gantry_proto::prefix::block_hashes(&ids);
        while !want.iter().all(|h| named.contains(h)) {
            named.extend(next_kv_update(&mut watch).await.stored);
        }
    }
    backend.shutdown().await.unwrap();
}
