// config.json as current transformers writes it. Every pair below describes the same model once in
// the 4.x form (top-level rope_theta / rope_scaling, torch_dtype, no layer_types) and once in the
// 5.x form, written by hand from the field names of transformers 5's configuration classes
// (PreTrainedConfig: "dtype"; RotaryEmbeddingConfigMixin: "rope_parameters" holding rope_type,
// rope_theta and the scaling fields; Qwen2Config: "layer_types" of "full_attention" /
// "sliding_attention"). Both forms must give the same model; fields that would change the numerics
// and are not understood must be errors naming the file and the field.
#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "core/io/model_config.h"
#include "core/util/error.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::expect_error;
using nlohmann::json;

namespace {

// LLaMA-3.2-1B as transformers 4.45 saved it.
const char* kLlama32_4x = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

// The same model saved by transformers 5 (keys sorted, rope_parameters, dtype, no rope_theta).
const char* kLlama32_5x = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "dtype": "bfloat16", "eos_token_id": [128001, 128008, 128009],
  "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
  "num_key_value_heads": 8, "pad_token_id": null, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_parameters": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
                      "rope_type": "llama3"},
  "tie_word_embeddings": true, "transformers_version": "5.0.0", "use_cache": true,
  "vocab_size": 128256})";

// A linear-scaled LLaMA-2 (4.x still accepted the legacy "type" key).
const char* kLinear_4x = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
  "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000,
  "max_position_embeddings": 8192, "rope_theta": 10000.0,
  "rope_scaling": {"type": "linear", "factor": 4.0}, "torch_dtype": "float16"})";
const char* kLinear_5x = R"({
  "architectures": ["LlamaForCausalLM"], "dtype": "float16", "hidden_size": 256,
  "intermediate_size": 512, "max_position_embeddings": 8192, "num_attention_heads": 4,
  "num_hidden_layers": 2, "rope_parameters": {"factor": 4.0, "rope_theta": 10000.0, "rope_type": "linear"},
  "vocab_size": 1000})";

// Qwen2-0.5B: no sliding window in use.
const char* kQwen2_4x = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
  "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
  "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_sliding_window": false,
  "vocab_size": 151936})";
const char* kQwen2_5x = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "dtype": "bfloat16", "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
  "intermediate_size": 4864,
  "layer_types": ["full_attention", "full_attention", "full_attention", "full_attention",
                  "full_attention", "full_attention", "full_attention", "full_attention",
                  "full_attention", "full_attention", "full_attention", "full_attention",
                  "full_attention", "full_attention", "full_attention", "full_attention",
                  "full_attention", "full_attention", "full_attention", "full_attention",
                  "full_attention", "full_attention", "full_attention", "full_attention"],
  "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
  "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
  "sliding_window": null, "tie_word_embeddings": true, "use_sliding_window": false,
  "vocab_size": 151936})";

// A Qwen2 whose upper two layers use a sliding window: max_window_layers (4.x) or layer_types (5.x).
const char* kQwen2Sliding_4x = R"({
  "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
  "rope_theta": 1000000.0, "use_sliding_window": true, "sliding_window": 16,
  "max_window_layers": 2, "torch_dtype": "float32"})";
const char* kQwen2Sliding_5x = R"({
  "architectures": ["Qwen2ForCausalLM"], "dtype": "float32", "hidden_size": 64,
  "intermediate_size": 128,
  "layer_types": ["full_attention", "full_attention", "sliding_attention", "sliding_attention"],
  "max_window_layers": 2, "num_attention_heads": 4, "num_hidden_layers": 4,
  "num_key_value_heads": 2, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
  "sliding_window": 16, "use_sliding_window": true, "vocab_size": 300})";

// Mistral-7B-v0.3 (no sliding window) and v0.1 (4096 on every layer).
const char* kMistral03_4x = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "head_dim": 128,
  "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "vocab_size": 32768})";
const char* kMistral03_5x = R"({
  "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
  "dtype": "bfloat16", "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768,
  "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "sliding_window": null,
  "tie_word_embeddings": false, "vocab_size": 32768})";
