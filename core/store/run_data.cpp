// Run data as JSON or CSV files (see run_data.h).
#include "core/store/run_data.h"

#include <cmath>
#include <cstdio>
#include <set>

#include "core/calib/run_record.h"
#include "core/io/atomic_file.h"
#include "core/util/error.h"

namespace respin {

using nlohmann::json;

namespace {

std::string text_json(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

}  // namespace

json run_summary_json(const RunSummary& r) {
  json j = {{"id", r.id},
            {"uuid", r.uuid},
            {"status", run_status_name(r.status)},
            {"message", r.message},
            {"created", r.created},
            {"ended", r.ended},
            {"model", r.model_folder},
            {"architecture", r.model_architecture},
            {"method", method_name(r.method)},
            {"wbits", r.wbits},
            {"abits", r.abits},
            {"kvbits", r.kvbits},
            {"rank", r.rank},
            {"weight_quantizer", weight_quantizer_name(r.weight_quantizer)},
            {"tags", r.tags},
            {"run_dir", r.run_dir}};
  auto put = [&](const char* k, const std::optional<double>& v) { j[k] = v ? json(*v) : json(nullptr); };
  put("fp_perplexity", r.fp_perplexity);
  put("quantized_perplexity", r.quantized_perplexity);
  put("calibration_seconds", r.calibration_seconds);
  put("total_seconds", r.total_seconds);
  j["applied_rank"] = r.applied_rank ? json(*r.applied_rank) : json(nullptr);
  j["sweep"] = r.sweep_id ? json(*r.sweep_id) : json(nullptr);
  j["tmp_dir"] = r.tmp_dir.empty() ? json(nullptr) : json(r.tmp_dir);
  return j;
}

void flatten_json(const json& j, const std::string& prefix, std::map<std::string, json>& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      flatten_json(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
  } else {
    out[prefix] = j;
  }
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

std::string json_value_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::vector<std::string> run_data_files(RunDataFormat format, const std::string& out) {
  if (format == RunDataFormat::Json) return {out};
  std::string base = out;
  if (base.size() > 4 && base.compare(base.size() - 4, 4, ".csv") == 0) base.resize(base.size() - 4);
  return {base + ".csv", base + ".loss.csv", base + ".layers.csv"};
}

std::vector<std::string> export_run_data(const RunStore& s, const std::vector<int64_t>& ids, RunDataFormat format,
                                         const std::string& out) {
  if (ids.empty()) throw Error("run data export needs one or more run ids");
  std::vector<RunDetail> runs;
  for (int64_t id : ids) {
    std::optional<RunDetail> d = s.get_run(id);
    if (!d) throw Error(s.path() + ": no run " + std::to_string(id));
    runs.push_back(std::move(*d));
  }
  auto stats_rows = [&](const RunDetail& d, StatsStage stage) { return s.layer_stats_summary(d.summary.id, stage); };
  if (format == RunDataFormat::Json) {
    json arr = json::array();
    for (const RunDetail& d : runs) {
      json j = run_summary_json(d.summary);
      j["config"] = json::parse(d.config_json);
      j["note"] = d.note;
      j["record"] = d.record ? run_record_to_json(*d.record) : json(nullptr);
      json loss = json::array();
      for (const LossPoint& p : d.loss) loss.push_back(json{{"step", p.step}, {"loss", std::isfinite(p.loss) ? json(p.loss) : json("nan")}});
      j["loss"] = loss;
      json layers = json::array();
      for (StatsStage stage : {StatsStage::Before, StatsStage::After})
        for (const SiteSummary& c : stats_rows(d, stage))
          layers.push_back({{"stage", stats_stage_name(stage)}, {"layer", c.layer}, {"site", hook_site_name(c.site)},
                            {"count", c.count}, {"channels", c.channels}, {"kurtosis", c.kurtosis}, {"absmax", c.absmax},
                            {"max_median_ratio", c.max_median_ratio}, {"mean_square", c.mean_square},
                            {"nonfinite", c.nonfinite}});
      j["layer_stats"] = layers;
      arr.push_back(j);
    }
    write_file_atomically(out, text_json(arr) + "\n");
    return {out};
  }
  // CSV: three tables, one row per run / per loss step / per (stage, layer, site).
  const std::vector<std::string> paths = run_data_files(format, out);
  const std::string &runs_path = paths[0], &loss_path = paths[1], &layers_path = paths[2];
  std::vector<std::map<std::string, json>> flat;
  std::set<std::string> cols;
  for (const RunDetail& d : runs) {
    std::map<std::string, json> m;
    json j = run_summary_json(d.summary);
    j.erase("tags");
    j["tags"] = "";
    for (const std::string& t : d.summary.tags) j["tags"] = j["tags"].get<std::string>() + (j["tags"].get<std::string>().empty() ? "" : " ") + t;
    flatten_json(j, "", m);
    flatten_json(json::parse(d.config_json), "config", m);
    if (d.record) {
      flatten_json(run_record_to_json(*d.record)["results"], "results", m);
      flatten_json(run_record_to_json(*d.record)["timing"], "timing", m);
    }
    for (const auto& [k, v] : m) cols.insert(k);
    flat.push_back(std::move(m));
  }
  std::string csv;
  for (auto it = cols.begin(); it != cols.end(); ++it) csv += (it == cols.begin() ? "" : ",") + csv_field(*it);
  csv += "\n";
  for (const auto& m : flat) {
    bool first = true;
    for (const std::string& c : cols) {
      csv += (first ? "" : ",") + csv_field(m.count(c) ? json_value_text(m.at(c)) : "");
      first = false;
    }
    csv += "\n";
  }
  std::string loss = "run_id,step,loss\n";
  for (const RunDetail& d : runs)
    for (const LossPoint& p : d.loss) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "%lld,%lld,%.17g\n", static_cast<long long>(d.summary.id), static_cast<long long>(p.step), p.loss);
      loss += buf;
    }
  std::string layers = "run_id,stage,layer,site,count,channels,kurtosis,absmax,max_median_ratio,mean_square,nonfinite\n";
  for (const RunDetail& d : runs)
    for (StatsStage stage : {StatsStage::Before, StatsStage::After})
      for (const SiteSummary& c : stats_rows(d, stage)) {
        char buf[256];
        std::snprintf(buf, sizeof buf, "%lld,%s,%d,%s,%lld,%lld,%.17g,%.17g,%.17g,%.17g,%lld\n",
                      static_cast<long long>(d.summary.id), stats_stage_name(stage), c.layer, hook_site_name(c.site),
                      static_cast<long long>(c.count), static_cast<long long>(c.channels), c.kurtosis, c.absmax,
                      c.max_median_ratio, c.mean_square, static_cast<long long>(c.nonfinite));
        layers += buf;
      }
  write_file_atomically(runs_path, csv);
  write_file_atomically(loss_path, loss);
  write_file_atomically(layers_path, layers);
  return {runs_path, loss_path, layers_path};
}

}  // namespace respin

