// Plots that export themselves: every plot of the workbench is an ExportablePlot, a QCustomPlot
// that writes its picture as PNG, SVG or PDF (QCustomPlot's savers; SVG through QSvgGenerator)
// and its data as CSV, from code (exportTo, for tests and batch use) or from its right-click menu.
// The CSV is the plotted data: by default one row per data point of every visible graph, bar
// chart and colour map ("series,x,y" / "series,x,y,value"); a view that knows its data better
// (exact counts instead of the values drawn on a log axis, labels, flags) supplies its own.
// The plot follows the application palette (light or dark): background, axes, grid, legend and
// titles are recoloured whenever the palette changes and when the plot is first shown.
#pragma once

#include <qcustomplot.h>

#include <QString>
#include <functional>

class ExportablePlot : public QCustomPlot {
  Q_OBJECT
 public:
  // `exportName`: the file name offered by the export dialogs ("histogram" -> histogram.png).
  explicit ExportablePlot(const QString& exportName, QWidget* parent = nullptr);

  void setCsvSource(std::function<QString()> source) { csvSource_ = std::move(source); }
  // The CSV text (header line first, "\n" line ends).
  QString csv() const;
  // Writes by the file's suffix: .png, .svg, .pdf (the picture) or .csv (the data). width/height:
  // the picture's size in pixels (0: the widget's size; a hidden widget that was never laid out
  // gets 800 x 500). False with *error set (naming the file) on failure; never throws.
  bool exportTo(const QString& path, QString* error = nullptr, int width = 0, int height = 0);
  const QString& exportName() const { return exportName_; }
  void setExportName(const QString& name) { exportName_ = name; }

 signals:
  // After an export from the context menu: what happened, for the view's message line.
  void exportFinished(bool ok, const QString& message);

 protected:
  void contextMenuEvent(QContextMenuEvent* event) override;
  void changeEvent(QEvent* event) override;
  void showEvent(QShowEvent* event) override;

 private:
  void exportWithDialog(const QString& suffix);
  std::function<QString()> csvSource_;
  QString exportName_;
};

namespace plot_export {

// The picture savers behind ExportablePlot::exportTo (also usable on any QCustomPlot).
bool savePng(QCustomPlot* plot, const QString& path, int width, int height, QString* error);
bool saveSvg(QCustomPlot* plot, const QString& path, int width, int height, QString* error);
bool savePdf(QCustomPlot* plot, const QString& path, int width, int height, QString* error);
// Colours a plot's frame from a palette: Base for the background, Text for axes, labels, titles and
// legend text, a blend of the two for the grid. Graph colours are the views' and stay as they are.
void applyPalette(QCustomPlot* plot, const QPalette& palette);
// Writes `text` to `path` (UTF-8) atomically; false with *error set on failure.
bool writeText(const QString& path, const QString& text, QString* error);

// Every visible graph, bar chart and colour map of the plot as CSV (see the file comment).
QString defaultCsv(QCustomPlot* plot);
// One CSV field: quoted when it holds a comma, quote or line break.
QString csvField(const QString& s);
// A double for CSV: shortest exact form ("%.17g"), empty for NaN.
QString csvNumber(double v);

}  // namespace plot_export
