// The run panel: everything one calibration needs (method, bits, quantizer options, rank r with
// its online cost, data, learning schedule, seed, device, threads), with sensible defaults for the
// open model, invalid combinations explained inline before Start, and values remembered per model.
#pragma once

#include <QString>
#include <QWidget>

#include <optional>

#include "core/calib/calib_config.h"
#include "core/calib/memory_plan.h"
#include "core/io/model_summary.h"

class QCheckBox;
class QComboBox;
class QDoubleSpinBox;
class QLabel;
class QLineEdit;
class QProgressBar;
class QPushButton;
class QThread;
class QSlider;
class QSpinBox;

class RunPanel : public QWidget {
  Q_OBJECT
 public:
  explicit RunPanel(QWidget* parent = nullptr);
  ~RunPanel() override;

  // The model the run is for (enables Start; restores the values last used with it).
  void setModel(const respin::ModelSummary& model);
  // No model to run on (Start disabled); `why` is what the panel says instead of "open a model
  // first" (the folder being read, or why it cannot be calibrated).
  void clearModel(const QString& why = QString());
  // The config the controls describe (model path included); validate() has not been applied.
  respin::CalibConfig config() const;
  void setConfig(const respin::CalibConfig& c);
  // The defaults for a model without saved values: resources/default-settings.ini's [calibration]
  // (compiled in), each key overridden by the user's "calibration/<key>" setting. Returns what it
  // could not apply ("" when everything applied).
  QString applyDefaultSettings();
  // Empty when the config can run on the open model; else the reasons, one per line.
  QString problems() const;
  QString problemText() const;  // what the panel shows
  QPushButton* startButton() const { return start_; }
  // Online cost text of the current rank ("rank 32: +1.2M parameters (0.4% of the layers'), ...").
  QString costText() const;
  QSlider* rankSlider() const { return rankSlider_; }
  QSpinBox* rankBox() const { return rank_; }
  // The memory plan of the current options (core/calib/memory_plan.h), as `respin plan` prints it;
  // empty until the device and file sizes it needs are read (off the GUI thread).
  std::optional<respin::MemoryPlan> plan() const;
  QString planText() const;
  QLineEdit* memoryBudget() const { return budget_; }
  QComboBox* streamingBox() const { return streaming_; }

 signals:
  void startRequested(respin::CalibConfig config);

 private:
  void update();
  void remember() const;
  void refreshPlanTarget();  // reads the device and sizes in a thread when what they depend on changed
  void showPlan();
  QComboBox *method_, *wbits_, *abits_, *kvbits_, *device_, *precision_, *streaming_;
  QSpinBox *wGroup_, *aGroup_, *kvGroup_, *rank_, *samples_, *seqLen_, *iters_, *batch_, *threads_, *evalWindows_,
      *microBatch_;
  QSpinBox* seed_;
  QDoubleSpinBox *aClip_, *kvClip_, *lr_;
  QCheckBox *wSym_, *aSym_, *kvSym_, *gptq_, *wMse_, *fullRank_, *checkpoint_;
  QSlider* rankSlider_;
  QLineEdit *calibText_, *evalText_, *budget_;
  QLabel *cost_, *problems_, *plan_;
  QProgressBar* planBar_;
  std::optional<respin::PlanTarget> target_;  // for model_ and the device/text options in targetKey_
  QString targetKey_, targetError_;
  QThread* planThread_ = nullptr;
  bool planPending_ = false;
  QPushButton* start_;
  std::optional<respin::ModelSummary> model_;
  QString noModelReason_;
  bool loading_ = false;
};
