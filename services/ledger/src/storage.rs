//! The only module that talks SQL. Functions take `&mut PgConnection`: the caller owns the
//! transaction. Queries are runtime-checked (docs/adr/0006) and covered by the service tests.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

/// A ledger account with its balances.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    /// Id (the accounts-service id for customer accounts).
    pub account_id: Uuid,
    /// `customer` or `system`.
    pub kind: String,
    /// For system accounts.
    pub system_type: Option<String>,
    /// For customer accounts.
    pub account_number: Option<String>,
    /// For customer accounts.
    pub owner_user_id: Option<Uuid>,
    /// ISO 4217.
    pub currency: String,
    /// `active`, `frozen`, `closed`.
    pub status: String,
    /// While frozen.
    pub credits_allowed: bool,
    /// Minor units.
    pub overdraft_limit: i64,
    /// Posted balance.
    pub posted: i64,
    /// Sum of active holds.
    pub held: i64,
    /// Entries so far (chain position).
    pub entry_count: i64,
    /// Hash of the newest entry.
    pub last_hash: String,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Low-balance threshold (minor units), if set.
    pub low_balance_threshold: Option<i64>,
}

const ACCOUNT_COLUMNS: &str = "account_id, kind, system_type, account_number, owner_user_id, currency::text AS currency, \
                               status, credits_allowed, overdraft_limit, posted, held, entry_count, last_hash, created_at, \
                               low_balance_threshold";

/// Locks the given accounts (already sorted) for the rest of the transaction, in id order.
pub async fn lock_accounts(
    conn: &mut PgConnection,
    sorted_ids: &[Uuid],
) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE account_id = ANY ($1) ORDER BY account_id FOR UPDATE"
    )))
    .bind(sorted_ids)
    .fetch_all(conn)
    .await
}

/// A locked account row, and whether the caller's idempotency key was already stored.
#[derive(Debug, sqlx::FromRow)]
struct LockedRow {
    seen: bool,
    #[sqlx(flatten)]
    account: AccountRow,
}

/// Locks the source and the destination of a transfer (given by id or by number) in account-id
/// order, and reads in the same statement whether the idempotency key is already stored (a
/// replay). The key is not claimed here: [`write_transfer`] inserts it with the response, and a
/// concurrent first use of the same key makes that insert fail with a unique violation, which
/// [`crate::posting::is_retryable`] retries — the retry sees the stored key (ADR 0028). Answers
/// `None` when no account matched (the caller asks [`bank_platform::idempotency::existing`]).
pub async fn lock_transfer_accounts(
    conn: &mut PgConnection,
    key: &bank_platform::idempotency::Key,
    from: Uuid,
    to_id: Option<Uuid>,
    to_number: Option<&str>,
) -> Result<(Option<bool>, Vec<AccountRow>), sqlx::Error> {
    let rows: Vec<LockedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE principal = $4 AND rpc = $5 AND key = $6) AS seen, \
           {ACCOUNT_COLUMNS} FROM ledger_accounts \
         WHERE account_id = $1 OR account_id = $2 OR (kind = 'customer' AND account_number = $3) \
         ORDER BY account_id FOR UPDATE"
    )))
    .bind(from)
    .bind(to_id)
    .bind(to_number)
    .bind(&key.principal)
    .bind(key.rpc)
    .bind(&key.key)
    .fetch_all(conn)
    .await?;
    let seen = rows.first().map(|r| r.seen);
    Ok((seen, rows.into_iter().map(|r| r.account).collect()))
}

/// One account, unlocked.
pub async fn account(conn: &mut PgConnection, account_id: Uuid) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE account_id = $1"
    )))
    .bind(account_id)
    .fetch_optional(conn)
    .await
}

/// System accounts (optionally of one currency) by type and currency, `offset` rows in (a small set:
/// one per type and currency, never deleted, so offsets are stable).
pub async fn system_accounts(
    conn: &mut PgConnection,
    currency: Option<&str>,
    offset: i64,
    limit: i64,
) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE kind = 'system' AND ($1::text IS NULL OR currency = $1) \
         ORDER BY system_type, currency OFFSET $2 LIMIT $3"
    )))
    .bind(currency)
    .bind(offset)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Creates a customer account unless the id exists; answers the stored row either way.
