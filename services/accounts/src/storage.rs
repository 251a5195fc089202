//! The only module that talks SQL. Functions take `&mut PgConnection`: the caller owns the
//! transaction. Queries are runtime-checked (docs/adr/0006) and covered by the service tests;
//! every value is a bound parameter.

use std::time::Duration;

use bank_platform::idempotency::Key;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{Action, Product, Status};

/// A customer account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AccountRow {
    pub(crate) account_id: Uuid,
    /// Keyset pagination position.
    pub(crate) seq: i64,
    /// Canonical 16 digits (validated when generated).
    pub(crate) account_number: String,
    pub(crate) owner_user_id: Uuid,
    #[sqlx(try_from = "String")]
    pub(crate) product: Product,
    pub(crate) currency: String,
    #[sqlx(try_from = "String")]
    pub(crate) status: Status,
    pub(crate) nickname: String,
    /// Minor units.
    pub(crate) overdraft_limit: i64,
    /// While frozen.
    pub(crate) credits_allowed: bool,
    pub(crate) frozen_at: Option<OffsetDateTime>,
    pub(crate) frozen_by: Option<Uuid>,
    pub(crate) freeze_reason: Option<String>,
    pub(crate) opened_at: OffsetDateTime,
    pub(crate) closed_at: Option<OffsetDateTime>,
    pub(crate) updated_at: OffsetDateTime,
}

const ACCOUNT_COLUMNS: &str = "account_id, seq, account_number, owner_user_id, product, currency::text AS currency, \
                               status, nickname, overdraft_limit, credits_allowed, frozen_at, frozen_by, \
                               freeze_reason, opened_at, closed_at, updated_at";

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A new account in status `opening`.
#[derive(Debug)]
pub(crate) struct NewAccount<'a> {
    pub(crate) account_id: Uuid,
    pub(crate) account_number: &'a str,
    pub(crate) owner_user_id: Uuid,
    pub(crate) product: Product,
    pub(crate) currency: &'a str,
    pub(crate) nickname: &'a str,
}

/// Inserts an `opening` account that the reconciler takes over after `stuck_after`; `None` when
/// the number is taken (the caller draws another).
pub(crate) async fn insert_opening(
    conn: &mut PgConnection,
    new: &NewAccount<'_>,
    stuck_after: Duration,
) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO accounts (account_id, account_number, owner_user_id, product, currency, status, nickname, \
           saga_retry_at) \
         VALUES ($1, $2, $3, $4, $5, 'opening', $6, now() + make_interval(secs => $7)) \
         ON CONFLICT (account_number) DO NOTHING RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(new.account_id)
    .bind(new.account_number)
    .bind(new.owner_user_id)
    .bind(new.product.as_str())
    .bind(new.currency)
    .bind(new.nickname)
    .bind(seconds(stuck_after))
    .fetch_optional(conn)
    .await
}

/// One account; with `owner`, only if that user owns it (another owner's account reads exactly
/// like a missing one).
pub(crate) async fn account(
    conn: &mut PgConnection,
    account_id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1 AND ($2::uuid IS NULL OR owner_user_id = $2)"
    )))
    .bind(account_id)
    .bind(owner)
    .fetch_optional(conn)
    .await
}

/// Like [`account`], locking the row for the rest of the transaction.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    account_id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1 AND ($2::uuid IS NULL OR owner_user_id = $2) \
         FOR UPDATE"
    )))
    .bind(account_id)
    .bind(owner)
    .fetch_optional(conn)
    .await
}

/// `opening` -> `active`; `None` when the account was not opening (someone finished it first).
pub(crate) async fn activate(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE accounts SET status = 'active', updated_at = now() WHERE account_id = $1 AND status = 'opening' \
         RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(account_id)
    .fetch_optional(conn)
    .await
}

/// Claims up to `limit` openings that are due, pushing each one's next attempt out with
/// exponential backoff (`base * 2^attempts`, at most `max`). Rows another replica is claiming are
/// skipped.
pub(crate) async fn claim_openings(
    conn: &mut PgConnection,
    limit: i64,
    base: Duration,
    max: Duration,
) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE accounts SET saga_attempts = saga_attempts + 1, \
           saga_retry_at = now() + make_interval(secs => least($3, $2 * power(2, least(saga_attempts, 20)))) \
         WHERE account_id IN (SELECT account_id FROM accounts WHERE status = 'opening' AND saga_retry_at <= now() \
                              ORDER BY saga_retry_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(limit)
    .bind(seconds(base))
    .bind(seconds(max))
    .fetch_all(conn)
    .await
}

/// A user's accounts after keyset position `after`, oldest first.
pub(crate) async fn owned(
    conn: &mut PgConnection,
    owner: Uuid,
    include_closed: bool,
    after: i64,
    limit: i64,
) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE owner_user_id = $1 AND seq > $2 AND ($3 OR status <> 'closed') \
         ORDER BY seq LIMIT $4"
    )))
    .bind(owner)
    .bind(after)
    .bind(include_closed)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Administrative search filters (each optional; all given ones must match).
