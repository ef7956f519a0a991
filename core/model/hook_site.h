// The places in a decoder forward where activations can be observed or replaced (torch-free, so
// that statistics, run records and the GUI can name them without libtorch).
#pragma once

#include <string>

namespace respin {

enum class HookSite {
  AttnInput,      // input of q_proj/k_proj/v_proj, [B, T, hidden]
  Query,          // after RoPE, [B, heads, T, head_dim]
  Key,            // after RoPE, [B, kv_heads, T, head_dim]
  Value,          // [B, kv_heads, T, head_dim]
  OProjInput,     // attention output before o_proj, [B, T, heads*head_dim]
  MlpInput,       // input of gate_proj/up_proj, [B, T, hidden]
  DownProjInput,  // silu(gate) * up, [B, T, intermediate]
  LmHeadInput,    // after the final norm, [B, T, hidden]; layer = -1
  AttnSkip,       // skip path of the residual add after attention (the layer input), [B, T, hidden]
  MlpSkip,        // skip path of the residual add after the MLP, [B, T, hidden]
};
// "attn_input", "q", "k", "v", "o_proj_input", "mlp_input", "down_proj_input", "lm_head_input",
// "attn_skip", "mlp_skip".
const char* hook_site_name(HookSite site);
// The inverse; respin::Error if unknown.
HookSite hook_site_from_name(const std::string& name);

}  // namespace respin
