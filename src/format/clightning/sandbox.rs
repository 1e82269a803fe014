//! The sandbox log statements are replayed in (issue 10, hostile backups): a log is SQL from a
//! file nobody vouches for, so it may only do what lightningd's own writes do, to the `main`
//! database, within a time and size budget, and stop when restorefs shuts down.
//!
//! What "lightningd's own writes" are was derived from the reference logs: every statement of
//! every log in the test data was replayed with an authorizer recording each action, function,
//! PRAGMA and schema name it was asked about (test `the_reference_logs_need_nothing_more`
//! repeats this and fails on anything this module would refuse). They are INSERT, UPDATE,
//! DELETE, CREATE TABLE/INDEX, DROP TABLE, ALTER TABLE and `PRAGMA foreign_keys = ON/OFF`,
//! reading and writing `main` only; SQLite's own ALTER TABLE machinery also reads and updates
//! the schema tables (`sqlite_master`, and `sqlite_temp_master` of `temp`) and calls its
//! internal `sqlite_rename_*` functions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Connection, ErrorCode};

/// The default time one rebuild may spend in SQL (`--sql-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The default size bound of a rebuilt database is this many times the log's size…
const SIZE_FACTOR: u64 = 16;
/// …plus this much.
const SIZE_SLACK: u64 = 256 << 20;
/// Longest statement text and longest string or blob value (SQLite's defaults are 1 GB).
const MAX_LENGTH: i32 = 64 << 20;
/// VM instructions between two looks at the clock and the cancel flag (a few microseconds).
const PROGRESS_OPS: i32 = 1000;

/// The first words a logged statement may start with: lightningd logs writes only.
const LEADING: [&str; 8] = [
    "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "PRAGMA",
];
/// The PRAGMAs a log may hold (lightningd's table-rebuild helpers, spec §2.4).
const PRAGMAS: [&str; 1] = ["foreign_keys"];
/// The functions lightningd's statements call, plus SQLite's internal ALTER TABLE helpers
/// (callable only from SQLite's own nested statements) and plain value functions of the
/// same kind; `load_extension`, blob makers and clock readers are not among them.
const FUNCTIONS: [&str; 36] = [
    "abs",
    "avg",
    "coalesce",
    "count",
    "glob",
    "hex",
    "ifnull",
    "iif",
    "instr",
    "length",
    "like",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "octet_length",
    "printf",
    "format",
    "quote",
    "replace",
    "round",
    "rtrim",
    "sqlite_drop_column",
    "sqlite_rename_column",
    "sqlite_rename_quotefix",
    "sqlite_rename_table",
    "sqlite_rename_test",
    "substr",
    "substring",
    "sum",
    "total",
    "trim",
    "typeof",
    "unhex",
    "upper",
];

/// Limits on replaying a log's SQL, shared by every rebuild of a run.
#[derive(Clone, Debug)]
pub struct SqlLimits {
    /// Wall-clock time one rebuild may spend replaying (`--sql-timeout`).
    pub timeout: Duration,
    /// Largest rebuilt database in bytes (`--max-db-size`); `None`: 16 × the log's size + 256 MiB.
    pub max_db_size: Option<u64>,
    cancel: Arc<AtomicBool>,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            timeout: DEFAULT_TIMEOUT,
            max_db_size: None,
            cancel: Arc::default(),
        }
    }
}

impl SqlLimits {
    /// Stops every running and future rebuild within ~100 ms (for shutdown).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The budget of one rebuild starting now, from a log of `log_len` bytes.
    pub fn budget(&self, log_len: u64) -> Budget {
        let max_db_size = self.max_db_size.unwrap_or_else(|| {
            log_len
                .saturating_mul(SIZE_FACTOR)
                .saturating_add(SIZE_SLACK)
        });
        Budget {
            deadline: Instant::now().checked_add(self.timeout),
            timeout: self.timeout,
            max_db_size,
            cancel: Arc::clone(&self.cancel),
        }
    }
}

/// What one rebuild may spend.
#[derive(Clone, Debug)]
pub struct Budget {
    /// When the rebuild's time is up (`None`: never, for an absurdly long timeout).
    deadline: Option<Instant>,
    timeout: Duration,
    /// Largest database in bytes.
    pub max_db_size: u64,
    cancel: Arc<AtomicBool>,
}

