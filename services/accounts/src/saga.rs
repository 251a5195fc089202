//! The cross-service steps: opening an account (with its ledger account) and changing an account's
//! state that the ledger mirrors (freeze, unfreeze, close, overdraft limit), and the reconciler
//! that finishes either after a crash or while the ledger was unreachable.
//!
//! # Opening (a saga keyed by the account id)
//!
//! 1. One accounts transaction: the idempotency key, the account in status `opening` (with a fresh
//!    id and number), and the key's stored response (the pending account). Nothing else.
//! 2. Ledger `CreateLedgerAccount` with the same id, number, owner and currency (idempotent by id:
//!    a repeat answers the existing ledger account).
//! 3. One accounts transaction: `opening` -> `active` (conditional, so exactly one caller wins)
//!    and the `AccountOpened` event in the outbox.
//!
//! A crash after 1 leaves an `opening` row (no ledger account, or one that was created in 2); a
//! crash after 2 leaves an `opening` row whose ledger account exists. Either way the reconciler
//! runs 2 (creating or finding the ledger account — never a second one, the id is the key) and 3.
//! A retry of the request with the same idempotency key finds the account through the stored
//! response and runs 2 and 3 itself. No crash point loses the account or duplicates the ledger
//! account or the event.
//!
//! # Changes mirrored to the ledger
//!
//! 1. One transaction, the account row locked: the idempotency key (a replay ends here), the rule
//!    checks (`domain::Action::check`), and an `account_changes` row `pending` (at most one per
//!    account, so changes never overlap; another one in flight answers `CONFLICT`).
//! 2. The ledger call (`SetLedgerAccountStatus` / `SetLedgerOverdraftLimit`, idempotent). The
//!    ledger decides: closing is refused there unless balance and holds are zero, atomically.
//! 3. One transaction: the account's new state, the change `applied`, its event, and the key's
//!    response. A refusal in 2 marks the change `abandoned` and answers the ledger's reason.
//!
//! A crash or an unreachable ledger between 1 and 3 leaves the change `pending`: the reconciler
//! calls the ledger again and applies (or abandons) it; the client got `UNAVAILABLE` and a retry
//! with the same key answers the outcome.

use std::time::Duration;

use bank_platform::{
    ErrorCode, ServiceError,
    config::ReconcilerConfig,
    idempotency::{self, Begin, Key},
    outbox,
};
use bank_proto::{
    accounts::v1::Account,
    common::v1::Balances,
    events::v1 as events,
    ledger::v1::{LedgerAccount, LedgerAccountStatus},
};
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    convert::{self, View},
    domain::{AccountNumber, Action, Nickname, Product, Reason, Refusal},
    ledger::{Failure, Ledger},
    storage::{self, AccountRow, ChangeRow},
    tx,
};

/// What the handlers and the reconciler share.
#[derive(Debug, Clone)]
pub(crate) struct Core {
    pub(crate) pool: PgPool,
    pub(crate) ledger: Ledger,
    /// When the reconciler takes over an unfinished step.
    pub(crate) stuck_after: Duration,
}

/// The answer while the ledger cannot confirm an opening.
const OPEN_PENDING: &str =
    "the ledger is unreachable; the account will be opened shortly, retry with the same idempotency key";
/// The answer while the ledger cannot confirm a change.
const CHANGE_PENDING: &str = "the ledger is unreachable; the change is recorded and will be completed shortly, retry with the same \
     idempotency key for its outcome";

pub(crate) fn not_found() -> ServiceError {
    ServiceError::new(ErrorCode::NotFound, "no such account")
}

fn decode_error(err: prost::DecodeError) -> tx::Error {
    tx::Error::Database(sqlx::Error::Decode(Box::new(err)))
}

fn refusal(refusal: Refusal) -> ServiceError {
    let code = match refusal {
        Refusal::NotReady => ErrorCode::AccountNotReady,
        Refusal::Closed => ErrorCode::AccountClosed,
        Refusal::Frozen => ErrorCode::AccountFrozen,
        Refusal::NotFrozen | Refusal::NoOverdraft => ErrorCode::FailedPrecondition,
    };
    ServiceError::new(code, refusal.to_string())
}

