// The workbench's main window: assembles the panels; holds no logic of its own.
#pragma once

#include <QMainWindow>

class ModelInfoPanel;

class MainWindow : public QMainWindow {
  Q_OBJECT
 public:
  explicit MainWindow(QWidget* parent = nullptr);
  bool openModel(const QString& dir);
  ModelInfoPanel* modelPanel() const { return modelPanel_; }

 private slots:
  void chooseModelFolder();

 private:
  ModelInfoPanel* modelPanel_;
};