/// Why the sandbox stopped a statement.
#[derive(Default)]
struct Refusal {
    /// Set while a log statement is being prepared or run; internal statements are not checked.
    on: bool,
    /// The first refused action of the statement.
    reason: Option<String>,
}

/// The sandbox installed on one connection.
pub struct Sandbox {
    refusal: Arc<Mutex<Refusal>>,
    budget: Budget,
}

impl Sandbox {
    /// Locks `conn` down: limits, defensive mode, an untrusted schema, the authorizer (active
    /// only between [`enter`](Self::enter) and [`leave`](Self::leave)) and the time budget.
    pub fn install(conn: &mut Connection, budget: Budget) -> Result<Sandbox, String> {
        let e = |e: rusqlite::Error| format!("cannot set up the SQL sandbox: {e}");
        for (limit, value) in [
            (Limit::SQLITE_LIMIT_ATTACHED, 0),
            (Limit::SQLITE_LIMIT_LENGTH, MAX_LENGTH),
            (Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_LENGTH),
            (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 10),
            (Limit::SQLITE_LIMIT_WORKER_THREADS, 0),
        ] {
            conn.set_limit(limit, value).map_err(e)?;
        }
        for (config, value) in [
            (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
            (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
            (DbConfig::SQLITE_DBCONFIG_WRITABLE_SCHEMA, false),
            (DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE, false),
            (DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE, false),
        ] {
            conn.set_db_config(config, value).map_err(e)?;
        }
        // Extension loading stays off as SQLite starts it (rusqlite is built without it), and
        // the authorizer refuses `load_extension()` too.
        let refusal = Arc::new(Mutex::new(Refusal::default()));
        let shared = Arc::clone(&refusal);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let mut r = shared.lock().unwrap_or_else(|p| p.into_inner());
            if !r.on {
                return Authorization::Allow;
            }
            match authorize(&ctx) {
                Ok(()) => Authorization::Allow,
                Err(why) => {
                    r.reason.get_or_insert(why);
                    Authorization::Deny
                }
            }
        }))
        .map_err(e)?;
        let (cancel, deadline) = (Arc::clone(&budget.cancel), budget.deadline);
        conn.progress_handler(
            PROGRESS_OPS,
            Some(move || {
                cancel.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
            }),
        )
        .map_err(e)?;
        Ok(Sandbox { refusal, budget })
    }

    fn refusal(&self) -> std::sync::MutexGuard<'_, Refusal> {
        self.refusal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the statements prepared from now on.
    pub fn enter(&self) {
        *self.refusal() = Refusal {
            on: true,
            reason: None,
        };
    }

    /// Stops checking (the replayer's own statements follow).
    pub fn leave(&self) {
        self.refusal().on = false;
    }

    /// The budget of this rebuild.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Says why a statement failed, in the sandbox's terms when the sandbox stopped it.
    pub fn explain(&self, conn: &Connection, e: &rusqlite::Error) -> String {
        match e.sqlite_error_code() {
            Some(ErrorCode::AuthorizationForStatementDenied) => {
                let why = self.refusal().reason.take();
                format!(
                    "refused by the SQL sandbox: {}",
                    why.as_deref().unwrap_or("not allowed")
                )
            }
            Some(ErrorCode::OperationInterrupted) if self.budget.cancel.load(Ordering::Relaxed) => {
                "cancelled: restorefs is shutting down".to_owned()
            }
            Some(ErrorCode::OperationInterrupted) => format!(
                "the SQL time budget of one rebuild ({} s, --sql-timeout) ran out",
                self.budget.timeout.as_secs_f64()
            ),
            Some(ErrorCode::DiskFull) if self.at_size_bound(conn) => format!(
                "the rebuilt database reached its size bound of {} bytes (--max-db-size)",
                self.budget.max_db_size
            ),
            _ => e.to_string(),
        }
    }

    fn at_size_bound(&self, conn: &Connection) -> bool {
        let get = |p: &str| conn.query_row(p, [], |r| r.get::<_, i64>(0)).ok();
        match (get("PRAGMA page_count"), get("PRAGMA max_page_count")) {
            (Some(n), Some(max)) => n >= max,
            _ => false,
        }
    }
}

