// libFuzzer harness: the safetensors reader (header length, JSON header, dtype/shape/offset
// validation, overlap checks) on arbitrary bytes, through the real mmap path. Anything but a
// respin::Error (a crash, a sanitizer report, another exception type) is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/io/safetensors.h"
#include "core/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/dev/shm/respin-fuzz-" + std::to_string(getpid()) + ".safetensors";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    respin::SafetensorsFile st = respin::SafetensorsFile::open(path);
    // Touch every tensor's bytes: offsets the reader accepted must lie inside the mapping.
    volatile uint8_t sink = 0;
    for (const respin::TensorInfo& t : st.tensors()) {
      const auto* p = static_cast<const uint8_t*>(st.data(t));
      if (t.nbytes() > 0) sink = sink + p[0] + p[t.nbytes() - 1];
    }
  } catch (const respin::Error&) {
  }
  return 0;
}
