//! The SQLite database: schema, migrations, and the queries behind the CLI.
//!
//! One file (default `/var/lib/interceptor/interceptor.db`, mode 0600) in WAL
//! mode. The daemon's writer thread is the only writer; the CLI opens it
//! read-only, which WAL allows at any time, even while the daemon is down.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::SyncMode;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this binary understands ({known}); upgrade the interceptor"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("database query failed: {0}")]
    Query(#[from] rusqlite::Error),
}

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, events, attachments.
    r#"
    CREATE TABLE sessions (
        id              INTEGER PRIMARY KEY,
        started_at      TEXT NOT NULL,
        ended_at        TEXT,
        protocol        TEXT NOT NULL,
        client_addr     TEXT NOT NULL,
        dst_addr        TEXT NOT NULL,
        dst_port        INTEGER NOT NULL,
        cgroup_path     TEXT NOT NULL,
        cgroup_id       INTEGER NOT NULL,
        unit            TEXT,
        pid             INTEGER,
        exe             TEXT,
        comm            TEXT,
        uid             INTEGER,
        identity_issuer  TEXT,
        identity_subject TEXT,
        identity_token_id TEXT,
        repository      TEXT,
        sha             TEXT,
        run_id          TEXT,
        actor           TEXT,
        identity_claims TEXT,
        target_user     TEXT,
        target_database TEXT,
        bytes_up        INTEGER NOT NULL DEFAULT 0,
        bytes_down      INTEGER NOT NULL DEFAULT 0,
        end_reason      TEXT
    );
    CREATE INDEX sessions_started ON sessions(started_at);
    CREATE INDEX sessions_cgroup ON sessions(cgroup_path);
    CREATE INDEX sessions_repository ON sessions(repository);
    CREATE TABLE events (
        session_id      INTEGER NOT NULL REFERENCES sessions(id),
        seq             INTEGER NOT NULL,
        at              TEXT NOT NULL,
        kind            TEXT NOT NULL,
        text            TEXT,
        statement_kind  TEXT,
        decision        TEXT,
        rule            TEXT,
        reason          TEXT,
        duration_us     INTEGER,
        rows            INTEGER,
        error           TEXT,
        detail          TEXT,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE attachments (
        cgroup_id       INTEGER PRIMARY KEY,
        cgroup_path     TEXT NOT NULL,
        attached_at     TEXT NOT NULL,
        attached_by_uid INTEGER
    );
    "#,
    // 2: approval requests and their outcomes.
    r#"
    CREATE TABLE approvals (
        id              INTEGER PRIMARY KEY,
        session_id      INTEGER NOT NULL REFERENCES sessions(id),
        seq             INTEGER NOT NULL,
        created_at      TEXT NOT NULL,
        expires_at      TEXT NOT NULL,
        status          TEXT NOT NULL,
        protocol        TEXT NOT NULL,
        destination     TEXT NOT NULL,
        operation       TEXT NOT NULL,
        shape           TEXT,
        rule            TEXT,
        reason          TEXT NOT NULL,
        cgroup          TEXT NOT NULL,
        unit            TEXT,
        pid             INTEGER,
        exe             TEXT,
        uid             INTEGER,
        repository      TEXT,
        sha             TEXT,
        run_id          TEXT,
        actor           TEXT,
        identity_claims TEXT,
        decided_at      TEXT,
        decided_by_uid  INTEGER,
        decided_by      TEXT,
        decision_reason TEXT,
        scope_minutes   INTEGER
    );
    CREATE INDEX approvals_status ON approvals(status);
    "#,
    // 3: workload-identity enrollments (and rejected attempts).
    r#"
    CREATE TABLE enrollments (
        id              INTEGER PRIMARY KEY,
        at              TEXT NOT NULL,
        status          TEXT NOT NULL,
        reason          TEXT,
        cgroup_path     TEXT NOT NULL,
        cgroup_id       INTEGER NOT NULL,
        pid             INTEGER,
        uid             INTEGER,
        issuer          TEXT,
        subject         TEXT,
        token_id        TEXT,
        claims          TEXT,
        expires_at      INTEGER,
        revoked_at      TEXT,
        revoked_by_uid  INTEGER
    );
    CREATE INDEX enrollments_status ON enrollments(status);
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating if needed, mode 0600) the database for the daemon and
/// brings the schema up to date.
pub fn open_rw(path: &Path, sync: SyncMode) -> Result<Connection, StoreError> {
    let p = path.display().to_string();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Create {
            path: dir.display().to_string(),
            source,
        })?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::Create {
                path: p.clone(),
                source,
            })?;
    }
    let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: p.clone(),
        source,
    })?;
    let sync = match sync {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;"
    ))
    .map_err(|source| StoreError::Open {
        path: p.clone(),
        source,
    })?;
    migrate(&mut conn, &p)?;
    Ok(conn)
}

