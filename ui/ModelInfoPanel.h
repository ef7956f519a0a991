// Panel showing what a model folder holds: architecture, sizes, dtype, parameters, tokenizer, and
// the Hadamard construction each rotated width gets (core/io/model_summary.h, as `respin info`).
#pragma once

#include <QWidget>

#include <optional>

#include "core/io/model_summary.h"

class QFormLayout;
class QLabel;

class ModelInfoPanel : public QWidget {
  Q_OBJECT
 public:
  explicit ModelInfoPanel(QWidget* parent = nullptr);

  // Reads the folder through core; on failure shows the error and returns false.
  bool showFolder(const QString& dir);
  QString fieldText(const QString& field) const;  // the value shown for a field, for tests
  QString errorText() const;
  const std::optional<respin::ModelSummary>& summary() const { return summary_; }

 private:
  void setField(const QString& field, const QString& value);
  QFormLayout* form_;
  QLabel* error_;
  std::optional<respin::ModelSummary> summary_;
};
