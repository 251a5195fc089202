//! The book of one batch: the accounts (and holds) a batch of postings locked, as they are after
//! every posting applied so far, in arrival order. Each operation checks every rule on the state
//! left by the earlier ones and changes nothing when it refuses; [`Book::mark`] and
//! [`Book::rollback`] undo a whole command (several operations) when a later step of it refuses.
//! What the batch must write is read back with [`Book::changes`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    account::{Account, SystemType},
    hold::{Hold, HoldStatus, RefundRecord, Release},
    posting::{self, EntryFacts, Leg, Plan, Refusal, TransactionKind},
};

/// A journal transaction the batch posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// What it records.
    pub kind: TransactionKind,
    /// Shown in the history.
    pub description: String,
    /// When (microsecond precision).
    pub posted_at: OffsetDateTime,
    /// The principal.
    pub initiated_by: String,
    /// The originating object.
    pub reference: String,
    /// An administrator's reason.
    pub reason: String,
    /// Currency of every entry.
    pub currency: String,
    /// For a reversal: the reversed transaction.
    pub reverses: Option<Uuid>,
    /// Its entries, in leg order.
    pub entries: Vec<Entry>,
}

/// One entry: a leg as posted, linked into its account's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// The account.
    pub account: Uuid,
    /// Signed minor units.
    pub amount: i64,
    /// The account's posted balance after it.
    pub balance_after: i64,
    /// Position in the account's chain.
    pub seq: i64,
    /// The previous entry's hash.
    pub previous_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// A refund the batch records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// The hold.
    pub hold: Uuid,
    /// The caller's refund reference.
    pub reference: String,
    /// Minor units.
    pub amount: i64,
    /// Its transaction.
    pub transaction: Uuid,
}

/// A transaction to reverse, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// Id.
    pub id: Uuid,
    /// What it recorded (as stored: an unknown kind is never refused for being unknown).
    pub kind: Option<TransactionKind>,
    /// Its description.
    pub description: String,
    /// Its legs: account, amount, currency — in entry order.
    pub legs: Vec<(Uuid, i64, String)>,
}

/// The outcome of one posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The transaction.
    pub transaction_id: Uuid,
    /// When.
    pub posted_at: OffsetDateTime,
    /// Per leg, in plan order: entry id, account, amount, balance after.
    pub entries: Vec<(Uuid, Uuid, i64, i64)>,
    /// Accounts whose available balance this posting took below their low-balance threshold.
    pub crossed_below: Vec<Uuid>,
}

/// A capture's or a refund's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldPosting {
    /// The hold after it.
    pub hold: Hold,
    /// What was posted (`None`: a repeat of a capture or refund already made).
    pub posted: Option<(Plan, Posted)>,
}

/// What the batch writes, read from the book after its last command.
#[derive(Debug)]
pub struct Changes<'a> {
    /// New transactions (with their entries), in posting order.
    pub journal: &'a [Transaction],
    /// Every account whose balances or chain changed, in its final state (id order).
    pub accounts: Vec<&'a Account>,
    /// Holds created by the batch, in their final state.
    pub new_holds: Vec<&'a Hold>,
    /// Existing holds the batch changed, in their final state.
    pub changed_holds: Vec<&'a Hold>,
    /// Refunds recorded.
    pub refunds: &'a [Refund],
}

/// A point to roll back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    undo: usize,
    journal: usize,
    refunds: usize,
}

#[derive(Debug)]
enum Undo {
    Account(Account),
    AccountDirty(Uuid),
    Hold(Uuid, Option<Hold>),
    HoldDirty(Uuid),
    HoldRef((String, String)),
    Refund((Uuid, String)),
    Reversed(Uuid),
}

/// The locked state of a batch (see the module docs).
#[derive(Debug, Default)]
pub struct Book {
    accounts: BTreeMap<Uuid, Account>,
    numbers: HashMap<String, Uuid>,
    holds: HashMap<Uuid, Hold>,
    hold_refs: HashMap<(String, String), Uuid>,
    new_holds: BTreeSet<Uuid>,
    refunds: HashMap<(Uuid, String), RefundRecord>,
    reversed: HashSet<Uuid>,
    journal: Vec<Transaction>,
    new_refunds: Vec<Refund>,
    dirty_accounts: BTreeSet<Uuid>,
    dirty_holds: BTreeSet<Uuid>,
    undo: Vec<Undo>,
}

