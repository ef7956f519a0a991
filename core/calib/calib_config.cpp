// Calibration run configuration (see calib_config.h).
#include "core/calib/calib_config.h"

#include <nlohmann/json.hpp>

#include <set>

#include "core/methods/methods.h"
#include "core/util/error.h"

namespace respin {

namespace {

void check_bits(int b, const char* field) {
  if (!((b >= 2 && b <= 8) || b == 16))
    throw Error(std::string("calibration config: ") + field + " must be 2..8 or 16 (off), got " + std::to_string(b));
}

}  // namespace

void CalibConfig::validate() const {
  auto fail = [](const std::string& m) { throw Error("calibration config: " + m); };
  if (model.empty()) fail("model is required");
  method_from_name(method);
  check_bits(wbits, "wbits");
  check_bits(abits, "abits");
  check_bits(kvbits, "kvbits");
  if (w_group < 0 || a_group < 0 || kv_group < 0) fail("group sizes must be >= 0");
  if (!(a_clip > 0 && a_clip <= 1)) fail("a_clip must be in (0, 1]");
  if (!(kv_clip > 0 && kv_clip <= 1)) fail("kv_clip must be in (0, 1]");
  if (rank < -1) fail("rank must be >= 0, or -1 for full rank");
  if (weight_quantizer != "rtn" && weight_quantizer != "gptq")
    fail("weight_quantizer must be rtn or gptq, got '" + weight_quantizer + "'");
  if (samples < 1) fail("samples must be >= 1");
  if (seq_len < 2) fail("seq_len must be >= 2");
  if (iters < 0) fail("iters must be >= 0");
  if (!(lr > 0)) fail("lr must be > 0");
  if (batch < 1) fail("batch must be >= 1");
  if (eval_windows < 0) fail("eval_windows must be >= 0");
  if (stats_windows < 0) fail("stats_windows must be >= 0");
  if (device != "auto" && device != "cpu" && device != "cuda") fail("device must be auto, cpu or cuda");
  if (threads < 0) fail("threads must be >= 0");
  quant_config().validate();
}

QuantConfig CalibConfig::quant_config() const {
  QuantConfig q;
  q.weight = QuantSpec{wbits, w_sym, w_group, 1.0};
  q.weight_mse_clip = w_mse_clip;
  q.activation = QuantSpec{abits, a_sym, a_group, a_clip};
  q.kv = QuantSpec{kvbits, kv_sym, kv_group, kv_clip};
  return q;
}

std::string calib_config_to_json(const CalibConfig& c) {
  nlohmann::json j = {{"model", c.model},
                      {"method", c.method},
                      {"wbits", c.wbits},
                      {"abits", c.abits},
                      {"kvbits", c.kvbits},
                      {"w_group", c.w_group},
                      {"a_group", c.a_group},
                      {"kv_group", c.kv_group},
                      {"w_sym", c.w_sym},
                      {"a_sym", c.a_sym},
                      {"kv_sym", c.kv_sym},
                      {"w_mse_clip", c.w_mse_clip},
                      {"a_clip", c.a_clip},
                      {"kv_clip", c.kv_clip},
                      {"rank", c.rank},
                      {"weight_quantizer", c.weight_quantizer},
                      {"calib_text", c.calib_text},
                      {"eval_text", c.eval_text},
                      {"samples", c.samples},
                      {"seq_len", c.seq_len},
                      {"iters", c.iters},
                      {"lr", c.lr},
                      {"batch", c.batch},
                      {"eval_windows", c.eval_windows},
                      {"stats_windows", c.stats_windows},
                      {"seed", c.seed},
                      {"device", c.device},
                      {"threads", c.threads}};
  return j.dump(2);
}

CalibConfig calib_config_from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(source + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw Error(source + ": expected a JSON object");
  CalibConfig c;
  std::set<std::string> known;
  auto field = [&](const char* name, auto& value, bool required = false) {
    known.insert(name);
    auto it = j.find(name);
    if (it == j.end()) {
      if (required) throw Error(source + ": missing field '" + name + "'");
      return;
    }
    try {
      using T = std::decay_t<decltype(value)>;
      if constexpr (std::is_same_v<T, bool>) {
        if (!it->is_boolean()) throw Error("");
      } else if constexpr (std::is_same_v<T, std::string>) {
        if (!it->is_string()) throw Error("");
      } else if constexpr (std::is_integral_v<T>) {
        if (!it->is_number_integer()) throw Error("");
      } else {
        if (!it->is_number()) throw Error("");
      }
      value = it->get<std::decay_t<decltype(value)>>();
    } catch (const std::exception&) {
      throw Error(source + ": field '" + name + "' has the wrong type (" + it->type_name() + ")");
    }
  };
  field("model", c.model, true);
  field("method", c.method, true);
  field("wbits", c.wbits);
  field("abits", c.abits);
  field("kvbits", c.kvbits);
  field("w_group", c.w_group);
  field("a_group", c.a_group);
  field("kv_group", c.kv_group);
  field("w_sym", c.w_sym);
  field("a_sym", c.a_sym);
  field("kv_sym", c.kv_sym);
  field("w_mse_clip", c.w_mse_clip);
  field("a_clip", c.a_clip);
  field("kv_clip", c.kv_clip);
  field("rank", c.rank);
  field("weight_quantizer", c.weight_quantizer);
  field("calib_text", c.calib_text);
  field("eval_text", c.eval_text);
  field("samples", c.samples);
  field("seq_len", c.seq_len);
  field("iters", c.iters);
  field("lr", c.lr);
  field("batch", c.batch);
  field("eval_windows", c.eval_windows);
  field("stats_windows", c.stats_windows);
  field("seed", c.seed);
  field("device", c.device);
  field("threads", c.threads);
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known.count(it.key())) throw Error(source + ": unknown field '" + it.key() + "'");
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(source + ": " + e.what());
  }
  return c;
}

}  // namespace respin
