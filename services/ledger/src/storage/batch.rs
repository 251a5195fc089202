//! The posting engine's statements. A batch of transfers takes two (plus `BEGIN` and `COMMIT`):
//! [`lock`] locks every account the batch touches in account-id order and reads which of its
//! idempotency keys are stored; [`write`] writes everything the batch posted in one statement of
//! array parameters. Holds, refunds and reversals add the reads they need ([`lock_holds`],
//! [`refunds_of`], [`reversed_of`]) only to batches that carry them.

use bank_platform::{idempotency::Key, outbox::Event};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ACCOUNT_COLUMNS, AccountRow, accounts,
    holds::{HOLD_COLUMNS, HoldRow, holds},
};
use crate::domain::{Account, Hold, book::Changes, hold::RefundRecord};

/// The accounts a batch locked, and which of its keys (by index) are stored already.
#[derive(Debug)]
pub(crate) struct Locked {
    /// In account-id order.
    pub(crate) accounts: Vec<Account>,
    /// Indexes into the keys passed to [`lock`].
    pub(crate) seen: Vec<usize>,
}

#[derive(Debug, sqlx::FromRow)]
struct LockedRow {
    seen: Option<Vec<i64>>,
    #[sqlx(flatten)]
    account: AccountRow,
}

fn key_columns<'k>(keys: &[&'k Key]) -> (Vec<&'k str>, Vec<&'k str>, Vec<&'k str>) {
    (
        keys.iter().map(|k| k.principal.as_str()).collect(),
        keys.iter().map(|k| k.rpc).collect(),
        keys.iter().map(|k| k.key.as_str()).collect(),
    )
}

fn indexes(ordinals: Vec<i64>) -> Vec<usize> {
    ordinals.into_iter().filter_map(|n| usize::try_from(n - 1).ok()).collect()
}

/// Locks the accounts `ids` and the customer accounts numbered `numbers` for the rest of the
/// transaction, in ascending account id (one fixed order for every batch and every worker, so
/// batches never deadlock on each other), and reads in the same statement which of `keys` are
/// stored. A key is stored only with the effect it keys ([`write`]); a concurrent first use that
/// commits after this read makes that write fail on the key's primary key, and the batch runs
/// again (ADR 0028, ADR 0029).
pub(crate) async fn lock(
    conn: &mut PgConnection,
    ids: &[Uuid],
    numbers: &[&str],
    keys: &[&Key],
) -> Result<Locked, sqlx::Error> {
    let (principals, rpcs, names) = key_columns(keys);
    let rows: Vec<LockedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT array_agg(k.n) FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY \
                   AS k(principal, rpc, key, n) \
                 WHERE EXISTS (SELECT 1 FROM idempotency_keys i \
                               WHERE i.principal = k.principal AND i.rpc = k.rpc AND i.key = k.key)) AS seen, \
           {ACCOUNT_COLUMNS} FROM ledger_accounts \
         WHERE account_id = ANY ($1) OR (kind = 'customer' AND account_number = ANY ($2)) \
         ORDER BY account_id FOR UPDATE"
    )))
    .bind(ids)
    .bind(numbers)
    .bind(&principals)
    .bind(&rpcs)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    let seen = match rows.first() {
        Some(row) => indexes(row.seen.clone().unwrap_or_default()),
        // No account matched: the keys are read on their own (a batch that only replays).
        None if !keys.is_empty() => stored(conn, keys).await?.into_iter().map(|(i, _, _)| i).collect(),
        None => Vec::new(),
    };
    Ok(Locked { accounts: accounts(rows.into_iter().map(|r| r.account).collect())?, seen })
}

/// The stored request hash and response of each of `keys` that is stored: (index, hash, response).
pub(crate) async fn stored(
    conn: &mut PgConnection,
    keys: &[&Key],
) -> Result<Vec<(usize, Vec<u8>, Option<Vec<u8>>)>, sqlx::Error> {
    let (principals, rpcs, names) = key_columns(keys);
    let rows: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT k.n, i.request_hash, i.response \
         FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(principal, rpc, key, n) \
         JOIN idempotency_keys i ON i.principal = k.principal AND i.rpc = k.rpc AND i.key = k.key",
    )
    .bind(&principals)
    .bind(&rpcs)
    .bind(&names)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(n, hash, response)| Some((usize::try_from(n - 1).ok()?, hash, response)))
        .collect())
}

