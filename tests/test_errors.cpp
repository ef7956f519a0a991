// One-line errors: libtorch's own errors reach the user without their C++ backtrace, with the
// context (phase, layer, file) that the pipeline adds; the backtrace only when asked for.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "core/util/error.h"
#include "core/util/error_message.h"

using namespace respin;

namespace {

// A real libtorch error (a shape check inside at::matmul), caught as the CLI catches it.
std::exception_ptr matmul_error() {
  try {
    at::matmul(at::ones({2, 3}), at::ones({4, 5}));
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

std::string message_of(const std::exception_ptr& p, bool full) {
  try {
    std::rethrow_exception(p);
  } catch (const std::exception& e) {
    return full ? std::string(e.what()) : error_message(e);
  }
}

}  // namespace

TEST(ErrorMessage, LibtorchErrorsLoseTheirBacktrace) {
  const std::exception_ptr err = matmul_error();
  ASSERT_TRUE(err);
  set_verbose_errors(false);
  const std::string full = message_of(err, true);
  const std::string one = message_of(err, false);
  EXPECT_NE(one.find("cannot be multiplied"), std::string::npos) << one;
  EXPECT_EQ(one.find('\n'), std::string::npos) << one;
  EXPECT_EQ(one.find("frame #"), std::string::npos) << one;
  EXPECT_LT(one.size(), full.size());
  // Verbose errors keep everything libtorch said, backtrace included.
  set_verbose_errors(true);
  EXPECT_EQ(message_of(err, false), full);
  set_verbose_errors(false);
}

TEST(ErrorMessage, ContextIsPrefixedAndCancellationPassesThrough) {
  try {
    with_error_context("GPTQ, layer 3", [] { at::matmul(at::ones({2, 3}), at::ones({4, 5})); });
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("GPTQ, layer 3: ", 0), 0u) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  try {
    with_error_context("outer", [] { with_error_context("inner", [] { throw Error("file.json: bad"); }); });
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "outer: inner: file.json: bad");
  }
  EXPECT_THROW(with_error_context("phase", [] { throw Cancelled(); }), Cancelled);
  EXPECT_EQ(with_error_context("no error", [] { return 7; }), 7);
}

TEST(ErrorMessage, MultiLineMessagesAreFolded) {
  EXPECT_EQ(error_message(std::runtime_error("first\n  second\n\nthird")), "first; second; third");
}
