//! Rate limits: GCRA (the generic cell rate algorithm) in Redis, shared by every gateway replica and
//! surviving restarts, with a per-process fallback when Redis is slow or down.
//!
//! A quota of `limit` per `period` is a theoretical arrival time (TAT) per key: each request moves
//! it `period / limit` into the future; a request is refused when that would put the TAT more than
//! `period` ahead of now. So a burst of `limit` is allowed, then one request per `period / limit`,
//! and the wait (`Retry-After`) and the remaining allowance (`RateLimit-*`) follow exactly from the
//! stored TAT — no fixed windows, no double bursts at window edges.
//!
//! One decision is **one** Lua script over every key it involves (client IP, user, route class,
//! login username): all keys are checked against Redis' own clock and either all are charged or
//! none is. Redis' answer is awaited for `rate_limits.redis_timeout` (tens of ms); without an
//! answer the same algorithm runs on per-process state — stricter on auth routes, since each
//! replica then counts alone — never unlimited and never a stall. While Redis is failing it is
//! asked at most every [`RETRY_REDIS_EVERY`]; a metric and one log line per transition say so.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bank_platform::{config, redis::Redis};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// While Redis is failing, how often a decision tries it again (the others go local at once).
pub(crate) const RETRY_REDIS_EVERY: Duration = Duration::from_millis(500);

/// Local state beyond this many keys is pruned of keys whose allowance is full again.
const LOCAL_PRUNE_AT: usize = 50_000;

/// `limit` requests per `period`, bursts of up to `limit` included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests allowed per period.
    pub limit: u32,
    /// The period (default one minute, so `limit` alone may be set).
    #[serde(with = "humantime_serde", default = "one_minute")]
    pub period: Duration,
}

fn one_minute() -> Duration {
    Duration::from_secs(60)
}

impl Quota {
    /// A quota.
    #[must_use]
    pub const fn new(limit: u32, period: Duration) -> Self {
        Self { limit, period }
    }

    fn period_ms(self) -> i64 {
        i64::try_from(self.period.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// Milliseconds between two requests at the sustained rate (at least 1).
    fn interval_ms(self) -> i64 {
        (self.period_ms() / i64::from(self.limit.max(1))).max(1)
    }

    /// The same period with `limit / divisor` (at least 1).
    fn divided(self, divisor: u32) -> Self {
        Self { limit: (self.limit / divisor.max(1)).max(1), period: self.period }
    }
}

/// `[rate_limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Turn every limit off (never in production; load tests of the services behind).
    pub enabled: bool,
    /// Every route, per client IP.
    pub per_ip: Quota,
    /// Every authenticated route, per user (or service client).
    pub per_user: Quota,
    /// The public auth routes (register, login, refresh, password reset, ...), per client IP.
    pub auth_per_ip: Quota,
    /// Failed logins per client IP; once spent, login answers 429 until it refills.
    pub failed_logins_per_ip: Quota,
    /// Failed logins per submitted username (existing or not).
    pub failed_logins_per_username: Quota,
    /// How long a decision waits for Redis before deciding per process.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Per-process limits of auth routes (and failed logins) are the quota divided by this.
    pub fallback_auth_divisor: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        Self {
            enabled: true,
            per_ip: Quota::new(1200, minute),
            per_user: Quota::new(600, minute),
            auth_per_ip: Quota::new(30, minute),
            failed_logins_per_ip: Quota::new(5, minute),
            failed_logins_per_username: Quota::new(5, minute),
            redis_timeout: Duration::from_millis(50),
            fallback_auth_divisor: 2,
        }
    }
}

impl RateLimitConfig {
    pub(crate) fn validate(&self) -> Result<(), config::Error> {
        for (name, quota) in [
            ("per_ip", self.per_ip),
            ("per_user", self.per_user),
            ("auth_per_ip", self.auth_per_ip),
            ("failed_logins_per_ip", self.failed_logins_per_ip),
            ("failed_logins_per_username", self.failed_logins_per_username),
        ] {
            if quota.limit == 0 {
                return Err(config::Error::invalid(format!("rate_limits.{name}.limit"), "must be positive"));
            }
            if quota.period < Duration::from_secs(1) || quota.period > Duration::from_secs(86_400) {
                return Err(config::Error::invalid(
                    format!("rate_limits.{name}.period"),
                    "must be between 1s and 24h",
                ));
            }
        }
        if self.redis_timeout.is_zero() || self.redis_timeout > Duration::from_secs(1) {
            return Err(config::Error::invalid("rate_limits.redis_timeout", "must be between 1ms and 1s"));
        }
        if self.fallback_auth_divisor == 0 {
            return Err(config::Error::invalid("rate_limits.fallback_auth_divisor", "must be at least 1"));
        }
        Ok(())
    }
}

