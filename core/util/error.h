// Error type used across core: every failure a user can cause (bad file, bad field, bad argument)
// is reported as respin::Error with a message that names the file/field and the problem.
#pragma once

#include <stdexcept>
#include <string>

namespace respin {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Thrown when a RunControl stop was requested; callers treat it as a clean cancellation.
class Cancelled : public Error {
 public:
  Cancelled() : Error("cancelled") {}
};

}  // namespace respin