/// An account to open, checked.
#[derive(Debug, Clone)]
pub(crate) struct Open {
    pub(crate) key: Key,
    pub(crate) request_hash: Vec<u8>,
    pub(crate) owner: Uuid,
    pub(crate) product: Product,
    pub(crate) currency: &'static str,
    pub(crate) nickname: Nickname,
}

/// Opens an account (steps 1-3). Answers the account (ACTIVE with balances) and whether this was
/// a replay of an earlier request with the same key.
///
/// # Errors
/// Idempotency refusals, `UNAVAILABLE` when the ledger cannot be reached (the account stays
/// `opening` and the reconciler finishes it), database failures.
pub(crate) async fn open(core: &Core, open: Open) -> Result<(Account, bool), ServiceError> {
    let (row, replayed) = begin_open(core, &open).await.map_err(into_service_error)?;
    let (row, balances) = if row.status == crate::domain::Status::Opening {
        finish_open(core, row).await?
    } else {
        let balances =
            core.ledger.balances(row.account_id).await.map_err(|f| f.into_client_error(OPEN_PENDING))?;
        (row, balances)
    };
    Ok((convert::account(&row, Some(balances), View::Owner), replayed))
}

fn into_service_error(err: tx::Error) -> ServiceError {
    match err {
        tx::Error::Refused(refused) => refused,
        tx::Error::Database(db) => ServiceError::internal(&db),
    }
}

/// Step 1: the key and the `opening` row in one transaction (or, for a replay, the account the key
/// opened).
async fn begin_open(core: &Core, open: &Open) -> Result<(AccountRow, bool), tx::Error> {
    let stuck_after = core.stuck_after;
    tx::run(&core.pool, |conn| {
        let open = open.clone();
        Box::pin(async move {
            if let Begin::Replay(bytes) = idempotency::begin(conn, &open.key, &open.request_hash).await? {
                let stored = Account::decode(bytes.as_slice()).map_err(decode_error)?;
                let account_id = Uuid::parse_str(&stored.account_id)
                    .map_err(|e| tx::Error::Database(sqlx::Error::Decode(Box::new(e))))?;
                let row = storage::account(conn, account_id, Some(open.owner))
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                return Ok((row, true));
            }
            let account_id = Uuid::now_v7();
            // A random number is taken with a chance of (accounts / 10^10): draw again then.
            for _ in 0..8 {
                let number = AccountNumber::random();
                let new = storage::NewAccount {
                    account_id,
                    account_number: number.as_str(),
                    owner_user_id: open.owner,
                    product: open.product,
                    currency: open.currency,
                    nickname: open.nickname.as_str(),
                };
                if let Some(row) = storage::insert_opening(conn, &new, stuck_after).await? {
                    let pending = convert::account(&row, None, View::Owner);
                    idempotency::complete(conn, &open.key, &pending.encode_to_vec()).await?;
                    return Ok((row, false));
                }
            }
            Err(tx::Error::Refused(ServiceError::new(
                ErrorCode::Unavailable,
                "no free account number, retry",
            )))
        })
    })
    .await
}

/// Steps 2 and 3 for an `opening` account: the ledger account (created or found), then `active`
/// with `AccountOpened`. Answers the account and its balances.
async fn finish_open(core: &Core, row: AccountRow) -> Result<(AccountRow, Balances), ServiceError> {
    let ledger_account = match core.ledger.create_account(&row).await {
        Ok(account) => account,
        Err(Failure::Refused(refused)) => {
            // The ledger holds an account with this id or number and other data: a bug, not
            // something a retry fixes. The account stays `opening`; the reconciler keeps logging.
            tracing::error!(account_id = %row.account_id, reason = %refused, "the ledger refused to create the ledger account");
            return Err(ServiceError::new(ErrorCode::Internal, "internal error"));
        }
        Err(failure) => return Err(failure.into_client_error(OPEN_PENDING)),
    };
    let account_id = row.account_id;
    let row =
        tx::run(&core.pool, |conn| Box::pin(activate(conn, account_id))).await.map_err(into_service_error)?;
    Ok((row, ledger_account.balances.unwrap_or_default()))
}

