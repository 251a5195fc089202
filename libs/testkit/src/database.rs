//! A fresh PostgreSQL database per test.

use sqlx::{Connection as _, Executor as _, PgConnection};

/// A uniquely named database, created empty and dropped (with any open connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates `test_<uuid>` on the server behind [`crate::database_admin_url`].
    pub async fn create() -> Self {
        let admin_url = crate::database_admin_url();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL (BANK_TEST_DATABASE_URL): {e}"));
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))))
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = with_database(&admin_url, &name);
        Self { name, url, admin_url }
    }

    /// The database's connection URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same database reached through `addr` (e.g. a [`crate::TcpProxy`]) instead of its server.
    #[must_use]
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let scheme_end = self.url.find("://").map_or(0, |i| i + 3);
        let rest = &self.url[scheme_end..];
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let userinfo = authority.rsplit_once('@').map_or(String::new(), |(u, _)| format!("{u}@"));
        format!("{}{userinfo}{addr}{path}", &self.url[..scheme_end])
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every row of the database as `pg_dump --data-only` writes it (bytea columns, such as
    /// event payloads, appear as hex: check them with [`crate::assert_nowhere`]).
    #[must_use]
    pub fn dump(&self) -> String {
        let out = std::process::Command::new("pg_dump")
            .arg("--data-only")
            .arg(&self.url)
            .output()
            .expect("pg_dump runs");
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        crate::block_on_thread(async move {
            if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                let _ = conn
                    .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                    ))))
                    .await;
                let _ = conn.close().await;
            }
        });
    }
}

/// `url` with its database path replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_and_keeps_the_query() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "t1"), "postgres://u@h:5432/t1");
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:5432", "t1"), "postgres://u@h:5432/t1");
    }
}
