// Hadamard matrices of order n = K * 2^m for rotation-based quantization: activations are
// multiplied by H / sqrt(n), and model widths (11008 = 172 * 64, 14336 = 28 * 512, ...) are rarely
// powers of two. Built from first principles: Sylvester, Paley I/II (over GF(p^k)), Goethals-Seidel
// with embedded circulant first rows, and Kronecker products. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace respin {

// Row-major n x n matrix with entries +1/-1 and H * H^T = n * I.
struct HadamardMatrix {
  int n = 0;
  std::vector<int8_t> entries;
  // Kronecker factors, outermost first, e.g. "sylvester(64)", "paley1(11) x sylvester(4)",
  // "paley2(17)", "goethals_seidel(43) x sylvester(64)". The Sylvester factor is always last, so
  // H = H_core (x) H_sylvester and the Sylvester part acts on contiguous blocks of 2^m (fast WHT).
  std::string construction;
  int8_t at(int r, int c) const { return entries[static_cast<size_t>(r) * n + c]; }
};

// Chooses n = a * 2^m with the largest 2^m for which the order-a core has a construction here;
// nullopt if none is known (e.g. n = 6, 10, 116). Throws Error for n < 1 or n > 32768 (the dense
// int8 matrix would exceed 1 GiB).
std::optional<HadamardMatrix> hadamard_matrix(int n);
// The construction string hadamard_matrix(n) would record, or "" if none; cheap (builds nothing).
std::string hadamard_construction(int n);
bool hadamard_constructible(int n);
// All K in [1, max_k] with a construction here (1, 2 and most multiples of 4; up to 256 not 116, 188,
// 232 or 236), for documentation/tests.
std::vector<int> hadamard_base_orders(int max_k = 256);

// GF(q), q = p^k, elements encoded as integers 0..q-1 whose base-p digits are the coefficients of
// a polynomial in t (lowest first), reduced modulo a monic irreducible found by brute force.
// Small and slow on purpose: only used to build Paley matrices once.
class GaloisField {
 public:
  explicit GaloisField(int q);  // throws Error unless q is a prime power
  int order() const { return q_; }
  int characteristic() const { return p_; }
  int degree() const { return k_; }
  const std::vector<int>& modulus() const { return modulus_; }  // k + 1 coefficients, monic
  int add(int a, int b) const;
  int sub(int a, int b) const;
  int mul(int a, int b) const;
  // chi[x]: 0 for x = 0, +1 for nonzero squares, -1 for non-squares (listed by squaring
  // everything).
  std::vector<int8_t> quadratic_character() const;

 private:
  std::vector<int> digits(int x) const;
  int p_ = 0, k_ = 0, q_ = 0;
  std::vector<int> modulus_;
};

}  // namespace respin
