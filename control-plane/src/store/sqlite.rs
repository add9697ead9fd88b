//! The embedded SQLite backend: the default store, one file, safe across crashes (WAL).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Backend, ChangedResource, RevisionRecord, StoreError, StoreSnapshot};
use crate::model::{Resource, ResourceKind};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: current resources, and the history every revision leaves behind (for the revision
    // log and rollback).
    "CREATE TABLE resources (
         kind TEXT NOT NULL,
         name TEXT NOT NULL,
         spec TEXT NOT NULL,
         revision INTEGER NOT NULL,
         PRIMARY KEY (kind, name)
     );
     CREATE TABLE revisions (
         revision INTEGER PRIMARY KEY,
         committed_at_ms INTEGER NOT NULL,
         changes TEXT NOT NULL
     );
     CREATE TABLE resource_history (
         revision INTEGER NOT NULL REFERENCES revisions(revision),
         kind TEXT NOT NULL,
         name TEXT NOT NULL,
         spec TEXT,
         PRIMARY KEY (revision, kind, name)
     );",
    // 2: who made each revision, and a history index to rebuild any revision quickly.
    "ALTER TABLE revisions ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
     CREATE INDEX resource_history_by_resource ON resource_history (kind, name, revision);",
    // 3: server-wide settings, such as the secret API keys are hashed under.
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
];

/// The settings key of the API-key hashing secret (hex).
const API_KEY_SECRET: &str = "api_key_secret";

/// A store backend in one SQLite file.
#[derive(Debug)]
pub struct SqliteBackend {
    conn: Connection,
}

fn backend_err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("sqlite: {context}: {e}"))
}

impl SqliteBackend {
    /// Opens or creates the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(backend_err("open"))?;
        // WAL keeps committed revisions through a SIGKILL; NORMAL sync only risks the last
        // transaction on power loss, not on a process crash.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend_err("journal_mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend_err("synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend_err("foreign_keys"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend_err("busy_timeout"))?;
        migrate(&mut conn)?;
        Ok(Self { conn })
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: usize = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend_err("read schema version"))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "sqlite: the database schema (version {applied}) is newer than this tollgate knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(backend_err("migration"))?;
        tx.execute_batch(sql).map_err(backend_err("migration"))?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(backend_err("migration"))?;
        tx.commit().map_err(backend_err("migration"))?;
        tracing::info!(version = i + 1, "sqlite schema migrated");
    }
    Ok(())
}

