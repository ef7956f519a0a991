// compressed-tensors export pieces (core/export/pack.h): the int32 packing of weight codes and zero
// points, checked against words computed by hand from the layout compressed-tensors documents
// (pack_to_int32: offset by 2^(b-1), element 0 in the low bits, zero padding; its docstring example
// [1, 2] at 8 bits -> 33409), and the quantization_config JSON written and parsed back.
#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/export/pack.h"
#include "core/util/error.h"

using namespace respin;
using nlohmann::json;

namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no respin::Error thrown";
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<int32_t> random_codes(size_t n, int bits, bool symmetric, uint32_t seed) {
  std::mt19937 gen(seed);
  const int lo = symmetric ? -(1 << (bits - 1)) : 0;
  const int hi = symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<int32_t> q(n);
  for (auto& v : q) v = d(gen);
  return q;
}

// ---- packing -------------------------------------------------------------------------------

TEST(ExportPack, RoundTripRandomCodesEveryWidthAndOddWidths) {
  uint32_t seed = 1;
  for (int bits : {2, 4, 8})
    for (bool sym : {true, false})
      for (int64_t cols : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 128}) {
        const int64_t rows = 5;
        const auto q = random_codes(static_cast<size_t>(rows * cols), bits, sym, seed++);
        const auto packed = pack_int_rows(q, rows, cols, bits, sym);
        const int64_t pc = (cols * bits + 31) / 32;
        ASSERT_EQ(ct_packed_cols(cols, bits), pc);
        ASSERT_EQ(static_cast<int64_t>(packed.size()), rows * pc) << bits << " " << cols;
        EXPECT_EQ(unpack_int_rows(packed, rows, cols, bits, sym), q) << bits << " bits, " << cols << " cols";
      }
}

TEST(ExportPack, FourBitWordsByHand) {
  // Symmetric codes 0..7 are stored as 8..15; element 0 in the low nibble: 0xFEDCBA98.
  std::vector<int32_t> q = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(pack_int_rows(q, 1, 8, 4, true), std::vector<int32_t>{static_cast<int32_t>(0xFEDCBA98u)});
  EXPECT_EQ(static_cast<int32_t>(0xFEDCBA98u), -19088744);
  // Asymmetric codes are stored as they are: 0x76543210.
  EXPECT_EQ(pack_int_rows(q, 1, 8, 4, false), std::vector<int32_t>{0x76543210});
  // Negative symmetric codes -8..-1 are stored as 0..7.
  std::vector<int32_t> neg = {-8, -7, -6, -5, -4, -3, -2, -1};
  EXPECT_EQ(pack_int_rows(neg, 1, 8, 4, true), std::vector<int32_t>{0x76543210});
  // Zero code (symmetric) is nibble 8.
  EXPECT_EQ(pack_int_rows(std::vector<int32_t>(8, 0), 1, 8, 4, true), std::vector<int32_t>{static_cast<int32_t>(0x88888888u)});
}

TEST(ExportPack, PaddingIsZeroBitsAndRowsPadIndependently) {
  // 2 rows x 9 columns at 4 bits: 2 words per row; the 9th code sits alone in the low nibble of the
  // row's second word, the remaining 28 bits are zero (even for symmetric codes, whose zero would be 8).
  std::vector<int32_t> q = {7, 7, 7, 7, 7, 7, 7, 7, -8,  //
                            0, 0, 0, 0, 0, 0, 0, 0, 3};
  const auto p = pack_int_rows(q, 2, 9, 4, true);
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[0], static_cast<int32_t>(0xFFFFFFFFu));
  EXPECT_EQ(p[1], 0x0);          // code -8 -> stored 0
  EXPECT_EQ(p[2], static_cast<int32_t>(0x88888888u));
  EXPECT_EQ(p[3], 0xB);          // code 3 -> stored 11
  // Non-zero padding bits mean the wrong shape.
  std::vector<int32_t> bad = p;
  bad[3] |= 0x10;
  EXPECT_TRUE(contains(error_of([&] { unpack_int_rows(bad, 2, 9, 4, true); }), "padding"));
}

