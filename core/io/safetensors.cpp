// safetensors reader (mmap, validated) and atomic writer. See safetensors.h.
#include "core/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/io/atomic_file.h"
#include "core/util/error.h"

namespace respin {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // same bound as the reference implementation

struct DTypeRow {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},  {DType::I8, "I8", 1},   {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};

const DTypeRow& row(DType d) {
  for (const auto& r : kDTypes)
    if (r.dtype == d) return r;
  throw Error("internal: unknown dtype");
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses one header entry; throws with file + tensor name on any inconsistency.
TensorInfo parse_entry(const std::string& path, const std::string& name, const nlohmann::json& e,
                       uint64_t data_size) {
  auto fail = [&](const std::string& what) -> Error {
    return Error(path + ": tensor '" + name + "': " + what);
  };
  if (!e.is_object()) throw fail("header entry is not a JSON object");
  if (!e.contains("dtype") || !e["dtype"].is_string()) throw fail("missing string field 'dtype'");
  if (!e.contains("shape") || !e["shape"].is_array()) throw fail("missing array field 'shape'");
  if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
    throw fail("missing field 'data_offsets' [begin, end]");
  TensorInfo t;
  t.name = name;
  t.dtype = parse_dtype(e["dtype"].get<std::string>(), path + ": tensor '" + name + "'");
  uint64_t numel = 1;
  for (const auto& d : e["shape"]) {
    if (!d.is_number_unsigned()) throw fail("shape entries must be non-negative integers");
    uint64_t v = d.get<uint64_t>();
    if (v != 0 && numel > std::numeric_limits<uint64_t>::max() / v / 8)
      throw fail("shape is too large");
    numel *= v;
    t.shape.push_back(static_cast<int64_t>(v));
  }
  const auto& off = e["data_offsets"];
  if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
    throw fail("data_offsets must be non-negative integers");
  t.begin = off[0].get<uint64_t>();
  t.end = off[1].get<uint64_t>();
  if (t.end < t.begin) throw fail("data_offsets end < begin");
  if (t.end > data_size)
    throw fail("data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
               ") run past the end of the data section (" + std::to_string(data_size) +
               " bytes; file truncated?)");
  uint64_t expected = numel * dtype_size(t.dtype);
  if (t.end - t.begin != expected)
    throw fail("byte range holds " + std::to_string(t.end - t.begin) + " bytes but shape x " +
               dtype_name(t.dtype) + " needs " + std::to_string(expected));
  return t;
}

}  // namespace

size_t dtype_size(DType dtype) { return row(dtype).size; }
const char* dtype_name(DType dtype) { return row(dtype).name; }

DType parse_dtype(const std::string& name, const std::string& context) {
  for (const auto& r : kDTypes)
    if (name == r.name) return r.dtype;
  throw Error(context + ": unsupported dtype '" + name + "'");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error(path + ": cannot stat: " + std::strerror(err));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw Error(path + ": file is " + std::to_string(file_size) +
                " bytes, too short for a safetensors header (truncated?)");
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw Error(path + ": mmap failed: " + std::strerror(map_err));
  f.map_ = map;
  f.map_size_ = file_size;

  const auto* bytes = static_cast<const uint8_t*>(map);
  const uint64_t header_len = read_le64(bytes);
  if (header_len == 0 || header_len > kMaxHeaderBytes)
    throw Error(path + ": header length " + std::to_string(header_len) +
                " is invalid (not a safetensors file?)");
  if (header_len > file_size - 8)
    throw Error(path + ": header length " + std::to_string(header_len) + " exceeds the file size " +
                std::to_string(file_size) + " (truncated?)");
  const char* hbeg = reinterpret_cast<const char*>(bytes + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hbeg, hbeg + header_len);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw Error(path + ": header is not a JSON object");

  const uint64_t data_size = file_size - 8 - header_len;
  f.data_section_ = bytes + 8 + header_len;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) throw Error(path + ": __metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string())
          throw Error(path + ": __metadata__ value for '" + m.key() + "' is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    f.tensors_.push_back(parse_entry(path, it.key(), it.value(), data_size));
  }
  // Non-overlapping ranges: sort by begin and compare neighbours (empty tensors overlap nothing).
  std::vector<const TensorInfo*> sorted;
  for (const auto& t : f.tensors_)
    if (t.nbytes() > 0) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i]->begin < sorted[i - 1]->end)
      throw Error(path + ": tensors '" + sorted[i - 1]->name + "' and '" + sorted[i]->name +
                  "' have overlapping byte ranges");
  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_size_);
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_size_ = o.map_size_;
    data_section_ = o.data_section_;
    tensors_ = std::move(o.tensors_);
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
    o.map_ = nullptr;
    o.map_size_ = 0;
    o.data_section_ = nullptr;
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::at(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw Error(path_ + ": no tensor named '" + name + "'");
  return *t;
}

const void* SafetensorsFile::data(const TensorInfo& info) const {
  return data_section_ + info.begin;
}

void SafetensorsFile::release(const TensorInfo& info) const {
  // Only the pages wholly inside the tensor: a neighbour sharing a page keeps it.
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data_section_ + info.begin);
  const uintptr_t end = reinterpret_cast<uintptr_t>(data_section_ + info.end);
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  // A private read-only mapping: MADV_DONTNEED only forgets clean pages. Advice, so a failure
  // changes nothing but the resident size.
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

