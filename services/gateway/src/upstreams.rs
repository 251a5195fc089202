//! One lazily connected channel per upstream service, with its circuit breaker, and the call
//! settings transcoding applies (deadlines, read retries, body limits).

use std::{sync::Arc, time::Duration};

use tonic::transport::{Channel, Endpoint};

use crate::{
    breaker::Breaker,
    config::{EdgeConfig, UpstreamsConfig},
    upstream::Upstream,
};

/// One lazily connected channel per upstream service, its circuit breaker, the per-request
/// deadline, the retry policy of reads, and the body limits.
#[derive(Debug, Clone)]
pub(crate) struct Upstreams {
    pub(crate) identity: Channel,
    pub(crate) accounts: Channel,
    pub(crate) ledger: Channel,
    pub(crate) cards: Channel,
    pub(crate) notifications: Channel,
    pub(crate) timeout: Duration,
    pub(crate) route_timeouts: Arc<std::collections::BTreeMap<String, Duration>>,
    pub(crate) retries: u32,
    pub(crate) retry_backoff: Duration,
    breakers: Arc<[Breaker; 5]>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_json_depth: usize,
}

impl Upstreams {
    /// The channel of `upstream`.
    pub(crate) fn channel(&self, upstream: Upstream) -> &Channel {
        match upstream {
            Upstream::Identity => &self.identity,
            Upstream::Accounts => &self.accounts,
            Upstream::Ledger => &self.ledger,
            Upstream::Cards => &self.cards,
            Upstream::Notifications => &self.notifications,
        }
    }

    pub(crate) fn breaker(&self, upstream: Upstream) -> &Breaker {
        &self.breakers[upstream.index()]
    }

    /// Channels that connect on first use (and reconnect by themselves).
    pub(crate) fn connect_lazy(
        config: &UpstreamsConfig,
        edge: &EdgeConfig,
    ) -> Result<Self, bank_platform::BoxError> {
        let channel = |setting: &str, url: &str| -> Result<Channel, bank_platform::BoxError> {
            Ok(Endpoint::from_shared(url.to_owned())
                .map_err(|e| format!("upstreams.{setting}: {e}"))?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .connect_lazy())
        };
        Ok(Self {
            identity: channel("identity", &config.identity)?,
            accounts: channel("accounts", &config.accounts)?,
            ledger: channel("ledger", &config.ledger)?,
            cards: channel("cards", &config.cards)?,
            notifications: channel("notifications", &config.notifications)?,
            timeout: config.request_timeout,
            route_timeouts: Arc::new(config.route_timeouts.clone()),
            retries: config.retries,
            retry_backoff: config.retry_backoff,
            breakers: Arc::new(
                Upstream::ALL
                    .map(|u| Breaker::new(u.name(), config.breaker_failures, config.breaker_open_for)),
            ),
            max_body_bytes: edge.max_body_bytes,
            max_json_depth: edge.max_json_depth,
        })
    }
}