TEST(ExportPack, EightAndTwoBitWordsByHand) {
  // compressed-tensors' pack_to_int32 docstring: 8-bit [1, 2] -> [129, 130, 0, 0] -> 33409.
  EXPECT_EQ(pack_int_rows({1, 2}, 1, 2, 8, true), std::vector<int32_t>{33409});
  EXPECT_EQ(pack_int_rows({-128, 127, 0, -1}, 1, 4, 8, true), std::vector<int32_t>{0x7F80FF00});
  EXPECT_EQ(pack_int_rows({0, 255, 1, 128}, 1, 4, 8, false), std::vector<int32_t>{static_cast<int32_t>(0x8001FF00u)});
  // 2 bits: 16 codes per word; symmetric codes -2..1 stored as 0..3.
  std::vector<int32_t> q2 = {-2, -1, 0, 1, 1, 0, -1, -2, 0, 0, 0, 0, 0, 0, 0, 1};
  // stored: 0 1 2 3 3 2 1 0 2 2 2 2 2 2 2 3, element i at bits 2i.
  uint32_t w = 0;
  const int stored[] = {0, 1, 2, 3, 3, 2, 1, 0, 2, 2, 2, 2, 2, 2, 2, 3};
  for (int i = 0; i < 16; ++i) w |= static_cast<uint32_t>(stored[i]) << (2 * i);
  EXPECT_EQ(w, 0xEAAA1BE4u);
  EXPECT_EQ(pack_int_rows(q2, 1, 16, 2, true), std::vector<int32_t>{static_cast<int32_t>(0xEAAA1BE4u)});
}

TEST(ExportPack, ZeroPointsPackAlongTheOutputAxis) {
  // 9 output channels x 2 groups at 4 bits -> [2, 2]: column g of the result packs zp[:, g].
  std::vector<int32_t> zp(18);
  for (int o = 0; o < 9; ++o) {
    zp[o * 2 + 0] = o;       // 0..8
    zp[o * 2 + 1] = 15 - o;  // 15..7
  }
  const auto p = pack_zero_points(zp, 9, 2, 4);
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[0], 0x76543210);                          // (word 0, group 0): channels 0..7
  EXPECT_EQ(p[1], static_cast<int32_t>(0x89ABCDEFu));   // (word 0, group 1)
  EXPECT_EQ(p[2], 8);                                   // (word 1, group 0): channel 8 only
  EXPECT_EQ(p[3], 7);
  EXPECT_EQ(unpack_zero_points(p, 9, 2, 4), zp);
  // 8-bit zero points, 4 per word, round trip with a ragged last word.
  const auto z8 = random_codes(7 * 3, 8, false, 99);
  const auto p8 = pack_zero_points(z8, 7, 3, 8);
  EXPECT_EQ(p8.size(), 2u * 3u);
  EXPECT_EQ(unpack_zero_points(p8, 7, 3, 8), z8);
  EXPECT_TRUE(contains(error_of([] { pack_zero_points({16}, 1, 1, 4); }), "outside the 4-bit asymmetric range [0, 15]"));
}

TEST(ExportPack, OutOfRangeCodesAndBadSizesAreErrors) {
  std::string e = error_of([] { pack_int_rows({0, 8}, 1, 2, 4, true); });
  EXPECT_TRUE(contains(e, "code 8 at row 0, column 1")) << e;
  EXPECT_TRUE(contains(e, "[-8, 7]")) << e;
  e = error_of([] { pack_int_rows({-9}, 1, 1, 4, true); });
  EXPECT_TRUE(contains(e, "code -9")) << e;
  e = error_of([] { pack_int_rows({-1}, 1, 1, 4, false); });
  EXPECT_TRUE(contains(e, "[0, 15]")) << e;
  e = error_of([] { pack_int_rows({256}, 1, 1, 8, false); });
  EXPECT_TRUE(contains(e, "[0, 255]")) << e;
  e = error_of([] { pack_int_rows({0, 1, 2}, 2, 2, 4, true); });
  EXPECT_TRUE(contains(e, "3 codes given")) << e;
  e = error_of([] { unpack_int_rows({0, 1, 2}, 2, 9, 4, true); });
  EXPECT_TRUE(contains(e, "3 words given")) << e;
}

