// The runs view (see RunsView.h).
#include "ui/RunsView.h"

#include <QComboBox>
#include <QFileDialog>
#include <QFileInfo>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QInputDialog>
#include <QItemSelectionModel>
#include <QLabel>
#include <QLineEdit>
#include <QMenu>
#include <QMessageBox>
#include <QPushButton>
#include <QSortFilterProxyModel>
#include <QSplitter>
#include <QTimer>
#include <QStandardItemModel>
#include <QToolTip>
#include <QTreeView>
#include <QVBoxLayout>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "core/calib/run_record.h"
#include "core/store/run_data.h"
#include "core/store/run_store.h"
#include "core/util/fs.h"
#include "ui/PlotExport.h"

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kSortRole = Qt::UserRole + 1;    // numeric or text sort key
constexpr int kRunIdRole = Qt::UserRole + 2;   // run id (-1 on a sweep row)
constexpr int kSweepRole = Qt::UserRole + 3;   // sweep id on a sweep row
constexpr int kStatusRole = Qt::UserRole + 4;  // status name (column 0 of a run row)
constexpr int kMethodRole = Qt::UserRole + 5;  // method name (column 0 of a run row)
constexpr int kTextRole = Qt::UserRole + 6;    // lower-case text the filter searches

const char* const kMethods[] = {"rtn", "quarot", "spinquant", "respin"};

QString q(const std::string& s) { return QString::fromStdString(s); }

QString timeText(const std::optional<double>& s) {
  if (!s) return QStringLiteral("—");
  const double v = *s;
  if (v < 60) return QString::number(v, 'f', 1) + " s";
  const long t = std::lround(v);
  if (t < 3600) return QString("%1m %2s").arg(t / 60).arg(t % 60, 2, 10, QChar('0'));
  return QString("%1h %2m").arg(t / 3600).arg((t / 60) % 60, 2, 10, QChar('0'));
}

QString pplText(const std::optional<double>& v) { return v ? QString::number(*v, 'f', 3) : QStringLiteral("—"); }

QString rankText(const respin::RunSummary& r) {
  if (r.method != respin::Method::ReSpin) return QStringLiteral("—");
  if (r.applied_rank) return *r.applied_rank < 0 ? QStringLiteral("—") : QString::number(*r.applied_rank);
  return r.rank < 0 ? QStringLiteral("full") : QString::number(r.rank);
}

double rankSort(const respin::RunSummary& r) {
  if (r.method != respin::Method::ReSpin) return -1;
  if (r.applied_rank) return double(*r.applied_rank);
  return r.rank < 0 ? 1e12 : double(r.rank);
}

QString bitsText(const respin::RunSummary& r) { return QString("W%1A%2KV%3").arg(r.wbits).arg(r.abits).arg(r.kvbits); }

QString label(const respin::RunSummary& r) {
  QString s = respin::method_name(r.method);
  if (r.method == respin::Method::ReSpin) s += " r=" + rankText(r);
  s += " " + bitsText(r);
  if (r.weight_quantizer == respin::WeightQuantizer::Gptq) s += " gptq";
  return s;
}

QStandardItem* item(const QString& text, const QVariant& sort, qint64 id) {
  auto* it = new QStandardItem(text);
  it->setEditable(false);
  it->setData(sort, kSortRole);
  it->setData(id, kRunIdRole);
  return it;
}

QString plotXName(RunsView::PlotX x) {
  switch (x) {
    case RunsView::PlotX::Rank: return "applied skip rank r";
    case RunsView::PlotX::WBits: return "weight bits";
    case RunsView::PlotX::ABits: return "activation bits";
    case RunsView::PlotX::KvBits: return "KV-cache bits";
    case RunsView::PlotX::Method: return "method";
    case RunsView::PlotX::Memory: return "planned peak memory (GB)";
  }
  return {};
}

QString bigNumber(double v) {
  if (std::isnan(v)) return QStringLiteral("—");
  const double a = std::abs(v);
  if (a >= 1e9) return QString::number(v / 1e9, 'g', 3) + "G";
  if (a >= 1e6) return QString::number(v / 1e6, 'g', 3) + "M";
  if (a >= 1e3) return QString::number(v / 1e3, 'g', 3) + "k";
  return QString::number(v, 'g', 4);
}

// Small reads after the refresh already checked the file.
constexpr StoreService::Access kQuickRead = StoreService::Access::QuickRead;

}  // namespace

// ---------------------------------------------------------------------------------------------
namespace runs_plot {

QVector<int> paretoFront(const QVector<QPointF>& points) {
  QVector<int> order;
  for (int i = 0; i < points.size(); ++i)
    if (std::isfinite(points[i].x()) && std::isfinite(points[i].y())) order << i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (points[a].x() != points[b].x()) return points[a].x() < points[b].x();
    return points[a].y() < points[b].y();
  });
  QVector<int> front;
  double best = std::numeric_limits<double>::infinity();
  for (int i : order)
    if (points[i].y() < best) {
      front << i;
      best = points[i].y();
    }
  return front;
}

int kneeOf(const QVector<QPointF>& points, const QVector<int>& front) {
  if (front.size() < 3) return -1;
  const QPointF a = points[front.front()], b = points[front.back()];
  const double dx = b.x() - a.x(), dy = a.y() - b.y();  // x increases, y decreases along a front
  if (!(dx > 0) || !(dy > 0)) return -1;
  // Scaled to [0, 1]: the line runs from (0, 1) to (1, 0); distance is proportional to 1 - x - y.
  int best = -1;
  double bestDist = 1e-9;
  for (int k = 1; k + 1 < front.size(); ++k) {
    const QPointF p = points[front[k]];
    const double d = 1 - (p.x() - a.x()) / dx - (p.y() - b.y()) / dy;
    if (d > bestDist) bestDist = d, best = front[k];
  }
  return best;
}

}  // namespace runs_plot

// ---------------------------------------------------------------------------------------------
// Filter (words, status, method) and numeric sort over the run tree. A sweep row is kept when one
// of its runs is (recursive filtering).
class RunsFilterProxy : public QSortFilterProxyModel {
 public:
  using QSortFilterProxyModel::QSortFilterProxyModel;
  void setWords(const QString& text) {
    words_ = text.toLower().split(' ', Qt::SkipEmptyParts);
    invalidateFilter();
  }
  void setStatus(const QString& s) {
    status_ = s;
    invalidateFilter();
  }
  void setMethod(const QString& m) {
    method_ = m;
    invalidateFilter();
  }
  bool filtering() const { return !words_.isEmpty() || !status_.isEmpty() || !method_.isEmpty(); }

 protected:
  bool filterAcceptsRow(int row, const QModelIndex& parent) const override {
    const QModelIndex idx = sourceModel()->index(row, 0, parent);
    if (idx.data(kRunIdRole).toLongLong() < 0) return !filtering();  // a sweep: through its runs
    if (!status_.isEmpty() && idx.data(kStatusRole).toString() != status_) return false;
    if (!method_.isEmpty() && idx.data(kMethodRole).toString() != method_) return false;
    const QString text = idx.data(kTextRole).toString();
    for (const QString& w : words_)
      if (!text.contains(w)) return false;
    return true;
  }
  bool lessThan(const QModelIndex& l, const QModelIndex& r) const override {
    const QVariant a = l.data(kSortRole), b = r.data(kSortRole);
    const bool na = a.typeId() == QMetaType::Double || a.typeId() == QMetaType::LongLong;
    const bool nb = b.typeId() == QMetaType::Double || b.typeId() == QMetaType::LongLong;
    if (na && nb) {
      const double x = a.toDouble(), y = b.toDouble();
      if (std::isnan(x) || std::isnan(y)) {  // missing values last in either order
        const bool ascending = sortOrder() == Qt::AscendingOrder;
        return ascending ? !std::isnan(x) && std::isnan(y) : std::isnan(x) && !std::isnan(y);
      }
      return x < y;
    }
    if (na != nb) return na;  // numbers before text
    return QString::localeAwareCompare(a.toString(), b.toString()) < 0;
  }

