// Encodes a JSON list of strings with a given tokenizer.json using the independent JavaScript
// implementation (@lenml/tokenizers) and writes the ids as JSON.
// Usage: node encode_with.mjs TOKENIZER_JSON STRINGS_JSON OUT_JSON
import { readFileSync, writeFileSync } from "node:fs";
import { TokenizerLoader } from "@lenml/tokenizers";

const [tokenizerPath, stringsPath, outPath] = process.argv.slice(2);
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(readFileSync(tokenizerPath, "utf8")),
  tokenizerConfig: {},
});
const strings = JSON.parse(readFileSync(stringsPath, "utf8"));
const ids = strings.map((s) => Array.from(tok.encode(s, { add_special_tokens: false })));
writeFileSync(outPath, JSON.stringify(ids));
