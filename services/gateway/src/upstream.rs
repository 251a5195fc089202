//! The upstream services by name: a leaf (config, the route table and the channels all name them).

/// The upstream services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    Identity,
    Accounts,
    Ledger,
    Cards,
    Notifications,
}

impl Upstream {
    pub(crate) const ALL: [Upstream; 5] =
        [Self::Identity, Self::Accounts, Self::Ledger, Self::Cards, Self::Notifications];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Accounts => "accounts",
            Self::Ledger => "ledger",
            Self::Cards => "cards",
            Self::Notifications => "notifications",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
