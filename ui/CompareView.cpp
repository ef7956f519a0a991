// The run diff (see CompareView.h).
#include "ui/CompareView.h"

#include <QCheckBox>
#include <QComboBox>
#include <QFileDialog>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QPushButton>
#include <QSortFilterProxyModel>
#include <QSplitter>
#include <QStandardItemModel>
#include <QTableView>
#include <QTableWidget>
#include <QVBoxLayout>
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "core/store/run_store.h"
#include "ui/OutliersView.h"
#include "ui/PlotExport.h"
#include "ui/StoreService.h"

using respin::HookSite;
using respin::StatsStage;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kSortRole = Qt::UserRole + 1;
constexpr int kSiteRole = Qt::UserRole + 2;
constexpr int kValueRole = Qt::UserRole + 3;  // the exact number behind a cell
constexpr int kKeyRole = Qt::UserRole + 4;    // config table: the field

const char* const kMetricNames[] = {"kurtosis", "max/median", "absmax", "mean square"};
const char* const kMetricCsv[] = {"kurtosis", "max_median_ratio", "absmax", "mean_square"};

QString q(const std::string& s) { return QString::fromStdString(s); }

QString num(double v) {
  if (std::isnan(v)) return QStringLiteral("—");
  return QString::number(v, 'g', 5);
}

double metricOf(const respin::SiteSummary& s, int m) {
  switch (m) {
    case 0: return s.count > 0 ? s.kurtosis : kNaN;
    case 1: return s.max_median_ratio;
    case 2: return s.absmax;
    case 3: return s.mean_square;
  }
  return kNaN;
}

void flatten(const nlohmann::json& j, const std::string& prefix, std::map<std::string, std::string>& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
  } else {
    out[prefix] = j.is_string() ? j.get<std::string>() : j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}

QString opt(const std::optional<double>& v, int digits = 4) { return v ? QString::number(*v, 'f', digits) : QString("—"); }

}  // namespace

