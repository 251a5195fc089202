//! Internal transfers: a user moves money from an own account to an own account (by id) or to any
//! customer account (by number), through the posting engine; and the parties read them back.

use bank_money::{Amount, Currency};
use bank_platform::{ServiceError, idempotency::Key};
use bank_proto::{
    events::v1::TransferPosted,
    ledger::v1::{CreateTransferResponse, Transfer as TransferMessage, TransferStatus},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    convert::{self, balances, money, timestamp},
    domain::{Destination, Leg, Plan, TransactionKind, transfer},
    engine::{Batch, Command, Engine, Needs},
    storage::{
        batch::TransferRecord,
        journal::{self, TransferRow},
    },
};

/// A transfer as requested (parsed and authorised: the principal is a user).
#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    /// The key, scoped to the user and the RPC.
    pub(crate) key: Key,
    /// SHA-256 of the request.
    pub(crate) request_hash: Vec<u8>,
    /// The user.
    pub(crate) user: Uuid,
    /// The source account (must be the user's).
    pub(crate) from: Uuid,
    /// The destination.
    pub(crate) to: Destination,
    /// How much.
    pub(crate) amount: Amount,
    /// In which currency (every account must be in it).
    pub(crate) currency: Currency,
    /// Shown to both parties.
    pub(crate) description: String,
}

impl Command for Transfer {
    type Output = CreateTransferResponse;

    fn key(&self) -> Option<(&Key, &[u8])> {
        Some((&self.key, &self.request_hash))
    }

    fn needs(&self, needs: &mut Needs) {
        needs.accounts.push(self.from);
        match &self.to {
            Destination::Id(id) => needs.accounts.push(*id),
            Destination::Number(number) => needs.numbers.push(number.clone()),
        }
    }

    fn apply(&self, batch: &mut Batch<'_>) -> Result<CreateTransferResponse, ServiceError> {
        let (from, to) =
            transfer::parties(batch.book, self.user, self.from, &self.to).map_err(convert::refusal)?;
        let transfer_id = Uuid::now_v7();
        let amount = self.amount.minor_units();
        let currency = self.currency.code();
        let plan = Plan {
            kind: TransactionKind::Transfer,
            description: self.description.clone(),
            initiated_by: self.user.to_string(),
            reference: transfer_id.to_string(),
            reason: String::new(),
            currency: currency.to_owned(),
            legs: vec![Leg { account: from, amount: -amount }, Leg { account: to, amount }],
            reverses: None,
            correction: false,
        };
        let posted = batch.book.post(&plan, batch.now).map_err(convert::refusal)?;
        let (Some(source), Some(destination)) = (batch.book.account(from), batch.book.account(to)) else {
            return Err(convert::refusal(crate::domain::Refusal::NoSuchAccount));
        };
        let response = CreateTransferResponse {
            transfer: Some(TransferMessage {
                transfer_id: transfer_id.to_string(),
                from_account_id: from.to_string(),
                to_account_id: to.to_string(),
                to_account_number: destination.number.clone().unwrap_or_default(),
                amount: Some(money(currency, amount)),
                credited_amount: Some(money(currency, amount)),
                description: self.description.clone(),
                status: TransferStatus::Posted as i32,
                transaction_id: posted.transaction_id.to_string(),
                fx_quote_id: String::new(),
                scheduled_transfer_id: String::new(),
                created_at: Some(timestamp(posted.posted_at)),
            }),
            from_balances: Some(balances(source)),
        };
        let event = TransferPosted {
            transfer_id: transfer_id.to_string(),
            transaction_id: posted.transaction_id.to_string(),
            from_account_id: from.to_string(),
            from_owner_user_id: convert::owner(source),
            to_account_id: to.to_string(),
            to_owner_user_id: convert::owner(destination),
            amount: Some(money(currency, amount)),
            credited_amount: Some(money(currency, amount)),
            description: self.description.clone(),
            from_available_after: Some(money(currency, source.available())),
            to_available_after: Some(money(currency, destination.available())),
            scheduled_transfer_id: String::new(),
        };
        batch.publish_posting(&format!("transfers/{transfer_id}"), &event, &posted);
        batch.transfer(TransferRecord {
            id: transfer_id,
            from,
            to,
            amount,
            currency: currency.to_owned(),
            description: self.description.clone(),
            transaction: posted.transaction_id,
            initiated_by: self.user.to_string(),
            created_at: posted.posted_at,
        });
        Ok(response)
    }
}

/// Posts `transfer` (or replays the key's stored answer); answers the response and whether it is
/// a replay. Counts `ledger_transfers_total` by result.
///
/// # Errors
/// The refusal (`NOT_FOUND`, `INSUFFICIENT_FUNDS`, `IDEMPOTENCY_KEY_REUSED`, ...), or the engine's
/// failure.
pub(crate) async fn create(
    engine: &Engine,
    transfer: Transfer,
) -> Result<(CreateTransferResponse, bool), ServiceError> {
    let outcome = engine.submit(transfer).await;
    let result = match &outcome {
        Ok((_, false)) => "posted",
        Ok((_, true)) => return outcome,
        Err(err) => err.code.reason(),
    };
    metrics::counter!("ledger_transfers_total", "result" => result).increment(1);
    outcome
}

/// A transfer `user` sent or received.
///
/// # Errors
/// The database failed.
pub(crate) async fn get(
    pool: &PgPool,
    transfer_id: Uuid,
    user: Uuid,
) -> Result<Option<TransferRow>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    journal::transfer_for(&mut conn, transfer_id, user).await
}

/// A page of the transfers `user` sent or received (only `account`'s, when given; an account of
/// someone else answers `None`), newest first, before the keyset position `before`.
///
/// # Errors
/// The database failed.
pub(crate) async fn list(
    pool: &PgPool,
    user: Uuid,
    account: Option<Uuid>,
    before: i64,
    limit: i64,
) -> Result<Option<Vec<TransferRow>>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    if let Some(account) = account {
        let own = crate::storage::account(&mut conn, account).await?;
        if own.is_none_or(|a| a.owner != Some(user)) {
            return Ok(None);
        }
    }
    journal::transfers_for(&mut conn, user, account, before, limit).await.map(Some)
}
