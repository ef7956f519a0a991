// Live calibration display (see ProgressView.h).
#include "ui/ProgressView.h"
#include "ui/PlotExport.h"

#include <QComboBox>
#include <QGridLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QListWidget>
#include <QProgressBar>
#include <QPushButton>
#include <QSpinBox>
#include <QVBoxLayout>
#include <qcustomplot.h>

#include <cmath>

namespace {

QString duration(double s) {
  if (s < 0) return "?";
  if (s < 120) return QString::number(s, 'f', 0) + " s";
  if (s < 7200) return QString("%1 min %2 s").arg(int(s / 60)).arg(int(std::fmod(s, 60)));
  return QString::number(s / 3600, 'f', 1) + " h";
}

const respin::HookSite kSites[] = {respin::HookSite::AttnInput, respin::HookSite::Query,    respin::HookSite::Key,
                                   respin::HookSite::Value,     respin::HookSite::OProjInput, respin::HookSite::MlpInput,
                                   respin::HookSite::DownProjInput};

}  // namespace

ProgressView::ProgressView(QWidget* parent) : QWidget(parent) {
  auto* outer = new QVBoxLayout(this);
  title_ = new QLabel("No calibration running. Choose a model and press Start in the run panel.");
  title_->setWordWrap(true);
  QFont f = title_->font();
  f.setBold(true);
  title_->setFont(f);
  outer->addWidget(title_);
  auto* bars = new QGridLayout;
  overall_ = new QProgressBar;
  overall_->setRange(0, 1000);
  overall_->setFormat("%p% overall");
  phaseBar_ = new QProgressBar;
  phaseBar_->setRange(0, 1000);
  phase_ = new QLabel("—");
  detail_ = new QLabel;
  cancel_ = new QPushButton("Cancel");
  cancel_->setEnabled(false);
  bars->addWidget(new QLabel("Run:"), 0, 0);
  bars->addWidget(overall_, 0, 1);
  bars->addWidget(cancel_, 0, 2);
  bars->addWidget(phase_, 1, 0);
  bars->addWidget(phaseBar_, 1, 1);
  bars->addWidget(detail_, 2, 1);
  bars->setColumnStretch(1, 1);
  outer->addLayout(bars);
  status_ = new QLabel;
  status_->setWordWrap(true);
  status_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  outer->addWidget(status_);
  storeWarning_ = new QLabel;
  storeWarning_->setObjectName("storeWarning");
  storeWarning_->setWordWrap(true);
  storeWarning_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  storeWarning_->setStyleSheet("color: #b00020; font-weight: bold");
  storeWarning_->hide();
  outer->addWidget(storeWarning_);

  auto* plots = new QHBoxLayout;
  loss_ = new ExportablePlot("loss-curve");
  loss_->addGraph();
  loss_->graph(0)->setName("loss");
  // A mid blue reads on the light and the dark palette alike.
  loss_->graph(0)->setPen(QPen(QColor(31, 119, 180), 1.5));
  loss_->graph(0)->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, QColor(31, 119, 180), 4));
  loss_->xAxis->setLabel("learning step");
  loss_->yAxis->setLabel("cross-entropy loss");
  loss_->plotLayout()->insertRow(0);
  loss_->plotLayout()->addElement(0, 0, new QCPTextElement(loss_, "Rotation learning", QFont(font().family(), 10, QFont::Bold)));
  loss_->setMinimumSize(320, 240);
  plots->addWidget(loss_, 1);

  auto* histBox = new QVBoxLayout;
  auto* pick = new QHBoxLayout;
  layer_ = new QSpinBox;
  layer_->setRange(0, 0);
  site_ = new QComboBox;
  for (respin::HookSite s : kSites) site_->addItem(respin::hook_site_name(s), int(s));
  pick->addWidget(new QLabel("Layer"));
  pick->addWidget(layer_);
  pick->addWidget(new QLabel("Site"));
  pick->addWidget(site_, 1);
  histBox->addLayout(pick);
  hist_ = new ExportablePlot("live-histogram");
  hist_->setMinimumSize(320, 240);
  hist_->xAxis->setLabel("|x| (log2, fixed bins)");
  hist_->yAxis->setLabel("count");
  hist_->yAxis->setScaleType(QCPAxis::stLogarithmic);
  hist_->yAxis->setTicker(QSharedPointer<QCPAxisTickerLog>(new QCPAxisTickerLog));
  hist_->legend->setVisible(false);  // shown once a histogram is drawn
  hist_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignLeft);
  histBox->addWidget(hist_, 1);
  plots->addLayout(histBox, 1);
  outer->addLayout(plots, 1);

  auto* q = new QGroupBox("Queue");
  auto* ql = new QVBoxLayout(q);
  queue_ = new QListWidget;
  queue_->setMaximumHeight(80);
  ql->addWidget(queue_);
  outer->addWidget(q);

  connect(cancel_, &QPushButton::clicked, this, [this] {
    cancel_->setEnabled(false);
    status_->setText("Cancelling…");
    emit cancelRequested();
  });
  auto changed = [this] {
    drawHistogram();
    emit liveTargetChanged(chosenLayer(), chosenSite());
  };
  connect(layer_, qOverload<int>(&QSpinBox::valueChanged), this, changed);
  connect(site_, qOverload<int>(&QComboBox::currentIndexChanged), this, changed);
}

