// Calibration run configuration (see calib_config.h).
#include "core/calib/calib_config.h"

#include <nlohmann/json.hpp>

#include <set>
#include <string_view>

#include "core/util/error.h"

namespace respin {

const char* method_name(Method m) {
  switch (m) {
    case Method::Rtn: return "rtn";
    case Method::QuaRot: return "quarot";
    case Method::SpinQuant: return "spinquant";
    case Method::ReSpin: return "respin";
  }
  return "?";
}

Method method_from_name(const std::string& name) {
  for (Method m : {Method::Rtn, Method::QuaRot, Method::SpinQuant, Method::ReSpin})
    if (name == method_name(m)) return m;
  throw Error("unknown method '" + name + "' (expected rtn, quarot, spinquant or respin)");
}

bool method_rotates(Method m) { return m != Method::Rtn; }
bool method_learns(Method m) { return m == Method::SpinQuant || m == Method::ReSpin; }

const char* weight_quantizer_name(WeightQuantizer w) { return w == WeightQuantizer::Gptq ? "gptq" : "rtn"; }

WeightQuantizer weight_quantizer_from_name(const std::string& name) {
  if (name == "rtn") return WeightQuantizer::Rtn;
  if (name == "gptq") return WeightQuantizer::Gptq;
  throw Error("unknown weight quantizer '" + name + "' (expected rtn or gptq)");
}

const char* device_choice_name(DeviceChoice d) {
  switch (d) {
    case DeviceChoice::Auto: return "auto";
    case DeviceChoice::Cpu: return "cpu";
    case DeviceChoice::Cuda: return "cuda";
  }
  return "?";
}

std::pair<DeviceChoice, int> parse_device(const std::string& text) {
  if (text.rfind("cuda:", 0) == 0) {
    const std::string n = text.substr(5);
    if (!n.empty() && n.size() <= 4 && n.find_first_not_of("0123456789") == std::string::npos)
      return {DeviceChoice::Cuda, std::stoi(n)};
    throw Error("device '" + text + "': expected auto, cpu, cuda or cuda:N");
  }
  for (DeviceChoice d : {DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda})
    if (text == device_choice_name(d)) return {d, 0};
  throw Error("device '" + text + "': expected auto, cpu, cuda or cuda:N");
}

DeviceChoice device_choice_from_name(const std::string& name) {
  for (DeviceChoice d : {DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda})
    if (name == device_choice_name(d)) return d;
  throw Error("device '" + name + "' is not supported (auto, cpu or cuda)");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::Auto: return "auto";
    case Precision::Float32: return "float32";
    case Precision::BFloat16: return "bfloat16";
  }
  return "?";
}

const char* streaming_name(Streaming s) {
  switch (s) {
    case Streaming::Auto: return "auto";
    case Streaming::Whole: return "whole";
    case Streaming::Layers: return "layers";
  }
  return "?";
}

Streaming streaming_from_name(const std::string& name) {
  for (Streaming s : {Streaming::Auto, Streaming::Whole, Streaming::Layers})
    if (name == streaming_name(s)) return s;
  throw Error("unknown streaming '" + name + "' (expected auto, whole or layers)");
}

Precision precision_from_name(const std::string& name) {
  for (Precision p : {Precision::Auto, Precision::Float32, Precision::BFloat16})
    if (name == precision_name(p)) return p;
  throw Error("unknown precision '" + name + "' (expected auto, float32 or bfloat16)");
}

namespace {

void check_bits(int b, const char* field) {
  if (!((b >= 2 && b <= 8) || b == 16))
    throw Error(std::string("calibration config: ") + field + " must be 2..8 or 16 (off), got " + std::to_string(b));
}

}  // namespace

void CalibConfig::validate() const {
  auto fail = [](const std::string& m) { throw Error("calibration config: " + m); };
  if (model.empty()) fail("model is required");
  check_bits(wbits, "wbits");
  check_bits(abits, "abits");
  check_bits(kvbits, "kvbits");
  if (w_group < 0 || a_group < 0 || kv_group < 0) fail("group sizes must be >= 0");
  if (!(a_clip > 0 && a_clip <= 1)) fail("a_clip must be in (0, 1]");
  if (!(kv_clip > 0 && kv_clip <= 1)) fail("kv_clip must be in (0, 1]");
  if (rank < -1) fail("rank must be >= 0, or -1 for full rank");
  if (cuda_device < 0) fail("cuda_device must be >= 0");
  if (samples < 1) fail("samples must be >= 1");
  if (seq_len < 2) fail("seq_len must be >= 2");
  if (iters < 0) fail("iters must be >= 0");
  if (!(lr > 0)) fail("lr must be > 0");
  if (batch < 1) fail("batch must be >= 1");
  if (micro_batch < 0) fail("micro_batch must be >= 0 (0 = the whole batch)");
  if (device_memory < 0) fail("device_memory must be >= 0 (0 = the device's own memory)");
  if (eval_windows < 0) fail("eval_windows must be >= 0");
  if (stats_windows < 0) fail("stats_windows must be >= 0");
  if (threads < 0) fail("threads must be >= 0");
  if (!rotations_from.empty() && !method_rotates(method)) fail("rotations_from applies to rotating methods only");
  if (streaming == Streaming::Layers && !can_stream())
    fail(std::string("streaming 'layers' runs the phases without end-to-end gradients; ") + method_name(method) +
         " learns its rotations through the whole model (use whole, or rotations_from a run that learned them)");
}