 private:
  QStringList words_;
  QString status_, method_;
};

// ---------------------------------------------------------------------------------------------
RunsView::RunsView(QWidget* parent) : QWidget(parent) {
  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(6, 6, 6, 6);

  auto* bar = new QHBoxLayout;
  filter_ = new QLineEdit;
  filter_->setPlaceholderText("Filter: model, method, bits, tag, status…");
  filter_->setClearButtonEnabled(true);
  bar->addWidget(filter_, 2);
  statusBox_ = new QComboBox;
  statusBox_->addItem("Any status", QString());
  for (const char* s : {"running", "finished", "cancelled", "failed", "interrupted"}) statusBox_->addItem(s, QString(s));
  bar->addWidget(statusBox_);
  methodBox_ = new QComboBox;
  methodBox_->addItem("Any method", QString());
  for (const char* m : kMethods) methodBox_->addItem(m, QString(m));
  bar->addWidget(methodBox_);
  tagButton_ = new QPushButton("Tag…");
  untagButton_ = new QPushButton("Untag…");
  noteButton_ = new QPushButton("Note…");
  deleteButton_ = new QPushButton("Delete…");
  compareButton_ = new QPushButton("Compare");
  compareButton_->setToolTip("Compare the two selected runs layer by layer");
  exportButton_ = new QPushButton("Export model…");
  exportDataButton_ = new QPushButton("Export data…");
  exportDataButton_->setToolTip("The selected runs' data (config, results, loss curve, per-layer statistics) as JSON or CSV");
  auto* refreshButton = new QPushButton("Refresh");
  bar->addWidget(refreshButton);
  layout->addLayout(bar);
  // The actions on a second row: the view fits beside the run panel at 1280 pixels.
  auto* actions = new QHBoxLayout;
  for (QPushButton* b : {tagButton_, untagButton_, noteButton_, deleteButton_, compareButton_, exportButton_, exportDataButton_})
    actions->addWidget(b);
  actions->addStretch(1);
  layout->addLayout(actions);

  message_ = new QLabel;
  message_->setWordWrap(true);
  message_->hide();
  layout->addWidget(message_);

  model_ = new QStandardItemModel(this);
  model_->setHorizontalHeaderLabels(
      {"ID", "Model", "Method", "Bits", "Rank", "Status", "PPL", "FP PPL", "Time", "Created (UTC)", "Tags"});
  model_->horizontalHeaderItem(ColPpl)->setToolTip("Perplexity of the quantized model");
  model_->horizontalHeaderItem(ColFpPpl)->setToolTip("Perplexity of the unquantized model");
  model_->horizontalHeaderItem(ColTime)->setToolTip("Total run time");
  model_->horizontalHeaderItem(ColRank)->setToolTip("ReSpinQuant's applied skip-path rank");
  proxy_ = new RunsFilterProxy(this);
  proxy_->setSourceModel(model_);
  proxy_->setRecursiveFilteringEnabled(true);
  proxy_->setSortRole(kSortRole);
  view_ = new QTreeView;
  view_->setModel(proxy_);
  view_->setSortingEnabled(true);
  view_->sortByColumn(ColId, Qt::AscendingOrder);
  view_->setSelectionMode(QAbstractItemView::ExtendedSelection);
  view_->setSelectionBehavior(QAbstractItemView::SelectRows);
  view_->setAlternatingRowColors(true);
  view_->setUniformRowHeights(true);
  view_->setRootIsDecorated(true);
  view_->setContextMenuPolicy(Qt::CustomContextMenu);
  view_->header()->setStretchLastSection(true);

  note_ = new QLabel;
  note_->setWordWrap(true);
  note_->setForegroundRole(QPalette::PlaceholderText);  // follows the light/dark palette
  note_->setTextInteractionFlags(Qt::TextSelectableByMouse);

  auto* top = new QWidget;
  auto* topLayout = new QVBoxLayout(top);
  topLayout->setContentsMargins(0, 0, 0, 0);
  topLayout->addWidget(view_, 1);
  topLayout->addWidget(note_);

  auto* bottom = new QWidget;
  auto* bottomLayout = new QVBoxLayout(bottom);
  bottomLayout->setContentsMargins(0, 0, 0, 0);
  auto* plotBar = new QHBoxLayout;
  plotBar->addWidget(new QLabel("Plot:"));
  xBox_ = new QComboBox;
  xBox_->addItem("Perplexity vs rank", int(PlotX::Rank));
  xBox_->addItem("Perplexity vs weight bits", int(PlotX::WBits));
  xBox_->addItem("Perplexity vs activation bits", int(PlotX::ABits));
  xBox_->addItem("Perplexity vs KV bits", int(PlotX::KvBits));
  xBox_->addItem("Perplexity vs method", int(PlotX::Method));
  xBox_->addItem("Memory: measured vs planned", int(PlotX::Memory));
  plotBar->addWidget(xBox_);
  plotBar->addWidget(new QLabel("Second axis:"));
  costBox_ = new QComboBox;
  costBox_->addItem("none", int(CostAxis::None));
  costBox_->addItem("online MACs per token", int(CostAxis::MacsPerToken));
  costBox_->addItem("extra parameters", int(CostAxis::Parameters));
  costBox_->setCurrentIndex(1);
  plotBar->addWidget(costBox_);
  plotBar->addStretch(1);
  bottomLayout->addLayout(plotBar);
  auto* sourceBar = new QHBoxLayout;
  sourceBar->addWidget(new QLabel("Runs:"));
  sourceBox_ = new QComboBox;
  // A long sweep name must not widen the window: the box shows ~24 characters at least and
  // grows with the view.
  sourceBox_->setSizeAdjustPolicy(QComboBox::AdjustToMinimumContentsLengthWithIcon);
  sourceBox_->setMinimumContentsLength(24);
  sourceBar->addWidget(sourceBox_, 1);
  plotSelectionButton_ = new QPushButton("Plot selection");
  plotSelectionButton_->setToolTip("Plot the runs selected in the table");
  sourceBar->addWidget(plotSelectionButton_);
  auto* hint = new QLabel("Click a point to select its run · right-click to export");
  hint->setForegroundRole(QPalette::PlaceholderText);  // follows the light/dark palette
  sourceBar->addWidget(hint);
  bottomLayout->addLayout(sourceBar);
  plot_ = new ExportablePlot("accuracy");
  plot_->setMouseTracking(true);
  plot_->setMinimumHeight(220);
  bottomLayout->addWidget(plot_, 1);

  auto* split = new QSplitter(Qt::Vertical);
  split->addWidget(top);
  split->addWidget(bottom);
  split->setStretchFactor(0, 1);
  split->setStretchFactor(1, 1);
  layout->addWidget(split, 1);

  // The plot's layers: points, front, knee, online cost (second axis), selection rings.
  {
    auto* title = new QCPTextElement(plot_, "Perplexity", QFont(plot_->font().family(), 10, QFont::Bold));
    plot_->plotLayout()->insertRow(0);
    plot_->plotLayout()->addElement(0, 0, title);
    title->setObjectName("title");
    costGraph_ = plot_->addGraph(plot_->xAxis, plot_->yAxis2);
    costGraph_->setName("online cost");
    costGraph_->setPen(QPen(QColor(120, 120, 120), 1.2, Qt::DashLine));
    costGraph_->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssSquare, QColor(120, 120, 120), Qt::white, 5));
    pointsGraph_ = plot_->addGraph();
    pointsGraph_->setName("runs");
    pointsGraph_->setLineStyle(QCPGraph::lsNone);
    pointsGraph_->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, QColor(90, 90, 90), QColor(210, 210, 210), 8));
    frontGraph_ = plot_->addGraph();
    frontGraph_->setName("Pareto front");
    frontGraph_->setPen(QPen(QColor(33, 102, 172), 2));
    frontGraph_->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, QColor(33, 102, 172), QColor(33, 102, 172), 8));
    kneeGraph_ = plot_->addGraph();
    kneeGraph_->setName("knee");
    kneeGraph_->setLineStyle(QCPGraph::lsNone);
    kneeGraph_->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssStar, QPen(QColor(200, 30, 30), 2), Qt::NoBrush, 16));
    selectedGraph_ = plot_->addGraph();
    selectedGraph_->setName("selected");
    selectedGraph_->setLineStyle(QCPGraph::lsNone);
    selectedGraph_->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, QPen(QColor(240, 160, 0), 2.5), Qt::NoBrush, 15));
    plot_->legend->setVisible(true);
    plot_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignHCenter);
    plot_->yAxis->setLabel("perplexity (quantized)");
    plot_->setCsvSource([this] { return plotCsv(); });
  }

  connect(filter_, &QLineEdit::textChanged, this, [this](const QString& t) {
    proxy_->setWords(t);
    view_->expandAll();
    if (source_ == Source::All) redrawPlot();
  });
  connect(statusBox_, &QComboBox::currentIndexChanged, this, [this](int i) {
    proxy_->setStatus(statusBox_->itemData(i).toString());
    view_->expandAll();
    if (source_ == Source::All) redrawPlot();
  });
  connect(methodBox_, &QComboBox::currentIndexChanged, this, [this](int i) {
    proxy_->setMethod(methodBox_->itemData(i).toString());
    view_->expandAll();
    if (source_ == Source::All) redrawPlot();
  });
  connect(tagButton_, &QPushButton::clicked, this, [this] { askTag(false); });
  connect(untagButton_, &QPushButton::clicked, this, [this] { askTag(true); });
  connect(noteButton_, &QPushButton::clicked, this, &RunsView::askNote);
  connect(deleteButton_, &QPushButton::clicked, this, &RunsView::askDelete);
  connect(compareButton_, &QPushButton::clicked, this, [this] {
    const QList<qint64> ids = selectedRuns();
    if (ids.size() == 2) emit compareRequested(ids[0], ids[1]);
  });
  connect(exportButton_, &QPushButton::clicked, this, [this] {
    const QList<qint64> ids = selectedRuns();
    if (ids.size() == 1) emit exportModelRequested(ids[0]);
  });
  connect(exportDataButton_, &QPushButton::clicked, this, &RunsView::askExportData);
  connect(refreshButton, &QPushButton::clicked, this, &RunsView::refresh);
  connect(view_, &QTreeView::activated, this, [this](const QModelIndex& idx) {
    const qint64 id = idx.sibling(idx.row(), 0).data(kRunIdRole).toLongLong();
    if (id >= 0) emit runActivated(id);
  });
  connect(view_->selectionModel(), &QItemSelectionModel::selectionChanged, this, &RunsView::onSelectionChanged);
  connect(view_->selectionModel(), &QItemSelectionModel::currentChanged, this, [this] {
    const qint64 id = currentRun();
    note_->clear();
    noteFor_ = id;
    if (id < 0 || db_.isEmpty()) return;
    auto text = std::make_shared<QString>();
    auto read = [id, text](respin::RunStore& s) {
      const auto d = s.get_run(id);
      if (!d) return true;
      QString t = QString("Run %1 · %2 · %3").arg(id).arg(q(d->config.label()), q(d->summary.run_dir));
      if (!d->summary.message.empty()) t += " · " + q(d->summary.message);
      if (!d->note.empty()) t += "\nNote: " + q(d->note);
      *text = t;
      return true;
    };
    if (!busy_) {  // like the view's other calls: returns with the line shown
      QString error;
      const bool ok = callStore<bool>(kQuickRead, read, &error).has_value();
      if (noteFor_ == id) note_->setText(ok ? *text : error);
      return;
    }
    // A selection change while another call waits: the line fills in when the store answers (if
    // the run is still current).
    StoreService::shared().submit(
        db_, kQuickRead, [read](respin::RunStore& s) { read(s); },
        this,
        [this, id, text](const QString& error) {
          if (noteFor_ == id) note_->setText(error.isEmpty() ? *text : error);
        },
        [this, id](const QString& line) {
          if (noteFor_ == id) note_->setText(line);
        });
  });
  connect(view_, &QTreeView::customContextMenuRequested, this, &RunsView::showContextMenu);
  connect(xBox_, &QComboBox::currentIndexChanged, this, [this](int i) { setPlotX(PlotX(xBox_->itemData(i).toInt())); });
  connect(costBox_, &QComboBox::currentIndexChanged, this,
          [this](int i) { setCostAxis(CostAxis(costBox_->itemData(i).toInt())); });
  connect(sourceBox_, &QComboBox::activated, this, [this](int i) {
    const QString key = sourceBox_->itemData(i).toString();
    if (key == "all") plotShownRuns();
    else if (key.startsWith("sweep:")) plotSweep(key.mid(6).toLongLong());
    else if (key == "selection") plotRuns(sourceIds_);
  });
  connect(plotSelectionButton_, &QPushButton::clicked, this, [this] { plotRuns(selectedRuns()); });
  connect(plot_, &QCustomPlot::mousePress, this, [this](QMouseEvent* e) {
    if (e->button() != Qt::LeftButton) return;
    int best = -1;
    double bestD = 12;
    for (int i = 0; i < points_.size(); ++i) {
      const double d = QLineF(pointPixel(i), e->position()).length();
      if (d < bestD) bestD = d, best = i;
    }
    if (best >= 0) onPointClicked(best);
  });
  connect(plot_, &QCustomPlot::mouseMove, this, [this](QMouseEvent* e) {
    for (int i = 0; i < points_.size(); ++i)
      if (QLineF(pointPixel(i), e->position()).length() < 10) {
        const PlotPoint& p = points_[i];
        QString t = QString("run %1: %2\nperplexity %3").arg(p.id).arg(p.label).arg(p.y, 0, 'f', 3);
        if (!std::isnan(p.cost)) t += QString("\n%1 %2").arg(costBox_->currentText()).arg(bigNumber(p.cost));
        if (p.pareto) t += "\non the Pareto front";
        if (i == knee_) t += " (knee)";
        QToolTip::showText(e->globalPosition().toPoint(), t, plot_);
        return;
      }
    QToolTip::hideText();
  });
  connect(plot_, &ExportablePlot::exportFinished, this, [this](bool ok, const QString& m) { showMessage(m, !ok); });

  updateButtons();
  resize(1100, 800);
}

