// Corpus loading and the document-level split (see corpus.h).
#include "core/data/corpus.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/io/atomic_file.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace respin {

namespace fs = std::filesystem;

const char* split_name(Split s) {
  switch (s) {
    case Split::Train: return "train";
    case Split::Validation: return "validation";
    case Split::Test: return "test";
  }
  return "?";
}

Split split_of_document(size_t index) {
  if (index % 20 == 7) return Split::Validation;
  if (index % 20 == 17) return Split::Test;
  return Split::Train;
}

std::string data_home() {
  if (const char* h = std::getenv("RESPIN_HOME"); h && *h) return h;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/respin";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.cache/respin";
}

std::string default_corpus_dir() { return data_home() + "/corpus"; }

namespace {

constexpr const char* kFetchHint = " (run scripts/setup.sh to fetch the corpus)";

std::vector<std::string> sotu_files(const std::string& dir) {
  if (!fs::is_directory(dir)) throw Error(dir + ": corpus folder missing" + kFetchHint);
  std::vector<std::string> names;
  for (const DirEntry& e : list_directory(dir))
    if (e.is_regular_file && fs::path(e.name).extension() == ".txt") names.push_back(e.name);
  std::sort(names.begin(), names.end());  // byte order = chronological for <year>_<name>.txt
  if (names.empty()) throw Error(dir + ": no .txt files" + kFetchHint);
  return names;
}

std::vector<std::string> moby_dick_files(const std::string& dir) {
  const std::string index = dir + "/datapackage.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(index));
  } catch (const nlohmann::json::exception& e) {
    throw Error(index + ": not valid JSON: " + e.what());
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + kFetchHint);
  }
  std::vector<std::string> names;
  for (const auto& r : j.value("resources", nlohmann::json::array())) {
    std::string path = r.value("path", "");
    if (path.size() > 4 && path.substr(path.size() - 4) == ".txt")
      names.push_back(fs::path(path).filename());
  }
  if (names.empty()) throw Error(index + ": lists no .txt resources");
  return names;
}

}  // namespace

Corpus Corpus::load(const std::string& dir) {
  Corpus c;
  c.dir = dir;
  auto add = [&](const std::string& source, const std::string& sub, const std::vector<std::string>& files) {
    for (const auto& f : files) {
      CorpusDocument d;
      d.source = source;
      d.name = fs::path(f).stem();
      d.text = read_text_file(sub + "/" + f);
      c.documents.push_back(std::move(d));
    }
  };
  add("sotu", dir + "/sotu", sotu_files(dir + "/sotu"));
  add("moby-dick", dir + "/moby-dick", moby_dick_files(dir + "/moby-dick"));
  return c;
}

std::vector<const CorpusDocument*> Corpus::documents_of(Split split) const {
  std::vector<const CorpusDocument*> out;
  for (size_t i = 0; i < documents.size(); ++i)
    if (split_of_document(i) == split) out.push_back(&documents[i]);
  return out;
}

std::string Corpus::text_of(Split split) const {
  std::string out;
  for (const CorpusDocument* d : documents_of(split)) {
    if (!out.empty()) out += "\n\n";
    out += d->text;
  }
  return out;
}

}  // namespace respin
