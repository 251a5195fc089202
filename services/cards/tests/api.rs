//! The `cards` service through real gRPC clients, against a fresh database: the standard surface
//! (health, reflection, admin port, every RPC needs a token, migrations).

#![allow(clippy::unwrap_used, clippy::expect_used)]

bank_testkit::standard_service_tests!(
    bank_cards::Cards,
    bank_cards::MIGRATOR,
    ["bank.cards.v1.CardsService", "bank.cards.v1.CardsAdminService"],
    |options| options.set("vault.keks", "kek-1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
);