/// A second read-write connection to an open database, for checkpoints.
pub fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Opens the database read-only (CLI).
pub fn open_ro(path: &Path) -> Result<Connection, StoreError> {
    let p = path.display().to_string();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: p.clone(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: p,
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_string(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// A session row, as shown by `sessions list/show`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionRow {
    pub id: i64,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub protocol: String,
    pub client_addr: String,
    pub dst_addr: String,
    pub dst_port: i64,
    pub cgroup_path: String,
    pub cgroup_id: i64,
    pub unit: Option<String>,
    pub pid: Option<i64>,
    pub exe: Option<String>,
    pub comm: Option<String>,
    pub uid: Option<i64>,
    pub identity_issuer: Option<String>,
    pub identity_subject: Option<String>,
    pub identity_token_id: Option<String>,
    pub repository: Option<String>,
    pub sha: Option<String>,
    pub run_id: Option<String>,
    pub actor: Option<String>,
    pub identity_claims: Option<serde_json::Value>,
    pub target_user: Option<String>,
    pub target_database: Option<String>,
    pub bytes_up: i64,
    pub bytes_down: i64,
    pub end_reason: Option<String>,
}

const SESSION_COLUMNS: &str = "id, started_at, ended_at, protocol, client_addr, dst_addr, dst_port, \
    cgroup_path, cgroup_id, unit, pid, exe, comm, uid, identity_issuer, identity_subject, \
    identity_token_id, repository, sha, run_id, actor, identity_claims, target_user, \
    target_database, bytes_up, bytes_down, end_reason";

fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    let claims: Option<String> = r.get(21)?;
    Ok(SessionRow {
        id: r.get(0)?,
        started_at: r.get(1)?,
        ended_at: r.get(2)?,
        protocol: r.get(3)?,
        client_addr: r.get(4)?,
        dst_addr: r.get(5)?,
        dst_port: r.get(6)?,
        cgroup_path: r.get(7)?,
        cgroup_id: r.get(8)?,
        unit: r.get(9)?,
        pid: r.get(10)?,
        exe: r.get(11)?,
        comm: r.get(12)?,
        uid: r.get(13)?,
        identity_issuer: r.get(14)?,
        identity_subject: r.get(15)?,
        identity_token_id: r.get(16)?,
        repository: r.get(17)?,
        sha: r.get(18)?,
        run_id: r.get(19)?,
        actor: r.get(20)?,
        identity_claims: claims.and_then(|c| serde_json::from_str(&c).ok()),
        target_user: r.get(22)?,
        target_database: r.get(23)?,
        bytes_up: r.get(24)?,
        bytes_down: r.get(25)?,
        end_reason: r.get(26)?,
    })
}

/// An event row (one statement, command, request, decision or error).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRow {
    pub session_id: i64,
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub text: Option<String>,
    pub statement_kind: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub duration_us: Option<i64>,
    pub rows: Option<i64>,
    pub error: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// Filters for `sessions list`.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// RFC 3339 timestamp: sessions started at or after it.
    pub since: Option<String>,
    /// cgroup path: this cgroup and its descendants.
    pub cgroup: Option<String>,
    pub repository: Option<String>,
    pub sha: Option<String>,
    pub actor: Option<String>,
    pub run_id: Option<String>,
    pub protocol: Option<String>,
    pub limit: Option<u32>,
}

