// Directory walking and recursive removal through POSIX calls, not std::filesystem.
//
// PyTorch 2.x's libtorch_cpu.so exports the std::filesystem directory iterators of the libstdc++ it
// was built with (pytorch/pytorch issue 133437). In a process that links it, a call such as
// std::filesystem::remove_all or is_empty on a directory can bind to those symbols while the
// inline parts come from the system's libstdc++, and crash (seen: every test that removed a
// temporary folder segfaulted against PyTorch 2.11's libtorch on Ubuntu 24.04 with g++ 13; see
// docs/gpu.md). Everything in this project that lists or removes a directory goes through here.
// Other std::filesystem calls (exists, rename, create_directories, file_size) do not iterate and
// are used as usual.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace respin {

// Removes `path` and everything under it (symbolic links are removed, never followed). A missing
// path is success. Returns false and sets `error` (when given) to "<path>: <reason>" otherwise.
bool remove_tree(const std::string& path, std::string* error = nullptr) noexcept;

// remove_tree that throws respin::Error with that one-line message.
void remove_tree_or_throw(const std::string& path);

struct DirEntry {
  std::string name;  // file name only
  bool is_directory = false;
  bool is_regular_file = false;
  uint64_t size = 0;  // regular files
};

// The entries of `dir` (without "." and ".."), sorted by name. Throws respin::Error naming the
// folder when it cannot be read.
std::vector<DirEntry> list_directory(const std::string& dir);

// Whether `dir` is a directory with no entries (false when it is missing or unreadable).
bool directory_is_empty(const std::string& dir) noexcept;

}  // namespace respin