/// Step 3: `opening` -> `active` with its event, unless someone else did it first.
async fn activate(conn: &mut PgConnection, account_id: Uuid) -> Result<AccountRow, tx::Error> {
    let Some(row) = storage::activate(conn, account_id).await? else {
        return Ok(storage::account(conn, account_id, None).await?.ok_or(sqlx::Error::RowNotFound)?);
    };
    let number = AccountNumber::parse(&row.account_number)
        .map_err(|e| tx::Error::Database(sqlx::Error::Decode(Box::new(e))))?;
    outbox::publish(
        conn,
        &format!("accounts/{account_id}"),
        &events::AccountOpened {
            account_id: account_id.to_string(),
            owner_user_id: row.owner_user_id.to_string(),
            account_number_last_four: number.last_four().to_owned(),
            product: convert::product(row.product) as i32,
            currency: row.currency.clone(),
        },
    )
    .await?;
    metrics::counter!("accounts_opened_total").increment(1);
    Ok(row)
}

/// A change to make, checked.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) key: Key,
    pub(crate) request_hash: Vec<u8>,
    pub(crate) account_id: Uuid,
    /// For the owner's own RPCs: only their account (another one reads as missing).
    pub(crate) owner: Option<Uuid>,
    pub(crate) action: Action,
    /// The overdraft limit's currency (must be the account's).
    pub(crate) currency: Option<&'static str>,
    pub(crate) actor: Uuid,
    pub(crate) reason: Reason,
    pub(crate) view: View,
}

/// What step 1 found.
enum Step {
    /// The key's stored response.
    Replay(Vec<u8>),
    /// The key's change was applied already (by the reconciler): answer the account as it is.
    Applied,
    /// Call the ledger for this change.
    Pending(Box<(AccountRow, ChangeRow)>),
}

/// Makes a change (steps 1-3). Answers the account after it and whether this was a replay.
///
/// # Errors
/// `NOT_FOUND`, the rule refusals, the ledger's refusals, `CONFLICT` while another change of the
/// account is in flight, `UNAVAILABLE` while the ledger cannot be reached (the reconciler
/// finishes), idempotency refusals, database failures.
pub(crate) async fn change(core: &Core, change: Change) -> Result<(Account, bool), ServiceError> {
    let step = begin_change(core, &change).await.map_err(into_service_error)?;
    let (row, pending) = match step {
        Step::Replay(bytes) => {
            let account = Account::decode(bytes.as_slice()).map_err(|e| ServiceError::internal(&e))?;
            return Ok((account, true));
        }
        Step::Applied => {
            let balances = core
                .ledger
                .balances(change.account_id)
                .await
                .map_err(|f| f.into_client_error(CHANGE_PENDING))?;
            return complete_change(core, &change, None, balances).await;
        }
        Step::Pending(found) => *found,
    };
    match drive(&core.ledger, &pending, &row).await {
        Ok(ledger_account) => {
            complete_change(
                core,
                &change,
                Some(pending.change_id),
                ledger_account.balances.unwrap_or_default(),
            )
            .await
        }
        Err(Failure::Refused(refused)) => {
            let (change_id, action) = (pending.change_id, pending.action);
            let outcome = refused.code.reason();
            tx::run(&core.pool, |conn| Box::pin(abandon(conn, row.account_id, change_id, action, outcome)))
                .await
                .map_err(into_service_error)?;
            Err(refused)
        }
        Err(failure) => Err(failure.into_client_error(CHANGE_PENDING)),
    }
}