pub async fn insert_customer(
    conn: &mut PgConnection,
    account_id: Uuid,
    number: &str,
    owner: Uuid,
    currency: &str,
) -> Result<AccountRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_accounts (account_id, kind, account_number, owner_user_id, currency) \
         VALUES ($1, 'customer', $2, $3, $4) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account_id)
    .bind(number)
    .bind(owner)
    .bind(currency)
    .execute(&mut *conn)
    .await?;
    account(conn, account_id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// The system account of `system_type` in `currency`, created on first use.
pub async fn system_account(
    conn: &mut PgConnection,
    system_type: &str,
    currency: &str,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_accounts (account_id, kind, system_type, currency) VALUES ($1, 'system', $2, $3) \
         ON CONFLICT (system_type, currency) WHERE kind = 'system' DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(system_type)
    .bind(currency)
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar(
        "SELECT account_id FROM ledger_accounts WHERE kind = 'system' AND system_type = $1 AND currency = $2",
    )
    .bind(system_type)
    .bind(currency)
    .fetch_one(conn)
    .await
}

/// An internal transfer's own rows, written with its posting by [`write_transfer`].
#[derive(Debug)]
pub struct TransferWrite<'a> {
    /// The transfer.
    pub transfer_id: Uuid,
    /// Debited account.
    pub from: Uuid,
    /// Credited account.
    pub to: Uuid,
    /// Minor units.
    pub amount: i64,
    /// The idempotency key, stored here with the request's hash and the response.
    pub key: &'a bank_platform::idempotency::Key,
    /// The request's hash, stored with the key.
    pub request_hash: &'a [u8],
    /// The encoded response stored under the key.
    pub response: &'a [u8],
    /// The `TransferPosted` event.
    pub event: &'a bank_platform::outbox::Event,
}

/// Writes a transfer whole in one statement (one round trip): the posting (transaction, entries,
/// the accounts' balances and chain heads, as [`write_posting`]), the transfer row, its outbox
/// event and the idempotency key with its response. A key stored meanwhile by a concurrent first
/// use fails the statement with a unique violation on `idempotency_keys_pkey` (retryable).
///
/// # Errors
/// The database failed.
pub async fn write_transfer(
    conn: &mut PgConnection,
    transaction: &NewTransaction<'_>,
    rows: &PostingRows,
    transfer: &TransferWrite<'_>,
) -> Result<(), sqlx::Error> {
    bind_posting(sqlx::query(sqlx::AssertSqlSafe(WRITE_TRANSFER.as_str())), transaction, rows)
        .bind(transfer.transfer_id)
        .bind(transfer.from)
        .bind(transfer.to)
        .bind(transfer.amount)
        .bind(&transfer.key.principal)
        .bind(transfer.key.rpc)
        .bind(&transfer.key.key)
        .bind(transfer.response)
        .bind(transfer.event.event_id)
        .bind(&transfer.event.event_type)
        .bind(&transfer.event.subject)
        .bind(&transfer.event.traceparent)
        .bind(&transfer.event.payload)
        .bind(transfer.request_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// One line of an account's history.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntryRow {
    /// Entry id.
    pub entry_id: Uuid,
    /// Its transaction.
    pub transaction_id: Uuid,
    /// The account.
    pub account_id: Uuid,
    /// Transaction kind.
    pub kind: String,
    /// Signed minor units.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Balance after.
    pub balance_after: i64,
    /// Description.
    pub description: String,
    /// When.
    pub posted_at: OffsetDateTime,
    /// Global sequence.
    pub sequence: i64,
    /// Chain position.
    pub account_seq: i64,
    /// Previous hash.
    pub previous_hash: String,
    /// Hash.
    pub entry_hash: String,
}

const ENTRY_COLUMNS: &str = "e.entry_id, e.transaction_id, e.account_id, t.kind, e.amount, e.currency::text AS currency, \
                             e.balance_after, t.description, e.posted_at, e.sequence, e.account_seq, e.previous_hash, \
                             e.entry_hash";

/// Sort orders of an account's history (an allowlist: each maps to constant SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOrder {
    /// Newest first.
    PostedAtDesc,
    /// Oldest first.
    PostedAtAsc,
    /// Largest absolute amount first.
    AmountDesc,
    /// Smallest absolute amount first.
    AmountAsc,
}

