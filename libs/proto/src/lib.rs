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

pub use bank::{accounts, cards, common, events, identity, ledger, notifications};