QSortFilterProxyModel* RunsView::proxy() const { return proxy_; }

void RunsView::showMessage(const QString& text, bool error) {
  message_->setStyleSheet(error ? "color: #b00020" : "color: #1b5e20");
  message_->setText(text);
  message_->setVisible(!text.isEmpty());
}

template <class R>
std::optional<R> RunsView::callStore(StoreService::Access access, std::function<R(respin::RunStore&)> job, QString* error) {
  if (busy_) {
    if (error) *error = db_ + ": busy with another store call; try again";
    return std::nullopt;
  }
  busy_ = true;
  updateButtons();
  QString lockedLine;
  std::optional<R> r = StoreService::shared().wait<R>(db_, access, std::move(job), error, this, [&](const QString& line) {
    lockedLine = line;
    showMessage(line);
  });
  busy_ = false;
  // The store answered: the locked line no longer holds.
  if (r && !lockedLine.isEmpty() && messageText() == lockedLine) showMessage(QString());
  updateButtons();
  afterStoreCall();
  return r;
}

void RunsView::afterStoreCall() {
  if (refreshAgain_) {
    refreshAgain_ = redrawAgain_ = false;
    QTimer::singleShot(0, this, &RunsView::refresh);
  } else if (redrawAgain_) {
    redrawAgain_ = false;
    QTimer::singleShot(0, this, &RunsView::redrawPlot);
  }
}

