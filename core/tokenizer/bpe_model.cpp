// BPE model: parsing of the tokenizer.json "model" object and the merge loop. The merge loop is
// the one of HF tokenizers (models/bpe/word.rs): a min-heap of (rank, position) over a linked
// list of symbols, so a word of n characters costs O(n log n) rather than O(n^2).
#include "core/tokenizer/bpe_model.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <queue>
#include <shared_mutex>

#include <nlohmann/json.hpp>

#include "core/tokenizer/unicode_text.h"
#include "core/util/error.h"

namespace respin::tok {

using nlohmann::json;

// Word -> ids memo shared by all threads. Words of running text repeat a lot, so this turns
// most of the merge work into one hash lookup. Like HF it stops growing when full instead of
// evicting, which keeps the lookups lock-free of writers once warm.
struct BpeModel::WordCache {
  static constexpr size_t kCapacity = 1 << 17;
  static constexpr size_t kMaxWordBytes = 256;  // HF caches only words shorter than this
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, std::vector<int>> map;
  std::atomic<bool> full{false};
};

BpeModel::BpeModel() : cache_(std::make_unique<WordCache>()) { byte_ids_.fill(-1); }
BpeModel::~BpeModel() = default;

namespace {

bool is_null_or_empty_string(const json& j) { return j.is_null() || (j.is_string() && j.get<std::string>().empty()); }

}  // namespace

std::unique_ptr<BpeModel> BpeModel::from_json(const json& model) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  if (!model.contains("vocab") || !model["vocab"].is_object()) throw Error("model.vocab must be an object (token -> id)");
  if (!model.contains("merges") || !model["merges"].is_array()) throw Error("model.merges must be an array");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !is_null_or_empty_string(model[key])) {
      throw Error(std::string("model.") + key + " is not supported (only null)");
    }
  }
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0)) {
    throw Error("model.dropout is not supported (BPE dropout makes encoding random)");
  }
  auto flag = [&](const char* key) {
    if (!model.contains(key) || model[key].is_null()) return false;
    if (!model[key].is_boolean()) throw Error(std::string("model.") + key + " must be a boolean");
    return model[key].get<bool>();
  };
  m->byte_fallback_ = flag("byte_fallback");
  m->fuse_unk_ = flag("fuse_unk");
  m->ignore_merges_ = flag("ignore_merges");
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    if (!model["unk_token"].is_string()) throw Error("model.unk_token must be a string or null");
    m->unk_token_ = model["unk_token"].get<std::string>();
  }
  m->parse_vocab(model["vocab"]);
  m->parse_merges(model["merges"]);
  if (m->byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      if (auto id = m->token_to_id(name)) m->byte_ids_[b] = *id;
    }
  }
  return m;
}

void BpeModel::parse_vocab(const json& vocab) {
  vocab_.reserve(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    if (!id_json.is_number_integer() || id_json.get<long long>() < 0 || id_json.get<long long>() > (1LL << 30)) {
      throw Error("model.vocab['" + token + "'] must be a non-negative integer id");
    }
    const int id = id_json.get<int>();
    vocab_.emplace(token, id);
    if (static_cast<size_t>(id) >= id_to_token_.size()) {
      id_to_token_.resize(id + 1);
      id_used_.resize(id + 1, false);
    }
    if (!id_used_[id]) {
      id_to_token_[id] = token;
      id_used_[id] = true;
    }
  }
}

void BpeModel::parse_merges(const json& merges) {
  merges_.reserve(merges.size());
  int rank = 0;
  for (const auto& merge : merges) {
    if (merge.is_string()) {
      // The legacy form "a b": exactly one space (HF: convert_merges_to_hashmap).
      const auto& s = merge.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        throw Error("model.merges[" + std::to_string(rank) + "] '" + s + "' is not of the form 'a b'");
      }
      add_merge(s.substr(0, space), s.substr(space + 1), rank);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      add_merge(merge[0].get<std::string>(), merge[1].get<std::string>(), rank);
    } else {
      throw Error("model.merges[" + std::to_string(rank) + "] must be \"a b\" or [\"a\", \"b\"]");
    }
    ++rank;
  }
  num_merges_ = static_cast<size_t>(rank);
}