/// The holds `ids` and those of the creators' `references`, unlocked: what a batch needs to know
/// before it locks (a hold's account, currency and counterparty never change).
pub(crate) async fn holds_to_lock(
    conn: &mut PgConnection,
    ids: &[Uuid],
    references: &[(String, String)],
) -> Result<Vec<Hold>, sqlx::Error> {
    select_holds(conn, ids, references, "").await
}

/// The same holds, locked (after their accounts, so every path takes locks in one order: accounts
/// in id order, then holds in id order).
pub(crate) async fn lock_holds(
    conn: &mut PgConnection,
    ids: &[Uuid],
    references: &[(String, String)],
) -> Result<Vec<Hold>, sqlx::Error> {
    select_holds(conn, ids, references, " FOR UPDATE").await
}

async fn select_holds(
    conn: &mut PgConnection,
    ids: &[Uuid],
    references: &[(String, String)],
    suffix: &str,
) -> Result<Vec<Hold>, sqlx::Error> {
    if ids.is_empty() && references.is_empty() {
        return Ok(Vec::new());
    }
    let creators: Vec<&str> = references.iter().map(|(c, _)| c.as_str()).collect();
    let refs: Vec<&str> = references.iter().map(|(_, r)| r.as_str()).collect();
    let rows: Vec<HoldRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {HOLD_COLUMNS} FROM holds \
         WHERE hold_id = ANY ($1) \
            OR (created_by, reference_id) IN (SELECT * FROM unnest($2::text[], $3::text[])) \
         ORDER BY hold_id{suffix}"
    )))
    .bind(ids)
    .bind(&creators)
    .bind(&refs)
    .fetch_all(conn)
    .await?;
    holds(rows)
}

/// The refunds already made on `holds`: (hold, reference, (amount, transaction)).
pub(crate) async fn refunds_of(
    conn: &mut PgConnection,
    holds: &[Uuid],
) -> Result<Vec<(Uuid, String, RefundRecord)>, sqlx::Error> {
    if holds.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid, String, i64, Uuid)> = sqlx::query_as(
        "SELECT hold_id, refund_reference_id, amount, transaction_id FROM hold_refunds WHERE hold_id = ANY ($1)",
    )
    .bind(holds)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(hold, reference, amount, tx)| (hold, reference, (amount, tx))).collect())
}

/// Which of `transactions` have a reversal (read under the locks of their accounts, so two
/// reversals of one transaction serialise; the partial unique index is the backstop).
pub(crate) async fn reversed_of(
    conn: &mut PgConnection,
    transactions: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if transactions.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT reverses_transaction_id FROM transactions WHERE reverses_transaction_id = ANY ($1)",
    )
    .bind(transactions)
    .fetch_all(conn)
    .await
}

/// An internal transfer's own row.
#[derive(Debug, Clone)]
pub(crate) struct TransferRecord {
    /// The transfer.
    pub(crate) id: Uuid,
    /// Debited account.
    pub(crate) from: Uuid,
    /// Credited account.
    pub(crate) to: Uuid,
    /// Minor units.
    pub(crate) amount: i64,
    /// Currency.
    pub(crate) currency: String,
    /// Description.
    pub(crate) description: String,
    /// Its journal transaction.
    pub(crate) transaction: Uuid,
    /// The user.
    pub(crate) initiated_by: String,
    /// When.
    pub(crate) created_at: OffsetDateTime,
}

/// An idempotency key stored with its effect: the request's hash and the encoded response.
#[derive(Debug, Clone)]
pub(crate) struct StoredKey {
    /// The key.
    pub(crate) key: Key,
    /// SHA-256 of the request.
    pub(crate) request_hash: Vec<u8>,
    /// The encoded response.
    pub(crate) response: Vec<u8>,
}

/// What a batch writes besides the book's changes.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// Transfer rows.
    pub(crate) transfers: Vec<TransferRecord>,
    /// Outbox events, in the order they are to be relayed.
    pub(crate) events: Vec<Event>,
    /// Idempotency keys with their responses.
    pub(crate) keys: Vec<StoredKey>,
}

