// core/export as the model loaders that read an export see it (docs/export.md 1.1, 2.1, 2.6):
//
//   - vLLM opens every *.safetensors in the folder root, or, when model.safetensors.index.json is
//     there, only the files its weight_map names; a tensor that is not a module's parameter stops
//     it ("no module or parameter named ...");
//   - compressed-tensors' converter walks the whole folder, treats every file whose path ends in
//     "safetensors" as a shard, and needs each of them in the index's weight_map; it infers a
//     config group's format from its scheme unless the group names it;
//   - transformers opens model.safetensors, or the index's files.
//
// For exports of several methods in both formats: every file a loader opens holds only tensor
// names of the architecture's modules (the rule is written out here, independently of the
// exporter), the index maps exactly their tensors and counts their data bytes, every
// compressed-tensors config group names its format, the online sidecar's tensors live where no
// loader looks and the workbench still finds them and reproduces the run's perplexity. The
// layout written before (online.safetensors beside the weights, no index, no per-group format)
// fails these checks and still loads in the workbench.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "core/calib/calibrate.h"
#include "core/eval/perplexity.h"
#include "core/export/export.h"
#include "core/export/exported_model.h"
#include "core/io/atomic_file.h"
#include "core/io/safetensors.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "tests/calib_fixture.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::TempDir;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// Every regular file under `dir`, as a path relative to it.
void walk(const std::string& dir, const std::string& rel, std::vector<std::string>& out) {
  for (const DirEntry& e : list_directory(rel.empty() ? dir : dir + "/" + rel)) {
    const std::string p = rel.empty() ? e.name : rel + "/" + e.name;
    if (e.is_directory) walk(dir, p, out);
    else if (e.is_regular_file) out.push_back(p);
  }
}

// What the folder's config.json says about the tensor names it may hold.
struct Architecture {
  int64_t layers = 0;
  bool compressed = false;            // a quantization_config
  std::string format;                 // its format
  std::set<std::string> transforms;   // transform_config group names
};

// The tensor names of a LlamaForCausalLM-style model: embeddings, per layer the two norms and the
// seven Linear layers (weight, optional bias), the final norm and lm_head. compressed-tensors
// replaces a quantized Linear's weight by its compressed parameters and adds one parameter per
// online transform module (<linear>.<group>_<location>.weight).
bool architecture_tensor(const std::string& name, const Architecture& a) {
  if (name == "model.embed_tokens.weight" || name == "model.norm.weight" || name == "lm_head.weight") return true;
  static const std::regex layer(R"(model\.layers\.(0|[1-9][0-9]*)\.(.+))");
  static const std::regex norm(R"((input_layernorm|post_attention_layernorm)\.weight)");
  static const std::regex linear(R"((self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.(.+))");
  static const std::regex transform(R"((.+)_(input|output)\.weight)");
  std::smatch m;
  if (!std::regex_match(name, m, layer)) return false;
  if (std::stoll(m[1].str()) >= a.layers) return false;
  const std::string rest = m[2].str();
  if (std::regex_match(rest, norm)) return true;
  std::smatch l;
  if (!std::regex_match(rest, l, linear)) return false;
  const std::string suffix = l[4].str();
  if (suffix == "bias") return true;
  if (!a.compressed) return suffix == "weight";
  std::smatch t;
  if (std::regex_match(suffix, t, transform)) return a.transforms.count(t[1].str()) > 0;
  if (a.format == "pack-quantized")
    return suffix == "weight_packed" || suffix == "weight_scale" || suffix == "weight_zero_point" ||
           suffix == "weight_shape" || suffix == "weight_g_idx";
  if (a.format == "int-quantized") return suffix == "weight" || suffix == "weight_scale" || suffix == "weight_zero_point";
  return false;
}

