// `respin runs ...`: the run store from the command line (see cli_commands.h).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "app/cli_commands.h"
#include "core/calib/run_record.h"
#include "core/io/atomic_file.h"
#include "core/store/run_data.h"
#include "core/store/run_store.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace respin::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string text_json(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

// Text from the store (notes, tags, messages, paths) as the terminal should see it: control
// characters (escape sequences, newlines, C1 controls) spelled out instead of acted on.
std::string printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    char buf[8];
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7f) {
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else if (c == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(s[i + 1]) <= 0x9F) {
      std::snprintf(buf, sizeof buf, "\\u%04X", static_cast<unsigned char>(s[++i]));
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

RunStore open_store(const RunsArgs& a, bool write) {
  const std::string path = store_path(a.db);
  if (!write && !fs::exists(path)) throw Error(path + ": no run store yet (calibrate a model first, or pass --db)");
  return write ? RunStore::open(path) : RunStore::open_readonly(path);
}

std::string opt_num(const std::optional<double>& v, const char* fmt = "%.4f") {
  if (!v) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, *v);
  return buf;
}

std::string rank_text(const RunSummary& r) {
  if (r.method != Method::ReSpin) return "-";
  if (r.applied_rank) return std::to_string(*r.applied_rank);
  return r.rank < 0 ? "full" : std::to_string(r.rank);
}

RunDetail need_run(const RunStore& s, long long id) {
  std::optional<RunDetail> d = s.get_run(id);
  if (!d) throw Error(s.path() + ": no run " + std::to_string(id));
  return *d;
}

int64_t layer_linear_params(const ModelIdentity& m) {
  return decoder_layer_linear_parameters(m.hidden_size, m.heads * m.head_dim, m.kv_heads * m.head_dim,
                                         m.intermediate_size);
}

bool confirm(const std::string& question, bool yes) {
  if (yes) return true;
  if (!isatty(STDIN_FILENO)) throw Error(question + ": refusing without --yes (standard input is not a terminal)");
  std::fprintf(stderr, "%s [y/N] ", question.c_str());
  std::string line;
  std::getline(std::cin, line);
  return line == "y" || line == "Y" || line == "yes";
}

}  // namespace

int run_runs_list(const RunsArgs& a) {
  RunStore s = open_store(a, false);
  RunFilter f;
  if (!a.model.empty()) {
    // As calibrate records it: absolute, normal, without a trailing separator.
    fs::path m = fs::absolute(a.model).lexically_normal();
    if (!m.has_filename() && m != m.root_path()) m = m.parent_path();
    f.model = m.string();
  }
  if (!a.method.empty()) f.method = method_from_name(a.method);
  if (!a.status.empty()) f.status = run_status_from_name(a.status);
  if (!a.tag.empty()) f.tag = a.tag;
  if (a.sweep >= 0) f.sweep = a.sweep;
  const std::vector<RunSummary> runs = s.list_runs(f);
  if (a.json) {
    json arr = json::array();
    for (const RunSummary& r : runs) arr.push_back(run_summary_json(r));
    std::cout << text_json(arr) << "\n";
    return 0;
  }
  std::printf("%-5s %-11s %-20s %-10s %-8s %-5s %-5s %10s %10s %9s  %s\n", "ID", "STATUS", "MODEL", "METHOD", "BITS",
              "RANK", "SWEEP", "FP PPL", "Q PPL", "CALIB", "CREATED / TAGS");
  for (const RunSummary& r : runs) {
    const std::string bits = "W" + std::to_string(r.wbits) + "A" + std::to_string(r.abits) + "KV" + std::to_string(r.kvbits);
    std::string tags;
    for (const std::string& t : r.tags) tags += " #" + printable(t);
    std::printf("%-5lld %-11s %-20.20s %-10s %-8s %-5s %-5s %10s %10s %9s  %s%s\n", static_cast<long long>(r.id),
                run_status_name(r.status), printable(fs::path(r.model_folder).filename().string()).c_str(),
                (std::string(method_name(r.method)) + (r.weight_quantizer == WeightQuantizer::Gptq ? "+gptq" : "")).c_str(),
                bits.c_str(), rank_text(r).c_str(), r.sweep_id ? std::to_string(*r.sweep_id).c_str() : "-",
                opt_num(r.fp_perplexity).c_str(), opt_num(r.quantized_perplexity).c_str(),
                opt_num(r.calibration_seconds, "%.1fs").c_str(), r.created.substr(0, 19).c_str(), tags.c_str());
  }
  if (runs.empty()) std::fprintf(stderr, "no runs%s in %s\n", f.model || f.method || f.status || f.tag || f.sweep ? " match" : "",
                                 s.path().c_str());
  return 0;
}