impl Book {
    /// The book over the locked `accounts` and `holds`, the refunds already made on those holds
    /// and which of the batch's reversal targets are reversed already.
    #[must_use]
    pub fn new(
        accounts: Vec<Account>,
        holds: Vec<Hold>,
        refunds: Vec<(Uuid, String, RefundRecord)>,
        reversed: Vec<Uuid>,
    ) -> Self {
        let numbers = accounts
            .iter()
            .filter(|a| a.is_customer())
            .filter_map(|a| a.number.clone().map(|n| (n, a.id)))
            .collect();
        let hold_refs = holds.iter().map(|h| ((h.created_by.clone(), h.reference.clone()), h.id)).collect();
        Self {
            accounts: accounts.into_iter().map(|a| (a.id, a)).collect(),
            numbers,
            holds: holds.into_iter().map(|h| (h.id, h)).collect(),
            hold_refs,
            refunds: refunds
                .into_iter()
                .map(|(hold, reference, record)| ((hold, reference), record))
                .collect(),
            reversed: reversed.into_iter().collect(),
            ..Self::default()
        }
    }

    /// A locked account.
    #[must_use]
    pub fn account(&self, id: Uuid) -> Option<&Account> {
        self.accounts.get(&id)
    }

    /// A locked customer account by its number.
    #[must_use]
    pub fn by_number(&self, number: &str) -> Option<&Account> {
        self.numbers.get(number).and_then(|id| self.accounts.get(id))
    }

    /// A locked (or newly created) hold.
    #[must_use]
    pub fn hold(&self, id: Uuid) -> Option<&Hold> {
        self.holds.get(&id)
    }

    /// A hold by its creator's reference.
    #[must_use]
    pub fn hold_by_reference(&self, created_by: &str, reference: &str) -> Option<&Hold> {
        self.hold_refs.get(&(created_by.to_owned(), reference.to_owned())).and_then(|id| self.holds.get(id))
    }

    /// The current point, to [`rollback`](Self::rollback) to.
    #[must_use]
    pub fn mark(&self) -> Mark {
        Mark { undo: self.undo.len(), journal: self.journal.len(), refunds: self.new_refunds.len() }
    }

    /// Undoes everything since `mark`.
    pub fn rollback(&mut self, mark: Mark) {
        while self.undo.len() > mark.undo {
            match self.undo.pop() {
                Some(Undo::Account(previous)) => {
                    self.accounts.insert(previous.id, previous);
                }
                Some(Undo::AccountDirty(id)) => {
                    self.dirty_accounts.remove(&id);
                }
                Some(Undo::Hold(id, previous)) => match previous {
                    Some(previous) => {
                        self.holds.insert(id, previous);
                    }
                    None => {
                        self.holds.remove(&id);
                        self.new_holds.remove(&id);
                    }
                },
                Some(Undo::HoldDirty(id)) => {
                    self.dirty_holds.remove(&id);
                }
                Some(Undo::HoldRef(key)) => {
                    self.hold_refs.remove(&key);
                }
                Some(Undo::Refund(key)) => {
                    self.refunds.remove(&key);
                }
                Some(Undo::Reversed(id)) => {
                    self.reversed.remove(&id);
                }
                None => break,
            }
        }
        self.journal.truncate(mark.journal);
        self.new_refunds.truncate(mark.refunds);
    }

    /// The account, remembered for a rollback before it changes.
    fn account_mut(&mut self, id: Uuid) -> Result<&mut Account, Refusal> {
        let account = self.accounts.get(&id).ok_or(Refusal::NoSuchAccount)?;
        self.undo.push(Undo::Account(account.clone()));
        if self.dirty_accounts.insert(id) {
            self.undo.push(Undo::AccountDirty(id));
        }
        self.accounts.get_mut(&id).ok_or(Refusal::NoSuchAccount)
    }

