// Tests for core/rotation: finite-field arithmetic behind Paley, and every Hadamard construction
// checked exactly (entries +-1, H H^T = nI in integer arithmetic) for the orders models use.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/rotation/hadamard_matrix.h"
#include "core/util/error.h"

namespace respin {
namespace {

// Exact check: rows packed as bits (1 = -1), so <r_i, r_j> = n - 2 * popcount(r_i xor r_j).
::testing::AssertionResult is_hadamard(const HadamardMatrix& h) {
  const int n = h.n;
  if (n < 1 || h.entries.size() != static_cast<size_t>(n) * n)
    return ::testing::AssertionFailure()
           << "bad shape, n = " << n << ", entries = " << h.entries.size();
  const int words = (n + 63) / 64;
  std::vector<uint64_t> bits(static_cast<size_t>(n) * words, 0);
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) {
      const int8_t v = h.at(r, c);
      if (v != 1 && v != -1)
        return ::testing::AssertionFailure() << "entry (" << r << "," << c << ") = " << int(v);
      if (v == -1) bits[static_cast<size_t>(r) * words + c / 64] |= uint64_t{1} << (c % 64);
    }
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j) {
      int differ = 0;
      for (int w = 0; w < words; ++w)
        differ += __builtin_popcountll(bits[static_cast<size_t>(i) * words + w] ^
                                       bits[static_cast<size_t>(j) * words + w]);
      if (n - 2 * differ != 0)
        return ::testing::AssertionFailure()
               << "rows " << i << "," << j << " have dot " << n - 2 * differ;
    }
  return ::testing::AssertionSuccess();
}

// Product of the factor orders named in a construction string such as "paley2(17) x sylvester(4)".
int order_of(const std::string& construction) {
  int order = 1;
  size_t pos = 0;
  while (pos < construction.size()) {
    const size_t open = construction.find('(', pos), close = construction.find(')', pos);
    const std::string name = construction.substr(pos, open - pos);
    const int v = std::stoi(construction.substr(open + 1, close - open - 1));
    order *= name == "sylvester"         ? v
             : name == "paley1"          ? v + 1
             : name == "paley2"          ? 2 * (v + 1)
             : name == "goethals_seidel" ? 4 * v
                                         : -1000000;
    pos = close + 1 + (close + 1 < construction.size() ? 3 : 0);  // skip " x "
  }
  return order;
}

TEST(GaloisField, RejectsNonPrimePowers) {
  for (int q : {0, 1, 6, 12, 15, 100}) EXPECT_THROW(GaloisField{q}, Error) << q;
}

TEST(GaloisField, Shape) {
  const GaloisField f9(9), f27(27), f7(7), f25(25);
  EXPECT_EQ(f9.characteristic(), 3);
  EXPECT_EQ(f9.degree(), 2);
  EXPECT_EQ(f27.degree(), 3);
  EXPECT_EQ(f25.characteristic(), 5);
  EXPECT_EQ(f7.degree(), 1);
  ASSERT_EQ(f27.modulus().size(), 4u);
  EXPECT_EQ(f27.modulus()[3], 1);
  EXPECT_NE(f27.modulus()[0], 0);
  EXPECT_EQ(f9.add(4, 8), 0);  // (1 + t) + (2 + 2t) = 0 in GF(3)[t]
  // t * t = t^2 = -(m1 t + m0) modulo the irreducible t^2 + m1 t + m0; t is encoded as 3.
  const std::vector<int>& m = f9.modulus();
  EXPECT_EQ(f9.mul(3, 3), (3 - m[0]) % 3 + 3 * ((3 - m[1]) % 3));
}