impl EntryOrder {
    /// The keyset condition (rows after the cursor entry: sequence `$8`, posted_at `$9`, |amount| `$10`) and the
    /// ORDER BY clause. Constant text only: no value ever reaches SQL as text.
    const fn sql(self) -> (&'static str, &'static str) {
        match self {
            Self::PostedAtDesc => {
                ("(e.posted_at, e.sequence) < ($9, $8)", "e.posted_at DESC, e.sequence DESC")
            }
            Self::PostedAtAsc => ("(e.posted_at, e.sequence) > ($9, $8)", "e.posted_at ASC, e.sequence ASC"),
            Self::AmountDesc => {
                ("(abs(e.amount), e.sequence) < ($10, $8)", "abs(e.amount) DESC, e.sequence DESC")
            }
            Self::AmountAsc => {
                ("(abs(e.amount), e.sequence) > ($10, $8)", "abs(e.amount) ASC, e.sequence ASC")
            }
        }
    }
}

/// Filters of an account's history (values travel as bind parameters).
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryFilter {
    /// Inclusive lower bound of `posted_at`.
    pub from: Option<OffsetDateTime>,
    /// Exclusive upper bound of `posted_at`.
    pub to: Option<OffsetDateTime>,
    /// `Some(true)`: credits only; `Some(false)`: debits only.
    pub credits: Option<bool>,
    /// Minimum absolute amount.
    pub min_abs: Option<i64>,
    /// Maximum absolute amount.
    pub max_abs: Option<i64>,
}

/// The sort key of the entry `sequence` of `account_id` (a page cursor): (posted_at, |amount|).
pub async fn entry_cursor(
    conn: &mut PgConnection,
    account_id: Uuid,
    sequence: i64,
) -> Result<Option<(OffsetDateTime, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT posted_at, abs(amount) FROM entries WHERE account_id = $1 AND sequence = $2")
        .bind(account_id)
        .bind(sequence)
        .fetch_optional(conn)
        .await
}

/// One page of an account's entries in `order`, after the cursor entry `after` (its sequence and
/// sort key, from [`entry_cursor`]), filtered.
pub async fn entries(
    conn: &mut PgConnection,
    account_id: Uuid,
    order: EntryOrder,
    after: Option<(i64, OffsetDateTime, i64)>,
    limit: i64,
    filter: &EntryFilter,
) -> Result<Vec<EntryRow>, sqlx::Error> {
    let (keyset, order_by) = order.sql();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM entries e JOIN transactions t USING (transaction_id) \
         WHERE e.account_id = $1 \
           AND ($3::timestamptz IS NULL OR e.posted_at >= $3) AND ($4::timestamptz IS NULL OR e.posted_at < $4) \
           AND ($5::bool IS NULL OR (e.amount > 0) = $5) \
           AND ($6::bigint IS NULL OR abs(e.amount) >= $6) AND ($7::bigint IS NULL OR abs(e.amount) <= $7) \
           AND ($8::bigint IS NULL OR {keyset}) \
         ORDER BY {order_by} LIMIT $2"
    )))
    .bind(account_id)
    .bind(limit)
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.credits)
    .bind(filter.min_abs)
    .bind(filter.max_abs)
    .bind(after.map(|(sequence, _, _)| sequence))
    .bind(after.map(|(_, posted_at, _)| posted_at))
    .bind(after.map(|(_, _, abs)| abs))
    .fetch_all(conn)
    .await
}

/// The posted balance of an account from the journal: the sum of its entries before `as_of`.
pub async fn posted_before(
    conn: &mut PgConnection,
    account_id: Uuid,
    as_of: OffsetDateTime,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0)::bigint FROM entries WHERE account_id = $1 AND posted_at < $2",
    )
    .bind(account_id)
    .bind(as_of)
    .fetch_one(conn)
    .await
}