QString RunsView::messageText() const { return message_->isHidden() ? QString() : message_->text(); }
QString RunsView::noteShown() const { return note_->text(); }

void RunsView::setStorePath(const QString& db) {
  db_ = db;
  sourceChosen_ = false;
  source_ = Source::All;
  sourceIds_.clear();
  refresh();
}

void RunsView::refresh() {
  if (busy_) {  // a call is waiting (the store is locked): refresh once it is done
    refreshAgain_ = true;
    return;
  }
  const QList<qint64> keep = selectedRuns();
  showMessage(QString());
  fillTable();
  for (qint64 id : keep) {
    QModelIndexList hits = model_->match(model_->index(0, 0), kRunIdRole, id, 1, Qt::MatchExactly | Qt::MatchRecursive);
    if (hits.isEmpty()) continue;
    const QModelIndex p = proxy_->mapFromSource(hits.front());
    if (p.isValid()) view_->selectionModel()->select(p, QItemSelectionModel::Select | QItemSelectionModel::Rows);
  }
  fillSourceBox();
  redrawPlot();
  updateButtons();
}

void RunsView::fillTable() {
  if (db_.isEmpty() || !QFileInfo::exists(db_)) {
    model_->removeRows(0, model_->rowCount());
    sweeps_.clear();
    if (!db_.isEmpty()) showMessage(db_ + ": no run store yet (calibrate a model first)", false);
    return;
  }
  using Listing = std::pair<std::vector<respin::RunSummary>, std::vector<respin::Sweep>>;
  // The table keeps its rows while the store is read.
  showMessage("Loading the runs of " + db_ + "…", false);
  QString error;
  std::optional<Listing> got = callStore<Listing>(
      StoreService::Access::Read, [](respin::RunStore& s) { return Listing{s.list_runs(), s.list_sweeps()}; }, &error);
  model_->removeRows(0, model_->rowCount());
  if (!got) {
    sweeps_.clear();
    showMessage(error + (StoreService::isLockedError(error) ? " (Refresh to try again)" : QString()));
    return;
  }
  showMessage(QString());
  const std::vector<respin::RunSummary>& runs = got->first;
  sweeps_ = got->second;
  const std::vector<respin::Sweep>& sweeps = sweeps_;
  std::map<int64_t, QStandardItem*> groups;
  std::map<int64_t, std::vector<const respin::RunSummary*>> members;
  for (const respin::RunSummary& r : runs)
    if (r.sweep_id) members[*r.sweep_id].push_back(&r);
  for (const auto& [sid, list] : members) {
    const respin::Sweep* sw = nullptr;
    for (const respin::Sweep& s : sweeps)
      if (s.id == sid) sw = &s;
    std::optional<double> best;
    for (const respin::RunSummary* r : list)
      if (r->quantized_perplexity && (!best || *r->quantized_perplexity < *best)) best = r->quantized_perplexity;
    QList<QStandardItem*> row;
    for (int c = 0; c < ColCount; ++c) row << item(QString(), QString(), -1);
    row[ColId]->setText(QString("Sweep %1").arg(sid));
    row[ColId]->setData(double(list.front()->id), kSortRole);
    row[ColId]->setData(qint64(sid), kSweepRole);
    QFont bold = row[ColId]->font();
    bold.setBold(true);
    for (QStandardItem* it : row) it->setFont(bold);
    const QString model = q(sw ? sw->model : list.front()->model_folder);
    row[ColModel]->setText(model.section('/', -1));
    row[ColModel]->setData(model.section('/', -1), kSortRole);
    row[ColModel]->setToolTip(model);
    row[ColMethod]->setText(sw ? q(sw->kind) + " sweep" : "sweep");
    row[ColMethod]->setData(row[ColMethod]->text(), kSortRole);
    row[ColStatus]->setText(QString("%1 runs").arg(list.size()));
    row[ColPpl]->setText(best ? "best " + pplText(best) : QString("—"));
    row[ColPpl]->setData(best ? *best : kNaN, kSortRole);
    row[ColPpl]->setToolTip("Lowest quantized perplexity of the sweep");
    row[ColCreated]->setText(sw ? q(sw->created).left(16).replace('T', ' ') : QString());
    row[ColCreated]->setData(sw ? q(sw->created) : QString(), kSortRole);
    row[ColTags]->setText(sw ? q(sw->description) : QString());
    row[ColTags]->setData(row[ColTags]->text(), kSortRole);
    for (int c = ColId; c < ColCount; ++c)
      if (row[c]->data(kSortRole).toString().isEmpty() && row[c]->data(kSortRole).typeId() != QMetaType::Double)
        row[c]->setData(kNaN, kSortRole);
    model_->appendRow(row);
    groups[sid] = row.front();
  }
  for (const respin::RunSummary& r : runs) {
    QList<QStandardItem*> row;
    const qint64 id = r.id;
    row << item(QString::number(id), double(id), id);
    const QString folder = q(r.model_folder);
    row << item(folder.section('/', -1), folder.section('/', -1), id);
    row.back()->setToolTip(folder);
    const QString method = QString(respin::method_name(r.method)) + (r.weight_quantizer == respin::WeightQuantizer::Gptq ? "+gptq" : "");
    row << item(method, method, id);
    row << item(bitsText(r), double(r.wbits * 10000 + r.abits * 100 + r.kvbits), id);
    row << item(rankText(r), rankSort(r), id);
    const QString status = respin::run_status_name(r.status);
    row << item(status, status, id);
    if (!r.message.empty()) row.back()->setToolTip(q(r.message));
    if (r.status == respin::RunStatus::Failed) row.back()->setForeground(QColor(176, 0, 32));
    if (r.status == respin::RunStatus::Interrupted) row.back()->setForeground(QColor(190, 100, 0));
    if (r.status == respin::RunStatus::Running) row.back()->setForeground(QColor(21, 101, 192));
    row << item(pplText(r.quantized_perplexity), r.quantized_perplexity ? *r.quantized_perplexity : kNaN, id);
    row << item(pplText(r.fp_perplexity), r.fp_perplexity ? *r.fp_perplexity : kNaN, id);
    row << item(timeText(r.total_seconds), r.total_seconds ? *r.total_seconds : kNaN, id);
    row << item(q(r.created).left(16).replace('T', ' '), q(r.created), id);
    QStringList tags;
    for (const std::string& t : r.tags) tags << "#" + q(t);
    row << item(tags.join(' '), tags.join(' '), id);
    for (int c : {ColPpl, ColFpPpl, ColTime, ColRank, ColId}) row[c]->setTextAlignment(Qt::AlignRight | Qt::AlignVCenter);
    QStandardItem* first = row.front();
    first->setData(status, kStatusRole);
    first->setData(QString(respin::method_name(r.method)), kMethodRole);
    QString text = QString("%1 %2 %3 %4 %5 %6 %7 %8 %9")
                       .arg(id)
                       .arg(folder, method, bitsText(r), "r=" + rankText(r), status, label(r), tags.join(' '))
                       .arg(q(r.created));
    for (const std::string& t : r.tags) text += " " + q(t);
    if (r.sweep_id) text += QString(" sweep %1").arg(*r.sweep_id);
    first->setData(text.toLower(), kTextRole);
    first->setToolTip(label(r));
    if (r.sweep_id && groups.count(*r.sweep_id)) groups[*r.sweep_id]->appendRow(row);
    else model_->appendRow(row);
  }
  view_->expandAll();
  for (int c = 0; c < ColTags; ++c) view_->resizeColumnToContents(c);
  if (runs.empty()) showMessage(db_ + ": no runs yet", false);
}