TEST(ExportPack, WidthsWithoutAPackingAreErrors) {
  for (int bits : {1, 3, 5, 6, 7, 16, 0}) {
    const std::string e = error_of([&] { pack_int_rows({0}, 1, 1, bits, true); });
    EXPECT_TRUE(contains(e, "compressed-tensors pack-quantized has no " + std::to_string(bits) + "-bit packing")) << e;
  }
  EXPECT_TRUE(contains(error_of([] { ct_packed_cols(10, 3); }), "3-bit"));
}

TEST(ExportPack, Int8StorageAndGroups) {
  EXPECT_EQ(ct_int8_codes({-8, 0, 7}, 4, true), (std::vector<int8_t>{-8, 0, 7}));
  EXPECT_EQ(ct_int8_codes({0, 8, 15}, 4, false), (std::vector<int8_t>{-8, 0, 7}));
  EXPECT_EQ(ct_int8_codes({0, 255}, 8, false), (std::vector<int8_t>{-128, 127}));
  EXPECT_EQ(ct_codes_from_int8({-128, 127}, 8, false), (std::vector<int32_t>{0, 255}));
  EXPECT_EQ(ct_codes_from_int8({-8, 7}, 4, true), (std::vector<int32_t>{-8, 7}));
  EXPECT_TRUE(contains(error_of([] { ct_int8_codes({-129}, 8, true); }), "outside"));
  EXPECT_TRUE(contains(error_of([] { ct_codes_from_int8({8}, 4, true); }), "outside"));
  EXPECT_EQ(ct_num_groups(4096, 0), 1);
  EXPECT_EQ(ct_num_groups(4096, 128), 32);
  EXPECT_TRUE(contains(error_of([] { ct_num_groups(11008, 384); }), "does not divide"));
}

// ---- quantization_config -------------------------------------------------------------------

// W4 per channel symmetric + A4 dynamic per token symmetric, lm_head ignored: the exact object.
const char* kW4A4 = R"({
  "config_groups": {"group_0": {
    "format": "pack-quantized",
    "input_activations": {"actorder": null, "block_structure": null, "dynamic": true, "group_size": null,
                          "num_bits": 4, "observer": null, "observer_kwargs": {}, "strategy": "token",
                          "symmetric": true, "type": "int"},
    "output_activations": null,
    "targets": ["Linear"],
    "weights": {"actorder": null, "block_structure": null, "dynamic": false, "group_size": null,
                "num_bits": 4, "observer": "minmax", "observer_kwargs": {}, "strategy": "channel",
                "symmetric": true, "type": "int"}}},
  "format": "pack-quantized",
  "global_compression_ratio": null,
  "ignore": ["lm_head"],
  "kv_cache_scheme": null,
  "quant_method": "compressed-tensors",
  "quantization_status": "compressed",
  "sparsity_config": {},
  "transform_config": {},
  "version": "0.12.2"})";

CtScheme w4a4() {
  CtScheme s;
  s.weight_bits = 4;
  s.activation_bits = 4;
  return s;
}

TEST(ExportConfig, W4A4PerChannelPerTokenIsExact) {
  EXPECT_EQ(compressed_tensors_quantization_config(w4a4()), json::parse(kW4A4));
  EXPECT_EQ(parse_compressed_tensors_config(json::parse(kW4A4), "x"), w4a4());
}