const char* kMistral01_4x = R"({
  "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "vocab_size": 32000, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "max_position_embeddings": 32768, "torch_dtype": "bfloat16"})";
const char* kMistral01_5x = R"({
  "architectures": ["MistralForCausalLM"], "dtype": "bfloat16", "hidden_size": 4096,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "sliding_window": 4096,
  "vocab_size": 32000})";

ModelConfig parse(const std::string& text) { return parse_model_config(text, "m/config.json"); }

// Applies `edit` to a parsed copy of `base` and returns the parser's error.
std::string error_after(const char* base, const std::function<void(json&)>& edit) {
  json j = json::parse(base);
  edit(j);
  return expect_error([&] { parse(j.dump()); });
}

void expect_mentions(const std::string& msg, std::initializer_list<const char*> parts) {
  EXPECT_NE(msg.find("m/config.json"), std::string::npos) << msg;
  for (const char* p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

}  // namespace

TEST(ModelConfig4x5x, BothFormsGiveTheSameModel) {
  const std::pair<const char*, const char*> pairs[] = {
      {kLlama32_4x, kLlama32_5x}, {kLinear_4x, kLinear_5x},       {kQwen2_4x, kQwen2_5x},
      {kQwen2Sliding_4x, kQwen2Sliding_5x}, {kMistral03_4x, kMistral03_5x}, {kMistral01_4x, kMistral01_5x}};
  for (const auto& [old_form, new_form] : pairs) {
    ModelConfig a = parse(old_form), b = parse(new_form);
    EXPECT_EQ(model_config_to_json(a), model_config_to_json(b)) << old_form;
    EXPECT_EQ(a.rope_theta, b.rope_theta);
    EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
    EXPECT_EQ(a.torch_dtype, b.torch_dtype);
    for (int64_t i = 0; i < a.num_hidden_layers; ++i) EXPECT_EQ(a.window_of_layer(i), b.window_of_layer(i)) << i;
    // What we write reads back as the same model.
    EXPECT_EQ(model_config_to_json(parse(model_config_to_json(b))), model_config_to_json(b));
  }
}

TEST(ModelConfig4x5x, FieldsTakeTheirValuesFromEitherForm) {
  ModelConfig l = parse(kLlama32_5x);
  EXPECT_EQ(l.rope_theta, 500000.0);
  EXPECT_EQ(l.rope_scaling.type, "llama3");
  EXPECT_EQ(l.rope_scaling.factor, 32.0);
  EXPECT_EQ(l.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(l.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(l.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(l.torch_dtype, "bfloat16");
  EXPECT_EQ(l.parameter_count(), 1235814400LL);  // LLaMA-3.2-1B

  ModelConfig lin = parse(kLinear_5x);
  EXPECT_EQ(lin.rope_scaling.type, "linear");
  EXPECT_EQ(lin.rope_scaling.factor, 4.0);
  EXPECT_EQ(lin.torch_dtype, "float16");

  ModelConfig q = parse(kQwen2_5x);
  EXPECT_EQ(q.rope_theta, 1e6);
  EXPECT_FALSE(q.sliding_window.has_value());
  EXPECT_EQ(q.parameter_count(), 494032768LL);  // Qwen2-0.5B

  ModelConfig qs = parse(kQwen2Sliding_5x);
  ASSERT_TRUE(qs.sliding_window.has_value());
  EXPECT_EQ(qs.window_of_layer(0), std::nullopt);
  EXPECT_EQ(qs.window_of_layer(1), std::nullopt);
  EXPECT_EQ(qs.window_of_layer(2), std::optional<int64_t>(16));
  EXPECT_EQ(qs.window_of_layer(3), std::optional<int64_t>(16));

  EXPECT_FALSE(parse(kMistral03_5x).sliding_window.has_value());
  EXPECT_EQ(parse(kMistral01_5x).window_of_layer(31), std::optional<int64_t>(4096));
  EXPECT_EQ(parse(kMistral03_5x).rope_theta, 1e6);
}

TEST(ModelConfig4x5x, DefaultsAreTransformers) {
  // No theta anywhere: transformers' default_theta for these models, 10000.
  json j = json::parse(kLinear_5x);
  j["rope_parameters"].erase("rope_theta");
  EXPECT_EQ(parse(j.dump()).rope_theta, 10000.0);
  // Qwen2 with a window in use and no layer_types: layers from max_window_layers up slide.
  j = json::parse(kQwen2Sliding_4x);
  j["max_window_layers"] = 3;
  ModelConfig q = parse(j.dump());
  EXPECT_EQ(q.window_of_layer(2), std::nullopt);
  EXPECT_EQ(q.window_of_layer(3), std::optional<int64_t>(16));
  // A Mistral config without the key: MistralConfig's class default, 4096 on every layer.
  j = json::parse(kMistral03_5x);
  j.erase("sliding_window");
  EXPECT_EQ(parse(j.dump()).window_of_layer(0), std::optional<int64_t>(4096));
  // Llama: attention_bias / mlp_bias are read (biases on q/k/v/o and gate/up/down).
  j = json::parse(kLinear_5x);
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  ModelConfig b = parse(j.dump());
  EXPECT_TRUE(b.attention_bias);
  EXPECT_TRUE(b.mlp_bias);
  EXPECT_EQ(b.parameter_count() - parse(kLinear_5x).parameter_count(), 2 * (4 * 256 + 2 * 512 + 256));
}

TEST(ModelConfig4x5x, EveryRopeTypeIsReadOrRefused) {
  // Supported: default, linear, llama3 (above). The others change positions in ways the forward
  // does not reproduce; each is an error naming the field, in either form.
  for (const char* type : {"dynamic", "yarn", "longrope", "su", "ntk-by-parts"}) {
    std::string msg = error_after(kLlama32_5x, [&](json& j) { j["rope_parameters"]["rope_type"] = type; });
    expect_mentions(msg, {"rope_parameters.rope_type", type, "not supported"});
    msg = error_after(kLlama32_4x, [&](json& j) { j["rope_scaling"]["rope_type"] = type; });
    expect_mentions(msg, {"rope_scaling.rope_type", type, "not supported"});
  }
  // llama3 needs all its fields; a top-level original_max_position_embeddings supplies one.
  std::string msg = error_after(kLlama32_5x, [](json& j) { j["rope_parameters"].erase("low_freq_factor"); });
  expect_mentions(msg, {"rope_parameters.low_freq_factor", "missing"});
  msg = error_after(kLlama32_5x, [](json& j) { j["rope_parameters"].erase("original_max_position_embeddings"); });
  expect_mentions(msg, {"rope_parameters.original_max_position_embeddings", "missing"});
  json j = json::parse(kLlama32_5x);
  j["rope_parameters"].erase("original_max_position_embeddings");
  j["original_max_position_embeddings"] = 8192;
  EXPECT_EQ(parse(j.dump()).rope_scaling.original_max_position_embeddings, 8192);
  msg = error_after(kLlama32_5x, [](json& j) { j["original_max_position_embeddings"] = 4096; });
  expect_mentions(msg, {"original_max_position_embeddings", "disagrees"});
  // A key that belongs to another scaling type is not silently ignored.
  msg = error_after(kLlama32_5x, [](json& j) { j["rope_parameters"]["beta_fast"] = 32; });
  expect_mentions(msg, {"rope_parameters.beta_fast", "not understood", "llama3"});
  msg = error_after(kQwen2_5x, [](json& j) { j["rope_parameters"]["factor"] = 2.0; });
  expect_mentions(msg, {"rope_parameters.factor", "not understood", "default"});
  msg = error_after(kQwen2_5x, [](json& j) { j["rope_parameters"].erase("rope_type"); });
  expect_mentions(msg, {"rope_parameters.rope_type", "missing"});
  // One RoPE per layer type (a newer-model form) is not this architecture's.
  msg = error_after(kQwen2_5x, [](json& j) {
    j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e6}}},
                            {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  });
  expect_mentions(msg, {"rope_parameters", "per layer type"});
}

TEST(ModelConfig4x5x, NumericsFieldsNotUnderstoodAreErrors) {
  std::string msg = error_after(kLlama32_5x, [](json& j) { j["partial_rotary_factor"] = 0.5; });
  expect_mentions(msg, {"'partial_rotary_factor'", "not supported"});
  msg = error_after(kLlama32_5x, [](json& j) { j["rope_parameters"]["partial_rotary_factor"] = 0.25; });
  expect_mentions(msg, {"rope_parameters.partial_rotary_factor", "not supported"});
  json j = json::parse(kLlama32_5x);
  j["partial_rotary_factor"] = 1.0;  // the whole head: fine
  EXPECT_NO_THROW(parse(j.dump()));
  msg = error_after(kLlama32_5x, [](json& j) { j["dtype"] = "float8_e4m3fn"; });
  expect_mentions(msg, {"'dtype'", "float8_e4m3fn"});
  // Layer types must be understood and cover every layer.
  msg = error_after(kQwen2Sliding_5x, [](json& j) { j["layer_types"][3] = "chunked_attention"; });
  expect_mentions(msg, {"'layer_types'", "chunked_attention"});
  msg = error_after(kQwen2Sliding_5x, [](json& j) { j["layer_types"].erase(0); });
  expect_mentions(msg, {"'layer_types'", "one entry per layer (4)"});
  msg = error_after(kMistral01_5x, [](json& j) {
    j["layer_types"] = json::array();
    for (int i = 0; i < 32; ++i) j["layer_types"].push_back(i < 2 ? "full_attention" : "sliding_attention");
  });
  expect_mentions(msg, {"'layer_types'", "layer 0", "every layer"});
  msg = error_after(kLinear_5x, [](json& j) { j["layer_types"] = {"full_attention", "sliding_attention"}; });
  expect_mentions(msg, {"'layer_types'", "LlamaForCausalLM"});
}

TEST(ModelConfig4x5x, BothFormsPresentMustAgree) {
  // Agreeing duplicates (a file touched by both versions) are fine.
  json both = json::parse(kLlama32_5x);
  both["rope_theta"] = 500000.0;
  both["rope_scaling"] = json::parse(kLlama32_4x)["rope_scaling"];
  both["torch_dtype"] = "bfloat16";
  EXPECT_EQ(model_config_to_json(parse(both.dump())), model_config_to_json(parse(kLlama32_5x)));

  std::string msg = error_after(kLlama32_5x, [](json& j) { j["rope_theta"] = 10000.0; });
  expect_mentions(msg, {"'rope_theta'", "disagrees with rope_parameters.rope_theta"});
  msg = error_after(kLlama32_5x, [](json& j) { j["rope_scaling"] = nullptr; });
  expect_mentions(msg, {"'rope_scaling'", "disagrees with rope_parameters"});
  msg = error_after(kLlama32_5x, [](json& j) {
    j["rope_scaling"] = json::parse(kLlama32_4x)["rope_scaling"];
    j["rope_scaling"]["factor"] = 8.0;
  });
  expect_mentions(msg, {"'rope_scaling'", "disagrees"});
  msg = error_after(kLlama32_5x, [](json& j) { j["torch_dtype"] = "float32"; });
  expect_mentions(msg, {"'dtype'", "disagrees with torch_dtype"});
  msg = error_after(kLinear_4x, [](json& j) { j["rope_scaling"]["rope_type"] = "llama3"; });
  expect_mentions(msg, {"rope_scaling.type", "disagrees"});
}

// The model summary's Hadamard lines (respin info, the workbench's model panel).
#include "core/io/model_summary.h"

TEST(ModelSummary, NamesTheHadamardConstructionOfEveryWidth) {
  EXPECT_EQ(respin::hadamard_summary_text(11008), "11008 = 172 x 64, Goethals-Seidel(43) x Sylvester(64)");
  EXPECT_EQ(respin::hadamard_summary_text(14336), "14336 = 28 x 512, Paley I(27) x Sylvester(512)");
  EXPECT_EQ(respin::hadamard_summary_text(4096), "4096 = 2^12, Sylvester(4096)");
  EXPECT_EQ(respin::hadamard_summary_text(116), "116: no known construction: random orthogonal fallback");
  EXPECT_EQ(respin::hadamard_summary_text(6), "6: no known construction: random orthogonal fallback");
}