/// Whether the authorizer allows one action of a log statement; else why not.
fn authorize(ctx: &AuthContext<'_>) -> Result<(), String> {
    let db = ctx.database_name;
    let on_main = || match db {
        None | Some("main") => Ok(()),
        Some(other) => Err(format!("access to the database {other:?} (only main)")),
    };
    match ctx.action {
        AuthAction::Select => Ok(()),
        AuthAction::Read { table_name, .. } | AuthAction::Update { table_name, .. }
            if db == Some("temp") && is_schema_table(table_name) =>
        {
            // SQLite's own ALTER TABLE machinery fixes up the temp schema too.
            Ok(())
        }
        AuthAction::Read { .. }
        | AuthAction::Insert { .. }
        | AuthAction::Update { .. }
        | AuthAction::Delete { .. }
        | AuthAction::CreateTable { .. }
        | AuthAction::CreateIndex { .. }
        | AuthAction::DropTable { .. }
        | AuthAction::DropIndex { .. }
        | AuthAction::Reindex { .. } => on_main(),
        AuthAction::AlterTable { database_name, .. } => match database_name {
            "main" => Ok(()),
            other => Err(format!("ALTER TABLE in the database {other:?} (only main)")),
        },
        AuthAction::Function { function_name } => {
            if FUNCTIONS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(function_name))
            {
                Ok(())
            } else {
                Err(format!("the SQL function {function_name}()"))
            }
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            on_main()?;
            let name_ok = PRAGMAS.iter().any(|p| p.eq_ignore_ascii_case(pragma_name));
            let value_ok = pragma_value.is_none_or(|v| {
                ["on", "off", "0", "1", "true", "false", "yes", "no"]
                    .iter()
                    .any(|ok| ok.eq_ignore_ascii_case(v.trim_matches(['\'', '"'])))
            });
            if name_ok && value_ok {
                Ok(())
            } else {
                Err(format!(
                    "PRAGMA {pragma_name}{} (only foreign_keys ON/OFF)",
                    pragma_value.map(|v| format!(" = {v}")).unwrap_or_default()
                ))
            }
        }
        AuthAction::Attach { filename } => Err(format!("ATTACH of {filename:?}")),
        AuthAction::Detach { database_name } => Err(format!("DETACH of {database_name:?}")),
        AuthAction::Recursive => Err("a recursive query (WITH RECURSIVE)".to_owned()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Err("a transaction statement (the replayer commits as lightningd did)".to_owned())
        }
        other => Err(action_name(&other)),
    }
}

fn is_schema_table(name: &str) -> bool {
    ["sqlite_temp_master", "sqlite_temp_schema"]
        .iter()
        .any(|t| t.eq_ignore_ascii_case(name))
}

/// A short name of a refused action for messages.
fn action_name(a: &AuthAction<'_>) -> String {
    let full = format!("{a:?}");
    let kind = full.split([' ', '{', '(']).next().unwrap_or("an action");
    format!("{kind} ({full})")
}

/// A statement of a log that the sandbox will refuse, found without replaying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forbidden {
    /// 1-based number of the statement in its entry.
    pub statement: u32,
    /// What it does.
    pub what: &'static str,
}

/// Finds the first statement of a transaction payload whose kind alone is refused (ATTACH,
/// VACUUM, a PRAGMA other than foreign_keys, anything lightningd never logs). Cheap: only each
/// statement's first words are looked at; the authorizer remains the real enforcement.
pub fn screen(payload: &[u8]) -> Option<Forbidden> {
    payload
        .split(|&b| b == 0)
        .zip(1u32..)
        .find_map(|(stmt, statement)| refused_kind(stmt).map(|what| Forbidden { statement, what }))
}

