// What a running calibration shows: overall and per-phase progress, the current layer, tokens/s
// and ETA, the live loss curve of rotation learning, and the |x| histogram of a chosen layer/site
// (the pre-rotation histogram ghosted behind the live one while rotations are learned, then behind
// the post-rotation one); Cancel; the
// queue of runs waiting.
#pragma once

#include <QWidget>

#include <optional>
#include <vector>

#include "core/calib/calibration.h"

class QComboBox;
class QCustomPlot;
class QLabel;
class QListWidget;
class QProgressBar;
class QPushButton;
class QSpinBox;

class ProgressView : public QWidget {
  Q_OBJECT
 public:
  explicit ProgressView(QWidget* parent = nullptr);

  void runStarted(const QString& label, const QString& runDir);
  void showProgress(const respin::CalibProgress& p);
  void addLoss(qint64 step, double loss);
  void showStats(respin::StatsStage stage, const std::vector<respin::SiteStats>& stats);
  // A live snapshot while rotations are learned (drawn until the after-rotation statistics arrive).
  void showLive(qint64 step, const respin::SiteStats& stats);
  // The layer and site the histogram shows (what the worker should send live).
  int chosenLayer() const;
  respin::HookSite chosenSite() const;
  void choose(int layer, respin::HookSite site);
  QString histogramLegendText() const;
  // `storeError`: the run store could not record the run (said in red under the status; empty:
  // it did).
  void runEnded(const QString& status, const QString& message, double perplexity, const QString& storeError = QString());
  void setQueue(const QStringList& waiting);

  QPushButton* cancelButton() const { return cancel_; }
  QProgressBar* overallBar() const { return overall_; }
  int lossPoints() const;
  QString statusText() const;
  QString storeWarningText() const;  // empty when the last run was recorded
  QCustomPlot* lossPlot() const { return loss_; }
  QCustomPlot* histogramPlot() const { return hist_; }

 signals:
  void cancelRequested();
  void liveTargetChanged(int layer, respin::HookSite site);

 private:
  void drawHistogram();
  QLabel *title_, *phase_, *detail_, *status_, *storeWarning_;
  QProgressBar *overall_, *phaseBar_;
  QPushButton* cancel_;
  QCustomPlot *loss_, *hist_;
  QSpinBox* layer_;
  QComboBox* site_;
  QListWidget* queue_;
  std::vector<respin::SiteStats> before_, after_;
  std::optional<respin::SiteStats> live_;
  qint64 liveStep_ = -1;
  QString runDir_;
};
