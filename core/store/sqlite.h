// A thin RAII layer over the SQLite C API (Debian's libsqlite3), just enough for the run store:
// a connection, prepared statements with typed bind/column helpers, and transactions. Every
// failure is a respin::Error naming the database file, what was being done and SQLite's message.
//
// A Database and its Statements belong to one thread at a time (connections are opened with
// SQLITE_OPEN_NOMUTEX); threads that need the database open their own connection.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace respin::sqlite {

class Database;

class Statement {
 public:
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Parameters by 1-based index or by name (":name", including the colon). A name the statement
  // does not have is an internal error (respin::Error naming it). NaN doubles bind as NULL
  // (SQLite has no NaN); readers map NULL back (column_double_or_nan).
  Statement& bind_int64(int index, int64_t value);
  Statement& bind_double(int index, double value);
  Statement& bind_text(int index, const std::string& value);
  Statement& bind_blob(int index, const void* data, size_t bytes);
  Statement& bind_null(int index);
  Statement& bind_int64(const char* name, int64_t value);
  Statement& bind_double(const char* name, double value);
  Statement& bind_text(const char* name, const std::string& value);
  Statement& bind_text(const char* name, const char* value);  // resolves string vs optional
  Statement& bind_blob(const char* name, const void* data, size_t bytes);
  Statement& bind_null(const char* name);
  // Binds NULL for an empty optional.
  Statement& bind_int64(const char* name, const std::optional<int64_t>& value);
  Statement& bind_double(const char* name, const std::optional<double>& value);
  Statement& bind_text(const char* name, const std::optional<std::string>& value);

  // true: a row is available through column_*; false: the statement is done. Throws on error.
  bool step();
  // Runs a statement that returns no rows (or ignores them) to completion.
  void run();
  // Makes the statement reusable (bindings are kept; rebind what changes).
  void reset();

  // Columns are 0-based. NULL reads as 0 / "" / empty blob, or as nullopt in the *_opt forms.
  bool column_is_null(int col) const;
  int64_t column_int64(int col) const;
  double column_double(int col) const;
  double column_double_or_nan(int col) const;  // NULL -> NaN (see bind_double)
  std::string column_text(int col) const;
  std::string column_blob(int col) const;  // raw bytes
  std::optional<int64_t> column_int64_opt(int col) const;
  std::optional<double> column_double_opt(int col) const;
  std::optional<std::string> column_text_opt(int col) const;

 private:
  friend class Database;
  Statement(sqlite3_stmt* stmt, const Database* db) : stmt_(stmt), db_(db) {}
  int parameter(const char* name) const;
  void check_bind(int rc, int index);

  sqlite3_stmt* stmt_ = nullptr;
  const Database* db_ = nullptr;
};

class Database {
 public:
  enum class Mode {
    ReadOnly,         // SQLITE_OPEN_READONLY
    ReadWrite,        // the file must exist
    ReadWriteCreate,  // created (empty) when absent
  };
  // Opens (SQLite reads nothing until the first statement) and sets the busy timeout: a
  // statement that finds the database locked by another connection retries for that long
  // before failing with "database is locked".
  Database(const std::string& path, Mode mode, int busy_timeout_ms = 5000);
  Database(Database&& other) noexcept;
  Database& operator=(Database&& other) noexcept;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();

  // One or more ';'-separated statements without results (DDL, PRAGMAs).
  void exec(const std::string& sql);
  Statement prepare(const std::string& sql) const;
  // The first column of the first row of a query as text ("" when there is no row).
  std::string query_text(const std::string& sql) const;
  int64_t query_int64(const std::string& sql) const;

  int64_t last_insert_rowid() const;
  int64_t changes() const;  // rows changed by the last INSERT/UPDATE/DELETE
  bool in_transaction() const;
  const std::string& path() const { return path_; }
  sqlite3* handle() const { return db_; }
  // The first `n` bytes of the main database file (fewer at its end) and the file's size, read through
  // SQLite's own file handle. Never open a second descriptor on a database file a connection of this
  // process holds: its close() drops every POSIX lock the process has on the file, SQLite's too
  // (sqlite.org/howtocorrupt.html, 2.2). Throws respin::Error on failure.
  std::string read_file_start(size_t n, int64_t* file_size) const;

  // Throws respin::Error("<path>: <what>: <SQLite's message for rc>").
  [[noreturn]] void fail(int rc, const std::string& what) const;

 private:
  void close() noexcept;

  sqlite3* db_ = nullptr;
  std::string path_;
};

// BEGIN on construction, ROLLBACK in the destructor unless commit() was called. Immediate (the
// default) takes the write lock at once, so that a writer waits in BEGIN (under the busy timeout)
// rather than failing later when a read would have to upgrade to a write, which SQLite cannot
// retry; Deferred is for reads that want one consistent snapshot across several statements.
class Transaction {
 public:
  enum class Kind { Immediate, Deferred };
  explicit Transaction(Database& db, Kind kind = Kind::Immediate);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Database& db_;
  bool done_ = false;
};

// Little-endian encodings for BLOB columns (the same bytes on every host).
std::string encode_le_int64(const std::vector<int64_t>& values);
std::string encode_le_float64(const std::vector<double>& values);
// Throw respin::Error naming `what` when the size is not a multiple of 8.
std::vector<int64_t> decode_le_int64(const std::string& bytes, const std::string& what);
std::vector<double> decode_le_float64(const std::string& bytes, const std::string& what);

}  // namespace respin::sqlite
