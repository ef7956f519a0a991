// Memory plan of a calibration (see memory_plan.h; the terms are explained in docs/methods.md 1.8).
#include "core/calib/memory_plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/calib/precision.h"
#include "core/model/llama.h"
#include "core/quant/quantizer.h"
#include "core/util/error.h"

namespace respin {

namespace {

constexpr int64_t kF32 = 4, kF64 = 8;
constexpr int64_t kAttentionBlock = 256;  // query rows per attention block (core/model/llama.cpp)
constexpr int64_t kLossChunk = 1024;      // tokens per loss piece of a checkpointed step
// Resident memory a run adds that does not scale with the model: the libraries' code and data
// paged in as the run first uses them, and the allocator's slack. Measured on the CPU path
// (docs/results.md, memory rows): 30-35 MB at hidden 512 and 1024.
constexpr int64_t kLibraries = 32'000'000;
// The CPU BLAS's per-thread work buffers for float64 products (two threads here, measured by
// running with one: 40 MB less at the rotation's peak).
constexpr int64_t kBlasBuffers = 40'000'000;

// The shapes the terms are made of.
struct Shape {
  int64_t D, I, V, L, H, KV, hd, QD, KVD, T, P;
  bool tied;
  int64_t E;  // bytes per weight and activation element (the run's precision)
  bool fused_attention = false;  // attention without a score matrix (llama.h attention_is_fused)
  explicit Shape(const ModelConfig& c, int64_t seq_len, Precision precision)
      : D(c.hidden_size),
        I(c.intermediate_size),
        V(c.vocab_size),
        L(c.num_hidden_layers),
        H(c.num_attention_heads),
        KV(c.num_key_value_heads),
        hd(c.head_dim),
        QD(c.num_attention_heads * c.head_dim),
        KVD(c.num_key_value_heads * c.head_dim),
        T(std::min<int64_t>(seq_len, c.max_position_embeddings)),
        P(c.parameter_count()),
        tied(c.tie_word_embeddings),
        E(element_bytes(precision)) {}
  int64_t layer_params() const { return 2 * QD * D + 2 * KVD * D + 3 * I * D + 2 * D; }
  int64_t largest_matrix() const { return std::max({V * D, I * D, QD * D}); }
  int64_t widest() const { return std::max({D, I, QD}); }
};

// The transient of one forward of `windows` windows without autograd: the largest of the
// attention (q/k/v, RoPE, the scores of one block of query rows), the MLP and the head (logits and
// their log-softmax), plus the fake quantizers' copies when they are on.
int64_t forward_transient(const Shape& s, int64_t windows, bool quantizers, bool head) {
  const int64_t tok = windows * s.T;
  const int64_t attn = s.E * tok * (8 * s.D + 3 * s.KVD) + 3 * kF32 * windows * s.H * std::min(kAttentionBlock, s.T) * s.T;
  const int64_t mlp = s.E * tok * (3 * s.D + 4 * s.I);
  // The logits in the model's precision, then their float32 log-softmax.
  const int64_t logits = head ? tok * (2 * s.E * s.D + (s.E + kF32) * s.V) : 0;
  return std::max({attn, mlp, logits}) + (quantizers ? 2 * s.E * tok * s.widest() : 0);
}

// Bytes autograd keeps per token and decoder layer in a learning step: the norms' inputs and
// outputs, q/k/v and their RoPE'd copies, the repeated K/V, the MLP's gate, up, SiLU, product and
// Hadamard'd input, one saved tensor per fake-quantized activation ("floats" below), and the
// attention probabilities of the blocked eager attention (a query sees T/2 keys on average, plus
// half a block; none where attention runs fused: the CUDA kernels keep no score matrix).
//  - float32: 4 bytes per float and per probability, times 1.57, the ratio of the measured graph
//    to this count (263 kB per token and layer at hidden 1024, intermediate 2816, 16 heads, 512
//    tokens: docs/results.md).
//  - bfloat16: 4.1 bytes per float and 19 per probability and head, fitted to SpinQuant's
//    checkpointed steps at hidden 1024 with windows of 256, 512 and 1024 tokens (docs/results.md:
//    the scores are formed in bfloat16, normalized in float32 and cast back, and the casts'
//    copies outlive the count above), checked at hidden 512 and 2048.
int64_t saved_per_token_layer(const Shape& s, bool activation_quant) {
  int64_t floats = 13 * s.D + 3 * s.KVD + 5 * s.I;
  if (activation_quant) floats += 2 * s.D + s.QD + s.I + 2 * s.KVD;
  const int64_t probs = s.fused_attention ? 0 : s.H * (s.T + kAttentionBlock) / 2;
  if (s.E >= kF32) return s.E * (floats + probs) * 157 / 100;
  return floats * 41 / 10 + probs * 19;
}

// Rotation parameters with their gradients and momentum (3 float32 copies each), and the Cayley
// step's temporaries, which are alive for one parameter at a time (core/rotation/cayley_sgd.cpp:
// the step walks the parameters in turn; about 6 hidden x hidden matrices).
int64_t rotation_state(const Shape& s, Method m) {
  const int64_t residual = m == Method::ReSpin ? 2 * s.L + 1 : 1;
  return 3 * kF32 * (residual * s.D * s.D + s.L * s.hd * s.hd) + 6 * kF32 * s.D * s.D;
}

struct Learning {
  int64_t bytes = 0;
  std::string detail;
};

Learning learning_bytes(const CalibConfig& c, const Shape& s, int64_t model, int64_t micro_batch, bool checkpoint) {
  const int64_t batch = std::max<int64_t>(c.batch, 1);
  const int64_t n = micro_batch > 0 ? std::min(micro_batch, batch) : batch;
  const int64_t tok = n * s.T;
  const bool wq = c.wbits < 16 && c.weight_quantizer == WeightQuantizer::Rtn;
  const int64_t linear = s.E * (s.P - s.V * s.D * (s.tied ? 1 : 2));
  const int64_t per_tl = saved_per_token_layer(s, c.abits < 16);
  const int64_t dense_skips = c.method == Method::ReSpin ? 2 * s.L * kF32 * s.D * s.D : 0;
  const int64_t state = rotation_state(s, c.method);
  Learning r;
  char buf[256];
  if (!checkpoint) {
    const int64_t rotated = model + (wq ? linear : 0) + dense_skips;
    const int64_t acts = s.L * tok * per_tl;
    const int64_t logits = 3 * kF32 * tok * s.V;
    r.bytes = model + state + rotated + acts + logits;
    std::snprintf(buf, sizeof buf, "rotated weights %s, activations of %lld tokens x %lld layers %s, logits %s",
                  format_bytes(rotated).c_str(), static_cast<long long>(tok), static_cast<long long>(s.L),
                  format_bytes(acts).c_str(), format_bytes(logits).c_str());
  } else {
    // The layer rebuilt with autograd in the backward pass: its rotated weights, their gradients
    // and (with RTN weights) the fake-quantized copies (2.5 float32 copies with RTN weights, 1.5
    // without: measured). In bfloat16 the products' float32 inputs, saved for the rotations'
    // gradients, come on top: 11 bytes per parameter with or without RTN weights (measured at
    // hidden 1024: the same peak at W4 and W16).
    const int64_t per_param = s.E >= kF32 ? s.E * (wq ? 5 : 3) / 2 : 11;
    const int64_t layer = per_param * s.layer_params() + (dense_skips > 0 ? 2 * kF32 * s.D * s.D : 0);
    const int64_t kept = (s.L + 1) * s.E * tok * s.D;
    const int64_t acts = tok * per_tl;
    const int64_t loss = 3 * kF32 * std::min(kLossChunk, tok) * s.V + 2 * s.E * s.V * s.D;
    r.bytes = model + state + layer + kept + acts + loss;
    std::snprintf(buf, sizeof buf, "kept layer inputs %s, one layer %s and its activations %s, loss piece %s",
                  format_bytes(kept).c_str(), format_bytes(layer).c_str(), format_bytes(acts).c_str(),
                  format_bytes(loss).c_str());
  }
  r.detail = buf;
  return r;
}

// GPTQ's transient for its largest weight [out, in] (core/quant/gptq.cpp): the Hessian of the
// group's input as accumulated, its copy for the weight, the damped copy, its Cholesky factor, the
// inverse and that inverse's upper factor (seven in x in float64 matrices alive at once), the
// weight in float64 and its working copy, and the MSE clip search's float32 candidates (as for RTN).
// RTN's MSE clip search and fake quantization run over blocks of rows of about 4M elements (at
// least 64 rows; core/quant/quantizer.cpp): 5 float32 copies of the largest block (measured: 4.3
// copies in the streamed RTN rows at hidden 1024 and 2048, where a layer's weight is all that is
// beside them; 6 in the whole QuaRot row at hidden 1024, where the allocator reuses less).
int64_t grid_search_transient(const Shape& s) {
  int64_t block = 0;
  for (const auto& [rows, width] : {std::pair{s.I, s.D}, std::pair{s.D, s.I}, std::pair{s.QD, s.D}, std::pair{s.D, s.QD}})
    for (const auto& [first, n] : row_blocks(rows, width)) block = std::max(block, n * width);
  return 5 * kF32 * block;
}

int64_t gptq_transient(const Shape& s) {
  const int64_t weight = std::max(s.I, s.QD) * s.D;
  return 7 * kF64 * s.widest() * s.widest() + 2 * kF64 * weight + grid_search_transient(s);
}

// RTN of one weight: its quantized self beside it, and the block transient.
int64_t rtn_transient(const Shape& s) { return s.E * std::max(s.I, s.QD) * s.D + grid_search_transient(s); }

// Forward FLOPs per token: 2 per weight of the decoder's linear layers and the head, and
// attention's two products over T/2 keys on average (causal).
double forward_flops_per_token(const Shape& s) {
  const double linear = static_cast<double>(s.P - s.V * s.D * (s.tied ? 1 : 2));
  return 2.0 * (linear + static_cast<double>(s.V * s.D)) + 4.0 * s.L * s.QD * (s.T / 2.0);
}

// GPTQ's float64 work per run: the Hessians (2 FLOPs per input pair and token, one per distinct
// input: attention, o_proj, MLP, down_proj) and, per weight [out, in], the column updates
// (2 out in^2) and the Cholesky factorization (in^3 / 3).
double gptq_f64_flops(const Shape& s, int64_t tokens) {
  const double D = s.D, I = s.I, QD = s.QD, KVD = s.KVD, L = s.L, t = static_cast<double>(tokens);
  const double hessians = 2 * t * (2 * D * D + QD * QD + I * I);
  const double updates = 2 * (QD + 2 * KVD + 2 * I) * D * D + 2 * D * QD * QD + 2 * D * I * I;
  const double cholesky = (5 * D * D * D + 2 * I * D * D + QD * QD * QD + I * I * I) / 3;
  return L * (hessians + updates + cholesky);
}

}  // namespace

double MemoryPlan::estimated_seconds() const {
  double total = 0;
  bool any = false;
  for (const PhaseMemory& p : phases)
    if (p.seconds >= 0) {
      total += p.seconds;
      any = true;
    }
  return any ? total : -1;
}

const PhaseMemory& MemoryPlan::peak() const {
  if (phases.empty()) throw Error("empty memory plan");
  return *std::max_element(phases.begin(), phases.end(),
                           [](const PhaseMemory& a, const PhaseMemory& b) { return a.device_bytes < b.device_bytes; });
}

int64_t MemoryPlan::peak_host_bytes() const {
  int64_t m = 0;
  for (const PhaseMemory& p : phases) m = std::max(m, target.device == "cpu" ? p.device_bytes : p.host_bytes);
  return m;
}

namespace {

// `streamed`: the phases without end-to-end gradients a decoder layer at a time (docs/methods.md
// 1.7).
MemoryPlan plan_of(const CalibConfig& c, const ModelConfig& mc, const PlanTarget& target, bool streamed) {
  Shape s(mc, c.seq_len, target.precision);
  const bool cuda = target.device != "cpu";
  s.fused_attention = cuda && attention_is_fused(at::Device(at::kCUDA));
  MemoryPlan plan;
  plan.target = target;
  plan.model_bytes = s.E * s.P;
  plan.micro_batch = c.micro_batch;
  plan.checkpoint_layers = c.checkpoint_layers;
  plan.streamed = streamed;
  const int64_t model = plan.model_bytes;
  // Fusion unties a tied lm_head: the fused model has one more vocabulary x hidden matrix.
  const int64_t fused = model + (s.tied ? s.E * s.V * s.D : 0);
  // The evaluation text's token ids and the calibration windows the run keeps; while loading, the
  // corpus, its splits' texts and their tokenization (about 8 bytes per byte of text, measured).
  const int64_t texts_kept = target.texts_bytes / 8 + kF32 * 2 * std::max<int64_t>(c.samples, c.stats_windows) * s.T;
  const int64_t texts_load = 8 * target.texts_bytes;
  const bool rotates = method_rotates(c.method);
  const int64_t rotations = rotates ? kF64 * ((c.method == Method::ReSpin ? 2 * s.L + 1 : 1) * s.D * s.D + s.L * s.hd * s.hd) : 0;
  const int64_t rank = c.method == Method::ReSpin ? (c.rank < 0 ? s.D : std::min<int64_t>(c.rank, s.D)) : 0;
  const int64_t corrections = 2 * s.L * kF32 * (s.D * rank + rank * rank);
  const bool quant_acts = c.abits < 16 || c.kvbits < 16;
  // What the phases after the rotations hold: the fused and rotated model, or without rotation
  // the original one.
  const int64_t held = rotates ? fused : model;

  // What stays in host memory whatever the device: the texts' token ids, the libraries.
  const int64_t host_resident = texts_kept + kLibraries;
  // A phase holding `on_device` on the compute device and `host` in host memory (plus, on CUDA,
  // `host_copy`: a host copy of the model while loading or writing). On the CPU both are one memory.
  auto add = [&](Phase p, int64_t on_device, std::string detail, int64_t host = -1, int64_t host_copy = 0) {
    if (host < 0) host = host_resident;
    plan.phases.push_back({p, on_device + (cuda ? 0 : host), cuda ? host + host_copy : 0, std::move(detail)});
  };
  auto fwd = [&](int64_t windows, bool quantizers) { return forward_transient(s, windows, quantizers, true); };
  // A forward with the online transforms and quantizers: their copies of the
  // activations about double the transient, plus their own state (measured).
  auto hooked = [&](int64_t windows, bool quantizers) { return 2 * fwd(windows, quantizers) + 10'000'000; };
  // The evaluation of the quantized model: with rotations, the online transforms and quantizers;
  // without, the quantizers' copies alone (measured: RTN's evaluation holds 8-14 MB more than the
  // float one at hidden 1024 and 2048, one window of 512 tokens).
  auto eval_quant = [&](int64_t windows) { return rotates ? hooked(windows, quant_acts) : fwd(windows, quant_acts); };
  const std::string model_words = "model " + format_bytes(model);
  // Streamed: one decoder layer (or the embeddings, or the head) resident beside the hidden states
  // of the phase's windows; each tensor is converted from its mapped pages, which are given back
  // after the copy (the file's bytes per element: `F`).
  const int64_t F = target.model_file_bytes > 0 && s.P > 0 ? std::max<int64_t>(1, target.model_file_bytes / s.P) : s.E;
  const int64_t layer = s.E * s.layer_params();
  const int64_t layer_read = layer + F * std::max(s.I, s.QD) * s.D;
  const int64_t vocab_read = (s.E + F) * s.V * s.D;
  const int64_t eval_windows = c.eval_windows > 0 ? c.eval_windows
                               : target.eval_text_bytes > 0 ? std::max<int64_t>(1, target.eval_text_bytes / 4 / s.T)
                                                            : 1;
  auto hidden_of = [&](int64_t windows) { return s.E * windows * s.T * s.D; };
  auto streamed_pass = [&](int64_t windows, int64_t step, bool head) {
    const int64_t logits = head ? s.T * (2 * s.E * s.D + (s.E + kF32) * s.V) : 0;
    return hidden_of(windows) + std::max({vocab_read + logits, layer_read + step + hidden_of(1)});
  };
  auto pass_words = [&](int64_t windows) {
    return "hidden states of " + std::to_string(windows) + " windows " + format_bytes(hidden_of(windows)) + ", one layer " +
           format_bytes(layer) + " or the embeddings " + format_bytes(s.E * s.V * s.D);
  };
  const int64_t side = rotations + corrections;
  for (Phase p : phases_of(c)) {
    if (streamed) {
      const int64_t stats = std::max<int64_t>(c.stats_windows, 1);
      switch (p) {
        case Phase::Load:
          add(p, 0, "the texts and their tokenization " + format_bytes(texts_load) + " (the weights stay in their files)",
              std::max(texts_load, texts_kept) + kLibraries);
          break;
        case Phase::EvalFp:
          add(p, streamed_pass(eval_windows, fwd(1, false), true), pass_words(eval_windows) + ", one window's forward");
          break;
        case Phase::StatsBefore:
          add(p, streamed_pass(stats, fwd(1, false), false), pass_words(stats) + ", one window's forward");
          break;
        case Phase::Rotate: {
          // A layer read, fused and rotated in place (each tensor replaced by its rotated self as it is
          // made; down_proj's float64 copy for its Hadamard beside its new self), or the embeddings /
          // lm_head with their rotated copies; two float64 row blocks.
          const int64_t blocks = 2 * kF64 * 512 * std::max(s.D, s.I) + (cuda ? 0 : kBlasBuffers);
          const int64_t piece = std::max(vocab_read + s.E * s.V * s.D, layer_read + (kF64 + s.E) * s.I * s.D);
          add(p, side + piece + blocks + (c.method == Method::ReSpin ? 4 * kF64 * s.D * s.D : 0),
              "rotations " + format_bytes(rotations) + ", one layer or the embeddings rotated beside their input " +
                  format_bytes(piece));
          break;
        }
        case Phase::StatsAfter:
          add(p, side + streamed_pass(stats, hooked(1, false), false),
              pass_words(stats) + ", one window's forward with the online transforms");
          break;
        case Phase::Quantize:
          // The layer's mapped pages are given back once it is read: the reading or the grid search.
          add(p, side + std::max({vocab_read, layer_read, layer + rtn_transient(s)}),
              "one layer " + format_bytes(layer) + " and one weight's grid search");
          break;
        case Phase::Gptq: {
          const int64_t windows = std::max<int64_t>(c.samples, 1);
          const int64_t hessian = gptq_transient(s);
          add(p, side + hidden_of(windows) +
                     std::max(vocab_read, layer_read + hessian + forward_transient(s, std::min<int64_t>(4, windows), false, false)),
              pass_words(windows) + ", the Hessian's factorization and one weight in float64 " + format_bytes(hessian));
          break;
        }
        case Phase::EvalQuant:
          add(p, side + streamed_pass(eval_windows, eval_quant(1), true),
              pass_words(eval_windows) + ", one window's forward with quantizers");
          break;
        case Phase::Write:
          // With weight quantization every tensor is written by then; without, the model is copied
          // into the run's file a tensor at a time.
          add(p, side + (c.wbits < 16 ? 0 : std::max(vocab_read, layer_read)),
              c.wbits < 16 ? "the file's commit" : "the model copied a tensor at a time");
          break;
      }
      continue;
    }
    switch (p) {
      case Phase::Load:
        // Converted tensor by tensor from the mapped file: the float32 model (on the host first
        // when it goes to a GPU), the texts and their token ids, one tensor's conversion (its mapped pages beside the copy).
        // The texts are tokenized and freed before the weights arrive: the larger of the two.
        add(p, cuda ? model : 0,
            model_words + ", or before it the texts and their tokenization " + format_bytes(texts_load),
            std::max(texts_load, model + texts_kept) + s.largest_matrix() + kLibraries);
        break;
      case Phase::EvalFp:
      case Phase::StatsBefore:
        add(p, model + fwd(1, false),
            model_words + ", one window's forward " + format_bytes(fwd(1, false)));
        break;
      case Phase::Rotate: {
        // Fusion and rotation in place, 512 rows of each product at a time (docs/methods.md 1.9):
        // the transient is the largest new matrix beside the one it replaces (the embeddings'), or
        // down_proj's float64 copy for its Hadamard with its new self, plus two blocks of float64
        // rows; on the CPU the BLAS's per-thread buffers, first touched by these float64 products
        // in a bfloat16 run (measured: about 20 MB per thread).
        const int64_t rotate_transient = std::max(s.E * s.V * s.D, (kF64 + s.E) * s.I * s.D) +
                                         2 * kF64 * 512 * std::max(s.D, s.I) + (cuda ? 0 : kBlasBuffers) +
                                         (c.method == Method::ReSpin ? 4 * kF64 * s.D * s.D : 0);
        int64_t bytes = fused + rotations + corrections + rotate_transient;
        std::string detail = "fused model " + format_bytes(fused) + ", rotations " + format_bytes(rotations);
        if (method_learns(c.method)) {
          const bool free_choice = c.micro_batch == 0 && !c.checkpoint_layers && target.capacity_bytes > 0;
          Learning l = learning_bytes(c, s, fused, plan.micro_batch, plan.checkpoint_layers);
          if (free_choice && l.bytes + (cuda ? 0 : host_resident) > target.capacity_bytes) {
            // The first of: checkpointed, then micro-batches of batch/2, batch/4, ..., 1.
            std::vector<int64_t> tries = {0};
            for (int64_t m = std::max<int64_t>(c.batch, 1) / 2; m >= 1; m /= 2) tries.push_back(m);
            for (int64_t m : tries) {
              l = learning_bytes(c, s, fused, m, true);
              plan.micro_batch = m;
              plan.checkpoint_layers = true;
              plan.learning_chosen = true;
              if (l.bytes + (cuda ? 0 : host_resident) <= target.capacity_bytes) break;
            }
          }
          bytes = std::max(bytes, l.bytes);
          detail += "; learning: " + l.detail;
        }
        add(p, bytes, detail);
        break;
      }
      case Phase::StatsAfter:
        add(p, fused + rotations + corrections + hooked(1, false),
            "fused model " + format_bytes(fused) + ", one window's forward with the online transforms");
        break;
      case Phase::Quantize:
        // RTN in place: one linear weight's grid search over blocks of rows (the rows in float32,
        // their candidates' errors: grid_search_transient) and its quantized self beside it.
        add(p, held + rotations + corrections + rtn_transient(s),
            "model " + format_bytes(held) + ", one weight's grid search");
        break;
      case Phase::Gptq: {
        const int64_t windows = std::max<int64_t>(c.samples, 1);
        const int64_t hidden = s.E * windows * s.T * s.D;
        // GPTQ quantizes the decoder layers' linear weights only: the largest is I x D.
        const int64_t hessian = gptq_transient(s);
        add(p, held + rotations + corrections + hidden + hessian +
                   forward_transient(s, std::min<int64_t>(4, windows), false, false),
            "model " + format_bytes(held) + ", hidden states of " + std::to_string(windows) + " windows " +
                format_bytes(hidden) + ", the Hessian's factorization and one weight in float64 " +
                format_bytes(hessian));
        break;
      }
      case Phase::EvalQuant:
        add(p, held + rotations + corrections + eval_quant(1),
            "quantized model " + format_bytes(held) + ", one window's forward with quantizers");
        break;
      case Phase::Write:
        // Float32 on the CPU is written as it is; from a GPU it is copied to the host first.
        add(p, held + rotations + corrections, "the run directory, streamed from the model", -1, held);
        break;
    }
  }

  // The time estimate: each modelled phase's FLOPs at the measured rates (docs/methods.md 1.8).
  if (target.flops_per_second > 0 && target.f64_flops_per_second > 0) {
    const double rate = target.flops_per_second, rate64 = target.f64_flops_per_second;
    const double f = forward_flops_per_token(s);
    const double T = static_cast<double>(s.T);
    const double eval_windows = c.eval_windows > 0 ? static_cast<double>(c.eval_windows)
                                                   : std::floor(target.eval_text_bytes / 4.0 / T);  // ~4 bytes per token
    for (PhaseMemory& pm : plan.phases) {
      switch (pm.phase) {
        case Phase::EvalFp: pm.seconds = eval_windows > 0 ? eval_windows * T * f / rate : -1; break;
        // With the online transforms and fake quantizers on every activation: about 1.5 forwards.
        case Phase::EvalQuant: pm.seconds = eval_windows > 0 ? 1.5 * eval_windows * T * f / rate : -1; break;
        // The statistics (histograms, moments) of every site cost about one more forward.
        case Phase::StatsBefore:
        case Phase::StatsAfter: pm.seconds = 2.0 * c.stats_windows * T * f / rate; break;
        case Phase::Rotate: {
          // Folding the rotations into every weight (float64), and the learning: forward and
          // backward (3 forwards' worth; 4 checkpointed, whose backward runs each layer again).
          double sec = 2.0 * static_cast<double>(s.P) * s.D / rate64;
          if (method_learns(c.method))
            sec += (plan.checkpoint_layers ? 4.0 : 3.0) * static_cast<double>(c.iters) * std::max<int64_t>(c.batch, 1) *
                   T * f / rate;
          pm.seconds = sec;
          break;
        }
        case Phase::Gptq: {
          const int64_t tokens = std::max<int64_t>(c.samples, 1) * s.T;
          pm.seconds = static_cast<double>(tokens) * f / rate + gptq_f64_flops(s, tokens) / rate64;
          break;
        }
        default: break;  // load, RTN, write: disk- and memory-bound, not modelled
      }
    }
  }
  return plan;
}

}  // namespace

MemoryPlan plan_memory(const CalibConfig& c, const ModelConfig& mc, const PlanTarget& target) {
  if (c.streaming == Streaming::Layers) return plan_of(c, mc, target, true);
  MemoryPlan whole = plan_of(c, mc, target, false);
  if (c.streaming == Streaming::Whole || whole.fits() || !c.can_stream()) return whole;
  MemoryPlan layers = plan_of(c, mc, target, true);
  layers.streaming_chosen = true;
  return layers;
}

std::string plan_refusal(const MemoryPlan& plan) {
  const PhaseMemory& p = plan.peak();
  std::string what = plan.target.capacity_given ? "the --device-memory budget of " + format_bytes(plan.target.capacity_bytes)
                                                : plan.target.device + " has " + format_bytes(plan.target.capacity_bytes);
  std::string change;
  if (p.phase == Phase::Rotate && plan.checkpoint_layers && plan.micro_batch == 1)
    change = "fewer --samples or a shorter --seq-len, or a larger device";
  else if (p.phase == Phase::Rotate)
    change = "--checkpoint-layers and --micro-batch 1 (or leave both unset and the plan chooses), or a shorter --seq-len";
  else if (p.phase == Phase::Gptq)
    change = "fewer --samples or a shorter --seq-len";
  else if (!plan.streamed)
    change = "--streaming layers (rtn and quarot, with RTN or GPTQ weights), or a larger device";
  else
    change = "a larger device, or a smaller model";
  return std::string("the run needs about ") + format_bytes(p.device_bytes) + " in its " + phase_name(p.phase) +
         " phase, more than " + what + " (try " + change + "; `respin plan` shows every phase)";
}

std::string format_duration(double seconds) {
  char buf[32];
  if (seconds < 60) std::snprintf(buf, sizeof buf, "%.*f s", seconds < 10 ? 1 : 0, seconds);
  else if (seconds < 3600) std::snprintf(buf, sizeof buf, "%.1f min", seconds / 60);
  else std::snprintf(buf, sizeof buf, "%.1f h", seconds / 3600);
  return buf;
}

std::string plan_table(const MemoryPlan& plan) {
  const bool cuda = plan.target.device != "cpu";
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-13s %12s%s %9s  %s\n", "phase", cuda ? "device" : "memory",
                cuda ? "         host" : "", "time", "what it holds");
  out += line;
  for (const PhaseMemory& p : plan.phases) {
    const std::string t = p.seconds >= 0 ? format_duration(p.seconds) : "-";
    if (cuda)
      std::snprintf(line, sizeof line, "%-13s %12s %12s %9s  %s\n", phase_name(p.phase), format_bytes(p.device_bytes).c_str(),
                    format_bytes(p.host_bytes).c_str(), t.c_str(), p.detail.c_str());
    else
      std::snprintf(line, sizeof line, "%-13s %12s %9s  %s\n", phase_name(p.phase), format_bytes(p.device_bytes).c_str(),
                    t.c_str(), p.detail.c_str());
    out += line;
  }
  return out;
}

