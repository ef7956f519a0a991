// core/io: safetensors reader/writer (round trips and every malformed-file error), atomic writes,
// config.json parsing for the supported architectures.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/io/atomic_file.h"
#include "core/io/model_config.h"
#include "core/io/model_folder.h"
#include "core/io/safetensors.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::TempDir;
using respin::test::expect_error;
using respin::test::read_bytes;
using respin::test::write_bytes;

namespace {

// Raw safetensors bytes from a header string and a data section (no validation).
std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Expects opening `path` to throw an Error whose message contains the path and `needle`.
void expect_open_error(const std::string& path, const std::string& needle) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

}  // namespace

TEST(Safetensors, RoundTripAllDtypesAndMetadata) {
  TempDir dir;
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
  std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff};        // 1, -2, 65504
  std::vector<uint16_t> bf16 = {0x3f80, 0x4049, 0xff80, 0x0001};  // 1, 3.14, -inf, tiny
  std::vector<int8_t> i8 = {-128, 0, 127};
  std::vector<uint8_t> u8 = {0, 255};
  std::vector<int32_t> i32 = {-5, 1 << 30};
  std::vector<TensorView> views = {
      {"a.f32", DType::F32, {2, 3}, f32.data()}, {"b.f16", DType::F16, {3}, f16.data()},
      {"c.bf16", DType::BF16, {2, 2}, bf16.data()}, {"d.i8", DType::I8, {3}, i8.data()},
      {"e.u8", DType::U8, {1, 2}, u8.data()},     {"f.i32", DType::I32, {2}, i32.data()},
      {"g.empty", DType::F32, {0, 4}, nullptr},
  };
  const std::string path = dir.file("m.safetensors");
  write_safetensors(path, views, {{"format", "pt"}, {"note", "round trip"}});

  SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_EQ(f.tensors().size(), views.size());
  EXPECT_EQ(f.metadata().at("note"), "round trip");
  for (const auto& v : views) {
    const TensorInfo& t = f.at(v.name);
    EXPECT_EQ(t.dtype, v.dtype) << v.name;
    EXPECT_EQ(t.shape, v.shape) << v.name;
    ASSERT_EQ(t.nbytes(), t.numel() * dtype_size(v.dtype));
    if (t.nbytes()) EXPECT_EQ(std::memcmp(f.data(t), v.data, t.nbytes()), 0) << v.name;
  }
  // Header is padded so the data section starts 8-byte aligned.
  std::string bytes = read_bytes(path);
  uint64_t hlen = 0;
  std::memcpy(&hlen, bytes.data(), 8);
  EXPECT_EQ((8 + hlen) % 8, 0u);
  EXPECT_EQ(f.find("missing"), nullptr);
  EXPECT_NE(expect_error([&] { f.at("missing"); }).find("missing"), std::string::npos);
}

TEST(Safetensors, ShardedIndex) {
  TempDir dir;
  std::vector<float> a = {1, 2, 3}, b = {4, 5};
  write_safetensors(dir.file("model-00001-of-00002.safetensors"), {{"x", DType::F32, {3}, a.data()}});
  write_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"y", DType::F32, {2}, b.data()}});
  write_bytes(dir.file("model.safetensors.index.json"),
              R"({"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors",
                                                 "y": "model-00002-of-00002.safetensors"}})");
  ShardedSafetensors s = ShardedSafetensors::open_folder(dir.path());
  EXPECT_EQ(s.num_files(), 2u);
  ASSERT_NE(s.find("y"), nullptr);
  EXPECT_EQ(static_cast<const float*>(s.find("y")->file->data(*s.find("y")->info))[1], 5.0f);
  EXPECT_EQ(s.names(), (std::vector<std::string>{"x", "y"}));

  // An index pointing at a tensor its shard does not hold is an error naming the index file.
  write_bytes(dir.file("model.safetensors.index.json"),
              R"({"weight_map": {"z": "model-00001-of-00002.safetensors"}})");
  std::string msg = expect_error([&] { ShardedSafetensors::open_folder(dir.path()); });
  EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'z'"), std::string::npos) << msg;
}