QList<qint64> RunsView::selectedRuns() const {
  std::set<qint64> ids;
  for (const QModelIndex& p : view_->selectionModel()->selectedRows(0)) {
    const QModelIndex s = proxy_->mapToSource(p);
    const qint64 id = s.data(kRunIdRole).toLongLong();
    if (id >= 0) {
      ids.insert(id);
    } else {  // a sweep: its runs
      const QStandardItem* g = model_->itemFromIndex(s);
      for (int r = 0; g && r < g->rowCount(); ++r) ids.insert(g->child(r, 0)->data(kRunIdRole).toLongLong());
    }
  }
  return QList<qint64>(ids.begin(), ids.end());
}

qint64 RunsView::currentRun() const {
  const QModelIndex c = view_->currentIndex();
  if (!c.isValid()) return -1;
  return c.sibling(c.row(), 0).data(kRunIdRole).toLongLong();
}

void RunsView::selectRun(qint64 id) {
  const QModelIndexList hits = model_->match(model_->index(0, 0), kRunIdRole, id, 1, Qt::MatchExactly | Qt::MatchRecursive);
  if (hits.isEmpty()) {
    showMessage(QString("No run %1 in the table").arg(id));
    return;
  }
  const QModelIndex p = proxy_->mapFromSource(hits.front());
  if (!p.isValid()) {
    showMessage(QString("Run %1 is hidden by the filter").arg(id), false);
    return;
  }
  if (p.parent().isValid()) view_->expand(p.parent());
  view_->selectionModel()->setCurrentIndex(p, QItemSelectionModel::ClearAndSelect | QItemSelectionModel::Rows);
  view_->scrollTo(p);
}

QList<qint64> RunsView::shownRunsInOrder() const {
  QList<qint64> out;
  std::function<void(const QModelIndex&)> walk = [&](const QModelIndex& parent) {
    for (int r = 0; r < proxy_->rowCount(parent); ++r) {
      const QModelIndex idx = proxy_->index(r, 0, parent);
      const qint64 id = idx.data(kRunIdRole).toLongLong();
      if (id >= 0) out << id;
      walk(idx);
    }
  };
  walk(QModelIndex());
  return out;
}

bool RunsView::exportRunData(const QList<qint64>& ids, const QString& path, bool csv) {
  const std::vector<int64_t> v(ids.begin(), ids.end());
  const std::string out = path.toStdString();
  const respin::RunDataFormat format = csv ? respin::RunDataFormat::Csv : respin::RunDataFormat::Json;
  QString error;
  const std::optional<std::vector<std::string>> files = callStore<std::vector<std::string>>(
      StoreService::Access::Read, [v, out, format](respin::RunStore& s) { return respin::export_run_data(s, v, format, out); },
      &error);
  if (!files) {
    showMessage(error);
    return false;
  }
  QStringList names;
  for (const std::string& f : *files) names << QString::fromStdString(f);
  showMessage(QString("Wrote %1 (%2 run%3)").arg(names.join(", ")).arg(ids.size()).arg(ids.size() == 1 ? "" : "s"), false);
  return true;
}

void RunsView::askExportData() {
  const QList<qint64> ids = selectedRuns();
  if (ids.isEmpty()) return;
  QString filter;
  const QString path = QFileDialog::getSaveFileName(
      this, QString("Export data of %1 run%2").arg(ids.size()).arg(ids.size() == 1 ? "" : "s"),
      ids.size() == 1 ? QString("run-%1.json").arg(ids[0]) : QString("runs.json"),
      "JSON, one file (*.json);;CSV, three files: runs, loss, layers (*.csv)", &filter);
  if (path.isEmpty()) return;
  exportRunData(ids, path, filter.startsWith("CSV") || path.endsWith(".csv", Qt::CaseInsensitive));
}

void RunsView::updateButtons() {
  const QList<qint64> ids = selectedRuns();
  // The curating actions wait while a store call of this view is in flight.
  tagButton_->setEnabled(!ids.isEmpty() && !busy_);
  untagButton_->setEnabled(!ids.isEmpty() && !busy_);
  noteButton_->setEnabled(ids.size() == 1 && !busy_);
  deleteButton_->setEnabled(!ids.isEmpty() && !busy_);
  compareButton_->setEnabled(ids.size() == 2);
  exportButton_->setEnabled(ids.size() == 1);
  exportDataButton_->setEnabled(!ids.isEmpty());
  plotSelectionButton_->setEnabled(ids.size() >= 2);
}

void RunsView::onSelectionChanged() {
  updateButtons();
  highlightSelected();
  emit selectionChanged(selectedRuns());
}

// ---- Curating ----

bool RunsView::addTag(const QList<qint64>& ids, const QString& tag) { return changeTag(ids, tag, false); }

bool RunsView::removeTag(const QList<qint64>& ids, const QString& tag) { return changeTag(ids, tag, true); }

bool RunsView::changeTag(const QList<qint64>& ids, const QString& tag, bool remove) {
  const QString t = tag.trimmed();
  if (ids.isEmpty() || t.isEmpty()) return false;
  const std::vector<int64_t> v(ids.begin(), ids.end());
  const std::string name = t.toStdString();
  QString error;
  // Adding a tag a run has, or removing one it lacks, changes nothing: a retried job is safe.
  if (!callStore<bool>(StoreService::Access::Write,
                       [v, name, remove](respin::RunStore& s) {
                         for (int64_t id : v) {
                           if (remove) s.remove_tag(id, name);
                           else s.add_tag(id, name);
                         }
                         return true;
                       },
                       &error)) {
    showMessage(error);
    return false;
  }
  refresh();
  const QString runs = QString("%1 run%2").arg(ids.size()).arg(ids.size() == 1 ? "" : "s");
  showMessage(remove ? QString("Removed #%1 from %2").arg(t, runs) : QString("Tagged %1 #%2").arg(runs, t), false);
  return true;
}

bool RunsView::setNote(qint64 id, const QString& note) {
  const std::string text = note.toStdString(), db = db_.toStdString();
  QString error;
  if (!callStore<bool>(StoreService::Access::Write,
                       [id, text, db](respin::RunStore& s) {
                         if (!s.get_run(id)) throw std::runtime_error(db + ": no run " + std::to_string(id));
                         s.set_note(id, text);
                         return true;
                       },
                       &error)) {
    showMessage(error);
    return false;
  }
  refresh();
  selectRun(id);
  return true;
}