// Everything about `dir` that would stop, or mislead, a loader as described at the top; empty
// when a loader reads exactly the model.
std::vector<std::string> loader_problems(const std::string& dir) {
  std::vector<std::string> problems;
  const json cfg = json::parse(read_text_file(dir + "/config.json"));
  Architecture arch;
  arch.layers = cfg.at("num_hidden_layers").get<int64_t>();
  if (cfg.contains("quantization_config") && !cfg["quantization_config"].is_null()) {
    const json& qc = cfg["quantization_config"];
    arch.compressed = true;
    arch.format = qc.value("format", "");
    for (auto it = qc["config_groups"].begin(); it != qc["config_groups"].end(); ++it) {
      if (!it.value().contains("format") || !it.value()["format"].is_string())
        problems.push_back("config group " + it.key() + " names no format (compressed-tensors infers one)");
      else if (it.value()["format"] != qc["format"])
        problems.push_back("config group " + it.key() + " format " + it.value()["format"].dump() +
                           " differs from the top-level " + qc["format"].dump());
    }
    if (qc.contains("transform_config") && qc["transform_config"].contains("config_groups"))
      for (auto it = qc["transform_config"]["config_groups"].begin(); it != qc["transform_config"]["config_groups"].end();
           ++it)
        arch.transforms.insert(it.key());
  }

  std::vector<std::string> files;
  walk(dir, "", files);
  std::set<std::string> shards;  // what the converter takes for shards (any depth)
  std::set<std::string> root;    // what vLLM globs without an index
  for (const std::string& f : files) {
    if (ends_with(f, "safetensors")) {
      shards.insert(f);
      if (f.find('/') == std::string::npos && ends_with(f, ".safetensors")) root.insert(f);
    }
    for (const char* other : {".bin", ".pt", ".pth", ".msgpack"})
      if (ends_with(f, other)) problems.push_back(f + ": a loader takes it for a weights file");
  }

  auto check_names = [&](const std::string& file, std::map<std::string, std::string>* seen, uint64_t* bytes) {
    const SafetensorsFile st = SafetensorsFile::open(dir + "/" + file);
    for (const TensorInfo& t : st.tensors()) {
      if (!architecture_tensor(t.name, arch)) problems.push_back(file + ": tensor '" + t.name + "' is no module's");
      if (seen) (*seen)[t.name] = file;
      if (bytes) *bytes += t.nbytes();
    }
  };

  const std::string index_name = "model.safetensors.index.json";
  if (!fs::is_regular_file(dir + "/" + index_name)) {
    problems.push_back("no " + index_name);
    for (const std::string& f : root) check_names(f, nullptr, nullptr);  // vLLM opens them all
    for (const std::string& f : shards)
      problems.push_back(f + ": a shard without an index entry (compressed-tensors' converter)");
    return problems;
  }
  const json index = json::parse(read_text_file(dir + "/" + index_name));
  if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
    problems.push_back(index_name + ": no weight_map");
    return problems;
  }
  std::set<std::string> indexed;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it)
    indexed.insert(it.value().get<std::string>());
  for (const std::string& f : shards)
    if (!indexed.count(f)) problems.push_back(f + ": not named by " + index_name + " (compressed-tensors' converter)");
  std::map<std::string, std::string> held;  // tensor -> file, from the files themselves
  uint64_t bytes = 0;
  for (const std::string& f : indexed) {
    if (!fs::is_regular_file(dir + "/" + f)) {
      problems.push_back(index_name + " names missing file " + f);
      continue;
    }
    check_names(f, &held, &bytes);
  }
  std::map<std::string, std::string> mapped;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it)
    mapped[it.key()] = it.value().get<std::string>();
  if (mapped != held) problems.push_back(index_name + ": weight_map is not exactly the tensors of its files");
  const json& meta = index.value("metadata", json::object());
  if (!meta.contains("total_size") || !meta["total_size"].is_number_integer() ||
      meta["total_size"].get<uint64_t>() != bytes)
    problems.push_back(index_name + ": metadata.total_size is not the files' " + std::to_string(bytes) + " data bytes");
  return problems;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : "\n") + x;
  return s;
}