/// Step 1.
async fn begin_change(core: &Core, change: &Change) -> Result<Step, tx::Error> {
    let stuck_after = core.stuck_after;
    tx::run(&core.pool, |conn| {
        let change = change.clone();
        Box::pin(async move {
            let row = storage::lock(conn, change.account_id, change.owner).await?.ok_or_else(not_found)?;
            if let Begin::Replay(bytes) = idempotency::begin(conn, &change.key, &change.request_hash).await? {
                return Ok(Step::Replay(bytes));
            }
            // A retry of a request whose change is in flight or was finished by the reconciler.
            if let Some(earlier) = storage::change_by_key(conn, row.account_id, &change.key).await? {
                match earlier.state.as_str() {
                    "applied" => return Ok(Step::Applied),
                    "pending" => return Ok(Step::Pending(Box::new((row, earlier)))),
                    _ => {}
                }
            }
            change.action.check(row.status, row.product).map_err(refusal)?;
            if let Some(currency) = change.currency
                && currency != row.currency
            {
                return Err(ServiceError::new(
                    ErrorCode::CurrencyMismatch,
                    "the limit is in another currency",
                )
                .into());
            }
            if storage::pending_change(conn, row.account_id).await?.is_some() {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    "another change of this account is in progress, retry shortly",
                )
                .into());
            }
            let pending = storage::insert_change(
                conn,
                row.account_id,
                change.action,
                change.actor,
                change.reason.as_str(),
                &change.key,
                stuck_after,
            )
            .await?;
            Ok(Step::Pending(Box::new((row, pending))))
        })
    })
    .await
}

/// Step 2: the ledger call of a change.
async fn drive(ledger: &Ledger, change: &ChangeRow, row: &AccountRow) -> Result<LedgerAccount, Failure> {
    match change.action {
        Action::Freeze { credits_allowed } => {
            ledger.set_status(row.account_id, LedgerAccountStatus::Frozen, credits_allowed).await
        }
        Action::Unfreeze => ledger.set_status(row.account_id, LedgerAccountStatus::Active, true).await,
        Action::Close | Action::ForceClose => {
            ledger.set_status(row.account_id, LedgerAccountStatus::Closed, false).await
        }
        Action::SetOverdraftLimit { limit } => {
            ledger
                .set_overdraft_limit(row.account_id, convert::money(&row.currency, limit), change.change_id)
                .await
        }
    }
}

/// Step 3 (with `change_id`), or only storing the key's response (without): answers the account.
async fn complete_change(
    core: &Core,
    change: &Change,
    change_id: Option<Uuid>,
    balances: Balances,
) -> Result<(Account, bool), ServiceError> {
    tx::run(&core.pool, |conn| {
        let balances = balances.clone();
        let change = change.clone();
        Box::pin(async move {
            if let Begin::Replay(bytes) = idempotency::begin(conn, &change.key, &change.request_hash).await? {
                let account = Account::decode(bytes.as_slice()).map_err(decode_error)?;
                return Ok((account, true));
            }
            let row = match change_id {
                Some(change_id) => apply(conn, change.account_id, change_id).await?,
                None => {
                    storage::account(conn, change.account_id, None).await?.ok_or(sqlx::Error::RowNotFound)?
                }
            };
            let account = convert::account(&row, Some(balances), change.view);
            idempotency::complete(conn, &change.key, &account.encode_to_vec()).await?;
            Ok((account, change_id.is_none()))
        })
    })
    .await
    .map_err(into_service_error)
}

/// Applies a pending change with its event (a change no longer pending was applied by someone
/// else: nothing to do). Locks the account, then the change (the order everyone uses).
async fn apply(conn: &mut PgConnection, account_id: Uuid, change_id: Uuid) -> Result<AccountRow, tx::Error> {
    let row = storage::lock(conn, account_id, None).await?.ok_or(sqlx::Error::RowNotFound)?;
    let change = storage::lock_change(conn, change_id).await?.ok_or(sqlx::Error::RowNotFound)?;
    if change.state != "pending" {
        return Ok(row);
    }
    let row = storage::apply(conn, &change).await?;
    storage::resolve_change(conn, change_id, "applied", "").await?;
    let subject = format!("accounts/{account_id}");
    let owner = row.owner_user_id.to_string();
    let actor = change.actor.to_string();
    match change.action {
        Action::Freeze { credits_allowed } => {
            let event = events::AccountFrozen {
                account_id: account_id.to_string(),
                owner_user_id: owner,
                credits_allowed,
                frozen_by: actor,
            };
            outbox::publish(conn, &subject, &event).await?;
        }
        Action::Unfreeze => {
            let event = events::AccountUnfrozen {
                account_id: account_id.to_string(),
                owner_user_id: owner,
                unfrozen_by: actor,
            };
            outbox::publish(conn, &subject, &event).await?;
        }
        Action::Close | Action::ForceClose => {
            let event = events::AccountClosed {
                account_id: account_id.to_string(),
                owner_user_id: owner,
                closed_by_admin: if change.action == Action::ForceClose { actor } else { String::new() },
            };
            outbox::publish(conn, &subject, &event).await?;
        }
        // No event in the contract for a limit change; the change row is its audit record.
        Action::SetOverdraftLimit { .. } => {}
    }
    metrics::counter!("accounts_changes_total", "action" => change.action.as_str(), "result" => "applied")
        .increment(1);
    Ok(row)
}

