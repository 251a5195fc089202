//! The one gRPC server stack every service runs, and the channel every outgoing client uses.

pub mod fields;
pub mod layers;
mod server;
pub mod upstream;

pub use layers::{Authenticate, FORWARDED_METADATA, INTERNAL_METADATA, REQUEST_ID};
pub use server::GrpcServices;

/// A channel to `url` that connects on first use (a service starts, and answers what it can, while
/// the peer is down): 2 s to connect, `timeout` per call. `setting` names the configuration key in
/// the error for an invalid address.
///
/// # Errors
/// `url` is not a valid endpoint.
pub fn lazy_channel(
    setting: &str,
    url: &str,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, crate::BoxError> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{setting}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy())
}