/// Per consecutive pair of `boundaries` (ascending): (start, end, opening, credits, debits, count).
pub async fn period_summaries(
    conn: &mut PgConnection,
    account_id: Uuid,
    boundaries: &[OffsetDateTime],
) -> Result<Vec<(OffsetDateTime, OffsetDateTime, i64, i64, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "WITH b AS ( \
           SELECT t AS start_at, lead(t) OVER (ORDER BY t) AS end_at FROM unnest($2::timestamptz[]) AS t \
         ) \
         SELECT b.start_at, b.end_at, \
           (SELECT COALESCE(sum(o.amount), 0)::bigint FROM entries o \
             WHERE o.account_id = $1 AND o.posted_at < b.start_at) AS opening, \
           COALESCE(sum(e.amount) FILTER (WHERE e.amount > 0), 0)::bigint AS credits, \
           COALESCE(-sum(e.amount) FILTER (WHERE e.amount < 0), 0)::bigint AS debits, \
           count(e.entry_id) AS entry_count \
         FROM b LEFT JOIN entries e \
           ON e.account_id = $1 AND e.posted_at >= b.start_at AND e.posted_at < b.end_at \
         WHERE b.end_at IS NOT NULL \
         GROUP BY b.start_at, b.end_at ORDER BY b.start_at",
    )
    .bind(account_id)
    .bind(boundaries)
    .fetch_all(conn)
    .await
}

/// Sets the low-balance threshold of a locked account.
pub async fn set_low_balance_threshold(
    conn: &mut PgConnection,
    account_id: Uuid,
    threshold: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ledger_accounts SET low_balance_threshold = $2 WHERE account_id = $1")
        .bind(account_id)
        .bind(threshold)
        .execute(conn)
        .await?;
    Ok(())
}

/// A journal transaction's header.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransactionRow {
    /// Id.
    pub transaction_id: Uuid,
    /// Kind.
    pub kind: String,
    /// Description.
    pub description: String,
    /// When.
    pub posted_at: OffsetDateTime,
    /// Principal.
    pub initiated_by: String,
    /// Originating object.
    pub reference_id: String,
    /// For a reversal: what it reverses.
    pub reverses_transaction_id: Option<Uuid>,
    /// The reversal of this transaction, if any.
    pub reversed_by_transaction_id: Option<Uuid>,
    /// Administrator's reason.
    pub reason: String,
}

/// A transaction with the id of its reversal, if any.
pub async fn transaction(
    conn: &mut PgConnection,
    transaction_id: Uuid,
) -> Result<Option<TransactionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.transaction_id, t.kind, t.description, t.posted_at, t.initiated_by, t.reference_id, \
           t.reverses_transaction_id, r.transaction_id AS reversed_by_transaction_id, t.reason \
         FROM transactions t LEFT JOIN transactions r ON r.reverses_transaction_id = t.transaction_id \
         WHERE t.transaction_id = $1",
    )
    .bind(transaction_id)
    .fetch_optional(conn)
    .await
}

/// A transaction's postings in entry order: (entry, account, amount, currency, balance after).
pub async fn postings(
    conn: &mut PgConnection,
    transaction_id: Uuid,
) -> Result<Vec<(Uuid, Uuid, i64, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT entry_id, account_id, amount, currency::text, balance_after FROM entries \
         WHERE transaction_id = $1 ORDER BY sequence",
    )
    .bind(transaction_id)
    .fetch_all(conn)
    .await
}

/// An internal transfer as its parties see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransferRow {
    /// Id.
    pub transfer_id: Uuid,
    /// Keyset position.
    pub seq: i64,
    /// Debited account.
    pub from_account_id: Uuid,
    /// Its owner.
    pub from_owner: Option<Uuid>,
    /// Credited account.
    pub to_account_id: Uuid,
    /// Its owner.
    pub to_owner: Option<Uuid>,
    /// Its number.
    pub to_account_number: Option<String>,
    /// Minor units.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Description.
    pub description: String,
    /// Journal transaction.
    pub transaction_id: Uuid,
    /// Its reversal, if any.
    pub reversed_by: Option<Uuid>,
    /// Created.
    pub created_at: OffsetDateTime,
}

