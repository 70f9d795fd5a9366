//! SQLite storage: the embedded default. WAL mode so the gateway and the CLI can share the
//! file; audit appends take the write lock up front (`BEGIN IMMEDIATE`) so two processes
//! never chain onto the same tail.

use super::{PasskeyRecord, StorageError, Store, TokenRecord, UserRecord};
use crate::audit::chain::{ChainWriter, GENESIS};
use crate::audit::{AuditEvent, OwnedEvent, StoredEvent};
use crate::identity::api_token::TokenHash;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Token ids are matched by prefix (`token revoke 0193a0b1`) from this many characters on.
const MIN_ID_PREFIX: usize = 6;

pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file, for the audit writer's own connection (`None` in memory).
    path: Option<std::path::PathBuf>,
}

/// The file a `sqlite:` URL names, if it names one.
pub(super) fn file_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// The page size of a database file this store creates.
pub const PAGE_SIZE: u32 = 16 * 1024;

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(parent) =
                std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
            {
                if !parent.as_os_str().is_empty() && !parent.exists() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StorageError::Unavailable(format!("{}: {e}", parent.display()))
                    })?;
                }
            }
        }
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
            .create_if_missing(true)
            // Takes effect only when the file is created. The audit table grows by a row per
            // request: 16 KiB pages hold four times the rows of the default 4 KiB, so commits
            // and checkpoints make a quarter of the write and read calls for the same events.
            .page_size(PAGE_SIZE)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StorageError::Migration(e.to_string()))?;
        convert_column_audit_rows(&pool).await?;
        Ok(SqliteStore {
            pool,
            path: file_path(url),
        })
    }
}

fn json_list(s: &str) -> Result<Vec<String>, StorageError> {
    serde_json::from_str(s).map_err(|e| StorageError::Corrupt(format!("list column: {e}")))
}

fn token_from_row(r: &SqliteRow) -> Result<TokenRecord, StorageError> {
    let hash_hex: String = r.try_get("token_hash")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&hash_hex, &mut hash)
        .map_err(|e| StorageError::Corrupt(format!("token hash: {e}")))?;
    Ok(TokenRecord {
        id: r.try_get("id")?,
        hash: TokenHash(hash),
        display_prefix: r.try_get("display_prefix")?,
        service_account: r.try_get("service_account")?,
        owner: r.try_get("owner")?,
        roles: json_list(&r.try_get::<String, _>("roles")?)?,
        twins: json_list(&r.try_get::<String, _>("twins")?)?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        user_subject: r.try_get("user_subject")?,
    })
}

fn uuid_col(r: &SqliteRow, col: &str) -> Result<uuid::Uuid, StorageError> {
    let s: String = r.try_get(col)?;
    uuid::Uuid::parse_str(&s).map_err(|e| StorageError::Corrupt(format!("{col}: {e}")))
}

fn user_from_row(r: &SqliteRow) -> Result<UserRecord, StorageError> {
    Ok(UserRecord {
        subject: r.try_get("subject")?,
        issuer: r.try_get("issuer")?,
        idp_subject: r.try_get("idp_subject")?,
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        webauthn_id: uuid_col(r, "webauthn_id")?,
        created_at: r.try_get("created_at")?,
        last_login_at: r.try_get("last_login_at")?,
    })
}

