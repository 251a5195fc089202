//! Revocation: the blocklist and token versions in Redis, with identity as the fallback.
//!
//! Keys (shared by every service, under `auth.redis_prefix`):
//! * `epoch` — present while Redis holds every live revocation (identity writes it after loading
//!   them from its database: at start and whenever it finds the key missing);
//! * `jti:<jti>` — a blocklisted access token (logout), until its `exp`;
//! * `sid:<sid>` — a revoked session, for one access-token lifetime;
//! * `tv:<user>` — the user's token version once bumped (absent = 1, the initial version); tokens
//!   with a lower `tv` are revoked;
//! * `client:<id>` — a disabled service client, for one service-token lifetime.
//!
//! Identity writes them after committing the change to its database, which stays the truth, and
//! replays its revocation journal until Redis has acknowledged every revocation; `epoch` holds the
//! Redis time (microseconds) up to which identity last certified Redis complete (ADR 0030). Without
//! `epoch` (Redis lost its data, or a write failed and identity dropped the key on purpose) Redis
//! cannot vouch for any token, and so when Redis does not answer in time: identity is asked
//! ([`StatusSource`]); when that fails too the call is refused with `UNAVAILABLE`.
//!
//! After this checker has seen Redis fail, it trusts Redis again only once `epoch` certifies a time
//! after Redis answered again: a revocation made while Redis was unreachable (which identity could
//! not write, and whose epoch it could not drop) is not forgotten when Redis returns with its old
//! data and its old epoch. A revoked token is never accepted.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bank_proto::identity::v1::{CheckTokenStatusRequest, identity_service_client::IdentityServiceClient};
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use tonic::transport::Channel;

use crate::{Claims, ServiceTokens};

/// Whether a token may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Not revoked.
    Valid,
    /// Revoked: logout, revoked session, outdated token version or disabled client.
    Revoked,
}

/// The names of the shared revocation keys.
#[derive(Debug, Clone)]
pub struct RevocationKeys {
    prefix: String,
}

impl RevocationKeys {
    /// Keys under `prefix` (`auth.redis_prefix`).
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The key whose presence says Redis holds every live revocation.
    #[must_use]
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// The blocklist key of an access token.
    #[must_use]
    pub fn jti(&self, jti: &uuid::Uuid) -> String {
        format!("{}jti:{jti}", self.prefix)
    }

    /// The revocation key of a session.
    #[must_use]
    pub fn sid(&self, sid: &uuid::Uuid) -> String {
        format!("{}sid:{sid}", self.prefix)
    }

    /// The token-version key of a user.
    #[must_use]
    pub fn tv(&self, user: &str) -> String {
        format!("{}tv:{user}", self.prefix)
    }

    /// The disabled marker of a service client.
    #[must_use]
    pub fn client(&self, client_id: &str) -> String {
        format!("{}client:{client_id}", self.prefix)
    }
}

/// The authoritative answer when Redis cannot give one (identity's database).
pub trait StatusSource: Send + Sync + 'static {
    /// Whether the token is revoked.
    fn status<'a>(&'a self, claims: &'a Claims) -> BoxFuture<'a, Result<TokenStatus, tonic::Status>>;
}

/// Why revocation could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revocation status unknown: {0}")]
pub struct Unknown(pub String);

/// Checks tokens against the blocklist and token versions.
pub struct Revocation {
    redis: ConnectionManager,
    keys: RevocationKeys,
    timeout: Duration,
    fallback: Option<Arc<dyn StatusSource>>,
    trust: Mutex<Trust>,
}

