//! Holds for service clients (`ledger:holds`, e.g. cards): reserve part of a customer account's
//! available balance, then capture it (posted to the hold's counterparty system account), void it,
//! let it expire, or refund a captured one — every change through the posting engine. Idempotent
//! without keys: a hold by its creator's reference, a capture or void by the hold's state, a refund
//! by its reference.

use std::time::Duration;

use bank_money::{Amount, Currency};
use bank_platform::{ErrorCode, ServiceError};
use bank_proto::{
    events::v1 as events,
    ledger::v1::{CaptureHoldResponse, CreateHoldResponse, RefundHoldResponse, VoidHoldResponse},
};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    convert::{self, money, timestamp},
    domain::{Hold, HoldStatus, Refusal, Release, SystemType},
    engine::{Batch, Command, Engine, Needs},
    storage,
};

/// The hold `id` if `created_by` (when given) created it; else `NOT_FOUND` like a missing one.
fn own_hold<'b>(batch: &'b Batch<'_>, id: Uuid, created_by: Option<&str>) -> Result<&'b Hold, ServiceError> {
    batch
        .book
        .hold(id)
        .filter(|h| created_by.is_none_or(|c| h.created_by == c))
        .ok_or_else(|| convert::refusal(Refusal::NoSuchHold))
}

/// A new hold as requested.
#[derive(Debug, Clone)]
pub(crate) struct CreateHold {
    /// The creating client.
    pub(crate) created_by: String,
    /// The client's reference (a repeat answers the same hold).
    pub(crate) reference: String,
    /// The customer account.
    pub(crate) account: Uuid,
    /// The currency.
    pub(crate) currency: Currency,
    /// How much to reserve.
    pub(crate) amount: Amount,
    /// Where a capture goes.
    pub(crate) counterparty: SystemType,
    /// Shown with the capture.
    pub(crate) description: String,
    /// When it expires if still active.
    pub(crate) expires_at: OffsetDateTime,
}

impl Command for CreateHold {
    type Output = CreateHoldResponse;

    fn needs(&self, needs: &mut Needs) {
        needs.accounts.push(self.account);
        needs.hold_references.push((self.created_by.clone(), self.reference.clone()));
    }

    fn apply(&self, batch: &mut Batch<'_>) -> Result<CreateHoldResponse, ServiceError> {
        // A repeat with the same reference answers the existing hold, never a second one.
        if let Some(existing) = batch.book.hold_by_reference(&self.created_by, &self.reference) {
            let account = batch
                .book
                .account(existing.account)
                .ok_or_else(|| convert::refusal(Refusal::NoSuchAccount))?;
            return Ok(CreateHoldResponse {
                hold: Some(convert::hold(existing)),
                balances: Some(convert::balances(account)),
            });
        }
        let hold = Hold {
            id: Uuid::now_v7(),
            account: self.account,
            amount: self.amount.minor_units(),
            currency: self.currency.code().to_owned(),
            captured: 0,
            refunded: 0,
            status: HoldStatus::Active,
            counterparty: self.counterparty,
            created_by: self.created_by.clone(),
            reference: self.reference.clone(),
            description: self.description.clone(),
            expires_at: self.expires_at,
            capture_transaction: None,
            created_at: batch.now,
            updated_at: batch.now,
        };
        let id = hold.id;
        batch.book.reserve(hold).map_err(convert::refusal)?;
        let (Some(hold), Some(account)) = (batch.book.hold(id), batch.book.account(self.account)) else {
            return Err(convert::refusal(Refusal::NoSuchHold));
        };
        let response = CreateHoldResponse {
            hold: Some(convert::hold(hold)),
            balances: Some(convert::balances(account)),
        };
        let event = events::HoldCreated {
            hold_id: id.to_string(),
            account_id: self.account.to_string(),
            owner_user_id: convert::owner(account),
            amount: Some(money(&hold.currency, hold.amount)),
            reference_id: hold.reference.clone(),
            expires_at: Some(timestamp(hold.expires_at)),
            available_after: Some(money(&hold.currency, account.available())),
        };
        batch.publish(&format!("holds/{id}"), &event);
        Ok(response)
    }
}

