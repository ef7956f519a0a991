// Run panel (see RunPanel.h). Validation is core's (CalibConfig::validate) plus the checks that
// need the model (group sizes that must divide a width); this only arranges controls.
#include "ui/RunPanel.h"

#include <QCheckBox>
#include <QComboBox>
#include <QDoubleSpinBox>
#include <QFormLayout>
#include <QGridLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QSettings>
#include <nlohmann/json.hpp>
#include <QSlider>
#include <QSpinBox>
#include <QThread>
#include <QVBoxLayout>

#include <cmath>

#include "core/calib/calibrate.h"
#include "core/calib/run_record.h"
#include "core/util/error.h"
#include "kernels/hadamard.h"

using respin::CalibConfig;

namespace {

QComboBox* bitsBox(int value) {
  auto* b = new QComboBox;
  for (int v : {2, 3, 4, 5, 6, 7, 8, 16}) b->addItem(v == 16 ? "16 (off)" : QString::number(v), v);
  b->setCurrentIndex(b->findData(value));
  return b;
}

QSpinBox* spin(int lo, int hi, int value) {
  auto* s = new QSpinBox;
  s->setRange(lo, hi);
  s->setValue(value);
  return s;
}

QString count(double n) {
  if (n >= 1e9) return QString::number(n / 1e9, 'f', 2) + "B";
  if (n >= 1e6) return QString::number(n / 1e6, 'f', 2) + "M";
  if (n >= 1e3) return QString::number(n / 1e3, 'f', 1) + "K";
  return QString::number(n, 'f', 0);
}

// Rank slider positions: 0, 1, 2, 4, ..., 2^k up to the hidden size (the last is "full").
int sliderToRank(int pos) { return pos == 0 ? 0 : 1 << (pos - 1); }
int rankToSlider(int64_t r) { return r <= 0 ? 0 : static_cast<int>(std::round(std::log2(double(r)))) + 1; }

}  // namespace

