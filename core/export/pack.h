// The exact-format pieces of the compressed-tensors export (docs/export.md, "compressed-tensors"):
// the int32 packing of integer weight codes and zero points that llm-compressor writes and vLLM
// loads ("pack-quantized"), the int8 storage of "int-quantized", and config.json's
// quantization_config (written, and parsed back when an exported folder is loaded). Torch-free.
//
// Code conventions (the workbench's quantizers, core/quant/quantizer.h):
//   symmetric:  signed codes q in [-2^(b-1), 2^(b-1) - 1], w = q * scale
//   asymmetric: unsigned codes u in [0, 2^b - 1] and an unsigned integer zero point z in the same
//               range, w = (u - z) * scale
// compressed-tensors keeps both as signed int8 in [-2^(b-1), 2^(b-1) - 1] (an asymmetric code and
// zero point are u - 2^(b-1) and z - 2^(b-1); the difference, and so w, is unchanged) and adds
// 2^(b-1) before packing. The bits that land in the file are therefore q + 2^(b-1) for symmetric
// codes and u itself for asymmetric ones.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace respin {

// ---------------------------------------------------------------------------------------------
// pack-quantized bit packing.
//
// Row-major [rows, cols] codes become row-major [rows, ceil(cols * bits / 32)] int32 words, packed
// along each row (the input-feature axis of a Linear weight [out, in]): code c of a row occupies
// bits [(c % k) * bits, (c % k + 1) * bits) of word c / k, k = 32 / bits, element 0 in the least
// significant bits. Unused high bits of a row's last word are zero. Supported widths: 2, 4 and 8
// (16, 8 and 4 codes per word). Other widths throw respin::Error "compressed-tensors
// pack-quantized has no N-bit packing ..." (3 bits in particular: compressed-tensors has written
// two incompatible 3-bit layouts, see docs/export.md).

// Throws respin::Error unless bits is 2, 4 or 8.
void check_ct_pack_bits(int bits);
// ceil(cols * bits / 32); validates bits and cols >= 0.
int64_t ct_packed_cols(int64_t cols, int bits);

// q: rows * cols codes (signed when symmetric, unsigned when not, as above). Throws respin::Error
// for an unsupported width, negative sizes, q.size() != rows * cols, or a code out of range (the
// message names its row and column).
std::vector<int32_t> pack_int_rows(const std::vector<int32_t>& q, int64_t rows, int64_t cols, int bits,
                                   bool symmetric);
// The inverse: rows * ct_packed_cols(cols, bits) words back to rows * cols codes. Throws
// respin::Error for a size mismatch or non-zero padding bits (which would mean the wrong cols).
std::vector<int32_t> unpack_int_rows(const std::vector<int32_t>& packed, int64_t rows, int64_t cols, int bits,
                                     bool symmetric);

// Asymmetric zero points, row-major [out_features, groups] unsigned codes in [0, 2^b - 1]. They
// are packed along the OUTPUT axis (compressed-tensors packs weight_zero_point with packed_dim=0):
// the result is row-major [ceil(out_features * bits / 32), groups]; zero point (o, g) sits in
// word (o / k, g) at bit (o % k) * bits. Symmetric schemes store no zero point. Same errors as
// pack_int_rows.
std::vector<int32_t> pack_zero_points(const std::vector<int32_t>& zp, int64_t out_features, int64_t groups,
                                      int bits);
std::vector<int32_t> unpack_zero_points(const std::vector<int32_t>& packed, int64_t out_features,
                                        int64_t groups, int bits);

// ---------------------------------------------------------------------------------------------
// int-quantized storage (W8A8): the weight stays [out, in] as int8 in compressed-tensors' signed
// form (symmetric q as is; asymmetric u - 2^(b-1)); an asymmetric zero point likewise, unpacked.
// bits 2..8. Throws respin::Error for a bad width or a code out of range.
std::vector<int8_t> ct_int8_codes(const std::vector<int32_t>& q, int bits, bool symmetric);
// The inverse (range-checked).
std::vector<int32_t> ct_codes_from_int8(const std::vector<int8_t>& stored, int bits, bool symmetric);

// Columns of weight_scale (and of the zero point) for a Linear with in_features inputs: 1 for per
// channel (group_size 0), in_features / group_size for groups. Throws respin::Error when the group
// does not divide in_features (compressed-tensors would round up, vLLM rounds down).
int64_t ct_num_groups(int64_t in_features, int64_t group_size);

// ---------------------------------------------------------------------------------------------
// quantization_config.

// One compressed-tensors TransformArgs: where a transform of the scheme is applied.
struct CtTransformArgs {
  std::vector<std::string> targets;  // module names, class names or "re:<regex>"
  // "input" / "output" (online, on activations), "weight_input" / "weight_output" (offline, already
  // fused into the weights), "q_attn" / "k_cache" (online, on queries / keys in attention).
  std::string location;
  bool inverse = false;
  std::vector<std::string> ignore;
  bool operator==(const CtTransformArgs& o) const;
};

// One compressed-tensors TransformScheme (a transform_config config group).
struct CtTransform {
  std::string name;             // the config group's key, e.g. "R4"; also names the stored weight
  std::string type = "hadamard";  // "hadamard" (Sylvester) or "random-hadamard" (weight from the file)
  int64_t head_dim = 0;         // > 0: block-diagonal with blocks of this size; 0: null
  std::vector<CtTransformArgs> apply;
  bool operator==(const CtTransform& o) const;
};

struct CtScheme {
  int weight_bits = 4;
  bool weight_symmetric = true;
  int64_t group_size = 0;  // 0 = one scale per output channel ("channel"), else "group"
  // 16 = weight-only. Otherwise int activations quantized per token ("token"), computed at run
  // time (dynamic); the only activation quantization this export writes.
  int activation_bits = 16;
  bool activation_symmetric = true;
  bool activation_dynamic = true;  // must stay true when activation_bits < 16
  std::vector<std::string> targets = {"Linear"};
  std::vector<std::string> ignore = {"lm_head"};
  std::vector<CtTransform> transforms;  // transform_config (empty = "{}")
  // "" = ct_format() chooses; else "pack-quantized" or "int-quantized".
  std::string format;
  // quantization_config.version: informational (vLLM does not read it).
  std::string version = "0.12.2";
  bool operator==(const CtScheme& o) const;
};

// The storage format: s.format when set, else "int-quantized" for W8A8 per channel symmetric (as
// llm-compressor writes it: vLLM's most widely supported int8 path) and "pack-quantized" otherwise.
std::string ct_format(const CtScheme& s);

// Throws respin::Error naming the field for anything the writer cannot express.
void validate_ct_scheme(const CtScheme& s);

// config.json's "quantization_config" object (validates first). The top-level "format" and the
// "format" of every config group are ct_format(s).
nlohmann::json compressed_tensors_quantization_config(const CtScheme& s);

// Parses a quantization_config object (the value, not the whole config.json). Accepts what this
// writer writes and what llm-compressor writes for the same schemes (extra fields it may carry:
// per-group "format", "scale_dtype"/"zp_dtype" defaults, transform "precision", observers);
// anything else, or a value it cannot represent, is a respin::Error naming `source` and the
// field, e.g. "x/config.json: quantization_config.config_groups.group_0.weights.type: ...".
// The returned format is "" when it equals the ct_format() choice, so write(parse(x)) == x.
CtScheme parse_compressed_tensors_config(const nlohmann::json& quantization_config, const std::string& source);

}  // namespace respin
