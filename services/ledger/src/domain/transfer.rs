//! Who may move money between which customer accounts: a user from an own account to an own
//! account given by id, or to any customer account given by its number.

use uuid::Uuid;

use super::{book::Book, posting::Refusal};

/// Where a transfer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// One of the user's own accounts, by id.
    Id(Uuid),
    /// Any customer account, by its number.
    Number(String),
}

/// The source and destination of `user`'s transfer from `from` to `to`, on the locked `book`.
/// Someone else's source account, someone else's destination given by id, and a system account
/// answer exactly like a missing account.
///
/// # Errors
/// `NoSuchAccount`, or `SameAccount` for a transfer to itself.
pub fn parties(book: &Book, user: Uuid, from: Uuid, to: &Destination) -> Result<(Uuid, Uuid), Refusal> {
    let destination = match to {
        Destination::Id(id) => book.account(*id),
        Destination::Number(number) => book.by_number(number),
    }
    .ok_or(Refusal::NoSuchAccount)?;
    if destination.id == from {
        return Err(Refusal::SameAccount);
    }
    let owns = |id: Uuid| book.account(id).is_some_and(|a| a.owner == Some(user));
    if !owns(from) || (matches!(to, Destination::Id(_)) && !owns(destination.id)) {
        return Err(Refusal::NoSuchAccount);
    }
    if !destination.is_customer() {
        return Err(Refusal::NoSuchAccount);
    }
    Ok((from, destination.id))
}
