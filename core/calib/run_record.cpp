// The run record and its JSON form (see run_record.h).
#include "core/calib/run_record.h"

#include <cmath>
#include <limits>

#include "core/util/error.h"

namespace respin {

using nlohmann::json;

namespace {

// Each record struct lists its fields once in a visit() function; to_json and from_json walk
// it. Reading: an absent field keeps its default (format_version 1 files lack the newer ones);
// a present field of the wrong type is an error naming its path.
template <class V> void visit(QuantizerRecord& r, V&& v) {
  v("bits", r.bits); v("symmetric", r.symmetric); v("group_size", r.group_size); v("clip_ratio", r.clip_ratio);
}
template <class V> void visit(DataIdentity& r, V&& v) { v("source", r.source); v("bytes", r.bytes); v("sha256", r.sha256); }
template <class V> void visit(ModelIdentity& r, V&& v) {
  v("folder", r.folder); v("architecture", r.architecture); v("parameters", r.parameters);
  v("hidden_size", r.hidden_size); v("intermediate_size", r.intermediate_size); v("layers", r.layers);
  v("heads", r.heads); v("kv_heads", r.kv_heads); v("head_dim", r.head_dim); v("vocab_size", r.vocab_size);
  v("sha256", r.sha256);
}
template <class V> void visit(QuantizersRecord& r, V&& v) {
  v("weight", r.weight); v("weight_mse_clip", r.weight_mse_clip); v("weight_quantizer", r.weight_quantizer);
  v("activation", r.activation); v("o_proj_activation_group", r.o_proj_activation_group); v("kv", r.kv);
}
template <class V> void visit(OnlineRecord& r, V&& v) {
  v("qk_hadamard", r.qk_hadamard); v("down_hadamard", r.down_hadamard); v("heads_hadamard", r.heads_hadamard);
  v("skip_correction", r.skip_correction);
}
template <class V> void visit(TrainingRecord& r, V&& v) {
  v("steps", r.steps); v("lr", r.lr); v("batch", r.batch); v("weight_bits_while_training", r.weight_bits_while_training);
  v("tokens", r.tokens); v("seconds", r.seconds); v("max_orthogonality_error", r.max_orthogonality_error);
  v("loss", r.loss);
}
template <class V> void visit(GptqRecord& r, V&& v) {
  v("layer_loss", r.layer_loss); v("dead_columns", r.dead_columns); v("seconds", r.seconds);
}
template <class V> void visit(MethodRecord& r, V&& v) {
  v("residual_init", r.residual_init); v("head_init", r.head_init); v("heads_hadamard", r.heads_hadamard_note);
  v("rank", r.rank); v("transition_spectral_error", r.transition_spectral_error);
  v("online_parameters", r.online_parameters); v("online_macs_per_token", r.online_macs_per_token);
  v("training", r.training); v("gptq", r.gptq); v("rotations_from", r.rotations_from);
}
template <class V> void visit(CalibrationDataRecord& r, V&& v) {
  v("data", r.data); v("windows", r.windows); v("seq_len", r.seq_len);
}
template <class V> void visit(ResultsRecord& r, V&& v) {
  v("eval_data", r.eval_data); v("eval_windows", r.eval_windows); v("eval_seq_len", r.eval_seq_len);
  v("eval_tokens", r.eval_tokens); v("fp_perplexity", r.fp_perplexity);
  v("quantized_perplexity", r.quantized_perplexity); v("eval_tokens_per_s", r.eval_tokens_per_s);
}
template <class V> void visit(TimingRecord& r, V&& v) {
  v("phases", r.phases_seconds); v("calibration_seconds", r.calibration_seconds);
  v("total_seconds", r.total_seconds); v("threads", r.threads); v("device", r.device);
}
template <class V> void visit(ComputeRecord& r, V&& v) {
  v("weights_and_activations", r.weights_and_activations); v("rotation_learning", r.rotation_learning);
  v("rotations", r.rotations); v("weight_fusion", r.weight_fusion); v("gptq_hessian", r.gptq_hessian);
  v("libtorch", r.libtorch); v("attention", r.attention); v("phases", r.phases);
}
template <class V> void visit(MemoryRecord& r, V&& v) {
  v("device", r.device); v("capacity_bytes", r.capacity_bytes); v("capacity_given", r.capacity_given);
  v("micro_batch", r.micro_batch); v("checkpoint_layers", r.checkpoint_layers);
  v("learning_chosen", r.learning_chosen); v("streamed", r.streamed); v("baseline_rss_bytes", r.baseline_rss_bytes);
  v("predicted_bytes", r.predicted_bytes); v("predicted_device_bytes", r.predicted_device_bytes);
  v("measured_bytes", r.measured_bytes); v("measured_device_bytes", r.measured_device_bytes);
  v("predicted_seconds", r.predicted_seconds); v("flops_per_second", r.flops_per_second);
  v("f64_flops_per_second", r.f64_flops_per_second);
}
template <class V> void visit(RunRecord& r, V&& v) {
  v("format_version", r.format_version); v("respin_version", r.respin_version); v("created", r.created);
  v("finished", r.finished); v("config_sha256", r.config_sha256); v("model", r.model);
  v("quantizers", r.quantizers); v("online", r.online); v("method", r.method); v("calibration", r.calibration);
  v("results", r.results); v("timing", r.timing); v("compute", r.compute); v("peak_rss_bytes", r.peak_rss_bytes);
  v("gpu_memory_in_use_bytes", r.gpu_memory_in_use_bytes); v("memory", r.memory);
}

template <class T> struct IsRecord : std::false_type {};
template <> struct IsRecord<QuantizerRecord> : std::true_type {};
template <> struct IsRecord<DataIdentity> : std::true_type {};
template <> struct IsRecord<ModelIdentity> : std::true_type {};
template <> struct IsRecord<QuantizersRecord> : std::true_type {};
template <> struct IsRecord<OnlineRecord> : std::true_type {};
template <> struct IsRecord<TrainingRecord> : std::true_type {};
template <> struct IsRecord<GptqRecord> : std::true_type {};
template <> struct IsRecord<MethodRecord> : std::true_type {};
template <> struct IsRecord<CalibrationDataRecord> : std::true_type {};
template <> struct IsRecord<ResultsRecord> : std::true_type {};
template <> struct IsRecord<TimingRecord> : std::true_type {};
template <> struct IsRecord<ComputeRecord> : std::true_type {};
template <> struct IsRecord<MemoryRecord> : std::true_type {};

template <class T> struct IsOptional : std::false_type {};
template <class T> struct IsOptional<std::optional<T>> : std::true_type {};

template <class T> json write(const T& value);

// A non-finite double (a loss that diverged, an overflowed perplexity) as the string "nan", "inf"
// or "-inf", which JSON numbers cannot hold (as site_stats.h does).
json number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}
bool read_number(const json& j, double& out) {
  if (j.is_number()) {
    out = j.get<double>();
    return true;
  }
  if (!j.is_string()) return false;
  const std::string s = j.get<std::string>();
  if (s == "nan") out = std::numeric_limits<double>::quiet_NaN();
  else if (s == "inf") out = std::numeric_limits<double>::infinity();
  else if (s == "-inf") out = -std::numeric_limits<double>::infinity();
  else return false;
  return true;
}

template <class T> json write_record(const T& rec) {
  json j = json::object();
  visit(const_cast<T&>(rec), [&](const char* name, const auto& field) { j[name] = write(field); });
  return j;
}

template <class T> json write(const T& value) {
  if constexpr (IsRecord<T>::value) {
    return write_record(value);
  } else if constexpr (IsOptional<T>::value) {
    return value ? write(*value) : json(nullptr);
  } else if constexpr (std::is_same_v<T, std::vector<std::pair<std::string, double>>>) {
    json a = json::array();
    for (const auto& [k, s] : value) a.push_back({k, s});
    return a;
  } else if constexpr (std::is_same_v<T, std::vector<std::pair<std::string, std::string>>>) {
    json a = json::array();
    for (const auto& [k, s] : value) a.push_back({k, s});
    return a;
  } else if constexpr (std::is_same_v<T, double>) {
    return number(value);
  } else if constexpr (std::is_same_v<T, std::vector<double>>) {
    json a = json::array();
    for (double v : value) a.push_back(number(v));
    return a;
  } else {
    return json(value);
  }
}

template <class T> void read(const json& j, T& out, const std::string& path);

template <class T> void read_record(const json& j, T& rec, const std::string& path) {
  if (!j.is_object()) throw Error("field '" + path + "' must be an object");
  visit(rec, [&](const char* name, auto& field) {
    auto it = j.find(name);
    if (it != j.end()) read(*it, field, path.empty() ? name : path + "." + name);
  });
}

template <class T> void read(const json& j, T& out, const std::string& path) {
  auto wrong = [&] { throw Error("field '" + path + "' has the wrong type (" + j.type_name() + ")"); };
  if constexpr (IsRecord<T>::value) {
    read_record(j, out, path);
  } else if constexpr (IsOptional<T>::value) {
    if (j.is_null()) {
      out.reset();
    } else {
      typename T::value_type v{};
      read(j, v, path);
      out = std::move(v);
    }
  } else if constexpr (std::is_same_v<T, std::vector<std::pair<std::string, double>>>) {
    if (!j.is_array()) wrong();
    out.clear();
    for (const json& e : j) {
      double v = 0;
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !read_number(e[1], v)) wrong();
      out.emplace_back(e[0].get<std::string>(), v);
    }
  } else if constexpr (std::is_same_v<T, std::vector<std::pair<std::string, std::string>>>) {
    if (!j.is_array()) wrong();
    out.clear();
    for (const json& e : j) {
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_string()) wrong();
      out.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    }
  } else if constexpr (std::is_same_v<T, std::vector<double>>) {
    if (!j.is_array()) wrong();
    out.clear();
    for (const json& e : j) {
      double v = 0;
      if (!read_number(e, v)) wrong();
      out.push_back(v);
    }
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!j.is_boolean()) wrong();
    out = j.get<bool>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!j.is_string()) wrong();
    out = j.get<std::string>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!j.is_number_integer()) wrong();
    out = j.get<T>();
  } else {
    static_assert(std::is_same_v<T, double>);
    if (!read_number(j, out)) wrong();
  }
}

}  // namespace

