//! Who and where a call comes from, for audit entries, sessions and events.

use bank_platform::grpc::REQUEST_ID;

/// The request facts identity records.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The request id (created by the platform when the client sent none).
    pub request_id: String,
    /// The trace id.
    pub trace_id: String,
    /// Client IP: the first `x-forwarded-for` hop, which the platform keeps only when the peer is a
    /// trusted forwarder (`server.trusted_forwarders`: the gateway, which writes the header itself),
    /// else the TCP peer.
    pub ip_address: String,
    /// The client's user agent (`x-forwarded-user-agent` from the gateway, else `user-agent`).
    pub user_agent: String,
}

impl CallContext {
    /// Reads the facts of a call.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let text = |name: &str| {
            request.metadata().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default()
        };
        let forwarded = text("x-forwarded-for");
        let ip_address = forwarded
            .split(',')
            .next()
            .map(str::trim)
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .map(str::to_owned)
            .or_else(|| request.remote_addr().map(|addr| addr.ip().to_string()))
            .unwrap_or_default();
        let user_agent = match text("x-forwarded-user-agent") {
            ua if !ua.is_empty() => ua,
            _ => text("user-agent"),
        };
        Self {
            request_id: text(REQUEST_ID),
            trace_id: bank_platform::telemetry::current_trace_id(),
            ip_address,
            user_agent: user_agent.chars().take(512).collect(),
        }
    }
}
