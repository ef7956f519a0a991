// Hadamard matrix constructions (Sylvester, Paley I/II, Goethals-Seidel, Kronecker) and the small
// finite-field arithmetic Paley needs for prime-power q. See hadamard_matrix.h for the contract.
#include "core/rotation/hadamard_matrix.h"

#include <algorithm>

#include "core/util/error.h"

namespace respin {
namespace {

// q = p^k with p prime; false for q < 2 or composite non-prime-powers.
bool prime_power(int q, int* p, int* k) {
  if (q < 2) return false;
  int f = 2;
  while (static_cast<long long>(f) * f <= q && q % f != 0) ++f;
  if (q % f != 0) f = q;  // q itself is prime
  int e = 0;
  while (q % f == 0) q /= f, ++e;
  *p = f, *k = e;
  return q == 1;
}

// Remainder of a modulo the monic polynomial g over GF(p); coefficients lowest first.
std::vector<int> poly_rem(std::vector<int> a, const std::vector<int>& g, int p) {
  const size_t dg = g.size() - 1;
  for (size_t i = a.size(); i-- > dg;) {
    const int c = a[i];
    if (c == 0) continue;
    for (size_t j = 0; j <= dg; ++j) a[i - dg + j] = ((a[i - dg + j] - c * g[j]) % p + p) % p;
  }
  a.resize(dg);
  return a;
}

// Monic polynomial of degree `deg` whose lower coefficients are the base-p digits of `code`.
std::vector<int> monic(int code, int deg, int p) {
  std::vector<int> f(deg + 1, 0);
  for (int i = 0; i < deg; ++i) f[i] = code % p, code /= p;
  f[deg] = 1;
  return f;
}

// Williamson/Goethals-Seidel first rows (four +-1 circulants A..D of order v with
// sum of periodic autocorrelations zero at every nonzero shift), found once by an exhaustive
// meet-in-the-middle search over sequences invariant under a small multiplier subgroup of Z_v^*.
// Orders 4v = 156 and 172 are not reachable by Paley/Kronecker; the tests verify H H^T = nI.
struct CirculantRows {
  int v;
  const char* rows[4];
};
const CirculantRows kGoethalsSeidel[] = {
    {23,
     {"+++---++--++++--++---++", "+--+--+++------+++--+--", "+--+-+-++++++++++-+-+--",
      "+--++-+-+-++++-+-+-++--"}},
    {39,
     {"+++-++----+---+-++-+-+++++--++-+++-+--+", "+++--+--------+-+--+-++-+---++-+++-+---",
      "+---+-+++-++++-+-++-++-++++---+--++-+++", "++--+-+---+---+++++--+++++---+---+-+--+"}},
    {43,
     {"+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++", "++-++++++----+-+--++-++-++--+-+----++++++-+",
      "+---++--++++-+-+++-++--++-+++-+-++++--++---",
      "++---++++-+--+--++--------++--+--+-++++---+"}},
};

// One Kronecker factor; `param` is the Sylvester order, the Paley q, or the circulant order v.
struct Atom {
  enum Kind { kSylvester, kPaley1, kPaley2, kGoethalsSeidel } kind;
  int param;
};
using Plan = std::vector<Atom>;

// A construction for an order a with a % 4 == 0 that is not just Sylvester.
std::optional<Plan> core_plan(int a);

std::optional<Plan> full_plan(int n) {
  int twos = 0;
  while (((n >> twos) & 1) == 0) ++twos;
  for (int m = twos; m >= 0; --m) {  // largest power-of-two factor first
    const int a = n >> m;
    std::optional<Plan> plan = a == 1 ? Plan{} : core_plan(a);
    if (!plan) continue;
    if (m > 0 || a == 1) plan->push_back({Atom::kSylvester, 1 << m});
    return plan;
  }
  return std::nullopt;
}

std::optional<Plan> core_plan(int a) {
  if (a % 4 != 0) return std::nullopt;
  int p = 0, k = 0;
  if (prime_power(a - 1, &p, &k) && (a - 1) % 4 == 3) return Plan{{Atom::kPaley1, a - 1}};
  if (prime_power(a / 2 - 1, &p, &k) && (a / 2 - 1) % 4 == 1)
    return Plan{{Atom::kPaley2, a / 2 - 1}};
  for (const CirculantRows& g : kGoethalsSeidel)
    if (4 * g.v == a) return Plan{{Atom::kGoethalsSeidel, g.v}};
  for (int a1 = 12; a1 * a1 <= a; a1 += 4) {  // both factors need order >= 12 to add anything
    if (a % a1 != 0 || (a / a1) % 4 != 0) continue;
    std::optional<Plan> left = full_plan(a1), right = full_plan(a / a1);
    if (!left || !right) continue;
    left->insert(left->end(), right->begin(), right->end());
    return left;
  }
  return std::nullopt;
}

int atom_order(const Atom& atom) {
  switch (atom.kind) {
    case Atom::kSylvester:
      return atom.param;
    case Atom::kPaley1:
      return atom.param + 1;
    case Atom::kPaley2:
      return 2 * (atom.param + 1);
    case Atom::kGoethalsSeidel:
      return 4 * atom.param;
  }
  return 0;
}

std::string describe(const Plan& plan) {
  static const char* const kNames[] = {"sylvester", "paley1", "paley2", "goethals_seidel"};
  std::string s;
  for (const Atom& atom : plan)
    s += (s.empty() ? "" : " x ") + std::string(kNames[atom.kind]) + "(" +
         std::to_string(atom.param) + ")";
  return s;
}

HadamardMatrix build_atom(const Atom& atom) {
  HadamardMatrix h;
  h.n = atom_order(atom);
  const int n = h.n;
  h.entries.assign(static_cast<size_t>(n) * n, 1);
  auto set = [&](int r, int c, int v) {
    h.entries[static_cast<size_t>(r) * n + c] = static_cast<int8_t>(v);
  };
  if (atom.kind == Atom::kSylvester) {
    // Entry (r, c) of the 2^m Sylvester matrix is (-1)^popcount(r & c).
    for (int r = 0; r < n; ++r)
      for (int c = 0; c < n; ++c) set(r, c, __builtin_parity(r & c) ? -1 : 1);
  } else if (atom.kind == Atom::kPaley1) {
    // H = I + S with S the skew conference matrix [[0, 1^T], [-1, Q]], Q_ij = chi(x_i - x_j):
    // S^T = -S and S S^T = qI give H H^T = (q + 1) I.
    const GaloisField f(atom.param);
    const std::vector<int8_t> chi = f.quadratic_character();
    for (int i = 1; i < n; ++i) {
      set(i, 0, -1);
      for (int j = 1; j < n; ++j)
        if (i != j) set(i, j, chi[f.sub(i - 1, j - 1)]);
    }
  } else if (atom.kind == Atom::kPaley2) {
    // Symmetric conference matrix C = [[0, 1^T], [1, Q]]; H = C (x) [[1,-1],[-1,-1]] + I (x)
    // [[1,1],[1,-1]].
    const GaloisField f(atom.param);
    const std::vector<int8_t> chi = f.quadratic_character();
    const int m = atom.param + 1;
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < m; ++j) {
        const int c = i == j ? 0 : (i == 0 || j == 0) ? 1 : chi[f.sub(i - 1, j - 1)];
        const int blk[2][2] = {{i == j ? 1 : c, i == j ? 1 : -c},
                               {i == j ? 1 : -c, i == j ? -1 : -c}};
        for (int u = 0; u < 2; ++u)
          for (int w = 0; w < 2; ++w) set(2 * i + u, 2 * j + w, blk[u][w]);
      }
  } else {
    // Goethals-Seidel array with R the back-diagonal permutation:
    //   [[ A,    BR,     CR,     DR  ], [-BR,  A,     D^T R, -C^T R],
    //    [-CR, -D^T R,   A,     B^T R], [-DR,  C^T R, -B^T R,  A   ]]
    // (X R)_ij = x[(v-1-i-j) mod v] and (X^T R)_ij = x[(i+j+1) mod v] for circulant X with first
    // row x.
    const int v = atom.param;
    const char* const* rows = nullptr;
    for (const CirculantRows& g : kGoethalsSeidel)
      if (g.v == v) rows = g.rows;
    auto x = [&](int which, int idx) { return rows[which][((idx % v) + v) % v] == '+' ? 1 : -1; };
    // Per block: sign, sequence (0..3 = A..D), form (0: X, 1: X R, 2: X^T R).
    const int layout[4][4][3] = {{{1, 0, 0}, {1, 1, 1}, {1, 2, 1}, {1, 3, 1}},
                                 {{-1, 1, 1}, {1, 0, 0}, {1, 3, 2}, {-1, 2, 2}},
                                 {{-1, 2, 1}, {-1, 3, 2}, {1, 0, 0}, {1, 1, 2}},
                                 {{-1, 3, 1}, {1, 2, 2}, {-1, 1, 2}, {1, 0, 0}}};
    for (int bi = 0; bi < 4; ++bi)
      for (int bj = 0; bj < 4; ++bj) {
        const int* b = layout[bi][bj];
        for (int i = 0; i < v; ++i)
          for (int j = 0; j < v; ++j) {
            const int idx = b[2] == 0 ? j - i : b[2] == 1 ? v - 1 - i - j : i + j + 1;
            set(bi * v + i, bj * v + j, b[0] * x(b[1], idx));
          }
      }
  }
  return h;
}

HadamardMatrix kronecker(const HadamardMatrix& a, const HadamardMatrix& b) {
  HadamardMatrix h;
  h.n = a.n * b.n;
  h.entries.resize(static_cast<size_t>(h.n) * h.n);
  int8_t* out = h.entries.data();
  for (int r1 = 0; r1 < a.n; ++r1)
    for (int r2 = 0; r2 < b.n; ++r2)
      for (int c1 = 0; c1 < a.n; ++c1) {
        const int8_t s = a.at(r1, c1);
        const int8_t* row = &b.entries[static_cast<size_t>(r2) * b.n];
        for (int c2 = 0; c2 < b.n; ++c2) *out++ = static_cast<int8_t>(s * row[c2]);
      }
  return h;
}

}  // namespace

