//! Reversals (admin): the mirror image of a transaction, posted once, as a correction, with the
//! administrator's reason and an idempotency key, through the posting engine; and reading a
//! transaction with its postings.

use bank_platform::{ServiceError, idempotency::Key};
use bank_proto::{
    events::v1 as events,
    ledger::v1::{ReverseTransactionResponse, Transaction},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    convert::{self, money},
    domain::Refusal,
    engine::{Batch, Command, Engine, Needs},
    storage::journal,
};

/// A reversal as requested (parsed and authorised).
#[derive(Debug, Clone)]
pub(crate) struct Reverse {
    /// The key, scoped to the administrator and the RPC.
    pub(crate) key: Key,
    /// SHA-256 of the request.
    pub(crate) request_hash: Vec<u8>,
    /// The administrator.
    pub(crate) admin: String,
    /// The transaction to reverse.
    pub(crate) transaction: Uuid,
    /// Why.
    pub(crate) reason: String,
}

impl Command for Reverse {
    type Output = ReverseTransactionResponse;

    fn key(&self) -> Option<(&Key, &[u8])> {
        Some((&self.key, &self.request_hash))
    }

    fn needs(&self, needs: &mut Needs) {
        needs.reversals.push(self.transaction);
    }

    fn apply(&self, batch: &mut Batch<'_>) -> Result<ReverseTransactionResponse, ServiceError> {
        let original = batch
            .original(self.transaction)
            .cloned()
            .ok_or_else(|| convert::refusal(Refusal::NoSuchTransaction))?;
        let (plan, posted) =
            batch.book.reverse(&original, &self.reason, &self.admin, batch.now).map_err(convert::refusal)?;
        let changes = posted
            .entries
            .iter()
            .filter_map(|(_, account_id, amount, _)| {
                let account = batch.book.account(*account_id)?;
                account.is_customer().then(|| events::AccountBalanceChange {
                    account_id: account_id.to_string(),
                    owner_user_id: convert::owner(account),
                    amount: Some(money(&plan.currency, *amount)),
                    available_after: Some(money(&plan.currency, account.available())),
                })
            })
            .collect();
        let event = events::TransactionReversed {
            transaction_id: self.transaction.to_string(),
            reversal_transaction_id: posted.transaction_id.to_string(),
            kind: convert::kind(original.kind) as i32,
            changes,
            reversed_by: self.admin.clone(),
        };
        batch.publish_posting(&format!("transactions/{}", self.transaction), &event, &posted);
        Ok(ReverseTransactionResponse { reversal: Some(convert::transaction(&posted, &plan)) })
    }
}

/// Posts `reverse` (or replays the key's stored answer); counts `ledger_reversals_total`.
///
/// # Errors
/// The refusal (`NOT_FOUND`, `NOT_REVERSIBLE`, `ALREADY_REVERSED`, ...), or the engine's failure.
pub(crate) async fn reverse(
    engine: &Engine,
    reverse: Reverse,
) -> Result<(ReverseTransactionResponse, bool), ServiceError> {
    let outcome = engine.submit(reverse).await?;
    if !outcome.1 {
        metrics::counter!("ledger_reversals_total").increment(1);
    }
    Ok(outcome)
}

/// A transaction with its postings (`None`: no such transaction).
///
/// # Errors
/// The database failed.
pub(crate) async fn transaction(pool: &PgPool, id: Uuid) -> Result<Option<Transaction>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let Some(header) = journal::transaction(&mut conn, id).await? else { return Ok(None) };
    let postings = journal::postings(&mut conn, id).await?;
    Ok(Some(convert::stored_transaction(&header, &postings)))
}