class ExportLoaders : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    test::write_calibration_fixture(*dir_);
    Tokenizer tok = Tokenizer::from_file(dir_->file("tokenizer.json"));
    ids_ = new std::vector<int>(tok.encode(read_text_file(dir_->file("eval.txt")), false));
    runs_ = new std::map<std::string, std::string>();
  }
  static void TearDownTestSuite() {
    delete runs_;
    delete ids_;
    delete dir_;
  }

  static const std::string& run(const std::string& name) {
    auto it = runs_->find(name);
    if (it != runs_->end()) return it->second;
    CalibConfig c;
    if (name == "rtn" || name == "quarot") c = test::small_calib_config(*dir_, name, 4);
    if (name == "respin") {
      c = test::small_calib_config(*dir_, "respin", 4);
      c.rank = 8;
    }
    if (name == "rtn-w4a4sym") {  // declared activations: the case format inference gets wrong
      c = test::small_calib_config(*dir_, "rtn", 4);
      c.a_sym = true;
      c.kvbits = 16;
    }
    if (c.model.empty()) throw Error("unknown test run " + name);
    fs::create_directories(dir_->file("runs"));
    run_calibration(c, dir_->file("runs/" + name));
    return (*runs_)[name] = dir_->file("runs/" + name);
  }

  static double perplexity(const LlamaModel& m, const LoadedRun& run) {
    PerplexityOptions po;
    po.seq_len = run.eval_seq_len;
    po.max_windows = run.eval_windows;
    return evaluate_perplexity(m, *ids_, po).perplexity;
  }

  static ExportResult export_to(const std::string& run_dir, const std::string& dir, ExportFormat f) {
    ExportOptions o;
    o.format = f;
    o.dtype = DType::F32;
    o.allow_sidecar = true;
    return export_run(run_dir, dir, o);
  }

  // The layout exports had before: tensors in online.safetensors (respin_online.json
  // format_version 1), no index, config groups without a format.
  static void make_old_layout(const std::string& d) {
    if (fs::exists(d + "/respin_online.json")) {
      json j = json::parse(read_text_file(d + "/respin_online.json"));
      j["format_version"] = 1;
      j.erase("tensors");
      write_file_atomically(d + "/respin_online.json", j.dump(2));
      fs::rename(d + "/respin_online.tensors", d + "/online.safetensors");
    }
    fs::remove(d + "/model.safetensors.index.json");
    json cfg = json::parse(read_text_file(d + "/config.json"));
    if (cfg.contains("quantization_config")) {
      for (auto& g : cfg["quantization_config"]["config_groups"]) g.erase("format");
      write_file_atomically(d + "/config.json", cfg.dump(2));
    }
  }

  std::string out(const std::string& name) const { return out_.file(name); }

  static TempDir* dir_;
  static std::vector<int>* ids_;
  static std::map<std::string, std::string>* runs_;
  TempDir out_;
};
TempDir* ExportLoaders::dir_ = nullptr;
std::vector<int>* ExportLoaders::ids_ = nullptr;
std::map<std::string, std::string>* ExportLoaders::runs_ = nullptr;

}  // namespace