RunPanel::RunPanel(QWidget* parent) : QWidget(parent) {
  // Compact enough to show whole at 1280x800 without scrolling (tests/test_workbench.cpp checks
  // every control's geometry): the quantizer options as one W/A/KV grid, the data and learning
  // numbers in two columns; the wrapped texts (cost, problems) take the width the rest gives them.
  auto* outer = new QVBoxLayout(this);

  auto* quant = new QGroupBox("Method and quantizers");
  auto* qg = new QGridLayout(quant);
  auto rowLabel = [](const QString& text) {
    auto* l = new QLabel(text);
    l->setAlignment(Qt::AlignLeft | Qt::AlignVCenter);
    return l;
  };
  method_ = new QComboBox;
  method_->addItem("ReSpinQuant (layer-wise, rank-r skip)", int(respin::Method::ReSpin));
  method_->setItemData(0, "ReSpinQuant: layer-wise rotations and a rank-r correction of each skip connection", Qt::ToolTipRole);
  method_->addItem("SpinQuant (learned global rotation)", int(respin::Method::SpinQuant));
  method_->addItem("QuaRot (random Hadamard)", int(respin::Method::QuaRot));
  method_->addItem("RTN (no rotation)", int(respin::Method::Rtn));
  int row = 0;
  // One row of the W / A / KV table: its label, then the weight, activation and KV control.
  auto addWAKV = [&](const char* label, QWidget* w, QWidget* a, QWidget* kv) {
    qg->addWidget(rowLabel(label), row, 0);
    qg->addWidget(w, row, 1);
    qg->addWidget(a, row, 2);
    qg->addWidget(kv, row++, 3);
  };
  qg->addWidget(rowLabel("Method:"), row, 0);
  qg->addWidget(method_, row++, 1, 1, 3);
  const char* heads[] = {"Weights", "Activations", "KV cache"};
  for (int i = 0; i < 3; ++i) {
    auto* h = new QLabel(heads[i]);
    h->setAlignment(Qt::AlignCenter);
    qg->addWidget(h, row, 1 + i);
  }
  ++row;
  wbits_ = bitsBox(4), abits_ = bitsBox(4), kvbits_ = bitsBox(4);
  wbits_->setToolTip("Weight bits");
  abits_->setToolTip("Activation bits");
  kvbits_->setToolTip("KV cache bits");
  addWAKV("Bits:", wbits_, abits_, kvbits_);
  wGroup_ = spin(0, 1 << 16, 0), aGroup_ = spin(0, 1 << 16, 0), kvGroup_ = spin(0, 1 << 12, 0);
  wGroup_->setSpecialValueText("per channel");
  aGroup_->setSpecialValueText("per token");
  kvGroup_->setSpecialValueText("per head");
  wGroup_->setToolTip("Weight group size (0: per output channel)");
  aGroup_->setToolTip("Activation group size (0: per token)");
  kvGroup_->setToolTip("KV group size (0: per head)");
  addWAKV("Group size:", wGroup_, aGroup_, kvGroup_);
  wSym_ = new QCheckBox("symmetric"), aSym_ = new QCheckBox("symmetric"), kvSym_ = new QCheckBox("symmetric");
  wSym_->setChecked(true);
  addWAKV("Range:", wSym_, aSym_, kvSym_);
  aClip_ = new QDoubleSpinBox, kvClip_ = new QDoubleSpinBox;
  for (QDoubleSpinBox* c : {aClip_, kvClip_}) {
    c->setRange(0.01, 1.0);
    c->setSingleStep(0.05);
    c->setDecimals(2);
    c->setValue(1.0);
  }
  aClip_->setToolTip("Activation clip ratio");
  kvClip_->setToolTip("KV clip ratio");
  wMse_ = new QCheckBox("MSE search");
  wMse_->setToolTip("Search each weight row's clip ratio for the least quantization MSE");
  wMse_->setChecked(true);
  addWAKV("Clip:", wMse_, aClip_, kvClip_);
  gptq_ = new QCheckBox("GPTQ weights (else round to nearest)");
  qg->addWidget(rowLabel("Weights:"), row, 0);
  qg->addWidget(gptq_, row++, 1, 1, 3);
  auto* rankRow = new QHBoxLayout;
  rankSlider_ = new QSlider(Qt::Horizontal);
  rankSlider_->setRange(0, 13);
  rankSlider_->setPageStep(1);
  rankSlider_->setTickPosition(QSlider::TicksBelow);
  rank_ = spin(0, 1 << 16, 32);
  fullRank_ = new QCheckBox("full");
  rankRow->addWidget(rankSlider_, 1);
  rankRow->addWidget(rank_);
  rankRow->addWidget(fullRank_);
  qg->addWidget(rowLabel("Rank r:"), row, 0);
  qg->addLayout(rankRow, row++, 1, 1, 3);
  cost_ = new QLabel;
  cost_->setWordWrap(true);
  cost_->setObjectName("cost");
  cost_->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
  qg->addWidget(cost_, row++, 1, 1, 3);
  for (int c = 1; c <= 3; ++c) qg->setColumnStretch(c, 1);
  outer->addWidget(quant);

  auto* data = new QGroupBox("Data and learning");
  auto* dg = new QGridLayout(data);
  calibText_ = new QLineEdit;
  calibText_->setPlaceholderText("corpus training split");
  evalText_ = new QLineEdit;
  evalText_->setPlaceholderText("corpus test split");
  row = 0;
  dg->addWidget(rowLabel("Calibration text:"), row, 0);
  dg->addWidget(calibText_, row++, 1, 1, 3);
  dg->addWidget(rowLabel("Evaluation text:"), row, 0);
  dg->addWidget(evalText_, row++, 1, 1, 3);
  samples_ = spin(1, 1 << 20, 128), seqLen_ = spin(2, 1 << 20, 512), iters_ = spin(0, 1 << 20, 100);
  batch_ = spin(1, 4096, 1), evalWindows_ = spin(0, 1 << 20, 0);
  evalWindows_->setSpecialValueText("all");
  lr_ = new QDoubleSpinBox;
  lr_->setRange(1e-6, 100);
  lr_->setDecimals(4);
  lr_->setValue(1.5);
  seed_ = spin(0, 1 << 30, 0);
  threads_ = spin(0, QThread::idealThreadCount(), 0);
  threads_->setSpecialValueText(QString("all %1 cores").arg(QThread::idealThreadCount()));
  auto pair = [&](const QString& a, QWidget* wa, const QString& b, QWidget* wb) {
    dg->addWidget(rowLabel(a), row, 0);
    dg->addWidget(wa, row, 1);
    dg->addWidget(rowLabel(b), row, 2);
    dg->addWidget(wb, row++, 3);
  };
  pair("Samples:", samples_, "Sequence length:", seqLen_);
  pair("Iterations:", iters_, "Batch:", batch_);
  pair("Learning rate:", lr_, "Seed:", seed_);
  pair("Eval windows:", evalWindows_, "Threads:", threads_);
  microBatch_ = spin(0, 4096, 0);
  microBatch_->setSpecialValueText("whole");
  microBatch_->setToolTip("Windows per forward/backward inside a learning step; the gradients accumulate over the "
                          "step (less memory, the same step). Left at 'whole batch' with checkpointing off, the "
                          "plan chooses both when the step would not fit the memory.");
  checkpoint_ = new QCheckBox("checkpoint");
  checkpoint_->setToolTip("Keep only each decoder layer's input and rebuild one layer at a time in the backward pass "
                          "(far less memory, about one more forward per step)");
  pair("Micro-batch:", microBatch_, "Layers:", checkpoint_);
  evalWindows_->setToolTip("Evaluation windows (all: the whole evaluation text)");
  device_ = new QComboBox;
  // Item data: -2 auto, -1 CPU, N >= 0 CUDA device N (each visible device, with its name).
  device_->addItem("auto", -2);
  device_->setToolTip("auto: CUDA when available");
  device_->addItem("CPU", -1);
  const std::vector<std::string> gpus = respin::kernels::cuda_device_names();
  for (size_t i = 0; i < gpus.size(); ++i)
    device_->addItem(QString("CUDA %1: %2").arg(i).arg(QString::fromStdString(gpus[i])), int(i));
  if (gpus.empty()) device_->addItem("CUDA (no device visible here)", 0);
  precision_ = new QComboBox;
  // Item data: the respin::Precision value; the names are core's.
  for (respin::Precision p : {respin::Precision::Auto, respin::Precision::Float32, respin::Precision::BFloat16})
    precision_->addItem(QString(respin::precision_name(p)), static_cast<int>(p));
  precision_->setToolTip("What the weights are held and the forward runs in (auto: bfloat16 on CUDA for a bfloat16 "
                         "model, float32 otherwise); rotations, fusion and GPTQ's Hessian stay float32/float64, and "
                         "bfloat16 halves the model's memory");
  // Narrow enough for two to a row: the lists show the whole names when open.
  for (QComboBox* c : {device_, precision_}) {
    c->setSizeAdjustPolicy(QComboBox::AdjustToMinimumContentsLengthWithIcon);
    c->setMinimumContentsLength(4);
  }
  pair("Device:", device_, "Precision:", precision_);
  budget_ = new QLineEdit;
  budget_->setPlaceholderText("the device's own");
  budget_->setToolTip("Memory the run must fit in (2GiB, 24GB, ...): a GPU shared with others, or a smaller one");
  planBar_ = new QProgressBar;
  planBar_->setRange(0, 1000);
  planBar_->setTextVisible(false);
  planBar_->setMaximumHeight(12);
  planBar_->setObjectName("planBar");
  streaming_ = new QComboBox;
  // Item data: the respin::Streaming value; the names are core's.
  for (respin::Streaming v : {respin::Streaming::Auto, respin::Streaming::Whole, respin::Streaming::Layers})
    streaming_->addItem(QString(respin::streaming_name(v)), static_cast<int>(v));
  streaming_->setToolTip("layers: every phase without end-to-end gradients runs one decoder layer at a time from the "
                         "model's files (the model is never resident; the same numbers). auto: so when the whole "
                         "model would not fit the memory and the method learns nothing. SpinQuant and ReSpinQuant "
                         "learn through the whole model.");
  streaming_->setSizeAdjustPolicy(QComboBox::AdjustToMinimumContentsLengthWithIcon);
  streaming_->setMinimumContentsLength(4);
  pair("Memory:", budget_, "Streaming:", streaming_);
  plan_ = new QLabel;
  plan_->setWordWrap(true);
  plan_->setObjectName("plan");
  plan_->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
  // The peak against the capacity, under the Memory label, beside the plan's words.
  dg->addWidget(planBar_, row, 0, Qt::AlignTop);
  dg->addWidget(plan_, row++, 1, 1, 3);
  dg->setColumnStretch(1, 1);
  dg->setColumnStretch(3, 1);
  outer->addWidget(data);

  problems_ = new QLabel;
  problems_->setWordWrap(true);
  problems_->setObjectName("problems");
  problems_->setStyleSheet("color: #b00020");
  problems_->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
  outer->addWidget(problems_);
  start_ = new QPushButton("Start calibration");
  start_->setDefault(true);
  outer->addWidget(start_);
  outer->addStretch(1);

  connect(start_, &QPushButton::clicked, this, [this] {
    if (!problems().isEmpty()) return;
    remember();
    emit startRequested(config());
  });
  connect(rankSlider_, &QSlider::valueChanged, this, [this](int pos) {
    if (loading_) return;
    const int r = sliderToRank(pos);
    if (model_ && r >= model_->config.hidden_size) {
      fullRank_->setChecked(true);
    } else {
      fullRank_->setChecked(false);
      rank_->setValue(r);
    }
  });
  connect(rank_, qOverload<int>(&QSpinBox::valueChanged), this, [this](int r) {
    loading_ = true;
    rankSlider_->setValue(rankToSlider(r));
    loading_ = false;
    update();
  });
  for (QComboBox* c : {method_, wbits_, abits_, kvbits_, device_, precision_, streaming_})
    connect(c, qOverload<int>(&QComboBox::currentIndexChanged), this, [this] { update(); });
  for (QSpinBox* s : {wGroup_, aGroup_, kvGroup_, samples_, seqLen_, iters_, batch_, threads_, evalWindows_, seed_})
    connect(s, qOverload<int>(&QSpinBox::valueChanged), this, [this] { update(); });
  for (QDoubleSpinBox* s : {aClip_, kvClip_, lr_})
    connect(s, qOverload<double>(&QDoubleSpinBox::valueChanged), this, [this] { update(); });
  for (QCheckBox* c : {wSym_, aSym_, kvSym_, gptq_, wMse_, fullRank_})
    connect(c, &QCheckBox::toggled, this, [this] { update(); });
  for (QLineEdit* e : {calibText_, evalText_, budget_}) connect(e, &QLineEdit::textChanged, this, [this] { update(); });
  connect(microBatch_, qOverload<int>(&QSpinBox::valueChanged), this, [this] { update(); });
  connect(checkpoint_, &QCheckBox::toggled, this, [this] { update(); });
  clearModel();
}

