// `respin forge`: trains the project's own small LLaMA-architecture model on the public-domain
// corpus (core/data/corpus.h) and writes it as a Hugging Face model folder (config.json,
// model.safetensors in bf16, tokenizer.json, generation_config.json, README.md model card,
// SHA256SUMS of those five files).
//
// Steps: byte-level BPE tokenizer on the training split -> AdamW with linear warm-up and cosine
// decay, random windows of the training token stream (the window of step s depends only on
// (seed, s), so a resumed run sees the same data as an uninterrupted one) -> checkpoints every
// `checkpoint_every` steps, each written to a temporary folder and swapped in whole, so a stop at
// any moment leaves the last checkpoint intact -> validation perplexity (the eval protocol),
// a unigram baseline on the same tokens, and activation outlier statistics for the model card.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model/llama.h"
#include "core/util/run_control.h"

namespace respin {

struct ForgePreset {
  std::string name;
  std::string purpose;
  int64_t hidden_size = 0, intermediate_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0;
  int vocab_size = 0;
  int64_t seq_len = 0;     // training window = max_position_embeddings
  int64_t batch_size = 0;  // windows per step
  int64_t steps = 0;
  double lr = 0;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.1;
  bool tied = false;
  int64_t train_bytes = 0;   // use only this much training text (0 = all)
  int64_t eval_windows = 0;  // validation windows for the final perplexity (0 = all)
};

const std::vector<ForgePreset>& forge_presets();
ForgePreset forge_preset(const std::string& name);  // throws respin::Error for unknown names
// `preset` shortened or lengthened to `steps` (> 0): the warm-up keeps its length, but at most a
// tenth of the run (at least one step), so that a short run still decays its learning rate.
ForgePreset with_steps(ForgePreset preset, int64_t steps);

struct ForgeOptions {
  ForgePreset preset;
  std::string out_dir;
  std::string corpus_dir;        // empty = default_corpus_dir()
  uint64_t seed = 0;
  std::string compute = "auto";  // "f32", "bf16", or "auto" (the faster on this machine)
  bool resume = false;           // continue from out_dir/checkpoint
  bool save_f32 = false;         // also write out_dir/f32/ (a complete float32 model folder)
  int64_t checkpoint_every = 0;  // steps; 0 = steps / 10
};

struct OutlierRow {
  int layer = 0;
  std::string site;  // attn_input, o_proj_input, mlp_input, down_proj_input
  double kurtosis = 0, max_median_ratio = 0, absmax = 0;
};

struct ForgeResult {
  std::string out_dir;
  std::string compute;
  ModelConfig config;
  ModelWeights weights;  // final float32 master weights
  int64_t steps = 0, tokens_seen = 0, train_tokens = 0, val_tokens_scored = 0;
  double train_seconds = 0, tokens_per_s = 0, final_train_loss = 0;
  double val_perplexity = 0, unigram_val_perplexity = 0;
  std::vector<OutlierRow> outliers;
};

// Progress phases: "tokenizer", "encode", "train" (value = loss), "validate", "stats".
// Throws respin::Cancelled when stopped (the last checkpoint stays intact), respin::Error on bad
// input (missing corpus, a finished model already in out_dir without resume, ...).
ForgeResult forge(const ForgeOptions& options, RunControl* control = nullptr);

}  // namespace respin
