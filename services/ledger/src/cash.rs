//! Deposits and withdrawals: cash (or another system account) against a customer account, by a
//! teller or admin (with a recent second factor) or a service with `ledger:cash`, through the
//! posting engine.

use bank_money::{Amount, Currency};
use bank_platform::{ServiceError, idempotency::Key};
use bank_proto::{
    events::v1::{DepositPosted, WithdrawalPosted},
    ledger::v1::{CreateDepositResponse, CreateWithdrawalResponse, Transaction},
};
use uuid::Uuid;

use crate::{
    convert::{self, money},
    domain::{Leg, Plan, Refusal, SystemType, TransactionKind},
    engine::{Batch, Command, Needs},
};

/// A deposit or a withdrawal as requested (parsed and authorised).
#[derive(Debug, Clone)]
pub(crate) struct Cash {
    /// The key, scoped to the principal and the RPC.
    pub(crate) key: Key,
    /// SHA-256 of the request.
    pub(crate) request_hash: Vec<u8>,
    /// Who (user id or client id).
    pub(crate) initiated_by: String,
    /// The customer account.
    pub(crate) account: Uuid,
    /// The currency.
    pub(crate) currency: Currency,
    /// How much.
    pub(crate) amount: Amount,
    /// Shown in the history.
    pub(crate) description: String,
    /// The staff member's reason.
    pub(crate) reason: String,
    /// The other side (cash by default).
    pub(crate) system: SystemType,
}

/// A deposit (money into the customer account).
#[derive(Debug, Clone)]
pub(crate) struct Deposit(pub(crate) Cash);

/// A withdrawal (money out of the customer account).
#[derive(Debug, Clone)]
pub(crate) struct Withdrawal(pub(crate) Cash);

impl Cash {
    fn needs(&self, needs: &mut Needs) {
        needs.accounts.push(self.account);
        needs.system.push((self.system, self.currency.code().to_owned()));
    }

    /// Posts the movement (`deposit`: into the account) and writes its event.
    fn apply(&self, batch: &mut Batch<'_>, deposit: bool) -> Result<Transaction, ServiceError> {
        if batch.book.account(self.account).is_none_or(|a| !a.is_customer()) {
            return Err(convert::refusal(Refusal::NoSuchAccount));
        }
        let currency = self.currency.code();
        let system = batch.system(self.system, currency)?;
        let amount = self.amount.minor_units();
        let signed = if deposit { amount } else { -amount };
        let plan = Plan {
            kind: if deposit { TransactionKind::Deposit } else { TransactionKind::Withdrawal },
            description: self.description.clone(),
            initiated_by: self.initiated_by.clone(),
            reference: Uuid::now_v7().to_string(),
            reason: self.reason.clone(),
            currency: currency.to_owned(),
            legs: vec![
                Leg { account: self.account, amount: signed },
                Leg { account: system, amount: -signed },
            ],
            reverses: None,
            correction: false,
        };
        let posted = batch.book.post(&plan, batch.now).map_err(convert::refusal)?;
        let account =
            batch.book.account(self.account).ok_or_else(|| convert::refusal(Refusal::NoSuchAccount))?;
        let (owner, available) = (convert::owner(account), Some(money(currency, account.available())));
        let subject = format!("accounts/{}", self.account);
        let (account_id, transaction_id) = (self.account.to_string(), posted.transaction_id.to_string());
        let amount = Some(money(currency, amount));
        let description = self.description.clone();
        if deposit {
            let event = DepositPosted {
                transaction_id,
                account_id,
                owner_user_id: owner,
                amount,
                description,
                available_after: available,
            };
            batch.publish_posting(&subject, &event, &posted);
        } else {
            let event = WithdrawalPosted {
                transaction_id,
                account_id,
                owner_user_id: owner,
                amount,
                description,
                available_after: available,
            };
            batch.publish_posting(&subject, &event, &posted);
        }
        Ok(convert::transaction(&posted, &plan))
    }
}

impl Command for Deposit {
    type Output = CreateDepositResponse;

    fn key(&self) -> Option<(&Key, &[u8])> {
        Some((&self.0.key, &self.0.request_hash))
    }

    fn needs(&self, needs: &mut Needs) {
        self.0.needs(needs);
    }

    fn apply(&self, batch: &mut Batch<'_>) -> Result<CreateDepositResponse, ServiceError> {
        Ok(CreateDepositResponse { transaction: Some(self.0.apply(batch, true)?) })
    }
}

impl Command for Withdrawal {
    type Output = CreateWithdrawalResponse;

    fn key(&self) -> Option<(&Key, &[u8])> {
        Some((&self.0.key, &self.0.request_hash))
    }

    fn needs(&self, needs: &mut Needs) {
        self.0.needs(needs);
    }

    fn apply(&self, batch: &mut Batch<'_>) -> Result<CreateWithdrawalResponse, ServiceError> {
        Ok(CreateWithdrawalResponse { transaction: Some(self.0.apply(batch, false)?) })
    }
}
