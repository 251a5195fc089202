//! Idempotent start-up provisioning from secrets (usually mounted files): the first admin and the
//! service clients.

use bank_platform::BoxError;
use secrecy::ExposeSecret as _;
use uuid::Uuid;

use crate::{
    domain::{email::Email, password::Password},
    state::State,
    storage::{audit, clients, users},
};

/// Runs every configured step; each logs what it did.
///
/// # Errors
/// A secret is malformed, the admin password breaks the policy, or the database failed.
pub(crate) async fn run(state: &State) -> Result<(), BoxError> {
    let bootstrap = &state.config.bootstrap;
    if let Some(admin_secret) = &bootstrap.admin {
        admin(state, admin_secret.expose_secret()).await?;
    }
    if let Some(clients) = &bootstrap.service_clients {
        service_clients(state, clients.expose_secret()).await?;
    }
    Ok(())
}

async fn admin(state: &State, text: &str) -> Result<(), BoxError> {
    let line = text.lines().next().unwrap_or_default().trim();
    let (email, password) =
        line.split_once(':').ok_or("bootstrap.admin: expected one line `email:password`")?;
    let email = Email::parse(email).map_err(|e| format!("bootstrap.admin: email: {e}"))?;
    let password = Password::new(password.to_owned());
    let mut conn = state.pool.acquire().await?;
    if users::any_with_role(&mut conn, "admin").await? {
        tracing::info!("bootstrap: an admin exists already; nothing to do");
        return Ok(());
    }
    let violations = crate::domain::password::check(
        &state.config.password,
        &password,
        &crate::domain::password::Context { email: email.as_str(), given_name: "Admin", family_name: "" },
    );
    if !violations.is_empty() {
        let codes: Vec<&str> = violations.iter().map(|v| v.code()).collect();
        return Err(format!("bootstrap.admin: the password breaks the policy: {}", codes.join(", ")).into());
    }
    let hash = state.hasher.hash(&password).await?;
    let mut tx = state.pool.begin().await?;
    // Replicas starting together on an empty database: one creates the admin, the others see it.
    users::lock_bootstrap(&mut tx).await?;
    if users::any_with_role(&mut tx, "admin").await? {
        tracing::info!("bootstrap: another replica created the admin meanwhile; nothing to do");
        return Ok(());
    }
    let user_id = Uuid::now_v7();
    let created = users::insert(
        &mut tx,
        &users::NewUser {
            user_id,
            email: email.as_str(),
            email_canonical: &email.canonical(),
            given_name: "Admin",
            family_name: "",
            locale: "en",
            time_zone: "UTC",
            roles: &["customer".to_owned(), "admin".to_owned()],
            verified: true,
            password_hash: &hash,
        },
    )
    .await?;
    let Some(created) = created else {
        return Err(
            "bootstrap.admin: the address belongs to an existing non-admin user; grant the role instead"
                .into(),
        );
    };
    users::add_history(&mut tx, created.user_id, &hash, state.config.password.history).await?;
    audit::append(
        &mut tx,
        audit::Entry {
            actor_type: "system",
            action: "user.bootstrap_admin",
            target_type: "user",
            target_id: created.user_id.to_string(),
            result: "success",
            ..audit::Entry::default()
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(user_id = %created.user_id, email = %email.redacted(), "bootstrap: created the first admin");
    Ok(())
}

async fn service_clients(state: &State, text: &str) -> Result<(), BoxError> {
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(client_id), Some(secret), Some(scopes)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "bootstrap.service_clients: line {number}: expected `client_id:secret:scopes`"
            )
            .into());
        };
        if client_id.is_empty() || secret.len() < 16 {
            return Err(format!(
                "bootstrap.service_clients: line {number}: a client id and a secret of at least 16 characters"
            )
            .into());
        }
        let scopes: Vec<String> =
            scopes.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let hash = state.hasher.hash(&Password::new(secret.to_owned())).await?;
        let mut conn = state.pool.acquire().await?;
        clients::upsert(&mut conn, client_id, client_id, &scopes, &hash).await?;
        tracing::info!(client_id, scopes = %scopes.join(" "), "bootstrap: service client provisioned");
    }
    Ok(())
}
