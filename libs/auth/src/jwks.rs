//! Where verifiers get public keys: identity's JWKS.

use std::time::Duration;

use bank_proto::identity::v1::{GetJwksRequest, Jwk, identity_service_client::IdentityServiceClient};
use base64::Engine as _;
use futures::future::BoxFuture;
use jsonwebtoken::DecodingKey;
use tonic::transport::{Channel, Endpoint};

/// A source of the current JSON Web Key Set.
pub trait JwksSource: Send + Sync + 'static {
    /// Every published key.
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Jwk>, tonic::Status>>;
}

/// The JWKS from identity's `GetJwks` RPC (public, no token needed).
#[derive(Debug, Clone)]
pub struct GrpcJwks {
    client: IdentityServiceClient<Channel>,
}

impl GrpcJwks {
    /// A lazily connecting client of identity at `url`.
    ///
    /// # Errors
    /// The URL is not a valid endpoint.
    pub fn new(url: &str) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self { client: IdentityServiceClient::new(channel) })
    }
}

impl JwksSource for GrpcJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Jwk>, tonic::Status>> {
        let mut client = self.client.clone();
        Box::pin(async move { Ok(client.get_jwks(GetJwksRequest {}).await?.into_inner().keys) })
    }
}

/// The verification key of a published JWK, or `None` for anything but a well-formed Ed25519
/// signing key (`kty` OKP, `crv` Ed25519, `alg` EdDSA, `use` sig, a 32-byte `x`).
#[must_use]
pub fn decoding_key(jwk: &Jwk) -> Option<DecodingKey> {
    if jwk.kty != "OKP"
        || jwk.crv != "Ed25519"
        || jwk.alg != "EdDSA"
        || jwk.r#use != "sig"
        || jwk.kid.is_empty()
    {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&jwk.x).ok()?;
    if raw.len() != 32 {
        return None;
    }
    DecodingKey::from_ed_components(&jwk.x).ok()
}