ShardedSafetensors ShardedSafetensors::open_file(const std::string& path) {
  ShardedSafetensors s;
  s.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(path)));
  for (const auto& t : s.files_.back()->tensors())
    s.entries_[t.name] = Entry{s.files_.back().get(), &t};
  return s;
}

ShardedSafetensors ShardedSafetensors::open_folder(const std::string& dir) {
  const std::string single = dir + "/model.safetensors";
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (::access(index_path.c_str(), F_OK) != 0) {
    if (::access(single.c_str(), F_OK) != 0)
      throw Error(dir + ": no model.safetensors or model.safetensors.index.json found");
    return open_file(single);
  }
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(read_text_file(index_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(index_path + ": not valid JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw Error(index_path + ": missing object field 'weight_map'");
  ShardedSafetensors s;
  std::map<std::string, SafetensorsFile*> by_shard;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      throw Error(index_path + ": weight_map entry '" + it.key() + "' is not a file name");
    const std::string shard = it.value().get<std::string>();
    if (shard.find('/') != std::string::npos || shard == "..")
      throw Error(index_path + ": shard name '" + shard + "' must be a plain file name");
    auto f = by_shard.find(shard);
    if (f == by_shard.end()) {
      s.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir + "/" + shard)));
      f = by_shard.emplace(shard, s.files_.back().get()).first;
    }
    const TensorInfo* info = f->second->find(it.key());
    if (!info)
      throw Error(index_path + ": tensor '" + it.key() + "' is mapped to " + shard +
                  " but that file does not contain it");
    s.entries_[it.key()] = Entry{f->second, info};
  }
  return s;
}

const ShardedSafetensors::Entry* ShardedSafetensors::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<std::string> ShardedSafetensors::names() const {
  std::vector<std::string> out;
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

namespace {

// The 8-byte length and the JSON header (padded with spaces to 8 bytes) of `tensors` laid out in
// order; `data_bytes` gets the data section's size.
std::string safetensors_prefix(const std::string& path, const std::vector<TensorView>& tensors,
                               const std::map<std::string, std::string>& metadata, uint64_t& data_bytes) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || header.contains(t.name))
      throw Error(path + ": duplicate or reserved tensor name '" + t.name + "'");
    uint64_t n = 1;
    for (auto d : t.shape) {
      if (d < 0) throw Error(path + ": tensor '" + t.name + "' has a negative dimension");
      n *= static_cast<uint64_t>(d);
    }
    uint64_t bytes = n * dtype_size(t.dtype);
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((uint64_t(h.size()) >> (8 * i)) & 0xff);
  data_bytes = offset;
  return out + h;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  uint64_t data_bytes = 0;
  const std::string prefix = safetensors_prefix(path, tensors, metadata, data_bytes);
  AtomicFileWriter w(path);
  w.write(prefix.data(), prefix.size());
  for (const auto& t : tensors) {
    uint64_t n = 1;
    for (auto d : t.shape) n *= static_cast<uint64_t>(d);
    if (n > 0) w.write(t.data, n * dtype_size(t.dtype));
  }
  w.commit();
}

SafetensorsWriter::SafetensorsWriter(std::string path, const std::vector<TensorView>& layout,
                                     const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)) {
  uint64_t data_bytes = 0;
  const std::string prefix = safetensors_prefix(path_, layout, metadata, data_bytes);
  file_ = std::make_unique<AtomicFileWriter>(path_);
  file_->write(prefix.data(), prefix.size());
  file_->extend_to(prefix.size() + data_bytes);
  uint64_t offset = prefix.size();
  for (const TensorView& t : layout) {
    uint64_t n = 1;
    for (auto d : t.shape) n *= static_cast<uint64_t>(d);
    slots_[t.name] = Slot{offset, n * dtype_size(t.dtype), false};
    offset += n * dtype_size(t.dtype);
  }
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::write(const std::string& name, const void* data, uint64_t bytes) {
  auto it = slots_.find(name);
  if (it == slots_.end()) throw Error(path_ + ": no tensor named '" + name + "' in the file's layout");
  if (bytes != it->second.bytes)
    throw Error(path_ + ": tensor '" + name + "' has " + std::to_string(bytes) + " bytes, its layout " +
                std::to_string(it->second.bytes));
  if (it->second.bytes > 0) file_->write_at(it->second.offset, data, it->second.bytes);
  it->second.written = true;
}

bool SafetensorsWriter::written(const std::string& name) const {
  auto it = slots_.find(name);
  return it != slots_.end() && it->second.written;
}

const std::string& SafetensorsWriter::partial_path() const { return file_->temp_path(); }

void SafetensorsWriter::commit() {
  for (const auto& [name, slot] : slots_)
    if (!slot.written) throw Error(path_ + ": tensor '" + name + "' was never written");
  file_->commit();
}

void write_safetensors_placeholder(const std::string& path, const std::vector<TensorView>& tensors) {
  uint64_t data_bytes = 0;
  const std::string prefix = safetensors_prefix(path, tensors, {{"format", "pt"}}, data_bytes);
  AtomicFileWriter w(path);
  w.write(prefix.data(), prefix.size());
  w.extend_to(prefix.size() + data_bytes);
  w.commit();
}

}  // namespace respin