TEST(Safetensors, TruncatedFile) {
  TempDir dir;
  std::vector<float> a(64, 1.0f);
  const std::string path = dir.file("t.safetensors");
  write_safetensors(path, {{"w", DType::F32, {64}, a.data()}});
  std::string bytes = read_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 10));
  expect_open_error(path, "truncated");
  write_bytes(path, bytes.substr(0, 20));  // cut inside the header
  expect_open_error(path, "exceeds the file size");
  write_bytes(path, bytes.substr(0, 5));
  expect_open_error(path, "too short");
  write_bytes(path, "");
  expect_open_error(path, "too short");
}

TEST(Safetensors, BadHeaderLength) {
  TempDir dir;
  const std::string path = dir.file("h.safetensors");
  std::string bytes = raw_file("{}", "");
  bytes[7] = '\x7f';  // absurdly large length
  write_bytes(path, bytes);
  expect_open_error(path, "header length");
  write_bytes(path, std::string(8, '\0') + "{}");  // zero length
  expect_open_error(path, "header length");
}

TEST(Safetensors, HeaderNotJson) {
  TempDir dir;
  const std::string path = dir.file("j.safetensors");
  write_bytes(path, raw_file("{\"w\": {\"dtype\": ", "0123"));
  expect_open_error(path, "not valid JSON");
  write_bytes(path, raw_file("[1, 2]", ""));
  expect_open_error(path, "not a JSON object");
}

TEST(Safetensors, OffsetsOutOfRange) {
  TempDir dir;
  const std::string path = dir.file("o.safetensors");
  write_bytes(path, raw_file(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
                             std::string(8, '\0')));
  expect_open_error(path, "past the end of the data section");
  write_bytes(path, raw_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})",
                             std::string(8, '\0')));
  expect_open_error(path, "end < begin");
}

TEST(Safetensors, OverlappingTensors) {
  TempDir dir;
  const std::string path = dir.file("v.safetensors");
  write_bytes(path, raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                             std::string(12, '\0')));
  expect_open_error(path, "overlapping");
}

TEST(Safetensors, DtypeShapeMismatchAndUnknownDtype) {
  TempDir dir;
  const std::string path = dir.file("d.safetensors");
  write_bytes(path, raw_file(R"({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}})",
                             std::string(8, '\0')));
  expect_open_error(path, "needs 6");
  write_bytes(path, raw_file(R"({"w": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}})",
                             std::string(8, '\0')));
  expect_open_error(path, "unsupported dtype 'F8_E4M3'");
  write_bytes(path, raw_file(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})",
                             std::string(8, '\0')));
  expect_open_error(path, "non-negative");
  write_bytes(path, raw_file(R"({"w": {"dtype": "F32", "shape": [2]}})", std::string(8, '\0')));
  expect_open_error(path, "data_offsets");
}

TEST(Safetensors, MissingFile) {
  expect_open_error("/nonexistent/dir/x.safetensors", "cannot open");
}

TEST(AtomicFile, AbandonedWriteLeavesOriginalAndNoTemporary) {
  TempDir dir;
  const std::string path = dir.file("data.bin");
  write_file_atomically(path, "original");
  {
    AtomicFileWriter w(path);
    w.write("partial", 7);
  }  // destroyed without commit
  EXPECT_EQ(read_bytes(path), "original");
  EXPECT_EQ(list_directory(dir.path()).size(), 1u);
}

TEST(AtomicFile, FullDiskKeepsOriginalAndNamesFile) {
  // RLIMIT_FSIZE makes write() fail with EFBIG exactly as a full disk fails with ENOSPC.
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  write_file_atomically(path, "original");
  std::vector<float> big(1 << 16, 1.0f);
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  std::string msg = expect_error(
      [&] { write_safetensors(path, {{"w", DType::F32, {1 << 16}, big.data()}}); });
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("write failed"), std::string::npos) << msg;
  EXPECT_EQ(read_bytes(path), "original");
  EXPECT_EQ(list_directory(dir.path()).size(), 1u) << "temporary file left behind";
}

TEST(AtomicFile, UnwritableDirectoryIsAnError) {
  std::string msg = expect_error([] { write_file_atomically("/nonexistent/dir/f.json", "x"); });
  EXPECT_NE(msg.find("/nonexistent/dir/f.json"), std::string::npos) << msg;
}