    /// The hold, remembered for a rollback before it changes.
    fn hold_mut(&mut self, id: Uuid) -> Result<&mut Hold, Refusal> {
        let hold = self.holds.get(&id).ok_or(Refusal::NoSuchHold)?;
        self.undo.push(Undo::Hold(id, Some(hold.clone())));
        if !self.new_holds.contains(&id) && self.dirty_holds.insert(id) {
            self.undo.push(Undo::HoldDirty(id));
        }
        self.holds.get_mut(&id).ok_or(Refusal::NoSuchHold)
    }

    /// Posts `plan` at `now`: every rule checked on every leg first (on the balances the earlier
    /// postings of the batch left), then the entries, balances and chain links.
    ///
    /// # Errors
    /// The first rule a leg breaks; nothing changed.
    pub fn post(&mut self, plan: &Plan, now: OffsetDateTime) -> Result<Posted, Refusal> {
        posting::check_legs(&plan.legs)?;
        let mut before: BTreeMap<Uuid, i64> = BTreeMap::new();
        for leg in &plan.legs {
            let account = self.accounts.get(&leg.account).ok_or(Refusal::NoSuchAccount)?;
            posting::check_leg(account, leg.amount, &plan.currency, plan.correction)?;
            before.insert(account.id, account.available());
        }
        // Balances in range for every leg before anything changes.
        let mut after: BTreeMap<Uuid, i64> = BTreeMap::new();
        for leg in &plan.legs {
            let posted = match after.get(&leg.account) {
                Some(posted) => *posted,
                None => self.accounts.get(&leg.account).ok_or(Refusal::NoSuchAccount)?.posted,
            };
            after.insert(leg.account, bank_money::add(posted, leg.amount).map_err(|_| Refusal::OutOfRange)?);
        }

        let transaction_id = Uuid::now_v7();
        let posted_at = posting::journal_time(now);
        let mut entries = Vec::with_capacity(plan.legs.len());
        let mut rows = Vec::with_capacity(plan.legs.len());
        for Leg { account, amount } in &plan.legs {
            let account = self.account_mut(*account)?;
            let balance_after = account.posted.checked_add(*amount).ok_or(Refusal::OutOfRange)?;
            let seq = account.entry_count + 1;
            let entry_id = Uuid::now_v7();
            let hash = posting::entry_hash(
                &account.last_hash,
                &EntryFacts {
                    entry_id,
                    transaction_id,
                    account_id: account.id,
                    seq,
                    amount: *amount,
                    currency: &plan.currency,
                    balance_after,
                    posted_at,
                },
            );
            let previous_hash = std::mem::replace(&mut account.last_hash, hash.clone());
            account.posted = balance_after;
            account.entry_count = seq;
            entries.push((entry_id, account.id, *amount, balance_after));
            rows.push(Entry {
                id: entry_id,
                account: account.id,
                amount: *amount,
                balance_after,
                seq,
                previous_hash,
                hash,
            });
        }
        let crossed_below = before
            .iter()
            .filter_map(|(id, available_before)| {
                let account = self.accounts.get(id)?;
                let threshold = account.low_balance_threshold?;
                posting::crossed(*available_before, account.available(), threshold).then_some(*id)
            })
            .collect();
        self.journal.push(Transaction {
            id: transaction_id,
            kind: plan.kind,
            description: plan.description.clone(),
            posted_at,
            initiated_by: plan.initiated_by.clone(),
            reference: plan.reference.clone(),
            reason: plan.reason.clone(),
            currency: plan.currency.clone(),
            reverses: plan.reverses,
            entries: rows,
        });
        if let Some(reversed) = plan.reverses
            && self.reversed.insert(reversed)
        {
            self.undo.push(Undo::Reversed(reversed));
        }
        Ok(Posted { transaction_id, posted_at, entries, crossed_below })
    }

