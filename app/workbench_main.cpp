// `respin-workbench`: the Qt desktop application.
//   respin-workbench [MODEL_DIR] [--db F]
//   respin-workbench --screenshot FILE --view model|run|calibration|outliers|runs|compare
//                    [--run ID] [--run2 ID] [--db F] [--model DIR] [--dark] [--size WxH]
// (--view compare without --run2: the previous run of the same model)
// --screenshot renders one view offscreen to a PNG and exits (docs, tests, checking a run on a
// server): exit 0 when the view showed what was asked, 1 with a one-line error otherwise.
#include <QApplication>
#include <QCommandLineParser>
#include <QDir>
#include <QIcon>
#include <QTimer>

#include <cstdio>

#include "core/util/version.h"
#include "ui/CompareView.h"
#include "ui/MainWindow.h"
#include "ui/ModelInfoPanel.h"
#include "ui/RunPanel.h"

int main(int argc, char** argv) {
  // Screenshots need no display: pick the offscreen platform before QApplication reads it.
  for (int i = 1; i < argc; ++i)
    if (QString(argv[i]) == "--screenshot" && qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM"))
      qputenv("QT_QPA_PLATFORM", "offscreen");
  QApplication app(argc, argv);
  QApplication::setApplicationName("ReSpin Workbench");
  QApplication::setOrganizationName("respin");
  QApplication::setApplicationVersion(RESPIN_VERSION_STRING);
  QApplication::setWindowIcon(QIcon(":/icons/respin-workbench.svg"));
  QCommandLineParser parser;
  parser.setApplicationDescription("Rotation-based post-training quantization workbench");
  parser.addHelpOption();
  parser.addVersionOption();
  parser.addPositionalArgument("model", "Hugging Face model folder to open");
  QCommandLineOption db("db", "Run store (default <data home>/runs.db)", "file");
  QCommandLineOption shot("screenshot", "Render one view offscreen to a PNG and exit", "file");
  QCommandLineOption view("view", "View for --screenshot: model, run, calibration, outliers, runs, compare", "view", "model");
  QCommandLineOption run("run", "Run id for --view outliers/compare", "id");
  QCommandLineOption run2("run2", "Second run id for --view compare (default: the previous run of the same model)", "id");
  QCommandLineOption model("model", "Model folder to open", "dir");
  QCommandLineOption dark("dark", "Dark palette");
  QCommandLineOption size("size", "Window size for --screenshot", "WxH", "1400x900");
  for (const auto& o : {db, shot, view, run, run2, model, dark, size}) parser.addOption(o);
  parser.process(app);

  MainWindow window(nullptr, parser.value(db));
  if (parser.isSet(dark)) window.setDarkTheme(true);
  QString modelDir = parser.value(model);
  if (modelDir.isEmpty() && !parser.positionalArguments().isEmpty()) modelDir = parser.positionalArguments().first();
  const bool screenshot = parser.isSet(shot);
  auto fail = [&](const QString& m) {
    std::fprintf(stderr, "error: %s\n", m.toLocal8Bit().constData());
    return 1;
  };
  if (!screenshot) {
    window.show();
    // Read off the GUI thread: the window is up at once and says "Reading…" meanwhile.
    if (!modelDir.isEmpty()) window.beginOpenModel(modelDir);
    return app.exec();
  }
  // A folder that is read but cannot be calibrated still shows (its details and why); one that
  // cannot be read at all is an error.
  if (!modelDir.isEmpty() && !window.openModel(modelDir) && !window.modelPanel()->summary())
    return fail(window.modelPanel()->errorText());

  const QString v = parser.value(view);
  const QStringList sz = parser.value(size).split('x');
  if (sz.size() != 2 || sz[0].toInt() < 200 || sz[1].toInt() < 200) return fail("--size must be WxH, e.g. 1400x900");
  window.resize(sz[0].toInt(), sz[1].toInt());
  window.show();
  if (v == "outliers" || v == "compare") {
    bool ok = false;
    const qint64 id = parser.value(run).toLongLong(&ok);
    if (!ok) return fail("--view " + v + " needs --run ID");
    if (v == "outliers" && !window.showRunOutliers(id)) return fail(QString("run %1 has no statistics in %2").arg(id).arg(window.dbPath()));
    if (v == "compare") {
      qint64 other = -1;
      if (parser.isSet(run2)) {
        other = parser.value(run2).toLongLong(&ok);
        if (!ok) return fail("--run2 needs a run id, got '" + parser.value(run2) + "'");
      } else {
        QString why;
        other = CompareView::previousRunOfSameModel(window.dbPath(), id, &why);
        if (other < 0) return fail(why);
      }
      if (!window.compareRuns(other, id))
        return fail(QString("cannot compare runs %1 and %2: %3").arg(other).arg(id).arg(window.compareView()->messageText()));
    }
  } else if (v != "model" && v != "run" && v != "runs" && v != "calibration") {
    return fail("unknown --view '" + v + "' (model, run, calibration, outliers, runs, compare)");
  }
  window.showView(v);
  // Let layouts and queued replots settle, then grab.
  for (int i = 0; i < 5; ++i) {
    QApplication::processEvents();
    QApplication::sendPostedEvents();
  }
  const QString file = parser.value(shot);
  if (!window.grab().save(file, "PNG")) return fail(file + ": cannot write the PNG");
  std::printf("%s\n", QDir(file).absolutePath().toLocal8Bit().constData());
  return 0;
}