TEST(ExportLoaderRule, TheNameRuleItself) {
  Architecture hf;
  hf.layers = 2;
  EXPECT_TRUE(architecture_tensor("model.embed_tokens.weight", hf));
  EXPECT_TRUE(architecture_tensor("model.layers.1.self_attn.o_proj.weight", hf));
  EXPECT_TRUE(architecture_tensor("model.layers.0.mlp.gate_proj.bias", hf));
  EXPECT_TRUE(architecture_tensor("model.layers.1.post_attention_layernorm.weight", hf));
  EXPECT_FALSE(architecture_tensor("model.layers.2.mlp.up_proj.weight", hf));  // no third layer
  EXPECT_FALSE(architecture_tensor("model.layers.01.mlp.up_proj.weight", hf));
  EXPECT_FALSE(architecture_tensor("model.layers.0.mlp.up_proj.weight_packed", hf));
  EXPECT_FALSE(architecture_tensor("attn_skip.0.q", hf));
  EXPECT_FALSE(architecture_tensor("hadamard.down_proj.core", hf));
  Architecture ct = hf;
  ct.compressed = true;
  ct.format = "pack-quantized";
  ct.transforms = {"R4"};
  EXPECT_TRUE(architecture_tensor("model.layers.0.mlp.up_proj.weight_packed", ct));
  EXPECT_TRUE(architecture_tensor("model.layers.0.self_attn.k_proj.weight_zero_point", ct));
  EXPECT_TRUE(architecture_tensor("model.layers.1.mlp.down_proj.R4_input.weight", ct));
  EXPECT_FALSE(architecture_tensor("model.layers.1.mlp.down_proj.R3_input.weight", ct));
  EXPECT_FALSE(architecture_tensor("model.layers.0.mlp.up_proj.weight", ct));  // packed: no .weight
  EXPECT_FALSE(architecture_tensor("mlp_skip.1.m", ct));
}

TEST_F(ExportLoaders, EveryFileALoaderOpensHoldsOnlyTheModel) {
  for (const char* name : {"rtn", "quarot", "respin", "rtn-w4a4sym"}) {
    const std::string& r = run(name);
    const LoadedRun lr = load_run(r);
    const double want = lr.record.results.quantized_perplexity;
    for (ExportFormat f : {ExportFormat::Hf, ExportFormat::CompressedTensors}) {
      const std::string o = out(std::string(name) + "-" + export_format_name(f));
      SCOPED_TRACE(o);
      const ExportResult res = export_to(r, o, f);
      const std::vector<std::string> problems = loader_problems(o);
      EXPECT_TRUE(problems.empty()) << joined(problems);

      const json cfg = json::parse(read_text_file(o + "/config.json"));
      if (f == ExportFormat::CompressedTensors) {
        const json& qc = cfg["quantization_config"];
        EXPECT_EQ(qc["format"], "pack-quantized");
        ASSERT_FALSE(qc["config_groups"].empty());
        for (const json& g : qc["config_groups"]) EXPECT_EQ(g.value("format", ""), "pack-quantized") << g.dump();
        if (std::string(name) == "rtn-w4a4sym") EXPECT_FALSE(qc["config_groups"]["group_0"]["input_activations"].is_null());
      } else {
        EXPECT_FALSE(cfg.contains("quantization_config"));
      }

      // The sidecar is still there, named by respin_online.json, in a file no loader opens.
      EXPECT_EQ(res.sidecar, fs::exists(o + "/respin_online.json"));
      if (res.sidecar) {
        const json side = json::parse(read_text_file(o + "/respin_online.json"));
        const std::string tensors = side.at("tensors").get<std::string>();
        EXPECT_FALSE(ends_with(tensors, "safetensors")) << tensors;
        EXPECT_EQ(tensors.find('/'), std::string::npos) << tensors;
        ASSERT_TRUE(fs::is_regular_file(o + "/" + tensors)) << tensors;
        const SafetensorsFile st = SafetensorsFile::open(o + "/" + tensors);
        if (std::string(name) == "respin") {
          EXPECT_NE(st.find("attn_skip.0.q"), nullptr);
          EXPECT_NE(st.find("mlp_skip.1.m"), nullptr);
        }
        if (std::string(name) == "quarot") EXPECT_NE(st.find("hadamard.down_proj.core"), nullptr);  // 96 = 12 x 8
      }
      EXPECT_FALSE(fs::exists(o + "/online.safetensors"));

      // The workbench finds everything and reproduces the run (f32: exactly).
      const ExportedModel em = load_exported_model(o);
      ASSERT_EQ(em.sidecar.has_value(), res.sidecar);
      if (std::string(name) == "respin") {
        ASSERT_EQ(em.skip.attn_rank_r.size(), 2u);
        EXPECT_EQ(em.skip.attn_rank_r[0].rank, 8);
        EXPECT_EQ(em.skip.mlp_rank_r[1].rank, 8);
      }
      const double got = perplexity(*em.model, lr);
      EXPECT_NEAR(got / want, 1.0, 2e-6) << got << " vs the run's " << want;
    }
  }
}