fn refused_kind(stmt: &[u8]) -> Option<&'static str> {
    let (first, rest) = word(stmt);
    if first.is_empty() {
        // Empty or comment only (or starting with punctuation, which SQLite rejects).
        return skip_space(rest)
            .first()
            .map(|_| "a statement that does not start with a keyword");
    }
    let is = |k: &str| first.eq_ignore_ascii_case(k.as_bytes());
    if is("ATTACH") || is("DETACH") {
        return Some("ATTACH/DETACH of another database file");
    }
    if is("VACUUM") {
        return Some("VACUUM (rewrites or writes database files)");
    }
    if is("PRAGMA") {
        let (name, after) = word(rest);
        let (schema, name) = match skip_space(after).first() {
            Some(b'.') => (Some(name), word(after.get(1..).unwrap_or_default()).0),
            _ => (None, name),
        };
        if schema.is_some_and(|s| !s.eq_ignore_ascii_case(b"main")) {
            return Some("a PRAGMA on a database other than main");
        }
        if !PRAGMAS
            .iter()
            .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
        {
            return Some("a PRAGMA other than foreign_keys");
        }
        return None;
    }
    if is("CREATE") {
        let (next, _) = word(rest);
        if next.eq_ignore_ascii_case(b"TEMP") || next.eq_ignore_ascii_case(b"TEMPORARY") {
            return Some("CREATE TEMP (the temp database)");
        }
    }
    if LEADING.iter().any(|k| is(k)) {
        None
    } else {
        Some(
            "a statement kind lightningd never logs (it logs INSERT, UPDATE, DELETE, REPLACE, CREATE, DROP, ALTER and PRAGMA foreign_keys)",
        )
    }
}

/// Skips white space and SQL comments.
fn skip_space(mut s: &[u8]) -> &[u8] {
    loop {
        match s {
            [c, rest @ ..] if c.is_ascii_whitespace() => s = rest,
            [b'-', b'-', rest @ ..] => {
                s = rest
                    .iter()
                    .position(|&c| c == b'\n')
                    .and_then(|p| rest.get(p..))
                    .unwrap_or_default();
            }
            [b'/', b'*', rest @ ..] => {
                s = rest
                    .windows(2)
                    .position(|w| w == b"*/")
                    .and_then(|p| rest.get(p + 2..))
                    .unwrap_or_default();
            }
            _ => return s,
        }
    }
}

/// The next identifier-like word after white space and comments, and what follows it.
fn word(s: &[u8]) -> (&[u8], &[u8]) {
    let s = skip_space(s);
    let n = s
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    s.split_at(n.min(s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screening_by_first_words() {
        let f = |s: &str| refused_kind(s.as_bytes());
        assert_eq!(f("INSERT INTO t VALUES (1)"), None);
        assert_eq!(f("  /* c */ -- x\n update t set a=1"), None);
        assert_eq!(f("PRAGMA foreign_keys = OFF;"), None);
        assert_eq!(f("pragma main.foreign_keys=1"), None);
        assert_eq!(f(""), None);
        assert_eq!(f("  -- only a comment"), None);
        assert!(f("ATTACH DATABASE '/x' AS x").unwrap().contains("ATTACH"));
        assert!(f("/**/detach x").unwrap().contains("ATTACH"));
        assert!(f("VACUUM INTO '/tmp/x'").unwrap().contains("VACUUM"));
        assert!(f("PRAGMA writable_schema = ON").unwrap().contains("PRAGMA"));
        assert!(
            f("PRAGMA temp.foreign_keys = ON")
                .unwrap()
                .contains("other than main")
        );
        assert!(f("PRAGMA journal_mode = DELETE").is_some());
        assert!(f("CREATE TEMP TABLE x(a)").is_some());
        assert!(f("WITH RECURSIVE c(x) AS (SELECT 1) SELECT 1").is_some());
        assert!(f("SELECT load_extension('x')").is_some());
        assert!(f("COMMIT").is_some());
        assert!(f("(SELECT 1)").is_some());
        assert_eq!(
            screen(b"INSERT INTO t VALUES (1)\0VACUUM\0ATTACH 'x' AS y"),
            Some(Forbidden {
                statement: 2,
                what: "VACUUM (rewrites or writes database files)"
            })
        );
        assert_eq!(
            screen(b"\xff\xfe\0INSERT INTO t VALUES (1)"),
            Some(Forbidden {
                statement: 1,
                what: "a statement that does not start with a keyword"
            })
        );
    }

    #[test]
    fn budget_defaults() {
        let l = SqlLimits::default();
        assert_eq!(l.timeout, Duration::from_secs(60));
        assert_eq!(l.budget(1 << 20).max_db_size, (16 << 20) + (256 << 20));
        assert_eq!(l.budget(u64::MAX).max_db_size, u64::MAX);
        assert!(!l.is_cancelled());
        l.clone().cancel();
        assert!(l.is_cancelled(), "clones share the flag");
    }
}
