// A stored run's data for other tools: JSON or CSV files of what the run store holds (summary,
// config, record, loss curve, per-(stage, layer, site) statistics). Used by `respin runs export`
// and the workbench's runs view; the formats are described in docs/store.md ("Run data export").
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/store/run_store.h"

namespace respin {

enum class RunDataFormat { Json, Csv };

// Writes the runs `ids` (in that order) of `store`:
//   Json: one file `out`, an array with one object per run;
//   Csv:  three files from `out` without its ".csv": BASE.csv (one row per run, config and results
//         flattened to "a.b" columns), BASE.loss.csv (run_id, step, loss) and BASE.layers.csv (one
//         row per run, stage, layer and site).
// Each file is written atomically (temporary file, then rename). Returns the paths written.
// Throws respin::Error naming the store for an unknown id, or the file that could not be written.
std::vector<std::string> export_run_data(const RunStore& store, const std::vector<int64_t>& ids,
                                         RunDataFormat format, const std::string& out);

// The files export_run_data writes for `out`: {out} (json) or BASE.csv, BASE.loss.csv and
// BASE.layers.csv (csv), in that order.
std::vector<std::string> run_data_files(RunDataFormat format, const std::string& out);

// The fields of a run's summary as JSON (what `respin runs list --json` prints per run).
nlohmann::json run_summary_json(const RunSummary& r);

// Helpers shared with the CLI's tables: a JSON object flattened to "a.b.c" -> value (arrays stay
// values); a value as plain text (strings unquoted, null empty); one CSV field (quoted when needed).
void flatten_json(const nlohmann::json& j, const std::string& prefix, std::map<std::string, nlohmann::json>& out);
std::string json_value_text(const nlohmann::json& v);
std::string csv_field(const std::string& s);

}  // namespace respin