bool RunsView::deleteRuns(const QList<qint64>& ids) {
  if (ids.isEmpty()) return false;
  if (confirmDeletes_) {
    const std::vector<int64_t> v(ids.begin(), ids.end());
    QString error;
    const std::optional<QStringList> listed = callStore<QStringList>(
        kQuickRead,
        [v](respin::RunStore& s) {
          QStringList what;
          // What will go, as delete_run decides it: only folders that provably belong to the run.
          for (int64_t id : v)
            if (auto d = s.get_run(id)) {
              const std::string record = d->record ? respin::run_record_to_json(*d->record).dump() : std::string();
              QString line = QString("run %1 (%2)").arg(id).arg(q(d->config.label()));
              for (const std::string& dir : {d->summary.run_dir, d->summary.tmp_dir}) {
                if (dir.empty()) continue;
                const respin::DirOwnership o = respin::run_dir_ownership(dir, d->summary.uuid, record);
                if (o.owned) line += " and its directory " + q(dir);
                else if (o.reason != "it does not exist") line += "; keeping " + q(dir) + " (" + q(o.reason) + ")";
              }
              what << line;
            }
          return what;
        },
        &error);
    if (!listed) {
      showMessage(error);
      return false;
    }
    const QStringList& what = *listed;
    const auto answer = QMessageBox::question(this, "Delete runs",
                                              "Delete from the store, and remove the directories that belong to them from disk?\n\n" +
                                                  what.join('\n'),
                                              QMessageBox::Yes | QMessageBox::Cancel, QMessageBox::Cancel);
    if (answer != QMessageBox::Yes) return false;
  }
  // On the store thread: the rows, then the directories that belong to the runs (removing a
  // large run directory takes a while). A run is handled once even when a locked store makes the
  // service run the job again.
  struct Outcome {
    QStringList problems, kept;
    int deleted = 0;
    std::set<int64_t> done;
  };
  auto outcome = std::make_shared<Outcome>();
  const std::vector<int64_t> v(ids.begin(), ids.end());
  QString error;
  callStore<bool>(StoreService::Access::Write,
                  [v, outcome](respin::RunStore& s) {
                    for (int64_t id : v) {
                      if (outcome->done.count(id)) continue;
                      try {
                        const respin::DeletedRun gone = s.delete_run(id);
                        outcome->done.insert(id);
                        ++outcome->deleted;
                        for (const std::string& k : gone.kept) outcome->kept << q(k);
                        for (const std::string& dir : {gone.run_dir, gone.tmp_dir}) {
                          std::string e;
                          if (!dir.empty() && !respin::remove_tree(dir, &e)) outcome->problems << q(e);
                        }
                      } catch (const std::exception& e) {
                        if (StoreService::isLockedError(q(e.what()))) throw;  // the service retries
                        outcome->done.insert(id);
                        outcome->problems << q(e.what());
                      }
                    }
                    return true;
                  },
                  &error);
  QStringList problems = outcome->problems;
  if (!error.isEmpty()) problems << error;
  sourceIds_.erase(std::remove_if(sourceIds_.begin(), sourceIds_.end(), [&](qint64 i) { return ids.contains(i); }),
                   sourceIds_.end());
  refresh();
  // The folders the store would not hand over (not provably the run's) are named, one line each.
  const int deleted = outcome->deleted;
  const QStringList kept = outcome->kept;
  if (!problems.isEmpty()) showMessage((problems + kept).join('\n'));
  else showMessage((QStringList{QString("Deleted %1 run%2").arg(deleted).arg(deleted == 1 ? "" : "s")} + kept).join('\n'), false);
  return problems.isEmpty();
}

void RunsView::askTag(bool remove) {
  const QList<qint64> ids = selectedRuns();
  if (ids.isEmpty()) return;
  bool ok = false;
  const QString tag = QInputDialog::getText(this, remove ? "Remove tag" : "Add tag",
                                            QString("Tag for %1 run%2:").arg(ids.size()).arg(ids.size() == 1 ? "" : "s"),
                                            QLineEdit::Normal, QString(), &ok);
  if (!ok || tag.trimmed().isEmpty()) return;
  if (remove) removeTag(ids, tag);
  else addTag(ids, tag);
}

void RunsView::askNote() {
  const QList<qint64> ids = selectedRuns();
  if (ids.size() != 1) return;
  const qint64 id = ids[0];
  QString error;
  const std::optional<QString> got = callStore<QString>(
      kQuickRead,
      [id](respin::RunStore& s) {
        const auto d = s.get_run(id);
        return d ? q(d->note) : QString();
      },
      &error);
  if (!got) {
    showMessage(error);
    return;
  }
  const QString current = *got;
  bool ok = false;
  const QString note = QInputDialog::getMultiLineText(this, "Note", QString("Note for run %1:").arg(ids[0]), current, &ok);
  if (ok) setNote(ids[0], note);
}

void RunsView::askDelete() { deleteRuns(selectedRuns()); }

void RunsView::showContextMenu(const QPoint& pos) {
  const QList<qint64> ids = selectedRuns();
  if (ids.isEmpty()) return;
  QMenu menu(this);
  if (ids.size() == 1) menu.addAction("Open", this, [this, ids] { emit runActivated(ids[0]); });
  if (ids.size() == 2) menu.addAction("Compare", this, [this, ids] { emit compareRequested(ids[0], ids[1]); });
  if (ids.size() == 1) menu.addAction("Export model…", this, [this, ids] { emit exportModelRequested(ids[0]); });
  menu.addAction("Export data…", this, &RunsView::askExportData);
  if (ids.size() >= 2) menu.addAction("Plot these runs", this, [this, ids] { plotRuns(ids); });
  menu.addSeparator();
  menu.addAction("Tag…", this, [this] { askTag(false); });
  menu.addAction("Remove tag…", this, [this] { askTag(true); });
  if (ids.size() == 1) menu.addAction("Note…", this, &RunsView::askNote);
  menu.addSeparator();
  menu.addAction("Delete…", this, &RunsView::askDelete);
  menu.exec(view_->viewport()->mapToGlobal(pos));
}

void RunsView::setFilterText(const QString& text) { filter_->setText(text); }

void RunsView::setStatusFilter(const QString& status) {
  const int i = statusBox_->findData(status);
  if (i >= 0) statusBox_->setCurrentIndex(i);
}

void RunsView::setMethodFilter(const QString& method) {
  const int i = methodBox_->findData(method);
  if (i >= 0) methodBox_->setCurrentIndex(i);
}

// ---- The plot ----

void RunsView::fillSourceBox() {
  sourceBox_->clear();
  sourceBox_->addItem("All runs in the table", "all");
  const std::vector<respin::Sweep>& sweeps = sweeps_;  // as the last refresh read them
  for (const respin::Sweep& s : sweeps)
    sourceBox_->addItem(QString("Sweep %1: %2 sweep, %3%4")
                            .arg(s.id)
                            .arg(q(s.kind), q(s.model).section('/', -1),
                                 s.description.empty() ? QString() : " (" + q(s.description) + ")"),
                        QString("sweep:%1").arg(s.id));
  if (!sourceIds_.isEmpty()) sourceBox_->addItem(QString("Selection (%1 runs)").arg(sourceIds_.size()), "selection");
  if (!sourceChosen_ && !sweeps.empty()) {
    source_ = Source::Sweep;
    sourceSweep_ = sweeps.back().id;
  }
  QString key = "all";
  if (source_ == Source::Sweep) key = QString("sweep:%1").arg(sourceSweep_);
  if (source_ == Source::Selection) key = "selection";
  int i = sourceBox_->findData(key);
  if (i < 0) {
    source_ = Source::All;
    i = 0;
  }
  sourceBox_->setCurrentIndex(i);
}

void RunsView::setPlotX(PlotX x) {
  const int i = xBox_->findData(int(x));
  if (xBox_->currentIndex() != i) {
    xBox_->setCurrentIndex(i);
    return;
  }
  plotX_ = x;
  redrawPlot();
}

void RunsView::setCostAxis(CostAxis c) {
  const int i = costBox_->findData(int(c));
  if (costBox_->currentIndex() != i) {
    costBox_->setCurrentIndex(i);
    return;
  }
  cost_ = c;
  redrawPlot();
}

void RunsView::plotSweep(qint64 sweepId) {
  source_ = Source::Sweep;
  sourceSweep_ = sweepId;
  sourceChosen_ = true;
  fillSourceBox();
  redrawPlot();
}

void RunsView::plotRuns(const QList<qint64>& ids) {
  source_ = Source::Selection;
  sourceIds_ = ids;
  sourceChosen_ = true;
  fillSourceBox();
  redrawPlot();
}

void RunsView::plotShownRuns() {
  source_ = Source::All;
  sourceChosen_ = true;
  fillSourceBox();
  redrawPlot();
}