fn passkey_from_row(r: &SqliteRow) -> Result<PasskeyRecord, StorageError> {
    Ok(PasskeyRecord {
        id: r.try_get("id")?,
        user_subject: r.try_get("user_subject")?,
        credential_id: r.try_get("credential_id")?,
        name: r.try_get("name")?,
        aaguid: uuid_col(r, "aaguid")?,
        passkey: r.try_get("passkey")?,
        backup_eligible: r.try_get("backup_eligible")?,
        backup_state: r.try_get("backup_state")?,
        sign_count: u32::try_from(r.try_get::<i64, _>("sign_count")?)
            .map_err(|_| StorageError::Corrupt("sign_count out of range".into()))?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

fn event_from_row(r: &SqliteRow) -> Result<StoredEvent, StorageError> {
    Ok(StoredEvent {
        seq: r.try_get("seq")?,
        text: r.try_get("event")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// A row of the column layout (before migration 20261127000001) as the text the chain
/// hashed for it: serde_json's form of the event, which is what the writer wrote then too.
fn column_row_text(r: &SqliteRow) -> Result<String, StorageError> {
    let seq: i64 = r.try_get("seq")?;
    let corrupt = |what: &str, e: serde_json::Error| {
        StorageError::Corrupt(format!(
            "audit event {seq}: {what} is not JSON ({e}); the rows stay in audit_events_columns"
        ))
    };
    let event = OwnedEvent {
        event_id: r.try_get("event_id")?,
        at_ms: r.try_get("at_ms")?,
        kind: r.try_get("kind")?,
        outcome: r.try_get("outcome")?,
        actor: r.try_get("actor")?,
        actor_pseudonym: r.try_get("actor_pseudonym")?,
        route: r.try_get("route")?,
        action: r.try_get("action")?,
        policies: serde_json::from_str(&r.try_get::<String, _>("policies")?)
            .map_err(|e| corrupt("policies", e))?,
        detail: serde_json::from_str(&r.try_get::<String, _>("detail")?)
            .map_err(|e| corrupt("detail", e))?,
    };
    serde_json::to_string(&event).map_err(|e| corrupt("the event", e))
}

/// Moves audit rows of the column layout into `audit_events` as text, each with the hash it
/// was stored with (never a recomputed one: an edit made to a row before the move still
/// fails verification after it). One transaction: a failure leaves every row where it was.
async fn convert_column_audit_rows(pool: &SqlitePool) -> Result<(), StorageError> {
    const LEGACY: &str =
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_events_columns'";
    if sqlx::query(LEGACY).fetch_optional(pool).await?.is_none() {
        return Ok(());
    }
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    // Another process may have moved them while this one waited for the lock.
    if sqlx::query(LEGACY)
        .fetch_optional(&mut *tx)
        .await?
        .is_none()
    {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let (mut after, mut moved) = (0i64, 0usize);
    loop {
        let rows = sqlx::query(
            "SELECT seq, event_id, at_ms, kind, outcome, actor, actor_pseudonym, route, action, policies, detail, hash
             FROM audit_events_columns WHERE seq > ? ORDER BY seq LIMIT 5000",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("seq")?;
        for r in &rows {
            sqlx::query(INSERT_AUDIT)
                .bind(r.try_get::<i64, _>("seq")?)
                .bind(column_row_text(r)?)
                .bind(r.try_get::<String, _>("hash")?)
                .execute(&mut *tx)
                .await?;
        }
        moved += rows.len();
    }
    sqlx::query("DROP TABLE audit_events_columns")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // Start-up waits for this once per database; the line says why it took longer. A new
    // database has nothing to move, and hearing that something was moved would puzzle.
    if moved > 0 {
        tracing::info!(
            events = moved,
            seconds = started.elapsed().as_secs_f64(),
            "audit events moved to the text row layout"
        );
    }
    Ok(())
}

const TOKEN_COLUMNS: &str = "id, token_hash, display_prefix, service_account, owner, roles, twins, created_at, expires_at, revoked_at, user_subject";

/// The audit writer's connection: a prepared insert per row inside one `BEGIN IMMEDIATE`
/// transaction per batch, with the same chain rules as [`Store::append_audit`].
pub struct SqliteAuditAppender {
    conn: rusqlite::Connection,
    chain: ChainWriter,
    path: std::path::PathBuf,
    /// Set once a housekeeper checkpoints the WAL for this appender.
    handed_off: Option<HandedOff>,
}

/// What the appender and its housekeeper share about the write-ahead log.
///
/// SQLite starts the log over from its beginning only when a writing transaction begins
/// with every frame already moved into the database. The housekeeper's checkpoint runs
/// while appends go on: under steady load the appender commits and begins its next
/// transaction back to back, so that moment never came and the log grew without end (1.5
/// GB after a minute at 20k events/s). So the housekeeper moves the bulk, and the appender
/// then moves what was committed since, between a commit and its next transaction
/// ([`super::AuditAppender::finish_upkeep`]): that transaction starts the log over.
#[derive(Default)]
struct LogState {
    /// Rows appended since the log was last moved into the database in full.
    backlog: std::sync::atomic::AtomicU64,
    /// The housekeeper has moved the bulk: the appender is to move the rest.
    rest_wanted: std::sync::atomic::AtomicBool,
}

/// The appender's side of checkpointing once a [`SqliteHousekeeper`] does it.
struct HandedOff {
    log: Arc<LogState>,
    /// The appender checkpoints itself once the backlog reaches this: the housekeeper has had
    /// no idle core for that long, and the log must not grow without bound.
    next_own_checkpoint: u64,
}

/// Backlog (rows) at which the housekeeper checkpoints: about 3.5 MB of log at the usual
/// ~400 bytes per event, a fraction of a second of appends at full load.
const CHECKPOINT_ROWS: u64 = 8 * 1024;
/// Backlog at which the appender checkpoints itself, and the further rows between its own
/// attempts while the backlog stays (a reader holding an old snapshot can keep a checkpoint
/// from finishing).
const OWN_CHECKPOINT_ROWS: u64 = 64 * 1024;

/// Runs a `PASSIVE` checkpoint, which waits for neither readers nor writers (appending goes
/// on meanwhile), and takes what it moved off the backlog once the log is moved in full.
/// Returns whether it was.
fn checkpoint(conn: &rusqlite::Connection, state: &LogState) -> Result<bool, StorageError> {
    use std::sync::atomic::Ordering;
    // Rows appended while this runs stay counted: they may be past the log's end it saw.
    let before = state.backlog.load(Ordering::Acquire);
    let (busy, log, moved): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let in_full = busy == 0 && log == moved;
    if in_full {
        state.backlog.fetch_sub(before, Ordering::AcqRel);
    }
    Ok(in_full)
}

/// Checkpoints the audit appender's database from a thread of its own (see
/// [`super::AuditAppender::housekeeper`]).
pub struct SqliteHousekeeper {
    /// Used by one thread at a time; the lock makes the housekeeper shareable.
    conn: std::sync::Mutex<rusqlite::Connection>,
    log: Arc<LogState>,
}

impl super::AuditHousekeeper for SqliteHousekeeper {
    fn is_due(&self) -> bool {
        use std::sync::atomic::Ordering;
        // While the appender has the rest to move, another pass here would only contend
        // with it for the checkpoint lock.
        self.log.backlog.load(Ordering::Acquire) >= CHECKPOINT_ROWS
            && !self.log.rest_wanted.load(Ordering::Acquire)
    }

    fn wants_finish(&self) -> bool {
        self.log
            .rest_wanted
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn tidy(&self) -> Result<(), StorageError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        checkpoint(&conn, &self.log)?;
        // Even when this moved the whole log it saw: frames committed after it read the log's
        // end are not in that count, and only a move between two transactions finds them all.
        self.log
            .rest_wanted
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

const INSERT_AUDIT: &str = "INSERT INTO audit_events (seq, event, hash) VALUES (?1, ?2, ?3)";
const AUDIT_TAIL: &str = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";

/// Points `chain` after the stored tail. The tail is read inside each appending transaction:
/// the CLI appends to the same file while the gateway runs.
fn continue_chain(
    chain: &mut ChainWriter,
    tail: Option<(i64, String)>,
) -> Result<(), StorageError> {
    match tail {
        None => {
            chain.restart();
            Ok(())
        }
        Some((seq, hash)) => chain.continue_after(seq, &hash).ok_or_else(|| {
            StorageError::Corrupt(format!(
                "audit event {seq}: the stored hash is not a SHA-256 hex digest"
            ))
        }),
    }
}

impl SqliteAuditAppender {
    pub fn open(path: &std::path::Path) -> Result<Self, StorageError> {
        Ok(SqliteAuditAppender {
            conn: connect(path)?,
            chain: ChainWriter::new(),
            path: path.to_owned(),
            handed_off: None,
        })
    }

    /// After a commit: counts the rows toward the housekeeper's next checkpoint, and runs one
    /// here if the housekeeper has fallen far behind.
    fn count_appended(&mut self, rows: usize) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let Some(h) = self.handed_off.as_mut() else {
            return Ok(());
        };
        let backlog = h.log.backlog.fetch_add(rows as u64, Ordering::AcqRel) + rows as u64;
        if backlog < OWN_CHECKPOINT_ROWS {
            h.next_own_checkpoint = OWN_CHECKPOINT_ROWS;
            return Ok(());
        }
        if backlog < h.next_own_checkpoint {
            return Ok(());
        }
        h.next_own_checkpoint = backlog + OWN_CHECKPOINT_ROWS / 4;
        checkpoint(&self.conn, &h.log).map(|_| ())
    }
}

fn connect(path: &std::path::Path) -> Result<rusqlite::Connection, StorageError> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl super::AuditAppender for SqliteAuditAppender {
    fn append(&mut self, events: &[AuditEvent]) -> Result<(), StorageError> {
        self.append_in_steps(events, events.len(), &|| true)
            .map(|_| ())
    }

    fn append_in_steps(
        &mut self,
        events: &[AuditEvent],
        step: usize,
        go_on: &dyn Fn() -> bool,
    ) -> Result<usize, StorageError> {
        if events.is_empty() {
            return Ok(0);
        }
        let step = step.max(1);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let tail: Option<(i64, String)> = {
            use rusqlite::OptionalExtension;
            tx.prepare_cached(AUDIT_TAIL)?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
        };
        continue_chain(&mut self.chain, tail)?;
        let mut appended = 0;
        {
            let mut insert = tx.prepare_cached(INSERT_AUDIT)?;
            for e in events {
                if appended > 0 && appended % step == 0 && !go_on() {
                    break;
                }
                let l = self.chain.link(e);
                insert.execute(rusqlite::params![l.seq, l.text, l.hash.as_str()])?;
                appended += 1;
            }
        }
        tx.commit()?;
        self.count_appended(appended)?;
        Ok(appended)
    }

    fn housekeeper(&mut self) -> Result<Option<Arc<dyn super::AuditHousekeeper>>, StorageError> {
        let conn = connect(&self.path)?;
        // From here on commits leave the log to grow, instead of copying it into the
        // database (and syncing the file) inside whichever commit passes 1,000 pages.
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let log = Arc::new(LogState::default());
        self.handed_off = Some(HandedOff {
            log: log.clone(),
            next_own_checkpoint: OWN_CHECKPOINT_ROWS,
        });
        Ok(Some(Arc::new(SqliteHousekeeper {
            conn: std::sync::Mutex::new(conn),
            log,
        })))
    }

    fn finish_upkeep(&mut self) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let Some(h) = self.handed_off.as_ref() else {
            return Ok(());
        };
        if !h.log.rest_wanted.load(Ordering::Acquire) {
            return Ok(());
        }
        // Only the frames committed since the housekeeper's copy began are left: few, and
        // none can be committed while this copies them. The housekeeper stays off until
        // this is done; should a reader's snapshot keep it from moving all, the housekeeper
        // is due again and the round repeats.
        let moved = checkpoint(&self.conn, &h.log);
        h.log.rest_wanted.store(false, Ordering::Release);
        moved.map(|_| ())
    }
}

impl Store for SqliteStore {
    fn audit_appender(&self) -> Result<Option<Box<dyn super::AuditAppender>>, StorageError> {
        match &self.path {
            Some(p) => Ok(Some(Box::new(SqliteAuditAppender::open(p)?))),
            None => Ok(None),
        }
    }

    fn insert_token(&self, t: &TokenRecord) -> BoxFuture<'_, Result<(), StorageError>> {
        let t = t.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO api_tokens (id, token_hash, display_prefix, service_account, owner, roles, twins, created_at, expires_at, revoked_at, user_subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&t.id)
                .bind(t.hash.to_hex())
                .bind(&t.display_prefix)
                .bind(&t.service_account)
                .bind(&t.owner)
                .bind(serde_json::to_string(&t.roles).unwrap_or_else(|_| "[]".into()))
                .bind(serde_json::to_string(&t.twins).unwrap_or_else(|_| "[]".into()))
                .bind(t.created_at)
                .bind(t.expires_at)
                .bind(t.revoked_at)
                .bind(&t.user_subject)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn token_by_hash(
        &self,
        hash: TokenHash,
    ) -> BoxFuture<'_, Result<Option<TokenRecord>, StorageError>> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?"
            ))
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(token_from_row).transpose()
        })
    }

    fn list_tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRecord>, StorageError>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
            ))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(token_from_row).collect()
        })
    }

    fn revoke_token<'a>(
        &'a self,
        id: &'a str,
        at: i64,
    ) -> BoxFuture<'a, Result<Option<TokenRecord>, StorageError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            // A prefix names a token only when it is long enough to mean one: an empty one
            // (or `%`) would match every token and revoke the only one there is.
            let prefix = id.replace(['%', '_'], "");
            let pattern = if prefix.len() >= MIN_ID_PREFIX {
                format!("{prefix}%")
            } else {
                prefix
            };
            let rows = sqlx::query(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ? OR id LIKE ?"
            ))
            .bind(id)
            .bind(&pattern)
            .fetch_all(&mut *tx)
            .await?;
            let exact: Vec<_> = rows
                .iter()
                .filter(|r| r.try_get::<String, _>("id").ok().as_deref() == Some(id))
                .collect();
            let row = match (exact.as_slice(), rows.as_slice()) {
                ([one], _) => *one,
                ([], [one]) => one,
                ([], []) => return Ok(None),
                _ => {
                    return Err(StorageError::Conflict(format!(
                        "token id prefix {id:?} matches {} tokens; give more characters",
                        rows.len()
                    )))
                }
            };
            let mut rec = token_from_row(row)?;
            if rec.revoked_at.is_none() {
                sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ?")
                    .bind(at)
                    .bind(&rec.id)
                    .execute(&mut *tx)
                    .await?;
                rec.revoked_at = Some(at);
            }
            tx.commit().await?;
            Ok(Some(rec))
        })
    }

    fn append_audit<'a>(
        &'a self,
        events: &'a [AuditEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let tail = sqlx::query_as::<_, (i64, String)>(AUDIT_TAIL)
                .fetch_optional(&mut *tx)
                .await?;
            let mut chain = ChainWriter::new();
            continue_chain(&mut chain, tail)?;
            for e in events {
                let l = chain.link(e);
                sqlx::query(INSERT_AUDIT)
                    .bind(l.seq)
                    .bind(l.text)
                    .bind(l.hash.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn audit_events(
        &self,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StorageError>> {
        Box::pin(async move {
            // Each row's prev_hash is the previous row's hash (genesis before the first);
            // verification then recomputes every hash from it.
            let rows = sqlx::query(
                "SELECT a.seq, a.event, a.hash, COALESCE((SELECT p.hash FROM audit_events p WHERE p.seq = a.seq - 1), ?) AS prev_hash
                 FROM audit_events a WHERE a.seq > ? ORDER BY a.seq LIMIT ?",
            )
            .bind(GENESIS)
            .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn upsert_user(&self, u: &UserRecord) -> BoxFuture<'_, Result<UserRecord, StorageError>> {
        let u = u.clone();
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO users (subject, issuer, idp_subject, email, name, webauthn_id, created_at, last_login_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)                  ON CONFLICT (subject) DO UPDATE SET email = excluded.email, name = excluded.name, last_login_at = excluded.last_login_at",
            )
            .bind(&u.subject)
            .bind(&u.issuer)
            .bind(&u.idp_subject)
            .bind(&u.email)
            .bind(&u.name)
            .bind(u.webauthn_id.to_string())
            .bind(u.created_at)
            .bind(u.last_login_at)
            .execute(&self.pool)
            .await?;
            let row = sqlx::query("SELECT * FROM users WHERE subject = ?")
                .bind(&u.subject)
                .fetch_one(&self.pool)
                .await?;
            user_from_row(&row)
        })
    }

    fn passkeys_of<'a>(
        &'a self,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PasskeyRecord>, StorageError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM passkeys WHERE user_subject = ? ORDER BY created_at, id",
            )
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(passkey_from_row).collect()
        })
    }

    fn insert_passkey(&self, p: &PasskeyRecord) -> BoxFuture<'_, Result<(), StorageError>> {
        let p = p.clone();
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO passkeys (id, user_subject, credential_id, name, aaguid, passkey, backup_eligible, backup_state, sign_count, created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&p.id)
            .bind(&p.user_subject)
            .bind(&p.credential_id)
            .bind(&p.name)
            .bind(p.aaguid.to_string())
            .bind(&p.passkey)
            .bind(p.backup_eligible)
            .bind(p.backup_state)
            .bind(i64::from(p.sign_count))
            .bind(p.created_at)
            .bind(p.last_used_at)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn update_passkey(&self, p: &PasskeyRecord) -> BoxFuture<'_, Result<(), StorageError>> {
        let p = p.clone();
        Box::pin(async move {
            sqlx::query(
                "UPDATE passkeys SET passkey = ?, backup_state = ?, sign_count = ?, last_used_at = ? WHERE id = ? AND user_subject = ?",
            )
            .bind(&p.passkey)
            .bind(p.backup_state)
            .bind(i64::from(p.sign_count))
            .bind(p.last_used_at)
            .bind(&p.id)
            .bind(&p.user_subject)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn delete_passkey<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM passkeys WHERE id = ? AND user_subject = ?")
                .bind(id)
                .bind(subject)
                .execute(&self.pool)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn list_passkeys<'a>(
        &'a self,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<(PasskeyRecord, String)>, StorageError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT p.*, u.email AS user_email FROM passkeys p JOIN users u ON u.subject = p.user_subject \
                 WHERE ?1 IS NULL OR u.email = ?1 OR u.subject = ?1 ORDER BY u.email, p.created_at, p.id",
            )
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok((passkey_from_row(r)?, r.try_get("user_email")?)))
                .collect()
        })
    }

    fn remove_passkey<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<PasskeyRecord>, StorageError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let row = sqlx::query("SELECT * FROM passkeys WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let rec = passkey_from_row(&row)?;
            sqlx::query("DELETE FROM passkeys WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(rec))
        })
    }

    fn tokens_of_user<'a>(
        &'a self,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TokenRecord>, StorageError>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_subject = ? ORDER BY created_at, id"
            ))
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(token_from_row).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify_chain;
    use crate::clock::Timestamp;
    use crate::storage::AuditAppender as _;

    #[tokio::test]
    async fn the_writer_connection_and_the_pool_extend_one_chain() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/w.db", d.path().display());
        let s = SqliteStore::open(&url).await.unwrap();
        let mut appender = s
            .audit_appender()
            .unwrap()
            .expect("a file database has one");
        let mut evs = Vec::new();
        for i in 0..7 {
            let mut e = AuditEvent::new("access", "deny", Timestamp::from_unix_secs(2000 + i));
            e.detail = crate::audit::Detail::Access(crate::audit::AccessDetail {
                method: "GET".into(),
                path: format!("/p/{i}").into(),
                client_ip: "192.0.2.7".parse().unwrap(),
                twin: "t".into(),
                purpose: Some("q\"uote".into()),
                token_id: None,
                session: None,
                errors: Vec::new(),
                reason: Some("denied by policy".into()),
            });
            e.policies = vec![format!("p{i}")].into();
            evs.push(e);
        }
        appender.append(&evs[..3]).unwrap();
        s.append_audit(&evs[3..5]).await.unwrap();
        appender.append(&evs[5..]).unwrap();
        let stored = s.audit_events(0, 100).await.unwrap();
        assert_eq!(stored.len(), 7);
        verify_chain(&stored, 0, GENESIS).unwrap();
        for (e, stored) in evs.iter().zip(&stored) {
            assert_eq!(stored.event().unwrap(), OwnedEvent::from(e));
        }
        assert_eq!(stored[0].event().unwrap().detail["client_ip"], "192.0.2.7");
        // In-memory databases have no second connection: the pool writes there.
        assert!(SqliteStore::open("sqlite::memory:")
            .await
            .unwrap()
            .audit_appender()
            .unwrap()
            .is_none());
    }

    /// Batches of 512 events whose text is about 400 bytes, timed `at` from `from` on.
    fn batches(from: i64, count: usize) -> impl Iterator<Item = Vec<AuditEvent>> {
        (0..count).map(move |b| {
            (0..512)
                .map(|i| {
                    let at = from + (b * 512 + i) as i64;
                    let mut e = AuditEvent::new("access", "allow", Timestamp::from_unix_secs(at));
                    e.detail = serde_json::json!({ "path": "/p/".repeat(80) }).into();
                    e
                })
                .collect()
        })
    }

    /// A new database in a directory of its own, with an appender that has handed its
    /// checkpoints to the housekeeper returned beside it.
    async fn housekept_store() -> (
        tempfile::TempDir,
        SqliteStore,
        SqliteAuditAppender,
        Arc<dyn crate::storage::AuditHousekeeper>,
    ) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&format!("sqlite://{}/w.db", d.path().display()))
            .await
            .unwrap();
        let mut appender = SqliteAuditAppender::open(&d.path().join("w.db")).unwrap();
        let hk = appender.housekeeper().unwrap().unwrap();
        (d, s, appender, hk)
    }

    fn wal_len(dir: &std::path::Path) -> u64 {
        std::fs::metadata(dir.join("w.db-wal")).map_or(0, |m| m.len())
    }

    /// Once a housekeeper is taken, commits never checkpoint (the log only grows, well past
    /// SQLite's usual 1,000 pages), until the housekeeper has fallen so far behind that the
    /// appender checkpoints itself; after a checkpoint the log starts over at its beginning
    /// and the file stops growing.
    #[tokio::test]
    async fn commits_leave_checkpoints_to_the_housekeeper_unless_it_falls_far_behind() {
        let (d, s, mut appender, hk) = housekept_store().await;
        assert!(!hk.is_due());
        let below_own = (OWN_CHECKPOINT_ROWS / 512 - 1) as usize;
        let mut last = wal_len(d.path());
        for (i, batch) in batches(0, below_own).enumerate() {
            appender.append(&batch).unwrap();
            let len = wal_len(d.path());
            assert!(len > last, "batch {i}: the log did not grow ({len} bytes)");
            last = len;
        }
        assert!(last > 1000 * u64::from(PAGE_SIZE), "{last} bytes of log");
        assert!(hk.is_due());
        // The housekeeper never ran: the appender's next commits pass its own bound and it
        // checkpoints; the commits after that reuse the log from its start.
        let mut rest = batches((below_own * 512) as i64, 6);
        appender.append(&rest.next().unwrap()).unwrap();
        let checkpointed = wal_len(d.path());
        for batch in rest {
            appender.append(&batch).unwrap();
        }
        assert_eq!(
            wal_len(d.path()),
            checkpointed,
            "the log grew after the appender's checkpoint"
        );
        assert!(!hk.is_due());
        drop(appender);
        let stored = s.audit_events(0, 100_000).await.unwrap();
        assert_eq!(stored.len(), (below_own + 6) * 512);
        verify_chain(&stored, 0, GENESIS).unwrap();
    }

    /// The background writer's transactions: steps are taken while `go_on` says so, each
    /// step after the first only once asked, and what was taken is committed (seen from
    /// another connection) with the chain intact across the calls.
    #[tokio::test]
    async fn a_stepped_append_asks_between_steps_and_commits_the_steps_it_took() {
        let (_d, s, mut appender, _hk) = housekept_store().await;
        let events = batches(0, 1).next().unwrap();
        let asked = std::cell::Cell::new(0);
        let go_on = || {
            asked.set(asked.get() + 1);
            asked.get() < 3
        };
        assert_eq!(appender.append_in_steps(&events, 100, &go_on).unwrap(), 300);
        assert_eq!(asked.get(), 3, "asked after each of the three steps");
        assert_eq!(s.audit_events(0, 1000).await.unwrap().len(), 300);
        let one_step = || -> bool { unreachable!("asked within a single step") };
        assert_eq!(
            appender
                .append_in_steps(&events[300..], 512, &one_step)
                .unwrap(),
            212
        );
        let stored = s.audit_events(0, 1000).await.unwrap();
        assert_eq!(stored.len(), 512);
        verify_chain(&stored, 0, GENESIS).unwrap();
        for (e, stored) in events.iter().zip(&stored) {
            assert_eq!(stored.event().unwrap(), OwnedEvent::from(e));
        }
    }

    #[tokio::test]
    async fn the_housekeeper_checkpoints_once_due_and_the_log_starts_over() {
        let (d, _s, mut appender, hk) = housekept_store().await;
        let due_after = (CHECKPOINT_ROWS / 512) as usize;
        for batch in batches(0, due_after) {
            assert!(!hk.is_due());
            appender.append(&batch).unwrap();
        }
        assert!(hk.is_due());
        let grown = wal_len(d.path());
        hk.tidy().unwrap();
        assert!(!hk.is_due());
        for batch in batches((due_after * 512) as i64, due_after) {
            appender.append(&batch).unwrap();
        }
        // Started over: the same events again fit in the file's first round.
        assert!(
            wal_len(d.path()) <= grown,
            "the log was not checkpointed ({} bytes, {grown} before)",
            wal_len(d.path())
        );
    }

    /// The housekeeper's checkpoint can leave frames behind (here a reader's snapshot holds
    /// them; under steady load, the commits that land while it copies): the appender moves
    /// them between two transactions, and the next one starts the log over.
    #[tokio::test]
    async fn the_appender_moves_what_the_housekeepers_checkpoint_left_and_the_log_starts_over() {
        let (d, _s, mut appender, hk) = housekept_store().await;
        let due_after = (CHECKPOINT_ROWS / 512) as usize;
        let mut rows = batches(0, 4 * due_after);
        for batch in rows.by_ref().take(due_after) {
            appender.append(&batch).unwrap();
        }
        assert!(hk.is_due());
        let reader = rusqlite::Connection::open(d.path().join("w.db")).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, CHECKPOINT_ROWS as i64);
        appender.append(&rows.next().unwrap()).unwrap();
        hk.tidy().unwrap();
        assert!(hk.wants_finish());
        assert!(!hk.is_due(), "the rest is the appender's to move");
        reader.execute_batch("COMMIT").unwrap();
        appender.finish_upkeep().unwrap();
        assert!(!hk.wants_finish());
        assert!(!hk.is_due());
        appender.append(&rows.next().unwrap()).unwrap();
        let moved = wal_len(d.path());
        for batch in rows.take(due_after - 1) {
            appender.append(&batch).unwrap();
        }
        assert!(
            wal_len(d.path()) <= moved,
            "the log grew on ({} bytes, {moved} once moved)",
            wal_len(d.path())
        );
    }

    /// Appends at a steady pace while the housekeeper checkpoints from a thread of its own
    /// and the appender finishes each (as the audit sink runs them): the log stays within a
    /// few checkpoints' worth instead of growing with every event.
    #[tokio::test]
    async fn under_steady_appends_with_the_housekeeper_running_the_log_stays_bounded() {
        let (d, s, mut appender, hk) = housekept_store().await;
        let due_after = (CHECKPOINT_ROWS / 512) as usize;
        let rounds = 6;
        let mut rows = batches(0, rounds * due_after);
        for batch in rows.by_ref().take(due_after) {
            appender.append(&batch).unwrap();
        }
        // The log that one checkpoint's worth of rows takes.
        let one_due = wal_len(d.path());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let housekeeping = {
            let (hk, stop) = (hk.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    if hk.is_due() {
                        hk.tidy().unwrap();
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        };
        let mut longest = 0;
        for batch in rows {
            for step in batch.chunks(128) {
                appender.append(step).unwrap();
                // A due checkpoint gets its turn before the next step, as an idle core gives
                // it one in the gateway: on a test machine busy with other tests the thread
                // could otherwise wait for a core through the whole run, and the test would
                // measure the scheduler, not the upkeep.
                let waiting = std::time::Instant::now();
                while hk.is_due() && waiting.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                if hk.wants_finish() {
                    appender.finish_upkeep().unwrap();
                }
            }
            longest = longest.max(wal_len(d.path()));
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        housekeeping.join().unwrap();
        assert!(
            longest <= 3 * one_due,
            "the log reached {longest} bytes; one checkpoint's worth is {one_due}"
        );
        drop(appender);
        let stored = s.audit_events(0, 1_000_000).await.unwrap();
        assert_eq!(stored.len(), rounds * due_after * 512);
        verify_chain(&stored, 0, GENESIS).unwrap();
    }

    /// An edit made in the file itself (triggers dropped) that also recomputes the edited
    /// event's hash is still found: the next event's hash covers the old one.
    #[tokio::test]
    async fn a_rehashed_edit_breaks_the_next_link() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/a.db", d.path().display());
        let s = SqliteStore::open(&url).await.unwrap();
        let evs: Vec<_> = (0..5)
            .map(|i| AuditEvent::new("access", "deny", Timestamp::from_unix_secs(1000 + i)))
            .collect();
        s.append_audit(&evs).await.unwrap();
        let stored = s.audit_events(0, 100).await.unwrap();
        verify_chain(&stored, 0, GENESIS).unwrap();

        let forged = stored[2]
            .text
            .replace(r#""outcome":"deny""#, r#""outcome":"allow""#);
        assert_ne!(forged, stored[2].text);
        let rehashed = crate::audit::chain::hash_text(&stored[1].hash, 3, &forged);
        sqlx::query("DROP TRIGGER audit_events_no_update")
            .execute(&s.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_events SET event = ?, hash = ? WHERE seq = 3")
            .bind(&forged)
            .bind(&rehashed)
            .execute(&s.pool)
            .await
            .unwrap();
        let tampered = s.audit_events(0, 100).await.unwrap();
        assert_eq!(tampered[2].hash, rehashed);
        assert_eq!(tampered[2].event().unwrap().outcome, "allow");
        assert_eq!(tampered[3].prev_hash, rehashed);
        assert_eq!(
            verify_chain(&tampered, 0, GENESIS),
            Err(crate::audit::ChainError::Content { seq: 4 })
        );
        // Read from the middle, the first event still carries its predecessor's hash.
        let page = s.audit_events(3, 1).await.unwrap();
        assert_eq!(page[0].seq, 4);
        assert_eq!(page[0].prev_hash, rehashed);
    }

    /// The database itself refuses to update or delete the audit event at `seq`.
    async fn assert_append_only(pool: &SqlitePool, seq: i64) {
        for sql in [
            "UPDATE audit_events SET event = event || ' ' WHERE seq = ?",
            "DELETE FROM audit_events WHERE seq = ?",
        ] {
            let r = sqlx::query(sql).bind(seq).execute(pool).await;
            let err = r.expect_err(sql).to_string();
            assert!(err.contains("append-only"), "{sql}: {err}");
        }
    }

    /// A database migrated up to (not including) `version`, with `events` appended to its
    /// audit table as the writer of that layout stored them; returns their hashes.
    async fn database_before(url: &str, version: i64, events: &[AuditEvent]) -> Vec<String> {
        let pool = plain_pool(url).await;
        let mut before = sqlx::migrate!("./migrations/sqlite");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&pool).await.unwrap();
        // The first layout kept each row's prev_hash; the lean one takes it from the row before.
        let with_prev = version <= 20261126000002;
        let mut prev = GENESIS.to_owned();
        let mut hashes = Vec::new();
        for (seq, e) in (1..).zip(events) {
            let hash = crate::audit::chain::hash_event(&prev, seq, e);
            let sql = if with_prev {
                "INSERT INTO audit_events (seq, event_id, at_ms, kind, outcome, actor, route, action, policies, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            } else {
                "INSERT INTO audit_events (seq, event_id, at_ms, kind, outcome, actor, route, action, policies, detail, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            };
            let mut q = sqlx::query(sql)
                .bind(seq)
                .bind(e.event_id.as_str())
                .bind(e.at_ms)
                .bind(e.kind)
                .bind(e.outcome)
                .bind(e.actor.as_deref())
                .bind(e.route.as_deref())
                .bind(e.action)
                .bind(serde_json::to_string(&e.policies).unwrap())
                .bind(serde_json::to_string(&e.detail).unwrap());
            if with_prev {
                q = q.bind(&prev);
            }
            q.bind(&hash).execute(&pool).await.unwrap();
            hashes.push(hash.clone());
            prev = hash;
        }
        pool.close().await;
        hashes
    }

    /// Events of every kind of detail, with text that needs escaping.
    fn varied_events() -> Vec<AuditEvent> {
        let mut access = AuditEvent::new("access", "deny", Timestamp::from_unix_secs(1));
        access.actor = Some("ci \"runner\"".into());
        access.route = Some("plant-7".into());
        access.action = Some("read");
        access.policies = vec!["p1".into(), "p\u{e9}".into()].into();
        access.detail =
            crate::audit::Detail::Access(crate::audit::tests::sample_detail(Some("denied")));
        let mut reload = AuditEvent::new("policy.reload", "ok", Timestamp::from_unix_secs(2));
        reload.detail =
            serde_json::json!({ "z": 1.5, "a": { "y": [1, "\u{fc}"], "b": null }, "m": "x\ny" })
                .into();
        let token = AuditEvent::new("token.create", "ok", Timestamp::from_unix_secs(3));
        vec![access, reload, token]
    }

    /// Databases of both earlier row layouts open with their chains intact: every row reads
    /// back as the event it was, keeps its hash, verifies, and the chain goes on from it.
    #[tokio::test]
    async fn column_layout_rows_become_text_rows_with_their_hashes() {
        let d = tempfile::tempdir().unwrap();
        let events = varied_events();
        for version in [20261126000002, 20261127000001] {
            let url = format!("sqlite://{}/v{version}.db", d.path().display());
            let hashes = database_before(&url, version, &events).await;
            let s = SqliteStore::open(&url).await.unwrap();
            let mut appender = s.audit_appender().unwrap().unwrap();
            let next = AuditEvent::new("token.revoke", "ok", Timestamp::from_unix_secs(9));
            appender.append(std::slice::from_ref(&next)).unwrap();
            let stored = s.audit_events(0, 100).await.unwrap();
            assert_eq!(stored.len(), 4, "{version}");
            verify_chain(&stored, 0, GENESIS).unwrap();
            for (i, e) in events.iter().chain([&next]).enumerate() {
                assert_eq!(stored[i].event().unwrap(), OwnedEvent::from(e), "{version}");
            }
            let kept: Vec<_> = stored[..3].iter().map(|e| e.hash.clone()).collect();
            assert_eq!(kept, hashes, "{version}");
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'audit%'",
            )
            .fetch_all(&s.pool)
            .await
            .unwrap();
            assert_eq!(tables, [("audit_events".to_owned(),)], "{version}");
            let indexes: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM pragma_index_list('audit_events')")
                    .fetch_all(&s.pool)
                    .await
                    .unwrap();
            assert!(indexes.is_empty(), "{indexes:?}");
            assert_append_only(&s.pool, 1).await;
        }
    }

    /// A database of the column layout holding [`varied_events`], one of them then edited
    /// in the file (`UPDATE audit_events SET {edit}`, its trigger dropped first).
    async fn column_rows_edited_by_hand(url: &str, edit: &str) {
        database_before(url, 20261127000001, &varied_events()).await;
        let pool = plain_pool(url).await;
        sqlx::query(&format!(
            "DROP TRIGGER audit_events_no_update; UPDATE audit_events SET {edit}"
        ))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }

    /// An edit made to a column row before the move is still found after it: the row keeps
    /// the hash it was stored with, which its new text does not match.
    #[tokio::test]
    async fn an_edit_made_before_the_move_still_fails_verification() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/e.db", d.path().display());
        column_rows_edited_by_hand(&url, "outcome = 'allow' WHERE seq = 1").await;
        let s = SqliteStore::open(&url).await.unwrap();
        let stored = s.audit_events(0, 100).await.unwrap();
        assert_eq!(stored[0].event().unwrap().outcome, "allow");
        assert_eq!(
            verify_chain(&stored, 0, GENESIS),
            Err(crate::audit::ChainError::Content { seq: 1 })
        );
    }

    /// A column row whose detail is not JSON cannot be written as text: opening fails with
    /// the row named, and every row stays where it was.
    #[tokio::test]
    async fn an_unreadable_column_row_stops_the_move_and_loses_nothing() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/u.db", d.path().display());
        column_rows_edited_by_hand(&url, "detail = '{oops' WHERE seq = 2").await;
        let err = SqliteStore::open(&url).await.err().expect("open must fail");
        let text = err.to_string();
        assert!(
            text.contains("audit event 2") && text.contains("detail"),
            "{text}"
        );
        let pool = plain_pool(&url).await;
        let (moved,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        let (waiting,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit_events_columns")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!((moved, waiting), (0, 3));
        // The rows left waiting are still append-only.
        for sql in [
            "UPDATE audit_events_columns SET outcome = 'allow' WHERE seq = 1",
            "DELETE FROM audit_events_columns WHERE seq = 1",
        ] {
            let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
    }

    #[tokio::test]
    async fn audit_chain_appends_and_verifies_and_detects_edits() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/a.db", d.path().display());
        let s = SqliteStore::open(&url).await.unwrap();
        let mut evs = Vec::new();
        for i in 0..5 {
            let mut e = AuditEvent::new("access", "allow", Timestamp::from_unix_secs(1000 + i));
            e.route = Some("r".into());
            evs.push(e);
        }
        s.append_audit(&evs[..2]).await.unwrap();
        s.append_audit(&evs[2..]).await.unwrap();
        let stored = s.audit_events(0, 100).await.unwrap();
        assert_eq!(stored.len(), 5);
        verify_chain(&stored, 0, GENESIS).unwrap();
        assert_append_only(&s.pool, 3).await;
        // An edit that bypasses the triggers is found by verification.
        let mut edited = stored.clone();
        edited[2].text = edited[2]
            .text
            .replace(r#""outcome":"allow""#, r#""outcome":"deny""#);
        assert!(matches!(
            verify_chain(&edited, 0, GENESIS),
            Err(crate::audit::ChainError::Content { seq: 3 })
        ));
        let mut cut = stored.clone();
        cut.remove(2);
        assert!(matches!(
            verify_chain(&cut, 0, GENESIS),
            Err(crate::audit::ChainError::Gap { .. })
        ));
    }

    #[tokio::test]
    async fn tokens_round_trip_and_revoke_by_prefix() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&format!("sqlite://{}/t.db", d.path().display()))
            .await
            .unwrap();
        let t = crate::identity::api_token::generate([9; 32]);
        let rec = TokenRecord {
            id: "0193a0b1-aaaa".into(),
            hash: t.hash,
            display_prefix: "twt_abc".into(),
            service_account: "ci".into(),
            owner: "admin".into(),
            roles: vec!["twin-viewer".into()],
            twins: vec![],
            created_at: 1,
            expires_at: 2,
            revoked_at: None,
            user_subject: None,
        };
        s.insert_token(&rec).await.unwrap();
        assert_eq!(s.token_by_hash(t.hash).await.unwrap(), Some(rec.clone()));
        let revoked = s.revoke_token("0193a0b1", 5).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(5));
        assert_eq!(
            s.token_by_hash(t.hash).await.unwrap().unwrap().revoked_at,
            Some(5)
        );
        assert!(s.revoke_token("nope", 5).await.unwrap().is_none());
        // Too short to name one token: nothing is matched, whatever is stored.
        let t2 = crate::identity::api_token::generate([8; 32]);
        let other = TokenRecord {
            id: "0194ffff-bbbb".into(),
            hash: t2.hash,
            ..rec.clone()
        };
        s.insert_token(&other).await.unwrap();
        for short in ["", "%", "_", "%%%%%%%", "0194"] {
            assert!(
                s.revoke_token(short, 6).await.unwrap().is_none(),
                "{short:?}"
            );
        }
        assert_eq!(
            s.token_by_hash(t2.hash).await.unwrap().unwrap().revoked_at,
            None
        );
        assert!(s.revoke_token("0194ff", 6).await.unwrap().is_some());
    }

    /// A database file made without the store's settings, as an older release made it.
    async fn plain_pool(url: &str) -> SqlitePool {
        SqlitePool::connect_with(
            SqliteConnectOptions::from_str(url)
                .unwrap()
                .create_if_missing(true),
        )
        .await
        .unwrap()
    }

    async fn page_size(url: &str) -> i64 {
        let pool = SqlitePool::connect(url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as("PRAGMA page_size")
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    }

    #[tokio::test]
    async fn a_new_database_gets_large_pages_and_an_existing_one_keeps_its_own() {
        let d = tempfile::tempdir().unwrap();
        let new = format!("sqlite://{}/new.db", d.path().display());
        let s = SqliteStore::open(&new).await.unwrap();
        s.append_audit(&[AuditEvent::new(
            "access",
            "allow",
            Timestamp::from_unix_secs(1),
        )])
        .await
        .unwrap();
        assert_eq!(page_size(&new).await, i64::from(PAGE_SIZE));

        // A file made with the default pages (before this setting) opens, migrates and
        // appends as before; only a rebuild would change its pages.
        let old = format!("sqlite://{}/old.db", d.path().display());
        {
            let pool = plain_pool(&old).await;
            sqlx::query("CREATE TABLE t (x)")
                .execute(&pool)
                .await
                .unwrap();
        }
        assert_eq!(page_size(&old).await, 4096);
        let s = SqliteStore::open(&old).await.unwrap();
        let mut appender = s.audit_appender().unwrap().unwrap();
        appender
            .append(&[AuditEvent::new(
                "access",
                "allow",
                Timestamp::from_unix_secs(2),
            )])
            .unwrap();
        assert_eq!(page_size(&old).await, 4096);
        let stored = s.audit_events(0, 10).await.unwrap();
        assert_eq!(stored.len(), 1);
        crate::audit::verify_chain(&stored, 0, GENESIS).unwrap();
    }
}