nlohmann::json memory_plan_to_json(const MemoryPlan& plan) {
  nlohmann::json phases = nlohmann::json::array();
  for (const PhaseMemory& p : plan.phases) {
    nlohmann::json j = {{"phase", phase_name(p.phase)}, {"device_bytes", p.device_bytes}, {"detail", p.detail}};
    j["seconds"] = p.seconds >= 0 ? nlohmann::json(p.seconds) : nlohmann::json(nullptr);
    if (plan.target.device != "cpu") j["host_bytes"] = p.host_bytes;
    phases.push_back(j);
  }
  return {{"device", plan.target.device},
          {"precision", precision_name(plan.target.precision)},
          {"capacity_bytes", plan.target.capacity_bytes},
          {"capacity_given", plan.target.capacity_given},
          {"model_file_bytes", plan.target.model_file_bytes},
          {"model_bytes", plan.model_bytes},
          {"micro_batch", plan.micro_batch},
          {"checkpoint_layers", plan.checkpoint_layers},
          {"learning_chosen", plan.learning_chosen},
          {"streaming", plan.streamed ? "layers" : "whole"},
          {"streaming_chosen", plan.streaming_chosen},
          {"peak_phase", phase_name(plan.peak().phase)},
          {"peak_bytes", plan.peak().device_bytes},
          {"peak_host_bytes", plan.peak_host_bytes()},
          {"fits", plan.fits()},
          {"flops_per_second", plan.target.flops_per_second},
          {"f64_flops_per_second", plan.target.f64_flops_per_second},
          {"estimated_seconds", plan.estimated_seconds() >= 0 ? nlohmann::json(plan.estimated_seconds()) : nlohmann::json(nullptr)},
          {"phases", phases}};
}