int run_runs_show(const RunsArgs& a) {
  RunStore s = open_store(a, false);
  const RunDetail d = need_run(s, a.id);
  if (a.json) {
    json j = run_summary_json(d.summary);
    j["config"] = json::parse(d.config_json);
    j["config_sha256"] = d.config_sha256;
    j["note"] = d.note;
    j["respin_version"] = d.respin_version;
    j["record"] = d.record ? run_record_to_json(*d.record) : json(nullptr);
    json loss = json::array();
    for (const LossPoint& p : d.loss) loss.push_back(std::isfinite(p.loss) ? json(p.loss) : json("nan"));
    j["loss"] = loss;
    std::cout << text_json(j) << "\n";
    return 0;
  }
  const RunSummary& r = d.summary;
  std::printf("run %lld (%s)  %s%s\n", static_cast<long long>(r.id), printable(r.uuid).c_str(), run_status_name(r.status),
              r.message.empty() ? "" : (": " + printable(r.message)).c_str());
  std::printf("  config:       %s, weights %s\n", d.config.label().c_str(), weight_quantizer_name(d.config.weight_quantizer));
  std::printf("  model:        %s (%s, %lld parameters, sha256 %.12s)\n", printable(d.model.folder).c_str(),
              printable(d.model.architecture).c_str(),
              static_cast<long long>(d.model.parameters), d.model.sha256.c_str());
  std::printf("  created:      %s  ended: %s\n", r.created.c_str(), r.ended.empty() ? "-" : r.ended.c_str());
  std::printf("  run dir:      %s\n", printable(r.run_dir).c_str());
  if (!r.tmp_dir.empty()) std::printf("  temp dir:     %s\n", printable(r.tmp_dir).c_str());
  if (r.sweep_id) std::printf("  sweep:        %lld\n", static_cast<long long>(*r.sweep_id));
  std::printf("  perplexity:   FP %s -> quantized %s\n", opt_num(r.fp_perplexity).c_str(), opt_num(r.quantized_perplexity).c_str());
  if (d.record) {
    const RunRecord& rec = *d.record;
    std::printf("  eval:         %lld windows x %lld tokens of %s, %.0f tokens/s\n",
                static_cast<long long>(rec.results.eval_windows), static_cast<long long>(rec.results.eval_seq_len),
                printable(rec.results.eval_data.source).c_str(), rec.results.eval_tokens_per_s);
    if (rec.method.rank >= 0)
      std::printf("  skip rank:    %lld (%lld extra parameters, %lld MACs per token)%s\n",
                  static_cast<long long>(rec.method.rank), static_cast<long long>(rec.method.online_parameters),
                  static_cast<long long>(rec.method.online_macs_per_token),
                  rec.method.rotations_from.empty() ? "" : ("; rotations from " + printable(rec.method.rotations_from)).c_str());
    std::printf("  time:         calibration %.1f s, total %.1f s on %s (%d threads), peak RSS %.0f MiB\n",
                rec.timing.calibration_seconds, rec.timing.total_seconds, rec.timing.device.c_str(), rec.timing.threads,
                rec.peak_rss_bytes / 1048576.0);
  }
  if (!d.loss.empty())
    std::printf("  loss:         %.4f -> %.4f over %zu steps\n", d.loss.front().loss, d.loss.back().loss, d.loss.size());
  if (!r.tags.empty()) {
    std::string t;
    for (const std::string& x : r.tags) t += " #" + printable(x);
    std::printf("  tags:        %s\n", t.c_str());
  }
  if (!d.note.empty()) std::printf("  note:         %s\n", printable(d.note).c_str());
  return 0;
}