TEST(ExportConfig, FormatChoice) {
  CtScheme s;
  s.weight_bits = 8;
  s.activation_bits = 8;
  EXPECT_EQ(ct_format(s), "int-quantized");
  s.group_size = 128;
  EXPECT_EQ(ct_format(s), "pack-quantized");
  s = CtScheme();
  EXPECT_EQ(ct_format(s), "pack-quantized");  // weight-only
  s.weight_bits = 3;
  EXPECT_TRUE(contains(error_of([&] { compressed_tensors_quantization_config(s); }), "no 3-bit packing"));
  s.format = "int-quantized";  // unpacked int8 storage can hold 3-bit codes
  EXPECT_EQ(compressed_tensors_quantization_config(s)["format"], "int-quantized");
  // Every config group names its format too: without it compressed-tensors infers one per group,
  // and declared activations make it infer int-quantized for pack-quantized weights.
  EXPECT_EQ(compressed_tensors_quantization_config(s)["config_groups"]["group_0"]["format"], "int-quantized");
  EXPECT_EQ(compressed_tensors_quantization_config(w4a4())["config_groups"]["group_0"]["format"], "pack-quantized");
  // A group without the field (older writers) still reads as the top-level format.
  json old = compressed_tensors_quantization_config(w4a4());
  old["config_groups"]["group_0"].erase("format");
  EXPECT_EQ(parse_compressed_tensors_config(old, "x"), w4a4());
}

TEST(ExportConfig, RoundTripsOfSeveralSchemes) {
  std::vector<CtScheme> schemes;
  {
    CtScheme s;  // W4A16 group 128 asymmetric, nothing ignored
    s.group_size = 128;
    s.weight_symmetric = false;
    s.ignore = {};
    schemes.push_back(s);
  }
  {
    CtScheme s;  // W8A8 int (int-quantized), asymmetric activations
    s.weight_bits = 8;
    s.activation_bits = 8;
    s.activation_symmetric = false;
    schemes.push_back(s);
  }
  {
    CtScheme s;  // W8A8 forced into pack-quantized (explicit format survives)
    s.weight_bits = 8;
    s.activation_bits = 8;
    s.format = "pack-quantized";
    schemes.push_back(s);
  }
  {
    CtScheme s = w4a4();  // SpinQuant-style R4 online Hadamard, expressed as llm-compressor does
    CtTransform r4;
    r4.name = "R4";
    r4.type = "random-hadamard";
    r4.apply = {{{"re:.*mlp.down_proj$"}, "input", false, {}},
                {{"re:.*mlp.down_proj$"}, "weight_input", true, {}}};
    CtTransform r2;
    r2.name = "R2";
    r2.head_dim = 128;
    r2.apply = {{{"re:.*v_proj$"}, "weight_output", false, {}}, {{"re:.*o_proj$"}, "weight_input", true, {}}};
    s.transforms = {r2, r4};  // the parser returns groups in key order (R2 < R4)
    s.version = "0.18.0";
    schemes.push_back(s);
  }
  for (const CtScheme& s : schemes) {
    const json j = compressed_tensors_quantization_config(s);
    EXPECT_EQ(parse_compressed_tensors_config(j, "x"), s) << j.dump(2);
    EXPECT_EQ(compressed_tensors_quantization_config(parse_compressed_tensors_config(j, "x")), j);
  }
  const json t = compressed_tensors_quantization_config(schemes.back())["transform_config"];
  EXPECT_EQ(t["config_groups"]["R4"]["apply"][0]["location"], "input");
  EXPECT_EQ(t["config_groups"]["R4"]["head_dim"], nullptr);
  EXPECT_EQ(t["config_groups"]["R2"]["head_dim"], 128);
}

