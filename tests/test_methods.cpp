// core/methods: RTN. With every quantizer off the model is unchanged; the weights land on the
// quantization grid; the output error grows as bits shrink; the activation hook really quantizes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>

#include "core/methods/rtn.h"
#include "core/model/random_init.h"
#include "core/util/error.h"

using namespace respin;

namespace {

LlamaModel test_model() {
  ModelConfig c = make_model_config("llama", 64, 128, 2, 4, 2, 100, 64);  // head_dim 16
  RandomInitOptions o;
  o.seed = 2;
  o.std = 0.2;
  return LlamaModel(c, random_weights(c, o));
}

QuantConfig wak(int w, int a, int kv) {
  QuantConfig q;
  q.weight.bits = w;
  q.activation.bits = a;
  q.kv.bits = kv;
  return q;
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

}  // namespace

TEST(Rtn, AllSixteenBitsIsTheOriginalModel) {
  at::manual_seed(601);
  LlamaModel fp = test_model();
  at::Tensor ids = at::randint(100, {2, 24}, at::kLong);
  EXPECT_TRUE(at::equal(quantize_rtn(fp, wak(16, 16, 16)).forward(ids), fp.forward(ids)));
}

TEST(Rtn, WeightsLandOnTheGridAndEmbeddingsStayFullPrecision) {
  at::manual_seed(602);
  LlamaModel fp = test_model();
  LlamaModel q = quantize_rtn(fp, wak(3, 16, 16));
  at::Tensor w = q.weights().layers[1].gate_proj;
  for (int64_t r = 0; r < w.size(0); r += 17) EXPECT_LE(std::get<0>(at::_unique(w[r])).numel(), 8) << r;
  EXPECT_TRUE(at::equal(q.weights().embed_tokens, fp.weights().embed_tokens));
  EXPECT_TRUE(at::equal(q.weights().lm_head, fp.weights().lm_head));
  EXPECT_TRUE(at::equal(q.weights().layers[0].input_norm, fp.weights().layers[0].input_norm));
}

TEST(Rtn, ErrorGrowsAsBitsShrinkForEachQuantizer) {
  at::manual_seed(603);
  LlamaModel fp = test_model();
  at::Tensor ids = at::randint(100, {2, 32}, at::kLong);
  at::Tensor ref = fp.forward(ids);
  auto err = [&](QuantConfig q) { return relative_error(quantize_rtn(fp, q).forward(ids), ref); };
  for (int which = 0; which < 3; ++which) {
    std::map<int, double> e;
    for (int bits : {8, 4, 3, 2})
      e[bits] = err(wak(which == 0 ? bits : 16, which == 1 ? bits : 16, which == 2 ? bits : 16));
    EXPECT_GT(e[8], 0) << "quantizer " << which;
    EXPECT_LT(e[8], e[4]) << "quantizer " << which;
    EXPECT_LT(e[4], e[3]) << "quantizer " << which;
    EXPECT_LT(e[3], e[2]) << "quantizer " << which;
    // An 8-bit grid is 16x finer than a 4-bit one: its error must be far smaller.
    EXPECT_LT(e[8], e[4] / 5) << "quantizer " << which;
  }
  EXPECT_GT(err(wak(4, 4, 4)), err(wak(4, 16, 16)));
}

TEST(Rtn, HookQuantizesLinearInputsAndKvButNotQueries) {
  at::manual_seed(604);
  QuantConfig q = wak(16, 2, 2);
  ActivationHook hook = activation_quant_hook(q);
  at::Tensor x = at::randn({2, 5, 64});
  for (HookSite site : {HookSite::AttnInput, HookSite::OProjInput, HookSite::MlpInput, HookSite::DownProjInput}) {
    at::Tensor y = x;
    hook(site, 0, y);
    EXPECT_LE(std::get<0>(at::_unique(y[0][0])).numel(), 4) << hook_site_name(site);
  }
  at::Tensor kv = at::randn({2, 2, 5, 16});
  for (HookSite site : {HookSite::Key, HookSite::Value}) {
    at::Tensor y = kv;
    hook(site, 0, y);
    EXPECT_LE(std::get<0>(at::_unique(y[0][0][0])).numel(), 4) << hook_site_name(site);
  }
  for (HookSite site : {HookSite::Query, HookSite::LmHeadInput, HookSite::AttnSkip}) {
    at::Tensor y = x;
    hook(site, 0, y);
    EXPECT_TRUE(at::equal(y, x)) << hook_site_name(site);
  }
}

TEST(Rtn, InvalidBitsAreRejected) {
  at::manual_seed(605);
  EXPECT_THROW(quantize_rtn(test_model(), wak(1, 16, 16)), Error);
  EXPECT_THROW(quantize_rtn(test_model(), wak(4, 9, 16)), Error);
}
