// core/model: the decoder forward against an independent float64 reference written out in
// Hugging Face's formulation (per-head loops, explicit rotation of (x_i, x_{i+d/2}) pairs,
// explicit causal softmax), loaded from HF-layout folders the tests write; GQA, tied embeddings,
// Qwen2 biases, llama3 RoPE scaling, sliding window, bf16, layer-by-layer execution, hooks, errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <set>

#include "core/io/model_config.h"
#include "core/io/safetensors.h"
#include "core/model/llama.h"
#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/util/error.h"
#include "core/util/threads.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::TempDir;

namespace {

ModelConfig tiny_config(const std::string& arch = "llama") {
  return make_model_config(arch, 32, 48, 2, 4, 2, 50, 64);  // head_dim 8
}

// Larger-than-default init so the layers do something measurable in a tiny model.
RandomInitOptions strong_init(uint64_t seed = 1) {
  RandomInitOptions o;
  o.seed = seed;
  o.std = 0.3;
  o.bias_std = 0.3;
  return o;
}

// ---- independent float64 reference ---------------------------------------------------------

using Mat = std::vector<std::vector<double>>;  // [T][n]

Mat to_mat(const at::Tensor& t2d) {
  at::Tensor t = t2d.to(at::kDouble).contiguous();
  Mat m(t.size(0), std::vector<double>(t.size(1)));
  for (int64_t i = 0; i < t.size(0); ++i)
    for (int64_t j = 0; j < t.size(1); ++j) m[i][j] = t[i][j].item<double>();
  return m;
}
std::vector<double> to_vec(const at::Tensor& t) {
  at::Tensor c = t.to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// y[t] = W x[t] + b, W as [out][in]
Mat lin(const Mat& x, const at::Tensor& w, const at::Tensor& b = at::Tensor()) {
  Mat W = to_mat(w);
  std::vector<double> bias = b.defined() ? to_vec(b) : std::vector<double>(W.size(), 0.0);
  Mat y(x.size(), std::vector<double>(W.size()));
  for (size_t t = 0; t < x.size(); ++t)
    for (size_t o = 0; o < W.size(); ++o) {
      double s = bias[o];
      for (size_t i = 0; i < x[t].size(); ++i) s += W[o][i] * x[t][i];
      y[t][o] = s;
    }
  return y;
}

Mat rmsnorm(const Mat& x, const at::Tensor& w, double eps) {
  std::vector<double> g = to_vec(w);
  Mat y = x;
  for (auto& row : y) {
    double ms = 0;
    for (double v : row) ms += v * v;
    ms /= row.size();
    for (size_t i = 0; i < row.size(); ++i) row[i] = row[i] / std::sqrt(ms + eps) * g[i];
  }
  return y;
}

std::vector<double> ref_inv_freq(const ModelConfig& c) {
  const int64_t d = c.head_dim;
  std::vector<double> f;
  for (int64_t i = 0; i < d / 2; ++i) {
    double inv = 1.0 / std::pow(c.rope_theta, double(2 * i) / d);
    const RopeScaling& rs = c.rope_scaling;
    if (rs.type == "llama3") {
      double wavelen = 2 * M_PI / inv;
      double low = rs.original_max_position_embeddings / rs.low_freq_factor;
      double high = rs.original_max_position_embeddings / rs.high_freq_factor;
      if (wavelen > low) inv = inv / rs.factor;
      else if (wavelen >= high) {
        double smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) /
                        (rs.high_freq_factor - rs.low_freq_factor);
        inv = (1 - smooth) * inv / rs.factor + smooth * inv;
      }
    }
    f.push_back(inv);
  }
  return f;
}

// Rotates pairs (x_i, x_{i+d/2}) of each head by angle pos * inv_freq_i.
void rope_inplace(std::vector<double>& head, int64_t pos, const std::vector<double>& inv) {
  const size_t half = head.size() / 2;
  for (size_t i = 0; i < half; ++i) {
    double a = pos * inv[i], x1 = head[i], x2 = head[i + half];
    head[i] = x1 * std::cos(a) - x2 * std::sin(a);
    head[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
  }
}

// Logits [T][V] for one sequence.
Mat reference_forward(const ModelConfig& c, const ModelWeights& w, const std::vector<int64_t>& ids) {
  const int64_t T = ids.size(), H = c.num_attention_heads, KV = c.num_key_value_heads, hd = c.head_dim;
  Mat emb = to_mat(w.embed_tokens);
  Mat x(T);
  for (int64_t t = 0; t < T; ++t) x[t] = emb[ids[t]];
  std::vector<double> inv = ref_inv_freq(c);
  for (size_t layer = 0; layer < w.layers.size(); ++layer) {
    const LayerWeights& L = w.layers[layer];
    const std::optional<int64_t> window = c.window_of_layer(static_cast<int64_t>(layer));
    Mat h = rmsnorm(x, L.input_norm, c.rms_norm_eps);
    Mat q = lin(h, L.q_proj, L.q_bias), k = lin(h, L.k_proj, L.k_bias), v = lin(h, L.v_proj, L.v_bias);
    Mat att(T, std::vector<double>(H * hd, 0.0));
    for (int64_t head = 0; head < H; ++head) {
      const int64_t kvh = head / (H / KV);
      std::vector<std::vector<double>> qh(T), kh(T);
      for (int64_t t = 0; t < T; ++t) {
        qh[t].assign(q[t].begin() + head * hd, q[t].begin() + (head + 1) * hd);
        kh[t].assign(k[t].begin() + kvh * hd, k[t].begin() + (kvh + 1) * hd);
        rope_inplace(qh[t], t, inv);
        rope_inplace(kh[t], t, inv);
      }
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s;
        int64_t first = 0;
        if (window && *window < T) first = std::max<int64_t>(0, i - *window + 1);
        double mx = -1e300;
        for (int64_t j = first; j <= i; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < hd; ++e) dot += qh[i][e] * kh[j][e];
          s.push_back(dot / std::sqrt(double(hd)));
          mx = std::max(mx, s.back());
        }
        double z = 0;
        for (double& v2 : s) z += (v2 = std::exp(v2 - mx));
        for (int64_t j = first; j <= i; ++j)
          for (int64_t e = 0; e < hd; ++e) att[i][head * hd + e] += s[j - first] / z * v[j][kvh * hd + e];
      }
    }
    Mat o = lin(att, L.o_proj, L.o_bias);
    for (int64_t t = 0; t < T; ++t)
      for (size_t e = 0; e < x[t].size(); ++e) x[t][e] += o[t][e];
    Mat m = rmsnorm(x, L.post_attention_norm, c.rms_norm_eps);
    Mat g = lin(m, L.gate_proj, L.gate_bias), u = lin(m, L.up_proj, L.up_bias);
    for (int64_t t = 0; t < T; ++t)
      for (size_t e = 0; e < g[t].size(); ++e) g[t][e] = g[t][e] / (1 + std::exp(-g[t][e])) * u[t][e];
    Mat dn = lin(g, L.down_proj, L.down_bias);
    for (int64_t t = 0; t < T; ++t)
      for (size_t e = 0; e < x[t].size(); ++e) x[t][e] += dn[t][e];
  }
  return lin(rmsnorm(x, w.final_norm, c.rms_norm_eps), w.lm_head);
}