const TRANSFER_SELECT: &str = "SELECT tr.transfer_id, tr.seq, tr.from_account_id, f.owner_user_id AS from_owner, \
    tr.to_account_id, d.owner_user_id AS to_owner, d.account_number AS to_account_number, tr.amount, \
    tr.currency::text AS currency, tr.description, tr.transaction_id, r.transaction_id AS reversed_by, tr.created_at \
    FROM transfers tr JOIN ledger_accounts f ON f.account_id = tr.from_account_id \
    JOIN ledger_accounts d ON d.account_id = tr.to_account_id \
    LEFT JOIN transactions r ON r.reverses_transaction_id = tr.transaction_id";

/// A transfer that `user` sent or received.
pub async fn transfer_for(
    conn: &mut PgConnection,
    transfer_id: Uuid,
    user: Uuid,
) -> Result<Option<TransferRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{TRANSFER_SELECT} WHERE tr.transfer_id = $1 AND (f.owner_user_id = $2 OR d.owner_user_id = $2)"
    )))
    .bind(transfer_id)
    .bind(user)
    .fetch_optional(conn)
    .await
}

/// Transfers that `user` sent or received (only those touching `account`, when given), newest
/// first, with `seq < before`. Each side is an index scan per account of the user (never a scan of
/// every transfer), merged and deduplicated (a transfer between two own accounts is on both sides).
pub async fn transfers_for(
    conn: &mut PgConnection,
    user: Uuid,
    account: Option<Uuid>,
    before: i64,
    limit: i64,
) -> Result<Vec<TransferRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH mine AS ( \
           SELECT account_id FROM ledger_accounts \
           WHERE owner_user_id = $1 AND ($3::uuid IS NULL OR account_id = $3) \
         ), page AS ( \
           (SELECT s.seq FROM mine, LATERAL (SELECT seq FROM transfers \
              WHERE from_account_id = mine.account_id AND seq < $2 ORDER BY seq DESC LIMIT $4) s) \
           UNION \
           (SELECT s.seq FROM mine, LATERAL (SELECT seq FROM transfers \
              WHERE to_account_id = mine.account_id AND seq < $2 ORDER BY seq DESC LIMIT $4) s) \
         ) \
         {TRANSFER_SELECT} WHERE tr.seq IN (SELECT seq FROM page) ORDER BY tr.seq DESC LIMIT $4"
    )))
    .bind(user)
    .bind(before)
    .bind(account)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// An account's whole chain, oldest first (verification).
pub async fn chain(conn: &mut PgConnection, account_id: Uuid) -> Result<Vec<EntryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM entries e JOIN transactions t USING (transaction_id) \
         WHERE e.account_id = $1 ORDER BY e.account_seq"
    )))
    .bind(account_id)
    .fetch_all(conn)
    .await
}

/// Every account's chain head: (account, entry count, last hash).
pub async fn chain_heads(conn: &mut PgConnection) -> Result<Vec<(Uuid, i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT account_id, entry_count, last_hash FROM ledger_accounts").fetch_all(conn).await
}

/// Every entry, by account and chain position, streamed.
pub fn all_entries(conn: &mut PgConnection) -> futures::stream::BoxStream<'_, Result<EntryRow, sqlx::Error>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM entries e JOIN transactions t USING (transaction_id) \
         ORDER BY e.account_id, e.account_seq"
    )))
    .fetch(conn)
}

/// Transactions whose postings do not sum to zero per currency: (transaction, currency, sum).
pub async fn unbalanced_transactions(
    conn: &mut PgConnection,
) -> Result<Vec<(Uuid, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT transaction_id, currency::text, sum(amount)::bigint FROM entries \
         GROUP BY transaction_id, currency HAVING sum(amount) <> 0",
    )
    .fetch_all(conn)
    .await
}

/// Currencies whose balances do not sum to zero: (currency, sum).
pub async fn unbalanced_currencies(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency::text, sum(posted)::bigint FROM ledger_accounts GROUP BY currency HAVING sum(posted) <> 0",
    )
    .fetch_all(conn)
    .await
}

