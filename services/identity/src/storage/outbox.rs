//! The transactional outbox: the platform's shared writer.

pub use bank_platform::outbox::publish;