TEST(GaloisField, FieldAxioms) {
  for (int q : {3, 5, 7, 9, 11, 25, 27, 49, 81, 121, 125, 243}) {
    SCOPED_TRACE(q);
    const GaloisField f(q);
    const int step =
        q <= 27 ? 1 : q / 5 + 1;  // all triples for small fields, a deterministic sample otherwise
    for (int a = 0; a < q; ++a) {
      EXPECT_EQ(f.mul(a, 0), 0);
      EXPECT_EQ(f.mul(a, 1), a);
      EXPECT_EQ(f.add(a, 0), a);
      int inverses = 0;
      for (int b = 0; b < q; ++b) {
        inverses += f.mul(a, b) == 1;
        EXPECT_EQ(f.mul(a, b), f.mul(b, a));
        EXPECT_EQ(f.sub(f.add(a, b), b), a);
        for (int c = 0; c < q; c += step) {
          EXPECT_EQ(f.mul(f.mul(a, b), c), f.mul(a, f.mul(b, c)));
          EXPECT_EQ(f.mul(a, f.add(b, c)), f.add(f.mul(a, b), f.mul(a, c)));
        }
      }
      EXPECT_EQ(inverses, a == 0 ? 0 : 1) << "a = " << a;
    }
    // The multiplicative group of a field is cyclic: some element has order q - 1.
    bool has_generator = false;
    for (int g = 2; g < q && !has_generator; ++g) {
      int x = g, order = 1;
      while (x != 1) x = f.mul(x, g), ++order;
      has_generator = order == q - 1;
    }
    EXPECT_TRUE(has_generator || q == 3);
  }
}

TEST(GaloisField, QuadraticCharacter) {
  for (int q : {3, 5, 7, 9, 11, 13, 25, 27, 49, 107, 125, 139}) {
    SCOPED_TRACE(q);
    const GaloisField f(q);
    const std::vector<int8_t> chi = f.quadratic_character();
    ASSERT_EQ(static_cast<int>(chi.size()), q);
    EXPECT_EQ(chi[0], 0);
    int squares = 0, non_squares = 0;
    for (int8_t c : chi) squares += c == 1, non_squares += c == -1;
    EXPECT_EQ(squares, (q - 1) / 2);
    EXPECT_EQ(non_squares, (q - 1) / 2);
    EXPECT_EQ(chi[f.sub(0, 1)], q % 4 == 1 ? 1 : -1);  // -1 is a square iff q = 1 mod 4
    for (int a = 1; a < q; a += 3)
      for (int b = 1; b < q; b += 5) EXPECT_EQ(chi[f.mul(a, b)], chi[a] * chi[b]);
  }
}

TEST(Hadamard, CheckerDetectsBrokenMatrices) {
  std::optional<HadamardMatrix> h = hadamard_matrix(12);
  ASSERT_TRUE(h);
  ASSERT_TRUE(is_hadamard(*h));
  HadamardMatrix flipped = *h;
  flipped.entries[5 * 12 + 7] = static_cast<int8_t>(-flipped.entries[5 * 12 + 7]);
  EXPECT_FALSE(is_hadamard(flipped));
  HadamardMatrix zero = *h;
  zero.entries[0] = 0;
  EXPECT_FALSE(is_hadamard(zero));
  EXPECT_EQ(order_of("paley2(17) x sylvester(4)"), 144);
}

TEST(Hadamard, PowersOfTwo) {
  for (int n = 1; n <= 4096; n *= 2) {
    SCOPED_TRACE(n);
    std::optional<HadamardMatrix> h = hadamard_matrix(n);
    ASSERT_TRUE(h);
    EXPECT_EQ(h->n, n);
    EXPECT_EQ(h->construction, "sylvester(" + std::to_string(n) + ")");
    EXPECT_TRUE(is_hadamard(*h));
  }
}

TEST(Hadamard, ModelOrdersKTimesPowerOfTwo) {
  struct Core {
    int k;
    const char* core;
    int core_order;
  };
  const Core cores[] = {{12, "paley1(11)", 12},
                        {20, "paley1(19)", 20},
                        {28, "paley1(27)", 28},
                        {36, "paley2(17)", 36},
                        {40, "paley1(19)", 20},
                        {44, "paley1(43)", 44},
                        {52, "paley2(25)", 52},
                        {60, "paley1(59)", 60},
                        {108, "paley1(107)", 108},
                        {140, "paley1(139)", 140},
                        {156, "goethals_seidel(39)", 156},
                        {172, "goethals_seidel(43)", 172}};
  int built = 0;
  for (const Core& c : cores)
    for (int m = 0; m <= 4; ++m) {
      const int n = c.k << m;
      SCOPED_TRACE(n);
      const int twos = n / c.core_order;
      const std::string expected =
          std::string(c.core) + (twos > 1 ? " x sylvester(" + std::to_string(twos) + ")" : "");
      EXPECT_TRUE(hadamard_constructible(n));
      EXPECT_EQ(hadamard_construction(n), expected);
      std::optional<HadamardMatrix> h = hadamard_matrix(n);
      ASSERT_TRUE(h);
      EXPECT_EQ(h->n, n);
      EXPECT_EQ(h->construction, expected);
      EXPECT_EQ(order_of(h->construction), n);
      EXPECT_TRUE(is_hadamard(*h));
      ++built;
    }
  EXPECT_EQ(built, 60);
}