/// A capture as requested.
#[derive(Debug, Clone)]
pub(crate) struct CaptureHold {
    /// The capturing client (the hold's creator).
    pub(crate) initiated_by: String,
    /// The hold.
    pub(crate) hold: Uuid,
    /// How much (the whole hold when `None`).
    pub(crate) amount: Option<(Currency, Amount)>,
}

impl Command for CaptureHold {
    type Output = CaptureHoldResponse;

    fn needs(&self, needs: &mut Needs) {
        needs.holds.push(self.hold);
        needs.counterparties.push(self.hold);
    }

    fn apply(&self, batch: &mut Batch<'_>) -> Result<CaptureHoldResponse, ServiceError> {
        let hold = own_hold(batch, self.hold, Some(&self.initiated_by))?;
        if let Some((currency, _)) = &self.amount
            && currency.code() != hold.currency
        {
            return Err(convert::refusal(Refusal::HoldCurrencyMismatch));
        }
        let system = batch.system(hold.counterparty, &hold.currency)?;
        let amount = self.amount.map(|(_, amount)| amount.minor_units());
        let captured = batch
            .book
            .capture(self.hold, amount, system, &self.initiated_by, batch.now)
            .map_err(convert::refusal)?;
        let Some((plan, posted)) = captured.posted else {
            // A repeat answers the same result.
            return Ok(CaptureHoldResponse { hold: Some(convert::hold(&captured.hold)), transaction: None });
        };
        let hold = &captured.hold;
        let account =
            batch.book.account(hold.account).ok_or_else(|| convert::refusal(Refusal::NoSuchAccount))?;
        let event = events::HoldCaptured {
            hold_id: hold.id.to_string(),
            account_id: hold.account.to_string(),
            owner_user_id: convert::owner(account),
            captured_amount: Some(money(&hold.currency, hold.captured)),
            released_amount: Some(money(&hold.currency, hold.amount - hold.captured)),
            transaction_id: posted.transaction_id.to_string(),
            reference_id: hold.reference.clone(),
            available_after: Some(money(&hold.currency, account.available())),
        };
        let transaction = convert::transaction(&posted, &plan);
        batch.publish_posting(&format!("holds/{}", hold.id), &event, &posted);
        Ok(CaptureHoldResponse { hold: Some(convert::hold(hold)), transaction: Some(transaction) })
    }
}

/// A void (by the hold's creator) or an expiry (by the ledger).
#[derive(Debug, Clone)]
pub(crate) struct ReleaseHold {
    /// The voiding client; `None` for an expiry.
    pub(crate) created_by: Option<String>,
    /// The hold.
    pub(crate) hold: Uuid,
    /// Void or expire.
    pub(crate) release: Release,
}

impl Command for ReleaseHold {
    type Output = VoidHoldResponse;

    fn needs(&self, needs: &mut Needs) {
        needs.holds.push(self.hold);
    }

    fn apply(&self, batch: &mut Batch<'_>) -> Result<VoidHoldResponse, ServiceError> {
        let before = own_hold(batch, self.hold, self.created_by.as_deref())?.status;
        let hold = batch.book.release(self.hold, self.release, batch.now).map_err(convert::refusal)?;
        if before != hold.status {
            let account =
                batch.book.account(hold.account).ok_or_else(|| convert::refusal(Refusal::NoSuchAccount))?;
            let (owner, available) =
                (convert::owner(account), Some(money(&hold.currency, account.available())));
            let subject = format!("holds/{}", hold.id);
            let (hold_id, account_id) = (hold.id.to_string(), hold.account.to_string());
            let amount = Some(money(&hold.currency, hold.amount));
            let reference_id = hold.reference.clone();
            match self.release {
                Release::Expire => {
                    let event = events::HoldExpired {
                        hold_id,
                        account_id,
                        owner_user_id: owner,
                        amount,
                        reference_id,
                        available_after: available,
                    };
                    batch.publish(&subject, &event);
                }
                Release::Void => {
                    let event = events::HoldVoided {
                        hold_id,
                        account_id,
                        owner_user_id: owner,
                        amount,
                        reference_id,
                        available_after: available,
                    };
                    batch.publish(&subject, &event);
                }
            }
        }
        Ok(VoidHoldResponse { hold: Some(convert::hold(&hold)) })
    }
}