void ProgressView::runStarted(const QString& label, const QString& runDir) {
  title_->setText("Calibrating: " + label);
  status_->setText("Run directory: " + runDir);
  runDir_ = runDir;
  storeWarning_->clear();
  storeWarning_->hide();
  overall_->setValue(0);
  phaseBar_->setValue(0);
  cancel_->setEnabled(true);
  loss_->graph(0)->data()->clear();
  loss_->replot();
  before_.clear();
  after_.clear();
  live_.reset();
  liveStep_ = -1;
  drawHistogram();
}

int ProgressView::chosenLayer() const { return layer_->value(); }
respin::HookSite ProgressView::chosenSite() const { return static_cast<respin::HookSite>(site_->currentData().toInt()); }

void ProgressView::choose(int layer, respin::HookSite site) {
  layer_->setRange(0, std::max(layer_->maximum(), layer));
  layer_->setValue(layer);
  const int i = site_->findData(int(site));
  if (i >= 0) site_->setCurrentIndex(i);
}

QString ProgressView::histogramLegendText() const {
  QStringList names;
  for (int i = 0; i < hist_->plottableCount(); ++i) names << hist_->plottable(i)->name();
  return names.join(" | ");
}

void ProgressView::showLive(qint64 step, const respin::SiteStats& stats) {
  live_ = stats;
  liveStep_ = step;
  drawHistogram();
}

void ProgressView::showProgress(const respin::CalibProgress& p) {
  overall_->setValue(static_cast<int>(1000 * p.overall_fraction));
  phase_->setText(respin::phase_title(p.phase));
  phaseBar_->setValue(static_cast<int>(1000 * p.phase_fraction));
  phaseBar_->setFormat(p.total > 0 ? QString("%1 / %2").arg(p.done).arg(p.total) : QString("%p%"));
  QStringList d;
  if (p.layer >= 0) d << QString("layer %1").arg(p.layer);
  if (p.tokens_per_s > 0) d << QString("%1 tokens/s").arg(p.tokens_per_s, 0, 'f', 0);
  if (p.phase == respin::Phase::Rotate && p.done > 0) d << QString("loss %1").arg(p.value, 0, 'f', 4);
  if ((p.phase == respin::Phase::EvalFp || p.phase == respin::Phase::EvalQuant) && p.done > 0)
    d << QString("running perplexity %1").arg(p.value, 0, 'f', 3);
  if (p.eta_s >= 0) d << "phase ETA " + duration(p.eta_s);
  if (p.overall_fraction > 0.02 && p.overall_fraction < 1)
    d << "run ETA ~" + duration(p.elapsed_s * (1 - p.overall_fraction) / p.overall_fraction);
  d << "elapsed " + duration(p.elapsed_s);
  detail_->setText(d.join(" · "));
}

void ProgressView::addLoss(qint64 step, double loss) {
  loss_->graph(0)->addData(double(step), loss);
  loss_->rescaleAxes();
  loss_->replot(QCustomPlot::rpQueuedReplot);
}

QString ProgressView::storeWarningText() const { return storeWarning_->isHidden() ? QString() : storeWarning_->text(); }

int ProgressView::lossPoints() const { return loss_->graph(0)->dataCount(); }
QString ProgressView::statusText() const { return status_->text(); }

