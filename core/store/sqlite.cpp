// RAII wrapper over the SQLite C API (see sqlite.h).
#include "core/store/sqlite.h"

#include <sqlite3.h>

#include <algorithm>

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "core/util/error.h"

namespace respin::sqlite {

// ---- Database ----

Database::Database(const std::string& path, Mode mode, int busy_timeout_ms) : path_(path) {
  int flags = SQLITE_OPEN_NOMUTEX;
  switch (mode) {
    case Mode::ReadOnly: flags |= SQLITE_OPEN_READONLY; break;
    case Mode::ReadWrite: flags |= SQLITE_OPEN_READWRITE; break;
    case Mode::ReadWriteCreate: flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE; break;
  }
  const int rc = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    // sqlite3_open_v2 hands back a handle even on failure; its message is the useful part.
    std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    close();
    throw Error(path + ": cannot open database: " + msg);
  }
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, busy_timeout_ms);
}

std::string Database::read_file_start(size_t n, int64_t* file_size) const {
  sqlite3_file* f = nullptr;
  if (sqlite3_file_control(db_, "main", SQLITE_FCNTL_FILE_POINTER, &f) != SQLITE_OK || !f || !f->pMethods)
    throw Error(path_ + ": cannot read the database file's header");
  sqlite3_int64 size = 0;
  if (f->pMethods->xFileSize(f, &size) != SQLITE_OK) throw Error(path_ + ": cannot read the database file's size");
  if (file_size) *file_size = size;
  std::string buf(std::min<sqlite3_int64>(static_cast<sqlite3_int64>(n), size), '\0');
  if (!buf.empty()) {
    const int rc = f->pMethods->xRead(f, buf.data(), static_cast<int>(buf.size()), 0);
    if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) throw Error(path_ + ": cannot read the database file");
  }
  return buf;
}

Database::Database(Database&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)), path_(std::move(other.path_)) {}

Database& Database::operator=(Database&& other) noexcept {
  if (this != &other) {
    close();
    db_ = std::exchange(other.db_, nullptr);
    path_ = std::move(other.path_);
  }
  return *this;
}

Database::~Database() { close(); }

void Database::close() noexcept {
  // sqlite3_close_v2 defers the close until outstanding statements are finalized, so a
  // Statement outliving its Database by mistake does not leak the handle.
  if (db_) sqlite3_close_v2(db_);
  db_ = nullptr;
}

void Database::fail(int rc, const std::string& what) const {
  std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  // sqlite3_errmsg describes the most recent failure on the connection; when that is not rc
  // (e.g. an error from sqlite3_reset), fall back to the generic text for rc.
  if (db_ && (sqlite3_extended_errcode(db_) & 0xff) != (rc & 0xff)) msg = sqlite3_errstr(rc);
  if ((rc & 0xff) == SQLITE_BUSY) msg += " (another process held it past the busy timeout)";
  throw Error(path_ + ": " + what + ": " + msg);
}

void Database::exec(const std::string& sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    if ((rc & 0xff) == SQLITE_BUSY) msg += " (another process held it past the busy timeout)";
    // The first line of the script says what it was for (the callers start them with a comment
    // or a PRAGMA), which is enough context without quoting whole DDL blocks.
    std::string head = sql.substr(0, sql.find('\n'));
    if (head.size() > 60) head = head.substr(0, 60) + "...";
    throw Error(path_ + ": " + head + ": " + msg);
  }
}

Statement Database::prepare(const std::string& sql) const {
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v2(db_, sql.c_str(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    std::string head = sql.substr(0, 60);
    fail(rc, "preparing '" + head + (sql.size() > 60 ? "...'" : "'"));
  }
  return Statement(stmt, this);
}

std::string Database::query_text(const std::string& sql) const {
  Statement s = prepare(sql);
  return s.step() ? s.column_text(0) : std::string();
}

int64_t Database::query_int64(const std::string& sql) const {
  Statement s = prepare(sql);
  return s.step() ? s.column_int64(0) : 0;
}

int64_t Database::last_insert_rowid() const { return sqlite3_last_insert_rowid(db_); }
int64_t Database::changes() const { return sqlite3_changes(db_); }
bool Database::in_transaction() const { return sqlite3_get_autocommit(db_) == 0; }

// ---- Statement ----

Statement::Statement(Statement&& other) noexcept
    : stmt_(std::exchange(other.stmt_, nullptr)), db_(other.db_) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    sqlite3_finalize(stmt_);
    stmt_ = std::exchange(other.stmt_, nullptr);
    db_ = other.db_;
  }
  return *this;
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

int Statement::parameter(const char* name) const {
  const int index = sqlite3_bind_parameter_index(stmt_, name);
  if (index == 0)
    throw Error(db_->path() + ": internal: statement has no parameter " + name + ": " + sqlite3_sql(stmt_));
  return index;
}

void Statement::check_bind(int rc, int index) {
  if (rc != SQLITE_OK) db_->fail(rc, "binding parameter " + std::to_string(index));
}

