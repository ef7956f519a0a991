// ui/: the workbench window under the offscreen platform: opening a model folder written by the
// test fills the model panel, and core's load checks say why it cannot be calibrated (here: no
// tokenizer, no weights); a broken folder shows core's error instead.
#include <gtest/gtest.h>

#include <QApplication>

#include "core/io/model_config.h"
#include "core/io/safetensors.h"
#include "tests/test_util.h"
#include "ui/MainWindow.h"
#include "ui/ModelInfoPanel.h"
#include "ui/RunPanel.h"

#include <QPushButton>

using respin::test::TempDir;
using respin::test::write_bytes;

TEST(Workbench, OpensModelFolderAndShowsDetails) {
  TempDir dir;
  write_bytes(dir.file("config.json"), R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
      "num_key_value_heads": 2, "vocab_size": 100, "torch_dtype": "bfloat16"})");
  respin::write_safetensors(dir.file("model.safetensors"), {});
  MainWindow w;
  w.show();
  // The details are read, but the folder cannot be calibrated: Start stays disabled, and the
  // panels and the status bar say why (core/io/model_check.h, the checks the CLI makes).
  EXPECT_FALSE(w.openModel(QString::fromStdString(dir.path())));
  ModelInfoPanel* p = w.modelPanel();
  EXPECT_EQ(p->errorText(), QString::fromStdString(dir.path() + ": no tokenizer.json"));
  EXPECT_FALSE(w.runPanel()->startButton()->isEnabled());
  EXPECT_EQ(w.runPanel()->problems(), "This folder cannot be calibrated: " + p->errorText());
  EXPECT_FALSE(w.statusText().contains("ready to calibrate")) << w.statusText().toStdString();
  EXPECT_EQ(p->fieldText("Folder"), QString::fromStdString(dir.path()));
  EXPECT_EQ(p->fieldText("Architecture"), "Qwen2ForCausalLM");
  EXPECT_EQ(p->fieldText("Layers"), "3");
  EXPECT_EQ(p->fieldText("Heads"), "4 query / 2 key-value, head_dim 16");
  EXPECT_EQ(p->fieldText("Stored dtype"), "bfloat16");
  EXPECT_EQ(p->fieldText("Tokenizer"), "none (no tokenizer.json)");
  // The window really renders: the offscreen grab has the window's size, and its text is drawn
  // (a share of the pixels is much darker than the background, as glyphs are).
  QImage img = w.grab().toImage();
  EXPECT_EQ(img.size(), w.size());
  const int background = qGray(img.pixel(img.width() - 2, img.height() - 2));
  int64_t dark = 0;
  for (int y = 0; y < img.height(); ++y)
    for (int x = 0; x < img.width(); ++x) dark += qGray(img.pixel(x, y)) < background - 100;
  const double share = static_cast<double>(dark) / (img.width() * img.height());
  EXPECT_GT(share, 0.002) << "background gray " << background;  // glyphs of a dozen fields
  EXPECT_LT(share, 0.3);                                         // not a black window
}

TEST(Workbench, BrokenFolderShowsErrorNamingTheProblem) {
  TempDir dir;
  write_bytes(dir.file("config.json"), R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64})");
  write_bytes(dir.file("model.safetensors"), "");
  MainWindow w;
  EXPECT_FALSE(w.openModel(QString::fromStdString(dir.path())));
  EXPECT_TRUE(w.modelPanel()->errorText().contains("'intermediate_size' is missing"))
      << w.modelPanel()->errorText().toStdString();
}

int main(int argc, char** argv) {
  setenv("QT_QPA_PLATFORM", "offscreen", 0);
  ::testing::InitGoogleTest(&argc, argv);
  QApplication app(argc, argv);
  return RUN_ALL_TESTS();
}
