// Model folder details (see ModelInfoPanel.h). All parsing is core's; this only formats.
#include "ui/ModelInfoPanel.h"

#include <QFormLayout>
#include <QLabel>
#include <QLocale>
#include <QVBoxLayout>

#include "core/io/model_config.h"
#include "core/io/model_folder.h"
#include "core/tokenizer/tokenizer.h"

ModelInfoPanel::ModelInfoPanel(QWidget* parent) : QWidget(parent) {
  auto* layout = new QVBoxLayout(this);
  form_ = new QFormLayout;
  error_ = new QLabel;
  error_->setWordWrap(true);
  error_->setStyleSheet("color: #b00020");
  error_->hide();
  layout->addLayout(form_);
  layout->addWidget(error_);
  layout->addStretch(1);
  for (const char* f : {"Folder", "Architecture", "Parameters", "Layers", "Hidden size",
                        "Intermediate size", "Heads", "Vocabulary", "Max positions", "RoPE",
                        "Embeddings", "Stored dtype", "Weights on disk", "Tokenizer", "Hadamard hidden",
                        "Hadamard intermediate", "Hadamard head dim", "Hadamard heads"}) {
    auto* value = new QLabel(QStringLiteral("—"));
    value->setObjectName(QString::fromLatin1(f));
    value->setTextInteractionFlags(Qt::TextSelectableByMouse);
    form_->addRow(QString::fromLatin1(f) + ":", value);
  }
}

void ModelInfoPanel::setField(const QString& field, const QString& value) {
  if (auto* label = findChild<QLabel*>(field)) label->setText(value);
}

QString ModelInfoPanel::fieldText(const QString& field) const {
  auto* label = findChild<QLabel*>(field);
  return label ? label->text() : QString();
}

QString ModelInfoPanel::errorText() const { return error_->isHidden() ? QString() : error_->text(); }

bool ModelInfoPanel::showFolder(const QString& dir) {
  try {
    const respin::ModelSummary m = respin::summarize_model(dir.toStdString());
    const respin::ModelConfig& c = m.config;
    auto q = [](const std::string& s) { return QString::fromStdString(s); };
    setField("Folder", q(m.folder));
    setField("Architecture", q(c.architecture));
    setField("Parameters", QLocale().toString(static_cast<qlonglong>(m.parameters)));
    setField("Layers", QString::number(c.num_hidden_layers));
    setField("Hidden size", QString::number(c.hidden_size));
    setField("Intermediate size", QString::number(c.intermediate_size));
    setField("Heads", QString("%1 query / %2 key-value, head_dim %3")
                          .arg(c.num_attention_heads).arg(c.num_key_value_heads).arg(c.head_dim));
    setField("Vocabulary", QString::number(c.vocab_size));
    setField("Max positions", QString::number(c.max_position_embeddings));
    setField("RoPE", QString("theta %1, scaling %2").arg(c.rope_theta).arg(q(c.rope_scaling.type)));
    setField("Embeddings", c.tie_word_embeddings ? "tied" : "untied");
    setField("Stored dtype", q(c.torch_dtype));
    setField("Weights on disk", QString("%1 MB%2").arg(m.weight_bytes / 1e6, 0, 'f', 1).arg(m.sharded ? ", sharded" : ""));
    setField("Tokenizer", m.tokenizer ? QString("%1, %2 tokens").arg(q(m.tokenizer->kind)).arg(m.tokenizer->vocab_size)
                                      : QString("none (no tokenizer.json)"));
    const char* rows[] = {"Hadamard hidden", "Hadamard intermediate", "Hadamard head dim", "Hadamard heads"};
    for (size_t i = 0; i < m.hadamards.size() && i < 4; ++i) setField(rows[i], q(m.hadamards[i].text));
    summary_ = m;
    error_->hide();
    return true;
  } catch (const std::exception& e) {
    summary_.reset();
    error_->setText(QString::fromStdString(e.what()));
    error_->show();
    return false;
  }
}