void RunPanel::clearModel(const QString& why) {
  model_.reset();
  noModelReason_ = why;
  update();
}

void RunPanel::setModel(const respin::ModelSummary& m) {
  model_ = m;
  noModelReason_.clear();
  rankSlider_->setRange(0, rankToSlider(m.config.hidden_size));
  rank_->setMaximum(static_cast<int>(m.config.hidden_size));
  seqLen_->setValue(static_cast<int>(std::min<int64_t>(seqLen_->value(), m.config.max_position_embeddings)));
  loading_ = true;
  rankSlider_->setValue(rankToSlider(rank_->value()));
  loading_ = false;
  // The values last used with this model, else the defaults already in the controls.
  QSettings s;
  s.beginGroup("models/" + QString::fromStdString(m.folder).replace('/', '|'));
  const QString saved = s.value("config").toString();
  s.endGroup();
  bool restored = false;
  if (!saved.isEmpty()) {
    try {
      CalibConfig c = respin::calib_config_from_json(saved.toStdString(), "saved settings");
      c.model = m.folder;
      setConfig(c);
      restored = true;
    } catch (const std::exception&) {
      // Settings from another version: fall back to the defaults.
    }
  }
  if (!restored) applyDefaultSettings();
  // Windows longer than the model's context cannot be evaluated: cap what was restored too.
  seqLen_->setValue(static_cast<int>(std::min<int64_t>(seqLen_->value(), m.config.max_position_embeddings)));
  update();
}