#[derive(Debug, Default)]
pub(crate) struct Filter {
    /// Account numbers starting with these (validated) digits.
    pub(crate) number_prefix: Option<String>,
    pub(crate) owner: Option<Uuid>,
    pub(crate) status: Option<Status>,
    pub(crate) product: Option<Product>,
    pub(crate) currency: Option<&'static str>,
}

/// The filter as SQL over parameters `$1`..`$5`. Prefixes are matched as a range (`>= p` and
/// `< p || ':'`, ':' sorting right after '9' in the "C" collation), which the number's unique
/// index serves.
const FILTER: &str = "($1::text IS NULL OR (account_number >= $1 AND account_number < $1 || ':')) \
                      AND ($2::uuid IS NULL OR owner_user_id = $2) AND ($3::text IS NULL OR status = $3) \
                      AND ($4::text IS NULL OR product = $4) AND ($5::text IS NULL OR currency = $5)";

/// Matching accounts after keyset position `after`, oldest first.
pub(crate) async fn search(
    conn: &mut PgConnection,
    filter: &Filter,
    after: i64,
    limit: i64,
) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {FILTER} AND seq > $6 ORDER BY seq LIMIT $7"
    )))
    .bind(filter.number_prefix.as_deref())
    .bind(filter.owner)
    .bind(filter.status.map(Status::as_str))
    .bind(filter.product.map(Product::as_str))
    .bind(filter.currency)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// How many accounts match.
pub(crate) async fn count(conn: &mut PgConnection, filter: &Filter) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM accounts WHERE {FILTER}")))
        .bind(filter.number_prefix.as_deref())
        .bind(filter.owner)
        .bind(filter.status.map(Status::as_str))
        .bind(filter.product.map(Product::as_str))
        .bind(filter.currency)
        .fetch_one(conn)
        .await
}

/// Sets the owner's label.
pub(crate) async fn set_nickname(
    conn: &mut PgConnection,
    account_id: Uuid,
    nickname: &str,
) -> Result<AccountRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE accounts SET nickname = $2, updated_at = now() WHERE account_id = $1 RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(account_id)
    .bind(nickname)
    .fetch_one(conn)
    .await
}

/// Applies a change the ledger has confirmed to the (locked) account.
pub(crate) async fn apply(conn: &mut PgConnection, change: &ChangeRow) -> Result<AccountRow, sqlx::Error> {
    let query = match change.action {
        Action::Freeze { credits_allowed } => sqlx::query(
            "UPDATE accounts SET status = 'frozen', credits_allowed = $2, frozen_at = now(), frozen_by = $3, \
               freeze_reason = $4, updated_at = now() WHERE account_id = $1",
        )
        .bind(change.account_id)
        .bind(credits_allowed)
        .bind(change.actor)
        .bind(&change.reason),
        Action::Unfreeze => sqlx::query(
            "UPDATE accounts SET status = 'active', credits_allowed = true, frozen_at = NULL, frozen_by = NULL, \
               freeze_reason = NULL, updated_at = now() WHERE account_id = $1",
        )
        .bind(change.account_id),
        Action::Close => sqlx::query(
            "UPDATE accounts SET status = 'closed', closed_at = now(), updated_at = now() WHERE account_id = $1",
        )
        .bind(change.account_id),
        Action::ForceClose => sqlx::query(
            "UPDATE accounts SET status = 'closed', closed_at = now(), closed_by = $2, frozen_at = NULL, \
               frozen_by = NULL, freeze_reason = NULL, updated_at = now() WHERE account_id = $1",
        )
        .bind(change.account_id)
        .bind(change.actor),
        Action::SetOverdraftLimit { limit } => {
            sqlx::query("UPDATE accounts SET overdraft_limit = $2, updated_at = now() WHERE account_id = $1")
                .bind(change.account_id)
                .bind(limit)
        }
    };
    query.execute(&mut *conn).await?;
    account(conn, change.account_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// A change of an account mirrored to the ledger.
#[derive(Debug, Clone)]
pub(crate) struct ChangeRow {
    pub(crate) change_id: Uuid,
    pub(crate) account_id: Uuid,
    pub(crate) action: Action,
    pub(crate) actor: Uuid,
    pub(crate) reason: String,
    /// `pending`, `applied` or `abandoned`.
    pub(crate) state: String,
}

#[derive(sqlx::FromRow)]
struct StoredChange {
    change_id: Uuid,
    account_id: Uuid,
    action: String,
    credits_allowed: bool,
    overdraft_limit: i64,
    actor: Uuid,
    reason: String,
    state: String,
}

impl TryFrom<StoredChange> for ChangeRow {
    type Error = sqlx::Error;

    fn try_from(row: StoredChange) -> Result<Self, sqlx::Error> {
        let action = Action::from_stored(&row.action, row.credits_allowed, row.overdraft_limit)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown action {:?}", row.action).into()))?;
        Ok(Self {
            change_id: row.change_id,
            account_id: row.account_id,
            action,
            actor: row.actor,
            reason: row.reason,
            state: row.state,
        })
    }
}

const CHANGE_COLUMNS: &str =
    "change_id, account_id, action, credits_allowed, overdraft_limit, actor, reason, state";

fn changes(rows: Vec<StoredChange>) -> Result<Vec<ChangeRow>, sqlx::Error> {
    rows.into_iter().map(ChangeRow::try_from).collect()
}

/// Records a pending change that the reconciler takes over after `stuck_after`.
pub(crate) async fn insert_change(
    conn: &mut PgConnection,
    account_id: Uuid,
    action: Action,
    actor: Uuid,
    reason: &str,
    key: &Key,
    stuck_after: Duration,
) -> Result<ChangeRow, sqlx::Error> {
    let (credits_allowed, limit) = match action {
        Action::Freeze { credits_allowed } => (credits_allowed, 0),
        Action::SetOverdraftLimit { limit } => (false, limit),
        Action::Unfreeze | Action::Close | Action::ForceClose => (false, 0),
    };
    let row: StoredChange = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO account_changes (change_id, account_id, action, credits_allowed, overdraft_limit, actor, reason, \
           key_principal, key_rpc, key, state, retry_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', now() + make_interval(secs => $11)) \
         RETURNING {CHANGE_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(account_id)
    .bind(action.as_str())
    .bind(credits_allowed)
    .bind(limit)
    .bind(actor)
    .bind(reason)
    .bind(&key.principal)
    .bind(key.rpc)
    .bind(&key.key)
    .bind(seconds(stuck_after))
    .fetch_one(conn)
    .await?;
    row.try_into()
}

/// The account's pending change, if any (at most one exists).
pub(crate) async fn pending_change(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Option<ChangeRow>, sqlx::Error> {
    let row: Option<StoredChange> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANGE_COLUMNS} FROM account_changes WHERE account_id = $1 AND state = 'pending'"
    )))
    .bind(account_id)
    .fetch_optional(conn)
    .await?;
    row.map(ChangeRow::try_from).transpose()
}

