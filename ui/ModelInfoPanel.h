// Panel showing what a model folder holds: architecture, sizes, dtype, parameters, tokenizer, and
// the Hadamard construction each rotated width gets (core/io/model_summary.h, as `respin info`),
// and why the folder cannot be calibrated when core's checks refuse it. It only formats: the
// window reads the folder off the GUI thread (MainWindow::beginOpenModel).
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

  // "Reading DIR…" while the window reads the folder.
  void showOpening(const QString& dir);
  // The folder's details (the error is cleared).
  void showSummary(const respin::ModelSummary& m);
  // A problem: the folder could not be summarized (fields cleared) or cannot be calibrated
  // (fields kept: what was read is still right).
  void showError(const QString& message, bool keepFields);
  QString fieldText(const QString& field) const;  // the value shown for a field, for tests
  QString errorText() const;
  const std::optional<respin::ModelSummary>& summary() const { return summary_; }

 private:
  void setField(const QString& field, const QString& value);
  QFormLayout* form_;
  QLabel* error_;
  std::optional<respin::ModelSummary> summary_;
};
