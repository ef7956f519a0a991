// The pieces of a layer-streamed run (core/model/layer_stream.h): a model read one decoder layer at
// a time from its safetensors gives the whole model's numbers bit for bit (perplexity per window,
// fused and rotated weights, GPTQ over placeholders), and a safetensors file written a tensor at a
// time, in any order and rewritten in place, is the file write_safetensors writes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "core/eval/perplexity.h"
#include "core/io/safetensors.h"
#include "core/methods/gptq_model.h"
#include "core/methods/methods.h"
#include "core/methods/rotated_model.h"
#include "core/model/layer_stream.h"
#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/rotation/fusion.h"
#include "core/util/error.h"
#include "core/util/fs.h"

using namespace respin;
namespace fs = std::filesystem;

namespace {

ModelConfig config() {
  ModelConfig c = make_model_config("llama", 64, 128, 3, 4, 2, 96, 64);
  c.rms_norm_eps = 1e-6;
  return c;
}

LlamaModel model() {
  RandomInitOptions o;
  o.seed = 5;
  o.std = 0.15;
  o.norm_jitter = 0.3;
  return LlamaModel(config(), random_weights(config(), o));
}

std::string temp_dir() {
  std::string t = (fs::temp_directory_path() / "respin-stream-XXXXXX").string();
  if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp");
  return t;
}

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool same(const at::Tensor& a, const at::Tensor& b) {
  return a.defined() == b.defined() && (!a.defined() || (a.sizes() == b.sizes() && at::equal(a, b)));
}

void expect_same_layer(const LayerWeights& a, const LayerWeights& b, int layer) {
  LayerWeights x = a, y = b;
  const std::vector<at::Tensor*> ta = layer_tensors(x), tb = layer_tensors(y);
  for (size_t k = 0; k < ta.size(); ++k) EXPECT_TRUE(same(*ta[k], *tb[k])) << "layer " << layer << " tensor #" << k;
}

std::vector<int> token_ids(int n, int vocab) {
  std::vector<int> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 37 + i / 7) % vocab;
  return ids;
}

}  // namespace

TEST(LayerStream, PerplexityIsTheWholeModelsWindowByWindow) {
  const std::string dir = temp_dir();
  SaveOptions so;
  so.file_dtype = DType::BF16;
  save_model(dir, config(), model().weights(), so);
  const LlamaModel whole = load_model(dir);  // float32 from the bfloat16 file
  auto st = std::make_shared<const ShardedSafetensors>(ShardedSafetensors::open_folder(dir));
  LayerStream stream(config(), st, dir, at::kFloat, at::kCPU);
  PerplexityOptions po;
  po.seq_len = 32;
  const std::vector<int> ids = token_ids(5 * 32 + 7, 96);
  const PerplexityResult a = evaluate_perplexity(whole, ids, po);
  const PerplexityResult b = evaluate_perplexity_streamed(stream, ids, po, at::kCPU);
  ASSERT_EQ(a.windows, 5);
  ASSERT_EQ(b.window_nll.size(), a.window_nll.size());
  for (size_t w = 0; w < a.window_nll.size(); ++w) EXPECT_EQ(a.window_nll[w], b.window_nll[w]) << "window " << w;
  EXPECT_EQ(a.perplexity, b.perplexity);
  EXPECT_GT(a.perplexity, 1.0);
  remove_tree(dir);
}

TEST(LayerStream, FusedAndRotatedPiecesAreTheWholeModelsWeights) {
  const LlamaModel m = model();
  const ModelConfig c = m.config();
  const OnlineTransforms online{true, true, false};
  const at::Tensor r = random_orthogonal(c.hidden_size, 3).to(at::kDouble);
  std::vector<at::Tensor> heads;
  for (int i = 0; i < c.num_hidden_layers; ++i) heads.push_back(random_orthogonal(c.head_dim, 10 + i).to(at::kDouble));
  const ResidualRotations rot = ResidualRotations::global(r, heads, static_cast<int>(c.num_hidden_layers));
  const ModelWeights whole = rotate_weights(fuse_rms_norms(m), rot, online, at::kFloat);
  const WeightRotation pieces(c, rot, online, at::kCPU, at::kFloat);
  const ModelWeights& w = m.weights();
  EXPECT_TRUE(same(pieces.embed_tokens(w.embed_tokens), whole.embed_tokens));
  EXPECT_TRUE(same(pieces.lm_head(fuse_final_norm(w.lm_head, w.final_norm)), whole.lm_head));
  for (int i = 0; i < c.num_hidden_layers; ++i)
    expect_same_layer(pieces.layer(i, fuse_layer_norms(w.layers[i])), whole.layers[i], i);
}

