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

// Thrown when a RunControl stop was requested; callers treat it as a clean cancellation. Not an
// Error (and not a std::runtime_error), so that `catch (const Error&)` around a failure path never
// swallows a user's cancel.
class Cancelled : public std::exception {
 public:
  const char* what() const noexcept override { return "cancelled"; }
};

}  // namespace respin
