// `respin export` (see cli_export.h).
#include "app/cli_export.h"

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/export/export.h"

namespace respin::cli {

int run_export(const ExportArgs& a) {
  ExportOptions o;
  o.format = export_format_from_name(a.format);
  o.dtype = export_dtype_from_name(a.dtype);
  o.allow_sidecar = a.allow_sidecar;
  const ExportResult r = export_run(a.run, a.out, o);
  if (a.json) {
    nlohmann::json j = {{"dir", r.dir},
                        {"format", r.format},
                        {"dtype", a.dtype},
                        {"files", r.files},
                        {"bytes", r.bytes},
                        {"seconds", r.seconds},
                        {"sidecar", r.sidecar},
                        {"not_expressible", r.gaps},
                        {"required_online_operations", r.required_online}};
    if (!r.ct_format.empty()) {
      j["ct_format"] = r.ct_format;
      j["scale_dtype"] = r.scale_dtype;
    }
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return 0;
  }
  std::printf("exported:  %s\n", r.dir.c_str());
  std::printf("format:    %s%s%s, %s\n", r.format.c_str(), r.ct_format.empty() ? "" : (" " + r.ct_format).c_str(),
              r.sidecar ? " + respin_online.json" : "", a.dtype.c_str());
  if (!r.scale_dtype.empty()) std::printf("scales:    %s\n", r.scale_dtype.c_str());
  std::string files;
  for (const std::string& f : r.files) files += (files.empty() ? "" : ", ") + f;
  std::printf("files:     %s\n", files.c_str());
  std::printf("size:      %.2f MiB (%llu bytes) in %.1f s\n", r.bytes / 1048576.0, static_cast<unsigned long long>(r.bytes),
              r.seconds);
  for (const std::string& g : r.gaps) std::printf("sidecar:   %s\n", g.c_str());
  for (const std::string& op : r.required_online) std::printf("required:  %s (online)\n", op.c_str());
  return 0;
}

}  // namespace respin::cli