// Max |a - b| / max |b| between a model's logits [1, T, V] and the reference.
double relative_error(const at::Tensor& logits, const Mat& ref) {
  at::Tensor l = logits.to(at::kDouble)[0];
  double max_diff = 0, max_ref = 0;
  for (size_t t = 0; t < ref.size(); ++t)
    for (size_t v = 0; v < ref[t].size(); ++v) {
      max_diff = std::max(max_diff, std::abs(l[t][v].item<double>() - ref[t][v]));
      max_ref = std::max(max_ref, std::abs(ref[t][v]));
    }
  return max_diff / max_ref;
}

std::vector<int64_t> some_ids(int64_t T, int64_t vocab, uint64_t seed = 5) {
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < T; ++t) ids.push_back(int64_t((t * 7 + seed * 13 + t * t) % vocab));
  return ids;
}

at::Tensor as_batch(const std::vector<int64_t>& ids) {
  return at::tensor(ids).view({1, static_cast<int64_t>(ids.size())});
}

// Writes config + f32 safetensors into `dir`, loads it back with the real loader.
LlamaModel write_and_load(const TempDir& dir, const ModelConfig& c, const ModelWeights& w,
                          at::ScalarType dtype = at::kFloat) {
  SaveOptions so;
  so.file_dtype = DType::F32;
  save_model(dir.path(), c, w, so);
  return load_model(dir.path(), {dtype});
}

class ModelTest : public ::testing::Test {
 protected:
  // Seeded: the random token ids of a test are the same on every run, so a comparison made at
  // float-rounding tolerance gives the same verdict every time.
  void SetUp() override {
    set_compute_threads(0);
    at::manual_seed(0);
  }
};

}  // namespace

