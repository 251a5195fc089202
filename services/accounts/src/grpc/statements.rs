//! Statements (docs/adr/0013): computed on demand from the ledger for calendar months (UTC), never
//! stored. A statement's numbers come from the journal in two reads — the period summary
//! (opening, credits, debits, closing from `SummarizeAccountPeriods`) and the lines
//! (`ListEntries`, oldest first) — and are answered only when they reconcile:
//! `opening + sum(lines) == closing`. A posting landing between the two reads (only possible in
//! the current month) makes them disagree; the statement is then read again.

use bank_money::Currency;
use bank_platform::{ErrorCode, ServiceError, pagination::Page};
use bank_proto::{
    accounts::v1::{Statement, StatementLine},
    common::v1::{Money, PageInfo},
    ledger::v1::{Entry, PeriodSummary},
};
use time::OffsetDateTime;
use tonic::Status;
use uuid::Uuid;

use bank_platform::grpc::fields::{self, internal};

use super::{Api, not_found};
use crate::{
    convert::timestamp,
    document,
    domain::{Status as AccountStatus, statement::Period},
    ledger::Failure,
    storage::{self, AccountRow},
};

/// Page token kind of `ListStatements` (keyset position: the month index of the last statement).
const PAGE_KIND: &str = "statements";

/// How often a statement is read again when a concurrent posting made its reads disagree.
const ATTEMPTS: usize = 3;

fn ledger_error(failure: Failure) -> Status {
    match failure {
        Failure::Refused(refused) => {
            // The account exists and is not opening, so the ledger knows it: this is a bug.
            tracing::error!(reason = %refused, "the ledger refused a statement read");
            ServiceError::new(ErrorCode::Internal, "internal error").into()
        }
        failure @ Failure::Unavailable(_) => failure
            .into_client_error("the ledger is unreachable, statements cannot be read; retry shortly")
            .into(),
    }
}

fn minor(money: Option<&Money>) -> i64 {
    money.map_or(0, |m| m.minor_units)
}

/// A statement with or without lines.
struct Computed {
    statement: Statement,
    lines: Vec<Entry>,
}