QString RunPanel::applyDefaultSettings() {
  // [calibration] of the compiled-in default settings, each key overridden by the same key in the
  // user's settings ("calibration/<key>"); keys are run.json's config fields.
  QSettings builtin(":/settings/default-settings.ini", QSettings::IniFormat);
  QSettings user;
  nlohmann::json j = nlohmann::json::parse(respin::calib_config_to_json(config()));
  QStringList problems;
  builtin.beginGroup("calibration");
  QStringList keys = builtin.childKeys();
  builtin.endGroup();
  user.beginGroup("calibration");
  for (const QString& k : user.childKeys())
    if (!keys.contains(k)) keys << k;
  for (const QString& k : keys) {
    const QString text = user.contains(k) ? user.value(k).toString() : builtin.value("calibration/" + k).toString();
    const std::string key = k.toStdString();
    if (!j.contains(key) || key == "model") {
      problems << k + " (unknown field)";
      continue;
    }
    bool ok = true;
    nlohmann::json& v = j[key];
    if (v.is_boolean()) v = text == "true" || text == "1";
    else if (v.is_number_integer()) v = text.toLongLong(&ok);
    else if (v.is_number()) v = text.toDouble(&ok);
    else v = text.toStdString();
    if (!ok) problems << k + "=" + text;
  }
  user.endGroup();
  try {
    CalibConfig c = respin::calib_config_from_json(j.dump(), "default settings");
    if (model_) c.model = model_->folder;
    setConfig(c);
  } catch (const std::exception& e) {
    problems << QString::fromStdString(e.what());
  }
  return problems.join("; ");
}

