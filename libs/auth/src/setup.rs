//! Building the authenticator of a service that trusts identity over the network.

use std::{sync::Arc, time::Duration};

use bank_platform::{BoxError, redis::Redis};

use crate::{
    AuthConfig, Authenticator, GrpcJwks, GrpcStatus, Revocation, RevocationKeys, ServiceTokens, StatusSource,
    Verifier,
};

/// How long one revocation lookup in Redis may take before identity is asked instead.
pub const REVOCATION_TIMEOUT: Duration = Duration::from_millis(250);

/// The authenticator every service but identity runs: keys from identity's JWKS, revocation from
/// the shared Redis keys, identity's `CheckTokenStatus` as the fallback (when this service has
/// client credentials). `public` lists the gRPC paths that need no token.
///
/// # Errors
/// `auth.identity_url` is not a valid endpoint.
pub fn remote(config: &AuthConfig, redis: &Redis, public: &[&str]) -> Result<Arc<Authenticator>, BoxError> {
    let jwks = GrpcJwks::new(&config.identity_url).map_err(|e| format!("auth.identity_url: {e}"))?;
    let verifier = Arc::new(Verifier::new(Arc::new(jwks), config));
    let fallback: Option<Arc<dyn StatusSource>> = match (&config.client_id, &config.client_secret) {
        (Some(id), Some(secret)) => {
            let channel = bank_platform::grpc::lazy_channel(
                "auth.identity_url",
                &config.identity_url,
                Duration::from_secs(5),
            )?;
            let tokens = Arc::new(ServiceTokens::new(
                channel.clone(),
                id.clone(),
                secret.clone(),
                vec!["identity:introspect".into()],
            ));
            Some(Arc::new(GrpcStatus::new(channel, tokens)))
        }
        _ => None,
    };
    let revocation = Arc::new(Revocation::new(
        redis.conn.clone(),
        RevocationKeys::new(&config.redis_prefix),
        REVOCATION_TIMEOUT,
        fallback,
    ));
    Ok(Arc::new(
        Authenticator::new(verifier, revocation, public).with_step_up_max_age(config.step_up_max_age),
    ))
}
