// llama.cpp (through node-llama-cpp's prebuilt binaries) on the same GGUF and the
// same prompt token ids: the anchor of bench/inference.sh.
//   node llamacpp.mjs MODEL.gguf IDS_COMMA_SEPARATED MAX_TOKENS THREADS REPEAT
// Prints one JSON line: best-of-REPEAT time to first token and decode tokens/s.
//   node llamacpp.mjs tokenize MODEL.gguf TEXT_FILE N   → the first N token ids
// (the same ids Gantry's tokenizer gives: inference/tests/all/tokenizer.rs).
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { getLlama } = await import(require.resolve("node-llama-cpp"));
const llama = await getLlama({ gpu: false });
if (process.argv[2] === "tokenize") {
  const [, modelPath, textFile, n] = process.argv.slice(2);
  const model = await llama.loadModel({ modelPath, gpuLayers: 0, vocabOnly: true });
  const text = (await import("node:fs")).readFileSync(textFile, "utf8");
  const ids = Array.from(model.tokenize(text, false)).slice(0, Number(n));
  if (ids.length < Number(n)) throw new Error(`text has only ${ids.length} tokens`);
  console.log(ids.join(","));
  process.exit(0);
}
const [modelPath, idsText, maxTokens, threads, repeat] = process.argv.slice(2);
const ids = idsText.split(",").map(Number);
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const context = await model.createContext({ contextSize: 1024, threads: Number(threads), batchSize: 512 });
const seq = context.getSequence();
let best = null;
for (let r = 0; r < Number(repeat) + 1; r++) {
  await seq.clearHistory();
  const t0 = performance.now();
  let first = 0, n = 0;
  for await (const _ of seq.evaluate(ids, { temperature: 0 })) {
    if (n === 0) first = performance.now();
    if (++n >= Number(maxTokens)) break;
  }
  const end = performance.now();
  const row = { engine: "llama.cpp (node-llama-cpp 3.21.1)", prompt_tokens: ids.length, generated_tokens: n,
    ttft_ms: first - t0, decode_tokens_per_s: (n - 1) / ((end - first) / 1000) };
  if (r > 0 && (!best || row.decode_tokens_per_s > best.decode_tokens_per_s)) best = row; // r=0 warms up
}
console.log(JSON.stringify(best));
process.exit(0);
