//! Sentence embeddings against a NumPy BERT reference
//! (tests/fixtures/make_embedding_fixture.py).

use crate::common::*;
use gantry_inference::embed::Embedder;

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
        / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
            * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

#[test]
fn embeddings_match_the_reference_and_rank_by_meaning() {
    let embedder = Embedder::load(&embed_model_dir(), &candle_core::Device::Cpu).unwrap();
    let fixture = fixture("embeddings.json");
    let cases = fixture["cases"].as_array().unwrap();
    let texts: Vec<String> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    // All at once: padding must not change any vector.
    let got = embedder.embed(&texts).unwrap();
    for (case, v) in cases.iter().zip(&got) {
        let want: Vec<f32> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "L2-normalised, got norm {norm}");
        let c = cosine(v, &want);
        assert!(
            c >= 0.999,
            "{:?}: cosine {c} to the reference",
            case["text"]
        );
    }
    let (cat, kitten, stocks) = (&got[0], &got[1], &got[2]);
    assert!(cosine(cat, kitten) > cosine(cat, stocks) + 0.3);
}
