//! bank-platform: what every bankmesh process shares, so that no service re-implements it.
//!
//! Owns: layered config ([`config`]), telemetry ([`telemetry`]), the one gRPC server stack
//! ([`grpc`], [`App`]), the admin HTTP port ([`admin`]), readiness ([`health`]), the Postgres pool and
//! migrations ([`db`]), the Redis connection ([`redis`]), shutdown ([`shutdown`]) and the error-code
//! table ([`error`]).
//!
//! Must not depend on any service crate, on `bank-auth` (auth plugs into [`grpc::Authenticate`]) or on
//! generated contracts (`bank-proto`): services hand their descriptor sets in.

pub mod admin;
mod app;
pub mod config;
pub mod db;
pub mod error;
pub mod grpc;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod pagination;
pub mod redis;
pub mod shutdown;
pub mod telemetry;
pub mod tx;

pub use app::{App, AppBuilder, BoxError, Service, run_service};
pub use error::{ErrorCode, FieldViolation, ServiceError};
