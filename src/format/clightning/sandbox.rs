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
/// Why a cancelled rebuild stopped.
const CANCELLED: &str = "cancelled: restorefs is shutting down";
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

/// The authorizer's state, shared with the sandbox.
#[derive(Default)]
struct Refusal {
    /// Set while a log statement is being prepared or run; internal statements are not checked.
    on: AtomicBool,
    /// The first refused action of the statement.
    reason: Mutex<Option<String>>,
}

impl Refusal {
    fn reason(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sandbox installed on one connection.
pub struct Sandbox {
    refusal: Arc<Refusal>,
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
        let refusal = Arc::new(Refusal::default());
        let shared = Arc::clone(&refusal);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if !shared.on.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            match authorize(&ctx) {
                Ok(()) => Authorization::Allow,
                Err(why) => {
                    shared.reason().get_or_insert(why);
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

    /// Checks the statements prepared from now on.
    pub fn enter(&self) {
        *self.refusal.reason() = None;
        self.refusal.on.store(true, Ordering::Relaxed);
    }

    /// Stops checking (the replayer's own statements follow).
    pub fn leave(&self) {
        self.refusal.on.store(false, Ordering::Relaxed);
    }

    /// Fails once the rebuild is cancelled or out of time: looked at between statements, since
    /// the progress handler only sees statements long enough to reach it.
    pub fn check(&self) -> Result<(), String> {
        if self.budget.cancel.load(Ordering::Relaxed) {
            Err(CANCELLED.to_owned())
        } else if self.budget.deadline.is_some_and(|d| Instant::now() >= d) {
            Err(self.out_of_time())
        } else {
            Ok(())
        }
    }

    fn out_of_time(&self) -> String {
        format!(
            "the SQL time budget of one rebuild ({} s, --sql-timeout) ran out",
            self.budget.timeout.as_secs_f64()
        )
    }

    /// The budget of this rebuild.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Says why a statement failed, in the sandbox's terms when the sandbox stopped it.
    pub fn explain(&self, e: &rusqlite::Error) -> String {
        // A refused function comes back as a plain error: the recorded refusal tells.
        if let Some(why) = self.refusal.reason().take() {
            return format!("refused by the SQL sandbox: {why}");
        }
        match e.sqlite_error_code() {
            Some(ErrorCode::AuthorizationForStatementDenied) => {
                "refused by the SQL sandbox".to_owned()
            }
            Some(ErrorCode::OperationInterrupted) if self.budget.cancel.load(Ordering::Relaxed) => {
                CANCELLED.to_owned()
            }
            Some(ErrorCode::OperationInterrupted) => self.out_of_time(),
            // SQLite tells the bound (max_page_count) from a full disk by neither code nor
            // message, and after the failed statement the database is back to its old size.
            Some(ErrorCode::DiskFull) => format!(
                "the rebuilt database would grow past its size bound of {} bytes (--max-db-size), or the disk of the cache folder is full",
                self.budget.max_db_size
            ),
            _ => e.to_string(),
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
        AuthAction::Function { function_name } => function(function_name),
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            on_main()?;
            pragma(pragma_name, pragma_value)
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

/// Whether a log statement may call the SQL function `name`.
fn function(name: &str) -> Result<(), String> {
    if FUNCTIONS.iter().any(|f| f.eq_ignore_ascii_case(name)) {
        Ok(())
    } else {
        Err(format!("the SQL function {name}()"))
    }
}

/// Whether a log statement may run `PRAGMA name [= value]` (on main).
fn pragma(name: &str, value: Option<&str>) -> Result<(), String> {
    let name_ok = PRAGMAS.iter().any(|p| p.eq_ignore_ascii_case(name));
    let value_ok = value.is_none_or(|v| {
        ["on", "off", "0", "1", "true", "false", "yes", "no"]
            .iter()
            .any(|ok| ok.eq_ignore_ascii_case(v.trim_matches(['\'', '"'])))
    });
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(format!(
            "PRAGMA {name}{} (only foreign_keys ON/OFF)",
            value.map(|v| format!(" = {v}")).unwrap_or_default()
        ))
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

/// What a statement does that the sandbox refuses by its first words alone, if anything.
pub fn refused_kind(stmt: &[u8]) -> Option<&'static str> {
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
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::super::log::{self, EntryKind, Probe};
    use super::super::replay::{Replayer, rewrite_pre_4090, statements};
    use super::*;

    /// The derivation of the allow lists, repeated: every statement of every reference log,
    /// run in order into a scratch database (snapshots replace it) with an authorizer that
    /// records what it is asked; nothing recorded may be refused, and no entry screened out.
    #[test]
    fn the_reference_logs_need_nothing_more() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clightning");
        let tmp = tempfile::tempdir().unwrap();
        let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let refused: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut statements_run = 0;
        let mut logs = 0;
        for f in std::fs::read_dir(&dir).unwrap() {
            let path = f.unwrap().path();
            if !matches!(
                log::probe(&crate::storage::LocalStore::default(), &path),
                Probe::Valid(_)
            ) {
                continue;
            }
            logs += 1;
            let file = std::fs::File::open(&path).unwrap();
            let mut entries = Vec::new();
            let len = file.metadata().unwrap().len();
            log::walk(&file, log::HEADER_LEN, len, &mut entries);
            let db = tmp.path().join("derive.db");
            let _ = std::fs::remove_file(&db);
            let mut conn = None;
            let mapped = log::Mapped::new(&file, &path).unwrap();
            for e in &entries {
                assert_eq!(e.forbidden, None, "{}: {e:?}", path.display());
                let payload = mapped.payload(e).unwrap();
                if e.kind == EntryKind::Snapshot {
                    drop(conn.take());
                    std::fs::write(&db, payload).unwrap();
                    continue;
                }
                let c: &mut Connection = conn.get_or_insert_with(|| {
                    let mut c = Connection::open(&db).unwrap();
                    let (seen, refused) = (Arc::clone(&seen), Arc::clone(&refused));
                    c.authorizer(Some(move |ctx: AuthContext<'_>| {
                        let what = match ctx.action {
                            AuthAction::Function { function_name } => {
                                format!("function {function_name}")
                            }
                            AuthAction::Pragma { pragma_name, .. } => {
                                format!("pragma {pragma_name}")
                            }
                            _ => format!("database {:?}", ctx.database_name),
                        };
                        seen.lock().unwrap().insert(what);
                        if let Err(why) = authorize(&ctx) {
                            refused.lock().unwrap().push(why);
                        }
                        Authorization::Allow
                    }))
                    .unwrap();
                    c
                });
                for stmt in statements(payload).unwrap() {
                    statements_run += 1;
                    // Damaged and rewound logs hold statements that fail; only the asking counts.
                    let _ = c.execute_batch(&rewrite_pre_4090(stmt));
                }
            }
        }
        assert!(
            logs >= 8 && statements_run > 1000,
            "{logs} logs, {statements_run}"
        );
        assert_eq!(refused.lock().unwrap().as_slice(), [] as [String; 0]);
        let seen = seen.lock().unwrap();
        for expected in [
            "function like",
            "function printf",
            "function sqlite_rename_table",
            "pragma foreign_keys",
            "database Some(\"main\")",
            "database Some(\"temp\")",
        ] {
            assert!(seen.contains(expected), "{expected} not met: {seen:?}");
        }
        let pragmas: Vec<_> = seen.iter().filter(|s| s.starts_with("pragma")).collect();
        assert_eq!(pragmas, ["pragma foreign_keys"]);
    }

    /// A replayer on a fresh database with table `t`, within `limits`.
    fn replayer(dir: &Path, limits: &SqlLimits) -> Replayer {
        let mut r = Replayer::open(&dir.join("r.db"), limits.budget(0)).unwrap();
        r.apply(b"CREATE TABLE t (a)\0INSERT INTO t VALUES (1)", true)
            .unwrap();
        r
    }

    #[test]
    fn file_touching_and_foreign_statements_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("made-by-the-log");
        let t = target.display();
        let limits = SqlLimits::default();
        for (stmt, why) in [
            (format!("ATTACH DATABASE '{t}' AS x"), "ATTACH"),
            (format!("VACUUM INTO '{t}'"), "VACUUM"),
            ("VACUUM".to_owned(), "VACUUM"),
            ("/* c */ vacuum main".to_owned(), "VACUUM"),
            ("DETACH main".to_owned(), "DETACH"),
            (format!("INSERT INTO t VALUES (load_extension('{t}'))"), "load_extension"),
            ("PRAGMA writable_schema = ON".to_owned(), "writable_schema"),
            (format!("PRAGMA temp_store_directory = '{t}'"), "temp_store_directory"),
            ("PRAGMA journal_mode = DELETE".to_owned(), "journal_mode"),
            ("PRAGMA main.journal_mode = WAL".to_owned(), "journal_mode"),
            ("PRAGMA temp_store = FILE".to_owned(), "temp_store"),
            ("PRAGMA foreign_keys = 'x'".to_owned(), "foreign_keys"),
            ("PRAGMA temp.foreign_keys = OFF".to_owned(), "temp"),
            ("CREATE TEMP TABLE x (a)".to_owned(), "temp"),
            ("INSERT INTO temp.sqlite_temp_master VALUES (1,1,1,1,1)".to_owned(), "refused"),
            ("CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM t; END".to_owned(), "CreateTrigger"),
            ("CREATE VIEW v AS SELECT 1".to_owned(), "CreateView"),
            ("CREATE VIRTUAL TABLE v USING fts5(a)".to_owned(), "refused"),
            ("INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c".to_owned(), "recursive"),
            ("CREATE TABLE big AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 2000000) SELECT zeroblob(1000) FROM c".to_owned(), "refused"),
            ("INSERT INTO t VALUES (zeroblob(1000000000))".to_owned(), "zeroblob"),
            ("INSERT INTO t SELECT 1; ATTACH 'x' AS y".to_owned(), "ATTACH"),
            ("SAVEPOINT s".to_owned(), "never logs"),
            ("COMMIT".to_owned(), "never logs"),
            ("ANALYZE".to_owned(), "never logs"),
        ] {
            let mut r = replayer(tmp.path(), &limits);
            // Inside a transaction and, like PRAGMA-only entries, outside one.
            let e = r.apply(stmt.as_bytes(), true).unwrap_err();
            assert!(e.contains("refused by the SQL sandbox") && e.contains(why), "{stmt}: {e}");
            let e = r.apply(stmt.as_bytes(), false).unwrap_err();
            assert!(e.contains("refused by the SQL sandbox") && e.contains(why), "{stmt}: {e}");
            r.apply(b"INSERT INTO t VALUES (2)", true).unwrap();
            drop(r);
            std::fs::remove_file(tmp.path().join("r.db")).unwrap();
            assert!(!target.exists(), "{stmt} made {t}");
        }
    }

    #[test]
    fn an_endless_statement_ends_at_the_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = SqlLimits {
            timeout: Duration::from_millis(500),
            ..SqlLimits::default()
        };
        let mut r = replayer(tmp.path(), &limits);
        // 1024 rows, then a join of six copies: 10^18 steps, made of allowed parts only.
        for _ in 0..10 {
            r.apply(b"INSERT INTO t SELECT a FROM t", true).unwrap();
        }
        let start = Instant::now();
        let e = r
            .apply(
                b"INSERT INTO t SELECT count(*) FROM t a, t b, t c, t d, t e, t f",
                true,
            )
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(e.contains("--sql-timeout"), "{e}");
    }

    #[test]
    fn cancelling_interrupts_a_running_statement() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = SqlLimits {
            timeout: Duration::from_secs(3600),
            ..SqlLimits::default()
        };
        let mut r = replayer(tmp.path(), &limits);
        for _ in 0..10 {
            r.apply(b"INSERT INTO t SELECT a FROM t", true).unwrap();
        }
        let l = limits.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            l.cancel();
            Instant::now()
        });
        let e = r
            .apply(
                b"INSERT INTO t SELECT count(*) FROM t a, t b, t c, t d, t e, t f",
                true,
            )
            .unwrap_err();
        let cancelled_at = canceller.join().unwrap();
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "{:?}",
            cancelled_at.elapsed()
        );
        assert!(e.contains("cancelled"), "{e}");
        // Later rebuilds do not start either.
        assert!(
            r.apply(b"INSERT INTO t VALUES (3)", true)
                .unwrap_err()
                .contains("cancelled")
        );
    }

    #[test]
    fn a_growing_database_stops_at_its_size_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = SqlLimits {
            max_db_size: Some(8 << 20),
            ..SqlLimits::default()
        };
        let mut r = replayer(tmp.path(), &limits);
        r.apply(b"INSERT INTO t VALUES (printf('%.*c', 1000000, 'x'))", true)
            .unwrap();
        let mut failed = None;
        for _ in 0..8 {
            if let Err(e) = r.apply(b"INSERT INTO t SELECT a FROM t", true) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("256 MB of rows fit in 8 MiB");
        assert!(
            e.contains("size bound of 8388608 bytes (--max-db-size)"),
            "{e}"
        );
        assert!(
            e.contains("statement 1 (INSERT INTO t SELECT a FROM t)"),
            "{e}"
        );
        drop(r);
        let len = std::fs::metadata(tmp.path().join("r.db")).unwrap().len();
        assert!(len <= 8 << 20, "{len}");
        // A database already past the bound is not opened for replaying.
        let big = tmp.path().join("big.db");
        let c = Connection::open(&big).unwrap();
        c.execute_batch("CREATE TABLE b (a); INSERT INTO b VALUES (zeroblob(2000000))")
            .unwrap();
        drop(c);
        let small = SqlLimits {
            max_db_size: Some(1 << 20),
            ..SqlLimits::default()
        };
        let e = Replayer::open(&big, small.budget(0)).err().unwrap();
        assert!(e.contains("already larger"), "{e}");
    }

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