/// [`write`]'s statement: every table a posting touches, one CTE each, all from array parameters
/// (an empty array inserts or updates nothing). Planned once per connection (generic plans).
const WRITE: &str = "WITH tx AS ( \
       INSERT INTO transactions (transaction_id, kind, description, posted_at, initiated_by, reference_id, reason, \
         reverses_transaction_id) \
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], \
         $8::uuid[]) \
     ), ent AS ( \
       INSERT INTO entries (entry_id, transaction_id, account_id, amount, currency, balance_after, account_seq, \
         previous_hash, entry_hash, posted_at) \
       SELECT * FROM unnest($9::uuid[], $10::uuid[], $11::uuid[], $12::bigint[], $13::text[], $14::bigint[], \
         $15::bigint[], $16::text[], $17::text[], $18::timestamptz[]) \
     ), acc AS ( \
       UPDATE ledger_accounts a \
         SET posted = v.posted, held = v.held, entry_count = v.entry_count, last_hash = v.last_hash \
       FROM unnest($19::uuid[], $20::bigint[], $21::bigint[], $22::bigint[], $23::text[]) \
         AS v(account_id, posted, held, entry_count, last_hash) \
       WHERE a.account_id = v.account_id \
     ), tr AS ( \
       INSERT INTO transfers (transfer_id, from_account_id, to_account_id, amount, currency, description, \
         transaction_id, initiated_by, created_at) \
       SELECT * FROM unnest($24::uuid[], $25::uuid[], $26::uuid[], $27::bigint[], $28::text[], $29::text[], \
         $30::uuid[], $31::text[], $32::timestamptz[]) \
     ), hi AS ( \
       INSERT INTO holds (hold_id, account_id, amount, currency, captured_amount, refunded_amount, status, \
         counterparty, created_by, reference_id, description, expires_at, capture_transaction_id, created_at, \
         updated_at) \
       SELECT * FROM unnest($33::uuid[], $34::uuid[], $35::bigint[], $36::text[], $37::bigint[], $38::bigint[], \
         $39::text[], $40::text[], $41::text[], $42::text[], $43::text[], $44::timestamptz[], $45::uuid[], \
         $46::timestamptz[], $47::timestamptz[]) \
     ), hu AS ( \
       UPDATE holds h SET status = v.status, captured_amount = v.captured, refunded_amount = v.refunded, \
         capture_transaction_id = v.capture, updated_at = v.updated_at \
       FROM unnest($48::uuid[], $49::text[], $50::bigint[], $51::bigint[], $52::uuid[], $53::timestamptz[]) \
         AS v(hold_id, status, captured, refunded, capture, updated_at) \
       WHERE h.hold_id = v.hold_id \
     ), rf AS ( \
       INSERT INTO hold_refunds (hold_id, refund_reference_id, amount, transaction_id) \
       SELECT * FROM unnest($54::uuid[], $55::text[], $56::bigint[], $57::uuid[]) \
     ), ob AS ( \
       INSERT INTO outbox (event_id, event_type, subject, traceparent, payload) \
       SELECT * FROM unnest($58::uuid[], $59::text[], $60::text[], $61::text[], $62::bytea[]) \
     ) \
     INSERT INTO idempotency_keys (principal, rpc, key, request_hash, response) \
     SELECT * FROM unnest($63::text[], $64::text[], $65::text[], $66::bytea[], $67::bytea[])";