CompareView::CompareView(QWidget* parent) : QWidget(parent) {
  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(6, 6, 6, 6);
  header_ = new QLabel("Select two runs to compare.");
  header_->setTextFormat(Qt::RichText);
  header_->setWordWrap(true);
  header_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  layout->addWidget(header_);
  message_ = new QLabel;
  message_->setWordWrap(true);
  message_->setStyleSheet("color: #b00020");
  message_->hide();
  layout->addWidget(message_);

  auto* configBox = new QGroupBox("Configuration and results");
  auto* configLayout = new QVBoxLayout(configBox);
  diffOnly_ = new QCheckBox("Differences only");
  diffOnly_->setChecked(true);
  configLayout->addWidget(diffOnly_);
  config_ = new QTableWidget(0, 3);
  config_->setHorizontalHeaderLabels({"Field", "A", "B"});
  config_->verticalHeader()->hide();
  config_->setEditTriggers(QAbstractItemView::NoEditTriggers);
  config_->setSelectionBehavior(QAbstractItemView::SelectRows);
  config_->setWordWrap(false);
  config_->setMinimumHeight(config_->fontMetrics().height() * 14);
  config_->verticalHeader()->setDefaultSectionSize(config_->fontMetrics().height() + 6);
  config_->horizontalHeader()->setSectionResizeMode(0, QHeaderView::ResizeToContents);
  config_->horizontalHeader()->setSectionResizeMode(1, QHeaderView::Stretch);
  config_->horizontalHeader()->setSectionResizeMode(2, QHeaderView::Stretch);
  configLayout->addWidget(config_);

  auto* layerBox = new QGroupBox("Layer by layer");
  auto* layerLayout = new QVBoxLayout(layerBox);
  auto* bar = new QHBoxLayout;
  bar->addWidget(new QLabel("Statistics:"));
  stageBox_ = new QComboBox;
  stageBox_->addItem("after rotation", int(StatsStage::After));
  stageBox_->addItem("before rotation", int(StatsStage::Before));
  bar->addWidget(stageBox_);
  bar->addWidget(new QLabel("Sort by largest change in:"));
  sortBox_ = new QComboBox;
  for (int m = 0; m < kMetrics; ++m) sortBox_->addItem(kMetricNames[m], m);
  sortBox_->setToolTip("Largest change: largest |ln(B / A)|, a factor either way");
  bar->addWidget(sortBox_);
  bar->addStretch(1);
  auto* exportButton = new QPushButton("Export CSV…");
  bar->addWidget(exportButton);
  layerLayout->addLayout(bar);
  model_ = new QStandardItemModel(this);
  QStringList headers = {"Layer", "Site"};
  for (int m = 0; m < kMetrics; ++m)
    headers << QString("%1 A").arg(kMetricNames[m]) << QString("%1 B").arg(kMetricNames[m]) << QString("%1 B/A").arg(kMetricNames[m]);
  model_->setHorizontalHeaderLabels(headers);
  for (int m = 0; m < kMetrics; ++m)
    model_->horizontalHeaderItem(columnOf(Metric(m), 2))
        ->setToolTip("B / A; sorted by |ln(B / A)| (the largest change either way first). Blue: lower in B, red: higher.");
  proxy_ = new QSortFilterProxyModel(this);
  proxy_->setSourceModel(model_);
  proxy_->setSortRole(kSortRole);
  layers_ = new QTableView;
  layers_->setModel(proxy_);
  layers_->setSortingEnabled(true);
  layers_->verticalHeader()->hide();
  layers_->verticalHeader()->setDefaultSectionSize(layers_->fontMetrics().height() + 6);
  layers_->setSelectionBehavior(QAbstractItemView::SelectRows);
  layers_->setEditTriggers(QAbstractItemView::NoEditTriggers);
  layers_->setAlternatingRowColors(true);
  layers_->horizontalHeader()->setStretchLastSection(true);
  layerLayout->addWidget(layers_);

  auto* split = new QSplitter(Qt::Vertical);
  split->addWidget(configBox);
  split->addWidget(layerBox);
  split->setStretchFactor(0, 1);
  split->setStretchFactor(1, 3);
  layout->addWidget(split, 1);

  connect(diffOnly_, &QCheckBox::toggled, this, [this] { applyDifferencesOnly(); });
  connect(stageBox_, &QComboBox::currentIndexChanged, this,
          [this](int i) { setStage(StatsStage(stageBox_->itemData(i).toInt())); });
  connect(sortBox_, &QComboBox::activated, this, [this](int i) { sortByLargestChange(Metric(sortBox_->itemData(i).toInt())); });
  connect(exportButton, &QPushButton::clicked, this, [this] {
    const QString path = QFileDialog::getSaveFileName(this, "Export layer diff", QString("diff-%1-%2.csv").arg(a_).arg(b_),
                                                      "CSV (*.csv)");
    if (path.isEmpty()) return;
    QString error;
    if (!exportLayerCsv(path, &error)) showMessage(error);
  });
  resize(1100, 800);
}

int CompareView::columnOf(Metric m, int which) { return 2 + 3 * int(m) + which; }

void CompareView::showMessage(const QString& text) {
  message_->setText(text);
  message_->setVisible(!text.isEmpty());
}

QString CompareView::messageText() const { return message_->isHidden() ? QString() : message_->text(); }

void CompareView::setStorePath(const QString& db) { db_ = db; }

qint64 CompareView::previousRunOfSameModel(const QString& db, qint64 id, QString* why) {
  struct Found {
    std::optional<respin::RunDetail> detail;
    std::vector<respin::RunSummary> runs;
  };
  QString error;
  const std::optional<Found> found = StoreService::shared().wait<Found>(
      db, StoreService::Access::Read,
      [id](respin::RunStore& s) {
        Found f;
        f.detail = s.get_run(id);
        if (f.detail) {
          respin::RunFilter filter;
          filter.model = f.detail->summary.model_folder;
          f.runs = s.list_runs(filter);
        }
        return f;
      },
      &error, nullptr);
  if (!found) {
    if (why) *why = error;
    return -1;
  }
  {
    const std::optional<respin::RunDetail>& d = found->detail;
    if (!d) {
      if (why) *why = QString("%1: no run %2").arg(db).arg(id);
      return -1;
    }
    qint64 anyEarlier = -1, finishedEarlier = -1;
    for (const respin::RunSummary& r : found->runs) {
      if (r.id >= id) continue;
      anyEarlier = std::max<qint64>(anyEarlier, r.id);
      if (r.status == respin::RunStatus::Finished) finishedEarlier = std::max<qint64>(finishedEarlier, r.id);
    }
    const qint64 other = finishedEarlier >= 0 ? finishedEarlier : anyEarlier;
    if (other < 0 && why)
      *why = QString("run %1 is the first run of %2 in %3: name the run to compare it with (--run2 ID)")
                 .arg(id)
                 .arg(q(d->summary.model_folder), db);
    return other;
  }
}