TEST(ExportConfig, ReadsWhatLlmCompressorWrites) {
  // A W8 group-32 pack-quantized config as recent llm-compressor saves it (per-group "format",
  // an "mse" observer, newer dtype fields at their defaults, transform precision).
  const json j = json::parse(R"({
    "config_groups": {"group_0": {"format": "pack-quantized", "input_activations": null,
      "output_activations": null, "targets": ["Linear"],
      "weights": {"actorder": null, "block_structure": null, "dynamic": false, "group_size": 32,
                  "num_bits": 8, "observer": "mse", "observer_kwargs": {}, "strategy": "group",
                  "symmetric": true, "type": "int", "scale_dtype": null, "zp_dtype": null}}},
    "format": "pack-quantized", "global_compression_ratio": null, "ignore": ["lm_head", "re:.*gate$"],
    "kv_cache_scheme": null, "quant_method": "compressed-tensors", "quantization_status": "compressed",
    "sparsity_config": {}, "version": "0.12.3.a20251114",
    "transform_config": {"config_groups": {"R4": {"type": "hadamard", "randomize": false,
      "requires_grad": false, "head_dim": null, "precision": "torch.float64",
      "apply": [{"targets": "re:.*down_proj$", "location": "input"}]}}}})");
  const CtScheme s = parse_compressed_tensors_config(j, "x");
  EXPECT_EQ(s.weight_bits, 8);
  EXPECT_EQ(s.group_size, 32);
  EXPECT_EQ(s.activation_bits, 16);
  EXPECT_EQ(s.ignore, (std::vector<std::string>{"lm_head", "re:.*gate$"}));
  EXPECT_EQ(s.version, "0.12.3.a20251114");
  ASSERT_EQ(s.transforms.size(), 1u);
  EXPECT_EQ(s.transforms[0].apply[0].targets, std::vector<std::string>{"re:.*down_proj$"});
  EXPECT_FALSE(s.transforms[0].apply[0].inverse);
  EXPECT_EQ(ct_format(s), "pack-quantized");
  EXPECT_TRUE(s.format.empty());
}