void RunPanel::remember() const {
  if (!model_) return;
  QSettings s;
  s.beginGroup("models/" + QString::fromStdString(model_->folder).replace('/', '|'));
  s.setValue("config", QString::fromStdString(respin::calib_config_to_json(config())));
  s.endGroup();
}

CalibConfig RunPanel::config() const {
  CalibConfig c;
  if (model_) c.model = model_->folder;
  c.method = static_cast<respin::Method>(method_->currentData().toInt());
  c.wbits = wbits_->currentData().toInt();
  c.abits = abits_->currentData().toInt();
  c.kvbits = kvbits_->currentData().toInt();
  c.w_group = wGroup_->value();
  c.a_group = aGroup_->value();
  c.kv_group = kvGroup_->value();
  c.w_sym = wSym_->isChecked();
  c.a_sym = aSym_->isChecked();
  c.kv_sym = kvSym_->isChecked();
  c.w_mse_clip = wMse_->isChecked();
  c.a_clip = aClip_->value();
  c.kv_clip = kvClip_->value();
  c.rank = fullRank_->isChecked() ? -1 : rank_->value();
  c.weight_quantizer = gptq_->isChecked() ? respin::WeightQuantizer::Gptq : respin::WeightQuantizer::Rtn;
  c.calib_text = calibText_->text().toStdString();
  c.eval_text = evalText_->text().toStdString();
  c.samples = samples_->value();
  c.seq_len = seqLen_->value();
  c.iters = iters_->value();
  c.lr = lr_->value();
  c.batch = batch_->value();
  c.micro_batch = microBatch_->value();
  c.checkpoint_layers = checkpoint_->isChecked();
  try {
    c.device_memory = budget_->text().trimmed().isEmpty() ? 0 : respin::parse_byte_size(budget_->text().toStdString());
  } catch (const std::exception&) {
    c.device_memory = -1;  // problems() says why
  }
  c.eval_windows = evalWindows_->value();
  c.seed = static_cast<uint64_t>(seed_->value());
  const int device = device_->currentData().toInt();
  c.device = device == -2 ? respin::DeviceChoice::Auto : device == -1 ? respin::DeviceChoice::Cpu : respin::DeviceChoice::Cuda;
  c.cuda_device = std::max(0, device);
  c.precision = static_cast<respin::Precision>(precision_->currentData().toInt());
  c.streaming = static_cast<respin::Streaming>(streaming_->currentData().toInt());
  c.threads = threads_->value();
  return c;
}