TEST_F(ModelTest, LoadedModelMatchesFloat64Reference) {
  TempDir dir;
  ModelConfig c = tiny_config();
  ModelWeights w = random_weights(c, strong_init());
  LlamaModel m = write_and_load(dir, c, w);
  std::vector<int64_t> ids = some_ids(12, c.vocab_size);
  double err = relative_error(m.forward(as_batch(ids)), reference_forward(c, w, ids));
  EXPECT_LT(err, 2e-5);
}

TEST_F(ModelTest, GqaVariants) {
  for (int64_t kv : {1, 2, 4}) {
    TempDir dir;
    ModelConfig c = tiny_config();
    c.num_key_value_heads = kv;
    ModelWeights w = random_weights(c, strong_init(kv));
    LlamaModel m = write_and_load(dir, c, w);
    std::vector<int64_t> ids = some_ids(10, c.vocab_size);
    EXPECT_LT(relative_error(m.forward(as_batch(ids)), reference_forward(c, w, ids)), 2e-5) << "kv=" << kv;
  }
}

TEST_F(ModelTest, TiedEmbeddingsAreStoredOnceAndShared) {
  TempDir dir;
  ModelConfig c = tiny_config();
  c.tie_word_embeddings = true;
  ModelWeights w = random_weights(c, strong_init());
  LlamaModel m = write_and_load(dir, c, w);
  SafetensorsFile f = SafetensorsFile::open(dir.file("model.safetensors"));
  EXPECT_EQ(f.find("lm_head.weight"), nullptr);
  EXPECT_TRUE(m.weights().lm_head.is_same(m.weights().embed_tokens));
  std::vector<int64_t> ids = some_ids(9, c.vocab_size);
  EXPECT_LT(relative_error(m.forward(as_batch(ids)), reference_forward(c, w, ids)), 2e-5);
}

TEST_F(ModelTest, Qwen2BiasesMatterAndMatchReference) {
  TempDir dir;
  ModelConfig c = tiny_config("qwen2");
  ModelWeights w = random_weights(c, strong_init());
  ASSERT_TRUE(w.layers[0].q_bias.defined());
  LlamaModel m = write_and_load(dir, c, w);
  SafetensorsFile f = SafetensorsFile::open(dir.file("model.safetensors"));
  EXPECT_NE(f.find("model.layers.1.self_attn.k_proj.bias"), nullptr);
  EXPECT_EQ(f.find("model.layers.1.self_attn.o_proj.bias"), nullptr);
  std::vector<int64_t> ids = some_ids(11, c.vocab_size);
  at::Tensor logits = m.forward(as_batch(ids));
  EXPECT_LT(relative_error(logits, reference_forward(c, w, ids)), 2e-5);
  // Zeroing the biases changes the output: they are really applied.
  ModelWeights w0 = m.weights();
  for (auto& L : w0.layers) L.q_bias = at::zeros_like(L.q_bias), L.v_bias = at::zeros_like(L.v_bias);
  LlamaModel m0(c, w0);
  EXPECT_GT((m0.forward(as_batch(ids)) - logits).abs().max().item<double>(), 1e-3);
}

TEST_F(ModelTest, Llama3RopeScaling) {
  ModelConfig c = tiny_config();
  c.head_dim = 64;
  c.hidden_size = 128;
  c.rope_theta = 500000;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 32;
  c.rope_scaling.low_freq_factor = 1;
  c.rope_scaling.high_freq_factor = 4;
  c.rope_scaling.original_max_position_embeddings = 8192;
  std::vector<double> ref = ref_inv_freq(c);
  at::Tensor got = rope_inv_freq(c).to(at::kDouble);
  int scaled = 0, kept = 0, smoothed = 0;
  ModelConfig plain = c;
  plain.rope_scaling.type = "none";
  at::Tensor unscaled = rope_inv_freq(plain).to(at::kDouble);
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_NEAR(got[i].item<double>() / ref[i], 1.0, 1e-5) << i;
    double ratio = got[i].item<double>() / unscaled[i].item<double>();
    if (std::abs(ratio - 1) < 1e-6) ++kept;
    else if (std::abs(ratio - 1.0 / 32) < 1e-6) ++scaled;
    else ++smoothed;
  }
  // All three regimes occur for these settings (high, low and medium frequencies).
  EXPECT_GT(kept, 0);
  EXPECT_GT(scaled, 0);
  EXPECT_GT(smoothed, 0);
  // And the forward with scaling matches the reference.
  TempDir dir;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  ModelWeights w = random_weights(c, strong_init());
  LlamaModel m = write_and_load(dir, c, w);
  std::vector<int64_t> ids = some_ids(8, c.vocab_size);
  EXPECT_LT(relative_error(m.forward(as_batch(ids)), reference_forward(c, w, ids)), 2e-5);
}