bool CompareView::compare(qint64 a, qint64 b) {
  showMessage(QString());
  config_->setRowCount(0);
  model_->removeRows(0, model_->rowCount());
  if (busy_) {
    showMessage(db_ + ": busy with another store read; try again");
    return false;
  }
  using Pair = std::pair<std::optional<respin::RunDetail>, std::optional<respin::RunDetail>>;
  showMessage(QString("Loading runs %1 and %2…").arg(a).arg(b));
  busy_ = true;
  QString error;
  const std::optional<Pair> got = StoreService::shared().wait<Pair>(
      db_, StoreService::Access::Read, [a, b](respin::RunStore& s) { return Pair{s.get_run(a), s.get_run(b)}; }, &error,
      this, [this](const QString& line) { showMessage(line); });
  busy_ = false;
  if (!got) {
    showMessage(error + (StoreService::isLockedError(error) ? " (select the runs again to retry)" : QString()));
    a_ = b_ = -1;
    return false;
  }
  showMessage(QString());
  const std::optional<respin::RunDetail>& da = got->first;
  const std::optional<respin::RunDetail>& db = got->second;
  if (!da || !db) {
    showMessage(QString("%1: no run %2").arg(db_).arg(!da ? a : b));
    a_ = b_ = -1;
    header_->setText("Select two runs to compare.");
    return false;
  }
  a_ = a;
  b_ = b;
  auto head = [](const char* which, const respin::RunDetail& d) {
    return QString("<b>%1</b>: run %2 · %3 · %4 · %5 · PPL %6")
        .arg(which)
        .arg(d.summary.id)
        .arg(q(d.config.label()).toHtmlEscaped(), q(d.model.folder).section('/', -1).toHtmlEscaped(),
             respin::run_status_name(d.summary.status), opt(d.summary.quantized_perplexity, 3));
  };
  header_->setText(head("A", *da) + "<br>" + head("B", *db));

  // Results first, then every configuration field.
  std::vector<std::pair<QString, std::pair<QString, QString>>> rows;
  auto add = [&](const QString& key, const QString& va, const QString& vb) { rows.push_back({key, {va, vb}}); };
  auto both = [&](const QString& key, auto get) { add(key, get(*da), get(*db)); };
  using D = respin::RunDetail;
  both("status", [](const D& d) { return QString(respin::run_status_name(d.summary.status)); });
  both("perplexity (quantized)", [](const D& d) { return opt(d.summary.quantized_perplexity); });
  both("perplexity (FP)", [](const D& d) { return opt(d.summary.fp_perplexity); });
  both("applied rank", [](const D& d) {
    return d.summary.applied_rank ? (*d.summary.applied_rank < 0 ? QString("none") : QString::number(*d.summary.applied_rank))
                                  : QString("—");
  });
  both("online parameters", [](const D& d) { return d.record ? QString::number(d.record->method.online_parameters) : QString("—"); });
  both("online MACs per token",
       [](const D& d) { return d.record ? QString::number(d.record->method.online_macs_per_token) : QString("—"); });
  both("eval tokens/s", [](const D& d) { return d.record ? QString::number(d.record->results.eval_tokens_per_s, 'f', 1) : QString("—"); });
  both("calibration seconds", [](const D& d) { return opt(d.summary.calibration_seconds, 1); });
  both("total seconds", [](const D& d) { return opt(d.summary.total_seconds, 1); });
  both("peak RSS (MiB)",
       [](const D& d) { return d.record ? QString::number(d.record->peak_rss_bytes / 1048576.0, 'f', 0) : QString("—"); });
  both("device", [](const D& d) { return d.record ? q(d.record->timing.device) : QString("—"); });
  both("model sha256", [](const D& d) { return q(d.model.sha256).left(16); });
  both("respin version", [](const D& d) { return q(d.respin_version); });
  both("tags", [](const D& d) {
    QStringList t;
    for (const std::string& s : d.summary.tags) t << "#" + q(s);
    return t.join(' ');
  });
  both("note", [](const D& d) { return q(d.note).replace('\n', ' '); });
  const size_t results = rows.size();
  std::map<std::string, std::string> ca, cb;
  try {
    flatten(nlohmann::json::parse(da->config_json), "", ca);
    flatten(nlohmann::json::parse(db->config_json), "", cb);
  } catch (const std::exception& e) {
    showMessage(QString("run config: ") + e.what());
  }
  std::set<std::string> keys;
  for (const auto& [k, v] : ca) keys.insert(k);
  for (const auto& [k, v] : cb) keys.insert(k);
  for (const std::string& k : keys)
    add("config." + q(k), ca.count(k) ? q(ca[k]) : QString("—"), cb.count(k) ? q(cb[k]) : QString("—"));

  config_->setRowCount(int(rows.size()));
  for (int r = 0; r < int(rows.size()); ++r) {
    const auto& [key, v] = rows[size_t(r)];
    auto* k = new QTableWidgetItem(key);
    k->setData(kKeyRole, key);
    auto* ia = new QTableWidgetItem(v.first);
    auto* ib = new QTableWidgetItem(v.second);
    ia->setToolTip(v.first);
    ib->setToolTip(v.second);
    const bool differ = v.first != v.second;
    if (size_t(r) < results) {
      QFont f = k->font();
      f.setItalic(true);
      k->setFont(f);
    }
    if (differ) {
      for (QTableWidgetItem* it : {k, ia, ib}) {
        QFont f = it->font();
        f.setBold(true);
        it->setFont(f);
        it->setBackground(QColor(255, 244, 204));
      }
    }
    k->setData(Qt::UserRole, differ);
    config_->setItem(r, 0, k);
    config_->setItem(r, 1, ia);
    config_->setItem(r, 2, ib);
  }
  applyDifferencesOnly();
  fillLayers();
  return true;
}