void RunPanel::setConfig(const CalibConfig& c) {
  loading_ = true;
  method_->setCurrentIndex(method_->findData(int(c.method)));
  wbits_->setCurrentIndex(wbits_->findData(c.wbits));
  abits_->setCurrentIndex(abits_->findData(c.abits));
  kvbits_->setCurrentIndex(kvbits_->findData(c.kvbits));
  wGroup_->setValue(static_cast<int>(c.w_group));
  aGroup_->setValue(static_cast<int>(c.a_group));
  kvGroup_->setValue(static_cast<int>(c.kv_group));
  wSym_->setChecked(c.w_sym);
  aSym_->setChecked(c.a_sym);
  kvSym_->setChecked(c.kv_sym);
  wMse_->setChecked(c.w_mse_clip);
  aClip_->setValue(c.a_clip);
  kvClip_->setValue(c.kv_clip);
  fullRank_->setChecked(c.rank < 0);
  if (c.rank >= 0) rank_->setValue(static_cast<int>(c.rank));
  gptq_->setChecked(c.weight_quantizer == respin::WeightQuantizer::Gptq);
  calibText_->setText(QString::fromStdString(c.calib_text));
  evalText_->setText(QString::fromStdString(c.eval_text));
  samples_->setValue(static_cast<int>(c.samples));
  seqLen_->setValue(static_cast<int>(c.seq_len));
  iters_->setValue(static_cast<int>(c.iters));
  lr_->setValue(c.lr);
  batch_->setValue(static_cast<int>(c.batch));
  microBatch_->setValue(static_cast<int>(c.micro_batch));
  checkpoint_->setChecked(c.checkpoint_layers);
  budget_->setText(c.device_memory > 0 ? QString::number(c.device_memory) : QString());
  evalWindows_->setValue(static_cast<int>(c.eval_windows));
  seed_->setValue(static_cast<int>(c.seed));
  {
    const int want = c.device == respin::DeviceChoice::Auto ? -2 : c.device == respin::DeviceChoice::Cpu ? -1 : c.cuda_device;
    int i = device_->findData(want);
    if (i < 0) {  // a saved CUDA device this machine does not have: listed, so the choice shows
      device_->addItem(QString("CUDA %1 (not present)").arg(want), want);
      i = device_->count() - 1;
    }
    device_->setCurrentIndex(i);
  }
  precision_->setCurrentIndex(std::max(0, precision_->findData(static_cast<int>(c.precision))));
  streaming_->setCurrentIndex(std::max(0, streaming_->findData(static_cast<int>(c.streaming))));
  threads_->setValue(c.threads);
  loading_ = false;
  update();
}

QString RunPanel::costText() const { return cost_->text(); }
QString RunPanel::problemText() const { return problems_->text(); }

