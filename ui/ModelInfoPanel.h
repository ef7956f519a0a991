// Panel showing what a model folder holds: architecture, sizes, dtype, parameters, tokenizer.
#pragma once

#include <QWidget>

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

 private:
  void setField(const QString& field, const QString& value);
  QFormLayout* form_;
  QLabel* error_;
};
