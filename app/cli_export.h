// `respin export`: a calibration run into a folder other tools load (core/export/export.h,
// docs/export.md).
#pragma once

#include <string>

namespace respin::cli {

struct ExportArgs {
  std::string run;
  std::string format = "hf";  // hf | compressed-tensors
  std::string out;
  std::string dtype = "f16";  // bf16 | f16 | f32
  bool allow_sidecar = false;
  bool json = false;
};

int run_export(const ExportArgs& a);

}  // namespace respin::cli