/// Accounts whose maintained balance differs from the sum of their entries: (account, posted, sum).
pub async fn drifted_balances(conn: &mut PgConnection) -> Result<Vec<(Uuid, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.account_id, a.posted, COALESCE(sum(e.amount), 0)::bigint FROM ledger_accounts a \
         LEFT JOIN entries e ON e.account_id = a.account_id GROUP BY a.account_id, a.posted \
         HAVING a.posted <> COALESCE(sum(e.amount), 0)",
    )
    .fetch_all(conn)
    .await
}

/// How many transactions exist.
pub async fn transaction_count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM transactions").fetch_one(conn).await
}

/// Sets status and credit permission of a locked account.
pub async fn set_status(
    conn: &mut PgConnection,
    account_id: Uuid,
    status: &str,
    credits_allowed: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ledger_accounts SET status = $2, credits_allowed = $3 WHERE account_id = $1")
        .bind(account_id)
        .bind(status)
        .bind(credits_allowed)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets the overdraft limit of a locked account.
pub async fn set_overdraft_limit(
    conn: &mut PgConnection,
    account_id: Uuid,
    limit: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ledger_accounts SET overdraft_limit = $2 WHERE account_id = $1")
        .bind(account_id)
        .bind(limit)
        .execute(conn)
        .await?;
    Ok(())
}

/// A hold.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HoldRow {
    /// Id.
    pub hold_id: Uuid,
    /// The account.
    pub account_id: Uuid,
    /// Reserved minor units.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Captured so far.
    pub captured_amount: i64,
    /// Refunded so far.
    pub refunded_amount: i64,
    /// `active`, `captured`, `voided`, `expired`.
    pub status: String,
    /// System account type the capture goes to.
    pub counterparty: String,
    /// The creating principal.
    pub created_by: String,
    /// The creator's reference.
    pub reference_id: String,
    /// Description.
    pub description: String,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// The capture's transaction.
    pub capture_transaction_id: Option<Uuid>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

const HOLD_COLUMNS: &str = "hold_id, account_id, amount, currency::text AS currency, captured_amount, refunded_amount, \
                            status, counterparty, created_by, reference_id, description, expires_at, \
                            capture_transaction_id, created_at, updated_at";

/// A new hold.
#[derive(Debug)]
pub struct NewHold<'a> {
    /// Id.
    pub hold_id: Uuid,
    /// Account.
    pub account_id: Uuid,
    /// Minor units.
    pub amount: i64,
    /// Currency.
    pub currency: &'a str,
    /// Capture counterparty.
    pub counterparty: &'a str,
    /// Creator.
    pub created_by: &'a str,
    /// Creator's reference.
    pub reference_id: &'a str,
    /// Description.
    pub description: &'a str,
    /// Expiry.
    pub expires_at: OffsetDateTime,
}

/// Inserts a hold unless the creator's reference exists; `None` when it did.
pub async fn insert_hold(
    conn: &mut PgConnection,
    hold: &NewHold<'_>,
) -> Result<Option<HoldRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO holds (hold_id, account_id, amount, currency, status, counterparty, created_by, reference_id, \
           description, expires_at) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8, $9) \
         ON CONFLICT (created_by, reference_id) DO NOTHING RETURNING {HOLD_COLUMNS}"
    )))
    .bind(hold.hold_id)
    .bind(hold.account_id)
    .bind(hold.amount)
    .bind(hold.currency)
    .bind(hold.counterparty)
    .bind(hold.created_by)
    .bind(hold.reference_id)
    .bind(hold.description)
    .bind(hold.expires_at)
    .fetch_optional(conn)
    .await
}

/// A hold by id (`lock`: row lock for the rest of the transaction).
pub async fn hold(
    conn: &mut PgConnection,
    hold_id: Uuid,
    lock: bool,
) -> Result<Option<HoldRow>, sqlx::Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = $1{suffix}"
    )))
    .bind(hold_id)
    .fetch_optional(conn)
    .await
}

/// A hold by its creator's reference.
pub async fn hold_by_reference(
    conn: &mut PgConnection,
    created_by: &str,
    reference_id: &str,
) -> Result<Option<HoldRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE created_by = $1 AND reference_id = $2"
    )))
    .bind(created_by)
    .bind(reference_id)
    .fetch_optional(conn)
    .await
}