bool CalibConfig::can_stream() const { return !method_learns(method) || !rotations_from.empty(); }

std::string CalibConfig::label() const {
  std::string s = method_name(method);
  if (method == Method::ReSpin) s += " r=" + (rank < 0 ? std::string("full") : std::to_string(rank));
  s += " W" + std::to_string(wbits) + "A" + std::to_string(abits) + "KV" + std::to_string(kvbits);
  if (weight_quantizer == WeightQuantizer::Gptq) s += " gptq";
  return s;
}

namespace {

// Every serialized field, in one place: visit(name, member) for each (model and method first).
template <class Config, class Visit>
void for_each_field(Config& c, Visit&& visit) {
  visit("model", c.model);
  visit("method", c.method);
  visit("wbits", c.wbits);
  visit("abits", c.abits);
  visit("kvbits", c.kvbits);
  visit("w_group", c.w_group);
  visit("a_group", c.a_group);
  visit("kv_group", c.kv_group);
  visit("w_sym", c.w_sym);
  visit("a_sym", c.a_sym);
  visit("kv_sym", c.kv_sym);
  visit("w_mse_clip", c.w_mse_clip);
  visit("a_clip", c.a_clip);
  visit("kv_clip", c.kv_clip);
  visit("rank", c.rank);
  visit("weight_quantizer", c.weight_quantizer);
  visit("calib_text", c.calib_text);
  visit("eval_text", c.eval_text);
  visit("samples", c.samples);
  visit("seq_len", c.seq_len);
  visit("iters", c.iters);
  visit("lr", c.lr);
  visit("batch", c.batch);
  visit("micro_batch", c.micro_batch);
  visit("checkpoint_layers", c.checkpoint_layers);
  visit("device_memory", c.device_memory);
  visit("eval_windows", c.eval_windows);
  visit("stats_windows", c.stats_windows);
  visit("seed", c.seed);
  visit("device", c.device);
  visit("precision", c.precision);
  visit("streaming", c.streaming);
  visit("cuda_device", c.cuda_device);
  visit("threads", c.threads);
  visit("data_dir", c.data_dir);
  visit("rotations_from", c.rotations_from);
}

// Enums travel as their names.
template <class E> struct EnumNames;
template <> struct EnumNames<Method> {
  static const char* name(Method m) { return method_name(m); }
  static Method parse(const std::string& s) { return method_from_name(s); }
};
template <> struct EnumNames<WeightQuantizer> {
  static const char* name(WeightQuantizer w) { return weight_quantizer_name(w); }
  static WeightQuantizer parse(const std::string& s) { return weight_quantizer_from_name(s); }
};
template <> struct EnumNames<DeviceChoice> {
  static const char* name(DeviceChoice d) { return device_choice_name(d); }
  static DeviceChoice parse(const std::string& s) { return device_choice_from_name(s); }
};

template <> struct EnumNames<Streaming> {
  static const char* name(Streaming s) { return streaming_name(s); }
  static Streaming parse(const std::string& s) { return streaming_from_name(s); }
};

template <> struct EnumNames<Precision> {
  static const char* name(Precision p) { return precision_name(p); }
  static Precision parse(const std::string& s) { return precision_from_name(s); }
};

}  // namespace

std::string calib_config_to_json(const CalibConfig& c) {
  nlohmann::json j = nlohmann::json::object();
  for_each_field(c, [&](const char* name, const auto& value) {
    using T = std::decay_t<decltype(value)>;
    if constexpr (std::is_enum_v<T>) j[name] = EnumNames<T>::name(value);
    else j[name] = value;
  });
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
  for_each_field(c, [&](const char* name, auto& value) {
    known.insert(name);
    auto it = j.find(name);
    if (it == j.end()) {
      const std::string_view n = name;
      if (n == "model" || n == "method") throw Error(source + ": missing field '" + name + "'");
      return;
    }
    try {
      using T = std::decay_t<decltype(value)>;
      if constexpr (std::is_enum_v<T>) {
        if (!it->is_string()) throw Error("");
        try {
          value = EnumNames<T>::parse(it->get<std::string>());
        } catch (const Error& e) {
          throw Error(source + ": field '" + name + "': " + e.what());
        }
        return;
      } else if constexpr (std::is_same_v<T, bool>) {
        if (!it->is_boolean()) throw Error("");
      } else if constexpr (std::is_same_v<T, std::string>) {
        if (!it->is_string()) throw Error("");
      } else if constexpr (std::is_integral_v<T>) {
        if (!it->is_number_integer()) throw Error("");
      } else {
        if (!it->is_number()) throw Error("");
      }
      value = it->get<T>();
    } catch (const Error& e) {
      if (*e.what()) throw;
      throw Error(source + ": field '" + name + "' has the wrong type (" + it->type_name() + ")");
    } catch (const std::exception&) {
      throw Error(source + ": field '" + name + "' has the wrong type (" + it->type_name() + ")");
    }
  });
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