void CompareView::applyDifferencesOnly() {
  const bool only = diffOnly_->isChecked();
  for (int r = 0; r < config_->rowCount(); ++r) config_->setRowHidden(r, only && !config_->item(r, 0)->data(Qt::UserRole).toBool());
}

void CompareView::setDifferencesOnly(bool on) { diffOnly_->setChecked(on); }
bool CompareView::differencesOnly() const { return diffOnly_->isChecked(); }

void CompareView::setStage(StatsStage stage) {
  const int i = stageBox_->findData(int(stage));
  if (stageBox_->currentIndex() != i) {
    stageBox_->setCurrentIndex(i);
    return;
  }
  stage_ = stage;
  if (a_ >= 0) fillLayers();
}

void CompareView::fillLayers() {
  model_->removeRows(0, model_->rowCount());
  std::map<std::pair<int, int>, respin::SiteSummary> sa, sb;
  if (busy_) return;  // the stage box changed while a read waits; compare() fills the table after it
  using Cells = std::pair<std::vector<respin::SiteSummary>, std::vector<respin::SiteSummary>>;
  const qint64 a = a_, b = b_;
  const StatsStage stage = stage_;
  busy_ = true;
  QString error;
  const std::optional<Cells> got = StoreService::shared().wait<Cells>(
      db_, StoreService::Access::QuickRead,
      [a, b, stage](respin::RunStore& s) { return Cells{s.layer_stats_summary(a, stage), s.layer_stats_summary(b, stage)}; },
      &error, this, [this](const QString& line) { showMessage(line); });
  busy_ = false;
  if (!got) {
    showMessage(error);
    return;
  }
  if (messageText() == StoreService::lockedText(db_)) showMessage(QString());
  for (const respin::SiteSummary& c : got->first) sa[{c.layer, int(c.site)}] = c;
  for (const respin::SiteSummary& c : got->second) sb[{c.layer, int(c.site)}] = c;
  std::set<std::pair<int, int>> keys;
  for (const auto& [k, v] : sa) keys.insert(k);
  for (const auto& [k, v] : sb) keys.insert(k);
  if (keys.empty()) {
    showMessage(QString("Neither run has activation statistics %1 rotation.").arg(stage_ == StatsStage::After ? "after" : "before"));
    return;
  }
  // Sites in the grid's order, then any other.
  auto siteOrder = [](int site) {
    const auto& g = outliers::gridSites();
    auto it = std::find(g.begin(), g.end(), HookSite(site));
    return it == g.end() ? 100 + site : int(it - g.begin());
  };
  model_->setRowCount(0);
  for (const auto& key : keys) {
    const auto [layer, site] = key;
    QList<QStandardItem*> row;
    auto* li = new QStandardItem(QString::number(layer));
    li->setData(double(layer) * 1000 + siteOrder(site), kSortRole);
    li->setData(layer, kValueRole);
    li->setTextAlignment(Qt::AlignRight | Qt::AlignVCenter);
    auto* si = new QStandardItem(outliers::siteShortName(HookSite(site)));
    si->setData(siteOrder(site), kSortRole);
    si->setData(site, kSiteRole);
    si->setToolTip(outliers::siteLongName(HookSite(site)));
    row << li << si;
    const bool ha = sa.count(key), hb = sb.count(key);
    for (int m = 0; m < kMetrics; ++m) {
      const double va = ha ? metricOf(sa[key], m) : kNaN, vb = hb ? metricOf(sb[key], m) : kNaN;
      auto* ia = new QStandardItem(num(va));
      auto* ib = new QStandardItem(num(vb));
      ia->setData(std::isnan(va) ? -1.0 : va, kSortRole);
      ib->setData(std::isnan(vb) ? -1.0 : vb, kSortRole);
      ia->setData(va, kValueRole);
      ib->setData(vb, kValueRole);
      const double ratio = va > 0 && vb >= 0 ? vb / va : kNaN;
      const double key2 = ratio > 0 ? std::abs(std::log(ratio)) : (va == vb && !std::isnan(va) ? 0.0 : -1.0);
      QString text = "—";
      if (!std::isnan(ratio)) text = "×" + QString::number(ratio, 'g', 3);
      auto* ic = new QStandardItem(text);
      ic->setData(key2, kSortRole);  // missing: -1, last when sorted largest first
      ic->setData(ratio, kValueRole);
      if (!std::isnan(va) && !std::isnan(vb))
        ic->setToolTip(QString("B − A = %1, |ln(B/A)| = %2").arg(num(vb - va)).arg(key2 >= 0 ? num(key2) : QString("—")));
      if (ratio > 0 && key2 > 0.01) {
        const int alpha = int(std::min(1.0, key2 / std::log(10.0)) * 90) + 25;  // text stays readable
        ic->setBackground(ratio < 1 ? QColor(33, 102, 172, alpha) : QColor(178, 24, 43, alpha));
      }
      for (QStandardItem* it : {ia, ib, ic}) it->setTextAlignment(Qt::AlignRight | Qt::AlignVCenter);
      row << ia << ib << ic;
    }
    for (QStandardItem* it : row) it->setEditable(false);
    model_->appendRow(row);
  }
  sortByLargestChange(Metric(sortBox_->currentData().toInt()));
  layers_->resizeColumnsToContents();
}

