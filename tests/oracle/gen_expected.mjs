// Tokenizer oracle: encodes tests/oracle/strings.json with an independent implementation
// (@lenml/tokenizers, a JavaScript port of the Hugging Face tokenizers used by transformers.js)
// and writes the expected ids and decodes that tests/test_tokenizer.cpp compares against exactly.
//
// Usage: node gen_expected.mjs <output-dir>
// Writes <output-dir>/expected.json plus the derived tokenizer.json variants it tested, so the
// C++ side loads byte-for-byte the same files the oracle saw.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const outDir = process.argv[2];
if (!outDir) {
  console.error("usage: node gen_expected.mjs <output-dir>");
  process.exit(2);
}
if (!fs.existsSync(path.join(here, "node_modules", "@lenml", "tokenizers"))) {
  console.error(`${path.join(here, "node_modules")} is missing: run 'npm ci --prefix tests/oracle' first`);
  process.exit(1);
}
// Imported only now so that a missing install gets the message above, not a resolver error.
const { TokenizerLoader } = await import("@lenml/tokenizers");
fs.mkdirSync(outDir, { recursive: true });

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, "utf8"));
}

function packageModel(pkg) {
  const dir = path.join(here, "node_modules", "@lenml", pkg, "models");
  const jsonPath = path.join(dir, "tokenizer.json");
  if (!fs.existsSync(jsonPath)) {
    console.error(`missing ${jsonPath}: run 'npm ci --prefix tests/oracle' first`);
    process.exit(1);
  }
  return {
    jsonPath,
    tokenizerJSON: readJson(jsonPath),
    tokenizerConfig: readJson(path.join(dir, "tokenizer_config.json")),
  };
}

// Writes a derived tokenizer.json next to the expectations and returns its path.
function writeVariant(name, tokenizerJSON) {
  const file = path.join(outDir, `${name}.tokenizer.json`);
  fs.writeFileSync(file, JSON.stringify(tokenizerJSON));
  return file;
}

const llama2 = packageModel("tokenizer-llama2");
const llama3 = packageModel("tokenizer-llama3");

// LLaMA-2 files converted by newer transformers (legacy=false, also Mistral): no normalizer, a
// Metaspace pre-tokenizer that prepends "▁" only at the start of the input. The oracle reads
// `add_prefix_space`, HF reads `prepend_scheme`; both are set so both see the same configuration.
const llama2Metaspace = {
  ...llama2.tokenizerJSON,
  normalizer: null,
  pre_tokenizer: {
    type: "Metaspace",
    replacement: "\u2581",
    add_prefix_space: true,
    prepend_scheme: "first",
    split: false,
  },
};

// GPT-2 / Qwen2-style byte-level variant of the LLaMA-3 vocabulary: NFC normalizer, the ByteLevel
// pre-tokenizer's own GPT-2 regex with add_prefix_space, merges always applied (ignore_merges off),
// merges in the newer [a, b] array form, and a TemplateProcessing post-processor adding BOS.
const llama3Gpt2 = {
  ...llama3.tokenizerJSON,
  normalizer: { type: "NFC" },
  pre_tokenizer: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
  post_processor: {
    type: "TemplateProcessing",
    single: [
      { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
      { Sequence: { id: "A", type_id: 0 } },
    ],
    pair: [
      { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
      { Sequence: { id: "A", type_id: 0 } },
      { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } },
      { Sequence: { id: "B", type_id: 1 } },
    ],
    special_tokens: {
      "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [128000], tokens: ["<|begin_of_text|>"] },
    },
  },
  model: {
    ...llama3.tokenizerJSON.model,
    ignore_merges: false,
    merges: llama3.tokenizerJSON.model.merges.map((m) => m.split(" ")),
  },
};

const tokenizers = [
  { name: "llama2", file: llama2.jsonPath, json: llama2.tokenizerJSON, config: llama2.tokenizerConfig },
  {
    name: "llama2-metaspace",
    file: writeVariant("llama2-metaspace", llama2Metaspace),
    json: llama2Metaspace,
    config: llama2.tokenizerConfig,
  },
  { name: "llama3", file: llama3.jsonPath, json: llama3.tokenizerJSON, config: llama3.tokenizerConfig },
  {
    name: "llama3-gpt2",
    file: writeVariant("llama3-gpt2", llama3Gpt2),
    json: llama3Gpt2,
    config: llama3.tokenizerConfig,
  },
];

const cases = readJson(path.join(here, "strings.json")).cases;

// The oracle's decode throws on an empty id list; HF returns "".
// clean_up_tokenization_spaces is a transformers (Python) post-step, not part of tokenizers.
function decode(tok, ids, skip) {
  if (ids.length === 0) return "";
  return tok.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: false });
}

const result = {
  generator: "@lenml/tokenizers 3.7.2 (tests/oracle/gen_expected.mjs)",
  tokenizers: [],
};
for (const t of tokenizers) {
  const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON: t.json, tokenizerConfig: t.config });
  const out = [];
  for (const c of cases) {
    const ids = tok.encode(c.text, { add_special_tokens: false });
    const idsSpecial = tok.encode(c.text, { add_special_tokens: true });
    out.push({
      name: c.name,
      text: c.text,
      ids,
      ids_special: idsSpecial,
      decoded: decode(tok, ids, false),
      decoded_special: decode(tok, idsSpecial, false),
      decoded_special_skip: decode(tok, idsSpecial, true),
    });
  }
  result.tokenizers.push({ name: t.name, tokenizer_json: t.file, cases: out });
  console.log(`${t.name}: ${out.length} strings`);
}

fs.writeFileSync(path.join(outDir, "expected.json"), JSON.stringify(result, null, 1));
console.log(`wrote ${path.join(outDir, "expected.json")}`);
