// Plot export (see PlotExport.h).
#include "ui/PlotExport.h"

#include <QContextMenuEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QMenu>
#include <QSaveFile>
#include <QSvgGenerator>

#include <charconv>
#include <cmath>

namespace plot_export {

void applyPalette(QCustomPlot* plot, const QPalette& palette) {
  const QColor bg = palette.color(QPalette::Base), fg = palette.color(QPalette::Text);
  auto mix = [&](double t) {
    return QColor::fromRgbF(bg.redF() * (1 - t) + fg.redF() * t, bg.greenF() * (1 - t) + fg.greenF() * t,
                            bg.blueF() * (1 - t) + fg.blueF() * t);
  };
  const QColor grid = mix(0.22), subGrid = mix(0.1);
  plot->setBackground(bg);
  auto style = [&](QCPAxis* a) {
    a->setBasePen(QPen(fg, 1));
    a->setTickPen(QPen(fg, 1));
    a->setSubTickPen(QPen(fg, 1));
    a->setTickLabelColor(fg);
    a->setLabelColor(fg);
    a->grid()->setPen(QPen(grid, 1, Qt::DotLine));
    a->grid()->setSubGridPen(QPen(subGrid, 1, Qt::DotLine));
    a->grid()->setZeroLinePen(QPen(grid, 1));
  };
  for (QCPLayoutElement* e : plot->plotLayout()->elements(true)) {
    if (auto* rect = qobject_cast<QCPAxisRect*>(e)) {
      rect->setBackground(Qt::NoBrush);
      for (QCPAxis* a : rect->axes()) style(a);
      // The legend and other insets live in the rect's inset layout.
      for (QCPLayoutElement* inset : rect->insetLayout()->elements(false)) {
        if (auto* legend = qobject_cast<QCPLegend*>(inset)) {
          QColor lb = bg;
          lb.setAlpha(220);
          legend->setBrush(lb);
          legend->setBorderPen(QPen(mix(0.5), 1));
          legend->setTextColor(fg);
        }
      }
    } else if (auto* scale = qobject_cast<QCPColorScale*>(e)) {
      style(scale->axis());
    } else if (auto* text = qobject_cast<QCPTextElement*>(e)) {
      text->setTextColor(fg);
    } else if (auto* legend = qobject_cast<QCPLegend*>(e)) {
      legend->setBrush(bg);
      legend->setTextColor(fg);
      legend->setBorderPen(QPen(mix(0.5), 1));
    }
  }
  // Item labels and frames drawn in the default (black) colour follow the palette; coloured ones stay.
  for (int i = 0; i < plot->itemCount(); ++i) {
    QCPAbstractItem* item = plot->item(i);
    if (auto* t = qobject_cast<QCPItemText*>(item)) {
      if (t->property("respinDefaultColor").toBool() || t->color() == QColor(Qt::black)) {
        t->setProperty("respinDefaultColor", true);
        t->setColor(fg);
      }
    } else if (auto* r = qobject_cast<QCPItemRect*>(item)) {
      if (r->property("respinDefaultColor").toBool() || r->pen().color() == QColor(Qt::black)) {
        r->setProperty("respinDefaultColor", true);
        QPen pen = r->pen();
        pen.setColor(fg);
        r->setPen(pen);
      }
    }
  }
}

namespace {

// The export size: the requested one, else the widget's, else a readable default for a plot that
// was never laid out.
QSize exportSize(const QCustomPlot* plot, int width, int height) {
  if (width > 0 && height > 0) return {width, height};
  if (plot->width() >= 100 && plot->height() >= 80) return plot->size();
  return {800, 500};
}

bool fail(QString* error, const QString& message) {
  if (error) *error = message;
  return false;
}

bool nonEmpty(const QString& path) { return QFileInfo(path).size() > 0; }

}  // namespace

bool savePng(QCustomPlot* plot, const QString& path, int width, int height, QString* error) {
  const QSize s = exportSize(plot, width, height);
  if (!plot->savePng(path, s.width(), s.height()) || !nonEmpty(path))
    return fail(error, path + ": could not write the PNG");
  return true;
}

bool savePdf(QCustomPlot* plot, const QString& path, int width, int height, QString* error) {
  const QSize s = exportSize(plot, width, height);
  if (!plot->savePdf(path, s.width(), s.height(), QCP::epNoCosmetic, "ReSpin Workbench") || !nonEmpty(path))
    return fail(error, path + ": could not write the PDF");
  return true;
}

bool saveSvg(QCustomPlot* plot, const QString& path, int width, int height, QString* error) {
  const QSize s = exportSize(plot, width, height);
  QSvgGenerator svg;
  svg.setFileName(path);
  svg.setSize(s);
  svg.setViewBox(QRect(QPoint(0, 0), s));
  svg.setTitle(plot->objectName());
  svg.setDescription("ReSpin Workbench plot");
  QCPPainter painter;
  if (!painter.begin(&svg)) return fail(error, path + ": could not write the SVG");
  painter.setMode(QCPPainter::pmVectorized);
  painter.setMode(QCPPainter::pmNoCaching);
  plot->toPainter(&painter, s.width(), s.height());
  painter.end();
  plot->replot(QCustomPlot::rpQueuedReplot);  // toPainter laid the plot out at the export size
  if (!nonEmpty(path)) return fail(error, path + ": could not write the SVG");
  return true;
}

bool writeText(const QString& path, const QString& text, QString* error) {
  QSaveFile f(path);
  if (!f.open(QIODevice::WriteOnly)) return fail(error, path + ": " + f.errorString());
  const QByteArray bytes = text.toUtf8();
  if (f.write(bytes) != bytes.size() || !f.commit()) return fail(error, path + ": " + f.errorString());
  return true;
}

QString csvField(const QString& s) {
  if (!s.contains(',') && !s.contains('"') && !s.contains('\n') && !s.contains('\r')) return s;
  QString o = "\"";
  for (QChar c : s) {
    if (c == '"') o += '"';
    o += c;
  }
  return o + '"';
}

QString csvNumber(double v) {
  if (std::isnan(v)) return {};
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return QString::fromLatin1(buf, static_cast<int>(r.ptr - buf));
}

QString defaultCsv(QCustomPlot* plot) {
  QString out;
  bool map = false;
  for (int i = 0; i < plot->plottableCount(); ++i) map |= qobject_cast<QCPColorMap*>(plot->plottable(i)) != nullptr;
  out += map ? "series,x,y,value\n" : "series,x,y\n";
  for (int i = 0; i < plot->plottableCount(); ++i) {
    QCPAbstractPlottable* p = plot->plottable(i);
    if (!p->visible()) continue;
    const QString name = csvField(p->name());
    if (auto* g = qobject_cast<QCPGraph*>(p)) {
      for (auto it = g->data()->constBegin(); it != g->data()->constEnd(); ++it)
        out += name + ',' + csvNumber(it->key) + ',' + csvNumber(it->value) + (map ? ",\n" : "\n");
    } else if (auto* b = qobject_cast<QCPBars*>(p)) {
      for (auto it = b->data()->constBegin(); it != b->data()->constEnd(); ++it)
        out += name + ',' + csvNumber(it->key) + ',' + csvNumber(it->value) + (map ? ",\n" : "\n");
    } else if (auto* c = qobject_cast<QCPColorMap*>(p)) {
      QCPColorMapData* d = c->data();
      for (int k = 0; k < d->keySize(); ++k)
        for (int v = 0; v < d->valueSize(); ++v) {
          double x = 0, y = 0;
          d->cellToCoord(k, v, &x, &y);
          out += name + ',' + csvNumber(x) + ',' + csvNumber(y) + ',' + csvNumber(d->cell(k, v)) + '\n';
        }
    }
  }
  return out;
}

}  // namespace plot_export