void CompareView::sortByLargestChange(Metric m) {
  const int i = sortBox_->findData(int(m));
  if (sortBox_->currentIndex() != i) sortBox_->setCurrentIndex(i);
  layers_->sortByColumn(columnOf(m, 2), Qt::DescendingOrder);
}

QStringList CompareView::visibleConfigKeys() const {
  QStringList out;
  for (int r = 0; r < config_->rowCount(); ++r)
    if (!config_->isRowHidden(r)) out << config_->item(r, 0)->data(kKeyRole).toString();
  return out;
}

QString CompareView::configValue(const QString& key, int run) const {
  for (int r = 0; r < config_->rowCount(); ++r)
    if (config_->item(r, 0)->data(kKeyRole).toString() == key) return config_->item(r, run == 0 ? 1 : 2)->text();
  return {};
}

QList<QPair<int, HookSite>> CompareView::layerRowsInOrder() const {
  QList<QPair<int, HookSite>> out;
  for (int r = 0; r < proxy_->rowCount(); ++r)
    out << qMakePair(proxy_->index(r, 0).data(kValueRole).toInt(), HookSite(proxy_->index(r, 1).data(kSiteRole).toInt()));
  return out;
}

double CompareView::layerChange(int row, Metric m) const {
  return proxy_->index(row, columnOf(m, 2)).data(kSortRole).toDouble();
}

bool CompareView::exportLayerCsv(const QString& path, QString* error) const {
  using plot_export::csvNumber;
  QString out = "layer,site";
  for (int m = 0; m < kMetrics; ++m) out += QString(",%1_a,%1_b,%1_b_over_a").arg(kMetricCsv[m]);
  out += '\n';
  for (int r = 0; r < proxy_->rowCount(); ++r) {
    out += QString::number(proxy_->index(r, 0).data(kValueRole).toInt()) + ',' +
           respin::hook_site_name(HookSite(proxy_->index(r, 1).data(kSiteRole).toInt()));
    for (int c = 2; c < model_->columnCount(); ++c) out += ',' + csvNumber(proxy_->index(r, c).data(kValueRole).toDouble());
    out += '\n';
  }
  return plot_export::writeText(path, out, error);
}
