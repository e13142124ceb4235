//! Our GGUF tokenizer against llama.cpp's ids (fixture made by
//! tests/fixtures/make_tokenizer_fixture.mjs).

use crate::common::*;

#[test]
fn ids_match_llama_cpp_for_digits_punctuation_spaces_and_non_ascii() {
    if !real_model() {
        return;
    }
    let tokenizer = gantry_inference::tokenizer::from_gguf_file(&real_model_path()).unwrap();
    let fixture = fixture("tokenizer_ids.json");
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "ids for {text:?}");
        // And back: decoding gives the text again.
        assert_eq!(
            tokenizer.decode(&got, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
}

#[test]
fn digits_are_split_one_by_one_without_a_prefix_space() {
    if !real_model() {
        return;
    }
    let tokenizer = gantry_inference::tokenizer::from_gguf_file(&real_model_path()).unwrap();
    let ids = tokenizer.encode("12345", false).unwrap().get_ids().to_vec();
    assert_eq!(ids.len(), 5, "one token per digit: {ids:?}");
    let first = tokenizer.encode("Hello", false).unwrap().get_ids().to_vec();
    let spaced = tokenizer
        .encode(" Hello", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_ne!(first, spaced, "no prefix space is added");
}