int run_runs_compare(const RunsArgs& a) {
  RunStore s = open_store(a, false);
  std::vector<RunDetail> runs;
  if (a.sweep >= 0) {
    RunFilter f;
    f.sweep = a.sweep;
    for (const RunSummary& r : s.list_runs(f)) runs.push_back(need_run(s, r.id));
    if (runs.empty()) throw Error(s.path() + ": sweep " + std::to_string(a.sweep) + " has no runs");
  } else {
    if (a.ids.size() < 2) throw Error("runs compare needs two or more run ids, or --sweep");
    for (long long id : a.ids) runs.push_back(need_run(s, id));
  }

  if (a.sweep >= 0) {
    // The rank (or bits) table of a sweep, with what each rank costs online.
    json rows = json::array();
    for (const RunDetail& d : runs) {
      const RunSummary& r = d.summary;
      const int64_t layer = layer_linear_params(d.model);
      const int64_t rank = d.record ? d.record->method.rank : -1;
      const int64_t D = d.model.hidden_size;
      const int64_t params = rank >= 0 ? skip_correction_parameters_per_layer(D, rank) : 0;
      const int64_t macs = rank >= 0 ? skip_correction_macs_per_token_per_layer(D, rank) : 0;
      json row = {{"id", r.id}, {"label", d.config.label()}, {"status", run_status_name(r.status)},
                  {"wbits", r.wbits}, {"abits", r.abits}, {"kvbits", r.kvbits},
                  {"rank", rank}, {"online_parameters_per_layer", params}, {"online_macs_per_token_per_layer", macs},
                  {"share_of_layer_parameters", layer ? double(params) / layer : 0.0},
                  {"share_of_layer_macs", layer ? double(macs) / layer : 0.0}};
      row["fp_perplexity"] = r.fp_perplexity ? json(*r.fp_perplexity) : json(nullptr);
      row["quantized_perplexity"] = r.quantized_perplexity ? json(*r.quantized_perplexity) : json(nullptr);
      row["rotations_from"] = d.record ? json(d.record->method.rotations_from) : json(nullptr);
      rows.push_back(row);
    }
    if (a.json) {
      std::cout << text_json(json{{"sweep", a.sweep}, {"runs", rows}}) << "\n";
      return 0;
    }
    std::printf("sweep %lld (%zu runs); online cost per decoder layer and its share of the layer's linear "
                "parameters / MACs per token\n",
                a.sweep, runs.size());
    std::printf("%-5s %-24s %-8s %6s %10s %10s %14s %14s %8s\n", "ID", "RUN", "BITS", "RANK", "FP PPL", "Q PPL",
                "+PARAMS/LAYER", "+MACS/TOKEN/L", "SHARE");
    for (const json& row : rows) {
      const std::string bits = "W" + std::to_string(row["wbits"].get<int>()) + "A" + std::to_string(row["abits"].get<int>()) +
                               "KV" + std::to_string(row["kvbits"].get<int>());
      char share[32];
      std::snprintf(share, sizeof share, "%.2f%%", 100 * row["share_of_layer_parameters"].get<double>());
      std::printf("%-5lld %-24s %-8s %6s %10s %10s %14lld %14lld %8s\n", row["id"].get<long long>(),
                  row["label"].get<std::string>().c_str(), bits.c_str(),
                  row["rank"].get<long long>() < 0 ? "-" : std::to_string(row["rank"].get<long long>()).c_str(),
                  row["fp_perplexity"].is_null() ? "-" : opt_num(row["fp_perplexity"].get<double>()).c_str(),
                  row["quantized_perplexity"].is_null() ? "-" : opt_num(row["quantized_perplexity"].get<double>()).c_str(),
                  row["online_parameters_per_layer"].get<long long>(), row["online_macs_per_token_per_layer"].get<long long>(),
                  share);
    }
    return 0;
  }

  // Two or more runs: the config fields that differ, and the metrics side by side.
  std::vector<std::map<std::string, json>> configs;
  for (const RunDetail& d : runs) {
    std::map<std::string, json> m;
    flatten_json(json::parse(d.config_json), "", m);
    configs.push_back(std::move(m));
  }
  std::set<std::string> keys;
  for (const auto& c : configs)
    for (const auto& [k, v] : c) keys.insert(k);
  json differ = json::object();
  for (const std::string& k : keys) {
    bool same = true;
    for (const auto& c : configs) same &= c.count(k) && configs[0].count(k) && c.at(k) == configs[0].at(k);
    if (same) continue;
    json vals = json::array();
    for (const auto& c : configs) vals.push_back(c.count(k) ? c.at(k) : json(nullptr));
    differ[k] = vals;
  }
  const std::vector<std::pair<std::string, std::function<json(const RunDetail&)>>> metrics = {
      {"status", [](const RunDetail& d) { return json(run_status_name(d.summary.status)); }},
      {"fp_perplexity", [](const RunDetail& d) { return d.summary.fp_perplexity ? json(*d.summary.fp_perplexity) : json(nullptr); }},
      {"quantized_perplexity",
       [](const RunDetail& d) { return d.summary.quantized_perplexity ? json(*d.summary.quantized_perplexity) : json(nullptr); }},
      {"eval_tokens_per_s", [](const RunDetail& d) { return d.record ? json(d.record->results.eval_tokens_per_s) : json(nullptr); }},
      {"calibration_seconds",
       [](const RunDetail& d) { return d.summary.calibration_seconds ? json(*d.summary.calibration_seconds) : json(nullptr); }},
      {"total_seconds", [](const RunDetail& d) { return d.summary.total_seconds ? json(*d.summary.total_seconds) : json(nullptr); }},
      {"peak_rss_bytes", [](const RunDetail& d) { return d.record ? json(d.record->peak_rss_bytes) : json(nullptr); }},
      {"online_parameters", [](const RunDetail& d) { return d.record ? json(d.record->method.online_parameters) : json(nullptr); }},
      {"online_macs_per_token",
       [](const RunDetail& d) { return d.record ? json(d.record->method.online_macs_per_token) : json(nullptr); }},
  };
  json side = json::object();
  for (const auto& [name, get] : metrics) {
    json vals = json::array();
    for (const RunDetail& d : runs) vals.push_back(get(d));
    side[name] = vals;
  }
  if (a.json) {
    json ids = json::array();
    for (const RunDetail& d : runs) ids.push_back(d.summary.id);
    std::cout << text_json(json{{"runs", ids}, {"config_differences", differ}, {"metrics", side}}) << "\n";
    return 0;
  }
  auto row = [&](const std::string& name, const json& vals) {
    std::printf("  %-26s", name.c_str());
    for (const json& v : vals) std::printf(" %16.16s", json_value_text(v).c_str());
    std::printf("\n");
  };
  std::printf("  %-26s", "run");
  for (const RunDetail& d : runs) std::printf(" %16lld", static_cast<long long>(d.summary.id));
  std::printf("\nconfig differences%s\n", differ.empty() ? ": none" : "");
  for (auto it = differ.begin(); it != differ.end(); ++it) row(it.key(), it.value());
  std::printf("metrics\n");
  for (const auto& [name, get] : metrics) row(name, side[name]);
  return 0;
}

