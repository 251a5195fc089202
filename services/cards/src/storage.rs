//! The only module that talks SQL (besides the vault's own tables in `vault`). Functions take
//! `&mut PgConnection`: the caller owns the transaction. Queries are runtime-checked
//! (docs/adr/0006) and covered by the service tests; every value is a bound parameter.

use std::time::Duration;

use bank_platform::idempotency::Key;
use sqlx::PgConnection;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::domain::{Decline, Expiry, Status};

/// A card, with what it has spent on the current card day.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct CardRow {
    pub(crate) card_id: Uuid,
    pub(crate) seq: i64,
    pub(crate) owner_user_id: Uuid,
    pub(crate) account_id: Uuid,
    /// Stored status (see `domain::effective_status` for expiry).
    #[sqlx(try_from = "String")]
    pub(crate) status: Status,
    pub(crate) last_four: String,
    pub(crate) expiry_month: i32,
    pub(crate) expiry_year: i32,
    pub(crate) cardholder_name: String,
    pub(crate) currency: String,
    pub(crate) daily_limit: i64,
    pub(crate) per_transaction_limit: i64,
    pub(crate) time_zone: String,
    pub(crate) replaces_card_id: Option<Uuid>,
    pub(crate) replaced_by_card_id: Option<Uuid>,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) updated_at: OffsetDateTime,
    /// The current card day (today in the card's time zone).
    pub(crate) today: Date,
    /// Pending, approved and captured amounts of `today`.
    pub(crate) spent_today: i64,
}

impl CardRow {
    /// The expiry month.
    pub(crate) fn expiry(&self) -> Expiry {
        Expiry { year: self.expiry_year, month: u8::try_from(self.expiry_month).unwrap_or(12) }
    }

    /// The status now (expired when past the expiry month).
    pub(crate) fn effective_status(&self) -> Status {
        crate::domain::effective_status(self.status, self.expiry(), OffsetDateTime::now_utc())
    }
}

// Read in its own statement after any lock on the card was taken: in READ COMMITTED a new
// statement sees every authorization committed before the lock was granted (a subquery of the
// locking statement itself would not).
const CARD_COLUMNS: &str = "c.card_id, c.seq, c.owner_user_id, c.account_id, c.status, c.last_four::text AS last_four, \
     c.expiry_month, c.expiry_year, c.cardholder_name, c.currency::text AS currency, c.daily_limit, \
     c.per_transaction_limit, c.time_zone, c.replaces_card_id, c.replaced_by_card_id, c.created_at, c.updated_at, \
     (now() AT TIME ZONE c.time_zone)::date AS today, \
     (SELECT coalesce(sum(a.amount), 0)::bigint FROM authorizations a \
       WHERE a.card_id = c.card_id AND a.card_day = (now() AT TIME ZONE c.time_zone)::date \
         AND a.status IN ('pending', 'approved', 'captured')) AS spent_today";

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Locks a card (of `owner`, when given) until the transaction ends; `false` when there is no
/// such card (or it is someone else's: the same answer).
pub(crate) async fn lock_card(
    conn: &mut PgConnection,
    card_id: Uuid,
    owner: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT card_id FROM cards WHERE card_id = $1 AND ($2::uuid IS NULL OR owner_user_id = $2) FOR UPDATE",
    )
    .bind(card_id)
    .bind(owner)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// A card (of `owner`, when given).
pub(crate) async fn card(
    conn: &mut PgConnection,
    card_id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<CardRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CARD_COLUMNS} FROM cards c WHERE c.card_id = $1 AND ($2::uuid IS NULL OR c.owner_user_id = $2)"
    )))
    .bind(card_id)
    .bind(owner)
    .fetch_optional(conn)
    .await
}

/// A new card (its PAN is sealed in the vault first, in the same transaction).
#[derive(Debug)]
pub(crate) struct NewCard<'a> {
    pub(crate) card_id: Uuid,
    pub(crate) owner_user_id: Uuid,
    pub(crate) account_id: Uuid,
    pub(crate) last_four: &'a str,
    pub(crate) expiry: Expiry,
    pub(crate) cardholder_name: &'a str,
    pub(crate) currency: &'a str,
    pub(crate) daily_limit: i64,
    pub(crate) per_transaction_limit: i64,
    pub(crate) time_zone: &'a str,
    pub(crate) replaces_card_id: Option<Uuid>,
}