Statement& Statement::bind_int64(int index, int64_t value) {
  check_bind(sqlite3_bind_int64(stmt_, index, value), index);
  return *this;
}
Statement& Statement::bind_double(int index, double value) {
  check_bind(std::isnan(value) ? sqlite3_bind_null(stmt_, index) : sqlite3_bind_double(stmt_, index, value), index);
  return *this;
}
Statement& Statement::bind_text(int index, const std::string& value) {
  check_bind(sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8), index);
  return *this;
}
Statement& Statement::bind_blob(int index, const void* data, size_t bytes) {
  // A zero-length blob must still be a blob, not NULL: sqlite3_bind_blob64 with a null pointer
  // binds NULL, so point it at something.
  static const char empty = 0;
  check_bind(sqlite3_bind_blob64(stmt_, index, bytes ? data : &empty, bytes, SQLITE_TRANSIENT), index);
  return *this;
}
Statement& Statement::bind_null(int index) {
  check_bind(sqlite3_bind_null(stmt_, index), index);
  return *this;
}
Statement& Statement::bind_int64(const char* name, int64_t value) { return bind_int64(parameter(name), value); }
Statement& Statement::bind_double(const char* name, double value) { return bind_double(parameter(name), value); }
Statement& Statement::bind_text(const char* name, const std::string& value) {
  return bind_text(parameter(name), value);
}
Statement& Statement::bind_text(const char* name, const char* value) {
  return bind_text(parameter(name), std::string(value));
}
Statement& Statement::bind_blob(const char* name, const void* data, size_t bytes) {
  return bind_blob(parameter(name), data, bytes);
}
Statement& Statement::bind_null(const char* name) { return bind_null(parameter(name)); }
Statement& Statement::bind_int64(const char* name, const std::optional<int64_t>& value) {
  return value ? bind_int64(name, *value) : bind_null(name);
}
Statement& Statement::bind_double(const char* name, const std::optional<double>& value) {
  return value ? bind_double(name, *value) : bind_null(name);
}
Statement& Statement::bind_text(const char* name, const std::optional<std::string>& value) {
  return value ? bind_text(name, *value) : bind_null(name);
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  // Reset so that the statement can be reused after the caller handles the error; the message
  // is read first since reset may overwrite it.
  std::string sql = sqlite3_sql(stmt_);
  if (sql.size() > 60) sql = sql.substr(0, 60) + "...";
  try {
    db_->fail(rc, "'" + sql + "'");
  } catch (...) {
    sqlite3_reset(stmt_);
    throw;
  }
}

void Statement::run() {
  while (step()) {
  }
  sqlite3_reset(stmt_);
}

void Statement::reset() { sqlite3_reset(stmt_); }

bool Statement::column_is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
int64_t Statement::column_int64(int col) const { return sqlite3_column_int64(stmt_, col); }
double Statement::column_double(int col) const { return sqlite3_column_double(stmt_, col); }
double Statement::column_double_or_nan(int col) const {
  return column_is_null(col) ? std::numeric_limits<double>::quiet_NaN() : column_double(col);
}
std::string Statement::column_text(int col) const {
  const unsigned char* p = sqlite3_column_text(stmt_, col);
  const int n = sqlite3_column_bytes(stmt_, col);  // after the text conversion, as documented
  return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
}
std::string Statement::column_blob(int col) const {
  const void* p = sqlite3_column_blob(stmt_, col);
  const int n = sqlite3_column_bytes(stmt_, col);
  return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
}
std::optional<int64_t> Statement::column_int64_opt(int col) const {
  if (column_is_null(col)) return std::nullopt;
  return column_int64(col);
}
std::optional<double> Statement::column_double_opt(int col) const {
  if (column_is_null(col)) return std::nullopt;
  return column_double(col);
}
std::optional<std::string> Statement::column_text_opt(int col) const {
  if (column_is_null(col)) return std::nullopt;
  return column_text(col);
}

// ---- Transaction ----

Transaction::Transaction(Database& db, Kind kind) : db_(db) {
  db_.exec(kind == Kind::Immediate ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED");
}

Transaction::~Transaction() {
  if (done_) return;
  // A failed statement may already have rolled the transaction back (SQLite does so on
  // SQLITE_FULL, SQLITE_IOERR and a few others), in which case ROLLBACK would be an error.
  if (db_.in_transaction()) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  db_.exec("COMMIT");
  done_ = true;
}

// ---- Little-endian blobs ----

namespace {

template <typename T>
std::string encode_le(const std::vector<T>& values) {
  static_assert(sizeof(T) == 8, "64-bit values only");
  std::string out(values.size() * 8, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    uint64_t bits;
    std::memcpy(&bits, &values[i], 8);
    for (int b = 0; b < 8; ++b) out[i * 8 + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
  }
  return out;
}

template <typename T>
std::vector<T> decode_le(const std::string& bytes, const std::string& what) {
  if (bytes.size() % 8 != 0)
    throw Error(what + ": " + std::to_string(bytes.size()) + " bytes is not a whole number of 8-byte values");
  std::vector<T> out(bytes.size() / 8);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t bits = 0;
    for (int b = 7; b >= 0; --b) bits = (bits << 8) | p[i * 8 + b];
    std::memcpy(&out[i], &bits, 8);
  }
  return out;
}

}  // namespace

std::string encode_le_int64(const std::vector<int64_t>& values) { return encode_le(values); }
std::string encode_le_float64(const std::vector<double>& values) { return encode_le(values); }
std::vector<int64_t> decode_le_int64(const std::string& bytes, const std::string& what) {
  return decode_le<int64_t>(bytes, what);
}
std::vector<double> decode_le_float64(const std::string& bytes, const std::string& what) {
  return decode_le<double>(bytes, what);
}

}  // namespace respin::sqlite
