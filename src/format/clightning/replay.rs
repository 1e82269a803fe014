//! Replaying log entries into SQLite the way lightningd committed them (spec §7.6): foreign keys
//! on, each statement on its own, the two pre-v0.9.2 rewrites, and PRAGMA-only entries run
//! outside any transaction so that they act as they did live.

use std::borrow::Cow;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::log;
use super::sandbox::{self, Budget, Sandbox};

/// Splits a transaction payload into its statements (NUL-separated, strict UTF-8).
pub fn statements(payload: &[u8]) -> Result<Vec<&str>, String> {
    payload
        .split(|&b| b == 0)
        .enumerate()
        .map(|(i, s)| {
            std::str::from_utf8(s).map_err(|e| format!("statement {} is not UTF-8: {e}", i + 1))
        })
        .collect()
}

/// Gives back the space lightningd before v0.9.2 dropped before `WHERE` in two statements
/// (`reserved_til=<digits>WHERE` and `peer_id=<digits>WHERE channels.id=`), anywhere in the
/// text, exactly as the plugin's restore does.
pub fn rewrite_pre_4090(stmt: &str) -> Cow<'_, str> {
    let once = insert_space(stmt, "reserved_til=", "WHERE");
    match insert_space(&once, "peer_id=", "WHERE channels.id=") {
        Cow::Owned(s) => Cow::Owned(s),
        Cow::Borrowed(_) => once,
    }
}

fn insert_space<'a>(s: &'a str, key: &str, next: &str) -> Cow<'a, str> {
    let mut out = String::new();
    let mut rest = s;
    let mut changed = false;
    while let Some((head, tail)) = rest
        .find(key)
        .and_then(|p| rest.split_at_checked(p.saturating_add(key.len())))
    {
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        match tail.split_at_checked(digits) {
            Some((number, after)) if digits > 0 && after.starts_with(next) => {
                out.push_str(number);
                out.push(' ');
                rest = after;
                changed = true;
            }
            _ => rest = tail,
        }
    }
    if !changed {
        return Cow::Borrowed(s);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Whether a statement is a PRAGMA (re-applied when resuming from a checkpoint, because
/// connection settings such as `foreign_keys` are not stored in the database file).
pub fn is_pragma(stmt: &str) -> bool {
    stmt.trim_start()
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("pragma"))
}

/// A database being rebuilt.
pub struct Replayer {
    conn: Connection,
    sandbox: Sandbox,
    in_tx: bool,
}

impl Replayer {
    /// Opens (or creates) the database file at `path` for replaying within `budget`.
    pub fn open(path: &Path, budget: Budget) -> Result<Replayer, String> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)
            .map_err(|e| format!("cannot open the database: {e}"))?;
        let sandbox = Sandbox::install(&mut conn, budget)?;
        // No journal and no syncing: a rebuild that fails is thrown away whole (never rolled
        // back), and one that is lost is rebuilt from the log. A WAL snapshot keeps its mode.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode = OFF", [], |_| Ok(()))
                .map_err(|e| e.to_string())?;
        }
        conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA foreign_keys = ON;")
            .map_err(|e| e.to_string())?;
        // The size bound, in pages; a database already past it stops here.
        let max = sandbox.budget().max_db_size;
        let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        if len > max {
            return Err(format!(
                "the database ({len} bytes) is already larger than its size bound of {max} bytes (--max-db-size)"
            ));
        }
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        let pages = max / u64::try_from(page).unwrap_or(1).max(1);
        conn.query_row(
            &format!(
                "PRAGMA max_page_count = {}",
                pages.clamp(1, i64::MAX as u64)
            ),
            [],
            |_| Ok(()),
        )
        .map_err(|e| e.to_string())?;
        Ok(Replayer {
            conn,
            sandbox,
            in_tx: false,
        })
    }

    /// Runs one statement of the log inside the sandbox.
    fn run(&self, sql: &str) -> Result<(), String> {
        if sql.trim().is_empty() {
            return Ok(());
        }
        // VACUUM asks the authorizer nothing: statements are screened by their first words too.
        if let Some(what) = sandbox::refused_kind(sql.as_bytes()) {
            return Err(format!("refused by the SQL sandbox: {what}"));
        }
        let sql = rewrite_pre_4090(sql);
        self.sandbox.enter();
        let r = match log::bump_value(&sql) {
            // The same statement with the version bound: parsed (and authorized) once.
            Some(n) => self.step_bump(n),
            None => self.step_all(&sql),
        };
        self.sandbox.leave();
        r.map_err(|e| self.sandbox.explain(&e))
    }

    fn step_all(&self, sql: &str) -> rusqlite::Result<()> {
        let mut st = self.conn.prepare(sql)?;
        let mut rows = st.raw_query();
        while rows.next()?.is_some() {}
        Ok(())
    }

    fn step_bump(&self, n: i64) -> rusqlite::Result<()> {
        let mut st = self.conn.prepare_cached(log::BUMP_BOUND)?;
        st.raw_bind_parameter(1, n)?;
        let mut rows = st.raw_query();
        while rows.next()?.is_some() {}
        Ok(())
    }

    /// Runs one of the replayer's own statements (not checked by the authorizer, but still
    /// within the time and size budget).
    fn own(&self, sql: &str) -> Result<(), String> {
        self.conn
            .execute_batch(sql)
            .map_err(|e| self.sandbox.explain(&e))
    }

    /// Applies one transaction entry: a committed transaction (`bump`) joins the open write
    /// transaction; a PRAGMA-only entry first commits, then runs on its own.
    pub fn apply(&mut self, payload: &[u8], bump: bool) -> Result<(), String> {
        self.sandbox.check()?;
        let stmts = statements(payload)?;
        if bump && !self.in_tx {
            self.own("BEGIN")?;
            self.in_tx = true;
        } else if !bump {
            self.commit()?;
        }
        for (i, s) in stmts.iter().enumerate() {
            self.run(s)
                .map_err(|e| format!("statement {} ({}) fails: {e}", i + 1, preview(s)))?;
        }
        Ok(())
    }

    /// Re-runs the PRAGMAs of a PRAGMA-only entry met before a checkpoint.
    pub fn reapply_pragmas(&mut self, payload: &[u8]) -> Result<(), String> {
        self.commit()?;
        for s in statements(payload)?.into_iter().filter(|s| is_pragma(s)) {
            self.run(s)?;
        }
        Ok(())
    }

    /// Commits the open write transaction, if any.
    pub fn commit(&mut self) -> Result<(), String> {
        if self.in_tx {
            self.own("COMMIT")?;
            self.in_tx = false;
        }
        Ok(())
    }

    /// Commits, and moves a WAL database's committed pages into its main file, so that the
    /// file alone holds the state (for a checkpoint).
    pub fn flush(&mut self) -> Result<(), String> {
        self.commit()?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.sandbox.explain(&e))
    }

    /// Commits and closes the database.
    pub fn finish(mut self) -> Result<(), String> {
        self.commit()?;
        self.conn.close().map_err(|(_, e)| e.to_string())
    }
}

