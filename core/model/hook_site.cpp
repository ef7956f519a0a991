#include "core/model/hook_site.h"

#include <array>

#include "core/util/error.h"

namespace respin {

namespace {
constexpr std::array<HookSite, 10> kAllSites = {
    HookSite::AttnInput,  HookSite::Query,         HookSite::Key,         HookSite::Value,    HookSite::OProjInput,
    HookSite::MlpInput,   HookSite::DownProjInput, HookSite::LmHeadInput, HookSite::AttnSkip, HookSite::MlpSkip,
};
}  // namespace


const char* hook_site_name(HookSite site) {
  switch (site) {
    case HookSite::AttnInput: return "attn_input";
    case HookSite::Query: return "q";
    case HookSite::Key: return "k";
    case HookSite::Value: return "v";
    case HookSite::OProjInput: return "o_proj_input";
    case HookSite::MlpInput: return "mlp_input";
    case HookSite::DownProjInput: return "down_proj_input";
    case HookSite::LmHeadInput: return "lm_head_input";
    case HookSite::AttnSkip: return "attn_skip";
    case HookSite::MlpSkip: return "mlp_skip";
  }
  return "?";
}

HookSite hook_site_from_name(const std::string& name) {
  std::string known;
  for (HookSite s : kAllSites) {
    if (name == hook_site_name(s)) return s;
    known += (known.empty() ? "" : ", ") + std::string(hook_site_name(s));
  }
  throw Error("unknown hook site '" + name + "' (known: " + known + ")");
}

}  // namespace respin
