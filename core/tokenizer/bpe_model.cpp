// BPE model: parsing of the tokenizer.json "model" object and the merge loop. The merge loop is
// the one of HF tokenizers (models/bpe/word.rs): a min-heap of (rank, position) over a linked
// list of symbols, so a word of n characters costs O(n log n) rather than O(n^2).
#include "core/tokenizer/bpe_model.h"

#include <algorithm>

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

bool is_null_or_empty_string(const json& j) {
  return j.is_null() || (j.is_string() && j.get<std::string>().empty());
}

}  // namespace

std::unique_ptr<BpeModel> BpeModel::from_json(const json& model) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  if (!model.contains("vocab") || !model["vocab"].is_object())
    throw Error("model.vocab must be an object (token -> id)");
  if (!model.contains("merges") || !model["merges"].is_array())
    throw Error("model.merges must be an array");
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
  m->split_at_metaspace_ = m->metaspace_splits_are_final();
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
  // Ids index a table: gaps are allowed, but not ids far beyond what the vocabulary's size can
  // use (one such id would allocate gigabytes; found by tests/fuzz/fuzz_tokenizer).
  const long long id_limit = std::max<long long>(1LL << 20, 4LL * static_cast<long long>(vocab.size()));
  for (const auto& [token, id_json] : vocab.items()) {
    if (!id_json.is_number_integer() || id_json.get<long long>() < 0)
      throw Error("model.vocab['" + token + "'] must be a non-negative integer id");
    if (id_json.get<long long>() >= id_limit)
      throw Error("model.vocab['" + token + "'] has id " + std::to_string(id_json.get<long long>()) +
                  ", beyond any use by a vocabulary of " + std::to_string(vocab.size()) + " tokens (limit " +
                  std::to_string(id_limit) + ")");
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
        throw Error("model.merges[" + std::to_string(rank) + "] '" + s +
                    "' is not of the form 'a b'");
      }
      add_merge(s.substr(0, space), s.substr(space + 1), rank);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
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
      throw Error("model.merges[" + std::to_string(rank) + "] refers to '" + token +
                  "', which is not in model.vocab");
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
void BpeModel::initial_symbols(std::string_view word, std::vector<int>& ids,
                               std::vector<int>& lens) const {
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
    if (unk == vocab_.end())
      throw Error("model.unk_token '" + *unk_token_ + "' is not in model.vocab");
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

  // A doubly linked list over the symbols, one 16-byte record each (HF word.rs): a long word
  // touches one cache line per symbol instead of one per array.
  struct Symbol {
    int id, prev, next, len;  // len 0: merged into its left neighbour
  };
  std::vector<Symbol> sym(n);
  for (int i = 0; i < n; ++i) sym[i] = {ids[i], i - 1, i + 1 < n ? i + 1 : -1, lens[i]};

  // Candidates are (rank << 32 | position), so the smallest key is the lowest rank, leftmost.
  // A rank identifies one merge, hence one pair: an entry is current iff the pair now at its
  // position still has that rank (symbols only grow, so a changed pair has a different rank).
  auto key = [](int rank, int pos) {
    return (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(pos);
  };
  std::vector<uint64_t> initial;
  for (int i = 0; i + 1 < n; ++i) {
    if (const Merge* m = find_merge(sym[i].id, sym[i + 1].id)) initial.push_back(key(m->rank, i));
  }
  // Built from the whole vector at once: O(n) heapify instead of n pushes.
  std::priority_queue<uint64_t, std::vector<uint64_t>, std::greater<uint64_t>> queue(
      std::greater<uint64_t>(), std::move(initial));
  auto push = [&](int pos) {
    if (const Merge* m = find_merge(sym[pos].id, sym[sym[pos].next].id))
      queue.push(key(m->rank, pos));
  };

  while (!queue.empty()) {
    const uint64_t top = queue.top();
    queue.pop();
    const int pos = static_cast<int>(top & 0xFFFFFFFFu);
    const int rank = static_cast<int>(top >> 32);
    Symbol& left = sym[pos];
    // Skip entries made stale by earlier merges: symbol gone, no right neighbour, or another pair.
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = sym[left.next];
    const Merge* m = find_merge(left.id, right.id);
    if (m == nullptr || m->rank != rank) continue;

    left.id = m->new_id;
    left.len += right.len;
    left.next = right.next;
    right.len = 0;
    if (left.next >= 0) sym[left.next].prev = pos;
    if (left.prev >= 0) push(left.prev);
    if (left.next >= 0) push(pos);
  }
  for (const Symbol& s : sym) {
    if (s.len != 0) out.push_back(s.id);
  }
}

namespace {

const std::string kMetaspace = "\xE2\x96\x81";  // U+2581 "▁", SentencePiece's space

}  // namespace

// LLaMA-2/Mistral tokenizers have no pre-tokenizer: the whole input is one BPE "word", and the
// merge loop over megabytes is slow and uncacheable. If no vocabulary token has "▁" right after
// a non-"▁" character, no merge can ever join a symbol ending before such a "▁" with the one
// starting at it (every merge result is a vocabulary token, checked at load), so the word can be
// cut there and the pieces merged independently with the same result.
bool BpeModel::metaspace_splits_are_final() const {
  if (vocab_.find(kMetaspace) == vocab_.end()) return false;
  for (const auto& [token, id] : vocab_) {
    for (size_t k = token.find(kMetaspace, 1); k != std::string::npos;
         k = token.find(kMetaspace, k + 1)) {
      if (k < kMetaspace.size() ||
          token.compare(k - kMetaspace.size(), kMetaspace.size(), kMetaspace) != 0) {
        return false;
      }
    }
  }
  return true;
}

void BpeModel::tokenize(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    // LLaMA-3: a pre-token that is itself a vocabulary entry is emitted as is, even when the
    // merges would split it differently.
    if (auto it = vocab_.find(std::string(word)); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (!split_at_metaspace_) {
    tokenize_cached(word, out);
    return;
  }
  size_t begin = 0;
  for (size_t k = word.find(kMetaspace, 1); k != std::string_view::npos;
       k = word.find(kMetaspace, k + 1)) {
    if (k >= kMetaspace.size() &&
        word.compare(k - kMetaspace.size(), kMetaspace.size(), kMetaspace) == 0) {
      continue;  // inside a run of "▁": tokens such as "▁▁▁" may join it
    }
    tokenize_cached(word.substr(begin, k - begin), out);
    begin = k;
  }
  tokenize_cached(word.substr(begin), out);
}

void BpeModel::tokenize_cached(std::string_view word, std::vector<int>& out) const {
  const bool cacheable = word.size() < WordCache::kMaxWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
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
      cache_->map.emplace(
          std::move(key),
          std::vector<int>(out.begin() + static_cast<std::ptrdiff_t>(first), out.end()));
    } else {
      cache_->full.store(true, std::memory_order_relaxed);
    }
  }
}

}  // namespace respin::tok