int64_t skip_correction_parameters_per_layer(int64_t hidden, int64_t rank) { return 2 * (hidden * rank + rank * rank); }
int64_t skip_correction_macs_per_token_per_layer(int64_t hidden, int64_t rank) {
  return 2 * (2 * hidden * rank + rank * rank);
}
int64_t decoder_layer_linear_parameters(int64_t hidden, int64_t q_dim, int64_t kv_dim, int64_t intermediate) {
  return hidden * q_dim + 2 * hidden * kv_dim + q_dim * hidden + 3 * hidden * intermediate;
}

json run_record_to_json(const RunRecord& r) {
  json j = {{"format", "respin-run"}};
  json body = write_record(r);
  for (auto it = body.begin(); it != body.end(); ++it) j[it.key()] = it.value();
  j["config"] = json::parse(calib_config_to_json(r.config));
  return j;
}

RunRecord run_record_from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": expected a JSON object");
  if (j.value("format", std::string()) != "respin-run") throw Error(source + ": not a respin run (field 'format')");
  RunRecord r;
  try {
    if (!j.contains("config")) throw Error("missing field 'config'");
    if (!j.contains("results")) throw Error("missing field 'results'");
    r.config = calib_config_from_json(j.at("config").dump(), source + " config");
    read_record(j, r, "");
    if (r.format_version > kRunFormatVersion)
      throw Error("format_version " + std::to_string(r.format_version) + " is newer than this respin reads (" +
                  std::to_string(kRunFormatVersion) + ")");
    if (r.format_version < 2) {
      // Version 1 named the data sources directly and summed the phase times in an object.
      const json& cal = j.value("calibration", json::object());
      if (cal.contains("source")) read(cal["source"], r.calibration.data.source, "calibration.source");
      const json& res = j.at("results");
      if (res.contains("eval_source")) read(res["eval_source"], r.results.eval_data.source, "results.eval_source");
      const json& timing = j.value("timing", json::object());
      if (timing.contains("phases_seconds") && timing["phases_seconds"].is_object())
        for (auto it = timing["phases_seconds"].begin(); it != timing["phases_seconds"].end(); ++it)
          r.timing.phases_seconds.emplace_back(it.key(), it.value().get<double>());
    }
  } catch (const Error& e) {
    const std::string what = e.what();
    throw Error(what.rfind(source, 0) == 0 ? what : source + ": " + what);
  } catch (const json::exception& e) {
    throw Error(source + ": " + e.what());
  }
  return r;
}

}  // namespace respin