// ---- config.json -------------------------------------------------------------------------

namespace {
const char* kLlama2 = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
  "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "vocab_size": 32000,
  "max_position_embeddings": 4096, "rope_theta": 10000.0, "rope_scaling": null,
  "tie_word_embeddings": false, "torch_dtype": "float16", "hidden_act": "silu",
  "bos_token_id": 1, "eos_token_id": 2})";

const char* kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
  "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
  "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]})";

const char* kQwen2 = R"({
  "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
  "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
  "vocab_size": 151936, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "sliding_window": 32768,
  "use_sliding_window": false, "max_position_embeddings": 32768})";

const char* kMistral = R"({
  "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "vocab_size": 32000, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "max_position_embeddings": 32768, "torch_dtype": "bfloat16"})";

std::string without(const char* json_text, const char* field) {
  auto j = nlohmann::json::parse(json_text);
  j.erase(field);
  return j.dump();
}
}  // namespace

TEST(ModelConfig, Llama2) {
  ModelConfig c = parse_model_config(kLlama2, "config.json");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(*c.bos_token_id, 1);
  // LLaMA-2-7B has 6,738,415,616 parameters.
  EXPECT_EQ(c.parameter_count(), 6738415616LL);
}

TEST(ModelConfig, Llama31RopeScalingGqaTied) {
  ModelConfig c = parse_model_config(kLlama31, "config.json");
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.kv_dim(), 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  // LLaMA-3.2-1B: 1,235,814,400 parameters.
  EXPECT_EQ(c.parameter_count(), 1235814400LL);
}

TEST(ModelConfig, Qwen2HasQkvBiasAndNoWindowUnlessEnabled) {
  ModelConfig c = parse_model_config(kQwen2, "config.json");
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.head_dim, 64);
  // Qwen2-0.5B: 494,032,768 parameters.
  EXPECT_EQ(c.parameter_count(), 494032768LL);
}

TEST(ModelConfig, MistralSlidingWindow) {
  ModelConfig c = parse_model_config(kMistral, "config.json");
  EXPECT_EQ(c.model_type, "mistral");
  ASSERT_TRUE(c.sliding_window.has_value());
  EXPECT_EQ(*c.sliding_window, 4096);
}