fn preview(s: &str) -> String {
    let t: String = s.chars().take(60).collect();
    if t.len() < s.len() {
        format!("{t}…")
    } else {
        t
    }
}

/// `PRAGMA integrity_check` of a database file, opened read-only.
pub fn integrity_check(path: &Path) -> Result<(), String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let mut st = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let lines: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if lines == ["ok"] {
        Ok(())
    } else {
        Err(lines.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sandbox::SqlLimits;
    use super::*;

    #[test]
    fn the_two_pre_4090_rewrites() {
        assert_eq!(
            rewrite_pre_4090(
                "UPDATE outputs SET status=1, reserved_til=174WHERE prev_out_tx=x'00'"
            ),
            "UPDATE outputs SET status=1, reserved_til=174 WHERE prev_out_tx=x'00'"
        );
        assert_eq!(
            rewrite_pre_4090("UPDATE channels SET peer_id=3WHERE channels.id=5"),
            "UPDATE channels SET peer_id=3 WHERE channels.id=5"
        );
        // Like the plugin, inside string data too.
        assert_eq!(
            rewrite_pre_4090("INSERT INTO q VALUES ('reserved_til=9WHERE')"),
            "INSERT INTO q VALUES ('reserved_til=9 WHERE')"
        );
        assert!(matches!(
            rewrite_pre_4090("reserved_til=WHERE peer_id=1 WHERE"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            rewrite_pre_4090("peer_id=3WHERE id=5"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn splitting() {
        assert_eq!(statements(b"a\0b;\0").unwrap(), ["a", "b;", ""]);
        assert!(statements(b"a\0\xff").unwrap_err().contains("statement 2"));
        assert!(is_pragma("  pragma foreign_keys = OFF"));
        assert!(!is_pragma("UPDATE"));
    }

    #[test]
    fn pragma_entries_act_outside_the_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let mut r = Replayer::open(&db, SqlLimits::default().budget(0)).unwrap();
        r.apply(
            b"CREATE TABLE p (id INTEGER PRIMARY KEY)\0CREATE TABLE c (pid INTEGER REFERENCES p(id) ON DELETE CASCADE)\0INSERT INTO p VALUES (1)\0INSERT INTO c VALUES (1)",
            true,
        )
        .unwrap();
        // With foreign keys on, deleting the parent cascades.
        r.apply(b"PRAGMA foreign_keys = OFF;", false).unwrap();
        r.apply(b"DELETE FROM p WHERE id = 1", true).unwrap();
        r.apply(b"PRAGMA foreign_keys = ON;", false).unwrap();
        r.finish().unwrap();
        let conn = Connection::open(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM c", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "the PRAGMA turned cascades off, as it did live");
        integrity_check(&db).unwrap();
    }
}