/// Moves an account's held amount by `delta`.
pub async fn add_held(conn: &mut PgConnection, account_id: Uuid, delta: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("UPDATE ledger_accounts SET held = held + $2 WHERE account_id = $1 RETURNING held")
        .bind(account_id)
        .bind(delta)
        .fetch_one(conn)
        .await
}

/// Ends a hold (`captured`, `voided`, `expired`), recording a capture.
pub async fn finish_hold(
    conn: &mut PgConnection,
    hold_id: Uuid,
    status: &str,
    captured: i64,
    capture_transaction: Option<Uuid>,
) -> Result<HoldRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE holds SET status = $2, captured_amount = $3, capture_transaction_id = $4, updated_at = now() \
         WHERE hold_id = $1 RETURNING {HOLD_COLUMNS}"
    )))
    .bind(hold_id)
    .bind(status)
    .bind(captured)
    .bind(capture_transaction)
    .fetch_one(conn)
    .await
}

/// A refund already made under `reference`: (amount, transaction).
pub async fn refund(
    conn: &mut PgConnection,
    hold_id: Uuid,
    reference: &str,
) -> Result<Option<(i64, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT amount, transaction_id FROM hold_refunds WHERE hold_id = $1 AND refund_reference_id = $2",
    )
    .bind(hold_id)
    .bind(reference)
    .fetch_optional(conn)
    .await
}

/// Records a refund and adds it to the hold.
pub async fn insert_refund(
    conn: &mut PgConnection,
    hold_id: Uuid,
    reference: &str,
    amount: i64,
    transaction_id: Uuid,
) -> Result<HoldRow, sqlx::Error> {
    sqlx::query("INSERT INTO hold_refunds (hold_id, refund_reference_id, amount, transaction_id) VALUES ($1, $2, $3, $4)")
        .bind(hold_id)
        .bind(reference)
        .bind(amount)
        .bind(transaction_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE holds SET refunded_amount = refunded_amount + $2, updated_at = now() WHERE hold_id = $1 \
         RETURNING {HOLD_COLUMNS}"
    )))
    .bind(hold_id)
    .bind(amount)
    .fetch_one(conn)
    .await
}

/// Active holds past their expiry (oldest first).
pub async fn expired_holds(conn: &mut PgConnection, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT hold_id FROM holds WHERE status = 'active' AND expires_at <= now() ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A journal transaction's header.
#[derive(Debug)]
pub struct NewTransaction<'a> {
    /// Id.
    pub transaction_id: Uuid,
    /// Kind.
    pub kind: &'a str,
    /// Description.
    pub description: &'a str,
    /// When.
    pub posted_at: OffsetDateTime,
    /// Principal.
    pub initiated_by: &'a str,
    /// Originating object.
    pub reference_id: &'a str,
    /// Administrator's reason.
    pub reason: &'a str,
    /// Currency of every entry.
    pub currency: &'a str,
    /// For a reversal: the transaction it reverses.
    pub reverses: Option<Uuid>,
}

/// The entries of a posting and the accounts' new states, as column arrays.
#[derive(Debug, Default)]
pub struct PostingRows {
    entry_ids: Vec<Uuid>,
    entry_accounts: Vec<Uuid>,
    amounts: Vec<i64>,
    balances_after: Vec<i64>,
    seqs: Vec<i64>,
    previous_hashes: Vec<String>,
    hashes: Vec<String>,
    account_ids: Vec<Uuid>,
    account_posted: Vec<i64>,
    account_counts: Vec<i64>,
    account_hashes: Vec<String>,
}

impl PostingRows {
    /// Adds an entry.
    #[allow(clippy::too_many_arguments)]
    pub fn entry(
        &mut self,
        entry_id: Uuid,
        account_id: Uuid,
        amount: i64,
        balance_after: i64,
        seq: i64,
        previous_hash: &str,
        hash: &str,
    ) {
        self.entry_ids.push(entry_id);
        self.entry_accounts.push(account_id);
        self.amounts.push(amount);
        self.balances_after.push(balance_after);
        self.seqs.push(seq);
        self.previous_hashes.push(previous_hash.to_owned());
        self.hashes.push(hash.to_owned());
    }