/// Inserts a card.
pub(crate) async fn insert_card(conn: &mut PgConnection, new: &NewCard<'_>) -> Result<CardRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO cards (card_id, owner_user_id, account_id, product, status, last_four, expiry_month, \
           expiry_year, cardholder_name, currency, daily_limit, per_transaction_limit, time_zone, replaces_card_id) \
         VALUES ($1, $2, $3, 'debit', 'active', $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(new.card_id)
    .bind(new.owner_user_id)
    .bind(new.account_id)
    .bind(new.last_four)
    .bind(i32::from(new.expiry.month))
    .bind(new.expiry.year)
    .bind(new.cardholder_name)
    .bind(new.currency)
    .bind(new.daily_limit)
    .bind(new.per_transaction_limit)
    .bind(new.time_zone)
    .bind(new.replaces_card_id)
    .execute(&mut *conn)
    .await?;
    card(conn, new.card_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Whether PostgreSQL knows the IANA time zone `name`.
pub(crate) async fn time_zone_exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// Sets a card's status (closing also stamps who closed it).
pub(crate) async fn set_status(
    conn: &mut PgConnection,
    card_id: Uuid,
    status: Status,
    stolen: bool,
    closed_by: Option<Uuid>,
) -> Result<CardRow, sqlx::Error> {
    sqlx::query(
        "UPDATE cards SET status = $2, stolen = stolen OR $3, updated_at = now(), \
           closed_at = CASE WHEN $2 = 'closed' THEN now() ELSE closed_at END, \
           closed_by = CASE WHEN $2 = 'closed' THEN $4 ELSE closed_by END \
         WHERE card_id = $1",
    )
    .bind(card_id)
    .bind(status.as_str())
    .bind(stolen)
    .bind(closed_by)
    .execute(&mut *conn)
    .await?;
    card(conn, card_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Records the replacement of `old` by `new`.
pub(crate) async fn set_replaced_by(
    conn: &mut PgConnection,
    old: Uuid,
    new: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE cards SET replaced_by_card_id = $2, updated_at = now() WHERE card_id = $1")
        .bind(old)
        .bind(new)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets a card's limits.
pub(crate) async fn set_limits(
    conn: &mut PgConnection,
    card_id: Uuid,
    daily: i64,
    per_transaction: i64,
) -> Result<CardRow, sqlx::Error> {
    sqlx::query(
        "UPDATE cards SET daily_limit = $2, per_transaction_limit = $3, updated_at = now() WHERE card_id = $1",
    )
    .bind(card_id)
    .bind(daily)
    .bind(per_transaction)
    .execute(&mut *conn)
    .await?;
    card(conn, card_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// What a card search filters on (all optional).
#[derive(Debug, Default, Clone)]
pub(crate) struct CardFilter {
    pub(crate) owner: Option<Uuid>,
    pub(crate) account: Option<Uuid>,
    pub(crate) last_four: Option<String>,
    /// Stored statuses to include (`None`: all).
    pub(crate) statuses: Option<Vec<&'static str>>,
    /// Only cards not past their expiry month / only cards past it.
    pub(crate) expired: Option<bool>,
}

const CARD_FILTER: &str = "($1::uuid IS NULL OR c.owner_user_id = $1) AND ($2::uuid IS NULL OR c.account_id = $2) \
     AND ($3::text IS NULL OR c.last_four = $3) AND ($4::text[] IS NULL OR c.status = ANY($4)) \
     AND ($5::boolean IS NULL OR $5 = ((c.expiry_year * 12 + c.expiry_month) < \
           (extract(year FROM now() AT TIME ZONE 'UTC')::int * 12 + extract(month FROM now() AT TIME ZONE 'UTC')::int)))";

/// Cards matching `filter` after keyset position `after`, oldest first.
pub(crate) async fn cards(
    conn: &mut PgConnection,
    filter: &CardFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<CardRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CARD_COLUMNS} FROM cards c WHERE {CARD_FILTER} AND c.seq > $6 ORDER BY c.seq LIMIT $7"
    )))
    .bind(filter.owner)
    .bind(filter.account)
    .bind(filter.last_four.as_deref())
    .bind(filter.statuses.as_ref())
    .bind(filter.expired)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// How many cards match `filter`.
pub(crate) async fn count_cards(conn: &mut PgConnection, filter: &CardFilter) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM cards c WHERE {CARD_FILTER}")))
        .bind(filter.owner)
        .bind(filter.account)
        .bind(filter.last_four.as_deref())
        .bind(filter.statuses.as_ref())
        .bind(filter.expired)
        .fetch_one(conn)
        .await
}

/// An authorization's lifecycle state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthStatus {
    Pending,
    Approved,
    Declined,
    Captured,
    Voided,
    Expired,
}

impl AuthStatus {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::Captured => "captured",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }
}

impl TryFrom<String> for AuthStatus {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "declined" => Ok(Self::Declined),
            "captured" => Ok(Self::Captured),
            "voided" => Ok(Self::Voided),
            "expired" => Ok(Self::Expired),
            other => Err(format!("unknown authorization status {other:?}")),
        }
    }
}

