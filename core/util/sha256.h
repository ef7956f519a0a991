// SHA-256 (OpenSSL's libcrypto), for identifying run inputs by content.
#pragma once

#include <string>

namespace respin {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  void update(const std::string& s) { update(s.data(), s.size()); }
  std::string hex();  // finishes the digest

 private:
  void* ctx_;
};

std::string sha256_hex(const std::string& bytes);

}  // namespace respin