    /// Adds an account's final state (once per account).
    pub fn account(&mut self, account_id: Uuid, posted: i64, entry_count: i64, last_hash: &str) {
        self.account_ids.push(account_id);
        self.account_posted.push(posted);
        self.account_counts.push(entry_count);
        self.account_hashes.push(last_hash.to_owned());
    }
}

/// Writes a transaction, its entries and the accounts' new balances and chain heads in one
/// statement (one round trip). The caller holds the accounts' row locks.
pub async fn write_posting(
    conn: &mut PgConnection,
    transaction: &NewTransaction<'_>,
    rows: &PostingRows,
) -> Result<(), sqlx::Error> {
    bind_posting(sqlx::query(sqlx::AssertSqlSafe(WRITE_POSTING.as_str())), transaction, rows)
        .execute(conn)
        .await?;
    Ok(())
}

/// A posting's rows ($1..$20, bound by [`bind_posting`]): the transaction and its entries ...
const POSTING_CTES: &str = "WITH tx AS ( \
       INSERT INTO transactions (transaction_id, kind, description, posted_at, initiated_by, reference_id, reason, \
         reverses_transaction_id) \
       VALUES ($1, $2, $3, $4, $5, $6, $7, $20) \
     ), ent AS ( \
       INSERT INTO entries (entry_id, transaction_id, account_id, amount, currency, balance_after, account_seq, \
         previous_hash, entry_hash, posted_at) \
       SELECT e.entry_id, $1, e.account_id, e.amount, $8, e.balance_after, e.seq, e.previous_hash, e.entry_hash, $4 \
       FROM unnest($9::uuid[], $10::uuid[], $11::bigint[], $12::bigint[], $13::bigint[], $14::text[], $15::text[]) \
         AS e(entry_id, account_id, amount, balance_after, seq, previous_hash, entry_hash) \
     )";

/// ... and the accounts' new balances and chain heads.
const POSTING_ACCOUNTS: &str = "UPDATE ledger_accounts a \
       SET posted = v.posted, entry_count = v.entry_count, last_hash = v.last_hash \
     FROM unnest($16::uuid[], $17::bigint[], $18::bigint[], $19::text[]) AS v(account_id, posted, entry_count, last_hash) \
     WHERE a.account_id = v.account_id";

/// [`write_posting`]'s statement.
static WRITE_POSTING: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{POSTING_CTES} {POSTING_ACCOUNTS}"));

/// [`write_transfer`]'s statement: the posting, the transfer row ($21..$24), its outbox event
/// ($29..$33) and the idempotency key ($25..$27) with the request's hash ($34) and the response
/// ($28).
static WRITE_TRANSFER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{POSTING_CTES}, acc AS ({POSTING_ACCOUNTS}), t AS ( \
           INSERT INTO transfers (transfer_id, from_account_id, to_account_id, amount, currency, description, \
             transaction_id, initiated_by) VALUES ($21, $22, $23, $24, $8, $3, $1, $5) \
         ), o AS ( \
           INSERT INTO outbox (event_id, event_type, subject, traceparent, payload) \
           VALUES ($29, $30, $31, $32, $33) \
         ) \
         INSERT INTO idempotency_keys (principal, rpc, key, request_hash, response) VALUES ($25, $26, $27, $34, $28)"
    )
});

/// Binds $1..$20 of [`POSTING_CTES`] and [`POSTING_ACCOUNTS`].
fn bind_posting<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    transaction: &'q NewTransaction<'_>,
    rows: &'q PostingRows,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(transaction.transaction_id)
        .bind(transaction.kind)
        .bind(transaction.description)
        .bind(transaction.posted_at)
        .bind(transaction.initiated_by)
        .bind(transaction.reference_id)
        .bind(transaction.reason)
        .bind(transaction.currency)
        .bind(&rows.entry_ids)
        .bind(&rows.entry_accounts)
        .bind(&rows.amounts)
        .bind(&rows.balances_after)
        .bind(&rows.seqs)
        .bind(&rows.previous_hashes)
        .bind(&rows.hashes)
        .bind(&rows.account_ids)
        .bind(&rows.account_posted)
        .bind(&rows.account_counts)
        .bind(&rows.account_hashes)
        .bind(transaction.reverses)
}