TEST_F(ModelTest, MistralSlidingWindow) {
  TempDir dir;
  ModelConfig c = tiny_config("mistral");
  c.sliding_window = 4;
  ModelWeights w = random_weights(c, strong_init());
  LlamaModel m = write_and_load(dir, c, w);
  std::vector<int64_t> ids = some_ids(12, c.vocab_size);
  at::Tensor windowed = m.forward(as_batch(ids));
  EXPECT_LT(relative_error(windowed, reference_forward(c, w, ids)), 2e-5);
  ModelConfig full = c;
  full.sliding_window.reset();
  LlamaModel mf(full, m.weights());
  at::Tensor unwindowed = mf.forward(as_batch(ids));
  // Identical while the sequence fits in the window, different after.
  EXPECT_LT((windowed.narrow(1, 0, 4) - unwindowed.narrow(1, 0, 4)).abs().max().item<double>(), 1e-6);
  EXPECT_GT((windowed.narrow(1, 4, 8) - unwindowed.narrow(1, 4, 8)).abs().max().item<double>(), 1e-3);
}

TEST_F(ModelTest, Qwen2SlidingWindowOnSomeLayersOnly) {
  // transformers' Qwen2: layers from max_window_layers on (or as layer_types says) slide, the
  // others attend to the whole prefix.
  TempDir dir;
  ModelConfig c = tiny_config("qwen2");
  c.sliding_window = 3;
  c.layer_sliding = {false, true};
  ModelWeights w = random_weights(c, strong_init());
  LlamaModel m = write_and_load(dir, c, w);
  EXPECT_EQ(m.config().layer_sliding, c.layer_sliding);  // through config.json's layer_types
  std::vector<int64_t> ids = some_ids(10, c.vocab_size);
  at::Tensor logits = m.forward(as_batch(ids));
  EXPECT_LT(relative_error(logits, reference_forward(c, w, ids)), 2e-5);
  // Differs from both all-sliding and no-sliding.
  for (std::vector<bool> other : {std::vector<bool>{true, true}, std::vector<bool>{false, false}}) {
    ModelConfig o = c;
    o.layer_sliding = other;
    EXPECT_GT((LlamaModel(o, m.weights()).forward(as_batch(ids)) - logits).abs().max().item<double>(), 1e-3);
  }
}

TEST_F(ModelTest, LlamaAttentionAndMlpBiasesMatchReference) {
  // attention_bias (q/k/v/o) and mlp_bias (gate/up/down), as transformers' LlamaConfig has them.
  TempDir dir;
  ModelConfig c = tiny_config();
  c.attention_bias = true;
  c.mlp_bias = true;
  ModelWeights w = random_weights(c, strong_init());
  LlamaModel m = write_and_load(dir, c, w);
  SafetensorsFile f = SafetensorsFile::open(dir.file("model.safetensors"));
  EXPECT_NE(f.find("model.layers.1.self_attn.o_proj.bias"), nullptr);
  EXPECT_NE(f.find("model.layers.1.mlp.down_proj.bias"), nullptr);
  std::vector<int64_t> ids = some_ids(9, c.vocab_size);
  at::Tensor logits = m.forward(as_batch(ids));
  EXPECT_LT(relative_error(logits, reference_forward(c, w, ids)), 2e-5);
  ModelWeights w0 = m.weights();
  for (auto& L : w0.layers) L.o_bias = at::zeros_like(L.o_bias), L.down_bias = at::zeros_like(L.down_bias);
  EXPECT_GT((LlamaModel(c, w0).forward(as_batch(ids)) - logits).abs().max().item<double>(), 1e-3);
}

TEST_F(ModelTest, LongSequencesAcrossAttentionBlocks) {
  // 600 tokens span three query blocks (the last partial); with a 300-token window the visible
  // keys of a block start inside an earlier block.
  for (bool windowed : {false, true}) {
    ModelConfig c = tiny_config(windowed ? "mistral" : "llama");
    c.num_hidden_layers = 1;
    c.max_position_embeddings = 1024;
    if (windowed) c.sliding_window = 300;
    ModelWeights w = random_weights(c, strong_init(4));
    LlamaModel m(c, w);
    std::vector<int64_t> ids = some_ids(600, c.vocab_size);
    EXPECT_LT(relative_error(m.forward(as_batch(ids)), reference_forward(c, w, ids)), 2e-5)
        << (windowed ? "sliding window" : "full causal");
  }
}