TEST_F(ExportLoaders, TheOldLayoutFailsTheLoadersAndStillLoadsHere) {
  const std::string& r = run("respin");
  const LoadedRun lr = load_run(r);
  const double want = lr.record.results.quantized_perplexity;
  for (ExportFormat f : {ExportFormat::Hf, ExportFormat::CompressedTensors}) {
    const std::string o = out(std::string("old-") + export_format_name(f));
    SCOPED_TRACE(o);
    export_to(r, o, f);
    make_old_layout(o);
    const std::string problems = joined(loader_problems(o));
    EXPECT_TRUE(contains(problems, "online.safetensors: tensor 'attn_skip.0.q' is no module's")) << problems;
    EXPECT_TRUE(contains(problems, "no model.safetensors.index.json")) << problems;
    if (f == ExportFormat::CompressedTensors)
      EXPECT_TRUE(contains(problems, "config group group_0 names no format")) << problems;
    // The workbench reads exports written before.
    const ExportedModel em = load_exported_model(o);
    ASSERT_TRUE(em.sidecar.has_value());
    EXPECT_EQ(em.sidecar->format_version, 1);
    EXPECT_EQ(em.skip.attn_rank_r[0].rank, 8);
    EXPECT_NEAR(perplexity(*em.model, lr) / want, 1.0, 2e-6);
  }
}

TEST_F(ExportLoaders, TheTensorFileAndTheIndexAreChecked) {
  const std::string base = out("base");
  export_to(run("respin"), base, ExportFormat::CompressedTensors);
  auto copy = [&](const std::string& name) {
    const std::string d = out(name);
    fs::copy(base, d, fs::copy_options::recursive);
    return d;
  };
  // The tensor file respin_online.json names is missing: one line naming it.
  std::string d = copy("missing");
  fs::remove(d + "/respin_online.tensors");
  std::string e = test::expect_error([&] { load_exported_model(d); });
  EXPECT_TRUE(contains(e, "/respin_online.tensors: missing")) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  // A tensor file where loaders would open it is refused.
  d = copy("renamed");
  {
    json j = json::parse(read_text_file(d + "/respin_online.json"));
    j["tensors"] = "online.safetensors";
    write_file_atomically(d + "/respin_online.json", j.dump(2));
  }
  e = test::expect_error([&] { load_exported_model(d); });
  EXPECT_TRUE(contains(e, "respin_online.json: field 'tensors'")) << e;
  EXPECT_TRUE(contains(e, "safetensors")) << e;
  // Version 2 without "tensors" is incomplete.
  d = copy("no-tensors-key");
  {
    json j = json::parse(read_text_file(d + "/respin_online.json"));
    j.erase("tensors");
    write_file_atomically(d + "/respin_online.json", j.dump(2));
  }
  e = test::expect_error([&] { load_exported_model(d); });
  EXPECT_TRUE(contains(e, "field 'tensors' is missing")) << e;
  // An index that leaves a tensor of its file out would hide it: refused.
  d = copy("short-index");
  {
    json j = json::parse(read_text_file(d + "/model.safetensors.index.json"));
    j["weight_map"].erase("model.layers.1.mlp.down_proj.R4_input.weight");
    write_file_atomically(d + "/model.safetensors.index.json", j.dump(2));
  }
  EXPECT_FALSE(loader_problems(d).empty());
  e = test::expect_error([&] { load_exported_model(d); });
  EXPECT_TRUE(contains(e, "model.safetensors.index.json: weight_map does not map tensor "
                          "'model.layers.1.mlp.down_proj.R4_input.weight'")) << e;
}