/// Whether Redis may vouch for tokens, as far as this checker has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// No failure seen since the last certification.
    Trusted,
    /// A call failed; the next answer tells from when on a certification counts.
    Failed,
    /// Redis answered again at this Redis time (microseconds): an epoch at or after it counts.
    Until(u64),
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl Revocation {
    /// Checks in `redis` (each lookup bounded by `timeout`), falling back to `fallback`.
    #[must_use]
    pub fn new(
        redis: ConnectionManager,
        keys: RevocationKeys,
        timeout: Duration,
        fallback: Option<Arc<dyn StatusSource>>,
    ) -> Self {
        Self { redis, keys, timeout, fallback, trust: Mutex::new(Trust::Trusted) }
    }

    fn trust(&self) -> Trust {
        *self.trust.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_trust(&self, trust: Trust) {
        *self.trust.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = trust;
        metrics::gauge!("auth_revocation_redis_trusted").set(if trust == Trust::Trusted { 1.0 } else { 0.0 });
    }

    /// A Redis call failed: distrust Redis until identity certifies it again.
    fn failed(&self) {
        if self.trust() != Trust::Failed {
            self.set_trust(Trust::Failed);
        }
    }

    /// The keys this checker reads.
    #[must_use]
    pub fn keys(&self) -> &RevocationKeys {
        &self.keys
    }

    /// Whether `claims` (already verified) belong to a revoked token. One Redis round trip.
    ///
    /// # Errors
    /// Neither Redis nor the fallback could answer.
    pub async fn check(&self, claims: &Claims) -> Result<TokenStatus, Unknown> {
        let lookup = match (claims.sid, claims.tv) {
            (Some(sid), Some(_)) => vec![
                self.keys.epoch(),
                self.keys.jti(&claims.jti),
                self.keys.sid(&sid),
                self.keys.tv(&claims.sub),
            ],
            _ => vec![self.keys.epoch(), self.keys.jti(&claims.jti), self.keys.client(&claims.sub)],
        };
        let trust = self.trust();
        let mut conn = self.redis.clone();
        // While distrusting, Redis' clock comes along: it dates the recovery a certification must follow.
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(&lookup);
        if trust != Trust::Trusted {
            pipe.cmd("TIME");
        }
        let answer =
            tokio::time::timeout(self.timeout, pipe.query_async::<Vec<redis::Value>>(&mut conn)).await;
        let replies = match answer {
            Ok(Ok(replies)) => replies,
            Ok(Err(err)) => {
                self.failed();
                return self.fall_back(claims, &format!("redis: {err}")).await;
            }
            Err(_) => {
                self.failed();
                return self.fall_back(claims, "redis did not answer in time").await;
            }
        };
        let mut replies = replies.into_iter();
        let values: Vec<Option<String>> = match replies.next().map(redis::from_redis_value) {
            Some(Ok(values)) => values,
            _ => return self.fall_back(claims, "unexpected answer from Redis").await,
        };
        if values.len() != lookup.len() {
            return self.fall_back(claims, "unexpected answer from Redis").await;
        }
        let Some(epoch) = values[0].as_deref() else {
            return self.fall_back(claims, "redis does not hold the revocations (no epoch)").await;
        };
        if trust != Trust::Trusted {
            let since = match trust {
                Trust::Until(since) => since,
                Trust::Trusted | Trust::Failed => {
                    match replies.next().map(redis::from_redis_value::<(u64, u64)>) {
                        Some(Ok((seconds, micros))) => {
                            let since = seconds.saturating_mul(1_000_000).saturating_add(micros);
                            self.set_trust(Trust::Until(since));
                            since
                        }
                        _ => return self.fall_back(claims, "unexpected answer from Redis").await,
                    }
                }
            };
            match epoch.parse::<u64>() {
                Ok(certified) if certified >= since => self.set_trust(Trust::Trusted),
                _ => {
                    return self
                        .fall_back(claims, "redis answers again but identity has not certified it since")
                        .await;
                }
            }
        }
        if values[1].is_some() || values[2].is_some() {
            return Ok(TokenStatus::Revoked);
        }
        if let Some(tv) = claims.tv {
            let current = match values.get(3).and_then(Option::as_deref) {
                None => 1,
                Some(text) => match text.parse::<i64>() {
                    Ok(current) => current,
                    Err(_) => return self.fall_back(claims, "unreadable token version in Redis").await,
                },
            };
            return Ok(if tv < current { TokenStatus::Revoked } else { TokenStatus::Valid });
        }
        Ok(TokenStatus::Valid)
    }

    async fn fall_back(&self, claims: &Claims, why: &str) -> Result<TokenStatus, Unknown> {
        metrics::counter!("auth_revocation_fallbacks_total").increment(1);
        let Some(fallback) = &self.fallback else {
            tracing::warn!(why, "revocation check impossible: no fallback configured");
            return Err(Unknown(why.to_owned()));
        };
        tracing::debug!(why, "revocation: asking identity");
        match fallback.status(claims).await {
            Ok(status) => Ok(status),
            Err(status) => {
                tracing::warn!(why, fallback = ?status.code(), "revocation check impossible: fallback failed");
                Err(Unknown(why.to_owned()))
            }
        }
    }
}

/// The fallback over identity's `CheckTokenStatus` RPC (scope `identity:introspect`).
#[derive(Debug, Clone)]
pub struct GrpcStatus {
    client: IdentityServiceClient<Channel>,
    tokens: Arc<ServiceTokens>,
}

impl GrpcStatus {
    /// Asks identity over `channel`, authenticated with service tokens from `tokens`.
    #[must_use]
    pub fn new(channel: Channel, tokens: Arc<ServiceTokens>) -> Self {
        Self { client: IdentityServiceClient::new(channel), tokens }
    }
}

impl StatusSource for GrpcStatus {
    fn status<'a>(&'a self, claims: &'a Claims) -> BoxFuture<'a, Result<TokenStatus, tonic::Status>> {
        Box::pin(async move {
            let mut request = tonic::Request::new(CheckTokenStatusRequest {
                token_id: claims.jti.to_string(),
                user_id: claims.sub.clone(),
                session_id: claims.sid.map(|s| s.to_string()).unwrap_or_default(),
                token_version: claims.tv.unwrap_or_default(),
            });
            self.tokens.authorize(&mut request).await?;
            let answer = self.client.clone().check_token_status(request).await?.into_inner();
            Ok(if answer.revoked { TokenStatus::Revoked } else { TokenStatus::Valid })
        })
    }
}
