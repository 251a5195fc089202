//! The append-only, hash-chained audit log.
//!
//! Entries are spread over [`CHAINS`] chains by a hash of their target (or actor); each entry's
//! `entry_hash` = SHA-256(previous entry's hash of the same chain ‖ the entry's canonical content).
//! Appending locks only its chain's head row, so unrelated logins never wait for each other, while
//! any edit, deletion or reordering inside a chain breaks it. The database itself refuses UPDATE,
//! DELETE and TRUNCATE on `audit_log`.

use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

/// Number of independent chains.
pub const CHAINS: u8 = 16;
/// The `previous_hash` of every chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as the caller describes it.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// `user`, `service_client` or `system`.
    pub actor_type: &'static str,
    /// User id or client id; empty when anonymous.
    pub actor_id: String,
    /// Dotted action, e.g. `user.login`.
    pub action: &'static str,
    /// `user`, `session`, `signing_key`, `service_client`, `email` (hashed address).
    pub target_type: &'static str,
    /// Target id.
    pub target_id: String,
    /// `success`, `failure` or `denied`.
    pub result: &'static str,
    /// Reason or failure detail (never a secret).
    pub reason: String,
    /// The call's request id.
    pub request_id: String,
    /// The call's trace id.
    pub trace_id: String,
    /// Client IP.
    pub ip_address: String,
    /// Client user agent.
    pub user_agent: String,
}

/// A stored entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    /// Global position.
    pub sequence: i64,
    /// Id.
    pub entry_id: Uuid,
    /// Chain.
    pub chain: String,
    /// Position in its chain.
    pub chain_position: i64,
    /// When.
    pub occurred_at: OffsetDateTime,
    /// Actor type.
    pub actor_type: String,
    /// Actor id.
    pub actor_id: String,
    /// Action.
    pub action: String,
    /// Target type.
    pub target_type: String,
    /// Target id.
    pub target_id: String,
    /// Result.
    pub result: String,
    /// Reason.
    pub reason: String,
    /// Request id.
    pub request_id: String,
    /// Trace id.
    pub trace_id: String,
    /// IP.
    pub ip_address: String,
    /// User agent.
    pub user_agent: String,
    /// Hash of the chain's previous entry.
    pub previous_hash: String,
    /// This entry's hash.
    pub entry_hash: String,
}

const COLUMNS: &str = "sequence, entry_id, chain, chain_position, occurred_at, actor_type, actor_id, action, \
                       target_type, target_id, result, reason, request_id, trace_id, ip_address, user_agent, \
                       previous_hash, entry_hash";

fn chain_of(entry: &Entry) -> String {
    let key = if entry.target_id.is_empty() { &entry.actor_id } else { &entry.target_id };
    let digest = Sha256::digest(key.as_bytes());
    format!("{:02}", digest[0] % CHAINS)
}

