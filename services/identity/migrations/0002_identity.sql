-- Users, credentials, sessions, signing keys, service clients and the audit log.

CREATE TABLE users (
    user_id              uuid        PRIMARY KEY,
    -- The address as typed (domain lower-cased) and its lower-cased uniqueness key.
    email                text        NOT NULL,
    email_canonical      text        NOT NULL UNIQUE,
    email_verified_at    timestamptz,
    given_name           text        NOT NULL,
    family_name          text        NOT NULL DEFAULT '',
    locale               text        NOT NULL DEFAULT 'en',
    time_zone            text        NOT NULL DEFAULT 'UTC',
    roles                text[]      NOT NULL DEFAULT ARRAY['customer'],
    status               text        NOT NULL CHECK (status IN ('pending_verification', 'active', 'disabled')),
    password_hash        text        NOT NULL,
    -- Bumped by password change/reset, "log out everywhere" and admin actions: every access token
    -- with a lower `tv` claim is refused.
    token_version        bigint      NOT NULL DEFAULT 1,
    -- Durable lockout state: consecutive failures, the current lock and how many locks in a row.
    failed_logins        integer     NOT NULL DEFAULT 0,
    locked_until         timestamptz,
    lockout_count        integer     NOT NULL DEFAULT 0,
    last_login_at        timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX users_created_at ON users (created_at, user_id);

-- The last N password hashes of each user (N from config), to refuse reuse.
CREATE TABLE password_history (
    user_id       uuid        NOT NULL REFERENCES users (user_id),
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX password_history_user ON password_history (user_id, created_at DESC);

-- Single-use tokens sent by email (verification, password reset, email change), stored as SHA-256.
CREATE TABLE email_tokens (
    token_hash  bytea       PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (user_id),
    purpose     text        NOT NULL CHECK (purpose IN ('verify_email', 'reset_password', 'change_email')),
    -- The address being verified (for change_email: the new one).
    email       text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX email_tokens_user ON email_tokens (user_id, purpose);

-- A session is a refresh-token family.
CREATE TABLE sessions (
    session_id          uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL REFERENCES users (user_id),
    acr                 text        NOT NULL,
    auth_time           timestamptz NOT NULL,
    ip_address          text        NOT NULL DEFAULT '',
    user_agent          text        NOT NULL DEFAULT '',
    device_name         text        NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_used_at        timestamptz NOT NULL DEFAULT now(),
    -- Absolute expiry, whatever the use.
    expires_at          timestamptz NOT NULL,
    revoked_at          timestamptz,
    revoked_reason      text
);

CREATE INDEX sessions_user ON sessions (user_id, created_at DESC);

-- Refresh tokens (SHA-256 of the opaque value). Exactly one unused token per live session.
CREATE TABLE refresh_tokens (
    token_hash   bytea       PRIMARY KEY,
    session_id   uuid        NOT NULL REFERENCES sessions (session_id),
    issued_at    timestamptz NOT NULL DEFAULT now(),
    -- Idle expiry of this token (capped by the session's absolute expiry).
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);

CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Access tokens blocklisted before their expiry (logout). Redis holds the fast copy; this is the
-- durable one identity answers CheckTokenStatus from.
CREATE TABLE revoked_tokens (
    jti        uuid        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

-- Token signing keys. The private key is encrypted (AES-256-GCM) under the key-encryption key
-- from a mounted secret file; it never leaves this service.
CREATE TABLE signing_keys (
    kid                 text        PRIMARY KEY,
    algorithm           text        NOT NULL,
    state               text        NOT NULL CHECK (state IN ('next', 'active', 'retiring', 'retired', 'revoked')),
    public_key          bytea       NOT NULL,
    private_key_nonce   bytea       NOT NULL,
    private_key_sealed  bytea       NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    activated_at        timestamptz,
    retiring_at         timestamptz,
    retired_at          timestamptz
);

-- At most one key signs.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

-- Non-human clients (services, partners) with client credentials.
CREATE TABLE service_clients (
    client_id                   text        PRIMARY KEY,
    name                        text        NOT NULL UNIQUE,
    scopes                      text[]      NOT NULL,
    secret_hash                 text        NOT NULL,
    previous_secret_hash        text,
    previous_secret_expires_at  timestamptz,
    status                      text        NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at                  timestamptz NOT NULL DEFAULT now(),
    last_used_at                timestamptz,
    secret_rotated_at           timestamptz
);

-- The append-only, hash-chained audit log. Entries are chained per stream (`chain`): each entry's
-- hash covers the previous entry's hash of the same chain, so concurrent logins of different users
-- never wait for one global row.
CREATE TABLE audit_log (
    sequence       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id       uuid        NOT NULL UNIQUE,
    chain          text        NOT NULL,
    chain_position bigint      NOT NULL,
    occurred_at    timestamptz NOT NULL,
    actor_type     text        NOT NULL,
    actor_id       text        NOT NULL DEFAULT '',
    action         text        NOT NULL,
    target_type    text        NOT NULL DEFAULT '',
    target_id      text        NOT NULL DEFAULT '',
    result         text        NOT NULL CHECK (result IN ('success', 'failure', 'denied')),
    reason         text        NOT NULL DEFAULT '',
    request_id     text        NOT NULL DEFAULT '',
    trace_id       text        NOT NULL DEFAULT '',
    ip_address     text        NOT NULL DEFAULT '',
    user_agent     text        NOT NULL DEFAULT '',
    previous_hash  text        NOT NULL,
    entry_hash     text        NOT NULL,
    UNIQUE (chain, chain_position)
);

CREATE INDEX audit_log_actor ON audit_log (actor_id, sequence);
CREATE INDEX audit_log_target ON audit_log (target_id, sequence);

-- The head of each chain; the row lock on it orders appends within one chain only.
CREATE TABLE audit_chain_heads (
    chain          text   PRIMARY KEY,
    chain_position bigint NOT NULL,
    entry_hash     text   NOT NULL
);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