    /// Reserves `hold.amount` of its account for a new hold (a customer account, active, in the
    /// currency, with enough available balance).
    ///
    /// # Errors
    /// The rule that refuses it.
    pub fn reserve(&mut self, hold: Hold) -> Result<(), Refusal> {
        let account = self.accounts.get(&hold.account).ok_or(Refusal::NoSuchAccount)?;
        posting::check_reserve(account, &hold.currency, hold.amount)?;
        let held = account.held.checked_add(hold.amount).ok_or(Refusal::OutOfRange)?;
        self.account_mut(hold.account)?.held = held;
        let key = (hold.created_by.clone(), hold.reference.clone());
        self.undo.push(Undo::Hold(hold.id, None));
        self.new_holds.insert(hold.id);
        if self.hold_refs.insert(key.clone(), hold.id).is_none() {
            self.undo.push(Undo::HoldRef(key));
        }
        self.holds.insert(hold.id, hold);
        Ok(())
    }

    /// Releases the reservation of an active hold (void or expiry). Releasing a hold already
    /// released the same way changes nothing and answers it (a repeat).
    ///
    /// # Errors
    /// The hold is not active.
    pub fn release(&mut self, hold_id: Uuid, release: Release, now: OffsetDateTime) -> Result<Hold, Refusal> {
        let hold = self.holds.get(&hold_id).ok_or(Refusal::NoSuchHold)?;
        if hold.status == release.status() {
            return Ok(hold.clone());
        }
        if hold.status != HoldStatus::Active {
            return Err(Refusal::HoldNotActive("the hold is not active"));
        }
        let (account, amount) = (hold.account, hold.amount);
        self.unreserve(account, amount)?;
        let hold = self.hold_mut(hold_id)?;
        hold.status = release.status();
        hold.updated_at = now;
        Ok(hold.clone())
    }

    fn unreserve(&mut self, account: Uuid, amount: i64) -> Result<(), Refusal> {
        let held = self.accounts.get(&account).ok_or(Refusal::NoSuchAccount)?.held;
        let held =
            held.checked_sub(amount).filter(|h| *h >= 0).ok_or(Refusal::Malformed("held below zero"))?;
        self.account_mut(account)?.held = held;
        Ok(())
    }

    /// Captures `amount` of an active hold (the whole hold when `None`): the reservation is
    /// released and the captured part posted from the account to `system` (every posting rule
    /// applies). A capture of a captured hold with the same amount is a repeat and answers it.
    ///
    /// # Errors
    /// The hold is not active, the amount exceeds it, or a posting rule refuses.
    pub fn capture(
        &mut self,
        hold_id: Uuid,
        amount: Option<i64>,
        system: Uuid,
        initiated_by: &str,
        now: OffsetDateTime,
    ) -> Result<HoldPosting, Refusal> {
        let hold = self.holds.get(&hold_id).ok_or(Refusal::NoSuchHold)?.clone();
        let amount = amount.unwrap_or(hold.amount);
        if hold.status == HoldStatus::Captured && hold.captured == amount {
            return Ok(HoldPosting { hold, posted: None });
        }
        if hold.status != HoldStatus::Active {
            return Err(Refusal::HoldNotActive("the hold is not active"));
        }
        if amount > hold.amount {
            return Err(Refusal::ExceedsHold("more than the held amount"));
        }
        let mark = self.mark();
        let outcome = self.capture_active(&hold, amount, system, initiated_by, now);
        if outcome.is_err() {
            self.rollback(mark);
        }
        outcome
    }

    fn capture_active(
        &mut self,
        hold: &Hold,
        amount: i64,
        system: Uuid,
        initiated_by: &str,
        now: OffsetDateTime,
    ) -> Result<HoldPosting, Refusal> {
        // Release the whole reservation, then post the captured part.
        self.unreserve(hold.account, hold.amount)?;
        let plan = Plan {
            kind: TransactionKind::HoldCapture,
            description: hold.description.clone(),
            initiated_by: initiated_by.to_owned(),
            reference: hold.id.to_string(),
            reason: String::new(),
            currency: hold.currency.clone(),
            legs: vec![Leg { account: hold.account, amount: -amount }, Leg { account: system, amount }],
            reverses: None,
            correction: false,
        };
        let posted = self.post(&plan, now)?;
        let stored = self.hold_mut(hold.id)?;
        stored.status = HoldStatus::Captured;
        stored.captured = amount;
        stored.capture_transaction = Some(posted.transaction_id);
        stored.updated_at = now;
        Ok(HoldPosting { hold: stored.clone(), posted: Some((plan, posted)) })
    }