impl Backend for SqliteBackend {
    fn load(&mut self) -> Result<StoreSnapshot, StoreError> {
        let revision: Option<u64> = self
            .conn
            .query_row("SELECT MAX(revision) FROM revisions", [], |row| row.get(0))
            .optional()
            .map_err(backend_err("load revision"))?
            .flatten();
        let mut snapshot = StoreSnapshot {
            revision: revision.unwrap_or(0),
            ..StoreSnapshot::default()
        };
        let mut stmt = self
            .conn
            .prepare("SELECT kind, name, spec FROM resources ORDER BY kind, name")
            .map_err(backend_err("load resources"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(backend_err("load resources"))?;
        for row in rows {
            let (kind, name, spec) = row.map_err(backend_err("load resources"))?;
            let kind = ResourceKind::parse(&kind).ok_or_else(|| {
                StoreError::Backend(format!("sqlite: unknown resource kind {kind:?}"))
            })?;
            let resource = Resource::from_json(kind, &spec).map_err(|e| {
                StoreError::Backend(format!("sqlite: stored {kind} {name} is unreadable: {e}"))
            })?;
            snapshot.put(resource);
        }
        Ok(snapshot)
    }

    fn commit(
        &mut self,
        revision: u64,
        origin: &str,
        changes: &[(ChangedResource, Option<&Resource>)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(backend_err("begin"))?;
        let summary: Vec<&ChangedResource> = changes.iter().map(|(c, _)| c).collect();
        let summary = serde_json::to_string(&summary).expect("change summary serializes");
        tx.execute(
            "INSERT INTO revisions (revision, committed_at_ms, changes, origin) VALUES (?1, ?2, ?3, ?4)",
            params![revision, super::now_ms() as i64, summary, origin],
        )
        .map_err(backend_err("record revision"))?;
        for (change, resource) in changes {
            let kind = change.kind.as_str();
            let spec = resource.map(|r| r.to_json());
            match &spec {
                Some(spec) => tx.execute(
                    "INSERT INTO resources (kind, name, spec, revision) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, name) DO UPDATE SET spec = excluded.spec, revision = excluded.revision",
                    params![kind, change.name, spec, revision],
                ),
                None => tx.execute(
                    "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
                    params![kind, change.name],
                ),
            }
            .map_err(backend_err("write resource"))?;
            tx.execute(
                "INSERT INTO resource_history (revision, kind, name, spec) VALUES (?1, ?2, ?3, ?4)",
                params![revision, kind, change.name, spec],
            )
            .map_err(backend_err("write history"))?;
        }
        tx.commit().map_err(backend_err("commit"))
    }

    fn history(
        &mut self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT revision, committed_at_ms, origin, changes FROM revisions
                 WHERE revision < ?1 ORDER BY revision DESC LIMIT ?2",
            )
            .map_err(backend_err("read history"))?;
        let before = before.map_or(i64::MAX, |b| b as i64);
        let rows = stmt
            .query_map(params![before, limit as i64], |row| {
                Ok((
                    row.get::<_, u64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(backend_err("read history"))?;
        rows.map(|row| {
            let (revision, at, origin, changes) = row.map_err(backend_err("read history"))?;
            let changes = serde_json::from_str(&changes).map_err(|e| {
                StoreError::Backend(format!(
                    "sqlite: revision {revision} history is unreadable: {e}"
                ))
            })?;
            Ok(RevisionRecord {
                revision,
                committed_at_ms: at.max(0) as u64,
                origin,
                changes,
            })
        })
        .collect()
    }

    fn state_at(&mut self, revision: u64) -> Result<Vec<Resource>, StoreError> {
        // Each resource's latest history row at or before `revision`; a NULL spec is a delete.
        let mut stmt = self
            .conn
            .prepare(
                "SELECT h.kind, h.name, h.spec FROM resource_history h
                 WHERE h.revision = (SELECT MAX(revision) FROM resource_history
                                     WHERE kind = h.kind AND name = h.name AND revision <= ?1)
                   AND h.spec IS NOT NULL
                 ORDER BY h.kind, h.name",
            )
            .map_err(backend_err("read revision"))?;
        let rows = stmt
            .query_map(params![revision], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(backend_err("read revision"))?;
        rows.map(|row| {
            let (kind, name, spec) = row.map_err(backend_err("read revision"))?;
            let kind = ResourceKind::parse(&kind).ok_or_else(|| {
                StoreError::Backend(format!("sqlite: unknown resource kind {kind:?}"))
            })?;
            Resource::from_json(kind, &spec).map_err(|e| {
                StoreError::Backend(format!(
                    "sqlite: {kind} {name} at revision {revision} is unreadable: {e}"
                ))
            })
        })
        .collect()
    }

    fn api_key_secret(&mut self) -> Result<Vec<u8>, StoreError> {
        let tx = self
            .conn
            .transaction()
            .map_err(backend_err("read settings"))?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![API_KEY_SECRET],
                |row| row.get(0),
            )
            .optional()
            .map_err(backend_err("read settings"))?;
        let secret = match stored {
            Some(hex_secret) => hex::decode(hex_secret).map_err(|e| {
                StoreError::Backend(format!(
                    "sqlite: the stored API key secret is unreadable: {e}"
                ))
            })?,
            None => {
                let secret = super::random_secret();
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                    params![API_KEY_SECRET, hex::encode(&secret)],
                )
                .map_err(backend_err("write settings"))?;
                secret
            }
        };
        tx.commit().map_err(backend_err("write settings"))?;
        Ok(secret)
    }
}