/// An authorization (a charge), declines included.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AuthRow {
    pub(crate) authorization_id: Uuid,
    pub(crate) seq: i64,
    pub(crate) card_id: Uuid,
    pub(crate) account_id: Uuid,
    pub(crate) owner_user_id: Uuid,
    #[sqlx(try_from = "String")]
    pub(crate) status: AuthStatus,
    pub(crate) decline_reason: Option<String>,
    pub(crate) currency: String,
    pub(crate) amount: i64,
    pub(crate) captured_amount: i64,
    pub(crate) refunded_amount: i64,
    pub(crate) merchant_name: String,
    pub(crate) merchant_category_code: String,
    pub(crate) merchant_id: String,
    pub(crate) merchant_city: String,
    pub(crate) merchant_country: String,
    pub(crate) hold_id: Option<Uuid>,
    pub(crate) capture_transaction_id: Option<Uuid>,
    pub(crate) key_principal: String,
    pub(crate) key_rpc: String,
    pub(crate) key: String,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) captured_at: Option<OffsetDateTime>,
    pub(crate) updated_at: OffsetDateTime,
    /// The card's last four digits.
    pub(crate) card_last_four: String,
}

impl AuthRow {
    /// The decline reason, when declined.
    pub(crate) fn decline(&self) -> Option<Decline> {
        self.decline_reason.as_deref().and_then(Decline::parse)
    }

    /// The idempotency key of the request that created it.
    pub(crate) fn key(&self) -> Option<Key> {
        let rpc = crate::rpcs::charge_rpc(&self.key_rpc)?;
        Some(Key { principal: self.key_principal.clone(), rpc, key: self.key.clone() })
    }
}

const AUTH_COLUMNS: &str = "a.authorization_id, a.seq, a.card_id, a.account_id, a.owner_user_id, a.status, \
     a.decline_reason, a.currency::text AS currency, a.amount, a.captured_amount, a.refunded_amount, a.merchant_name, \
     a.merchant_category_code::text AS merchant_category_code, a.merchant_id, a.merchant_city, a.merchant_country, \
     a.hold_id, a.capture_transaction_id, a.key_principal, a.key_rpc, a.key, a.created_at, a.expires_at, \
     a.captured_at, a.updated_at, (SELECT c.last_four::text FROM cards c WHERE c.card_id = a.card_id) AS card_last_four";

/// A new authorization: `pending` (the hold is asked for next) or `declined` with its reason.
#[derive(Debug)]
pub(crate) struct NewAuth<'a> {
    pub(crate) authorization_id: Uuid,
    pub(crate) card: &'a CardRow,
    pub(crate) decline: Option<Decline>,
    pub(crate) currency: &'a str,
    pub(crate) amount: i64,
    pub(crate) merchant_name: &'a str,
    pub(crate) merchant_category_code: &'a str,
    pub(crate) merchant_id: &'a str,
    pub(crate) merchant_city: &'a str,
    pub(crate) merchant_country: &'a str,
    pub(crate) acquirer_reference: &'a str,
    pub(crate) key: &'a Key,
    pub(crate) ttl: Duration,
    pub(crate) stuck_after: Duration,
}