void BpeModel::add_merge(const std::string& a, const std::string& b, int rank) {
  // HF refuses merges whose parts or result are not in the vocabulary (MergeTokenOutOfVocabulary).
  auto lookup = [&](const std::string& token) {
    auto it = vocab_.find(token);
    if (it == vocab_.end()) {
      throw Error("model.merges[" + std::to_string(rank) + "] refers to '" + token + "', which is not in model.vocab");
    }
    return it->second;
  };
  const int a_id = lookup(a);
  const int b_id = lookup(b);
  const int new_id = lookup(a + b);
  const uint64_t key = (static_cast<uint64_t>(a_id) << 32) | static_cast<uint32_t>(b_id);
  merges_[key] = Merge{rank, new_id};  // a repeated pair keeps the later rank, as HF's map does
}

std::optional<int> BpeModel::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_used_[id]) return nullptr;
  return &id_to_token_[id];
}

const BpeModel::Merge* BpeModel::find_merge(int a, int b) const {
  auto it = merges_.find((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b));
  return it == merges_.end() ? nullptr : &it->second;
}

// One symbol per character (HF merge_word): the character's own token, else its bytes as
// <0xNN> tokens (byte_fallback), else the unknown token (consecutive ones fused if fuse_unk),
// else nothing at all (HF drops the character when there is no unk_token either).
void BpeModel::initial_symbols(std::string_view word, std::vector<int>& ids, std::vector<int>& lens) const {
  std::optional<std::pair<int, int>> pending_unk;  // (id, byte length)
  std::string ch;
  for (size_t i = 0; i < word.size();) {
    const size_t n = utf8_len_at(word, i);
    ch.assign(word.substr(i, n));
    i += n;
    if (auto it = vocab_.find(ch); it != vocab_.end()) {
      if (pending_unk) {
        ids.push_back(pending_unk->first);
        lens.push_back(pending_unk->second);
        pending_unk.reset();
      }
      ids.push_back(it->second);
      lens.push_back(static_cast<int>(n));
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : ch) {
          ids.push_back(byte_ids_[b]);
          lens.push_back(1);
        }
        continue;
      }
    }
    if (!unk_token_) continue;
    auto unk = vocab_.find(*unk_token_);
    if (unk == vocab_.end()) throw Error("model.unk_token '" + *unk_token_ + "' is not in model.vocab");
    if (pending_unk && fuse_unk_) {
      pending_unk->second += static_cast<int>(n);
    } else {
      if (pending_unk) {
        ids.push_back(pending_unk->first);
        lens.push_back(pending_unk->second);
      }
      pending_unk = std::make_pair(unk->second, static_cast<int>(n));
    }
  }
  if (pending_unk) {
    ids.push_back(pending_unk->first);
    lens.push_back(pending_unk->second);
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int>& out) const {
  std::vector<int> ids, lens;
  ids.reserve(word.size());
  lens.reserve(word.size());
  initial_symbols(word, ids, lens);
  const int n = static_cast<int>(ids.size());
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }

  struct Candidate {
    int rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push = [&](int pos) {
    if (const Merge* m = find_merge(ids[pos], ids[next[pos]])) queue.push({m->rank, pos, m->new_id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    // Skip entries made stale by earlier merges: symbol gone, no right neighbour, or the pair
    // at this position is no longer the one this entry was queued for.
    if (lens[top.pos] == 0 || next[top.pos] < 0) continue;
    const int right = next[top.pos];
    const Merge* m = find_merge(ids[top.pos], ids[right]);
    if (m == nullptr || m->new_id != top.new_id) continue;

    ids[top.pos] = top.new_id;
    lens[top.pos] += lens[right];
    lens[right] = 0;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    if (prev[top.pos] >= 0) push(prev[top.pos]);
    if (next[top.pos] >= 0) push(top.pos);
  }
  for (int i = 0; i < n; ++i) {
    if (lens[i] != 0) out.push_back(ids[i]);
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  const std::string key(word);
  if (ignore_merges_) {
    // LLaMA-3: a pre-token that is itself a vocabulary entry is emitted as is, even when the
    // merges would split it differently.
    if (auto it = vocab_.find(key); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < WordCache::kMaxWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_->mutex);
    if (auto it = cache_->map.find(key); it != cache_->map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable && !cache_->full.load(std::memory_order_relaxed)) {
    std::unique_lock lock(cache_->mutex);
    if (cache_->map.size() < WordCache::kCapacity) {
      cache_->map.emplace(key, std::vector<int>(out.begin() + static_cast<std::ptrdiff_t>(first), out.end()));
    } else {
      cache_->full.store(true, std::memory_order_relaxed);
    }
  }
}

}  // namespace respin::tok