/// Writes a whole batch in one statement (one round trip): the transactions and their entries,
/// the accounts' balances and chain heads, transfer rows, holds created and changed, refunds, the
/// outbox events and the idempotency keys with their responses. The caller holds every lock.
///
/// # Errors
/// The database refused the statement (a concurrent first use of a key fails it on
/// `idempotency_keys_pkey`: retryable).
pub(crate) async fn write(
    conn: &mut PgConnection,
    changes: &Changes<'_>,
    extras: &Extras,
) -> Result<(), sqlx::Error> {
    let journal = changes.journal;
    let entries = || journal.iter().flat_map(|t| t.entries.iter().map(move |e| (t, e)));
    let holds = &changes.new_holds;
    let changed = &changes.changed_holds;
    let refunds = changes.refunds;
    let transfers = &extras.transfers;
    let events = &extras.events;
    let keys = &extras.keys;
    sqlx::query(WRITE)
        // transactions
        .bind(journal.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(journal.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
        .bind(journal.iter().map(|t| t.description.as_str()).collect::<Vec<_>>())
        .bind(journal.iter().map(|t| t.posted_at).collect::<Vec<_>>())
        .bind(journal.iter().map(|t| t.initiated_by.as_str()).collect::<Vec<_>>())
        .bind(journal.iter().map(|t| t.reference.as_str()).collect::<Vec<_>>())
        .bind(journal.iter().map(|t| t.reason.as_str()).collect::<Vec<_>>())
        .bind(journal.iter().map(|t| t.reverses).collect::<Vec<_>>())
        // entries
        .bind(entries().map(|(_, e)| e.id).collect::<Vec<_>>())
        .bind(entries().map(|(t, _)| t.id).collect::<Vec<_>>())
        .bind(entries().map(|(_, e)| e.account).collect::<Vec<_>>())
        .bind(entries().map(|(_, e)| e.amount).collect::<Vec<_>>())
        .bind(entries().map(|(t, _)| t.currency.as_str()).collect::<Vec<_>>())
        .bind(entries().map(|(_, e)| e.balance_after).collect::<Vec<_>>())
        .bind(entries().map(|(_, e)| e.seq).collect::<Vec<_>>())
        .bind(entries().map(|(_, e)| e.previous_hash.as_str()).collect::<Vec<_>>())
        .bind(entries().map(|(_, e)| e.hash.as_str()).collect::<Vec<_>>())
        .bind(entries().map(|(t, _)| t.posted_at).collect::<Vec<_>>())
        // accounts
        .bind(changes.accounts.iter().map(|a| a.id).collect::<Vec<_>>())
        .bind(changes.accounts.iter().map(|a| a.posted).collect::<Vec<_>>())
        .bind(changes.accounts.iter().map(|a| a.held).collect::<Vec<_>>())
        .bind(changes.accounts.iter().map(|a| a.entry_count).collect::<Vec<_>>())
        .bind(changes.accounts.iter().map(|a| a.last_hash.as_str()).collect::<Vec<_>>())
        // transfers
        .bind(transfers.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(transfers.iter().map(|t| t.from).collect::<Vec<_>>())
        .bind(transfers.iter().map(|t| t.to).collect::<Vec<_>>())
        .bind(transfers.iter().map(|t| t.amount).collect::<Vec<_>>())
        .bind(transfers.iter().map(|t| t.currency.as_str()).collect::<Vec<_>>())
        .bind(transfers.iter().map(|t| t.description.as_str()).collect::<Vec<_>>())
        .bind(transfers.iter().map(|t| t.transaction).collect::<Vec<_>>())
        .bind(transfers.iter().map(|t| t.initiated_by.as_str()).collect::<Vec<_>>())
        .bind(transfers.iter().map(|t| t.created_at).collect::<Vec<_>>())
        // new holds
        .bind(holds.iter().map(|h| h.id).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.account).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.amount).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.currency.as_str()).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.captured).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.refunded).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.status.as_str()).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.counterparty.as_str()).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.created_by.as_str()).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.reference.as_str()).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.description.as_str()).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.expires_at).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.capture_transaction).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.created_at).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.updated_at).collect::<Vec<_>>())
        // changed holds
        .bind(changed.iter().map(|h| h.id).collect::<Vec<_>>())
        .bind(changed.iter().map(|h| h.status.as_str()).collect::<Vec<_>>())
        .bind(changed.iter().map(|h| h.captured).collect::<Vec<_>>())
        .bind(changed.iter().map(|h| h.refunded).collect::<Vec<_>>())
        .bind(changed.iter().map(|h| h.capture_transaction).collect::<Vec<_>>())
        .bind(changed.iter().map(|h| h.updated_at).collect::<Vec<_>>())
        // refunds
        .bind(refunds.iter().map(|r| r.hold).collect::<Vec<_>>())
        .bind(refunds.iter().map(|r| r.reference.as_str()).collect::<Vec<_>>())
        .bind(refunds.iter().map(|r| r.amount).collect::<Vec<_>>())
        .bind(refunds.iter().map(|r| r.transaction).collect::<Vec<_>>())
        // outbox
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.traceparent.as_deref()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
        // idempotency keys
        .bind(keys.iter().map(|k| k.key.principal.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.key.rpc).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.key.key.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.request_hash.as_slice()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.response.as_slice()).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}
