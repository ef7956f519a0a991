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

// Free space: bytes available to an unprivileged writer in the file system holding `dir`
// (statvfs f_bavail * f_frsize); throws respin::Error naming dir when statvfs fails.
uint64_t available_bytes(const std::string& dir);
// The file system's allocation unit for `dir` (statvfs f_frsize); throws like available_bytes.
uint64_t allocation_unit(const std::string& dir);
// What files of these sizes take on disk in a new folder: each rounded up to the allocation unit,
// plus one unit for the folder itself.
uint64_t space_needed(const std::vector<uint64_t>& file_sizes, uint64_t unit);

}  // namespace respin
