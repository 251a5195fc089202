//! bank-proto: the generated code for every bankmesh contract under `proto/`.
//!
//! Owns: prost messages, tonic clients and servers (server traits have default methods that answer
//! `UNIMPLEMENTED`), canonical proto3 JSON via pbjson (`serde`), and [`FILE_DESCRIPTOR_SET`] for
//! reflection and the gateway. Must not depend on any other bankmesh crate: everything depends on it.
//!
//! Code is generated at build time by protox (no system `protoc`), see `build.rs`.

/// The encoded `google.protobuf.FileDescriptorSet` of every bankmesh proto file and its imports,
/// with source info (comments). Feed it to reflection and to anything that needs descriptors.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bank_descriptor.bin"));

macro_rules! package {
    ($file:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $file, ".rs"));
        include!(concat!(env!("OUT_DIR"), "/", $file, ".serde.rs"));
    };
}

/// Vendored `google.api` types (HTTP annotations, field behaviour, `HttpBody`).
#[allow(
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms
)]
pub mod google {
    pub mod api {
        package!("google.api");
    }
}

/// bankmesh contracts, one module per protobuf package (`bank.<svc>.v1`).
#[allow(
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms
)]
pub mod bank {
    pub mod common {
        pub mod v1 {
            package!("bank.common.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            package!("bank.events.v1");
        }
    }
    pub mod identity {
        pub mod v1 {
            package!("bank.identity.v1");
        }
    }
    pub mod accounts {
        pub mod v1 {
            package!("bank.accounts.v1");
        }
    }
    pub mod ledger {
        pub mod v1 {
            package!("bank.ledger.v1");
        }
    }
    pub mod cards {
        pub mod v1 {
            package!("bank.cards.v1");
        }
    }
    pub mod notifications {
        pub mod v1 {
            package!("bank.notifications.v1");
        }
    }
}

pub mod convert;

pub use bank::{accounts, cards, common, events, identity, ledger, notifications};

/// A `Debug` for generated messages that carry a full PAN or a CVV (their derived `Debug` is
/// skipped in `build.rs`): the secret fields print as `[REDACTED]`, everything else as usual.
macro_rules! redacted_debug {
    ($($module:ident)::+ => $ty:ident { $($field:ident),* } secret { $($secret:ident),* }) => {
        impl ::core::fmt::Debug for $($module::)+$ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                let mut out = f.debug_struct(stringify!($ty));
                $( out.field(stringify!($field), &self.$field); )*
                $( let _ = &self.$secret; out.field(stringify!($secret), &"[REDACTED]"); )*
                out.finish()
            }
        }
    };
}

redacted_debug!(bank::cards::v1 => IssueCardResponse { card } secret { pan, cvv });
redacted_debug!(bank::cards::v1 => ReplaceCardResponse { card } secret { pan, cvv });
redacted_debug!(bank::cards::v1 => RevealCardPanResponse { expiry_month, expiry_year } secret { pan });

#[cfg(test)]
mod tests {
    #[test]
    fn messages_with_a_pan_or_cvv_print_them_redacted() {
        let issued = crate::bank::cards::v1::IssueCardResponse {
            card: None,
            pan: "4000001234567899".to_owned(),
            cvv: "123".to_owned(),
        };
        let printed = format!("{issued:?}");
        assert!(!printed.contains("4000001234567899") && !printed.contains("123"), "{printed}");
        assert!(printed.contains("[REDACTED]"), "{printed}");
        let revealed = crate::bank::cards::v1::RevealCardPanResponse {
            pan: "4000001234567899".to_owned(),
            expiry_month: 7,
            expiry_year: 2031,
        };
        let printed = format!("{revealed:?}");
        assert!(!printed.contains("4000001234567899") && printed.contains("2031"), "{printed}");
    }
}