int run_runs_export(const RunsArgs& a) {
  RunStore s = open_store(a, false);
  if (a.format != "json" && a.format != "csv") throw Error("--format must be csv or json, got '" + a.format + "'");
  std::vector<int64_t> ids(a.ids.begin(), a.ids.end());
  // Like `respin export`: never over an existing file, including the CSV tables named after --out.
  const RunDataFormat format = a.format == "json" ? RunDataFormat::Json : RunDataFormat::Csv;
  for (const std::string& f : run_data_files(format, a.out)) {
    std::error_code ec;
    if (fs::symlink_status(f, ec).type() != fs::file_type::not_found)
      throw Error(f + ": already exists; runs export writes new files and never overwrites one");
  }
  const std::vector<std::string> files =
      export_run_data(s, ids, a.format == "json" ? RunDataFormat::Json : RunDataFormat::Csv, a.out);
  std::string list;
  for (const std::string& f : files) list += (list.empty() ? "" : ", ") + f;
  std::fprintf(stderr, "wrote %s (%zu runs)\n", list.c_str(), ids.size());
  return 0;
}

int run_runs_tag(const RunsArgs& a) {
  RunStore s = open_store(a, true);
  need_run(s, a.id);
  if (a.remove) s.remove_tag(a.id, a.text);
  else s.add_tag(a.id, a.text);
  return 0;
}