TEST(Hadamard, OtherEmbeddedAndKroneckerCores) {
  for (int n : {92, 184, 1904}) {
    SCOPED_TRACE(n);
    std::optional<HadamardMatrix> h = hadamard_matrix(n);
    ASSERT_TRUE(h);
    EXPECT_EQ(order_of(h->construction), n);
    EXPECT_TRUE(is_hadamard(*h));
  }
  EXPECT_EQ(hadamard_construction(92), "goethals_seidel(23)");
  EXPECT_EQ(hadamard_construction(184), "goethals_seidel(23) x sylvester(2)");
  EXPECT_EQ(hadamard_construction(1904),
            "paley1(27) x paley1(67)");  // 1904 = 119 * 16 has no Paley core
  EXPECT_EQ(hadamard_construction(3808), "paley1(27) x paley1(67) x sylvester(2)");
  EXPECT_EQ(hadamard_construction(4048), "paley1(43) x goethals_seidel(23)");
}

TEST(Hadamard, LayoutIsCoreKroneckerSylvester) {
  const std::optional<HadamardMatrix> h48 = hadamard_matrix(48), h12 = hadamard_matrix(12),
                                      h4 = hadamard_matrix(4);
  ASSERT_TRUE(h48 && h12 && h4);
  for (int r = 0; r < 48; ++r)
    for (int c = 0; c < 48; ++c)
      ASSERT_EQ(h48->at(r, c), h12->at(r / 4, c / 4) * h4->at(r % 4, c % 4));
  // Sylvester entry (r, c) = (-1)^popcount(r & c).
  EXPECT_EQ(h4->at(3, 3), 1);
  EXPECT_EQ(h4->at(1, 1), -1);
  EXPECT_EQ(h4->at(3, 1), -1);
  EXPECT_EQ(h4->at(1, 2), 1);
}

TEST(Hadamard, ModelWidths) {
  EXPECT_EQ(hadamard_construction(11008), "goethals_seidel(43) x sylvester(64)");
  EXPECT_EQ(hadamard_construction(14336), "paley1(27) x sylvester(512)");
  EXPECT_EQ(hadamard_construction(4864), "paley2(37) x sylvester(64)");
  EXPECT_EQ(hadamard_construction(13824), "paley1(107) x sylvester(128)");
  EXPECT_EQ(hadamard_construction(1 << 20), "sylvester(1048576)");
}

TEST(Hadamard, NotConstructible) {
  for (int n : {3, 5, 6, 7, 10, 14, 18, 22, 26, 30, 116, 232}) {
    SCOPED_TRACE(n);
    EXPECT_FALSE(hadamard_constructible(n));
    EXPECT_EQ(hadamard_construction(n), "");
    EXPECT_FALSE(hadamard_matrix(n).has_value());
  }
}

TEST(Hadamard, RejectsBadOrders) {
  EXPECT_THROW(hadamard_matrix(0), Error);
  EXPECT_THROW(hadamard_matrix(-4), Error);
  EXPECT_THROW(hadamard_matrix(65536), Error);  // 4 GiB dense; the plan still exists
  EXPECT_TRUE(hadamard_constructible(65536));
  EXPECT_FALSE(hadamard_constructible(0));
}

TEST(Hadamard, BaseOrdersUpTo256) {
  std::vector<int> expected = {1, 2};
  for (int k = 4; k <= 256; k += 4)
    if (k != 116 && k != 188 && k != 232 && k != 236)
      expected.push_back(k);  // need Williamson-type rows not embedded
  EXPECT_EQ(hadamard_base_orders(256), expected);
  EXPECT_EQ(expected.size(), 62u);
}

}  // namespace
}  // namespace respin