pub fn list_sessions(conn: &Connection, f: &SessionFilter) -> Result<Vec<SessionRow>, StoreError> {
    let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(s) = &f.since {
        sql.push_str(" AND started_at >= ?");
        args.push(s.clone().into());
    }
    if let Some(c) = &f.cgroup {
        let c = c.trim_end_matches('/');
        sql.push_str(" AND (cgroup_path = ? OR substr(cgroup_path, 1, ?) = ?)");
        args.push(c.to_string().into());
        let prefix = format!("{c}/");
        args.push((prefix.len() as i64).into());
        args.push(prefix.into());
    }
    for (col, v) in [
        ("repository", &f.repository),
        ("sha", &f.sha),
        ("actor", &f.actor),
        ("run_id", &f.run_id),
        ("protocol", &f.protocol),
    ] {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(v.clone().into());
        }
    }
    sql.push_str(" ORDER BY id DESC");
    if let Some(l) = f.limit {
        sql.push_str(&format!(" LIMIT {l}"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), session_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn get_session(conn: &Connection, id: i64) -> Result<Option<SessionRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"),
            params![id],
            session_from_row,
        )
        .optional()?)
}

pub fn session_events(conn: &Connection, id: i64) -> Result<Vec<EventRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT session_id, seq, at, kind, text, statement_kind, decision, rule, reason, \
         duration_us, rows, error, detail FROM events WHERE session_id = ? ORDER BY seq",
    )?;
    let rows = stmt
        .query_map(params![id], |r| {
            let detail: Option<String> = r.get(12)?;
            Ok(EventRow {
                session_id: r.get(0)?,
                seq: r.get(1)?,
                at: r.get(2)?,
                kind: r.get(3)?,
                text: r.get(4)?,
                statement_kind: r.get(5)?,
                decision: r.get(6)?,
                rule: r.get(7)?,
                reason: r.get(8)?,
                duration_us: r.get(9)?,
                rows: r.get(10)?,
                error: r.get(11)?,
                detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Highest session id recorded so far (0 for an empty database).
pub fn max_session_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT coalesce(max(id), 0) FROM sessions", [], |r| {
            r.get(0)
        })?,
    )
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttachmentRow {
    pub cgroup_id: i64,
    pub cgroup_path: String,
    pub attached_at: String,
    pub attached_by_uid: Option<i64>,
}

pub fn attachments(conn: &Connection) -> Result<Vec<AttachmentRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT cgroup_id, cgroup_path, attached_at, attached_by_uid FROM attachments ORDER BY cgroup_path",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(AttachmentRow {
                cgroup_id: r.get(0)?,
                cgroup_path: r.get(1)?,
                attached_at: r.get(2)?,
                attached_by_uid: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Sessions that were open when the daemon last stopped (crash): closed
/// with a reason so they do not look live forever.
pub fn close_orphans(conn: &Connection, now: &str) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE sessions SET ended_at = ?, end_reason = 'daemon stopped before the session ended' WHERE ended_at IS NULL",
        params![now],
    )?)
}

/// An approval request row (`approvals list/show`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRow {
    pub id: i64,
    pub session_id: i64,
    pub seq: i64,
    pub created_at: String,
    pub expires_at: String,
    pub status: String,
    pub protocol: String,
    pub destination: String,
    pub operation: String,
    pub rule: Option<String>,
    pub reason: String,
    pub cgroup: String,
    pub unit: Option<String>,
    pub pid: Option<i64>,
    pub exe: Option<String>,
    pub uid: Option<i64>,
    pub repository: Option<String>,
    pub sha: Option<String>,
    pub run_id: Option<String>,
    pub actor: Option<String>,
    pub decided_at: Option<String>,
    pub decided_by_uid: Option<i64>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub scope_minutes: Option<i64>,
    /// The statement shape a `--for` approval would cover; `None` when the
    /// request can only be approved as its exact text.
    pub shape: Option<String>,
}

const APPROVAL_COLUMNS: &str = "id, session_id, seq, created_at, expires_at, status, protocol, destination, \
    operation, rule, reason, cgroup, unit, pid, exe, uid, repository, sha, run_id, actor, decided_at, \
    decided_by_uid, decided_by, decision_reason, scope_minutes, shape";