QPointF RunsView::pointPixel(int i) const {
  if (i < 0 || i >= points_.size()) return {};
  return {plot_->xAxis->coordToPixel(points_[i].x), plot_->yAxis->coordToPixel(points_[i].y)};
}

QList<qint64> RunsView::paretoRuns() const {
  if (plotX_ == PlotX::Memory) return {};  // the front is perplexity's
  QVector<QPointF> pts;
  for (const PlotPoint& p : points_) pts << QPointF(p.x, p.y);
  QList<qint64> out;
  for (int i : runs_plot::paretoFront(pts)) out << points_[i].id;
  return out;
}

void RunsView::redrawPlot() {
  if (busy_) {  // a store call is waiting: draw once it is done
    redrawAgain_ = true;
    return;
  }
  points_.clear();
  knee_ = -1;
  auto* title = qobject_cast<QCPTextElement*>(plot_->plotLayout()->element(0, 0));
  for (QCPGraph* g : {pointsGraph_, frontGraph_, kneeGraph_, costGraph_, selectedGraph_}) g->data()->clear();
  plot_->clearItems();
  QString sourceText;
  std::vector<int64_t> ids;
  std::optional<int64_t> sweep;
  if (source_ == Source::Sweep) {
    sweep = sourceSweep_;
    sourceText = QString("sweep %1").arg(sourceSweep_);
  } else if (source_ == Source::Selection) {
    for (qint64 id : sourceIds_) ids.push_back(id);
    sourceText = QString("%1 selected runs").arg(sourceIds_.size());
  } else {
    for (qint64 id : shownRunsInOrder()) ids.push_back(id);
    sourceText = "the runs in the table";
  }
  const bool empty = !sweep && ids.empty();
  if (!db_.isEmpty() && !empty && QFileInfo::exists(db_)) {
    const CostAxis costAxis = cost_;
    const PlotX plotX = plotX_;
    QString error;
    std::optional<QVector<PlotPoint>> got = callStore<QVector<PlotPoint>>(
        kQuickRead,
        [ids, sweep, costAxis, plotX](respin::RunStore& s) {
          QVector<PlotPoint> out;
          std::map<int64_t, double> cost;
          if (costAxis != CostAxis::None) {
            respin::SeriesQuery cq;
            cq.ids = ids;
            cq.sweep = sweep;
            cq.x = respin::SeriesX::WBits;
            cq.y = costAxis == CostAxis::MacsPerToken ? respin::SeriesY::OnlineMacsPerToken : respin::SeriesY::OnlineParameters;
            for (const respin::SeriesPoint& p : s.series(cq)) cost[p.run_id] = p.y;
          }
          auto costOf = [&](int64_t id) { return cost.count(id) ? cost[id] : kNaN; };
          if (plotX == PlotX::Memory) {
            // The plan's peak and the measured one (on CUDA the device's, where both were recorded).
            std::vector<int64_t> runs = ids;
            if (sweep) {
              respin::RunFilter f;
              f.sweep = sweep;
              runs.clear();
              for (const respin::RunSummary& r : s.list_runs(f)) runs.push_back(r.id);
            }
            auto peak = [](const std::vector<std::pair<std::string, double>>& v) {
              double m = 0;
              for (const auto& [phase, b] : v) m = std::max(m, b);
              return m;
            };
            for (int64_t id : runs) {
              const std::optional<respin::RunDetail> d = s.get_run(id);
              if (!d || !d->record) continue;
              const respin::MemoryRecord& m = d->record->memory;
              const bool device = !m.predicted_device_bytes.empty() && !m.measured_device_bytes.empty();
              const double planned = peak(device ? m.predicted_device_bytes : m.predicted_bytes);
              const double measured = peak(device ? m.measured_device_bytes : m.measured_bytes);
              if (planned <= 0 || measured <= 0) continue;
              out.push_back({id, planned / 1e9, measured / 1e9, kNaN, label(d->summary), false});
            }
          } else if (plotX == PlotX::Method) {
            respin::RunFilter f;
            f.sweep = sweep;
            f.status = respin::RunStatus::Finished;
            const std::set<int64_t> want(ids.begin(), ids.end());
            for (const respin::RunSummary& r : s.list_runs(f)) {
              if ((!sweep && !want.count(r.id)) || !r.quantized_perplexity) continue;
              out.push_back({r.id, double(int(r.method)), *r.quantized_perplexity, costOf(r.id), label(r), false});
            }
            std::stable_sort(out.begin(), out.end(), [](const PlotPoint& a, const PlotPoint& b) { return a.x < b.x; });
          } else {
            respin::SeriesQuery sq;
            sq.ids = ids;
            sq.sweep = sweep;
            sq.y = respin::SeriesY::QuantizedPerplexity;
            sq.x = plotX == PlotX::Rank    ? respin::SeriesX::Rank
                   : plotX == PlotX::WBits ? respin::SeriesX::WBits
                   : plotX == PlotX::ABits ? respin::SeriesX::ABits
                                            : respin::SeriesX::KvBits;
            for (const respin::SeriesPoint& p : s.series(sq)) out.push_back({p.run_id, p.x, p.y, costOf(p.run_id), q(p.label), false});
          }
          return out;
        },
        &error);
    if (got) points_ = *got;
    else showMessage(error);
  }

  const bool memory = plotX_ == PlotX::Memory;
  costBox_->setEnabled(!memory);  // the second axis is the rank's cost
  if (memory) frontGraph_->removeFromLegend();
  else frontGraph_->addToLegend();
  QVector<QPointF> pts;
  for (const PlotPoint& p : points_) pts << QPointF(p.x, p.y);
  // The Pareto front and its knee are perplexity's; memory has the diagonal instead.
  const QVector<int> front = memory ? QVector<int>() : runs_plot::paretoFront(pts);
  knee_ = memory ? -1 : runs_plot::kneeOf(pts, front);
  for (int i : front) points_[i].pareto = true;

  QVector<double> ax, ay, fx, fy, cx, cy;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, xlo = lo, xhi = -lo, clo = lo, chi = -lo;
  for (const PlotPoint& p : points_) {
    ax << p.x, ay << p.y;
    lo = std::min(lo, p.y), hi = std::max(hi, p.y), xlo = std::min(xlo, p.x), xhi = std::max(xhi, p.x);
    if (!std::isnan(p.cost)) cx << p.x, cy << p.cost, clo = std::min(clo, p.cost), chi = std::max(chi, p.cost);
  }
  for (int i : front) fx << points_[i].x, fy << points_[i].y;
  pointsGraph_->setData(ax, ay, true);
  frontGraph_->setData(fx, fy, true);
  if (knee_ >= 0) {
    kneeGraph_->setData({points_[knee_].x}, {points_[knee_].y}, true);
    // The label sits 10 px up and right of the knee (a pixel offset from an anchor at the point).
    auto* anchor = new QCPItemTracer(plot_);
    anchor->setStyle(QCPItemTracer::tsNone);
    anchor->position->setCoords(points_[knee_].x, points_[knee_].y);
    auto* t = new QCPItemText(plot_);
    t->position->setParentAnchor(anchor->position);
    t->position->setCoords(10, -10);
    t->setPositionAlignment(Qt::AlignLeft | Qt::AlignBottom);
    t->setPadding(QMargins(3, 1, 3, 1));
    t->setText(QString("knee: %1, ppl %2").arg(points_[knee_].label).arg(points_[knee_].y, 0, 'f', 2));
    t->setColor(QColor(200, 30, 30));
    t->setBrush(QColor(255, 255, 255, 220));
    t->setClipToAxisRect(false);
  }
  // The cost line: one value per x (the cost depends on the rank, not the perplexity).
  {
    std::map<double, double> byX;
    for (int i = 0; i < cx.size(); ++i) byX.emplace(cx[i], cy[i]);
    QVector<double> kx, ky;
    for (const auto& [k, v] : byX) kx << k, ky << v;
    costGraph_->setData(kx, ky, true);
  }
  const bool showCost = !memory && cost_ != CostAxis::None && !cx.isEmpty();
  costGraph_->setVisible(showCost);
  if (showCost) costGraph_->addToLegend();
  else costGraph_->removeFromLegend();
  costGraph_->setName(cost_ == CostAxis::Parameters ? "extra parameters (right axis)" : "online MACs per token (right axis)");
  plot_->yAxis2->setVisible(showCost);
  if (showCost) {
    plot_->yAxis2->setLabel(cost_ == CostAxis::Parameters ? "extra parameters (online)" : "online MACs per token");
    plot_->yAxis2->setRange(std::min(0.0, clo), chi > 0 ? chi * 1.1 : 1);
    plot_->yAxis2->setNumberFormat("gb");
  }
  if (knee_ < 0) kneeGraph_->removeFromLegend();
  else kneeGraph_->addToLegend();

  // Axes.
  plot_->xAxis->setLabel(plotXName(plotX_));
  if (memory) {
    // Both axes from 0 to the largest figure, the diagonal (planned = measured) and the planner's
    // 15% band around it.
    const double top = points_.isEmpty() ? 1 : std::max(xhi, hi) * 1.15;
    for (auto [k, style] : {std::pair<double, Qt::PenStyle>{1.0, Qt::SolidLine}, {1.15, Qt::DashLine}, {1 / 1.15, Qt::DashLine}}) {
      auto* line = new QCPItemLine(plot_);
      line->start->setCoords(0, 0);
      line->end->setCoords(top, top / k);
      line->setPen(QPen(QColor(120, 120, 120), 1, style));
    }
    plot_->xAxis->setTicker(QSharedPointer<QCPAxisTicker>(new QCPAxisTicker));
    plot_->xAxis->setRange(0, top);
    plot_->yAxis->setScaleType(QCPAxis::stLinear);
    plot_->yAxis->setTicker(QSharedPointer<QCPAxisTicker>(new QCPAxisTicker));
    plot_->yAxis->setRange(0, top);
    plot_->yAxis->setLabel("measured peak memory (GB)");
    int within = 0;
    for (const PlotPoint& p : points_) within += p.x <= 1.15 * p.y && p.y <= 1.15 * p.x;
    if (title)
      title->setText(points_.isEmpty()
                         ? QString("Memory: no finished runs with a plan and a measured peak in %1").arg(sourceText)
                         : QString("Memory: measured vs planned peak · %1 · %2 runs, %3 within 15% of the plan (dashed)")
                               .arg(sourceText)
                               .arg(points_.size())
                               .arg(within));
    highlightSelected();
    return;
  }
  if (plotX_ == PlotX::Method) {
    QSharedPointer<QCPAxisTickerText> t(new QCPAxisTickerText);
    for (int m = 0; m < 4; ++m) t->addTick(m, kMethods[m]);
    plot_->xAxis->setTicker(t);
    plot_->xAxis->setRange(-0.5, 3.5);
  } else if (plotX_ != PlotX::Rank) {
    QSharedPointer<QCPAxisTickerFixed> t(new QCPAxisTickerFixed);
    t->setTickStep(1);
    t->setScaleStrategy(QCPAxisTickerFixed::ssMultiples);
    plot_->xAxis->setTicker(t);
    plot_->xAxis->setRange(points_.isEmpty() ? QCPRange(2, 16) : QCPRange(xlo - 0.5, xhi + 0.5));
  } else {
    plot_->xAxis->setTicker(QSharedPointer<QCPAxisTicker>(new QCPAxisTicker));
    const double pad = std::max(1.0, (xhi - xlo) * 0.05);
    plot_->xAxis->setRange(points_.isEmpty() ? QCPRange(0, 64) : QCPRange(xlo - pad, xhi + pad));
  }
  const bool logY = !points_.isEmpty() && lo > 0 && hi / lo > 20;
  if (logY) {
    plot_->yAxis->setScaleType(QCPAxis::stLogarithmic);
    plot_->yAxis->setTicker(QSharedPointer<QCPAxisTickerLog>(new QCPAxisTickerLog));
    plot_->yAxis->setRange(lo / 1.3, hi * 1.3);
  } else {
    plot_->yAxis->setScaleType(QCPAxis::stLinear);
    plot_->yAxis->setTicker(QSharedPointer<QCPAxisTicker>(new QCPAxisTicker));
    const double pad = points_.isEmpty() ? 1 : std::max((hi - lo) * 0.12, 0.05 * std::abs(hi) + 1e-9);
    plot_->yAxis->setRange(points_.isEmpty() ? QCPRange(0, 10) : QCPRange(lo - pad, hi + pad));
  }
  plot_->yAxis->setLabel(logY ? "perplexity (quantized, log)" : "perplexity (quantized)");
  const QString xWhat = plotX_ == PlotX::Rank ? "rank" : plotX_ == PlotX::Method ? "method" : plotXName(plotX_);
  if (title)
    title->setText(points_.isEmpty() ? QString("Perplexity vs %1: no finished runs with a perplexity in %2").arg(xWhat, sourceText)
                                     : QString("Perplexity vs %1 · %2 · %3 runs, %4 on the Pareto front")
                                           .arg(xWhat, sourceText)
                                           .arg(points_.size())
                                           .arg(front.size()));
  highlightSelected();
}

