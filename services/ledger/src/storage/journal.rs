//! The journal as read: an account's history (keyset pages in allowlisted orders, filters),
//! historical balances and period summaries, transactions and their postings, transfers as their
//! parties see them, and the integrity queries (chains, sums, drift).

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{Original, TransactionKind, chain::Link};

/// One line of an account's history.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EntryRow {
    /// Entry id.
    pub(crate) entry_id: Uuid,
    /// Its transaction.
    pub(crate) transaction_id: Uuid,
    /// The account.
    pub(crate) account_id: Uuid,
    /// Transaction kind.
    pub(crate) kind: String,
    /// Signed minor units.
    pub(crate) amount: i64,
    /// Currency.
    pub(crate) currency: String,
    /// Balance after.
    pub(crate) balance_after: i64,
    /// Description.
    pub(crate) description: String,
    /// When.
    pub(crate) posted_at: OffsetDateTime,
    /// Global sequence.
    pub(crate) sequence: i64,
    /// Chain position.
    pub(crate) account_seq: i64,
    /// Previous hash.
    pub(crate) previous_hash: String,
    /// Hash.
    pub(crate) entry_hash: String,
}

const ENTRY_COLUMNS: &str = "e.entry_id, e.transaction_id, e.account_id, t.kind, e.amount, e.currency::text AS currency, \
                             e.balance_after, t.description, e.posted_at, e.sequence, e.account_seq, e.previous_hash, \
                             e.entry_hash";

/// Sort orders of an account's history (an allowlist: each maps to constant SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryOrder {
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
pub(crate) struct EntryFilter {
    /// Inclusive lower bound of `posted_at`.
    pub(crate) from: Option<OffsetDateTime>,
    /// Exclusive upper bound of `posted_at`.
    pub(crate) to: Option<OffsetDateTime>,
    /// `Some(true)`: credits only; `Some(false)`: debits only.
    pub(crate) credits: Option<bool>,
    /// Minimum absolute amount.
    pub(crate) min_abs: Option<i64>,
    /// Maximum absolute amount.
    pub(crate) max_abs: Option<i64>,
}

