// Model folder details (see ModelInfoPanel.h). All parsing is core's; this only formats.
#include "ui/ModelInfoPanel.h"

#include <QFormLayout>
#include <QLabel>
#include <QLocale>
#include <QResizeEvent>
#include <QVBoxLayout>

#include "core/io/model_config.h"

namespace {

const char* const kFields[] = {"Folder", "Architecture", "Parameters", "Layers", "Hidden size",
                               "Intermediate size", "Heads", "Vocabulary", "Max positions", "RoPE",
                               "Embeddings", "Stored dtype", "Weights on disk", "Tokenizer", "Hadamard hidden",
                               "Hadamard intermediate", "Hadamard head dim", "Hadamard heads"};

// A path elided in the middle to the width it gets (a path has no word breaks to wrap at); the
// whole path is its tool tip and its "fullText" property.
class PathLabel : public QLabel {
 public:
  void setPath(const QString& p) {
    setProperty("fullText", p);
    setToolTip(p);
    elide();
  }
  QSize sizeHint() const override { return QSize(fontMetrics().horizontalAdvance(QStringLiteral("/models/xxxxxxxx")), QLabel::sizeHint().height()); }
  QSize minimumSizeHint() const override { return sizeHint(); }

 protected:
  void resizeEvent(QResizeEvent* e) override {
    QLabel::resizeEvent(e);
    elide();
  }

 private:
  void elide() { setText(fontMetrics().elidedText(property("fullText").toString(), Qt::ElideMiddle, std::max(width(), 40))); }
};

}  // namespace

ModelInfoPanel::ModelInfoPanel(QWidget* parent) : QWidget(parent) {
  auto* layout = new QVBoxLayout(this);
  form_ = new QFormLayout;
  form_->setRowWrapPolicy(QFormLayout::DontWrapRows);
  error_ = new QLabel;
  error_->setWordWrap(true);
  error_->setObjectName("error");
  error_->setStyleSheet("color: #b00020");
  error_->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
  error_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  error_->hide();
  layout->addLayout(form_);
  layout->addWidget(error_);
  layout->addStretch(1);
  for (const char* f : kFields) {
    QLabel* value = f == std::string("Folder") ? new PathLabel : new QLabel;
    value->setObjectName(QString::fromLatin1(f));
    value->setTextInteractionFlags(Qt::TextSelectableByMouse);
    if (f != std::string("Folder")) {
      // Long values (a Hadamard construction, the heads) wrap at the dock's width.
      value->setWordWrap(true);
      value->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
    }
    form_->addRow(QString::fromLatin1(f) + ":", value);
  }
  setField("Folder", QString());
  for (const char* f : kFields) setField(f, QStringLiteral("—"));
}

void ModelInfoPanel::setField(const QString& field, const QString& value) {
  auto* label = findChild<QLabel*>(field);
  if (!label) return;
  if (field == "Folder") static_cast<PathLabel*>(label)->setPath(value);
  else label->setText(value);
}

QString ModelInfoPanel::fieldText(const QString& field) const {
  auto* label = findChild<QLabel*>(field);
  if (!label) return QString();
  return label->property("fullText").isValid() ? label->property("fullText").toString() : label->text();
}

QString ModelInfoPanel::errorText() const { return error_->isHidden() ? QString() : error_->text(); }

void ModelInfoPanel::showOpening(const QString& dir) {
  summary_.reset();
  for (const char* f : kFields) setField(f, QStringLiteral("—"));
  setField("Folder", dir);
  error_->setText("Reading the folder and checking its weights…");
  error_->setStyleSheet(QString());
  error_->show();
}

void ModelInfoPanel::showSummary(const respin::ModelSummary& m) {
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
}

void ModelInfoPanel::showError(const QString& message, bool keepFields) {
  if (!keepFields) {
    summary_.reset();
    for (const char* f : kFields)
      if (f != std::string("Folder")) setField(f, QStringLiteral("—"));
  }
  error_->setText(message);
  error_->setStyleSheet("color: #b00020");
  error_->show();
}