    /// Refunds `amount` of a captured hold under the caller's `reference`, posted from `system` to
    /// the account. A repeat of the reference with the same amount answers the hold unchanged.
    ///
    /// # Errors
    /// The reference was used for another amount, the hold is not captured, the refunds would
    /// exceed the captured amount, or a posting rule refuses.
    #[allow(clippy::too_many_arguments)]
    pub fn refund(
        &mut self,
        hold_id: Uuid,
        reference: &str,
        amount: i64,
        description: &str,
        system: Uuid,
        initiated_by: &str,
        now: OffsetDateTime,
    ) -> Result<HoldPosting, Refusal> {
        let hold = self.holds.get(&hold_id).ok_or(Refusal::NoSuchHold)?.clone();
        let key = (hold_id, reference.to_owned());
        if let Some((done, _)) = self.refunds.get(&key) {
            if *done != amount {
                return Err(Refusal::RefundReferenceReused);
            }
            return Ok(HoldPosting { hold, posted: None });
        }
        if hold.status != HoldStatus::Captured {
            return Err(Refusal::HoldNotActive("only a captured hold can be refunded"));
        }
        let refunded = hold.refunded.checked_add(amount).ok_or(Refusal::OutOfRange)?;
        if refunded > hold.captured {
            return Err(Refusal::ExceedsHold("more than the captured amount"));
        }
        let plan = Plan {
            kind: TransactionKind::HoldRefund,
            description: description.to_owned(),
            initiated_by: initiated_by.to_owned(),
            reference: reference.to_owned(),
            reason: String::new(),
            currency: hold.currency.clone(),
            legs: vec![Leg { account: system, amount: -amount }, Leg { account: hold.account, amount }],
            reverses: None,
            correction: false,
        };
        let posted = self.post(&plan, now)?;
        self.refunds.insert(key.clone(), (amount, posted.transaction_id));
        self.undo.push(Undo::Refund(key));
        self.new_refunds.push(Refund {
            hold: hold_id,
            reference: reference.to_owned(),
            amount,
            transaction: posted.transaction_id,
        });
        let stored = self.hold_mut(hold_id)?;
        stored.refunded = refunded;
        stored.updated_at = now;
        Ok(HoldPosting { hold: stored.clone(), posted: Some((plan, posted)) })
    }

    /// Posts the mirror image of `original` (at most once per transaction) as a correction by
    /// `admin` for `reason`.
    ///
    /// # Errors
    /// The original cannot be reversed, or already was, or an account is closed.
    pub fn reverse(
        &mut self,
        original: &Original,
        reason: &str,
        admin: &str,
        now: OffsetDateTime,
    ) -> Result<(Plan, Posted), Refusal> {
        match original.kind {
            Some(TransactionKind::Reversal) => {
                return Err(Refusal::NotReversible("a reversal cannot be reversed"));
            }
            Some(TransactionKind::HoldCapture) => {
                return Err(Refusal::NotReversible("a hold capture is refunded, not reversed"));
            }
            _ => {}
        }
        let currency = original.legs.first().map(|(_, _, c)| c.clone()).ok_or(Refusal::NoSuchTransaction)?;
        if original.legs.iter().any(|(_, _, c)| *c != currency) {
            return Err(Refusal::NotReversible("a cross-currency transaction cannot be reversed"));
        }
        if self.reversed.contains(&original.id) {
            return Err(Refusal::AlreadyReversed);
        }
        let legs = original
            .legs
            .iter()
            .map(|(account, amount, _)| {
                amount
                    .checked_neg()
                    .map(|amount| Leg { account: *account, amount })
                    .ok_or(Refusal::OutOfRange)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plan = Plan {
            kind: TransactionKind::Reversal,
            description: format!("Reversal: {}", original.description).chars().take(140).collect(),
            initiated_by: admin.to_owned(),
            reference: original.id.to_string(),
            reason: reason.to_owned(),
            currency,
            legs,
            reverses: Some(original.id),
            correction: true,
        };
        let posted = self.post(&plan, now)?;
        Ok((plan, posted))
    }

    /// What the batch writes.
    #[must_use]
    pub fn changes(&self) -> Changes<'_> {
        Changes {
            journal: &self.journal,
            accounts: self.dirty_accounts.iter().filter_map(|id| self.accounts.get(id)).collect(),
            new_holds: self.new_holds.iter().filter_map(|id| self.holds.get(id)).collect(),
            changed_holds: self.dirty_holds.iter().filter_map(|id| self.holds.get(id)).collect(),
            refunds: &self.new_refunds,
        }
    }

    /// Whether the batch writes anything.
    #[must_use]
    pub fn is_unchanged(&self) -> bool {
        self.journal.is_empty()
            && self.dirty_accounts.is_empty()
            && self.new_holds.is_empty()
            && self.dirty_holds.is_empty()
            && self.new_refunds.is_empty()
    }
}

/// The system account of `kind` in a batch: `system(kind)` as the engine resolved it.
pub type SystemAccounts = HashMap<(SystemType, String), Uuid>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::domain::{
        AccountStatus,
        account::{AccountKind, GENESIS_HASH},
        chain::{Link, Walk},
    };

