// Model folder summary (see model_summary.h).
#include "core/io/model_summary.h"

#include <sys/stat.h>

#include "core/io/model_folder.h"
#include "core/rotation/hadamard_matrix.h"

namespace respin {

namespace {

// "goethals_seidel(43)" -> "Goethals-Seidel(43)"
std::string pretty(std::string factor) {
  const std::pair<const char*, const char*> names[] = {
      {"goethals_seidel", "Goethals-Seidel"}, {"sylvester", "Sylvester"}, {"paley1", "Paley I"}, {"paley2", "Paley II"}};
  for (const auto& [raw, nice] : names)
    if (factor.rfind(raw, 0) == 0) return nice + factor.substr(std::string(raw).size());
  return factor;
}

}  // namespace

std::string hadamard_summary_text(int64_t n) {
  const std::string c = n >= 1 && n <= 32768 ? hadamard_construction(static_cast<int>(n)) : "";
  if (c.empty()) return std::to_string(n) + ": no known construction: random orthogonal fallback";
  // The Sylvester factor is last: n = core x 2^m.
  int64_t pow2 = 1;
  const size_t at = c.rfind("sylvester(");
  if (at != std::string::npos) pow2 = std::stoll(c.substr(at + 10));
  std::string factors;
  size_t start = 0;
  while (start < c.size()) {
    size_t end = c.find(" x ", start);
    factors += (factors.empty() ? "" : " x ") + pretty(c.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 3;
  }
  if (pow2 == n) return std::to_string(n) + " = 2^" + std::to_string(__builtin_ctzll(static_cast<unsigned long long>(n))) + ", " + factors;
  return std::to_string(n) + " = " + std::to_string(n / pow2) + " x " + std::to_string(pow2) + ", " + factors;
}

ModelSummary summarize_model(const std::string& dir) {
  const ModelFolder folder = ModelFolder::open(dir);
  ModelSummary s;
  s.folder = folder.dir;
  s.config_path = folder.config_path;
  s.sharded = folder.sharded;
  s.config = load_model_config(folder.config_path);
  s.parameters = s.config.parameter_count();
  for (const std::string& f : folder.weight_files()) {
    struct stat st {};
    if (::stat(f.c_str(), &st) == 0) s.weight_bytes += st.st_size;
  }
  if (!folder.tokenizer_path.empty()) s.tokenizer = Tokenizer::from_file(folder.tokenizer_path).info();
  const ModelConfig& c = s.config;
  const std::pair<const char*, int64_t> widths[] = {{"hidden size (R1)", c.hidden_size},
                                                    {"intermediate size (R4)", c.intermediate_size},
                                                    {"head dim (R2, R3)", c.head_dim},
                                                    {"heads (QuaRot's Hadamard across heads)", c.num_attention_heads}};
  for (const auto& [role, n] : widths) {
    HadamardSummary h;
    h.role = role;
    h.order = n;
    h.construction = n >= 1 && n <= 32768 ? hadamard_construction(static_cast<int>(n)) : "";
    h.text = hadamard_summary_text(n);
    s.hadamards.push_back(h);
  }
  return s;
}

}  // namespace respin
