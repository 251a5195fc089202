//! The one gRPC server stack every service runs.

pub mod layers;
mod server;

pub use layers::{Authenticate, REQUEST_ID};
pub use server::GrpcServices;
