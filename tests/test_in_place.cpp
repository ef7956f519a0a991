// The phases that replace every weight (RMSNorm fusion, rotation, GPTQ) consume the model they are
// given when the caller hands it over (docs/methods.md 1.7): no tensor of the input stays alive
// beside the result, so a run never holds the model twice, and the weights are those of the
// copying forms, bit for bit.
#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/methods/gptq_model.h"
#include "core/methods/methods.h"
#include "core/methods/rotated_model.h"
#include "core/model/random_init.h"
#include "core/rotation/fusion.h"

using namespace respin;

namespace {

using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

LlamaModel model(bool tied) {
  ModelConfig c = make_model_config("llama", 64, 96, 3, 4, 2, 80, 64);
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tied;
  RandomInitOptions o;
  o.seed = 21;
  o.std = 0.15;
  o.norm_jitter = 0.3;
  return LlamaModel(c, random_weights(c, o));
}

std::vector<std::pair<std::string, const at::Tensor*>> named(const ModelWeights& w) {
  std::vector<std::pair<std::string, const at::Tensor*>> out = {
      {"embed_tokens", &w.embed_tokens}, {"final_norm", &w.final_norm}, {"lm_head", &w.lm_head}};
  for (size_t i = 0; i < w.layers.size(); ++i) {
    LayerWeights& L = const_cast<LayerWeights&>(w.layers[i]);
    int k = 0;
    for (at::Tensor* t : layer_tensors(L)) out.emplace_back("layer " + std::to_string(i) + " #" + std::to_string(k++), t);
  }
  return out;
}

std::vector<std::pair<std::string, WeakImpl>> weak_refs(const ModelWeights& w) {
  std::vector<std::pair<std::string, WeakImpl>> out;
  for (const auto& [name, t] : named(w))
    if (t->defined()) out.emplace_back(name, WeakImpl(t->getIntrusivePtr()));
  return out;
}

// The input's tensors that are still alive and are not tensors of the result: a second copy.
std::vector<std::string> second_copies(const std::vector<std::pair<std::string, WeakImpl>>& input,
                                       const ModelWeights& result) {
  std::set<const c10::TensorImpl*> kept;
  for (const auto& [name, t] : named(result))
    if (t->defined()) kept.insert(t->unsafeGetTensorImpl());
  std::vector<std::string> out;
  for (const auto& [name, weak] : input) {
    auto alive = weak.lock();
    if (alive && !kept.count(alive.get())) out.push_back(name);
  }
  return out;
}

void expect_same_weights(const ModelWeights& a, const ModelWeights& b, const std::string& what) {
  const auto na = named(a), nb = named(b);
  ASSERT_EQ(na.size(), nb.size());
  for (size_t i = 0; i < na.size(); ++i) {
    ASSERT_EQ(na[i].second->defined(), nb[i].second->defined()) << what << " " << na[i].first;
    if (na[i].second->defined()) EXPECT_TRUE(at::equal(*na[i].second, *nb[i].second)) << what << " " << na[i].first;
  }
}

ResidualRotations quarot_rotations(const ModelConfig& c) {
  return initial_rotations(Method::QuaRot, c, 5, at::kCPU).rotations.to(at::kDouble);
}

}  // namespace

TEST(InPlace, FusionAndRotationNeverHoldTheModelTwice) {
  for (bool tied : {false, true}) {
    OnlineTransforms online;
    online.qk_hadamard = online.down_hadamard = online.heads_hadamard = true;
    // The copying forms, for the reference weights, and to show the check sees a copy.
    const LlamaModel source = model(tied);
    const LlamaModel fused_copy = fuse_rms_norms(source);
    EXPECT_FALSE(second_copies(weak_refs(source.weights()), fused_copy.weights()).empty())
        << "the copying fusion keeps its input: the check must see that";
    const ResidualRotations rot = quarot_rotations(source.config());
    const ModelWeights rotated_copy = rotate_weights(fused_copy, rot, online, at::kFloat);

    LlamaModel m = model(tied);
    const auto original = weak_refs(m.weights());
    LlamaModel fused = fuse_rms_norms(std::move(m));
    EXPECT_EQ(second_copies(original, fused.weights()), std::vector<std::string>{}) << "fusion, tied " << tied;
    expect_same_weights(fused.weights(), fused_copy.weights(), "fusion");

    const auto before_rotation = weak_refs(fused.weights());
    const ModelWeights rotated = rotate_weights(std::move(fused), rot, online, at::kFloat);
    EXPECT_EQ(second_copies(before_rotation, rotated), std::vector<std::string>{}) << "rotation, tied " << tied;
    EXPECT_EQ(second_copies(original, rotated), std::vector<std::string>{});
    expect_same_weights(rotated, rotated_copy, "rotation");
  }
}

