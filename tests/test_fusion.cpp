// core/rotation/fusion: RMSNorm fusion and residual rotation leave the model's function unchanged
// (the invariance QuaRot and SpinQuant rest on), for random orthogonal and Hadamard rotations,
// tied and untied embeddings, Qwen2 biases and attention/MLP biases; and they refuse misuse.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/model/random_init.h"
#include "core/rotation/fusion.h"
#include "core/rotation/hadamard_transform.h"
#include "core/util/error.h"

using namespace respin;

namespace {

LlamaModel model_of(const std::string& arch, bool tied, bool biases) {
  // hidden 48 = 12 * 4 exercises a non-power-of-two Hadamard; head_dim 12.
  ModelConfig c = make_model_config(arch, 48, 96, 2, 4, 2, 60, 64);
  c.attention_bias = biases;
  c.mlp_bias = biases;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tied;
  RandomInitOptions o;
  o.seed = 8;
  o.std = 0.2;
  o.norm_jitter = 0.3;
  return LlamaModel(c, random_weights(c, o));
}

at::Tensor random_orthogonal(int64_t n) {
  return std::get<0>(at::linalg_qr(at::randn({n, n}, at::kDouble), "reduced"));
}

double rel(const at::Tensor& a, const at::Tensor& b) { return ((a - b).abs().max() / b.abs().max()).item<double>(); }

}  // namespace

TEST(Fusion, NormFusionAndRotationKeepTheFunction) {
  at::manual_seed(501);
  at::Tensor ids = at::randint(60, {2, 20}, at::kLong);
  for (const auto& [arch, tied, biases] : std::vector<std::tuple<std::string, bool, bool>>{
           {"llama", false, false}, {"llama", true, false}, {"qwen2", false, false}, {"llama", false, true}}) {
    LlamaModel m = model_of(arch, tied, biases);
    at::Tensor ref = m.forward(ids);
    LlamaModel fused = fuse_rms_norms(m);
    EXPECT_FALSE(fused.config().tie_word_embeddings);
    EXPECT_LT(rel(fused.forward(ids), ref), 1e-5) << arch << tied << biases;
    for (const at::Tensor& r : {random_orthogonal(48), HadamardTransform::of_size(48).dense()}) {
      LlamaModel rotated = rotate_residual(fused, r);
      EXPECT_LT(rel(rotated.forward(ids), ref), 1e-5) << arch << tied << biases;
      // The weights really changed: this is not the identity.
      EXPECT_GT((rotated.weights().layers[0].q_proj - fused.weights().layers[0].q_proj).abs().max().item<double>(), 1e-3);
    }
  }
}

TEST(Fusion, RotationMovesTheResidualStreamIntoTheNewBasis) {
  at::manual_seed(502);
  // After rotation, the skip path carries h R: observe it through the hook.
  LlamaModel m = fuse_rms_norms(model_of("llama", false, false));
  at::Tensor r = random_orthogonal(48);
  LlamaModel rot = rotate_residual(m, r);
  at::Tensor ids = at::randint(60, {1, 9}, at::kLong);
  at::Tensor h_plain, h_rot;
  m.set_hook([&](HookSite s, int layer, at::Tensor& x) { if (s == HookSite::MlpSkip && layer == 1) h_plain = x.clone(); });
  rot.set_hook([&](HookSite s, int layer, at::Tensor& x) { if (s == HookSite::MlpSkip && layer == 1) h_rot = x.clone(); });
  m.forward(ids);
  rot.forward(ids);
  EXPECT_LT(rel(h_rot, at::matmul(h_plain.to(at::kDouble), r).to(at::kFloat)), 1e-5);
}

TEST(Fusion, CenteringEmbeddingsIsOptInAndChangesTheModelSlightly) {
  at::manual_seed(503);
  LlamaModel m = model_of("llama", false, false);
  at::Tensor ids = at::randint(60, {1, 12}, at::kLong);
  FusionOptions o;
  o.center_embeddings = true;
  LlamaModel centered = fuse_rms_norms(m, o);
  EXPECT_LT(centered.weights().embed_tokens.mean(-1).abs().max().item<double>(), 1e-6);
  EXPECT_GT(rel(centered.forward(ids), m.forward(ids)), 1e-6);
}

TEST(Fusion, RefusesUnfusedModelsAndWrongShapes) {
  at::manual_seed(504);
  LlamaModel m = model_of("llama", false, false);
  EXPECT_THROW(rotate_residual(m, random_orthogonal(48)), Error);
  EXPECT_THROW(rotate_residual(fuse_rms_norms(m), random_orthogonal(40)), Error);
}