void RunsView::highlightSelected() {
  const QList<qint64> sel = selectedRuns();
  QVector<double> x, y;
  for (const PlotPoint& p : points_)
    if (sel.contains(p.id)) x << p.x, y << p.y;
  selectedGraph_->setData(x, y, true);
  if (x.isEmpty()) selectedGraph_->removeFromLegend();
  else selectedGraph_->addToLegend();
  plot_->replot();
}

void RunsView::onPointClicked(int index) {
  if (index < 0 || index >= points_.size()) return;
  const qint64 id = points_[index].id;
  clicking_ = true;
  // The run may be hidden by the table's filter: clear it so that the selection is visible.
  const QModelIndexList hits = model_->match(model_->index(0, 0), kRunIdRole, id, 1, Qt::MatchExactly | Qt::MatchRecursive);
  if (!hits.isEmpty() && !proxy_->mapFromSource(hits.front()).isValid()) {
    filter_->clear();
    statusBox_->setCurrentIndex(0);
    methodBox_->setCurrentIndex(0);
  }
  selectRun(id);
  clicking_ = false;
}

QString RunsView::plotCsv() const {
  using plot_export::csvField;
  using plot_export::csvNumber;
  if (plotX_ == PlotX::Memory) {
    QString out = "run_id,label,planned_peak_gb,measured_peak_gb\n";
    for (const PlotPoint& p : points_)
      out += QString::number(p.id) + ',' + csvField(p.label) + ',' + csvNumber(p.x) + ',' + csvNumber(p.y) + '\n';
    return out;
  }
  QString out = QString("run_id,label,%1,perplexity,%2,pareto,knee\n")
                    .arg(plotX_ == PlotX::Rank ? "rank" : plotX_ == PlotX::Method ? "method" : "bits")
                    .arg(cost_ == CostAxis::Parameters ? "online_parameters" : "online_macs_per_token");
  for (int i = 0; i < points_.size(); ++i) {
    const PlotPoint& p = points_[i];
    const QString x = plotX_ == PlotX::Method ? QString(kMethods[std::clamp(int(p.x), 0, 3)]) : csvNumber(p.x);
    out += QString::number(p.id) + ',' + csvField(p.label) + ',' + x + ',' + csvNumber(p.y) + ',' + csvNumber(p.cost) + ',' +
           (p.pareto ? "1" : "0") + ',' + (i == knee_ ? "1" : "0") + '\n';
  }
  return out;
}