fn approval_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalRow> {
    Ok(ApprovalRow {
        id: r.get(0)?,
        session_id: r.get(1)?,
        seq: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        status: r.get(5)?,
        protocol: r.get(6)?,
        destination: r.get(7)?,
        operation: r.get(8)?,
        rule: r.get(9)?,
        reason: r.get(10)?,
        cgroup: r.get(11)?,
        unit: r.get(12)?,
        pid: r.get(13)?,
        exe: r.get(14)?,
        uid: r.get(15)?,
        repository: r.get(16)?,
        sha: r.get(17)?,
        run_id: r.get(18)?,
        actor: r.get(19)?,
        decided_at: r.get(20)?,
        decided_by_uid: r.get(21)?,
        decided_by: r.get(22)?,
        decision_reason: r.get(23)?,
        scope_minutes: r.get(24)?,
        shape: r.get(25)?,
    })
}

/// Approval requests, newest first; only pending ones unless `all`.
pub fn list_approvals(
    conn: &Connection,
    all: bool,
    limit: u32,
) -> Result<Vec<ApprovalRow>, StoreError> {
    let filter = if all { "" } else { "WHERE status = 'pending'" };
    let mut stmt = conn.prepare(&format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals {filter} ORDER BY id DESC LIMIT {limit}"
    ))?;
    let rows = stmt
        .query_map([], approval_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn get_approval(conn: &Connection, id: i64) -> Result<Option<ApprovalRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?"),
            params![id],
            approval_from_row,
        )
        .optional()?)
}

pub fn max_approval_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT coalesce(max(id), 0) FROM approvals", [], |r| {
            r.get(0)
        })?,
    )
}

/// Requests still pending when the daemon stopped: nobody waits for them.
pub fn expire_orphan_approvals(conn: &Connection, now: &str) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE approvals SET status = 'expired', decided_at = ?, decision_reason = 'the daemon stopped while the request was pending' WHERE status = 'pending'",
        params![now],
    )?)
}

/// Approvals of one session (for `sessions show`).
pub fn session_approvals(
    conn: &Connection,
    session_id: i64,
) -> Result<Vec<ApprovalRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE session_id = ? ORDER BY id"
    ))?;
    let rows = stmt
        .query_map(params![session_id], approval_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// An enrollment (or a rejected attempt).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrollmentRow {
    pub id: i64,
    pub at: String,
    /// active | replaced | revoked (by the workload) | released (by an administrator) | rejected
    pub status: String,
    pub reason: Option<String>,
    pub cgroup_path: String,
    pub cgroup_id: i64,
    pub pid: Option<i64>,
    pub uid: Option<i64>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub token_id: Option<String>,
    pub claims: Option<serde_json::Value>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<String>,
}

pub fn list_enrollments(
    conn: &Connection,
    active_only: bool,
    limit: u32,
) -> Result<Vec<EnrollmentRow>, StoreError> {
    let filter = if active_only {
        "WHERE status = 'active'"
    } else {
        ""
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT id, at, status, reason, cgroup_path, cgroup_id, pid, uid, issuer, subject, token_id, \
         claims, expires_at, revoked_at FROM enrollments {filter} ORDER BY id DESC LIMIT {limit}"
    ))?;
    let rows = stmt
        .query_map([], |r| {
            let claims: Option<String> = r.get(11)?;
            Ok(EnrollmentRow {
                id: r.get(0)?,
                at: r.get(1)?,
                status: r.get(2)?,
                reason: r.get(3)?,
                cgroup_path: r.get(4)?,
                cgroup_id: r.get(5)?,
                pid: r.get(6)?,
                uid: r.get(7)?,
                issuer: r.get(8)?,
                subject: r.get(9)?,
                token_id: r.get(10)?,
                claims: claims.and_then(|c| serde_json::from_str(&c).ok()),
                expires_at: r.get(12)?,
                revoked_at: r.get(13)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_and_reopens() {
        let dir = std::env::temp_dir().join(format!("ic-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("x.db");
        let conn = open_rw(&db, SyncMode::Normal).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        drop(conn);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let conn = open_rw(&db, SyncMode::Full).unwrap();
        assert_eq!(max_session_id(&conn).unwrap(), 0);
        let ro = open_ro(&db).unwrap();
        assert!(
            list_sessions(&ro, &SessionFilter::default())
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = std::env::temp_dir().join(format!("ic-store-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("x.db");
        let conn = open_rw(&db, SyncMode::Normal).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = open_rw(&db, SyncMode::Normal).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