GaloisField::GaloisField(int q) : q_(q) {
  if (!prime_power(q, &p_, &k_))
    throw Error("GaloisField: " + std::to_string(q) + " is not a prime power");
  if (k_ == 1) {
    modulus_ = {0, 1};  // GF(p) itself: t is never produced, so reducing by t is a no-op
    return;
  }
  // First monic degree-k polynomial with no monic factor of degree 1..k/2 (trial division).
  for (int code = 0; code < q_; ++code) {
    const std::vector<int> f = monic(code, k_, p_);
    bool irreducible = f[0] != 0;
    for (int d = 1; irreducible && 2 * d <= k_; ++d) {
      int count = 1;
      for (int i = 0; i < d; ++i) count *= p_;
      for (int g = 0; irreducible && g < count; ++g) {
        const std::vector<int> r = poly_rem(f, monic(g, d, p_), p_);
        irreducible = std::any_of(r.begin(), r.end(), [](int c) { return c != 0; });
      }
    }
    if (irreducible) {
      modulus_ = f;
      return;
    }
  }
  throw Error("GaloisField: no irreducible polynomial found for " +
              std::to_string(q));  // unreachable
}

std::vector<int> GaloisField::digits(int x) const {
  std::vector<int> d(k_);
  for (int i = 0; i < k_; ++i) d[i] = x % p_, x /= p_;
  return d;
}