int64_t parse_byte_size(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  size_t j = i;
  while (j < text.size() && (std::isdigit(static_cast<unsigned char>(text[j])) || text[j] == '.')) ++j;
  const std::string number = text.substr(i, j - i);
  std::string unit;
  for (size_t k = j; k < text.size(); ++k)
    if (!std::isspace(static_cast<unsigned char>(text[k]))) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(text[k])));
  auto bad = [&] {
    return Error("'" + text + "' is not a size (bytes, or a number with B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)");
  };
  if (number.empty() || std::count(number.begin(), number.end(), '.') > 1) throw bad();
  double scale = 0;
  if (unit.empty() || unit == "b") scale = 1;
  else if (unit == "k" || unit == "kb") scale = 1e3;
  else if (unit == "m" || unit == "mb") scale = 1e6;
  else if (unit == "g" || unit == "gb") scale = 1e9;
  else if (unit == "t" || unit == "tb") scale = 1e12;
  else if (unit == "kib") scale = 1024.0;
  else if (unit == "mib") scale = 1024.0 * 1024;
  else if (unit == "gib") scale = 1024.0 * 1024 * 1024;
  else if (unit == "tib") scale = 1024.0 * 1024 * 1024 * 1024;
  else throw bad();
  const double v = std::stod(number) * scale;
  if (!(v >= 1) || v > 9.0e18) throw Error("'" + text + "' is not a size between 1 byte and 9 EB");
  return static_cast<int64_t>(std::llround(v));
}

std::string format_bytes(int64_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (b >= 1e12) std::snprintf(buf, sizeof buf, "%.2f TB", b / 1e12);
  else if (b >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
  else if (b >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", b / 1e6);
  else if (b >= 1e3) std::snprintf(buf, sizeof buf, "%.1f kB", b / 1e3);
  else std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  return buf;
}

}  // namespace respin