    fn account(kind: AccountKind, posted: i64, overdraft: i64) -> Account {
        Account {
            id: Uuid::now_v7(),
            kind,
            number: matches!(kind, AccountKind::Customer).then(|| format!("N{}", Uuid::now_v7().simple())),
            owner: Some(Uuid::now_v7()),
            currency: "EUR".into(),
            status: AccountStatus::Active,
            credits_allowed: true,
            overdraft_limit: overdraft,
            posted,
            held: 0,
            entry_count: 0,
            last_hash: GENESIS_HASH.into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            low_balance_threshold: None,
        }
    }

    fn transfer(from: Uuid, to: Uuid, amount: i64) -> Plan {
        Plan {
            kind: TransactionKind::Transfer,
            description: String::new(),
            initiated_by: "u".into(),
            reference: "r".into(),
            reason: String::new(),
            currency: "EUR".into(),
            legs: vec![Leg { account: from, amount: -amount }, Leg { account: to, amount }],
            reverses: None,
            correction: false,
        }
    }

    fn hold(account: Uuid, amount: i64, reference: &str) -> Hold {
        Hold {
            id: Uuid::now_v7(),
            account,
            amount,
            currency: "EUR".into(),
            captured: 0,
            refunded: 0,
            status: HoldStatus::Active,
            counterparty: SystemType::CardSettlement,
            created_by: "cards".into(),
            reference: reference.into(),
            description: "coffee".into(),
            expires_at: OffsetDateTime::UNIX_EPOCH,
            capture_transaction: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// Every chain the book wrote verifies from genesis.
    fn chains_verify(book: &Book, accounts: &[Uuid]) {
        for id in accounts {
            let mut walk = Walk::default();
            for transaction in book.changes().journal {
                for entry in transaction.entries.iter().filter(|e| e.account == *id) {
                    walk.push(&Link {
                        entry_id: entry.id,
                        transaction_id: transaction.id,
                        account_id: entry.account,
                        seq: entry.seq,
                        sequence: entry.seq,
                        amount: entry.amount,
                        currency: transaction.currency.clone(),
                        balance_after: entry.balance_after,
                        posted_at: transaction.posted_at,
                        previous_hash: entry.previous_hash.clone(),
                        hash: entry.hash.clone(),
                    });
                }
            }
            let head = book.account(*id).unwrap();
            assert_eq!(walk.finish(head.entry_count, &head.last_hash).1, None, "chain of {id}");
        }
    }

    #[test]
    fn each_posting_sees_the_balances_the_earlier_ones_left() {
        let a = account(AccountKind::Customer, 0, 0);
        let b = account(AccountKind::Customer, 0, 0);
        let cash = account(AccountKind::System(SystemType::Cash), 0, 0);
        let (ia, ib, ic) = (a.id, b.id, cash.id);
        let mut book = Book::new(vec![a, b, cash], vec![], vec![], vec![]);
        let now = OffsetDateTime::now_utc();
        book.post(&transfer(ic, ia, 100), now).unwrap();
        book.post(&transfer(ia, ib, 60), now).unwrap();
        assert_eq!(book.post(&transfer(ia, ib, 60), now), Err(Refusal::InsufficientFunds));
        book.post(&transfer(ib, ia, 10), now).unwrap();
        book.post(&transfer(ia, ib, 50), now).unwrap();
        assert_eq!((book.account(ia).unwrap().posted, book.account(ib).unwrap().posted), (0, 100));
        assert_eq!(book.changes().journal.len(), 4, "the refusal wrote nothing");
        chains_verify(&book, &[ia, ib, ic]);
    }

    #[test]
    fn a_rollback_restores_the_book_exactly() {
        let a = account(AccountKind::Customer, 100, 0);
        let b = account(AccountKind::Customer, 0, 0);
        let settlement = account(AccountKind::System(SystemType::CardSettlement), 0, 0);
        let (ia, ib, is) = (a.id, b.id, settlement.id);
        let mut book = Book::new(vec![a, b, settlement], vec![], vec![], vec![]);
        let now = OffsetDateTime::now_utc();
        book.post(&transfer(ia, ib, 10), now).unwrap();
        let before: Vec<Account> = [ia, ib, is].iter().map(|id| book.account(*id).unwrap().clone()).collect();
        let mark = book.mark();
        let h = hold(ia, 50, "ref-1");
        let hold_id = h.id;
        book.reserve(h).unwrap();
        book.capture(hold_id, Some(20), is, "cards", now).unwrap();
        book.refund(hold_id, "refund-1", 5, "", is, "cards", now).unwrap();
        book.rollback(mark);
        let after: Vec<Account> = [ia, ib, is].iter().map(|id| book.account(*id).unwrap().clone()).collect();
        assert_eq!(before, after);
        assert!(book.hold(hold_id).is_none() && book.hold_by_reference("cards", "ref-1").is_none());
        let changes = book.changes();
        assert_eq!((changes.journal.len(), changes.new_holds.len(), changes.refunds.len()), (1, 0, 0));
        assert_eq!(changes.accounts.len(), 2, "only the transfer's accounts remain changed");
    }

    #[test]
    fn holds_reserve_capture_refund_and_release_with_repeats() {
        let a = account(AccountKind::Customer, 0, 0);
        let settlement = account(AccountKind::System(SystemType::CardSettlement), 0, 0);
        let (ia, is) = (a.id, settlement.id);
        let mut book = Book::new(vec![a, settlement], vec![], vec![], vec![]);
        let now = OffsetDateTime::now_utc();
        book.post(&transfer(is, ia, 100), now).unwrap();
        assert_eq!(book.reserve(hold(ia, 101, "too-much")), Err(Refusal::InsufficientFunds));
        let h = hold(ia, 80, "ref");
        let id = h.id;
        book.reserve(h).unwrap();
        assert_eq!(book.account(ia).unwrap().available(), 20);
        assert_eq!(
            book.capture(id, Some(81), is, "cards", now),
            Err(Refusal::ExceedsHold("more than the held amount"))
        );
        let captured = book.capture(id, Some(30), is, "cards", now).unwrap();
        assert!(captured.posted.is_some());
        assert_eq!((book.account(ia).unwrap().posted, book.account(ia).unwrap().held), (70, 0));
        assert!(book.capture(id, Some(30), is, "cards", now).unwrap().posted.is_none(), "a repeat");
        assert_eq!(
            book.release(id, Release::Void, now),
            Err(Refusal::HoldNotActive("the hold is not active"))
        );
        assert!(book.refund(id, "r1", 20, "", is, "cards", now).unwrap().posted.is_some());
        assert!(book.refund(id, "r1", 20, "", is, "cards", now).unwrap().posted.is_none(), "a repeat");
        assert_eq!(book.refund(id, "r1", 21, "", is, "cards", now), Err(Refusal::RefundReferenceReused));
        assert_eq!(
            book.refund(id, "r2", 11, "", is, "cards", now),
            Err(Refusal::ExceedsHold("more than the captured amount"))
        );
        let other = hold(ia, 10, "other");
        let other_id = other.id;
        book.reserve(other).unwrap();
        assert_eq!(book.release(other_id, Release::Expire, now).unwrap().status, HoldStatus::Expired);
        assert_eq!(
            book.release(other_id, Release::Expire, now).unwrap().status,
            HoldStatus::Expired,
            "a repeat"
        );
        assert_eq!(book.account(ia).unwrap().held, 0);
        let sum: i64 = [ia, is].iter().map(|id| book.account(*id).unwrap().posted).sum();
        assert_eq!(sum, 0, "money moved between the two, none appeared");
        chains_verify(&book, &[ia, is]);
    }

    #[test]
    fn a_reversal_mirrors_once_and_skips_the_status_rules() {
        let mut a = account(AccountKind::Customer, 0, 0);
        let b = account(AccountKind::Customer, 50, 0);
        a.status = AccountStatus::Frozen;
        a.credits_allowed = false;
        let (ia, ib) = (a.id, b.id);
        let mut book = Book::new(vec![a, b], vec![], vec![], vec![]);
        let original = Original {
            id: Uuid::now_v7(),
            kind: Some(TransactionKind::Transfer),
            description: "rent".into(),
            legs: vec![(ia, -50, "EUR".into()), (ib, 50, "EUR".into())],
        };
        let now = OffsetDateTime::now_utc();
        let (plan, _) = book.reverse(&original, "duplicate", "admin", now).unwrap();
        assert_eq!(plan.description, "Reversal: rent");
        assert_eq!((book.account(ia).unwrap().posted, book.account(ib).unwrap().posted), (50, 0));
        assert_eq!(book.reverse(&original, "again", "admin", now), Err(Refusal::AlreadyReversed));
        let capture = Original { kind: Some(TransactionKind::HoldCapture), id: Uuid::now_v7(), ..original };
        assert!(matches!(book.reverse(&capture, "x", "admin", now), Err(Refusal::NotReversible(_))));
    }

    proptest! {
        /// Random transfers among a few accounts (funded by a system account) applied to one book:
        /// the book agrees with a model of the balances, every refusal is exactly an overdraft, the
        /// balances sum to zero, and every chain verifies.
        #[test]
        fn random_batches_keep_the_model_the_sums_and_the_chains(
            moves in proptest::collection::vec((0usize..4, 0usize..4, 1i64..300), 1..60),
        ) {
            let cash = account(AccountKind::System(SystemType::Cash), 0, 0);
            let customers: Vec<Account> = (0..4).map(|_| account(AccountKind::Customer, 0, 50)).collect();
            let ids: Vec<Uuid> = customers.iter().map(|a| a.id).collect();
            let mut model: Vec<i64> = vec![250; 4];
            let mut all = customers;
            all.push(cash.clone());
            let mut book = Book::new(all, vec![], vec![], vec![]);
            let now = OffsetDateTime::now_utc();
            for id in &ids {
                book.post(&transfer(cash.id, *id, 250), now).unwrap();
            }
            for (from, to, amount) in moves {
                if from == to {
                    continue;
                }
                let outcome = book.post(&transfer(ids[from], ids[to], amount), now);
                let allowed = model[from] - amount >= -50;
                prop_assert_eq!(outcome.is_ok(), allowed);
                if allowed {
                    model[from] -= amount;
                    model[to] += amount;
                }
            }
            for (i, id) in ids.iter().enumerate() {
                prop_assert_eq!(book.account(*id).unwrap().posted, model[i]);
            }
            let total: i64 = ids.iter().chain([&cash.id]).map(|id| book.account(*id).unwrap().posted).sum();
            prop_assert_eq!(total, 0);
            chains_verify(&book, &ids);
            chains_verify(&book, &[cash.id]);
        }
    }
}