QString RunPanel::problems() const {
  QStringList out;
  if (!model_) return noModelReason_.isEmpty() ? "Open a model folder first (File > Open model folder)." : noModelReason_;
  const CalibConfig c = config();
  if (c.device_memory < 0) {
    try {
      respin::parse_byte_size(budget_->text().toStdString());
    } catch (const std::exception& e) {
      out << QString("Memory budget: %1").arg(e.what());
    }
    return out.join("\n");
  }
  try {
    c.validate();
  } catch (const std::exception& e) {
    out << QString::fromStdString(e.what());
  }
  if (const std::optional<respin::MemoryPlan> p = plan(); p && !p->fits())
    out << QString::fromStdString(respin::plan_refusal(*p));
  const respin::ModelConfig& m = model_->config;
  auto divides = [&](int64_t g, int64_t width, const QString& what, const QString& where) {
    if (g > 0 && width % g != 0) out << QString("%1 group %2 does not divide %3 (%4)").arg(what).arg(g).arg(where).arg(width);
  };
  if (c.wbits != 16) {
    divides(c.w_group, m.hidden_size, "Weight", "the hidden size");
    divides(c.w_group, m.intermediate_size, "Weight", "the intermediate size");
  }
  if (c.abits != 16) {
    divides(c.a_group, m.hidden_size, "Activation", "the hidden size");
    divides(c.a_group, m.intermediate_size, "Activation", "the intermediate size");
  }
  if (c.kvbits != 16) divides(c.kv_group, m.head_dim, "KV", "the head dim");
  if (c.w_mse_clip && c.wbits == 16 && c.weight_quantizer == respin::WeightQuantizer::Gptq)
    out << "GPTQ needs quantized weights (W below 16)";
  if (respin::method_learns(c.method) && c.iters == 0)
    out << "0 iterations: the rotations stay at their random Hadamard start (set iterations > 0 to learn them)";
  if (c.batch > c.samples) out << QString("Batch %1 is larger than the %2 samples").arg(c.batch).arg(c.samples);
  return out.join("\n");
}

void RunPanel::update() {
  if (loading_) return;
  const CalibConfig c = config();
  const bool respinMethod = c.method == respin::Method::ReSpin;
  for (QWidget* w : std::initializer_list<QWidget*>{rankSlider_, rank_, fullRank_}) w->setEnabled(respinMethod);
  rank_->setEnabled(respinMethod && !fullRank_->isChecked());
  const bool learns = respin::method_learns(c.method);
  for (QWidget* w : std::initializer_list<QWidget*>{iters_, lr_, batch_}) w->setEnabled(learns);
  if (model_ && respinMethod) {
    const respin::ModelConfig& m = model_->config;
    const int64_t D = m.hidden_size, L = m.num_hidden_layers;
    const int64_t r = c.rank < 0 ? D : std::min<int64_t>(c.rank, D);
    const double params = double(L) * respin::skip_correction_parameters_per_layer(D, r);
    const double macs = double(L) * respin::skip_correction_macs_per_token_per_layer(D, r);
    const double layer = double(respin::decoder_layer_linear_parameters(D, m.q_dim(), m.kv_dim(), m.intermediate_size));
    cost_->setText(QString("rank %1: +%2 parameters, +%3 MACs per token (%4% of the decoder layers' linear layers)")
                       .arg(r)
                       .arg(count(params))
                       .arg(count(macs))
                       .arg(100.0 * params / (layer * L), 0, 'f', 2));
  } else {
    cost_->setText(respinMethod ? "" : "no skip correction (ReSpinQuant only)");
  }
  refreshPlanTarget();
  showPlan();
  const QString p = problems();
  problems_->setText(p);
  problems_->setVisible(!p.isEmpty());
  start_->setEnabled(p.isEmpty());
}

RunPanel::~RunPanel() {
  if (planThread_) {
    planThread_->wait();
    delete planThread_;
  }
}

