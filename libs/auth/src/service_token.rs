//! Service tokens for this process's own calls (client credentials against identity).

use std::time::Duration;

use bank_proto::identity::v1::{IssueServiceTokenRequest, identity_service_client::IdentityServiceClient};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// Obtains and caches a service token, renewing it a minute before it expires.
pub struct ServiceTokens {
    client: IdentityServiceClient<Channel>,
    client_id: String,
    client_secret: SecretString,
    scopes: Vec<String>,
    cached: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

const RENEW_BEFORE: Duration = Duration::from_secs(60);

impl ServiceTokens {
    /// Tokens for `client_id` with `scopes` (empty: every scope the client holds).
    #[must_use]
    pub fn new(
        channel: Channel,
        client_id: String,
        client_secret: SecretString,
        scopes: Vec<String>,
    ) -> Self {
        Self {
            client: IdentityServiceClient::new(channel),
            client_id,
            client_secret,
            scopes,
            cached: Mutex::new(None),
        }
    }

    /// Tokens for this service's client credentials in `config` (`auth.client_id`,
    /// `auth.client_secret`), issued by identity over `identity`, with `scopes`.
    ///
    /// # Errors
    /// The credentials are not configured: `service` cannot call the peers that need them.
    pub fn from_config(
        identity: Channel,
        config: &crate::AuthConfig,
        service: &str,
        scopes: &[&str],
    ) -> Result<Self, bank_platform::BoxError> {
        let (Some(client_id), Some(secret)) = (&config.client_id, &config.client_secret) else {
            return Err(
                format!("auth.client_id: {service} needs client credentials to call the ledger").into()
            );
        };
        Ok(Self::new(
            identity,
            client_id.clone(),
            secret.clone(),
            scopes.iter().map(|&s| s.to_owned()).collect(),
        ))
    }

    /// A valid service token.
    ///
    /// # Errors
    /// Identity refused or could not be reached.
    pub async fn token(&self) -> Result<String, tonic::Status> {
        let mut cached = self.cached.lock().await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Some((token, expires_at)) = cached.as_ref()
            && *expires_at - now > i64::try_from(RENEW_BEFORE.as_secs()).unwrap_or(60)
        {
            return Ok(token.clone());
        }
        let answer = self
            .client
            .clone()
            .issue_service_token(IssueServiceTokenRequest {
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.expose_secret().to_owned(),
                scopes: self.scopes.clone(),
            })
            .await?
            .into_inner();
        let expires_at = answer.expires_at.map_or(now, |t| t.seconds);
        *cached = Some((answer.access_token.clone(), expires_at));
        Ok(answer.access_token)
    }

    /// Adds `authorization: Bearer <service token>` to an outgoing request.
    ///
    /// # Errors
    /// No token could be obtained.
    pub async fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), tonic::Status> {
        let token = self.token().await?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("service token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(())
    }

    /// `message` as an outgoing request with a service token and the current trace context.
    ///
    /// # Errors
    /// No token could be obtained.
    pub async fn request<T>(&self, message: T) -> Result<tonic::Request<T>, tonic::Status> {
        let mut request = tonic::Request::new(message);
        self.authorize(&mut request).await?;
        bank_platform::telemetry::inject_current(request.metadata_mut());
        Ok(request)
    }
}