/// The newest change of the account that the request with `key` asked for.
pub(crate) async fn change_by_key(
    conn: &mut PgConnection,
    account_id: Uuid,
    key: &Key,
) -> Result<Option<ChangeRow>, sqlx::Error> {
    let row: Option<StoredChange> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANGE_COLUMNS} FROM account_changes \
         WHERE account_id = $1 AND key_principal = $2 AND key_rpc = $3 AND key = $4 \
         ORDER BY requested_at DESC LIMIT 1"
    )))
    .bind(account_id)
    .bind(&key.principal)
    .bind(key.rpc)
    .bind(&key.key)
    .fetch_optional(conn)
    .await?;
    row.map(ChangeRow::try_from).transpose()
}

/// One change, locked for the rest of the transaction.
pub(crate) async fn lock_change(
    conn: &mut PgConnection,
    change_id: Uuid,
) -> Result<Option<ChangeRow>, sqlx::Error> {
    let row: Option<StoredChange> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANGE_COLUMNS} FROM account_changes WHERE change_id = $1 FOR UPDATE"
    )))
    .bind(change_id)
    .fetch_optional(conn)
    .await?;
    row.map(ChangeRow::try_from).transpose()
}

/// Marks a pending change `applied` or `abandoned` (with the ledger's reason).
pub(crate) async fn resolve_change(
    conn: &mut PgConnection,
    change_id: Uuid,
    state: &str,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE account_changes SET state = $2, outcome = $3, resolved_at = now() \
         WHERE change_id = $1 AND state = 'pending'",
    )
    .bind(change_id)
    .bind(state)
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims up to `limit` pending changes that are due (backoff as in [`claim_openings`]).
pub(crate) async fn claim_changes(
    conn: &mut PgConnection,
    limit: i64,
    base: Duration,
    max: Duration,
) -> Result<Vec<ChangeRow>, sqlx::Error> {
    let rows: Vec<StoredChange> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE account_changes SET attempts = attempts + 1, \
           retry_at = now() + make_interval(secs => least($3, $2 * power(2, least(attempts, 20)))) \
         WHERE change_id IN (SELECT change_id FROM account_changes WHERE state = 'pending' AND retry_at <= now() \
                             ORDER BY retry_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING {CHANGE_COLUMNS}"
    )))
    .bind(limit)
    .bind(seconds(base))
    .bind(seconds(max))
    .fetch_all(conn)
    .await?;
    changes(rows)
}
