# Tokenizer tests (included by tests/CMakeLists.txt).
#
# tokenizer_oracle_generate runs the independent JavaScript oracle (tests/oracle, installed by
# `npm ci --prefix tests/oracle`) and writes the expected ids into the build tree; it is the
# setup fixture of the TokenizerOracle.* tests, which read them through
# RESPIN_TOKENIZER_ORACLE_DIR. The other test_tokenizer tests need neither node nor the fixture.
# Own add_executable/gtest_discover_tests (not respin_add_test) because the two halves of the
# executable get different fixture properties.

set(RESPIN_TOKENIZER_ORACLE_DIR ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_oracle)

find_program(RESPIN_NODE node)
if(RESPIN_NODE)
  add_test(NAME tokenizer_oracle_generate
           COMMAND ${RESPIN_NODE} gen_expected.mjs ${RESPIN_TOKENIZER_ORACLE_DIR}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/oracle)
else()
  # Keep the fixture so the oracle tests report why they cannot run instead of vanishing.
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_oracle_no_node.cmake
       "message(FATAL_ERROR \"node (v18+) was not found at configure time; the tokenizer oracle tests need it \"\n"
       "                    \"(then run: npm ci --prefix tests/oracle)\")\n")
  add_test(NAME tokenizer_oracle_generate
           COMMAND ${CMAKE_COMMAND} -P ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_oracle_no_node.cmake)
endif()
set_tests_properties(tokenizer_oracle_generate PROPERTIES
  FIXTURES_SETUP tokenizer_oracle
  LABELS unit
  TIMEOUT 300)

add_executable(test_tokenizer test_tokenizer.cpp)
target_link_libraries(test_tokenizer PRIVATE respin_base GTest::gtest GTest::gtest_main)
target_include_directories(test_tokenizer PRIVATE ${RESPIN_SOURCE_ROOT})

# The "tokenizer." prefix makes `ctest -R tokenizer` select all of them.
gtest_discover_tests(test_tokenizer
  TEST_PREFIX "tokenizer."
  TEST_FILTER "-TokenizerOracle.*"
  DISCOVERY_TIMEOUT 120
  PROPERTIES LABELS unit)
gtest_discover_tests(test_tokenizer
  TEST_PREFIX "tokenizer."
  TEST_FILTER "TokenizerOracle.*"
  DISCOVERY_TIMEOUT 120
  PROPERTIES
    LABELS unit  # one label only: gtest_discover_tests flattens list-valued properties
    FIXTURES_REQUIRED tokenizer_oracle
    ENVIRONMENT "RESPIN_TOKENIZER_ORACLE_DIR=${RESPIN_TOKENIZER_ORACLE_DIR}")