ExportablePlot::ExportablePlot(const QString& exportName, QWidget* parent)
    : QCustomPlot(parent), exportName_(exportName) {
  setObjectName(exportName);
  setAntialiasedElements(QCP::aeAll);
  setNoAntialiasingOnDrag(true);
}

void ExportablePlot::changeEvent(QEvent* event) {
  QCustomPlot::changeEvent(event);
  if (event->type() == QEvent::PaletteChange) {
    plot_export::applyPalette(this, palette());
    replot(QCustomPlot::rpQueuedReplot);
  }
}

void ExportablePlot::showEvent(QShowEvent* event) {
  plot_export::applyPalette(this, palette());  // titles and axes the view added after construction
  QCustomPlot::showEvent(event);
}

QString ExportablePlot::csv() const { return csvSource_ ? csvSource_() : plot_export::defaultCsv(const_cast<ExportablePlot*>(this)); }

bool ExportablePlot::exportTo(const QString& path, QString* error, int width, int height) {
  const QString suffix = QFileInfo(path).suffix().toLower();
  try {
    if (suffix == "png") return plot_export::savePng(this, path, width, height, error);
    if (suffix == "svg") return plot_export::saveSvg(this, path, width, height, error);
    if (suffix == "pdf") return plot_export::savePdf(this, path, width, height, error);
    if (suffix == "csv") return plot_export::writeText(path, csv(), error);
  } catch (const std::exception& e) {  // a CSV source reading the store, say
    if (error) *error = path + ": " + QString::fromStdString(e.what());
    return false;
  }
  if (error) *error = path + ": unknown export format (use .png, .svg, .pdf or .csv)";
  return false;
}

void ExportablePlot::exportWithDialog(const QString& suffix) {
  const QString filter = suffix == "csv" ? "CSV (*.csv)" : suffix.toUpper() + " (*." + suffix + ")";
  QString path = QFileDialog::getSaveFileName(this, "Export " + exportName_, exportName_ + "." + suffix, filter);
  if (path.isEmpty()) return;
  if (QFileInfo(path).suffix().isEmpty()) path += "." + suffix;
  QString error;
  const bool ok = exportTo(path, &error);
  emit exportFinished(ok, ok ? "Wrote " + path : error);
}

void ExportablePlot::contextMenuEvent(QContextMenuEvent* event) {
  QMenu menu(this);
  menu.addAction("Export as PNG…", this, [this] { exportWithDialog("png"); });
  menu.addAction("Export as SVG…", this, [this] { exportWithDialog("svg"); });
  menu.addAction("Export as PDF…", this, [this] { exportWithDialog("pdf"); });
  menu.addSeparator();
  menu.addAction("Export data as CSV…", this, [this] { exportWithDialog("csv"); });
  menu.exec(event->globalPos());
}