void ProgressView::showStats(respin::StatsStage stage, const std::vector<respin::SiteStats>& stats) {
  (stage == respin::StatsStage::Before ? before_ : after_) = stats;
  int layers = 0;
  for (const respin::SiteStats& s : stats) layers = std::max(layers, s.layer + 1);
  layer_->setRange(0, std::max(0, layers - 1));
  drawHistogram();
}

void ProgressView::drawHistogram() {
  hist_->clearPlottables();
  const auto site = static_cast<respin::HookSite>(site_->currentData().toInt());
  auto find = [&](const std::vector<respin::SiteStats>& v) -> const respin::SiteStats* {
    for (const respin::SiteStats& s : v)
      if (s.layer == layer_->value() && s.site == site) return &s;
    return nullptr;
  };
  // Bin k's centre on a log2 axis: bin 0 (zeros and below 2^-16) at -17, the last (>= 256) at 8.5.
  // `scale` multiplies the counts: a live snapshot covers one learning batch, not the statistics
  // windows, so it is drawn at the before-histogram's total to share its count axis.
  auto draw = [&](const respin::SiteStats* s, const QString& name, QColor color, bool ghost, double scale = 1.0) {
    if (!s) return;
    auto* g = new QCPGraph(hist_->xAxis, hist_->yAxis);
    g->setName(name);
    g->setLineStyle(QCPGraph::lsStepCenter);
    QColor fill = color;
    fill.setAlpha(ghost ? 40 : 90);
    g->setPen(QPen(color, ghost ? 1 : 2, ghost ? Qt::DashLine : Qt::SolidLine));
    g->setBrush(fill);
    for (int k = 0; k < respin::kHistogramBins; ++k) {
      const double x = k == 0 ? respin::kHistogramMinExp2 - 1 : respin::kHistogramMinExp2 + (k - 0.5) / 2.0;
      g->addData(x, std::max<double>(0.5, scale * double(s->histogram[k])));
    }
  };
  const respin::SiteStats* before = find(before_);
  const respin::SiteStats* live =
      after_.empty() && live_ && live_->layer == layer_->value() && live_->site == site ? &*live_ : nullptr;
  draw(before, "before rotation", QColor(150, 150, 150), !after_.empty() || live);
  if (live) {
    double scale = 1.0;
    QString name = QString("learning, step %1").arg(liveStep_ + 1);
    if (before && live->count > 0 && before->count > 0) {
      scale = double(before->count) / double(live->count);
      name += QString(" (×%1 to the same total)").arg(scale, 0, 'g', 3);
    }
    draw(live, name, QColor(230, 120, 20), false, scale);
  }
  draw(find(after_), "after rotation", QColor(31, 119, 180), false);
  hist_->legend->setVisible(hist_->plottableCount() > 0);
  hist_->xAxis->setRange(respin::kHistogramMinExp2 - 1.5, respin::kHistogramMaxExp2 + 1);
  hist_->yAxis->rescale();
  if (hist_->yAxis->range().lower < 0.5) hist_->yAxis->setRangeLower(0.5);
  hist_->replot(QCustomPlot::rpQueuedReplot);
}

void ProgressView::runEnded(const QString& status, const QString& message, double perplexity, const QString& storeError) {
  cancel_->setEnabled(false);
  if (status == "finished") {
    overall_->setValue(1000);
    status_->setText(QString("Finished: quantized perplexity %1").arg(perplexity, 0, 'f', 4));
  } else if (status == "cancelled") {
    status_->setText("Cancelled: nothing was written; the run store marks the run cancelled.");
  } else {
    status_->setText("Failed: " + message);
  }
  storeWarning_->setText(storeError.isEmpty()
                             ? QString()
                             : "Not recorded in the run store: " + storeError +
                                   (status == "finished" ? " (the run directory " + runDir_ + " has the results)" : QString()));
  storeWarning_->setVisible(!storeError.isEmpty());
  if (title_->text().startsWith("Calibrating: "))
    title_->setText(title_->text().replace("Calibrating: ", "Last run: "));
  else  // it failed before it started (inputs not found): the idle text would contradict the status
    title_->setText(status == "failed" ? "The run could not start." : "Last run: " + status);
}

void ProgressView::setQueue(const QStringList& waiting) {
  queue_->clear();
  if (waiting.isEmpty()) queue_->addItem("(no runs waiting)");
  for (const QString& w : waiting) queue_->addItem(w);
}