/// The sort key of the entry `sequence` of `account_id` (a page cursor): (posted_at, |amount|).
pub(crate) async fn entry_cursor(
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
pub(crate) async fn entries(
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
pub(crate) async fn posted_before(
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
pub(crate) async fn period_summaries(
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

/// A journal transaction's header.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct TransactionRow {
    /// Id.
    pub(crate) transaction_id: Uuid,
    /// Kind.
    pub(crate) kind: String,
    /// Description.
    pub(crate) description: String,
    /// When.
    pub(crate) posted_at: OffsetDateTime,
    /// Principal.
    pub(crate) initiated_by: String,
    /// Originating object.
    pub(crate) reference_id: String,
    /// For a reversal: what it reverses.
    pub(crate) reverses_transaction_id: Option<Uuid>,
    /// The reversal of this transaction, if any.
    pub(crate) reversed_by_transaction_id: Option<Uuid>,
    /// Administrator's reason.
    pub(crate) reason: String,
}

/// A transaction with the id of its reversal, if any.
pub(crate) async fn transaction(
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
pub(crate) async fn postings(
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
pub(crate) struct TransferRow {
    /// Id.
    pub(crate) transfer_id: Uuid,
    /// Keyset position.
    pub(crate) seq: i64,
    /// Debited account.
    pub(crate) from_account_id: Uuid,
    /// Credited account.
    pub(crate) to_account_id: Uuid,
    /// Its owner.
    pub(crate) to_owner: Option<Uuid>,
    /// Its number.
    pub(crate) to_account_number: Option<String>,
    /// Minor units.
    pub(crate) amount: i64,
    /// Currency.
    pub(crate) currency: String,
    /// Description.
    pub(crate) description: String,
    /// Journal transaction.
    pub(crate) transaction_id: Uuid,
    /// Its reversal, if any.
    pub(crate) reversed_by: Option<Uuid>,
    /// Created.
    pub(crate) created_at: OffsetDateTime,
}

const TRANSFER_SELECT: &str = "SELECT tr.transfer_id, tr.seq, tr.from_account_id, \
    tr.to_account_id, d.owner_user_id AS to_owner, d.account_number AS to_account_number, tr.amount, \
    tr.currency::text AS currency, tr.description, tr.transaction_id, r.transaction_id AS reversed_by, tr.created_at \
    FROM transfers tr JOIN ledger_accounts f ON f.account_id = tr.from_account_id \
    JOIN ledger_accounts d ON d.account_id = tr.to_account_id \
    LEFT JOIN transactions r ON r.reverses_transaction_id = tr.transaction_id";

/// A transfer that `user` sent or received.
pub(crate) async fn transfer_for(
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
pub(crate) async fn transfers_for(
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

impl EntryRow {
    fn link(self) -> Link {
        Link {
            entry_id: self.entry_id,
            transaction_id: self.transaction_id,
            account_id: self.account_id,
            seq: self.account_seq,
            sequence: self.sequence,
            amount: self.amount,
            currency: self.currency,
            balance_after: self.balance_after,
            posted_at: self.posted_at,
            previous_hash: self.previous_hash,
            hash: self.entry_hash,
        }
    }
}

/// An account's whole chain, oldest first (verification).
pub(crate) async fn chain(conn: &mut PgConnection, account_id: Uuid) -> Result<Vec<Link>, sqlx::Error> {
    let rows: Vec<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM entries e JOIN transactions t USING (transaction_id) \
         WHERE e.account_id = $1 ORDER BY e.account_seq"
    )))
    .bind(account_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(EntryRow::link).collect())
}

/// Every account's chain head: (account, entry count, last hash).
pub(crate) async fn chain_heads(conn: &mut PgConnection) -> Result<Vec<(Uuid, i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT account_id, entry_count, last_hash FROM ledger_accounts").fetch_all(conn).await
}

/// Every entry, by account and chain position, streamed.
pub(crate) fn all_links(
    conn: &mut PgConnection,
) -> futures::stream::BoxStream<'_, Result<Link, sqlx::Error>> {
    use futures::StreamExt as _;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM entries e JOIN transactions t USING (transaction_id) \
         ORDER BY e.account_id, e.account_seq"
    )))
    .fetch(conn)
    .map(|row: Result<EntryRow, sqlx::Error>| row.map(EntryRow::link))
    .boxed()
}

/// The transactions `ids` with their legs in entry order, as a reversal reads them (immutable:
/// read before anything is locked). Missing ids are absent from the answer.
pub(crate) async fn originals(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Original>, sqlx::Error> {
    let rows: Vec<(Uuid, String, String, Uuid, i64, String)> = sqlx::query_as(
        "SELECT t.transaction_id, t.kind, t.description, e.account_id, e.amount, e.currency::text \
         FROM transactions t JOIN entries e USING (transaction_id) \
         WHERE t.transaction_id = ANY ($1) ORDER BY t.transaction_id, e.sequence",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    let mut originals: Vec<Original> = Vec::new();
    for (id, kind, description, account, amount, currency) in rows {
        match originals.last_mut() {
            Some(original) if original.id == id => original.legs.push((account, amount, currency)),
            _ => originals.push(Original {
                id,
                kind: TransactionKind::from_name(&kind),
                description,
                legs: vec![(account, amount, currency)],
            }),
        }
    }
    Ok(originals)
}

/// Transactions whose postings do not sum to zero per currency: (transaction, currency, sum).
pub(crate) async fn unbalanced_transactions(
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
pub(crate) async fn unbalanced_currencies(
    conn: &mut PgConnection,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency::text, sum(posted)::bigint FROM ledger_accounts GROUP BY currency HAVING sum(posted) <> 0",
    )
    .fetch_all(conn)
    .await
}

/// Accounts whose maintained balance differs from the sum of their entries: (account, posted, sum).
pub(crate) async fn drifted_balances(conn: &mut PgConnection) -> Result<Vec<(Uuid, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.account_id, a.posted, COALESCE(sum(e.amount), 0)::bigint FROM ledger_accounts a \
         LEFT JOIN entries e ON e.account_id = a.account_id GROUP BY a.account_id, a.posted \
         HAVING a.posted <> COALESCE(sum(e.amount), 0)",
    )
    .fetch_all(conn)
    .await
}

/// How many transactions exist.
pub(crate) async fn transaction_count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM transactions").fetch_one(conn).await
}
