// POSIX directory walking and removal (see fs.h for why not std::filesystem).
#include "core/util/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/util/error.h"

namespace respin {

namespace {

// Removes the entries of the open directory `dirfd` (then closes it), recursing into
// subdirectories relative to their parent's descriptor (no path length limit, no link following).
bool clear_dir(int dirfd, const std::string& shown, std::string* error) {
  DIR* d = ::fdopendir(dirfd);
  if (!d) {
    if (error) *error = shown + ": " + std::strerror(errno);
    ::close(dirfd);
    return false;
  }
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, "..")) continue;
    names.emplace_back(e->d_name);
  }
  bool ok = true;
  for (const std::string& n : names) {
    struct stat st {};
    if (::fstatat(dirfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;
      if (error) *error = shown + "/" + n + ": " + std::strerror(errno);
      ok = false;
      break;
    }
    if (S_ISDIR(st.st_mode)) {
      const int sub = ::openat(dirfd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0 || !clear_dir(sub, shown + "/" + n, error)) {
        if (sub < 0 && error) *error = shown + "/" + n + ": " + std::strerror(errno);
        ok = false;
        break;
      }
      if (::unlinkat(dirfd, n.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
        if (error) *error = shown + "/" + n + ": " + std::strerror(errno);
        ok = false;
        break;
      }
    } else if (::unlinkat(dirfd, n.c_str(), 0) != 0 && errno != ENOENT) {
      if (error) *error = shown + "/" + n + ": " + std::strerror(errno);
      ok = false;
      break;
    }
  }
  ::closedir(d);  // closes dirfd
  return ok;
}

}  // namespace

bool remove_tree(const std::string& path, std::string* error) noexcept {
  try {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) return true;
      if (error) *error = path + ": " + std::strerror(errno);
      return false;
    }
    if (!S_ISDIR(st.st_mode)) {
      if (::unlink(path.c_str()) == 0 || errno == ENOENT) return true;
      if (error) *error = path + ": " + std::strerror(errno);
      return false;
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      if (error) *error = path + ": " + std::strerror(errno);
      return false;
    }
    if (!clear_dir(fd, path, error)) return false;
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT) {
      if (error) *error = path + ": " + std::strerror(errno);
      return false;
    }
    return true;
  } catch (...) {  // std::bad_alloc while building a message
    return false;
  }
}

void remove_tree_or_throw(const std::string& path) {
  std::string error;
  if (!remove_tree(path, &error)) throw Error("cannot remove " + error);
}

std::vector<DirEntry> list_directory(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw Error(dir + ": cannot list the folder: " + std::strerror(errno));
  std::vector<DirEntry> out;
  while (dirent* e = ::readdir(d)) {
    if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, "..")) continue;
    DirEntry entry;
    entry.name = e->d_name;
    struct stat st {};
    if (::fstatat(::dirfd(d), e->d_name, &st, 0) == 0) {  // follows links, as is_regular_file() does
      entry.is_directory = S_ISDIR(st.st_mode);
      entry.is_regular_file = S_ISREG(st.st_mode);
      if (entry.is_regular_file) entry.size = static_cast<uint64_t>(st.st_size);
    }
    out.push_back(std::move(entry));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end(), [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return out;
}

bool directory_is_empty(const std::string& dir) noexcept {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return false;
  bool empty = true;
  while (dirent* e = ::readdir(d)) {
    if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, "..")) continue;
    empty = false;
    break;
  }
  ::closedir(d);
  return empty;
}

uint64_t available_bytes(const std::string& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0)
    throw Error(dir + ": cannot read the free space (statvfs): " + std::strerror(errno));
  return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
}

uint64_t allocation_unit(const std::string& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0)
    throw Error(dir + ": cannot read the file system's block size (statvfs): " + std::strerror(errno));
  return std::max<uint64_t>(1, st.f_frsize);
}

uint64_t space_needed(const std::vector<uint64_t>& file_sizes, uint64_t unit) {
  unit = std::max<uint64_t>(1, unit);
  uint64_t total = unit;  // the folder's own entry block
  for (uint64_t s : file_sizes) total += (s + unit - 1) / unit * unit;
  return total;
}

}  // namespace respin