TEST(ModelConfig, MissingFieldIsNamed) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "vocab_size"}) {
    std::string msg = expect_error([&] { parse_model_config(without(kLlama2, field), "m/config.json"); });
    EXPECT_NE(msg.find("m/config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::string("'") + field + "' is missing"), std::string::npos) << msg;
  }
}

TEST(ModelConfig, UnsupportedArchitectureAndBadValues) {
  auto j = nlohmann::json::parse(kLlama2);
  j["architectures"] = {"GPT2LMHeadModel"};
  std::string msg = expect_error([&] { parse_model_config(j.dump(), "config.json"); });
  EXPECT_NE(msg.find("'GPT2LMHeadModel' is not supported"), std::string::npos) << msg;

  j = nlohmann::json::parse(kLlama2);
  j["num_key_value_heads"] = 5;
  msg = expect_error([&] { parse_model_config(j.dump(), "config.json"); });
  EXPECT_NE(msg.find("num_key_value_heads"), std::string::npos) << msg;

  j = nlohmann::json::parse(kLlama2);
  j["hidden_size"] = "4096";
  msg = expect_error([&] { parse_model_config(j.dump(), "config.json"); });
  EXPECT_NE(msg.find("'hidden_size' must be an integer"), std::string::npos) << msg;

  j = nlohmann::json::parse(kLlama31);
  j["rope_scaling"]["rope_type"] = "yarn";
  msg = expect_error([&] { parse_model_config(j.dump(), "config.json"); });
  EXPECT_NE(msg.find("'yarn' is not supported"), std::string::npos) << msg;

  j = nlohmann::json::parse(kLlama2);
  j["hidden_act"] = "gelu";
  msg = expect_error([&] { parse_model_config(j.dump(), "config.json"); });
  EXPECT_NE(msg.find("hidden_act"), std::string::npos) << msg;

  msg = expect_error([&] { parse_model_config("{not json", "config.json"); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
}

TEST(ModelConfig, RoundTripThroughJson) {
  for (const char* text : {kLlama2, kLlama31, kQwen2, kMistral}) {
    ModelConfig a = parse_model_config(text, "a");
    ModelConfig b = parse_model_config(model_config_to_json(a), "b");
    EXPECT_EQ(model_config_to_json(a), model_config_to_json(b));
    EXPECT_EQ(a.parameter_count(), b.parameter_count());
    EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
    EXPECT_EQ(a.sliding_window, b.sliding_window);
  }
}

TEST(ModelFolder, MissingPartsAreNamed) {
  TempDir dir;
  std::string msg = expect_error([&] { ModelFolder::open(dir.path()); });
  EXPECT_NE(msg.find("no config.json"), std::string::npos) << msg;
  write_bytes(dir.file("config.json"), kLlama2);
  msg = expect_error([&] { ModelFolder::open(dir.path()); });
  EXPECT_NE(msg.find("no model.safetensors"), std::string::npos) << msg;
  write_bytes(dir.file("model.safetensors"), raw_file("{}", ""));
  ModelFolder f = ModelFolder::open(dir.path() + "/");
  EXPECT_EQ(f.dir, dir.path());
  EXPECT_TRUE(f.tokenizer_path.empty());
  msg = expect_error([&] { f.require_tokenizer(); });
  EXPECT_NE(msg.find("no tokenizer.json"), std::string::npos) << msg;
}

// core/util/fs.h: the POSIX replacements for std::filesystem's directory iteration.
TEST(DirectoryWalk, RemoveTreeRemovesNestedFoldersAndNeverFollowsLinks) {
  TempDir dir, outside;
  write_bytes(outside.file("keep.txt"), "kept");
  const std::string root = dir.file("tree");
  std::filesystem::create_directories(root + "/a/b/c");
  write_bytes(root + "/a/b/c/deep.bin", std::string(100, 'x'));
  write_bytes(root + "/top.txt", "t");
  std::filesystem::create_directory_symlink(outside.path(), root + "/a/link");
  std::filesystem::create_symlink(outside.file("keep.txt"), root + "/file-link");

  const std::vector<DirEntry> listed = list_directory(root);
  ASSERT_EQ(listed.size(), 3u);
  EXPECT_EQ(listed[0].name, "a");
  EXPECT_TRUE(listed[0].is_directory);
  EXPECT_EQ(listed[1].name, "file-link");
  EXPECT_TRUE(listed[1].is_regular_file);  // the link's target, as is_regular_file() says
  EXPECT_EQ(listed[2].name, "top.txt");
  EXPECT_EQ(listed[2].size, 1u);
  EXPECT_FALSE(directory_is_empty(root));

  std::string error;
  EXPECT_TRUE(remove_tree(root, &error)) << error;
  EXPECT_FALSE(std::filesystem::exists(root));
  EXPECT_EQ(read_bytes(outside.file("keep.txt")), "kept");  // the links went, not their targets
  EXPECT_TRUE(remove_tree(root));                            // a missing path is success
  EXPECT_TRUE(directory_is_empty(dir.path()));
  EXPECT_FALSE(directory_is_empty(dir.file("missing")));

  write_bytes(dir.file("plain"), "p");  // a file is removed like rm -r would
  EXPECT_TRUE(remove_tree(dir.file("plain")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("plain")));

  const std::string msg = expect_error([&] { list_directory(dir.file("missing")); });
  EXPECT_NE(msg.find(dir.file("missing")), std::string::npos) << msg;
}

TEST(DirectoryWalk, RemoveTreeReportsWhatItCouldNotRemove) {
  TempDir dir;
  write_bytes(dir.file("file"), "f");
  const std::string bad = dir.file("file") + "/child";  // a path through a regular file
  std::string error;
  EXPECT_FALSE(remove_tree(bad, &error));
  EXPECT_NE(error.find(bad), std::string::npos) << error;
  EXPECT_NE(error.find("Not a directory"), std::string::npos) << error;
  const std::string msg = expect_error([&] { remove_tree_or_throw(bad); });
  EXPECT_NE(msg.find("cannot remove " + bad), std::string::npos) << msg;
  EXPECT_EQ(read_bytes(dir.file("file")), "f");
}
