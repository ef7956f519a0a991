// Crash- and full-disk-safe file writes: data goes to a temporary file in the destination's
// directory, is flushed to disk, and only then renamed over the destination. A failed or
// abandoned write leaves the destination untouched and removes the temporary file.
#pragma once

#include <cstddef>
#include <string>

namespace respin {

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);  // throws respin::Error
  ~AtomicFileWriter();                          // removes the temporary file unless committed
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t bytes);  // throws respin::Error naming the path
  // Makes the file `bytes` long (ftruncate): what was not written reads as zeros and, on file
  // systems with holes, takes no space. Throws respin::Error naming the path.
  void extend_to(uint64_t bytes);
  // Writes `bytes` at `offset` (pwrite), leaving the sequential position alone: for a file whose
  // layout is fixed first and whose parts arrive in any order. Throws respin::Error naming the path.
  void write_at(uint64_t offset, const void* data, size_t bytes);
  void commit();                               // fsync + rename; throws respin::Error
  const std::string& path() const { return path_; }
  // The temporary file being written: readable (memory-mapped, for one) until commit().
  const std::string& temp_path() const { return temp_path_; }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Convenience: atomically replace `path` with `contents`.
void write_file_atomically(const std::string& path, const std::string& contents);

// Whole file into a string; throws respin::Error naming the path.
std::string read_text_file(const std::string& path);

}  // namespace respin