impl Api {
    /// The caller's account, usable for statements (not still opening).
    async fn statement_account(&self, owner: Uuid, account_id: &str) -> Result<AccountRow, Status> {
        let account_id = fields::uuid("account_id", account_id)?;
        let row = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::account(&mut conn, account_id, Some(owner))
                .await
                .map_err(internal)?
                .ok_or_else(not_found)?
        };
        if row.status == AccountStatus::Opening {
            return Err(
                ServiceError::new(ErrorCode::AccountNotReady, "the account is still being opened").into()
            );
        }
        Ok(row)
    }

    /// One page of statements (newest first, without lines).
    pub(super) async fn list_statements(
        &self,
        owner: Uuid,
        account_id: &str,
        page: Option<&bank_proto::common::v1::PageRequest>,
    ) -> Result<(Vec<Statement>, PageInfo), Status> {
        let page_request = page.cloned().unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, PAGE_KIND, 24, 120)?;
        let row = self.statement_account(owner, account_id).await?;
        let before = if page.position == 0 {
            None
        } else {
            Some(Period::from_index(page.position).ok_or_else(|| {
                fields::invalid("page.page_token", "INVALID", "page_token is not valid here")
            })?)
        };
        let now = OffsetDateTime::now_utc();
        let size = usize::try_from(page.size).unwrap_or(24);
        let periods = crate::domain::statement::periods(row.opened_at, row.closed_at, now, before, size);
        let Some(oldest) = periods.last().copied() else {
            return Ok((Vec::new(), PageInfo::default()));
        };
        // One ledger read for the whole page: boundaries oldest first.
        let mut boundaries: Vec<OffsetDateTime> = periods.iter().rev().map(|p| p.start()).collect();
        boundaries.push(periods[0].end());
        let summaries =
            self.core.ledger.summarize(row.account_id, &boundaries).await.map_err(ledger_error)?;
        if summaries.len() != periods.len() {
            return Err(ServiceError::new(ErrorCode::Internal, "internal error").into());
        }
        let statements = periods
            .iter()
            .zip(summaries.iter().rev())
            .map(|(period, summary)| statement(&row, *period, summary, now))
            .collect();
        let next = page.next_token(PAGE_KIND, periods.len(), oldest.index());
        Ok((statements, PageInfo { next_page_token: next, total_size: None }))
    }

    /// One statement with its lines, reconciled.
    async fn computed(
        &self,
        owner: Uuid,
        account_id: &str,
        statement_id: &str,
    ) -> Result<(AccountRow, Period, Computed), Status> {
        let row = self.statement_account(owner, account_id).await?;
        let statement_id = fields::uuid("statement_id", statement_id)?;
        let now = OffsetDateTime::now_utc();
        let period = Period::of_statement(row.account_id, statement_id)
            .filter(|p| crate::domain::statement::has_statement(*p, row.opened_at, row.closed_at, now))
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such statement")))?;
        for _ in 0..ATTEMPTS {
            let summary = self
                .core
                .ledger
                .summarize(row.account_id, &[period.start(), period.end()])
                .await
                .map_err(ledger_error)?
                .pop()
                .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::Internal, "internal error")))?;
            let lines = self
                .core
                .ledger
                .entries(row.account_id, period.start(), period.end())
                .await
                .map_err(ledger_error)?;
            let mut balance = minor(summary.opening_balance.as_ref());
            for line in &lines {
                balance = bank_money::add(balance, minor(line.amount.as_ref())).map_err(internal)?;
            }
            if balance == minor(summary.closing_balance.as_ref())
                && i64::try_from(lines.len()).ok() == Some(summary.entry_count)
            {
                let mut statement = statement(&row, period, &summary, now);
                statement.lines = lines.iter().map(line).collect();
                return Ok((row, period, Computed { statement, lines }));
            }
            tracing::info!(account_id = %row.account_id, period = %period.label(), "statement reads disagreed, reading again");
        }
        Err(ServiceError::new(ErrorCode::Unavailable, "the account is busy, retry shortly").into())
    }

    /// One statement with its lines (JSON).
    pub(super) async fn get_statement(
        &self,
        owner: Uuid,
        account_id: &str,
        statement_id: &str,
    ) -> Result<Statement, Status> {
        Ok(self.computed(owner, account_id, statement_id).await?.2.statement)
    }

    /// One statement as a document: (content type, bytes, file name).
    pub(super) async fn download_statement(
        &self,
        owner: Uuid,
        account_id: &str,
        statement_id: &str,
        csv: bool,
    ) -> Result<(String, Vec<u8>, String), Status> {
        let (row, period, computed) = self.computed(owner, account_id, statement_id).await?;
        let currency = Currency::parse(&row.currency).map_err(internal)?;
        let format = |money: Option<&Money>| currency.format(minor(money));
        let s = &computed.statement;
        let last_four =
            row.account_number.get(row.account_number.len().saturating_sub(4)..).unwrap_or_default();
        let doc = document::Statement {
            account: format!("****{last_four}"),
            currency: row.currency.clone(),
            period: period.label(),
            opening: format(s.opening_balance.as_ref()),
            closing: format(s.closing_balance.as_ref()),
            credits: format(s.total_credits.as_ref()),
            debits: format(s.total_debits.as_ref()),
            generated: rfc3339(OffsetDateTime::now_utc()),
            lines: computed
                .lines
                .iter()
                .map(|e| document::Line {
                    date: e
                        .posted_at
                        .as_ref()
                        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
                        .map(|t| rfc3339(t).chars().take(10).collect())
                        .unwrap_or_default(),
                    description: e.description.clone(),
                    amount: format(e.amount.as_ref()),
                    balance: format(e.balance_after.as_ref()),
                })
                .collect(),
        };
        let name = format!("statement-{}-{last_four}", period.label());
        Ok(if csv {
            ("text/csv; charset=utf-8".to_owned(), document::csv(&doc), format!("{name}.csv"))
        } else {
            ("application/pdf".to_owned(), document::pdf(&doc), format!("{name}.pdf"))
        })
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The statement of `period` from its summary (no lines). For the current month the closing
/// balance is the one at `now`.
fn statement(row: &AccountRow, period: Period, summary: &PeriodSummary, now: OffsetDateTime) -> Statement {
    Statement {
        statement_id: period.statement_id(row.account_id).to_string(),
        account_id: row.account_id.to_string(),
        period: period.label(),
        period_start: Some(timestamp(period.start())),
        period_end: Some(timestamp(period.end())),
        opening_balance: summary.opening_balance.clone(),
        closing_balance: summary.closing_balance.clone(),
        total_credits: summary.total_credits.clone(),
        total_debits: summary.total_debits.clone(),
        line_count: i32::try_from(summary.entry_count).unwrap_or(i32::MAX),
        generated_at: Some(timestamp(now)),
        lines: Vec::new(),
    }
}

fn line(entry: &Entry) -> StatementLine {
    StatementLine {
        entry_id: entry.entry_id.clone(),
        transaction_id: entry.transaction_id.clone(),
        posted_at: entry.posted_at,
        description: entry.description.clone(),
        amount: entry.amount.clone(),
        balance_after: entry.balance_after.clone(),
    }
}