/// Inserts an authorization.
pub(crate) async fn insert_authorization(
    conn: &mut PgConnection,
    new: &NewAuth<'_>,
) -> Result<AuthRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO authorizations (authorization_id, card_id, account_id, owner_user_id, status, decline_reason, \
           currency, amount, merchant_name, merchant_category_code, merchant_id, merchant_city, merchant_country, \
           acquirer_reference, card_day, key_principal, key_rpc, key, expires_at, saga_retry_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
           now() + make_interval(secs => $19), now() + make_interval(secs => $20))",
    )
    .bind(new.authorization_id)
    .bind(new.card.card_id)
    .bind(new.card.account_id)
    .bind(new.card.owner_user_id)
    .bind(if new.decline.is_some() { "declined" } else { "pending" })
    .bind(new.decline.map(Decline::as_str))
    .bind(new.currency)
    .bind(new.amount)
    .bind(new.merchant_name)
    .bind(new.merchant_category_code)
    .bind(new.merchant_id)
    .bind(new.merchant_city)
    .bind(new.merchant_country)
    .bind(new.acquirer_reference)
    .bind(new.card.today)
    .bind(&new.key.principal)
    .bind(new.key.rpc)
    .bind(&new.key.key)
    .bind(seconds(new.ttl))
    .bind(seconds(new.stuck_after))
    .execute(&mut *conn)
    .await?;
    authorization(conn, new.authorization_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// The authorization a request key created, if any.
pub(crate) async fn authorization_by_key(
    conn: &mut PgConnection,
    key: &Key,
) -> Result<Option<AuthRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AUTH_COLUMNS} FROM authorizations a WHERE a.key_principal = $1 AND a.key_rpc = $2 AND a.key = $3"
    )))
    .bind(&key.principal)
    .bind(key.rpc)
    .bind(&key.key)
    .fetch_optional(conn)
    .await
}

/// An authorization (of `card_id`, when given).
pub(crate) async fn authorization(
    conn: &mut PgConnection,
    authorization_id: Uuid,
    card_id: Option<Uuid>,
) -> Result<Option<AuthRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AUTH_COLUMNS} FROM authorizations a WHERE a.authorization_id = $1 AND ($2::uuid IS NULL OR a.card_id = $2)"
    )))
    .bind(authorization_id)
    .bind(card_id)
    .fetch_optional(conn)
    .await
}

/// Locks an authorization until the transaction ends and reads it.
pub(crate) async fn lock_authorization(
    conn: &mut PgConnection,
    authorization_id: Uuid,
) -> Result<Option<AuthRow>, sqlx::Error> {
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT authorization_id FROM authorizations WHERE authorization_id = $1 FOR UPDATE",
    )
    .bind(authorization_id)
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        Some(id) => authorization(conn, id, None).await,
        None => Ok(None),
    }
}

/// The outcome of a pending authorization.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// The hold exists.
    Approved { hold_id: Uuid },
    /// The ledger refused (no hold).
    Declined(Decline),
}