int run_runs_note(const RunsArgs& a) {
  RunStore s = open_store(a, true);
  need_run(s, a.id);
  s.set_note(a.id, a.text);
  return 0;
}

int run_runs_delete(const RunsArgs& a) {
  RunStore s = open_store(a, true);
  // All or nothing: every id is checked before anything is deleted, and the rows go in one
  // transaction.
  std::vector<int64_t> ids;
  std::string what;
  for (long long id : a.ids) {
    if (std::find(ids.begin(), ids.end(), id) != ids.end()) continue;
    const RunDetail d = need_run(s, id);
    if (d.summary.status == RunStatus::Running)
      throw Error(s.path() + ": run " + std::to_string(id) + " is still running; cancel it before deleting it (nothing deleted)");
    ids.push_back(id);
    what += (what.empty() ? "delete run " : ", run ") + std::to_string(id) + " (" + d.config.label() + ")";
    for (const std::string& dir : {d.summary.run_dir, d.summary.tmp_dir}) {
      std::error_code ec;
      if (dir.empty() || fs::symlink_status(dir, ec).type() == fs::file_type::not_found) continue;
      const DirOwnership o = run_dir_ownership(dir, d.summary.uuid, d.record ? run_record_to_json(*d.record).dump() : "");
      what += o.owned ? " and its directory " + printable(dir) : "; keeping " + printable(dir) + " (not this run's)";
    }
  }
  if (!confirm(what, a.yes)) {
    std::fprintf(stderr, "nothing deleted\n");
    return 0;
  }
  const std::vector<DeletedRun> gone = s.delete_runs(ids);
  int problems = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    for (const std::string& kept : gone[i].kept) std::fprintf(stderr, "%s\n", printable(kept).c_str());
    for (const std::string& dir : {gone[i].run_dir, gone[i].tmp_dir}) {
      std::string error;
      if (!dir.empty() && !remove_tree(dir, &error)) {
        std::fprintf(stderr, "warning: %s\n", printable(error).c_str());
        ++problems;
      }
    }
    std::fprintf(stderr, "deleted run %lld\n", static_cast<long long>(ids[i]));
  }
  return problems ? 1 : 0;
}