TEST(ExportConfig, RejectsWhatItDoesNotUnderstandNamingTheField) {
  const json base = json::parse(kW4A4);
  auto rejects = [&](const std::function<void(json&)>& edit, const std::string& field, const std::string& why = "") {
    json j = base;
    edit(j);
    const std::string e = error_of([&] { parse_compressed_tensors_config(j, "m/config.json"); });
    EXPECT_TRUE(contains(e, "m/config.json: ")) << e;
    EXPECT_TRUE(contains(e, field)) << "expected field " << field << " in: " << e;
    if (!why.empty()) EXPECT_TRUE(contains(e, why)) << e;
  };
  const std::string g = "quantization_config.config_groups.group_0";
  rejects([](json& j) { j["frobnicate"] = 1; }, "quantization_config.frobnicate", "unknown field");
  rejects([](json& j) { j["quant_method"] = "gptq"; }, "quantization_config.quant_method");
  rejects([](json& j) { j["format"] = "nvfp4-pack-quantized"; }, "quantization_config.format");
  rejects([](json& j) { j["format"] = "marlin-24"; }, "quantization_config.format");
  rejects([](json& j) { j["quantization_status"] = "frozen"; }, "quantization_config.quantization_status");
  rejects([](json& j) { j.erase("config_groups"); }, "quantization_config.config_groups", "missing");
  rejects([](json& j) { j["config_groups"]["group_1"] = j["config_groups"]["group_0"]; },
          "quantization_config.config_groups", "exactly one");
  rejects([](json& j) { j["kv_cache_scheme"] = {{"num_bits", 8}, {"type", "float"}, {"strategy", "tensor"}}; },
          "quantization_config.kv_cache_scheme");
  rejects([](json& j) { j["sparsity_config"] = {{"format", "sparse-24-bitmask"}}; }, "quantization_config.sparsity_config");
  rejects([&](json& j) { j["config_groups"]["group_0"]["weights"]["type"] = "float"; }, g + ".weights.type");
  rejects([&](json& j) { j["config_groups"]["group_0"]["weights"]["strategy"] = "tensor"; }, g + ".weights.strategy");
  rejects([&](json& j) { j["config_groups"]["group_0"]["weights"]["strategy"] = "block"; }, g + ".weights");
  rejects([&](json& j) { j["config_groups"]["group_0"]["weights"]["actorder"] = "group"; }, g + ".weights.actorder");
  rejects([&](json& j) { j["config_groups"]["group_0"]["weights"]["num_bits"] = 3; }, g + ".weights.num_bits",
          "no 3-bit packing");
  rejects([&](json& j) { j["config_groups"]["group_0"]["weights"]["scale_dtype"] = "torch.float8_e4m3fn"; },
          g + ".weights.scale_dtype");
  rejects([&](json& j) { j["config_groups"]["group_0"]["weights"]["magic"] = true; }, g + ".weights.magic");
  rejects([&](json& j) { j["config_groups"]["group_0"]["weights"]["group_size"] = 128; }, g + ".weights.group_size");
  rejects([&](json& j) { j["config_groups"]["group_0"]["input_activations"]["strategy"] = "tensor"; },
          g + ".input_activations.strategy");
  rejects([&](json& j) { j["config_groups"]["group_0"]["input_activations"]["dynamic"] = false; },
          g + ".input_activations.dynamic");
  rejects([&](json& j) { j["config_groups"]["group_0"]["input_activations"]["dynamic"] = "local"; },
          g + ".input_activations.dynamic");
  rejects([&](json& j) { j["config_groups"]["group_0"]["output_activations"] = j["config_groups"]["group_0"]["weights"]; },
          g + ".output_activations");
  rejects([&](json& j) { j["config_groups"]["group_0"]["format"] = "int-quantized"; }, g + ".format");
  rejects([](json& j) {
    j["transform_config"] = {{"config_groups", {{"R1", {{"type", "random-matrix"}, {"apply", json::array()}}}}}};
  }, "quantization_config.transform_config.config_groups.R1.type");
  rejects([](json& j) {
    j["transform_config"] = {{"config_groups", {{"R4", {{"type", "hadamard"},
        {"apply", {{{"targets", {"Linear"}}, {"location", "attention"}}}}}}}}};
  }, "quantization_config.transform_config.config_groups.R4.apply[0].location");
  rejects([](json& j) {
    j["transform_config"] = {{"config_groups", {{"R4", {{"type", "hadamard"}, {"randomize", true},
        {"apply", {{{"targets", {"Linear"}}, {"location", "input"}}}}}}}}};
  }, "quantization_config.transform_config.config_groups.R4.randomize");
  rejects([](json& j) { j["transform_config"] = {{"config_groups", json::object()}, {"extra", 1}}; },
          "quantization_config.transform_config.extra");
}

TEST(ExportConfig, WriterValidatesTheScheme) {
  CtScheme s = w4a4();
  s.activation_dynamic = false;
  EXPECT_TRUE(contains(error_of([&] { compressed_tensors_quantization_config(s); }), "static activation"));
  s = w4a4();
  s.activation_bits = 9;
  EXPECT_TRUE(contains(error_of([&] { compressed_tensors_quantization_config(s); }), "activation_bits 9"));
  s = w4a4();
  s.transforms = {CtTransform{"R4", "random-matrix", 0, {{{"Linear"}, "input", false, {}}}}};
  EXPECT_TRUE(contains(error_of([&] { compressed_tensors_quantization_config(s); }), "random-matrix"));
  s.transforms = {CtTransform{"R4", "hadamard", 0, {{{"Linear"}, "somewhere", false, {}}}}};
  EXPECT_TRUE(contains(error_of([&] { compressed_tensors_quantization_config(s); }), "somewhere"));
  s.transforms = {CtTransform{"R4", "hadamard", 0, {}}};
  EXPECT_TRUE(contains(error_of([&] { compressed_tensors_quantization_config(s); }), "apply is empty"));
  s = w4a4();
  s.format = "naive-quantized";
  EXPECT_TRUE(contains(error_of([&] { compressed_tensors_quantization_config(s); }), "naive-quantized"));
}

}  // namespace
