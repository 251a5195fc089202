//! The RPC paths that name idempotency keys (`bank_platform::idempotency::Key::rpc`). Their own
//! module because both sides need them: `grpc` keys requests with them and `storage` turns a stored
//! authorization's key back into a `Key`, and neither may import the other.

pub(crate) const ISSUE: &str = "/bank.cards.v1.CardsService/IssueCard";
pub(crate) const FREEZE: &str = "/bank.cards.v1.CardsService/FreezeCard";
pub(crate) const UNFREEZE: &str = "/bank.cards.v1.CardsService/UnfreezeCard";
pub(crate) const REPORT_LOST: &str = "/bank.cards.v1.CardsService/ReportCardLost";
pub(crate) const REPLACE: &str = "/bank.cards.v1.CardsService/ReplaceCard";
pub(crate) const SET_LIMITS: &str = "/bank.cards.v1.CardsService/SetCardLimits";
pub(crate) const CLOSE: &str = "/bank.cards.v1.CardsService/CloseCard";
pub(crate) const AUTHORIZE: &str = "/bank.cards.v1.CardsService/AuthorizeCharge";
pub(crate) const CAPTURE: &str = "/bank.cards.v1.CardsService/CaptureCharge";
pub(crate) const VOID: &str = "/bank.cards.v1.CardsService/VoidCharge";
pub(crate) const REFUND: &str = "/bank.cards.v1.CardsService/RefundCharge";
pub(crate) const FORCE_CLOSE: &str = "/bank.cards.v1.CardsAdminService/ForceCloseCard";

/// The RPC name stored with an authorization's key, as the `'static` the idempotency module uses.
pub(crate) fn charge_rpc(rpc: &str) -> Option<&'static str> {
    [AUTHORIZE, CAPTURE, VOID, REFUND].into_iter().find(|known| *known == rpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_charge_rpcs_name_a_stored_authorization_key() {
        assert_eq!(charge_rpc(AUTHORIZE), Some(AUTHORIZE));
        assert_eq!(charge_rpc(REFUND), Some(REFUND));
        assert_eq!(charge_rpc(ISSUE), None);
        assert_eq!(charge_rpc("/bank.cards.v1.CardsService/AuthorizeChargeX"), None);
    }
}