TEST(InPlace, GptqReplacesEachWeightAsItGoes) {
  at::manual_seed(7);
  const at::Tensor windows = at::randint(80, {3, 16}, at::kLong);
  GptqModelOptions o;
  o.weight.bits = 4;
  o.batch = 2;
  const LlamaModel source = model(false);
  GptqModelReport copy_report, report;
  const ModelWeights copy = gptq_quantize_model(source, {}, windows, o, nullptr, &copy_report);
  EXPECT_FALSE(second_copies(weak_refs(source.weights()), copy).empty());

  LlamaModel m = model(false);
  const auto original = weak_refs(m.weights());
  const ModelWeights q = gptq_quantize_model(std::move(m), {}, windows, o, nullptr, &report);
  EXPECT_EQ(second_copies(original, q), std::vector<std::string>{});
  expect_same_weights(q, copy, "gptq");
  EXPECT_EQ(report.layer_loss, copy_report.layer_loss);
  EXPECT_GT(report.layer_loss.at(0), 0);
}

// Without autograd the rotation's products are formed 512 rows of the result at a time, o_proj's
// head rotation and down_proj's Hadamard over copies of their own (docs/methods.md 1.9); with
// autograd recording they are whole-matrix products. The two give the same weights: a model whose
// vocabulary, hidden size and intermediate size exceed the block, per-layer rotations, a head
// rotation and down_proj's online Hadamard (640 = 20 x 32).
TEST(InPlace, BlockedRotationProductsEqualTheWholeMatrixOnes) {
  ModelConfig c = make_model_config("llama", 576, 640, 1, 9, 3, 600, 64);
  c.rms_norm_eps = 1e-6;
  RandomInitOptions o;
  o.seed = 5;
  o.std = 0.1;
  o.norm_jitter = 0.3;
  const LlamaModel fused = fuse_rms_norms(LlamaModel(c, random_weights(c, o)));
  auto orth = [](int64_t n, uint64_t seed) {
    at::manual_seed(seed);
    return std::get<0>(at::linalg_qr(at::randn({n, n}, at::kDouble), "reduced"));
  };
  ResidualRotations rot;
  rot.attn_in = {orth(576, 1)};
  rot.mlp_in = {orth(576, 2)};
  rot.final_basis = orth(576, 3);
  rot.head = {orth(64, 4)};
  OnlineTransforms online;
  online.down_hadamard = true;
  ModelWeights blocked;
  {
    c10::NoGradGuard no_grad;
    blocked = rotate_weights(fused, rot, online, at::kFloat);
  }
  ResidualRotations recorded = rot;
  for (std::vector<at::Tensor>* v : {&recorded.attn_in, &recorded.mlp_in, &recorded.head})
    for (at::Tensor& t : *v) t = t.clone().requires_grad_(true);
  recorded.final_basis = recorded.final_basis.clone().requires_grad_(true);
  const ModelWeights whole = rotate_weights(fused, recorded, online, at::kFloat);
  const auto a = named(blocked), b = named(whole);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].second->defined()) continue;
    const at::Tensor x = *a[i].second, y = b[i].second->detach();
    ASSERT_TRUE(x.sizes().equals(y.sizes())) << a[i].first;
    const double scale = y.abs().max().item<double>();
    EXPECT_LE((x - y).abs().max().item<double>(), 1e-6 * scale) << a[i].first;
  }
  // The function is the fused model's: the rotated model reproduces its logits.
  c10::NoGradGuard no_grad;
  const at::Tensor ids = at::randint(600, {1, 16}, at::kLong);
  OnlineHookOptions ho;
  ho.online = online;
  ho.skip = dense_transitions(rot);
  ho.quant.weight.bits = ho.quant.activation.bits = ho.quant.kv.bits = 16;  // the function alone
  LlamaModel rotated(c, blocked);
  rotated.set_hook(online_hook(c, ho));
  const at::Tensor want = fused.forward(ids), got = rotated.forward(ids);
  EXPECT_LE((want - got).abs().max().item<double>(), 1e-4 * (1 + want.abs().max().item<double>()));
}
