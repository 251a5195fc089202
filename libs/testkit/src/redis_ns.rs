//! An isolated Redis key namespace per test.

/// A unique key prefix on the test Redis; every key under it is deleted on drop.
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    prefix: String,
}

impl TestRedis {
    /// A new namespace `test:<uuid>:` on [`crate::redis_url`].
    #[must_use]
    pub fn new() -> Self {
        Self { url: crate::redis_url(), prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()) }
    }

    /// The Redis URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key prefix to configure (`redis.key_prefix`).
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let url = self.url.clone();
        let pattern = format!("{}*", self.prefix);
        crate::block_on_thread(async move {
            let Ok(client) = redis::Client::open(url) else { return };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
        });
    }
}