/// `pending` -> `approved` / `declined`.
pub(crate) async fn resolve(
    conn: &mut PgConnection,
    authorization_id: Uuid,
    outcome: Outcome,
) -> Result<AuthRow, sqlx::Error> {
    let (status, hold_id, reason) = match outcome {
        Outcome::Approved { hold_id } => ("approved", Some(hold_id), None),
        Outcome::Declined(reason) => ("declined", None, Some(reason.as_str())),
    };
    sqlx::query(
        "UPDATE authorizations SET status = $2, hold_id = $3, decline_reason = $4, updated_at = now() \
         WHERE authorization_id = $1 AND status = 'pending'",
    )
    .bind(authorization_id)
    .bind(status)
    .bind(hold_id)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    authorization(conn, authorization_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// `approved` -> `captured` with the captured amount and the ledger transaction.
pub(crate) async fn set_captured(
    conn: &mut PgConnection,
    authorization_id: Uuid,
    captured: i64,
    transaction_id: Option<Uuid>,
) -> Result<AuthRow, sqlx::Error> {
    sqlx::query(
        "UPDATE authorizations SET status = 'captured', captured_amount = $2, capture_transaction_id = $3, \
           captured_at = now(), updated_at = now() WHERE authorization_id = $1",
    )
    .bind(authorization_id)
    .bind(captured)
    .bind(transaction_id)
    .execute(&mut *conn)
    .await?;
    authorization(conn, authorization_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// `approved` -> `voided` / `expired`.
pub(crate) async fn set_released(
    conn: &mut PgConnection,
    authorization_id: Uuid,
    status: AuthStatus,
) -> Result<AuthRow, sqlx::Error> {
    sqlx::query("UPDATE authorizations SET status = $2, updated_at = now() WHERE authorization_id = $1")
        .bind(authorization_id)
        .bind(status.as_str())
        .execute(&mut *conn)
        .await?;
    authorization(conn, authorization_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Records a refund (idempotent by refund id) and sets the refunded total (the ledger's).
pub(crate) async fn add_refund(
    conn: &mut PgConnection,
    authorization_id: Uuid,
    refund_id: Uuid,
    amount: i64,
    transaction_id: Uuid,
    refunded_total: i64,
) -> Result<AuthRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO refunds (refund_id, authorization_id, amount, transaction_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(refund_id)
    .bind(authorization_id)
    .bind(amount)
    .bind(transaction_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE authorizations SET refunded_amount = greatest(refunded_amount, $2), updated_at = now() \
         WHERE authorization_id = $1",
    )
    .bind(authorization_id)
    .bind(refunded_total)
    .execute(&mut *conn)
    .await?;
    authorization(conn, authorization_id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

/// A card's authorizations before keyset position `before` (0: from the newest), newest first.
pub(crate) async fn charges(
    conn: &mut PgConnection,
    card_id: Uuid,
    status: Option<&'static str>,
    before: i64,
    limit: i64,
) -> Result<Vec<AuthRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AUTH_COLUMNS} FROM authorizations a WHERE a.card_id = $1 AND ($2::text IS NULL OR a.status = $2) \
         AND ($3 = 0 OR a.seq < $3) ORDER BY a.seq DESC LIMIT $4"
    )))
    .bind(card_id)
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Declined authorizations across cards, newest first.
pub(crate) async fn declines(
    conn: &mut PgConnection,
    reason: Option<&'static str>,
    card_id: Option<Uuid>,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    before: i64,
    limit: i64,
) -> Result<Vec<AuthRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AUTH_COLUMNS} FROM authorizations a WHERE a.status = 'declined' \
         AND ($1::text IS NULL OR a.decline_reason = $1) AND ($2::uuid IS NULL OR a.card_id = $2) \
         AND ($3::timestamptz IS NULL OR a.created_at >= $3) AND ($4::timestamptz IS NULL OR a.created_at < $4) \
         AND ($5 = 0 OR a.seq < $5) ORDER BY a.seq DESC LIMIT $6"
    )))
    .bind(reason)
    .bind(card_id)
    .bind(from)
    .bind(to)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Claims up to `limit` pending authorizations that are due, pushing their next attempt back
/// (exponentially, from `base` up to `max`); replicas skip each other's claims.
pub(crate) async fn claim_pending(
    conn: &mut PgConnection,
    limit: i64,
    base: Duration,
    max: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE authorizations SET saga_attempts = saga_attempts + 1, \
           saga_retry_at = now() + make_interval(secs => least($3, $2 * power(2, least(saga_attempts, 20)))) \
         WHERE authorization_id IN (SELECT authorization_id FROM authorizations \
           WHERE status = 'pending' AND saga_retry_at <= now() ORDER BY saga_retry_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING authorization_id",
    )
    .bind(limit)
    .bind(seconds(base))
    .bind(seconds(max))
    .fetch_all(conn)
    .await
}

/// Approved authorizations past their expiry.
pub(crate) async fn expired_approvals(conn: &mut PgConnection, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT authorization_id FROM authorizations WHERE status = 'approved' AND expires_at <= now() \
         ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Approved, uncaptured authorizations of a card.
pub(crate) async fn open_approvals(conn: &mut PgConnection, card_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT authorization_id FROM authorizations WHERE card_id = $1 AND status = 'approved'",
    )
    .bind(card_id)
    .fetch_all(conn)
    .await
}

/// Reveals by `user` within the last hour.
pub(crate) async fn recent_reveals(conn: &mut PgConnection, user: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pan_reveals WHERE user_id = $1 AND revealed_at > now() - interval '1 hour'",
    )
    .bind(user)
    .fetch_one(conn)
    .await
}

/// Records a reveal.
pub(crate) async fn insert_reveal(
    conn: &mut PgConnection,
    card_id: Uuid,
    user: Uuid,
    ip_address: &str,
    user_agent: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pan_reveals (reveal_id, card_id, user_id, ip_address, user_agent) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(card_id)
    .bind(user)
    .bind(ip_address)
    .bind(user_agent)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an administrative action.
pub(crate) async fn insert_admin_action(
    conn: &mut PgConnection,
    actor: Uuid,
    action: &str,
    target: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_actions (action_id, actor, action, target, reason) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}
