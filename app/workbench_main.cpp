// `respin-workbench`: the Qt desktop application. Usage: respin-workbench [MODEL_DIR]
#include <QApplication>
#include <QCommandLineParser>

#include "core/util/version.h"
#include "ui/MainWindow.h"

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  QApplication::setApplicationName("ReSpin Workbench");
  QApplication::setApplicationVersion(RESPIN_VERSION_STRING);
  QCommandLineParser parser;
  parser.setApplicationDescription("Rotation-based post-training quantization workbench");
  parser.addHelpOption();
  parser.addVersionOption();
  parser.addPositionalArgument("model", "Hugging Face model folder to open");
  parser.process(app);
  MainWindow window;
  if (!parser.positionalArguments().isEmpty()) window.openModel(parser.positionalArguments().first());
  window.show();
  return app.exec();
}
