//! Verifying an account's hash chain: every entry links to the previous one's hash, its own hash
//! recomputes from its facts, its position has no gap, its `balance_after` is the running sum, and
//! the account's recorded head is the last entry.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    account::GENESIS_HASH,
    posting::{EntryFacts, entry_hash},
};

/// One stored entry as the walk reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Entry id.
    pub entry_id: Uuid,
    /// Its transaction.
    pub transaction_id: Uuid,
    /// Its account.
    pub account_id: Uuid,
    /// Position in the account's chain.
    pub seq: i64,
    /// Global order (reported as the first broken entry).
    pub sequence: i64,
    /// Signed minor units.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Stored balance after it.
    pub balance_after: i64,
    /// When.
    pub posted_at: OffsetDateTime,
    /// Stored link to the previous entry.
    pub previous_hash: String,
    /// Stored hash.
    pub hash: String,
}

/// The first problem of a chain: the global sequence of the broken entry (0 for the head) and
/// what is wrong.
pub type Problem = (i64, &'static str);

/// Walks one account's chain entry by entry (oldest first) and remembers the first problem.
#[derive(Debug)]
pub struct Walk {
    previous: String,
    balance: i64,
    checked: i64,
    problem: Option<Problem>,
}

impl Default for Walk {
    fn default() -> Self {
        Self { previous: GENESIS_HASH.to_owned(), balance: 0, checked: 0, problem: None }
    }
}

impl Walk {
    /// Takes the next entry.
    pub fn push(&mut self, link: &Link) {
        self.checked += 1;
        if self.problem.is_some() {
            return;
        }
        self.balance = self.balance.saturating_add(link.amount);
        let recomputed = entry_hash(
            &link.previous_hash,
            &EntryFacts {
                entry_id: link.entry_id,
                transaction_id: link.transaction_id,
                account_id: link.account_id,
                seq: link.seq,
                amount: link.amount,
                currency: &link.currency,
                balance_after: link.balance_after,
                posted_at: link.posted_at,
            },
        );
        let broken = if link.seq != self.checked {
            Some("gap in the chain")
        } else if link.previous_hash != self.previous {
            Some("broken link")
        } else if recomputed != link.hash {
            Some("hash mismatch")
        } else if link.balance_after != self.balance {
            Some("balance_after does not match the running sum")
        } else {
            None
        };
        match broken {
            Some(what) => self.problem = Some((link.sequence, what)),
            None => self.previous.clone_from(&link.hash),
        }
    }

    /// How many entries were checked and the first problem, comparing the walked chain with the
    /// account's recorded head (`entry_count`, `last_hash`).
    #[must_use]
    pub fn finish(mut self, entry_count: i64, last_hash: &str) -> (i64, Option<Problem>) {
        if self.problem.is_none() && (last_hash != self.previous || entry_count != self.checked) {
            self.problem = Some((0, "the account's chain head does not match its entries"));
        }
        (self.checked, self.problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(amounts: &[i64]) -> Vec<Link> {
        let account_id = Uuid::now_v7();
        let mut previous = GENESIS_HASH.to_owned();
        let mut balance = 0;
        amounts
            .iter()
            .enumerate()
            .map(|(i, amount)| {
                balance += amount;
                let seq = i64::try_from(i).unwrap_or_default() + 1;
                let (entry_id, transaction_id) = (Uuid::now_v7(), Uuid::now_v7());
                let posted_at = OffsetDateTime::UNIX_EPOCH;
                let hash = entry_hash(
                    &previous,
                    &EntryFacts {
                        entry_id,
                        transaction_id,
                        account_id,
                        seq,
                        amount: *amount,
                        currency: "EUR",
                        balance_after: balance,
                        posted_at,
                    },
                );
                let link = Link {
                    entry_id,
                    transaction_id,
                    account_id,
                    seq,
                    sequence: seq * 10,
                    amount: *amount,
                    currency: "EUR".into(),
                    balance_after: balance,
                    posted_at,
                    previous_hash: previous.clone(),
                    hash: hash.clone(),
                };
                previous = hash;
                link
            })
            .collect()
    }

    fn walk(links: &[Link]) -> (i64, Option<Problem>) {
        let mut walk = Walk::default();
        for link in links {
            walk.push(link);
        }
        let head = links.last().map_or(GENESIS_HASH, |l| l.hash.as_str());
        walk.finish(i64::try_from(links.len()).unwrap_or_default(), head)
    }

    #[test]
    fn an_intact_chain_verifies_and_every_kind_of_tampering_is_found() {
        let links = chain(&[100, -30, 5]);
        assert_eq!(walk(&links), (3, None));
        let mut amount = links.clone();
        amount[1].amount = -31;
        assert_eq!(walk(&amount).1, Some((20, "hash mismatch")));
        let mut link = links.clone();
        link[2].previous_hash = GENESIS_HASH.into();
        assert_eq!(walk(&link).1, Some((30, "broken link")));
        let gap = vec![links[0].clone(), links[2].clone()];
        assert_eq!(walk(&gap).1, Some((30, "gap in the chain")));
        let mut head = Walk::default();
        links.iter().for_each(|l| head.push(l));
        assert_eq!(
            head.finish(3, GENESIS_HASH).1,
            Some((0, "the account's chain head does not match its entries"))
        );
    }
}
