// The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON header {name: {dtype, shape, data_offsets: [begin, end]}, __metadata__},
// then the raw little-endian tensor bytes. Offsets are relative to the start of the data section.
//
// SafetensorsFile memory-maps one file and validates everything before handing out pointers:
// header length, JSON, dtype names, shape x dtype size == byte range, ranges inside the file and
// non-overlapping. ShardedSafetensors adds model.safetensors.index.json (weight_map) support.
// Writers are atomic (temporary file + rename). Thread-safety: a const SafetensorsFile may be read
// from any number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace respin {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // safetensors spelling: "F32", "BF16", ...
// Parses a safetensors dtype name; throws respin::Error mentioning `context` when unknown.
DType parse_dtype(const std::string& name, const std::string& context);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets inside the data section
  uint64_t end = 0;
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);  // throws respin::Error naming `path`
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const TensorInfo* find(const std::string& name) const;               // nullptr if absent
  const TensorInfo& at(const std::string& name) const;                 // throws if absent
  const void* data(const TensorInfo& info) const;  // pointer into the mapping
  // Drops the mapping's resident pages of a tensor whose data the caller has copied, so that a
  // model converted tensor by tensor does not also keep the file in its resident memory; the
  // data stays readable (read again from the file if touched).
  void release(const TensorInfo& info) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_section_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One or more safetensors files behaving as one: a folder with model.safetensors, or with
// model.safetensors.index.json naming the shard of each tensor.
class ShardedSafetensors {
 public:
  static ShardedSafetensors open_folder(const std::string& dir);  // throws respin::Error
  static ShardedSafetensors open_file(const std::string& path);

  struct Entry {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  const Entry* find(const std::string& name) const;  // nullptr if absent
  std::vector<std::string> names() const;             // sorted
  size_t num_files() const { return files_.size(); }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> entries_;
};

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel(shape) * dtype_size(dtype) bytes, little-endian
};

// A safetensors file whose header names `tensors` (their data pointers unused) and whose data
// section is a hole of the full size: the layout of a real file, almost no disk. Atomic.
void write_safetensors_placeholder(const std::string& path, const std::vector<TensorView>& tensors);

class AtomicFileWriter;

// A safetensors file whose layout (names, dtypes, shapes, order) is fixed when it is created and
// whose tensors are written in any order, each at its place, and may be written again (a weight
// quantized in place): how a layer-streamed run writes its model as the layers are made. The
// bytes are those write_safetensors writes for the same tensors. Atomic: nothing is at `path`
// until commit(), which checks that every tensor was written. Throws respin::Error naming `path`.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string path, const std::vector<TensorView>& layout,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // `data`: the tensor's `bytes` in its layout dtype (refused unless the layout's size).
  void write(const std::string& name, const void* data, uint64_t bytes);
  bool written(const std::string& name) const;
  // The file as written so far (SafetensorsFile::open reads it; a tensor not yet written reads as
  // zeros).
  const std::string& partial_path() const;
  void commit();

 private:
  struct Slot {
    uint64_t offset = 0, bytes = 0;
    bool written = false;
  };
  std::string path_;
  std::unique_ptr<AtomicFileWriter> file_;
  std::map<std::string, Slot> slots_;
};

// Writes one safetensors file atomically. Tensors are laid out in the given order, 8-byte aligned
// header (padded with spaces, as the reference implementation does). Throws respin::Error.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace respin