void RunPanel::refreshPlanTarget() {
  if (!model_) return;
  CalibConfig c = config();
  c.device_memory = 0;  // applied on this thread: a budget needs no reading
  const QString key = QString::fromStdString(c.model + "\n" + respin::device_choice_name(c.device) + ":" +
                                             std::to_string(c.cuda_device) + "\n" + respin::precision_name(c.precision) +
                                             "\n" + c.calib_text + "\n" + c.eval_text);
  if (key == targetKey_) return;
  if (planThread_) {  // one read at a time; the latest options are read when it ends
    planPending_ = true;
    return;
  }
  targetKey_ = key;
  target_.reset();
  targetError_.clear();
  planThread_ = QThread::create([this, c, key] {
    std::optional<respin::PlanTarget> t;
    QString error;
    try {
      t = respin::plan_target(c);
    } catch (const std::exception& e) {
      error = QString::fromStdString(e.what());
    }
    QMetaObject::invokeMethod(
        this,
        [this, t, error, key] {
          planThread_->wait();
          delete planThread_;
          planThread_ = nullptr;
          if (key == targetKey_) {
            target_ = t;
            targetError_ = error;
          }
          if (planPending_) {
            planPending_ = false;
            targetKey_.clear();
          }
          update();
        },
        Qt::QueuedConnection);
  });
  planThread_->start();
}

std::optional<respin::MemoryPlan> RunPanel::plan() const {
  if (!model_ || !target_) return std::nullopt;
  const CalibConfig c = config();
  if (c.device_memory < 0) return std::nullopt;
  try {
    c.validate();
  } catch (const std::exception&) {
    return std::nullopt;
  }
  respin::PlanTarget t = *target_;
  if (c.device_memory > 0) {
    t.capacity_bytes = c.device_memory;
    t.capacity_given = true;
  }
  return respin::plan_memory(c, model_->config, t);
}

QString RunPanel::planText() const { return plan_->text(); }

void RunPanel::showPlan() {
  const std::optional<respin::MemoryPlan> p = plan();
  planBar_->setVisible(p.has_value());
  if (!p) {
    plan_->setText(!model_ ? QString() : !targetError_.isEmpty() ? "No memory plan: " + targetError_
                                       : target_ ? QString() : QString("Planning memory..."));
    return;
  }
  const respin::PhaseMemory& peak = p->peak();
  const double share = p->target.capacity_bytes > 0 ? double(peak.device_bytes) / double(p->target.capacity_bytes) : 1;
  planBar_->setValue(static_cast<int>(std::min(1.0, share) * 1000));
  planBar_->setStyleSheet(p->fits() ? "" : "QProgressBar::chunk { background: #b00020; }");
  QString text = QString("Peak %1 in %2 (%6), %3% of the %4 %5")
                     .arg(QString::fromStdString(respin::format_bytes(peak.device_bytes)))
                     .arg(respin::phase_name(peak.phase))
                     .arg(100.0 * share, 0, 'f', share < 0.1 ? 1 : 0)
                     .arg(QString::fromStdString(respin::format_bytes(p->target.capacity_bytes)))
                     .arg(p->target.capacity_given ? "budget" : (p->target.device == "cpu" ? "available" : "of the GPU"))
                     .arg(respin::precision_name(p->target.precision));
  if (const double sec = p->estimated_seconds(); sec >= 0)
    text += QString(", ~%1").arg(QString::fromStdString(respin::format_duration(sec)));
  if (respin::method_learns(config().method))
    text += QString("; learning %1%2%3")
                .arg(p->micro_batch > 0 ? QString("in micro-batches of %1").arg(p->micro_batch) : "the whole batch at once")
                .arg(p->checkpoint_layers ? ", layers checkpointed" : "")
                .arg(p->learning_chosen ? " (chosen to fit)" : "");
  if (p->streamed) text += p->streaming_chosen ? "; a layer at a time (chosen to fit)" : "; a layer at a time";
  plan_->setText(text);
  plan_->setToolTip(QString::fromStdString(respin::plan_table(*p)));
}