/// A change the ledger refused: `abandoned`, with the reason.
async fn abandon(
    conn: &mut PgConnection,
    account_id: Uuid,
    change_id: Uuid,
    action: Action,
    outcome: &str,
) -> Result<(), tx::Error> {
    storage::lock(conn, account_id, None).await?;
    storage::resolve_change(conn, change_id, "abandoned", outcome).await?;
    metrics::counter!("accounts_changes_total", "action" => action.as_str(), "result" => "abandoned")
        .increment(1);
    Ok(())
}

/// The reconciler: every `interval`, finishes due openings and pending changes. Each item is
/// retried with exponential backoff; items are claimed with `SKIP LOCKED`, so replicas share the
/// work instead of repeating it (and a repeat would be harmless: every step is idempotent).
pub(crate) async fn reconcile(core: Core, config: ReconcilerConfig, stop: CancellationToken) {
    loop {
        if let Err(err) = reconcile_once(&core, &config).await {
            tracing::warn!(error = %err, "reconciler round failed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}

/// One round of the reconciler.
async fn reconcile_once(core: &Core, config: &ReconcilerConfig) -> Result<(), sqlx::Error> {
    let limit = i64::from(config.batch_size);
    let openings = {
        let mut conn = core.pool.acquire().await?;
        storage::claim_openings(&mut conn, limit, core.stuck_after, config.max_backoff).await?
    };
    for row in openings {
        let account_id = row.account_id;
        match finish_open(core, row).await {
            Ok(_) => {
                metrics::counter!("accounts_reconciled_total", "kind" => "open").increment(1);
                tracing::info!(%account_id, "reconciler finished an interrupted account opening");
            }
            Err(err) => {
                tracing::warn!(%account_id, error = %err, "reconciler could not finish an opening yet");
            }
        }
    }
    let changes = {
        let mut conn = core.pool.acquire().await?;
        storage::claim_changes(&mut conn, limit, core.stuck_after, config.max_backoff).await?
    };
    for pending in changes {
        let (account_id, change_id) = (pending.account_id, pending.change_id);
        let row = {
            let mut conn = core.pool.acquire().await?;
            storage::account(&mut conn, account_id, None).await?.ok_or(sqlx::Error::RowNotFound)?
        };
        let outcome = match drive(&core.ledger, &pending, &row).await {
            Ok(_) => tx::run(&core.pool, |conn| {
                Box::pin(async move { apply(conn, account_id, change_id).await.map(|_| ()) })
            })
            .await
            .map(|()| "applied"),
            Err(Failure::Refused(refused)) => {
                let (reason, action) = (refused.code.reason(), pending.action);
                tx::run(&core.pool, |conn| Box::pin(abandon(conn, account_id, change_id, action, reason)))
                    .await
                    .map(|()| "abandoned")
            }
            Err(Failure::Unavailable(status)) => {
                tracing::warn!(%account_id, %change_id, code = ?status.code(), "reconciler could not reach the ledger yet");
                continue;
            }
        };
        match outcome {
            Ok(result) => {
                metrics::counter!("accounts_reconciled_total", "kind" => "change").increment(1);
                tracing::info!(%account_id, %change_id, action = pending.action.as_str(), result, "reconciler finished an interrupted change");
            }
            Err(err) => {
                tracing::warn!(%account_id, %change_id, error = %err, "reconciler could not finish a change");
            }
        }
    }
    Ok(())
}