/// The hash of an entry given its chain predecessor's hash.
#[must_use]
pub fn hash(previous_hash: &str, row: &Row) -> String {
    let canonical = serde_json::json!([
        row.entry_id.to_string(),
        row.chain,
        row.chain_position,
        row.occurred_at.unix_timestamp_nanos() / 1000,
        row.actor_type,
        row.actor_id,
        row.action,
        row.target_type,
        row.target_id,
        row.result,
        row.reason,
        row.request_id,
        row.trace_id,
        row.ip_address,
        row.user_agent,
    ]);
    let mut hasher = Sha256::new();
    hasher.update(previous_hash.as_bytes());
    hasher.update(b"|");
    hasher.update(canonical.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

/// Appends an entry in the caller's transaction.
pub async fn append(conn: &mut PgConnection, entry: Entry) -> Result<(), sqlx::Error> {
    let chain = chain_of(&entry);
    sqlx::query(
        "INSERT INTO audit_chain_heads (chain, chain_position, entry_hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&chain)
    .bind(GENESIS)
    .execute(&mut *conn)
    .await?;
    let (position, previous_hash): (i64, String) = sqlx::query_as(
        "SELECT chain_position, entry_hash FROM audit_chain_heads WHERE chain = $1 FOR UPDATE",
    )
    .bind(&chain)
    .fetch_one(&mut *conn)
    .await?;
    // Microsecond precision: exactly what PostgreSQL stores, so the hash can be recomputed.
    let now = OffsetDateTime::now_utc();
    let occurred_at = now.replace_nanosecond(now.nanosecond() / 1000 * 1000).unwrap_or(now);
    let mut row = Row {
        sequence: 0,
        entry_id: Uuid::now_v7(),
        chain: chain.clone(),
        chain_position: position + 1,
        occurred_at,
        actor_type: entry.actor_type.to_owned(),
        actor_id: entry.actor_id,
        action: entry.action.to_owned(),
        target_type: entry.target_type.to_owned(),
        target_id: entry.target_id,
        result: entry.result.to_owned(),
        reason: entry.reason,
        request_id: entry.request_id,
        trace_id: entry.trace_id,
        ip_address: entry.ip_address,
        user_agent: entry.user_agent,
        previous_hash: previous_hash.clone(),
        entry_hash: String::new(),
    };
    row.entry_hash = hash(&previous_hash, &row);
    sqlx::query(
        "INSERT INTO audit_log (entry_id, chain, chain_position, occurred_at, actor_type, actor_id, action, \
           target_type, target_id, result, reason, request_id, trace_id, ip_address, user_agent, previous_hash, \
           entry_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(row.entry_id)
    .bind(&row.chain)
    .bind(row.chain_position)
    .bind(row.occurred_at)
    .bind(&row.actor_type)
    .bind(&row.actor_id)
    .bind(&row.action)
    .bind(&row.target_type)
    .bind(&row.target_id)
    .bind(&row.result)
    .bind(&row.reason)
    .bind(&row.request_id)
    .bind(&row.trace_id)
    .bind(&row.ip_address)
    .bind(&row.user_agent)
    .bind(&row.previous_hash)
    .bind(&row.entry_hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_chain_heads SET chain_position = $2, entry_hash = $3 WHERE chain = $1")
        .bind(&chain)
        .bind(row.chain_position)
        .bind(&row.entry_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Filters of the admin query (values are bound parameters, never SQL text).
#[derive(Debug, Default)]
pub struct Filter {
    /// Actor id.
    pub actor_id: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
    /// Action prefix, e.g. `user.`.
    pub action_prefix: Option<String>,
    /// From (inclusive).
    pub from: Option<OffsetDateTime>,
    /// To (exclusive).
    pub to: Option<OffsetDateTime>,
}

/// Newest first, entries with `sequence < before` (keyset pagination).
pub async fn list(
    conn: &mut PgConnection,
    filter: &Filter,
    before: i64,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let prefix = filter
        .action_prefix
        .as_ref()
        .map(|p| format!("{}%", p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_log WHERE sequence < $1 \
           AND ($2::text IS NULL OR actor_id = $2) AND ($3::text IS NULL OR target_id = $3) \
           AND ($4::text IS NULL OR action LIKE $4) AND ($5::timestamptz IS NULL OR occurred_at >= $5) \
           AND ($6::timestamptz IS NULL OR occurred_at < $6) \
         ORDER BY sequence DESC LIMIT $7"
    )))
    .bind(before)
    .bind(filter.actor_id.as_deref())
    .bind(filter.target_id.as_deref())
    .bind(prefix)
    .bind(filter.from)
    .bind(filter.to)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The outcome of an integrity check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Entries checked.
    pub checked: i64,
    /// The first broken entry's sequence and what is wrong, if any.
    pub broken: Option<(i64, String)>,
}

/// Recomputes every chain from its genesis (entries with sequence in `[from, to]`, 0 = open) and
/// checks the chain heads.
pub async fn verify(conn: &mut PgConnection, from: i64, to: i64) -> Result<Verification, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_log ORDER BY chain, chain_position"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let heads: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT chain, chain_position, entry_hash FROM audit_chain_heads")
            .fetch_all(&mut *conn)
            .await?;
    let in_range = |s: i64| s >= from && (to == 0 || s <= to);
    let mut checked = 0;
    let mut broken: Option<(i64, String)> = None;
    let note = |sequence: i64, problem: String, broken: &mut Option<(i64, String)>| {
        if broken.as_ref().is_none_or(|(s, _)| sequence < *s) {
            *broken = Some((sequence, problem));
        }
    };
    let mut previous: Option<&Row> = None;
    for row in &rows {
        let (expected_position, expected_previous) = match previous {
            Some(p) if p.chain == row.chain => (p.chain_position + 1, p.entry_hash.as_str()),
            _ => (1, GENESIS),
        };
        if in_range(row.sequence) {
            checked += 1;
        }
        if row.chain_position != expected_position {
            note(
                row.sequence,
                format!("chain {} has a gap before position {}", row.chain, row.chain_position),
                &mut broken,
            );
        } else if row.previous_hash != expected_previous {
            note(row.sequence, "previous_hash does not match the chain".to_owned(), &mut broken);
        } else if hash(&row.previous_hash, row) != row.entry_hash {
            note(row.sequence, "entry content does not match its hash".to_owned(), &mut broken);
        }
        previous = Some(row);
    }
    for (chain, position, entry_hash) in heads {
        let last = rows.iter().filter(|r| r.chain == chain).max_by_key(|r| r.chain_position);
        let matches = match last {
            Some(last) => last.chain_position == position && last.entry_hash == entry_hash,
            None => position == 0,
        };
        if !matches {
            let sequence = last.map_or(0, |l| l.sequence);
            note(sequence, format!("chain {chain} was truncated or its head moved"), &mut broken);
        }
    }
    Ok(Verification { checked, broken })
}

/// Like [`list`], also filtered by `result` (`success`, `failure` or `denied`) when given.
pub async fn list_with_result(
    conn: &mut PgConnection,
    filter: &Filter,
    result: Option<&str>,
    before: i64,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let prefix = filter
        .action_prefix
        .as_ref()
        .map(|p| format!("{}%", p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_log WHERE sequence < $1 \
           AND ($2::text IS NULL OR actor_id = $2) AND ($3::text IS NULL OR target_id = $3) \
           AND ($4::text IS NULL OR action LIKE $4) AND ($5::timestamptz IS NULL OR occurred_at >= $5) \
           AND ($6::timestamptz IS NULL OR occurred_at < $6) AND ($8::text IS NULL OR result = $8) \
         ORDER BY sequence DESC LIMIT $7"
    )))
    .bind(before)
    .bind(filter.actor_id.as_deref())
    .bind(filter.target_id.as_deref())
    .bind(prefix)
    .bind(filter.from)
    .bind(filter.to)
    .bind(limit)
    .bind(result)
    .fetch_all(conn)
    .await
}
