//! The integrity checks (admin): one account's hash chain, and every ledger invariant at once —
//! per-transaction and per-currency sums, balances against their entries, every chain.

use std::collections::HashMap;

use bank_proto::ledger::v1::{ChainVerification, InvariantViolation, VerifyLedgerInvariantsResponse};
use futures::TryStreamExt as _;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    convert::timestamp,
    domain::{Account, chain::Walk},
    storage::journal,
};

/// Recomputes `account`'s chain and compares its head with the account row.
///
/// # Errors
/// The database failed.
pub(crate) async fn verify_chain(pool: &PgPool, account: &Account) -> Result<ChainVerification, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut walk = Walk::default();
    for link in journal::chain(&mut conn, account.id).await? {
        walk.push(&link);
    }
    let (checked, problem) = walk.finish(account.entry_count, &account.last_hash);
    Ok(ChainVerification {
        account_id: account.id.to_string(),
        intact: problem.is_none(),
        entries_checked: checked,
        first_broken_sequence: problem.map_or(0, |(sequence, _)| sequence),
        problem: problem.map(|(_, what)| what.to_owned()).unwrap_or_default(),
        checked_at: Some(timestamp(OffsetDateTime::now_utc())),
    })
}

/// Every ledger invariant, with each breach reported; counts `ledger_invariant_checks_total`.
///
/// # Errors
/// The database failed.
pub(crate) async fn verify_invariants(pool: &PgPool) -> Result<VerifyLedgerInvariantsResponse, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let report = check(&mut conn).await?;
    let result = if report.healthy { "healthy" } else { "breach" };
    metrics::counter!("ledger_invariant_checks_total", "result" => result).increment(1);
    Ok(report)
}

async fn check(conn: &mut PgConnection) -> Result<VerifyLedgerInvariantsResponse, sqlx::Error> {
    let mut violations = Vec::new();
    for (transaction, currency, sum) in journal::unbalanced_transactions(conn).await? {
        violations.push(InvariantViolation {
            invariant: "transaction_balanced".into(),
            transaction_id: transaction.to_string(),
            currency,
            detail: format!("postings sum to {sum}"),
            ..InvariantViolation::default()
        });
    }
    for (currency, sum) in journal::unbalanced_currencies(conn).await? {
        violations.push(InvariantViolation {
            invariant: "ledger_balanced".into(),
            currency,
            detail: format!("balances sum to {sum}"),
            ..InvariantViolation::default()
        });
    }
    for (account, posted, sum) in journal::drifted_balances(conn).await? {
        violations.push(InvariantViolation {
            invariant: "balance_matches_entries".into(),
            account_id: account.to_string(),
            detail: format!("posted {posted}, entries sum to {sum}"),
            ..InvariantViolation::default()
        });
    }
    // Every chain in one ordered pass over the journal (no query per account).
    let heads = journal::chain_heads(conn).await?;
    let mut walks: HashMap<Uuid, Walk> = HashMap::new();
    {
        let mut links = journal::all_links(conn);
        while let Some(link) = links.try_next().await? {
            walks.entry(link.account_id).or_default().push(&link);
        }
    }
    for (id, entry_count, last_hash) in &heads {
        let walk = walks.remove(id).unwrap_or_default();
        if let (_, Some((_, problem))) = walk.finish(*entry_count, last_hash) {
            violations.push(InvariantViolation {
                invariant: "hash_chain_intact".into(),
                account_id: id.to_string(),
                detail: problem.to_owned(),
                ..InvariantViolation::default()
            });
        }
    }
    Ok(VerifyLedgerInvariantsResponse {
        healthy: violations.is_empty(),
        violations,
        transactions_checked: journal::transaction_count(conn).await?,
        accounts_checked: i64::try_from(heads.len()).unwrap_or(i64::MAX),
        checked_at: Some(timestamp(OffsetDateTime::now_utc())),
    })
}