TEST(LayerStream, GptqOverPlaceholdersIsTheWholeModelsGptq) {
  const LlamaModel m = model();
  const ModelConfig c = m.config();
  const std::vector<int> ids = token_ids(6 * 24, 96);
  const at::Tensor windows = at::tensor(std::vector<int64_t>(ids.begin(), ids.end())).view({6, 24});
  GptqModelOptions o;
  o.batch = 4;
  const ModelWeights whole = gptq_quantize_model(m, {}, windows, o);
  LlamaModel frame(c, placeholder_weights(c, at::kFloat, at::kCPU));
  const ForwardContext ctx = frame.make_context(24);
  std::vector<at::Tensor> hidden;
  for (int64_t b = 0; b < 6; b += 4) hidden.push_back(m.embed(windows.narrow(0, b, std::min<int64_t>(4, 6 - b))));
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights layer = m.weights().layers[i];
    gptq_quantize_layer(frame, i, layer, hidden, ctx, {}, o);
    frame.set_layer(i, placeholder_layer(c, at::kFloat, at::kCPU));
    expect_same_layer(layer, whole.layers[i], i);
  }
}

TEST(SafetensorsWriter, WritesInAnyOrderTheBytesOfWriteSafetensors) {
  const std::string dir = temp_dir();
  const at::Tensor a = at::arange(12, at::kFloat).view({3, 4}), b = at::arange(5, at::kFloat) * 0.5,
                   stale = at::full({5}, 7.0f);
  const std::vector<TensorView> views = {{"a", DType::F32, {3, 4}, a.data_ptr()}, {"b", DType::F32, {5}, b.data_ptr()}};
  write_safetensors(dir + "/whole.safetensors", views, {{"format", "pt"}});
  {
    SafetensorsWriter w(dir + "/parts.safetensors", views, {{"format", "pt"}});
    w.write("b", stale.data_ptr(), stale.nbytes());
    EXPECT_THROW(w.write("a", a.data_ptr(), a.nbytes() - 4), Error);  // a size not the layout's
    w.write("a", a.data_ptr(), a.nbytes());
    EXPECT_FALSE(fs::exists(dir + "/parts.safetensors"));  // nothing at the path before commit
    const SafetensorsFile partial = SafetensorsFile::open(w.partial_path());
    EXPECT_EQ(static_cast<const float*>(partial.data(partial.at("b")))[0], 7.0f);
    w.write("b", b.data_ptr(), b.nbytes());  // rewritten in place
    EXPECT_THROW(w.write("c", b.data_ptr(), b.nbytes()), Error);
    w.commit();
  }
  EXPECT_EQ(bytes_of(dir + "/parts.safetensors"), bytes_of(dir + "/whole.safetensors"));
  {
    SafetensorsWriter w(dir + "/missing.safetensors", views);
    w.write("a", a.data_ptr(), a.nbytes());
    EXPECT_THROW(w.commit(), Error);
  }
  EXPECT_FALSE(fs::exists(dir + "/missing.safetensors"));
  remove_tree(dir);
}

TEST(ModelFileLayout, IsWhatSaveModelWrites) {
  const std::string dir = temp_dir();
  SaveOptions so;
  so.file_dtype = DType::BF16;
  save_model(dir, config(), model().weights(), so);
  const SafetensorsFile f = SafetensorsFile::open(dir + "/model.safetensors");
  const std::vector<TensorView> layout = model_file_layout(config(), DType::BF16);
  ASSERT_EQ(layout.size(), f.tensors().size());
  for (size_t i = 0; i < layout.size(); ++i) {
    EXPECT_EQ(layout[i].name, f.tensors()[i].name);
    EXPECT_EQ(layout[i].shape, f.tensors()[i].shape);
    EXPECT_EQ(f.tensors()[i].dtype, DType::BF16);
  }
  remove_tree(dir);
}

TEST(SaveRandomModel, WritesTheBytesOfSaveModelOfRandomWeights) {
  const std::string dir = temp_dir();
  RandomInitOptions ro;
  ro.seed = 11;
  for (const char* arch : {"llama", "qwen2"}) {  // qwen2: q/k/v biases, drawn between the weights
    for (bool tied : {false, true}) {
      ModelConfig c = make_model_config(arch, 64, 96, 2, 4, 2, 97, 64);
      c.tie_word_embeddings = tied;
      SaveOptions so;
      so.file_dtype = tied ? DType::F32 : DType::BF16;
      const std::string name = std::string(arch) + (tied ? "-tied" : "");
      save_model(dir + "/whole-" + name, c, random_weights(c, ro), so);
      save_random_model(dir + "/streamed-" + name, c, ro, so);
      for (const char* f : {"/model.safetensors", "/config.json"})
        EXPECT_TRUE(bytes_of(dir + "/whole-" + name + f) == bytes_of(dir + "/streamed-" + name + f)) << name << f;
    }
  }
}