int run_runs_clean(const RunsArgs& a) {
  RunStore s = open_store(a, true);
  const std::vector<RunSummary> stale = s.stale_runs();
  // Only a temporary directory whose marker names the run is removed (docs/store.md, "Which
  // folders belong to a run"); a path the store names that holds something else is kept.
  std::vector<const RunSummary*> removable;
  for (const RunSummary& r : stale) {
    std::error_code ec;
    const bool tmp = !r.tmp_dir.empty() && fs::symlink_status(r.tmp_dir, ec).type() != fs::file_type::not_found;
    std::printf("run %lld interrupted (%s)%s%s\n", static_cast<long long>(r.id),
                r.message.empty() ? "writer gone" : printable(r.message).c_str(), tmp ? ": left " : "",
                tmp ? printable(r.tmp_dir).c_str() : "");
    // A temporary directory that already holds the whole run (killed between its last write and
    // the rename into place) is a result, not debris: kept, with the way to record it.
    const bool complete_tmp = tmp && fs::is_regular_file(fs::path(r.tmp_dir) / "run.json", ec) &&
                              fs::is_regular_file(fs::path(r.tmp_dir) / "model" / "config.json", ec);
    if (complete_tmp)
      std::printf("run %lld: %s is a complete run directory; kept: rename it, or record it with `respin runs --db %s "
                  "import %s`\n",
                  static_cast<long long>(r.id), printable(r.tmp_dir).c_str(), printable(s.path()).c_str(),
                  printable(r.tmp_dir).c_str());
    else if (tmp && run_dir_ownership(r.tmp_dir, r.uuid, "").owned)
      removable.push_back(&r);
    // A run killed after its directory was complete (or whose last write found the disk full).
    if (!tmp && !r.run_dir.empty() && run_dir_ownership(r.run_dir, r.uuid, "").owned &&
        fs::is_regular_file(fs::path(r.run_dir) / "run.json", ec))
      std::printf("run %lld: %s is complete; record it with `respin runs --db %s import %s`\n",
                  static_cast<long long>(r.id), printable(r.run_dir).c_str(), printable(s.path()).c_str(),
                  printable(r.run_dir).c_str());
  }
  for (const RunSummary& r : stale) {
    std::error_code ec;
    if (r.tmp_dir.empty() || fs::symlink_status(r.tmp_dir, ec).type() == fs::file_type::not_found) continue;
    const DirOwnership o = run_dir_ownership(r.tmp_dir, r.uuid, "");
    if (!o.owned)
      std::printf("kept %s: it does not belong to run %lld (%s)\n", printable(r.tmp_dir).c_str(),
                  static_cast<long long>(r.id), o.reason.c_str());
  }
  auto mark = [&] {
    for (const RunSummary& r : stale)
      if (r.status == RunStatus::Interrupted) s.mark_interrupted(r.id);
  };
  if (removable.empty()) {
    std::printf("nothing to clean in %s\n", printable(s.path()).c_str());
    mark();
    return 0;
  }
  const size_t left = removable.size();
  if (!confirm("remove " + std::to_string(left) + " temporary run director" + (left == 1 ? "y" : "ies"), a.yes)) return 0;
  mark();
  for (const RunSummary* r : removable) {
    // Checked again: the folder may have changed since it was listed.
    if (!run_dir_ownership(r->tmp_dir, r->uuid, "").owned) continue;
    remove_tree_or_throw(r->tmp_dir);
    s.clear_tmp_dir(r->id);
    std::printf("removed %s\n", printable(r->tmp_dir).c_str());
  }
  return 0;
}

int run_runs_import(const RunsArgs& a) {
  RunStore s = open_store(a, true);
  const ImportedRun r = s.import_run(a.text);
  if (r.repaired)
    std::fprintf(stderr, "recorded run %lld (it read %s) as finished from %s in %s\n", static_cast<long long>(r.id),
                 run_status_name(r.previous), printable(a.text).c_str(), printable(s.path()).c_str());
  else
    std::fprintf(stderr, "imported %s as run %lld in %s\n", printable(a.text).c_str(), static_cast<long long>(r.id),
                 printable(s.path()).c_str());
  if (a.json) std::cout << text_json(json{{"id", r.id}, {"repaired", r.repaired}}) << "\n";
  return 0;
}

}  // namespace respin::cli