int GaloisField::add(int a, int b) const {
  int out = 0;
  for (int i = 0, scale = 1; i < k_; ++i, scale *= p_, a /= p_, b /= p_)
    out += (a % p_ + b % p_) % p_ * scale;
  return out;
}

int GaloisField::sub(int a, int b) const {
  int out = 0;
  for (int i = 0, scale = 1; i < k_; ++i, scale *= p_, a /= p_, b /= p_)
    out += (a % p_ - b % p_ + p_) % p_ * scale;
  return out;
}

int GaloisField::mul(int a, int b) const {
  if (k_ == 1) return static_cast<int>(static_cast<long long>(a) * b % p_);
  const std::vector<int> da = digits(a), db = digits(b);
  std::vector<int> prod(2 * k_ - 1, 0);
  for (int i = 0; i < k_; ++i)
    for (int j = 0; j < k_; ++j) prod[i + j] = (prod[i + j] + da[i] * db[j]) % p_;
  const std::vector<int> r = poly_rem(prod, modulus_, p_);
  int out = 0;
  for (int i = k_ - 1; i >= 0; --i) out = out * p_ + r[i];
  return out;
}

std::vector<int8_t> GaloisField::quadratic_character() const {
  std::vector<int8_t> chi(q_, -1);
  chi[0] = 0;
  for (int x = 1; x < q_; ++x) chi[mul(x, x)] = 1;
  return chi;
}

std::string hadamard_construction(int n) {
  if (n < 1) return "";
  const std::optional<Plan> plan = full_plan(n);
  return plan ? describe(*plan) : "";
}

bool hadamard_constructible(int n) { return !hadamard_construction(n).empty(); }

std::optional<HadamardMatrix> hadamard_matrix(int n) {
  if (n < 1 || n > 32768)
    throw Error("hadamard_matrix: order " + std::to_string(n) + " outside [1, 32768]");
  const std::optional<Plan> plan = full_plan(n);
  if (!plan) return std::nullopt;
  HadamardMatrix h = build_atom(plan->front());
  for (size_t i = 1; i < plan->size(); ++i) h = kronecker(h, build_atom((*plan)[i]));
  h.construction = describe(*plan);
  return h;
}

std::vector<int> hadamard_base_orders(int max_k) {
  std::vector<int> out;
  for (int k = 1; k <= max_k; ++k)
    if (hadamard_constructible(k)) out.push_back(k);
  return out;
}

}  // namespace respin
