// Helpers shared by the test suites: temporary folders that clean up after themselves, and the
// message of an expected respin::Error.
#pragma once

#include <functional>
#include <string>

namespace respin::test {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_bytes(const std::string& path, const std::string& bytes);
std::string read_bytes(const std::string& path);

// Runs fn and returns the message of the respin::Error it throws; a test failure when it throws none.
std::string expect_error(const std::function<void()>& fn);

}  // namespace respin::test