/// One key a decision involves.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    /// The key without the Redis prefix (`ip:203.0.113.9`, `login-user:<hash>`).
    pub(crate) key: String,
    pub(crate) quota: Quota,
    /// An auth-class bucket: stricter when decided per process.
    pub(crate) strict: bool,
}

impl Bucket {
    pub(crate) fn new(key: String, quota: Quota, strict: bool) -> Self {
        Self { key, quota, strict }
    }
}

/// What a decision answered, for the most constrained bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) allowed: bool,
    /// `RateLimit-Limit`.
    pub(crate) limit: u32,
    /// `RateLimit-Remaining`.
    pub(crate) remaining: u32,
    /// `RateLimit-Reset`: until the allowance is whole again.
    pub(crate) reset: Duration,
    /// `Retry-After` when refused.
    pub(crate) retry_after: Duration,
    /// Decided in Redis (`false`: per process).
    pub(crate) shared: bool,
}

impl Decision {
    fn unlimited() -> Self {
        Self {
            allowed: true,
            limit: u32::MAX,
            remaining: u32::MAX,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
            shared: true,
        }
    }

    /// Whether there are headers worth sending.
    pub(crate) fn is_limited(&self) -> bool {
        self.limit != u32::MAX
    }
}

/// See the module documentation. `KEYS` are the buckets; `ARGV[1]` the cost (1 charge, 0 peek, -1
/// refund), then per bucket its interval and period in ms. Returns per bucket: allowed, remaining,
/// ms until whole, ms until allowed.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local out = {}
local tats = {}
local all = 1
for i = 1, #KEYS do
  local interval = tonumber(ARGV[i * 2])
  local period = tonumber(ARGV[i * 2 + 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  if new_tat < now then new_tat = now end
  local allowed = 1
  local retry = 0
  if cost > 0 and new_tat - period > now then
    allowed = 0
    all = 0
    retry = new_tat - period - now
  end
  local used = tat
  if allowed == 1 then used = new_tat end
  local remaining = math.floor((period - (used - now)) / interval)
  if remaining < 0 then remaining = 0 end
  tats[i] = new_tat
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = used - now
  out[#out + 1] = retry
end
if all == 1 and cost ~= 0 then
  for i = 1, #KEYS do
    local ttl = tats[i] - now
    if ttl > 0 then
      redis.call('SET', KEYS[i], tats[i], 'PX', ttl)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return out
";

/// The limiter of one process.
pub(crate) struct Limiter {
    config: RateLimitConfig,
    redis: Option<Redis>,
    script: redis::Script,
    local: Mutex<HashMap<String, i64>>,
    degraded: AtomicBool,
    /// When (ms since the epoch) Redis may be tried again while degraded.
    next_redis_try_ms: AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("enabled", &self.config.enabled)
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a bucket answered: allowed, remaining, ms until whole, ms until allowed.
type Outcome = (bool, i64, i64, i64);

impl Limiter {
    pub(crate) fn new(config: RateLimitConfig, redis: Option<Redis>) -> Self {
        Self {
            config,
            redis,
            script: redis::Script::new(SCRIPT),
            local: Mutex::new(HashMap::new()),
            degraded: AtomicBool::new(false),
            next_redis_try_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Charges one request to every bucket (all or none).
    pub(crate) async fn charge(&self, class: &'static str, buckets: &[Bucket]) -> Decision {
        self.decide(class, buckets, 1).await
    }

    /// Gives one request back (a login that did not fail).
    pub(crate) async fn refund(&self, class: &'static str, buckets: &[Bucket]) {
        let _ = self.decide(class, buckets, -1).await;
    }

    async fn decide(&self, class: &'static str, buckets: &[Bucket], cost: i64) -> Decision {
        if !self.config.enabled || buckets.is_empty() {
            return Decision::unlimited();
        }
        let outcomes = match self.shared(buckets, cost).await {
            Some(outcomes) => outcomes,
            None => self.local(buckets, cost),
        };
        let shared = outcomes.1;
        let decision = summarize(buckets, &outcomes.0, shared, self.config.fallback_auth_divisor);
        if cost > 0 {
            let result = if decision.allowed { "allowed" } else { "limited" };
            let source = if shared { "redis" } else { "local" };
            metrics::counter!("gateway_rate_limit_decisions_total", "class" => class, "result" => result, "source" => source)
                .increment(1);
        }
        decision
    }

    /// The decision in Redis, or `None` when Redis did not answer in time.
    async fn shared(&self, buckets: &[Bucket], cost: i64) -> Option<(Vec<Outcome>, bool)> {
        let redis = self.redis.as_ref()?;
        let now = now_ms();
        if self.degraded.load(Ordering::Relaxed) {
            let next = self.next_redis_try_ms.load(Ordering::Relaxed);
            if u64::try_from(now).unwrap_or(0) < next
                || self
                    .next_redis_try_ms
                    .compare_exchange(
                        next,
                        u64::try_from(now).unwrap_or(0) + duration_ms_u64(RETRY_REDIS_EVERY),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                return None;
            }
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(cost);
        for bucket in buckets {
            invocation.key(redis.key(&format!("rl:{}", bucket.key)));
            invocation.arg(bucket.quota.interval_ms()).arg(bucket.quota.period_ms());
        }
        let mut conn = redis.conn.clone();
        let answer =
            tokio::time::timeout(self.config.redis_timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                .await;
        match answer {
            Ok(Ok(values)) if values.len() == buckets.len() * 4 => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    metrics::gauge!("gateway_rate_limit_degraded").set(0.0);
                    tracing::info!("rate limits are decided in Redis again");
                }
                let outcomes =
                    values.chunks_exact(4).map(|c| (c[0] == 1, c[1], c[2], c[3])).collect::<Vec<_>>();
                Some((outcomes, true))
            }
            failure => {
                let why = match failure {
                    Ok(Ok(_)) => "an unexpected answer".to_owned(),
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => format!("no answer within {:?}", self.config.redis_timeout),
                };
                metrics::counter!("gateway_rate_limit_fallback_total").increment(1);
                self.next_redis_try_ms.store(
                    u64::try_from(now).unwrap_or(0) + duration_ms_u64(RETRY_REDIS_EVERY),
                    Ordering::Relaxed,
                );
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    metrics::gauge!("gateway_rate_limit_degraded").set(1.0);
                    tracing::warn!(why, "rate limits fall back to per-process state: Redis cannot decide");
                }
                None
            }
        }
    }

    /// The same algorithm on this process's own state (auth buckets stricter).
    fn local(&self, buckets: &[Bucket], cost: i64) -> (Vec<Outcome>, bool) {
        let now = now_ms();
        let mut state = self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.len() > LOCAL_PRUNE_AT {
            state.retain(|_, tat| *tat > now);
        }
        let mut outcomes = Vec::with_capacity(buckets.len());
        let mut new_tats = Vec::with_capacity(buckets.len());
        let mut all = true;
        for bucket in buckets {
            let quota = self.local_quota(bucket);
            let (interval, period) = (quota.interval_ms(), quota.period_ms());
            let tat = state.get(&bucket.key).copied().unwrap_or(now).max(now);
            let new_tat = tat.saturating_add(cost.saturating_mul(interval)).max(now);
            let allowed = !(cost > 0 && new_tat - period > now);
            let retry = if allowed { 0 } else { new_tat - period - now };
            all &= allowed;
            let used = if allowed { new_tat } else { tat };
            let remaining = ((period - (used - now)) / interval).max(0);
            outcomes.push((allowed, remaining, used - now, retry));
            new_tats.push(new_tat);
        }
        if all && cost != 0 {
            for (bucket, tat) in buckets.iter().zip(new_tats) {
                if tat > now {
                    state.insert(bucket.key.clone(), tat);
                } else {
                    state.remove(&bucket.key);
                }
            }
        }
        (outcomes, false)
    }

    fn local_quota(&self, bucket: &Bucket) -> Quota {
        if bucket.strict { bucket.quota.divided(self.config.fallback_auth_divisor) } else { bucket.quota }
    }
}

/// The most constrained bucket: a refusing one (longest wait), else the one with least remaining.
fn summarize(buckets: &[Bucket], outcomes: &[Outcome], shared: bool, divisor: u32) -> Decision {
    let limit_of = |bucket: &Bucket| {
        if !shared && bucket.strict { bucket.quota.divided(divisor).limit } else { bucket.quota.limit }
    };
    let refused = buckets.iter().zip(outcomes).filter(|(_, o)| !o.0).max_by_key(|(_, o)| o.3);
    let (bucket, outcome) = match refused {
        Some(found) => found,
        None => match buckets.iter().zip(outcomes).min_by_key(|(_, o)| o.1) {
            Some(found) => found,
            None => return Decision::unlimited(),
        },
    };
    Decision {
        allowed: refused.is_none(),
        limit: limit_of(bucket),
        remaining: u32::try_from(outcome.1.max(0)).unwrap_or(u32::MAX),
        reset: ms(outcome.2),
        retry_after: ms(outcome.3),
        shared,
    }
}

/// A login username as a bucket key: normalized, then hashed (no addresses in Redis keys).
pub(crate) fn username_key(username: &str) -> String {
    let normalized = username.trim().to_lowercase();
    let digest = Sha256::digest(normalized.as_bytes());
    let mut key = String::with_capacity(32);
    for byte in &digest[..16] {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

fn ms(value: i64) -> Duration {
    Duration::from_millis(u64::try_from(value.max(0)).unwrap_or(0))
}

fn duration_ms_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(config: RateLimitConfig) -> Limiter {
        Limiter::new(config, None)
    }

    fn bucket(key: &str, limit: u32, strict: bool) -> Bucket {
        Bucket::new(key.to_owned(), Quota::new(limit, Duration::from_secs(60)), strict)
    }

    #[tokio::test]
    async fn local_gcra_allows_a_burst_then_refuses_with_a_wait() {
        let limiter = limiter(RateLimitConfig { fallback_auth_divisor: 1, ..RateLimitConfig::default() });
        let b = [bucket("ip:1", 5, false)];
        for expected_remaining in (0..5).rev() {
            let d = limiter.charge("t", &b).await;
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            assert_eq!(d.limit, 5);
            assert!(!d.shared);
        }
        let refused = limiter.charge("t", &b).await;
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // One request per 12 s: the next is allowed within 12 s, and the whole burst back within 60 s.
        assert!(
            refused.retry_after > Duration::from_secs(11) && refused.retry_after <= Duration::from_secs(12)
        );
        assert!(refused.reset > Duration::from_secs(59) && refused.reset <= Duration::from_secs(60));
    }

    #[tokio::test]
    async fn all_buckets_or_none_are_charged_and_refunds_give_back() {
        let limiter = limiter(RateLimitConfig::default());
        let small = bucket("a", 1, false);
        let big = bucket("b", 100, false);
        assert!(limiter.charge("t", &[small.clone(), big.clone()]).await.allowed);
        let refused = limiter.charge("t", &[small.clone(), big.clone()]).await;
        assert!(!refused.allowed);
        assert_eq!(refused.limit, 1, "the refusing bucket is reported");
        // The refused decision charged neither: `big` still has 99 left.
        assert_eq!(limiter.charge("t", std::slice::from_ref(&big)).await.remaining, 98);
        limiter.refund("t", std::slice::from_ref(&small)).await;
        assert!(limiter.charge("t", &[small]).await.allowed);
    }

    #[tokio::test]
    async fn strict_buckets_are_divided_when_local() {
        let limiter = limiter(RateLimitConfig { fallback_auth_divisor: 2, ..RateLimitConfig::default() });
        let b = [bucket("login", 5, true)];
        assert_eq!(limiter.charge("t", &b).await.limit, 2);
        assert!(limiter.charge("t", &b).await.allowed);
        assert!(!limiter.charge("t", &b).await.allowed);
    }

    #[tokio::test]
    async fn disabled_is_unlimited() {
        let limiter = limiter(RateLimitConfig { enabled: false, ..RateLimitConfig::default() });
        let d = limiter.charge("t", &[bucket("x", 1, false)]).await;
        assert!(d.allowed && !d.is_limited());
    }

    #[test]
    fn usernames_are_hashed_case_insensitively() {
        assert_eq!(username_key(" Alice@Example.com"), username_key("alice@example.com"));
        assert_eq!(username_key("a").len(), 32);
        assert!(!username_key("alice@example.com").contains('@'));
    }
}
