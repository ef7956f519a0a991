// libFuzzer harness: config.json parsing in both transformers forms, and the round trip of what
// it accepts (what we write must read back as the same model). Anything but a respin::Error is a
// finding; so is a round trip that changes the config.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/io/model_config.h"
#include "core/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  respin::ModelConfig c;
  try {
    c = respin::parse_model_config(text, "fuzz/config.json");
  } catch (const respin::Error&) {
    return 0;
  }
  (void)c.parameter_count();
  for (int64_t i = 0; i < c.num_hidden_layers && i < 4096; ++i) (void)c.window_of_layer(i);
  const std::string written = respin::model_config_to_json(c);
  const respin::ModelConfig back = respin::parse_model_config(written, "fuzz/written.json");
  if (respin::model_config_to_json(back) != written) std::abort();
  return 0;
}