TEST_F(ModelTest, Bfloat16CloseToFloat32) {
  TempDir dir;
  ModelConfig c = tiny_config();
  ModelWeights w = random_weights(c, strong_init());
  save_model(dir.path(), c, w, {DType::BF16, ""});
  LlamaModel m32 = load_model(dir.path(), {at::kFloat});
  LlamaModel m16 = load_model(dir.path(), {at::kBFloat16});
  EXPECT_EQ(m16.dtype(), at::kBFloat16);
  at::Tensor ids = as_batch(some_ids(16, c.vocab_size));
  at::Tensor a = m32.forward(ids), b = m16.forward(ids).to(at::kFloat);
  double rel = ((a - b).abs().max() / a.abs().max()).item<double>();
  EXPECT_LT(rel, 0.05);
  EXPECT_GT(rel, 0.0);  // really computed in bf16
}

TEST_F(ModelTest, LayerByLayerOverChunksEqualsWholeForward) {
  // Calibration runs one layer over all samples before the next; that must give the same result.
  ModelConfig c = tiny_config();
  LlamaModel m(c, random_weights(c, strong_init()));
  at::Tensor ids = at::randint(c.vocab_size, {6, 10}, at::kLong);
  at::Tensor whole = m.forward(ids);
  ForwardContext ctx = m.make_context(10);
  std::vector<at::Tensor> chunks = {m.embed(ids.narrow(0, 0, 2)), m.embed(ids.narrow(0, 2, 3)),
                                    m.embed(ids.narrow(0, 5, 1))};
  for (int layer = 0; layer < c.num_hidden_layers; ++layer)
    for (auto& h : chunks) h = m.layer_forward(layer, h, ctx);
  std::vector<at::Tensor> logits;
  for (auto& h : chunks) logits.push_back(m.head(h));
  EXPECT_LT((at::cat(logits, 0) - whole).abs().max().item<double>(), 1e-5);
  // Batched windows are independent: row 3 alone gives the same logits.
  EXPECT_LT((m.forward(ids.narrow(0, 3, 1)) - whole.narrow(0, 3, 1)).abs().max().item<double>(), 1e-5);
}

TEST_F(ModelTest, HooksSeeEverySiteAndCanReplaceActivations) {
  ModelConfig c = tiny_config();
  LlamaModel m(c, random_weights(c, strong_init()));
  at::Tensor ids = at::randint(c.vocab_size, {2, 7}, at::kLong);
  at::Tensor base = m.forward(ids);
  std::map<std::pair<int, int>, std::vector<int64_t>> seen;
  m.set_hook([&](HookSite site, int layer, at::Tensor& x) {
    seen[{static_cast<int>(site), layer}] = x.sizes().vec();
  });
  at::Tensor observed = m.forward(ids);
  EXPECT_TRUE(at::equal(observed, base));  // observing changes nothing
  EXPECT_EQ(seen.size(), 9u * c.num_hidden_layers + 1);
  auto shape = [&](HookSite s, int l) { return seen.at({static_cast<int>(s), l}); };
  EXPECT_EQ(shape(HookSite::AttnInput, 1), (std::vector<int64_t>{2, 7, 32}));
  EXPECT_EQ(shape(HookSite::Query, 0), (std::vector<int64_t>{2, 4, 7, 8}));
  EXPECT_EQ(shape(HookSite::Key, 0), (std::vector<int64_t>{2, 2, 7, 8}));
  EXPECT_EQ(shape(HookSite::Value, 1), (std::vector<int64_t>{2, 2, 7, 8}));
  EXPECT_EQ(shape(HookSite::OProjInput, 0), (std::vector<int64_t>{2, 7, 32}));
  EXPECT_EQ(shape(HookSite::MlpInput, 0), (std::vector<int64_t>{2, 7, 32}));
  EXPECT_EQ(shape(HookSite::DownProjInput, 1), (std::vector<int64_t>{2, 7, 48}));
  EXPECT_EQ(shape(HookSite::LmHeadInput, -1), (std::vector<int64_t>{2, 7, 32}));
  EXPECT_EQ(shape(HookSite::AttnSkip, 0), (std::vector<int64_t>{2, 7, 32}));
  EXPECT_EQ(shape(HookSite::MlpSkip, 1), (std::vector<int64_t>{2, 7, 32}));

  // Replacing an activation (as fake quantization will) changes the output; rounding the
  // down_proj input to a coarse grid changes it a little, not wildly.
  m.set_hook([](HookSite site, int, at::Tensor& x) {
    if (site == HookSite::DownProjInput) x = at::round(x * 4) / 4;
  });
  at::Tensor rounded = m.forward(ids);
  double diff = (rounded - base).abs().max().item<double>();
  EXPECT_GT(diff, 1e-4);
  EXPECT_LT(diff, base.abs().max().item<double>());

  // A skip-path transform (what the rank-r residual correction will be) changes the output;
  // the identity transform does not.
  m.set_hook([](HookSite site, int, at::Tensor& x) {
    if (site == HookSite::MlpSkip) x = x * 1.0;
  });
  EXPECT_TRUE(at::allclose(m.forward(ids), base));
  m.set_hook([](HookSite site, int layer, at::Tensor& x) {
    if (site == HookSite::AttnSkip && layer == 1) x = -x;
  });
  EXPECT_GT((m.forward(ids) - base).abs().max().item<double>(), 1e-3);
}

