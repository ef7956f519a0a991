// Main window (see MainWindow.h).
#include "ui/MainWindow.h"

#include <QAction>
#include <QFileDialog>
#include <QMenuBar>
#include <QStatusBar>

#include "ui/ModelInfoPanel.h"

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent) {
  setWindowTitle("ReSpin Workbench");
  modelPanel_ = new ModelInfoPanel(this);
  setCentralWidget(modelPanel_);
  QMenu* file = menuBar()->addMenu("&File");
  QAction* open = file->addAction("&Open model folder…", this, &MainWindow::chooseModelFolder);
  open->setShortcut(QKeySequence::Open);
  file->addAction("&Quit", this, &QWidget::close)->setShortcut(QKeySequence::Quit);
  statusBar()->showMessage("Open a Hugging Face model folder (File > Open)");
  resize(720, 480);
}

bool MainWindow::openModel(const QString& dir) {
  const bool ok = modelPanel_->showFolder(dir);
  statusBar()->showMessage(ok ? "Loaded " + dir : "Could not open " + dir);
  return ok;
}

void MainWindow::chooseModelFolder() {
  const QString dir = QFileDialog::getExistingDirectory(this, "Open model folder");
  if (!dir.isEmpty()) openModel(dir);
}