/// A refund of a captured hold as requested.
#[derive(Debug, Clone)]
pub(crate) struct RefundHold {
    /// The refunding client (the hold's creator).
    pub(crate) initiated_by: String,
    /// The hold.
    pub(crate) hold: Uuid,
    /// The client's refund reference (a repeat answers the hold unchanged).
    pub(crate) reference: String,
    /// The currency.
    pub(crate) currency: Currency,
    /// How much.
    pub(crate) amount: Amount,
    /// Shown in the history.
    pub(crate) description: String,
}

impl Command for RefundHold {
    type Output = RefundHoldResponse;

    fn needs(&self, needs: &mut Needs) {
        needs.holds.push(self.hold);
        needs.counterparties.push(self.hold);
        needs.refunds.push(self.hold);
    }

    fn apply(&self, batch: &mut Batch<'_>) -> Result<RefundHoldResponse, ServiceError> {
        let hold = own_hold(batch, self.hold, Some(&self.initiated_by))?;
        if hold.currency != self.currency.code() {
            return Err(convert::refusal(Refusal::HoldCurrencyMismatch));
        }
        let system = batch.system(hold.counterparty, &hold.currency)?;
        let amount = self.amount.minor_units();
        let refunded = batch
            .book
            .refund(
                self.hold,
                &self.reference,
                amount,
                &self.description,
                system,
                &self.initiated_by,
                batch.now,
            )
            .map_err(convert::refusal)?;
        let Some((plan, posted)) = refunded.posted else {
            return Ok(RefundHoldResponse { hold: Some(convert::hold(&refunded.hold)), transaction: None });
        };
        let hold = &refunded.hold;
        let account =
            batch.book.account(hold.account).ok_or_else(|| convert::refusal(Refusal::NoSuchAccount))?;
        let event = events::HoldRefunded {
            hold_id: hold.id.to_string(),
            account_id: hold.account.to_string(),
            owner_user_id: convert::owner(account),
            amount: Some(money(&hold.currency, amount)),
            transaction_id: posted.transaction_id.to_string(),
            refund_reference_id: self.reference.clone(),
            available_after: Some(money(&hold.currency, account.available())),
        };
        let transaction = convert::transaction(&posted, &plan);
        batch.publish_posting(&format!("holds/{}", hold.id), &event, &posted);
        Ok(RefundHoldResponse { hold: Some(convert::hold(hold)), transaction: Some(transaction) })
    }
}

/// A hold by id or by its creator's reference, if `created_by` created it.
///
/// # Errors
/// The database failed.
pub(crate) async fn get(
    pool: &PgPool,
    lookup: Lookup<'_>,
    created_by: &str,
) -> Result<Option<Hold>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let hold = match lookup {
        Lookup::Id(id) => storage::holds::hold(&mut conn, id).await?,
        Lookup::Reference(reference) => {
            storage::holds::hold_by_reference(&mut conn, created_by, reference).await?
        }
    };
    Ok(hold.filter(|h| h.created_by == created_by))
}

/// How a hold is looked up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lookup<'a> {
    /// By id.
    Id(Uuid),
    /// By the creator's reference.
    Reference(&'a str),
}

/// Expires the active holds past their `expires_at` (a batch of at most 100, through the engine);
/// answers how many it expired.
///
/// # Errors
/// The database or the engine failed.
pub(crate) async fn expire_due(pool: &PgPool, engine: &Engine) -> Result<usize, ServiceError> {
    let due = {
        let mut conn = pool.acquire().await.map_err(|e| ServiceError::internal(&e))?;
        storage::holds::expired_holds(&mut conn, 100).await.map_err(|e| ServiceError::internal(&e))?
    };
    let releases = due
        .into_iter()
        .map(|hold| engine.submit(ReleaseHold { created_by: None, hold, release: Release::Expire }));
    let mut expired = 0;
    for outcome in futures::future::join_all(releases).await {
        match outcome {
            Ok(_) => expired += 1,
            // Captured or voided meanwhile.
            Err(err) if err.code == ErrorCode::HoldNotActive => {}
            Err(err) => return Err(err),
        }
    }
    Ok(expired)
}

/// Runs [`expire_due`] every few seconds until `stop`.
pub(crate) async fn expire_periodically(pool: PgPool, engine: Engine, stop: CancellationToken) {
    loop {
        match expire_due(&pool, &engine).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "holds expired"),
            Err(err) => tracing::warn!(reason = err.code.reason(), "expiring holds failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