TEST_F(ModelTest, SaveLoadRoundTripIsExactInBf16) {
  TempDir dir;
  ModelConfig c = tiny_config();
  ModelWeights w = random_weights(c, strong_init());
  save_model(dir.path(), c, w, {DType::BF16, ""});
  LlamaModel a = load_model(dir.path(), {at::kBFloat16});
  TempDir dir2;
  save_model(dir2.path(), a.config(), a.weights(), {DType::BF16, ""});
  EXPECT_EQ(respin::test::read_bytes(dir.file("model.safetensors")),
            respin::test::read_bytes(dir2.file("model.safetensors")));
  ModelConfig back = load_model_config(dir.file("config.json"));
  EXPECT_EQ(back.torch_dtype, "bfloat16");
}

TEST_F(ModelTest, LoaderErrorsNameTensorAndFile) {
  ModelConfig c = tiny_config();
  ModelWeights w = random_weights(c, strong_init());
  auto message_of = [&](ModelConfig cfg, ModelWeights wt, const std::string& tamper) {
    TempDir dir;
    save_model(dir.path(), c, wt, {DType::F32, ""});
    if (tamper == "config") respin::test::write_bytes(dir.file("config.json"), model_config_to_json(cfg));
    try {
      load_model(dir.path());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // A config expecting a larger hidden size than the stored tensors.
  ModelConfig bigger = c;
  bigger.intermediate_size = 64;
  std::string msg = message_of(bigger, w, "config");
  EXPECT_NE(msg.find("model.layers.0.mlp.gate_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[48, 32]"), std::string::npos) << msg;
  // More layers in the config than in the file.
  ModelConfig deeper = c;
  deeper.num_hidden_layers = 3;
  msg = message_of(deeper, w, "config");
  EXPECT_NE(msg.find("'model.layers.2.input_layernorm.weight' is missing"), std::string::npos) << msg;
  // Untied config but no lm_head in the file.
  ModelConfig tied = c;
  tied.tie_word_embeddings = true;
  ModelWeights wt = w;
  wt.lm_head = wt.embed_tokens;
  {
    TempDir dir;
    save_model(dir.path(), tied, wt, {DType::F32, ""});
    respin::test::write_bytes(dir.file("config.json"), model_config_to_json(c));
    try {
      load_model(dir.path());
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("lm_head.weight"), std::string::npos) << e.what();
    }
  }
  // NaN in a stored weight is refused with the file and tensor named.
  ModelWeights bad = w;
  bad.layers[1].v_proj = bad.layers[1].v_proj.clone();
  bad.layers[1].v_proj[0][0] = NAN;
  msg = message_of(c, bad, "");
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.1.self_attn.v_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("NaN"), std::string::npos) << msg;
  // So are an infinity of either sign and a NaN away from the first element (the check reduces to
  // the tensor's min and max, which propagate NaN).
  for (float v : {INFINITY, -INFINITY, NAN}) {
    ModelWeights b = w;
    b.layers[0].down_proj = b.layers[0].down_proj.clone();
    b.layers[0].down_proj[2][3] = v;
    msg = message_of(c, b, "");
    EXPECT_NE(msg.find("model.layers.0.mlp.down_proj.weight"), std::string::npos) << v << ": " << msg;
    EXPECT_NE(msg.find("NaN or infinite"), std::string::npos) << v << ": " << msg;
  }
}
